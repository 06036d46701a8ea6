"""int8: symmetric uniform quantization to num_bits (2..8), per tensor or per block of N.

Scale = max|x| / (2**(b-1) - 1) per block; deterministic rounding gives |err| <= scale/2,
`stochastic=true` rounds up with probability equal to the remainder (unbiased).
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from ..errors import CodecError
from . import kernels
from .base import Codec, Slot, raise_non_finite
from .bits import pack, packed_len, unpack
from .payload import Payload
from .registry import register


class Int8Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    num_bits: int = Field(8, ge=2, le=8)
    block: int = Field(0, ge=0, description="elements per scale; 0 = one scale per tensor")
    stochastic: bool = False
    seed: int = Field(0, ge=0)


def block_rows(flat: torch.Tensor, block: int) -> torch.Tensor:
    """View the flat tensor as (blocks, block), zero-padding the tail."""
    n = flat.numel()
    size = block if block > 0 else max(n, 1)
    pad = (-n) % size
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return flat.view(-1, size)


def num_blocks(n: int, block: int) -> int:
    if n == 0:
        return 0
    return 1 if block <= 0 else (n + block - 1) // block


@register
class Int8(Codec):
    name = "int8"
    summary = "symmetric b-bit integers (b=2..8) + one fp32 scale per tensor or per block"
    bytes_per_element = "b/8 (+4/block)"
    unbiased = False  # True with stochastic=true
    shared_scale = True
    wants_error_feedback = True
    checks_finite = True
    Params = Int8Params
    decode_keys = ("num_bits", "block")

    @property
    def qmax(self) -> int:
        return 2 ** (self.params.num_bits - 1) - 1

    def _encode(self, x: torch.Tensor, state: Slot | None) -> Payload:
        flat = x.reshape(-1)
        n = flat.numel()
        if n == 0:
            return self.make_payload(x, buffers=[flat.new_zeros(0, dtype=torch.uint8),
                                                 flat.new_zeros(0, dtype=torch.float32)])
        size = self.params.block if self.params.block > 0 else n
        scale, inv, finite = kernels.int8_scales(flat, size, self.qmax)
        if not bool(finite):
            raise_non_finite(self.name, x)
        noise = None
        if self.params.stochastic:
            gen = torch.Generator(device=flat.device)
            gen.manual_seed(self.params.seed + (state or {}).get("step", 0))
            noise = torch.rand((scale.numel(), size), generator=gen, device=flat.device)
            if state is not None:
                state["step"] = state.get("step", 0) + 1
        codes = kernels.quantize_blocks(flat, inv, self.qmax, size, noise)
        return self.make_payload(x, buffers=[self._pack(codes), scale])

    def _pack(self, codes: torch.Tensor) -> torch.Tensor:
        if self.params.num_bits == 8:
            return codes.view(torch.uint8)
        return pack((codes + self.qmax).view(torch.uint8), self.params.num_bits)

    def _stateful(self) -> bool:
        return False

    def _decode(self, payload: Payload, state: Slot | None) -> torch.Tensor:
        self.check(payload)
        n = payload.numel
        if n == 0:
            return torch.zeros(payload.shape, dtype=payload.dtype)
        data, scale = payload.buffers
        if self.params.num_bits == 8:
            codes = data.view(torch.int8)
        else:
            codes = unpack(data, self.params.num_bits, n).to(torch.int16) - self.qmax
        size = self.params.block if self.params.block > 0 else n
        out = kernels.dequantize_blocks(codes, scale, size)
        return out.to(payload.dtype).view(payload.shape)

    def check(self, payload: Payload) -> None:
        n = payload.numel
        want = [(torch.uint8, packed_len(n, self.params.num_bits)),
                (torch.float32, num_blocks(n, self.params.block))]
        got = [(b.dtype, b.numel()) for b in payload.buffers]
        if got != want:
            raise CodecError(f"int8 payload for {n} elements needs buffers {want}, got {got}")
