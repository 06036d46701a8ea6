"""`thinwire coordinator --experts`: the federated-experts coordinator as an HTTP service.

    thinwire coordinator --experts --host 0.0.0.0 --port 5000 --token T [--state-dir D]

API (errors are JSON {"error": message, "status": code}; OpenAPI at /docs):
    GET  /v1/health                      liveness (the only call without the token)
    GET  /v1/status                      experts, gateway, workers, bytes per upload
    POST /v1/workers                     register {worker_id, session, specialty, base,
                                         centroid, count, capabilities}: protobuf Register
                                         (application/x-protobuf, as workers send it) or
                                         JSON (application/json); other types get 415
    POST /v1/workers/{id}/leave          leave
    GET  /v1/experts/adapter?worker_id=&wait_version=&wait_s=   the worker's expert
                                         (protobuf Update; long-polls for a newer version)
    POST /v1/updates                     protobuf Update: a worker's change since its pull
    GET  /v1/experts                     every expert: version, samples, uploads
    GET  /v1/experts/{name}/weights      base + that expert, safetensors
    GET  /v1/gateway                     gateway info: version, merge, weights, history
    GET  /v1/gateway/weights             the merged gateway, safetensors
    GET  /v1/base/files                  the base's config and tokenizer files (base64)
    POST /v1/route                       {prompt, method?}: the expert for a prompt, by
                                         centroid or loss (default: the routing key), with
                                         every expert's score
With a token set, every call but /v1/health needs `Authorization: Bearer TOKEN`; off
loopback a token is required (or --insecure).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from ..config import add_config_flags, config_flags
from ..obs.dashboard import add_dashboard_flag, open_dashboard
from ..server import (GuardRules, RequestGuard, add_json_errors, add_listen_flags,
                      require_token)
from ..server.control import body_doc, capability_map, read_control
from ..server.http11 import server_config
from ..server.watch import coordinator_monitor
from ..wire.control import Register
from .config import Routing, load_config
from .core import ExpertsCoordinator
from .link import VERSION

MAX_WAIT_S = 30.0
PUBLIC = frozenset({"/v1/health"})
SAFETENSORS = "application/octet-stream"
Capabilities = capability_map(64)


class RegisterIn(BaseModel):
    """A registration, from a protobuf Register or JSON (server/control.py)."""

    worker_id: str = Field(max_length=64)
    session: str = Field(max_length=128)
    specialty: str = Field(max_length=64)
    base: str = Field(max_length=128)
    centroid: list[float] = Field(max_length=1 << 16)
    count: int = Field(ge=1)
    capabilities: Capabilities = Field(default_factory=dict)


class RouteIn(BaseModel):
    prompt: str = Field(min_length=1, max_length=20_000)
    method: Routing | None = None


def create_app(core: ExpertsCoordinator, token: str | None = None,
               log: Callable[[str], None] = print) -> FastAPI:
    """The API; while it is served, a task closes late rounds (`core.tick`) every 0.2 s."""

    @contextlib.asynccontextmanager
    async def ticking(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(tick_forever(core, log))
        yield
        task.cancel()

    app = FastAPI(title="thinwire federated experts", version="1", lifespan=ticking,
                  description="Per-specialty LoRA experts, a merged gateway, routing.")
    c = core.cfg
    app.add_middleware(RequestGuard, rules=GuardRules(
        token=token, admin_token=None, public=PUBLIC, json_limit=c.max_json_bytes,
        update_limit=c.max_request_bytes, timeout=c.request_timeout, min_rate=c.body_min_rate))
    add_json_errors(app)

    @app.get("/v1/health")
    async def health() -> dict[str, Any]:
        return {"ok": True, "gateway_version": core.gateway.version}

    @app.get("/v1/status")
    async def status() -> dict[str, Any]:
        return await run_in_threadpool(core.status)

    @app.post("/v1/workers", openapi_extra=body_doc(RegisterIn, Register))
    async def register(request: Request) -> dict[str, Any]:
        body = await read_control(request, RegisterIn, Register)
        return await run_in_threadpool(core.register, body.worker_id, body.session,
                                       body.specialty, body.base, body.centroid, body.count,
                                       body.capabilities)

    @app.post("/v1/workers/{worker_id}/leave")
    async def leave(worker_id: str) -> dict[str, Any]:
        return await run_in_threadpool(core.leave, worker_id)

    @app.get("/v1/experts/adapter")
    async def adapter(worker_id: str, wait_version: int | None = None,
                      wait_s: float = 0.0) -> Response:
        deadline = time.monotonic() + min(max(wait_s, 0.0), MAX_WAIT_S)
        while (wait_version is not None and time.monotonic() < deadline
               and await run_in_threadpool(core.version_of, worker_id) < wait_version):
            await asyncio.sleep(0.05)
        body, version = await run_in_threadpool(core.pull, worker_id)
        return Response(body, media_type="application/x-protobuf",
                        headers={VERSION: str(version)})

    @app.post("/v1/updates")
    async def push(request: Request) -> dict[str, Any]:
        return await run_in_threadpool(core.push, await request.body())

    @app.get("/v1/experts")
    async def experts() -> dict[str, Any]:
        return (await run_in_threadpool(core.status))["experts"]

    @app.get("/v1/experts/{name}/weights")
    async def expert_weights(name: str) -> Response:
        body, version = await run_in_threadpool(core.expert_body, name)
        return Response(body, media_type=SAFETENSORS, headers={VERSION: str(version)})

    @app.get("/v1/gateway")
    async def gateway() -> dict[str, Any]:
        return (await run_in_threadpool(core.status))["gateway"]

    @app.get("/v1/gateway/weights")
    async def gateway_weights() -> Response:
        body, version = await run_in_threadpool(core.gateway_body)
        return Response(body, media_type=SAFETENSORS, headers={VERSION: str(version)})

    @app.get("/v1/base/files")
    async def files() -> dict[str, str]:
        return await run_in_threadpool(core.files)

    @app.post("/v1/route")
    async def route(body: RouteIn) -> dict[str, Any]:
        return await run_in_threadpool(core.route, body.prompt, body.method)

    return app


def build_parser() -> argparse.ArgumentParser:
    from .config import ExpertsConfig

    p = argparse.ArgumentParser(prog="thinwire coordinator --experts", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experts", action="store_true", help="(selects this coordinator)")
    add_listen_flags(p, Path("runs/experts"), "bearer token for every call but /v1/health")
    p.add_argument("--debug", action="store_true", help="log every request")
    p.add_argument("--config", type=Path, help="YAML/JSON file of the keys below")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--monitor-every", type=float, default=1.0,
                   help="seconds between resource samples in events.jsonl; 0 disables")
    add_dashboard_flag(p)
    add_config_flags(p, ExpertsConfig)
    return p


def coordinator_main(argv: list[str] | None = None) -> int:
    import torch
    import uvicorn

    from ..tasks.lm.pretrained import load_base

    args = build_parser().parse_args(argv)
    require_token(args.host, args.token, args.insecure)
    cfg = load_config(args.config, config_flags(args), args.set)

    def log(line: str) -> None:
        print(f"[experts {time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)

    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    base = load_base(cfg.base_model, cfg.use_huggingface)
    core = ExpertsCoordinator(cfg, base, args.state_dir, log)
    log(f"listening on http://{args.host}:{args.port} (base {base.name}, {cfg.finetune}, "
        f"codec {cfg.codec}, merge {cfg.merge}, state {args.state_dir})")
    app = create_app(core, args.token, log)
    config = server_config(app, args.host, args.port, cfg.request_timeout,
                           max(128, 2 * cfg.max_workers + 64), args.debug)
    monitor = coordinator_monitor(core, args.monitor_every)
    try:
        with monitor, open_dashboard(args.dashboard, [args.state_dir]):
            uvicorn.Server(config).run()
    finally:
        core.close()
    return 0


async def tick_forever(core: ExpertsCoordinator, log: Callable[[str], None]) -> None:
    while True:
        await asyncio.sleep(0.2)
        try:
            await run_in_threadpool(core.tick)
        except Exception as exc:  # noqa: BLE001  e.g. a full disk: report, keep serving
            log(f"background error: {type(exc).__name__}: {exc}")


if __name__ == "__main__":
    from ..errors import run_main

    sys.exit(run_main(coordinator_main))
