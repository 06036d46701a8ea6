"""Control bodies (register, skip, offer) in two forms that end in one pydantic model.

`application/x-protobuf`: a message of wire/control.py, what thinwire workers send (typed,
a fraction of the JSON's bytes), parsed strictly and bounded by `WireLimits`.
`application/json` (or no Content-Type, as before): curl and older clients. Both then meet
the runtime's model, so its rules hold for either form and one code path follows the parse;
any other type gets 415. The guard (guard.py) has checked the token and bounded the body in
size and time before any of this runs.

Capabilities are a flat map of short keys to short scalars in JSON and of strings in
protobuf; they are kept as strings (a JSON scalar as its JSON text), so both forms store
the same thing.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, Field, StringConstraints, ValidationError
from pydantic_core import from_json

from ..errors import WireError
from ..wire.control import parse
from .http import HttpError

PROTOBUF, JSON = "application/x-protobuf", "application/json"
JSON_INT = 1 << 53  # integers every JSON reader keeps exact
M = TypeVar("M", bound=BaseModel)

CapKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
CapValue = (Annotated[str, Field(max_length=256)] | Annotated[bool, Field(strict=True)]
            | Annotated[int, Field(strict=True, ge=-JSON_INT, le=JSON_INT)]
            | Annotated[float, Field(strict=True, allow_inf_nan=False)] | None)


def as_text(caps: dict[str, Any]) -> dict[str, str]:
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in caps.items()}


def capability_map(most: int) -> Any:
    """The capabilities type: at most `most` flat entries (no nesting), kept as strings."""
    return Annotated[dict[CapKey, CapValue], Field(max_length=most), AfterValidator(as_text)]


def media_type(headers: Any) -> str:
    """`type/subtype` of the Content-Type header, lower case, parameters dropped."""
    return headers.get("content-type", "").split(";")[0].strip().lower()


async def read_control(request: Any, model: type[M], message: type) -> M:
    """The request's body as `model`: protobuf `message` (wire/control.py) or JSON; 400
    says what is wrong with it, 415 names the two accepted types."""
    kind, body = media_type(request.headers), await request.body()
    if kind == PROTOBUF:
        fields = proto_fields(message, body, model)
    elif kind in ("", JSON):
        fields = json_fields(body)
    else:
        raise HttpError(415, f"Content-Type {kind[:80]!r} is not accepted: send {JSON} or "
                             f"{PROTOBUF} (a thinwire.v1.{message.__name__})")
    return validated(model, fields)


def proto_fields(message: type, body: bytes, model: type[BaseModel]) -> dict[str, Any]:
    """The message's fields: all the model knows, and others only when set (so a model
    that forbids extras refuses them, as it does in JSON)."""
    try:
        msg = parse(message, body)
    except WireError as exc:
        raise HttpError(400, f"bad {PROTOBUF} body: {exc}") from None
    return {k: v for k, v in asdict(msg).items() if k in model.model_fields or v}


def json_fields(body: bytes) -> Any:
    try:
        return from_json(body, allow_inf_nan=False)
    except ValueError as exc:
        raise HttpError(400, f"bad request: body: invalid JSON ({exc})"[:2000]) from None


def validated(model: type[M], fields: Any) -> M:
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in ('body', *e['loc']))}: {e['msg']}"
                             for e in exc.errors()[:5])
        raise HttpError(400, f"bad request: {problems}"[:2000]) from None


def body_doc(model: type[BaseModel], message: type) -> dict[str, Any]:
    """OpenAPI for a route that reads its body with `read_control` (FastAPI's openapi_extra)."""
    proto = {"type": "string", "format": "binary",
             "description": f"thinwire.v1.{message.__name__} (src/thinwire/wire/thinwire.proto)"}
    return {"requestBody": {"required": True, "content": {
        JSON: {"schema": model.model_json_schema()}, PROTOBUF: {"schema": proto}}}}
