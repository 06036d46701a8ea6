"""uvicorn's h11 protocol with a deadline for request headers.

uvicorn times out idle keep-alive connections but not a request whose headers never
finish (slow loris): a connection that sent "POST /v1/wor" and stopped is held forever.
Here a request's headers must be complete `header_timeout` seconds after the connection
opens or after the first byte of the next request; otherwise the connection is closed.
Bodies are timed by the ASGI guard (guard.py), which can still answer with a status.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


class HeaderDeadlineH11(H11Protocol):
    header_timeout = 10.0

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        self._header_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:
            self._arm()  # (part of) the next request's head: its clock starts now
        else:
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._header_timer is None and not self.transport.is_closing():
            self._header_timer = self.loop.call_later(self.header_timeout, self._expire)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expire(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            if self.cycle is None or self.cycle.response_complete:
                self.transport.close()  # nothing in flight: drop the unfinished head


def with_header_timeout(seconds: float) -> type[H11Protocol]:
    """The protocol class to pass as uvicorn.Config(http=...)."""
    return type("HeaderDeadlineH11", (HeaderDeadlineH11,), {"header_timeout": seconds})


def server_config(app: Any, host: str, port: int, request_timeout: float,
                  max_connections: int, debug: bool = False) -> Any:
    """uvicorn settings that bound what one client can hold: a header deadline, header size,
    keep-alive, and a cap on connections."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port,
                          log_level="debug" if debug else "warning", access_log=debug,
                          http=with_header_timeout(request_timeout),
                          h11_max_incomplete_event_size=16 << 10, timeout_keep_alive=5,
                          limit_concurrency=max_connections)
