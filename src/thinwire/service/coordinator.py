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
Register, skip and offer bodies are protobuf (Content-Type application/x-protobuf: the
Register, Skip, Offer messages of thinwire.proto, as workers send them) or JSON
(application/json, for curl); other types get 415 (server/control.py).
Every endpoint but /v1/health (and /v1/status on a loopback bind) needs `Authorization:
Bearer TOKEN` when a token is set; calls for a worker id also need the key its registration
returned (`X-Thinwire-Worker-Key`). Bodies are bounded: max_request_bytes for updates,
max_json_bytes for every other body (either form), read within request_timeout /
body_min_rate (guard.py), all before a route parses a byte.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import ThinwireError, require
from ..obs.dashboard import add_dashboard_flag, open_dashboard
from ..server import add_listen_flags, is_loopback, require_token
from .config import load_config
from .core import Coordinator
from ..server.credentials import KEY_HEADER, Caller
from ..server.control import body_doc, read_control
from ..server.guard import GuardRules, RequestGuard
from ..server.http import HttpError
from ..server.http11 import server_config as http_config
from .observe import start_events, stop_events
from ..wire.control import Offer, Register, Skip
from .schemas import OfferIn, RegisterIn, SkipIn

LONG_POLL_S = 20.0
PUBLIC = frozenset({"/v1/health", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc"})


def guard_rules(core: Coordinator, token: str | None, admin_token: str | None,
                status_public: bool) -> GuardRules:
    cfg = core.cfg
    public = PUBLIC | ({"/v1/status"} if status_public else set())
    return GuardRules(token=token, admin_token=admin_token, public=frozenset(public),
                      json_limit=min(cfg.max_json_bytes, cfg.max_request_bytes),
                      update_limit=cfg.max_request_bytes, timeout=cfg.request_timeout,
                      min_rate=cfg.body_min_rate)


def caller(request: Request) -> Caller:
    """What the guard proved about the bearer token, plus the worker key header."""
    return Caller(key=request.headers.get(KEY_HEADER),
                  admin=bool(request.scope.get("state", {}).get("admin")))


def create_app(core: Coordinator, token: str | None = None, admin_token: str | None = None,
               status_public: bool = True) -> FastAPI:
    """The API behind one `RequestGuard`: tokens are checked and bodies read (bounded in
    size and time) before any route runs; per-worker keys are checked by the core."""
    app = FastAPI(title="thinwire FLQ coordinator", version="1",
                  description="Federated training with lazy, quantized, budgeted uploads.")
    app.state.core = core
    app.add_middleware(RequestGuard, rules=guard_rules(core, token, admin_token,
                                                       status_public))
    add_error_handlers(app)

    @app.get("/v1/health")
    async def health() -> dict[str, Any]:
        return {"ok": True, "round": core.round, "version": core.version, "done": core.done}

    @app.get("/v1/status")
    async def status() -> dict[str, Any]:
        return await run_in_threadpool(core.status)

    @app.post("/v1/workers", openapi_extra=body_doc(RegisterIn, Register))
    async def register(request: Request) -> dict[str, Any]:
        body = await read_control(request, RegisterIn, Register)
        return await run_in_threadpool(core.register, body.worker_id, body.session,
                                       body.specialty, body.capabilities, caller(request))

    @app.post("/v1/workers/{worker_id}/leave")
    async def leave(worker_id: str, request: Request) -> dict[str, Any]:
        return await run_in_threadpool(core.leave, worker_id, caller(request))

    @app.get("/v1/model")
    async def model(worker_id: str, request: Request, have: int | None = None,
                    wait_round: int | None = None) -> Response:
        who = caller(request)
        await run_in_threadpool(core.authorize, worker_id, who)  # 404/403 before any wait
        deadline = time.monotonic() + LONG_POLL_S
        while (wait_round is not None and core.round < wait_round and not core.done
               and time.monotonic() < deadline):
            await asyncio.sleep(0.05)
        body, headers = await run_in_threadpool(core.pull, worker_id, have, who)
        return Response(body, media_type="application/x-protobuf", headers=headers)

    @app.post("/v1/updates")
    async def push(request: Request) -> dict[str, Any]:
        body = await request.body()  # read and bounded by the guard already
        return await run_in_threadpool(core.push, body, caller(request))

    async def control(request: Request, wid: str) -> None:
        core.count_control(len(await request.body()), wid)

    @app.post("/v1/skips", openapi_extra=body_doc(SkipIn, Skip))
    async def skip(request: Request) -> dict[str, Any]:
        body = await read_control(request, SkipIn, Skip)
        await control(request, body.worker_id)
        return await run_in_threadpool(core.skip, body.worker_id, body.round, body.reason,
                                       caller(request))

    @app.post("/v1/offers", openapi_extra=body_doc(OfferIn, Offer))
    async def offer(request: Request) -> dict[str, Any]:
        body = await read_control(request, OfferIn, Offer)
        await control(request, body.worker_id)
        deadline = time.monotonic() + LONG_POLL_S
        while True:
            answer = await run_in_threadpool(core.offer, body.worker_id, body.round,
                                             body.score, body.bits, caller(request))
            if answer["selected"] is not None or time.monotonic() > deadline:
                return answer
            await asyncio.sleep(0.05)

    return app


def add_error_handlers(app: FastAPI) -> None:
    """Every error as JSON {"error": message, "status": code}."""

    @app.exception_handler(HttpError)  # ServiceError too, and the control bodies' 400/415
    async def _service_error(request: Request, exc: HttpError) -> JSONResponse:
        return JSONResponse({"error": exc.message, "status": exc.status},
                            status_code=exc.status)

    @app.exception_handler(ThinwireError)
    async def _thinwire_error(request: Request, exc: ThinwireError) -> JSONResponse:
        return JSONResponse({"error": str(exc), "status": 400}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                             for e in exc.errors()[:5])
        return JSONResponse({"error": f"bad request: {problems}"[:2000], "status": 400},
                            status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail), "status": exc.status_code},
                            status_code=exc.status_code, headers=exc.headers)


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
    add_listen_flags(p, Path("runs/flq"), "bearer token for every endpoint but /v1/health "
                     "(and /v1/status on loopback)")
    p.add_argument("--config", type=Path, help="flq_config JSON/YAML (examples/flq/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. max_rounds=50")
    p.add_argument("--admin-token", default=os.environ.get("THINWIRE_ADMIN_TOKEN"),
                   help="bearer token that may also act for any worker id, e.g. take over "
                        "an id whose key is lost (default $THINWIRE_ADMIN_TOKEN)")
    p.add_argument("--exit-when-done", action="store_true",
                   help="exit after the last round is evaluated")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--monitor-every", type=float, default=1.0,
                   help="seconds between resource samples in events.jsonl; 0 disables")
    p.add_argument("--tensorboard", type=Path, metavar="DIR",
                   help="also write each round's accuracy, loss, bytes and uploads as "
                        "TensorBoard scalars into DIR/<run> "
                        '(pip install "thinwire[tensorboard]")')
    add_dashboard_flag(p)
    return p


def server_config(app: Any, host: str, port: int, cfg: Any) -> Any:
    """uvicorn settings that bound what one client can hold: header deadline, header size,
    keep-alive, and a connection cap above what the registry's workers need."""
    return http_config(app, host, port, cfg.request_timeout,
                       max(128, 2 * cfg.registry_cap() + 64))


def coordinator_main(argv: list[str] | None = None) -> int:
    import uvicorn

    args = build_parser().parse_args(argv)
    require_token(args.host, args.token, args.insecure)
    cfg = load_config(args.config, None, args.set)
    if args.tensorboard is not None:
        require("tensorboard", "tensorboard", "--tensorboard")

    def log(line: str) -> None:
        if not args.quiet:
            print(f"[coordinator {time.strftime('%H:%M:%S')}] {line}", file=sys.stderr,
                  flush=True)

    import torch

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1) // 2))
    core = Coordinator(cfg, args.state_dir, log=log)
    app = create_app(core, args.token, args.admin_token, status_public=is_loopback(args.host))
    server = uvicorn.Server(server_config(app, args.host, args.port, cfg))
    stop = threading.Event()
    thread = threading.Thread(target=background, args=(core, server, args.exit_when_done,
                                                       stop), daemon=True)
    log(f"listening on http://{args.host}:{args.port} ({cfg.schedule}, mode {cfg.mode}, "
        f"codec {cfg.upload_codec()}, {cfg.total_workers} workers, state {args.state_dir})")
    thread.start()
    monitor = start_events(core, args.monitor_every, args.tensorboard)
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
