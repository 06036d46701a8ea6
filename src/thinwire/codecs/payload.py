"""The in-memory form of one encoded tensor.

A `Payload` is self-describing: codec name, decode parameters, original shape and dtype, typed
buffers, fp32 scalars, a seed and nested parts (e.g. the value payload of a sparsifier). Buffers
stay tensors (on any device) so collective hooks can ship them without a host round trip; the
wire layer turns them into protobuf bytes. `nbytes` is the exact serialized size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

# Wire dtype codes (mirrors the DType enum in wire/thinwire.proto; 0 means unset).
DTYPE_CODES: dict[torch.dtype, int] = {
    torch.float32: 1,
    torch.float16: 2,
    torch.bfloat16: 3,
    torch.int8: 4,
    torch.uint8: 5,
    torch.int32: 6,
    torch.int64: 7,
    torch.float64: 8,
    torch.int16: 9,
}
CODE_DTYPES: dict[int, torch.dtype] = {v: k for k, v in DTYPE_CODES.items()}


def _varint_len(value: int) -> int:
    n = 1
    while value >= 0x80:
        value >>= 7
        n += 1
    return n


def _len_field(tag_len: int, body: int) -> int:
    """Size of a length-delimited field with a one-byte tag; proto3 omits empty ones."""
    return tag_len + _varint_len(body) + body


@dataclass
class Payload:
    codec: str
    shape: tuple[int, ...]
    dtype: torch.dtype = torch.float32
    params: str = ""
    buffers: list[torch.Tensor] = field(default_factory=list)
    scalars: list[float] = field(default_factory=list)
    seed: int = 0
    parts: list["Payload"] = field(default_factory=list)
    name: str = ""
    role: str = ""  # "" = a parameter; "buffer", "adapter" (set by the exchange layer)

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= int(d)
        return n

    def buffer_nbytes(self) -> int:
        """Bytes of buffer data alone (no framing), including nested parts."""
        own = sum(b.numel() * b.element_size() for b in self.buffers)
        return own + sum(p.buffer_nbytes() for p in self.parts)

    @property
    def nbytes(self) -> int:
        """Exact length of this payload serialized as a `TensorPayload` message.

        Computed from protobuf's encoding rules rather than by serializing, so it is cheap for
        device tensors; tests check it against `len(to_bytes(payload))` byte for byte.
        """
        size = 0
        if self.name:
            size += _len_field(1, len(self.name.encode()))
        if self.shape:
            size += _len_field(1, sum(_varint_len(int(d)) for d in self.shape))
        code = DTYPE_CODES[self.dtype]
        size += 1 + _varint_len(code)
        if self.codec:
            size += _len_field(1, len(self.codec.encode()))
        if self.params:
            size += _len_field(1, len(self.params.encode()))
        for b in self.buffers:
            data = b.numel() * b.element_size()
            body = 1 + _varint_len(DTYPE_CODES[b.dtype]) + (_len_field(1, data) if data else 0)
            size += _len_field(1, body)
        if self.scalars:
            size += _len_field(1, 4 * len(self.scalars))
        if self.seed:
            size += 1 + _varint_len(int(self.seed))
        for p in self.parts:
            size += _len_field(1, p.nbytes)
        return size
