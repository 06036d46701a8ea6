"""Payload <-> TensorPayload protobuf, with validation of everything read from the wire."""

from __future__ import annotations

import math
import warnings

import torch
from google.protobuf.message import DecodeError

from ..codecs.payload import CODE_DTYPES, DTYPE_CODES, Payload
from ..codecs.registry import codec_for_payload
from ..errors import CodecError, WireError
from . import thinwire_pb2 as pb
from .limits import WireLimits

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
                           scalars=[float(s) for s in p.scalars], seed=int(p.seed))
    for b in p.buffers:
        msg.buffers.add(dtype=DTYPE_CODES[b.dtype], data=_buffer_bytes(b))
    for part in p.parts:
        msg.parts.append(payload_to_proto(part))
    return msg


def to_bytes(p: Payload) -> bytes:
    return payload_to_proto(p).SerializeToString()


def _buffer_from_proto(buf: pb.Buffer, where: str) -> torch.Tensor:
    dtype = CODE_DTYPES.get(buf.dtype)
    if dtype is None:
        raise WireError(f"{where}: unknown buffer dtype code {buf.dtype}")
    item = torch.empty(0, dtype=dtype).element_size()
    if len(buf.data) % item:
        raise WireError(f"{where}: buffer of {len(buf.data)} bytes is not a whole number of "
                        f"{dtype} elements")
    if not buf.data:
        return torch.empty(0, dtype=dtype)
    return torch.frombuffer(buf.data, dtype=dtype)


def payload_from_proto(msg: pb.TensorPayload, limits: WireLimits = WireLimits(),
                       depth: int = 0) -> Payload:
    """Validate and convert; raises WireError naming what is wrong."""
    where = f"tensor '{msg.name}'" if msg.name else "tensor"
    if depth > limits.max_depth:
        raise WireError(f"{where}: payload nesting deeper than {limits.max_depth}")
    dtype = CODE_DTYPES.get(msg.dtype)
    if dtype is None or not dtype.is_floating_point:
        raise WireError(f"{where}: dtype code {msg.dtype} is not a floating tensor dtype")
    numel = math.prod(int(d) for d in msg.shape)
    if numel > limits.max_elements:
        raise WireError(f"{where}: shape {list(msg.shape)} has {numel} elements, over the "
                        f"limit of {limits.max_elements} (raise WireLimits.max_elements)")
    scalars = list(msg.scalars)
    if not all(math.isfinite(s) for s in scalars):
        raise WireError(f"{where}: non-finite scale/scalar in {scalars}")
    payload = Payload(codec=msg.codec, shape=tuple(int(d) for d in msg.shape), dtype=dtype,
                      params=msg.params, scalars=scalars, seed=int(msg.seed), name=msg.name,
                      buffers=[_buffer_from_proto(b, where) for b in msg.buffers],
                      parts=[payload_from_proto(q, limits, depth + 1) for q in msg.parts])
    if depth == 0:
        validate_payload(payload, where)
    return payload


def validate_payload(payload: Payload, where: str) -> None:
    """Ask the codec named in the payload whether shapes, buffers and params agree."""
    try:
        codec = codec_for_payload(payload)
        codec.check(payload)
        for part in payload.parts:
            codec_for_payload(part).check(part)
    except CodecError as exc:
        raise WireError(f"{where}: {exc}") from None
    for buf in _all_buffers(payload):
        if buf.is_floating_point() and buf.numel() and not bool(torch.isfinite(buf).all()):
            raise WireError(f"{where}: non-finite values in a {buf.dtype} buffer")


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
    if msg.ByteSize() != len(data):
        raise WireError(f"{what}: {len(data)} bytes but the message accounts for "
                        f"{msg.ByteSize()}: trailing bytes, unknown fields or non-canonical data")


def parse_payload(data: bytes, limits: WireLimits = WireLimits()) -> Payload:
    msg = pb.TensorPayload()
    parse_strict(msg, data, "TensorPayload")
    return payload_from_proto(msg, limits)
