"""Unbiased stochastic quantizers: qsgd, nc (natural compression), terngrad.

Randomness is a counter-based hash of (key, element index) (`rounding.noise_at`), the key
mixed from (params.seed, step), the step counter living in the caller's state slot, so runs
are reproducible, do not depend on slicing or device, and a state_dict round trip continues
with the same draws. The per-element work runs in `rounding`'s kernels, compiled into one loop
for large CPU tensors (bit-identical to the eager path).
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from ..errors import CodecError
from .base import Codec, Slot
from .bits import packed_len
from . import rounding
from .payload import Payload
from .registry import register
from .sign import expect_layout, lut_decode, pack_into, require_finite

MASK64 = (1 << 64) - 1
MAX_EXP = {torch.float16: 142}  # largest biased fp32 exponent the dtype holds; else 254


def _mix(seed: int, step: int) -> int:
    """splitmix64 of (seed, step): distinct, decorrelated noise keys per step."""
    z = (seed * 0x9E3779B97F4A7C15 + step + 0x632BE59BD9B4E019) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def next_key(seed: int, state: Slot | None, device: torch.device) -> torch.Tensor:
    """This encode's noise key (see `rounding.split_key`); advances state["step"]."""
    step = int(state.get("step", 0)) if state is not None else 0
    if state is not None:
        state["step"] = step + 1
    return rounding.split_key(_mix(seed, step), device)


def _empty_codes(x: torch.Tensor) -> torch.Tensor:
    return torch.zeros(0, dtype=torch.uint8, device=x.device)


class SeedParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seed: int = Field(0, ge=0)


class QSGDParams(SeedParams):
    levels: int = Field(16, ge=1, le=127, description="s: levels per sign")


@register
class QSGD(Codec):
    name = "qsgd"
    summary = "sign * stochastic level of s*abs(x)/norm2(x), ceil(log2(2s+1)) bits + fp32 norm"
    bytes_per_element = "ceil(log2(2s+1))/8"
    unbiased = True
    checks_finite = True
    Params = QSGDParams
    decode_keys = ("levels",)

    @property
    def bits(self) -> int:
        return (2 * self.params.levels).bit_length()  # codes 0..2s

    def _encode(self, x: torch.Tensor, state: Slot | None) -> Payload:
        flat = x.reshape(-1)
        n, s, bits = flat.numel(), self.params.levels, self.bits
        if n == 0:
            return self.make_payload(x, buffers=[_empty_codes(x)], scalars=[0.0])
        norm = torch.linalg.vector_norm(flat, dtype=torch.float32)
        if not require_finite(self.name, x, norm):  # squares overflowed fp32
            norm = torch.linalg.vector_norm(flat, dtype=torch.float64).float()
            if not bool(torch.isfinite(norm)):
                raise CodecError("qsgd: ||x||_2 of this tensor exceeds the fp32 range")
        norm_f = float(norm)
        scale = s / norm_f if norm_f > 0 else 0.0
        # subnormal norm: s/norm is no fp32 number, scale in fp64
        wide = torch.float64 if scale > 1e30 else torch.float32
        scale_t = torch.tensor(scale, dtype=wide, device=x.device)
        key = next_key(self.params.seed, state, x.device)
        out = rounding.packed_codes(rounding.qsgd_codes, flat, bits, key, scale_t, s)
        return self.make_payload(x, buffers=[out], scalars=[norm_f])

    def _decode(self, payload: Payload, state: Slot | None) -> torch.Tensor:
        self.check(payload)
        s, data = self.params.levels, payload.buffers[0]
        levels = torch.arange(-s, s + 1, dtype=torch.float32, device=data.device)
        values = (levels * (payload.scalars[0] / s)).to(payload.dtype)
        return lut_decode(data, values, self.bits, payload.numel).view(payload.shape)

    def check(self, payload: Payload) -> None:
        expect_layout(payload, self.name, [(torch.uint8, packed_len(payload.numel, self.bits))], 1)
        if payload.scalars[0] < 0:
            raise CodecError(f"qsgd payload has a negative norm {payload.scalars[0]}")


@register
class NaturalCompression(Codec):
    name = "nc"
    summary = ("sign + stochastically rounded power-of-two exponent, 1 byte per element "
               "+ fp32 base exponent")
    bytes_per_element = "1"
    unbiased = True
    checks_finite = True
    Params = SeedParams

    def _encode(self, x: torch.Tensor, state: Slot | None) -> Payload:
        """byte = sign << 7 | k; k = 0: zero, else |x| -> 2**(base + k - 1).

        Adding 23 random bits to the magnitude's bit pattern carries into the exponent with
        probability mantissa / 2**23: exactly natural compression's round-up probability.
        base = (largest exponent rounding can reach) - 126, so k fits in 7 bits.
        """
        flat = x.reshape(-1)
        n = flat.numel()
        if n == 0:
            return self.make_payload(x, buffers=[_empty_codes(x)], scalars=[-126.0])
        lo_v, hi_v = torch.aminmax(flat)
        require_finite(self.name, x, lo_v, hi_v)
        amax = torch.maximum(-lo_v, hi_v).float().reshape(1)
        top = MAX_EXP.get(x.dtype, 254)  # largest biased exponent the output dtype holds
        reach = min(int(amax.view(torch.int32)) // (1 << 23) + 1, top)
        base = max(reach - 126, 1)
        key = next_key(self.params.seed, state, x.device)
        top_t, base_t = (torch.tensor(v, device=x.device) for v in (top, base))
        codes = torch.empty(n, dtype=torch.uint8, device=x.device)
        for lo, part, first in rounding.slices(flat):
            part_codes, low = rounding.nc_codes(part, first, key, top_t, base_t)
            if bool(low):
                rounding.nc_round_low(part_codes, part, lo, key, top_t, base)
            codes[lo:lo + part.numel()] = part_codes
        return self.make_payload(x, buffers=[codes], scalars=[float(base - 127)])

    def _decode(self, payload: Payload, state: Slot | None) -> torch.Tensor:
        self.check(payload)
        data = payload.buffers[0]
        byte = torch.arange(256, dtype=torch.int32, device=data.device)
        k = byte & 127
        biased = (k + int(payload.scalars[0]) + 126).clamp_(1, 254)
        mag = (biased << 23).view(torch.float32) * (k > 0)
        values = torch.where(byte >= 128, -mag, mag).to(payload.dtype)
        return lut_decode(data, values, 8, payload.numel).view(payload.shape)

    def check(self, payload: Payload) -> None:
        expect_layout(payload, self.name, [(torch.uint8, payload.numel)], 1)
        base = payload.scalars[0]
        if base != int(base) or not -126 <= base <= 1:
            raise CodecError(f"nc payload base exponent {base} is not an integer in [-126, 1]")


@register
class TernGrad(Codec):
    name = "terngrad"
    summary = "{-1, 0, +1} * max abs(x), nonzero with probability abs(x)/max, 2 bits + fp32 max"
    bytes_per_element = "2/8"
    unbiased = True
    checks_finite = True
    Params = SeedParams

    def _encode(self, x: torch.Tensor, state: Slot | None) -> Payload:
        flat = x.reshape(-1)
        n = flat.numel()
        if n == 0:
            return self.make_payload(x, buffers=[_empty_codes(x)], scalars=[0.0])
        lo_v, hi_v = torch.aminmax(flat)
        require_finite(self.name, x, lo_v, hi_v)
        smax = float(torch.maximum(-lo_v, hi_v).float())
        key = next_key(self.params.seed, state, x.device)
        smax_t = torch.tensor(smax, dtype=torch.float32, device=x.device)
        out = rounding.packed_codes(rounding.terngrad_codes, flat, 2, key, smax_t)
        return self.make_payload(x, buffers=[out], scalars=[smax])

    def _decode(self, payload: Payload, state: Slot | None) -> torch.Tensor:
        self.check(payload)
        s = payload.scalars[0]
        values = torch.tensor([0.0, s, 0.0, -s], dtype=payload.dtype,
                              device=payload.buffers[0].device)
        return lut_decode(payload.buffers[0], values, 2, payload.numel).view(payload.shape)

    def check(self, payload: Payload) -> None:
        expect_layout(payload, self.name, [(torch.uint8, packed_len(payload.numel, 2))], 1)
        if payload.scalars[0] < 0:
            raise CodecError(f"terngrad payload has a negative max|x| {payload.scalars[0]}")
