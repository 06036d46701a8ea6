"""`thinwire coordinator`: the FLQ coordinator as an ASGI service (FastAPI + uvicorn).

    python -m thinwire.service.coordinator --port 5000 --state-dir runs/flq [--config c.json]

API (JSON errors {"error": message, "status": code}; OpenAPI at /openapi.json, /docs):
    GET  /v1/health                     liveness
    GET  /v1/status                     round, version, workers, bytes, selection/accuracy
    POST /v1/workers                    register {worker_id, session, specialty, capabilities}
    POST /v1/workers/{id}/leave         leave
    GET  /v1/model?worker_id=&have=&wait_round=   protobuf Update (full model or delta)
    POST /v1/updates                    protobuf Update body (idempotent by worker/round/seq)
    POST /v1/skips                      {worker_id, round, reason}: a lazy skip
    POST /v1/offers                     {worker_id, round, score, bits}: budget selection
Mutating endpoints (and the model) need `Authorization: Bearer TOKEN` when a token is set.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import ipaddress
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from ..errors import ThinwireError
from ..obs.dashboard import add_dashboard_flag, open_dashboard
from .config import load_config
from .core import Coordinator
from .observe import start_events, stop_events
from .admission import ServiceError

LONG_POLL_S = 20.0


class RegisterIn(BaseModel):
    worker_id: str
    session: str
    specialty: str = ""
    capabilities: dict[str, Any] = Field(default_factory=dict)


class SkipIn(BaseModel):
    worker_id: str
    round: int = Field(ge=0)
    reason: str = "lazy"


class OfferIn(BaseModel):
    worker_id: str
    round: int = Field(ge=0)
    score: float
    bits: int = Field(gt=0)


class BodyLimit:
    """ASGI middleware: request bodies need a Content-Length no larger than the limit."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH"):
            headers = dict(scope["headers"])
            length = headers.get(b"content-length")
            problem = None
            if length is None:
                problem = (411, "send a Content-Length header (chunked bodies are refused)")
            elif not length.isdigit() or int(length) > self.limit:
                problem = (413, f"request body of {length.decode(errors='replace')} bytes "
                                f"exceeds max_request_bytes={self.limit}")
            if problem:
                response = JSONResponse({"error": problem[1], "status": problem[0]},
                                        status_code=problem[0])
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(core: Coordinator, token: str | None = None) -> FastAPI:
    app = FastAPI(title="thinwire FLQ coordinator", version="1",
                  description="Federated training with lazy, quantized, budgeted uploads.")
    app.state.core = core

    def auth(request: Request) -> None:
        if token is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise ServiceError(401, "missing or wrong bearer token: send 'Authorization: "
                                    "Bearer TOKEN' (worker --token or THINWIRE_TOKEN)")

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"error": exc.message, "status": exc.status},
                            status_code=exc.status, headers=headers)

    @app.exception_handler(ThinwireError)
    async def _thinwire_error(request: Request, exc: ThinwireError) -> JSONResponse:
        return JSONResponse({"error": str(exc), "status": 400}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                             for e in exc.errors())
        return JSONResponse({"error": f"bad request: {problems}", "status": 400},
                            status_code=400)

    @app.get("/v1/health")
    async def health() -> dict[str, Any]:
        return {"ok": True, "round": core.round, "version": core.version, "done": core.done}

    @app.get("/v1/status")
    async def status() -> dict[str, Any]:
        return await run_in_threadpool(core.status)

    @app.post("/v1/workers", dependencies=[Depends(auth)])
    async def register(body: RegisterIn) -> dict[str, Any]:
        return await run_in_threadpool(core.register, body.worker_id, body.session,
                                       body.specialty, body.capabilities)

    @app.post("/v1/workers/{worker_id}/leave", dependencies=[Depends(auth)])
    async def leave(worker_id: str) -> dict[str, Any]:
        return await run_in_threadpool(core.leave, worker_id)

    @app.get("/v1/model", dependencies=[Depends(auth)])
    async def model(worker_id: str, have: int | None = None,
                    wait_round: int | None = None) -> Response:
        deadline = time.monotonic() + LONG_POLL_S
        while (wait_round is not None and core.round < wait_round and not core.done
               and time.monotonic() < deadline):
            await asyncio.sleep(0.05)
        body, headers = await run_in_threadpool(core.pull, worker_id, have)
        return Response(body, media_type="application/x-protobuf", headers=headers)

    @app.post("/v1/updates", dependencies=[Depends(auth)])
    async def push(request: Request) -> dict[str, Any]:
        body = await request.body()
        if len(body) > core.cfg.max_request_bytes:
            raise ServiceError(413, f"update of {len(body)} bytes exceeds max_request_bytes")
        return await run_in_threadpool(core.push, body)

    def control(request: Request, wid: str | None = None) -> None:
        core.count_control(int(request.headers.get("content-length", 0)), wid)

    @app.post("/v1/skips", dependencies=[Depends(auth)])
    async def skip(body: SkipIn, request: Request) -> dict[str, Any]:
        control(request, body.worker_id)
        return await run_in_threadpool(core.skip, body.worker_id, body.round, body.reason)

    @app.post("/v1/offers", dependencies=[Depends(auth)])
    async def offer(body: OfferIn, request: Request) -> dict[str, Any]:
        control(request, body.worker_id)
        deadline = time.monotonic() + LONG_POLL_S
        while True:
            answer = await run_in_threadpool(core.offer, body.worker_id, body.round,
                                             body.score, body.bits)
            if answer["selected"] is not None or time.monotonic() > deadline:
                return answer
            await asyncio.sleep(0.05)

    return app


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def background(core: Coordinator, server: Any, exit_when_done: bool,
               stop: threading.Event) -> None:
    """Round deadlines, evaluations, final plots; asks the server to exit when done."""
    plotted = False
    while not stop.wait(0.1):
        try:
            core.tick()
            core.run_evaluations()
            if core.done and core.evaluations.empty() and not plotted:
                path = core.plots()
                core.log(f"training done: round {core.round}, version {core.version}; "
                         f"results {core.results_path}" + (f", plot {path}" if path else ""))
                plotted = True
                if exit_when_done:
                    server.should_exit = True
        except Exception as exc:  # noqa: BLE001  e.g. a full disk: report, keep serving
            core.log(f"background error: {type(exc).__name__}: {exc}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="thinwire coordinator", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--config", type=Path, help="flq_config JSON/YAML (examples/flq/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. max_rounds=50")
    p.add_argument("--state-dir", type=Path, default=Path("runs/flq"),
                   help="snapshot, journal, results.jsonl and plots (resumes if present)")
    p.add_argument("--token", default=os.environ.get("THINWIRE_TOKEN"),
                   help="bearer token for mutating endpoints (default $THINWIRE_TOKEN)")
    p.add_argument("--insecure", action="store_true",
                   help="allow a non-loopback --host without a token")
    p.add_argument("--exit-when-done", action="store_true",
                   help="exit after the last round is evaluated")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--monitor-every", type=float, default=1.0,
                   help="seconds between resource samples in events.jsonl; 0 disables")
    add_dashboard_flag(p)
    return p


def coordinator_main(argv: list[str] | None = None) -> int:
    import uvicorn

    args = build_parser().parse_args(argv)
    if not is_loopback(args.host) and not args.token and not args.insecure:
        raise ThinwireError(f"refusing to listen on {args.host} without a token: pass --token "
                            "(or set THINWIRE_TOKEN), or --insecure on a trusted network")
    cfg = load_config(args.config, None, args.set)

    def log(line: str) -> None:
        if not args.quiet:
            print(f"[coordinator {time.strftime('%H:%M:%S')}] {line}", file=sys.stderr,
                  flush=True)

    import torch

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1) // 2))
    core = Coordinator(cfg, args.state_dir, log=log)
    app = create_app(core, args.token)
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port,
                                           log_level="warning", access_log=False))
    stop = threading.Event()
    thread = threading.Thread(target=background, args=(core, server, args.exit_when_done,
                                                       stop), daemon=True)
    log(f"listening on http://{args.host}:{args.port} ({cfg.schedule}, mode {cfg.mode}, "
        f"codec {cfg.upload_codec()}, {cfg.total_workers} workers, state {args.state_dir})")
    thread.start()
    monitor = start_events(core, args.monitor_every)
    try:
        with open_dashboard(args.dashboard, [args.state_dir]):
            server.run()
    finally:
        stop.set()
        thread.join(timeout=5)
        with contextlib.suppress(ThinwireError):
            core.run_evaluations()
        stop_events(core, monitor)
        core.close()
    return 0


if __name__ == "__main__":
    from ..errors import run_main

    sys.exit(run_main(coordinator_main))
