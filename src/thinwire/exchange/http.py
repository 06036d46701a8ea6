"""HttpTransport: requests to one server with retries, backoff and a reconnect hook; every
request and response body is recorded in the link ledger (payload or control). Bodies go out
as protobuf: an Update (`send`) or a control message (`post`: Register, Skip, Offer).

While the server is unreachable (connection errors, 5xx) a request retries with exponential
backoff for up to `retry_for` seconds; after an outage, or when `lost(response)` says the
server forgot this client, `on_reconnect` runs (e.g. register again) before the resend.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import httpx

from ..obs.ledger import LinkLedger
from ..wire.control import Control, serialize
from .transport import Transport, TransportError

__all__ = ["HttpTransport", "TransportError", "error_of"]


def error_of(r: httpx.Response) -> str:
    """The server's error message (JSON `error`), else the start of the body."""
    try:
        return str(r.json().get("error", r.text))
    except ValueError:
        return r.text[:200]


class HttpTransport(Transport):
    def __init__(self, url: str, node_id: str, token: str | None = None,
                 retry_for: float = 120.0, log: Callable[[str], None] | None = None,
                 ledger: LinkLedger | None = None, server: str = "coordinator") -> None:
        super().__init__(ledger or LinkLedger(hub=server))
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers,
                                 timeout=httpx.Timeout(60.0, connect=5.0))
        self.node_id, self.server = node_id, server
        self.retry_for, self.log = retry_for, log or (lambda s: None)
        self.on_reconnect: Callable[[], Any] | None = None
        self.lost: Callable[[httpx.Response], bool] = lambda r: False

    def send(self, src: str, dst: str, data: bytes, raw: int = 0,
             kind: str = "payload") -> httpx.Response:
        """POST `data` (protobuf) to path `dst`."""
        return self.request("POST", dst, content=data, raw=raw, kind=kind,
                            headers={"Content-Type": "application/x-protobuf"})

    def post(self, path: str, message: Control) -> httpx.Response:
        """POST a control message (wire/control.py) to `path`, counted as control bytes."""
        return self.send(self.node_id, path, serialize(message), kind="control")

    def request(self, method: str, path: str, raw: int = 0, kind: str = "control",
                **kw: Any) -> httpx.Response:
        for _ in range(5):
            r, outage = self._attempt(method, path, **kw)
            if (outage or self.lost(r)) and self.on_reconnect is not None:
                self.on_reconnect()
                continue
            if r.status_code == 401:
                raise TransportError(f"server says: {error_of(r)}")
            self._record(r, raw, kind)
            return r
        raise TransportError(f"{method} {path}: the server keeps forgetting this client")

    def _record(self, r: httpx.Response, raw: int, kind: str) -> None:
        sent = len(r.request.content) if r.request is not None else 0
        if sent:
            self.ledger.record(self.node_id, self.server, sent, raw, kind)
        if r.content:
            down = "payload" if r.headers.get("content-type", "").endswith("protobuf") \
                else "control"
            self.ledger.record(self.server, self.node_id, len(r.content), 0, down)

    def _attempt(self, method: str, path: str, **kw: Any) -> tuple[httpx.Response, bool]:
        start, backoff, outage = time.monotonic(), 0.2, False
        while True:
            try:
                r = self.http.request(method, path, **kw)
                if r.status_code < 500:
                    return r, outage
                problem = f"HTTP {r.status_code}: {error_of(r)}"
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}"
            if time.monotonic() - start > self.retry_for:
                raise TransportError(f"server at {self.http.base_url} unreachable for "
                                     f"{self.retry_for:.0f}s ({problem}); is it running?")
            if not outage:
                self.log(f"server unreachable ({problem}); retrying with backoff")
            outage = True
            time.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, 5.0)

    def close(self) -> None:
        self.http.close()
