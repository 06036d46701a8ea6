"""Unbiased stochastic quantizers: qsgd, nc (natural compression), terngrad.

Randomness comes from a torch.Generator seeded by (params.seed, step), the step counter living
in the caller's state slot, so runs are reproducible and a state_dict round trip continues
with the same draws. Uniform noise is made from 64-bit random words (two 23-bit mantissas per
word, exponent set by a bit-or: floats in [1, 2)), cheaper on CPU than torch.rand. Work runs
slice by slice (sign.spans); on CPU the draws do not depend on the slice size (except
nc's second-stage draws for values below its base).
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from ..errors import CodecError
from .base import Codec, Slot
from .bits import packed_len
from .payload import Payload
from .registry import register
from .sign import expect_layout, lut_decode, pack_into, require_finite, spans

MASK64 = (1 << 64) - 1
MANTISSA = 0x7FFFFF
ONE_BITS = 0x3F800000  # fp32 1.0
MAX_EXP = {torch.float16: 142}  # largest biased fp32 exponent the dtype holds; else 254


def _mix(seed: int, step: int) -> int:
    """splitmix64 of (seed, step): distinct, decorrelated generator seeds per step."""
    z = (seed * 0x9E3779B97F4A7C15 + step + 0x632BE59BD9B4E019) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def make_generator(seed: int, state: Slot | None, device: torch.device) -> torch.Generator:
    """Generator for this encode; advances state["step"] when a slot is given."""
    step = int(state.get("step", 0)) if state is not None else 0
    if state is not None:
        state["step"] = step + 1
    gen = torch.Generator(device=device)
    gen.manual_seed(_mix(seed, step))
    return gen


def random_mantissas(n: int, gen: torch.Generator, device: torch.device,
                     bits: int = 23) -> torch.Tensor:
    """n uniform int32 values in [0, 2**23) (23 low bits of each int32 lane of random words
    in [0, 2**63)); bits=16: 16 random high bits and a half-step offset (2**6), from half
    as many random words."""
    if bits == 23:
        words = torch.empty((n + 1) // 2, dtype=torch.int64, device=device).random_(generator=gen)
        return words.view(torch.int32)[:n].bitwise_and_(MANTISSA)
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device)
    words.random_(-(1 << 63), None, generator=gen)  # all 64 bits: the top lane too
    r16 = words.view(torch.int16)[:n].to(torch.int32).bitwise_and_(0xFFFF)
    return r16.bitwise_left_shift_(7).bitwise_or_(64)


def uniform_1_2(n: int, gen: torch.Generator, device: torch.device,
                bits: int = 23) -> torch.Tensor:
    """n fp32 uniforms on a 2**bits-point grid of [1, 2): u + 1 for u uniform in [0, 1)."""
    return random_mantissas(n, gen, device, bits).bitwise_or_(ONE_BITS).view(torch.float32)


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
        gen = make_generator(self.params.seed, state, x.device)
        out = torch.empty(packed_len(n, bits), dtype=torch.uint8, device=x.device)
        tiny = scale > 1e30  # subnormal norm: s/norm is no fp32 number, scale in fp64
        for lo, hi in spans(n, x.device):
            # code = floor(x*s/norm + s + u) = sign*level + s, P(level up) = the remainder
            t = uniform_1_2(hi - lo, gen, x.device)
            part = flat[lo:hi]
            if tiny:
                t.add_((part.double() * scale).float())
            else:
                t.add_(part.float(), alpha=scale)
            t.add_(s - 1)
            pack_into(out, t.to(torch.uint8).clamp_(max=2 * s), lo, bits)  # trunc = floor
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
        gen = make_generator(self.params.seed, state, x.device)
        codes = torch.empty(n, dtype=torch.uint8, device=x.device)
        for lo, hi in spans(n, x.device):
            raw = flat[lo:hi].float().view(torch.int32)
            exp = torch.bitwise_and(raw, 0x7FFFFFFF).add_(random_mantissas(hi - lo, gen, x.device))
            exp.bitwise_right_shift_(23)  # biased exponent after rounding; 0 means zero
            if reach == top:
                exp.clamp_(max=top)  # do not round past the dtype's largest power of two
            if base > 1:
                _round_below_base(exp, base, gen)
            sign = torch.lt(raw, 0).view(torch.uint8) << 7
            torch.bitwise_or(exp.to(torch.uint8), sign, out=codes[lo:hi])
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


def _round_below_base(exp: torch.Tensor, base: int, gen: torch.Generator) -> None:
    """In place: exponents e >= base become k = e - base + 1; 0 < e < base go to k = 1
    (2**base) with probability 2**(e - base), else to 0, which keeps them unbiased."""
    low = exp < base
    exp.sub_(base - 1)
    if not bool(low.any()):
        return
    idx = low.nonzero().squeeze(1)
    orig = exp[idx] + (base - 1)
    u = uniform_1_2(idx.numel(), gen, exp.device) - 1
    keep = (orig > 0) & (u < torch.exp2((orig - base).float()))
    exp[idx] = keep.to(exp.dtype)


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
        gen = make_generator(self.params.seed, state, x.device)
        out = torch.empty(packed_len(n, 2), dtype=torch.uint8, device=x.device)
        for lo, hi in spans(n, x.device):
            part = flat[lo:hi]
            thresh = uniform_1_2(hi - lo, gen, x.device).sub_(1).mul_(smax)  # u * max|x|
            pos = torch.gt(part, thresh).view(torch.uint8)
            neg = torch.lt(part, thresh.neg_()).view(torch.uint8)
            pack_into(out, neg.mul(3).add_(pos), lo, 2)  # two's complement: +1 = 01, -1 = 11
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
