"""Errors as JSON, the same shape from every coordinator app (the guard in guard.py answers
its own refusals in that shape too).

Runtimes never import each other, so what two coordinators (FLQ service, federated experts)
both need lives here, below them.
"""

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
