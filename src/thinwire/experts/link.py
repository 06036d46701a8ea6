"""A worker's link to its coordinator: register, pull the expert, push an upload, leave.

`HttpLink` speaks the app's HTTP API through an `HttpTransport` (retries, reconnects, a link
ledger; registration goes as a protobuf Register); `LocalLink` calls an `ExpertsCoordinator`
in the same process with the same serialized bodies (tests, benchmarks). The worker loop
runs on either.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from ..errors import ThinwireError
from ..exchange.http import HttpTransport, error_of
from ..server import HttpError
from ..wire import Update, WireLimits, parse_update
from ..wire.control import Register, parse, serialize

VERSION = "x-thinwire-version"
PULL_LIMITS = WireLimits(max_message_bytes=1 << 31)


class WorkerError(ThinwireError):
    """Fatal for a worker: registration refused, the coordinator gone for good."""


class Link(Protocol):
    def register(self, msg: Register) -> dict[str, Any]: ...
    def pull(self, wait_version: int | None, wait_s: float) -> tuple[Update, int]: ...
    def push(self, body: bytes, raw: int) -> tuple[bool, str]: ...
    def leave(self) -> None: ...


class HttpLink:
    def __init__(self, transport: HttpTransport, wid: str) -> None:
        self.transport, self.wid = transport, wid

    def register(self, msg: Register) -> dict[str, Any]:
        r = self.transport.post("/v1/workers", msg)
        if r.status_code != 200:
            raise WorkerError(f"registration refused: {error_of(r)}")
        return r.json()

    def pull(self, wait_version: int | None, wait_s: float) -> tuple[Update, int]:
        params: dict[str, Any] = {"worker_id": self.wid}
        if wait_version is not None:
            params.update(wait_version=wait_version, wait_s=wait_s)
        r = self.transport.request("GET", "/v1/experts/adapter", params=params)
        if r.status_code != 200:
            raise WorkerError(f"cannot pull the expert: {error_of(r)}")
        return parse_update(r.content, PULL_LIMITS), int(r.headers[VERSION])

    def push(self, body: bytes, raw: int) -> tuple[bool, str]:
        r = self.transport.send(self.wid, "/v1/updates", body, raw=raw)
        if r.status_code == 200:
            return True, str(r.json()["status"])
        return False, f"{r.status_code}: {error_of(r)}"

    def leave(self) -> None:
        self.transport.request("POST", f"/v1/workers/{self.wid}/leave")


class LocalLink:
    """The same calls on a coordinator object, no sockets."""

    def __init__(self, coordinator: Any, wid: str) -> None:
        self.co, self.wid = coordinator, wid

    def register(self, msg: Register) -> dict[str, Any]:
        m = parse(Register, serialize(msg))  # what the app would get (fp32 centroid)
        try:
            return self.co.register(m.worker_id, m.session, m.specialty, m.base, m.centroid,
                                    m.count, m.capabilities)
        except HttpError as exc:
            raise WorkerError(f"registration refused: {exc.message}") from None

    def pull(self, wait_version: int | None, wait_s: float) -> tuple[Update, int]:
        end = time.monotonic() + wait_s
        while (wait_version is not None and self.co.version_of(self.wid) < wait_version
               and time.monotonic() < end):
            time.sleep(0.02)
        body, version = self.co.pull(self.wid)
        return parse_update(body, PULL_LIMITS), version

    def push(self, body: bytes, raw: int) -> tuple[bool, str]:
        try:
            return True, str(self.co.push(body)["status"])
        except HttpError as exc:
            return False, f"{exc.status}: {exc.message}"

    def leave(self) -> None:
        self.co.leave(self.wid)
