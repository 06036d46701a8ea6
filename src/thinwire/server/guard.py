"""One guard in front of every endpoint (pure ASGI): the bearer token is checked before a
body byte is read, then the body is read here, bounded in size and in time, and handed on.

A declared Content-Length over the endpoint's limit is refused at once (413); a streamed
(chunked) body is counted as it arrives and refused as soon as the count passes the limit,
without reading the rest; a body that stalls for `timeout` seconds, or averages under
`min_rate` bytes/s after the first `timeout` seconds, gets 408. Refusals close the
connection, so nothing unread is drained. The app then sees a fully read body of bounded
size (the update endpoint has its own, larger limit than the JSON endpoints).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

from .credentials import bearer_role

ASGIApp = Any


class Refusal(Exception):
    """A request the guard answers itself."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class GuardRules:
    token: str | None
    admin_token: str | None
    public: frozenset[str]  # paths that need no token
    json_limit: int
    update_limit: int
    timeout: float
    min_rate: int
    update_paths: frozenset[str] = frozenset({"/v1/updates"})

    def limit(self, path: str) -> tuple[int, str]:
        if path in self.update_paths:
            return self.update_limit, "max_request_bytes"
        return self.json_limit, "max_json_bytes"


class RequestGuard:
    def __init__(self, app: ASGIApp, rules: GuardRules) -> None:
        self.app, self.rules = app, rules

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            role = self._role(scope)
            body = await self._read_body(scope, receive)
        except Refusal as exc:
            await refuse(send, exc)
            return
        if body is None:
            return  # the client went away
        scope.setdefault("state", {})["admin"] = role == "admin"
        await self.app(scope, replay(body, receive), send)

    def _role(self, scope: dict) -> str | None:
        given = header(scope, b"authorization") or b""
        role = bearer_role(given, self.rules.token, self.rules.admin_token)
        if role is None and scope["path"] not in self.rules.public:
            raise Refusal(401, "missing or wrong bearer token: send 'Authorization: Bearer "
                               "TOKEN' (worker --token or THINWIRE_TOKEN)")
        return role

    async def _read_body(self, scope: dict, receive: Any) -> bytes | None:
        limit, key = self.rules.limit(scope["path"])
        declared = content_length(scope)
        if declared is not None and declared > limit:
            raise Refusal(413, f"Content-Length {declared} exceeds {key}={limit}")
        parts: list[bytes] = []
        count, start = 0, time.monotonic()
        last = start
        while True:
            message = await self._next(receive, start, last, count)
            if message["type"] == "http.disconnect":
                return None
            part = message.get("body", b"")
            count += len(part)
            if count > limit:
                raise Refusal(413, f"request body passed {key}={limit} bytes")
            parts.append(part)
            last = time.monotonic()
            if not message.get("more_body", False):
                return b"".join(parts)

    async def _next(self, receive: Any, start: float, last: float, count: int) -> dict:
        """The next body message, before the silence or average-rate deadline."""
        t, rate = self.rules.timeout, self.rules.min_rate
        deadline = min(last + t, start + t + count / rate)
        try:
            return await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.0))
        except asyncio.TimeoutError:
            raise Refusal(408, f"request body too slow: {count} bytes in "
                               f"{time.monotonic() - start:.1f}s (request_timeout={t}s, "
                               f"body_min_rate={rate} B/s)") from None


def header(scope: dict, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return value
    return None


def content_length(scope: dict) -> int | None:
    value = header(scope, b"content-length")
    if value is None:
        return None
    if not value.strip().isdigit():
        raise Refusal(400, "Content-Length must be a decimal number")
    return int(value)


def replay(body: bytes, receive: Any) -> Any:
    """A `receive` that yields the body read by the guard, then the real stream's events
    (a disconnect, for apps that listen for one)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def again() -> dict:
        return pending.pop() if pending else await receive()

    return again


async def refuse(send: Any, exc: Refusal) -> None:
    """A JSON error like the app's, closing the connection (the body may be unread)."""
    payload = json.dumps({"error": exc.message, "status": exc.status}).encode()
    headers = [(b"content-type", b"application/json"), (b"connection", b"close"),
               (b"content-length", str(len(payload)).encode())]
    if exc.status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
