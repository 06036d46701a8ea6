"""Serving the dashboard: in the foreground (`thinwire dashboard`) or beside a run (a thread).

A runtime that takes `--dashboard [HOST:]PORT` does

    with open_dashboard(args.dashboard, [run_dir_or_parent]):
        train()

The socket is bound before the thread starts, so a port in use is one clear error at once
rather than a dead thread; port 0 picks a free one (`DashboardServer.url` tells which).
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from ...errors import ThinwireError, require
from .runs import RunIndex

DEFAULT_PORT = 3000


class DashboardServer:
    """uvicorn serving the dashboard app over `folders` on an already bound socket."""

    def __init__(self, folders: list[Path | str], host: str = "127.0.0.1",
                 port: int = DEFAULT_PORT) -> None:
        for module in ("fastapi", "uvicorn"):
            require(module, "dashboard", "the dashboard")
        import uvicorn  # here, not at import: the CLI imports this module for its flag

        from .app import create_app

        self.sock = bind(host, port)
        self.host, self.port = host, self.sock.getsockname()[1]
        self.stopping = threading.Event()
        app = create_app(RunIndex(folders), self.stopping)
        self.server = uvicorn.Server(uvicorn.Config(
            app, log_level="warning", access_log=False, lifespan="off",
            timeout_graceful_shutdown=2))
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def serve(self) -> None:
        """In the foreground, until Ctrl-C."""
        self.server.run(sockets=[self.sock])

    def start(self, timeout: float = 10.0) -> "DashboardServer":
        """In a daemon thread; returns once the server accepts connections."""
        self._thread = threading.Thread(target=self.serve, name="thinwire-dashboard",
                                        daemon=True)
        self._thread.start()
        waited = 0.0
        while not self.server.started and self._thread.is_alive() and waited < timeout:
            threading.Event().wait(0.05)
            waited += 0.05
        if not self.server.started:
            raise ThinwireError(f"the dashboard did not start on {self.url}")
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.sock.close()


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ThinwireError(f"dashboard: cannot listen on {host}:{port} ({exc.strerror}); "
                            "pick another port") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def parse_address(text: str) -> tuple[str, int]:
    """`PORT` (on 127.0.0.1) or `HOST:PORT`."""
    host, _, port = text.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or int(port) > 65535:
        raise ThinwireError(f"--dashboard {text!r}: give PORT or HOST:PORT, e.g. 3000")
    return host, int(port)


def add_dashboard_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dashboard", metavar="[HOST:]PORT",
                   help="serve the live dashboard (thinwire dashboard) while this runs")


@contextlib.contextmanager
def open_dashboard(address: str | None, folders: list[Path | str]) -> Iterator[
        DashboardServer | None]:
    """The dashboard over `folders` while the block runs; nothing when `address` is None."""
    if address is None:
        yield None
        return
    server = DashboardServer(folders, *parse_address(address)).start()
    announce(server)
    try:
        yield server
    finally:
        server.stop()


def announce(server: DashboardServer, tail: str = "") -> None:
    print(f"dashboard: {server.url}{tail}", file=sys.stderr, flush=True)
    if server.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"dashboard: listening on {server.host}, without a password: whoever reaches "
              "it can read these runs' events", file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="thinwire dashboard",
        description="Live charts of running and finished runs (their events.jsonl).")
    p.add_argument("folders", nargs="*", type=Path, default=[Path("runs")],
                   metavar="RUN_DIR", help="run folders or parents of run folders "
                   "(default: runs/)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--host", default="127.0.0.1",
                   help="127.0.0.1 (default) keeps it on this machine")
    return p


def dashboard_main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    missing = [str(f) for f in args.folders if not f.exists()]
    if missing:
        raise ThinwireError(f"dashboard: no such folder: {', '.join(missing)}")
    server = DashboardServer(args.folders, args.host, args.port)
    announce(server, " (Ctrl-C to stop)")
    server.serve()
    return 0
