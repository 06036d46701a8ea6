"""HTTP plumbing every coordinator app shares: errors as JSON, a bearer token, bounded
request bodies.

Runtimes never import each other, so what two coordinators (FLQ service, federated experts)
both need lives here, below them.
"""

import hmac
from collections.abc import Callable
from typing import Any

from ..errors import ThinwireError


class HttpError(ThinwireError):
    """An error a client can act on, with its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def add_json_errors(app: Any) -> None:
    """Every error answers `{"error": message, "status": code}`: HttpError with its status,
    other ThinwireErrors and malformed requests with 400."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    def answer(status: int, message: str) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse({"error": message, "status": status}, status_code=status,
                            headers=headers)

    @app.exception_handler(HttpError)
    async def _http(request: Request, exc: HttpError) -> JSONResponse:
        return answer(exc.status, exc.message)

    @app.exception_handler(ThinwireError)
    async def _thinwire(request: Request, exc: ThinwireError) -> JSONResponse:
        return answer(400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                             for e in exc.errors())
        return answer(400, f"bad request: {problems}")


def bearer(token: str | None) -> Callable[[Any], None]:
    """A FastAPI dependency: the request must carry `Authorization: Bearer <token>`
    (compared in constant time); no token configured means open."""
    from fastapi import Request  # annotations below are evaluated: FastAPI reads them

    expected = f"Bearer {token}".encode() if token else None

    def check(request: Request) -> None:
        if expected is None:
            return
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            raise HttpError(401, "missing or wrong bearer token: send 'Authorization: Bearer "
                                 "TOKEN' (--token or THINWIRE_TOKEN)")

    return check


class BodyLimit:
    """ASGI middleware: a request body may not pass `limit` bytes, whether it declares its
    length or streams it; the route sees HttpError(413) before it holds too much."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.limit:
            await self.refuse(scope, receive, send, declared.decode(errors="replace"))
            return
        seen = 0

        async def counted() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise HttpError(413, f"request body passes max_request_bytes={self.limit}")
            return message

        await self.app(scope, counted, send)

    async def refuse(self, scope: dict[str, Any], receive: Any, send: Any,
                     declared: str) -> None:
        from fastapi.responses import JSONResponse

        message = f"request body of {declared} bytes exceeds max_request_bytes={self.limit}"
        await JSONResponse({"error": message, "status": 413}, status_code=413)(
            scope, receive, send)
