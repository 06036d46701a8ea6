"""The dashboard's web app: one page, its static files, JSON endpoints and an SSE stream.

    GET /                         the page (static/index.html)
    GET /static/NAME              the page's script, style and the vendored uPlot
    GET /api/runs                 [{name, dir, bytes, modified}]
    GET /api/events?run=&since=   {run, events, start, next, reset}: events from byte `since`
    GET /api/stream?offsets=      server-sent events: `runs` when the run list changes, and
                                  `events` ({run, events, start, next, reset}) as files grow

Only names in the run index are served and only the fixed static files, so no request reads
a file outside the given folders; every failure is a JSON error, never a dead server.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from .runs import Chunk, RunIndex, read_chunk

STATIC = Path(__file__).parent / "static"
FILES = {"index.html": "text/html", "dashboard.js": "text/javascript",
         "dashboard.css": "text/css", "uPlot.iife.min.js": "text/javascript",
         "uPlot.min.css": "text/css", "LICENSE.uPlot": "text/plain"}
POLL_S = 0.5
HEARTBEAT_S = 15.0


def chunk_json(run: str, chunk: Chunk) -> dict[str, Any]:
    return {"run": run, "events": chunk.events, "start": chunk.start, "next": chunk.next,
            "reset": chunk.reset}


def create_app(index: RunIndex, stopping: threading.Event | None = None) -> FastAPI:
    """The app over `index`; setting `stopping` ends open streams (for a quick shutdown)."""
    stopping = stopping or threading.Event()
    app = FastAPI(title="thinwire dashboard", docs_url=None, redoc_url=None,
                  openapi_url=None)
    add_error_handlers(app)

    @app.get("/")
    async def page() -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/static/{name}")
    async def static(name: str) -> Response:
        if name not in FILES:
            raise HTTPException(404, f"no static file {name!r}")
        return FileResponse(STATIC / name, media_type=FILES[name])

    @app.get("/api/runs")
    async def runs() -> dict[str, Any]:
        return {"runs": await run_in_threadpool(index.describe)}

    @app.get("/api/events")
    async def events(run: str = "", since: str = "0") -> dict[str, Any]:
        offset = parse_since(since)
        path = await run_in_threadpool(index.find, run)
        if path is None:
            raise HTTPException(404, f"no run named {run!r}: see /api/runs")
        return chunk_json(run, await run_in_threadpool(read_chunk, path, offset))

    @app.get("/api/stream")
    async def stream(request: Request, offsets: str = "") -> StreamingResponse:
        start = parse_offsets(offsets)
        return StreamingResponse(sse(request, index, start, stopping),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache",
                                          "X-Accel-Buffering": "no"})

    return app


def add_error_handlers(app: FastAPI) -> None:
    """Errors as {"error", "status"} JSON: 404 for unknown names, 400 for bad parameters
    (parameters are plain strings parsed here, so every mistake gets a message that says
    what to send)."""

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail), "status": exc.status_code},
                            status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _any(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": f"{type(exc).__name__}: {exc}", "status": 500},
                            status_code=500)


def parse_since(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise HTTPException(400, f"since={text[:40]!r}: give a byte offset, a whole number "
                                 ">= 0 (the `next` of the previous answer)")
    return int(text)


def parse_offsets(text: str) -> dict[str, int]:
    """`{"run": offset}` JSON from a reconnecting page; anything malformed counts as none."""
    try:
        data = json.loads(text) if text else {}
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): v for k, v in data.items() if isinstance(v, int) and v >= 0}


def message(kind: str, data: Any) -> str:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def sse(request: Request, index: RunIndex, offsets: dict[str, int],
              stopping: threading.Event) -> AsyncIterator[str]:
    """Every run's new events, polled every POLL_S, until the client or the server goes."""
    names: list[str] = []
    quiet = 0.0
    while not stopping.is_set() and not await request.is_disconnected():
        runs = await run_in_threadpool(index.runs)
        if sorted(runs) != names:
            names = sorted(runs)
            yield message("runs", await run_in_threadpool(index.describe))
        sent = False
        for name, path in runs.items():
            chunk = await run_in_threadpool(read_chunk, path, offsets.get(name, 0))
            if chunk.events or chunk.reset:
                offsets[name] = chunk.next
                yield message("events", chunk_json(name, chunk))
                sent = True
        quiet = 0.0 if sent else quiet + POLL_S
        if quiet >= HEARTBEAT_S:
            quiet = 0.0
            yield ": ping\n\n"
        if not sent:
            await asyncio.sleep(POLL_S)
