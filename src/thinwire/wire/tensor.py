"""Payload <-> TensorPayload protobuf, with validation of everything read from the wire.

Parsing runs in two stages so that nothing is computed from an unchecked number:
`payload_from_proto(..., validate=False)` bounds every declared count (`check_header`) and
wraps the buffers without copying; `validate_payload` then lets each codec check its layout,
innermost parts first, so a parent never trusts a part's declared size (a top-k index count is
its value part's length) before the part has matched it against the bytes it carries.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from google.protobuf.message import DecodeError

from ..codecs.payload import CODE_DTYPES, DTYPE_CODES, Payload
from ..codecs.registry import codec_for_payload
from ..errors import CodecError, WireError
from . import thinwire_pb2 as pb
from .limits import WireLimits, bounded_numel, brief, brief_shape, brief_text, check_count, \
    check_text

ROLES = ("", "buffer", "adapter")  # "" is a parameter; the exchange layer names them

MAX_REASON = 400  # characters of a codec's complaint quoted in a WireError

# torch.frombuffer warns that `bytes` is read-only; decoded buffers are never written in place.
warnings.filterwarnings("ignore", message="The given buffer is not writable", category=UserWarning)


def _buffer_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().reshape(-1)
    if t.device.type != "cpu":
        t = t.cpu()
    return t.contiguous().view(torch.uint8).numpy().tobytes()


def payload_to_proto(p: Payload) -> pb.TensorPayload:
    msg = pb.TensorPayload(name=p.name, shape=[int(d) for d in p.shape],
                           dtype=DTYPE_CODES[p.dtype], codec=p.codec, params=p.params,
                           scalars=[float(s) for s in p.scalars], seed=int(p.seed),
                           role=p.role)
    for b in p.buffers:
        msg.buffers.add(dtype=DTYPE_CODES[b.dtype], data=_buffer_bytes(b))
    for part in p.parts:
        msg.parts.append(payload_to_proto(part))
    return msg


def to_bytes(p: Payload) -> bytes:
    return payload_to_proto(p).SerializeToString()


@dataclass
class ElementBudget:
    """Elements a whole message may still declare (WireLimits.max_total_elements)."""

    left: int

    def take(self, numel: int, where: str) -> None:
        self.left -= numel
        if self.left < 0:
            raise WireError(f"{where}: the message declares more than its limit of elements "
                            "in total (WireLimits.max_total_elements)")


def describe(msg: pb.TensorPayload) -> str:
    """'tensor <name>' for error messages, the name cut short."""
    return f"tensor {brief_text(msg.name)}" if msg.name else "tensor"


def check_header(msg: pb.TensorPayload, limits: WireLimits, depth: int = 0) -> int:
    """Bound every count the header declares; return the element count. No buffer is read."""
    where = describe(msg)
    if depth > limits.max_depth:
        raise WireError(f"{where}: payload nesting deeper than {limits.max_depth} "
                        "(WireLimits.max_depth)")
    for field in ("name", "codec", "params"):
        check_text(f"{where} {field}", getattr(msg, field), limits)
    check_count(f"{where}: number of dims", len(msg.shape), limits.max_dims, "max_dims")
    check_count(f"{where}: buffers", len(msg.buffers), limits.max_buffers, "max_buffers")
    check_count(f"{where}: parts", len(msg.parts), limits.max_parts, "max_parts")
    check_count(f"{where}: scalars", len(msg.scalars), limits.max_scalars, "max_scalars")
    numel = bounded_numel(msg.shape, limits.max_elements)
    if numel is None:
        raise WireError(f"{where}: shape {brief_shape(msg.shape)} has a dim or an element "
                        f"count over the limit of {limits.max_elements} "
                        "(raise WireLimits.max_elements)")
    dtype = CODE_DTYPES.get(msg.dtype)
    if dtype is None or not dtype.is_floating_point:
        raise WireError(f"{where}: dtype code {brief(msg.dtype)} is not a floating tensor dtype")
    if not all(math.isfinite(s) for s in msg.scalars):
        raise WireError(f"{where}: non-finite scale/scalar among {len(msg.scalars)} scalars")
    return numel


def _buffer_from_proto(buf: pb.Buffer, where: str) -> torch.Tensor:
    dtype = CODE_DTYPES.get(buf.dtype)
    if dtype is None:
        raise WireError(f"{where}: unknown buffer dtype code {brief(buf.dtype)}")
    data = buf.data  # one copy out of the message; frombuffer wraps it without another
    item = torch.empty(0, dtype=dtype).element_size()
    if len(data) % item:
        raise WireError(f"{where}: buffer of {len(data)} bytes is not a whole number of "
                        f"{dtype} elements")
    if not data:
        return torch.empty(0, dtype=dtype)
    return torch.frombuffer(data, dtype=dtype)


def payload_from_proto(msg: pb.TensorPayload, limits: WireLimits = WireLimits(),
                       depth: int = 0, budget: ElementBudget | None = None,
                       validate: bool = True) -> Payload:
    """Bound, convert and (unless `validate=False`) codec-check; raises WireError."""
    if budget is None:
        budget = ElementBudget(limits.max_total_elements)
    budget.take(check_header(msg, limits, depth), describe(msg))
    where = describe(msg)
    if msg.role not in ROLES:
        raise WireError(f"{where}: role {brief_text(msg.role)} is not one of "
                        f"{[r for r in ROLES if r]} (or empty for a parameter)")
    if msg.role and depth:
        raise WireError(f"{where}: a nested part cannot carry a role")
    payload = Payload(role=msg.role, codec=msg.codec, shape=tuple(int(d) for d in msg.shape),
                      dtype=CODE_DTYPES[msg.dtype], params=msg.params,
                      scalars=list(msg.scalars), seed=int(msg.seed), name=msg.name,
                      buffers=[_buffer_from_proto(b, where) for b in msg.buffers],
                      parts=[payload_from_proto(q, limits, depth + 1, budget, False)
                             for q in msg.parts])
    if validate and depth == 0:
        validate_payload(payload)
    return payload


def validate_payload(payload: Payload, where: str | None = None) -> None:
    """Ask the codecs named in the payload, innermost part first, whether shapes, buffers and
    params agree; then require finite floating buffers."""
    where = where or (f"tensor {brief_text(payload.name)}" if payload.name else "tensor")
    try:
        _check_tree(payload)
    except CodecError as exc:
        reason = str(exc)
        cut = reason[:MAX_REASON] + ("..." if len(reason) > MAX_REASON else "")
        raise WireError(f"{where}: {cut}") from None
    for buf in _all_buffers(payload):
        if buf.is_floating_point() and buf.numel() and not bool(torch.isfinite(buf).all()):
            raise WireError(f"{where}: non-finite values in a {buf.dtype} buffer")


def _check_tree(p: Payload) -> None:
    for part in p.parts:
        _check_tree(part)
    codec_for_payload(p).check(p)


def _all_buffers(p: Payload) -> list[torch.Tensor]:
    out = list(p.buffers)
    for part in p.parts:
        out.extend(_all_buffers(part))
    return out


def parse_strict(msg, data: bytes, what: str) -> None:
    """ParseFromString that also rejects trailing bytes, unknown fields and merged copies."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireError(f"{what}: expected bytes, got {type(data).__name__}")
    try:
        msg.ParseFromString(bytes(data))
    except DecodeError as exc:
        raise WireError(f"{what}: malformed or truncated protobuf ({exc})") from None
    except Exception as exc:  # upb raises other errors on a few corrupt inputs
        raise WireError(f"{what}: cannot parse ({type(exc).__name__}: {exc})") from None
    with_unknown = msg.ByteSize()
    msg.DiscardUnknownFields()  # ByteSize counts unknown fields: drop them, then compare
    if msg.ByteSize() != with_unknown:
        raise WireError(f"{what}: carries fields this build does not know (schema mismatch "
                        "or tampering); upgrade thinwire or send the schema's fields only")
    if msg.ByteSize() != len(data):
        raise WireError(f"{what}: {len(data)} bytes but the message accounts for "
                        f"{msg.ByteSize()}: trailing bytes or non-canonical data")


def check_size(data: bytes, limit: int, what: str, knob: str = "max_message_bytes") -> None:
    """Type and size of untrusted input, before the protobuf parser sees it."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireError(f"{what}: expected bytes, got {type(data).__name__}")
    if len(data) > limit:
        raise WireError(f"{what} of {len(data)} bytes exceeds the limit of {limit} "
                        f"(WireLimits.{knob})")


def parse_payload(data: bytes, limits: WireLimits = WireLimits()) -> Payload:
    check_size(data, limits.max_message_bytes, "TensorPayload")
    msg = pb.TensorPayload()
    parse_strict(msg, data, "TensorPayload")
    return payload_from_proto(msg, limits)
