"""Sign codecs (signsgd, onebit) and the bit-level helpers the quantizing codecs share.

Speed notes (these codecs are benchmarked at 10M elements against a memcpy):
- on CPU, work goes through `spans`: a few slices, so temporaries stay in cache and come from
  the heap instead of a fresh 40 MB mmap that page-faults on first touch;
- packing works on whole words (one multiply gathers 8 sign bits or 4 two-bit codes into a
  byte; other widths merge lanes of int64 words) instead of one op per bit position as in
  bits.pack; the byte layout is the same as bits.pack;
- decoding goes through a 256-row lookup table (the 8/b values of every possible byte), which
  writes the output exactly once.
"""

from __future__ import annotations

import math
import sys
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, field_validator

from ..errors import CodecError
from . import bits as bitpack
from . import fused, kernels
from .base import Codec, Slot, raise_non_finite
from .bits import packed_len
from .payload import Payload
from .registry import register

GATHER_BITS = 0x0102040810204080  # (8 bytes of 0/1 as one int64) * this >> 56 = the 8 bits
GATHER_PAIRS = 0x01041040  # 4 two-bit codes (bytes of one int32) -> its top byte
LITTLE = sys.byteorder == "little"  # the int64 word tricks assume little-endian views


def _lane_mask(lane: int, lo: int, hi: int) -> int:
    """Bits [lo, hi) of every `lane`-bit lane of a 64-bit word, as a signed int64 value."""
    word = sum(((1 << hi) - (1 << lo)) << k for k in range(0, 64, lane))
    return word - (1 << 64) if word >= 1 << 63 else word


def _pad8(codes: torch.Tensor) -> torch.Tensor:
    pad = (-codes.numel()) % 8
    return torch.cat([codes, codes.new_zeros(pad)]) if pad else codes


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack uint8 codes < 2**bits into ceil(n*bits/8) bytes (bits.pack's layout)."""
    codes = codes.reshape(-1).contiguous()
    n = codes.numel()
    if bits == 8:
        return codes
    if not LITTLE:
        return bitpack.pack(codes, bits)
    padded = _pad8(codes)
    if bits == 1:  # 8 codes per int64 word; the product's top byte holds the 8 bits
        out = (padded.view(torch.int64) * GATHER_BITS).view(torch.uint8)[7::8]
    elif bits == 2:  # 4 codes per int32 word; the product's top byte, no carries into it
        out = (padded.view(torch.int32) * GATHER_PAIRS).view(torch.uint8)[3::4]
    elif bits == 4:  # 2 codes per int16: c0 | c1 << 8 -> low byte c0 | c1 << 4
        word = padded.view(torch.int16)
        out = (word >> 4).bitwise_or_(word).view(torch.uint8)[0::2]
    else:
        v = padded.view(torch.int64)
        for lane in (16, 32, 64):  # merge the two halves of each lane: b-bit fields move down
            w = bits * lane // 16
            upper = (v >> (lane // 2 - w)).bitwise_and_(_lane_mask(lane, w, 2 * w))
            v = (v & _lane_mask(lane, 0, w)).bitwise_or_(upper)
        out = v.view(torch.uint8).view(-1, 8)[:, :bits].reshape(-1)
    return out[: packed_len(n, bits)].contiguous()


def unpack_codes(data: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of pack_codes: n uint8 codes."""
    if bits == 8:
        return data[:n]
    if not LITTLE:
        return bitpack.unpack(data, bits, n)
    words = (n + 7) // 8
    flat = data if data.numel() == words * bits else torch.cat(
        [data, data.new_zeros(words * bits - data.numel())])
    rows = torch.zeros(words, 8, dtype=torch.uint8, device=data.device)
    rows[:, :bits] = flat.view(words, bits)
    v = rows.view(torch.int64).view(-1)
    for lane in (64, 32, 16):  # split each lane: the upper field moves up to the next half
        w = bits * lane // 16
        half = lane // 2
        upper = (v << (half - w)).bitwise_and_(_lane_mask(lane, half, half + w))
        v = (v & _lane_mask(lane, 0, w)).bitwise_or_(upper)
    return v.view(torch.uint8)[:n]


CHUNK = 1 << 18  # smallest CPU slice in elements (a multiple of 8: slices pack to whole bytes)
MAX_SPANS = 8  # at most this many slices: each op in a slice is an OpenMP region, and on a
# busy machine every region waits for a descheduled worker, so fewer, larger slices


def spans(n: int, device: torch.device) -> list[tuple[int, int]]:
    """[lo, hi) slices of >= CHUNK elements on CPU; one span on accelerators (fewer launches)."""
    if device.type != "cpu":
        return [(0, n)] if n else []
    step = max(CHUNK, -(-n // MAX_SPANS))
    step += (-step) % 8
    return [(lo, min(lo + step, n)) for lo in range(0, n, step)]


def byte_span(lo: int, hi: int, bits: int) -> tuple[int, int]:
    """Bytes holding packed codes [lo, hi) when lo is a multiple of 8."""
    start = lo * bits // 8
    return start, start + packed_len(hi - lo, bits)


def pack_into(out: torch.Tensor, codes: torch.Tensor, lo: int, bits: int) -> None:
    """Pack the codes of elements [lo, lo + len) into their bytes of `out`."""
    a, b = byte_span(lo, lo + codes.numel(), bits)
    out[a:b] = pack_codes(codes, bits)


class Lut:
    """values[code] for packed b-bit codes; one table row per byte value when b divides 8."""

    def __init__(self, values: torch.Tensor, bits: int) -> None:
        self.bits = bits
        self.full = values.new_zeros(1 << bits)  # codes past len(values) decode to 0
        k = min(values.numel(), 1 << bits)
        self.full[:k] = values[:k]
        self.per = 8 // bits if bits in (1, 2, 4) else 0
        if self.per:
            dev = values.device
            fields = (torch.arange(256, device=dev).unsqueeze(1)
                      >> torch.arange(0, 8, bits, device=dev)) & ((1 << bits) - 1)
            self.rows = self.full[fields]

    def chunk(self, data: torch.Tensor, lo: int, hi: int,
              out: torch.Tensor | None = None) -> torch.Tensor:
        """Values of codes [lo, hi) (lo a multiple of 8); `out` may be padded to whole bytes."""
        a, b = byte_span(lo, hi, self.bits)
        if self.per:
            idx = data[a:b].to(torch.int32)
            if out is None:
                return self.rows.index_select(0, idx).view(-1)[: hi - lo]
            torch.index_select(self.rows, 0, idx, out=out.view(-1, self.per))
            return out[: hi - lo]
        idx = unpack_codes(data[a:b], self.bits, hi - lo).to(torch.int32)
        if out is None:
            return self.full.index_select(0, idx)
        return torch.index_select(self.full, 0, idx, out=out)

    def decode(self, data: torch.Tensor, n: int) -> torch.Tensor:
        """All n values, written once into a fresh tensor."""
        per = self.per or 1
        total = packed_len(n, self.bits) * per if self.per else n
        out = fused.empty((total,), self.full.dtype, data)  # huge pages when large
        for lo, hi in spans(n, data.device):
            a, b = byte_span(lo, hi, self.bits)
            self.chunk(data, lo, hi, out[lo: lo + ((b - a) * per if self.per else hi - lo)])
        return out[:n]


def lut_decode(data: torch.Tensor, values: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """values[code] for the n packed codes; codes past len(values) decode to 0."""
    if bits == 1 and len(values) == 2 and fused.wanted(data, n):
        return kernels.sign_unpack(data, n, values[0], values[1], values.dtype)
    return Lut(values, bits).decode(data, n)


def pack_signs_into(out: torch.Tensor, part: torch.Tensor, lo: int,
                    scratch: torch.Tensor) -> torch.Tensor:
    """Pack (part < 0), the slice starting at element lo, into its bytes of `out`, via a
    reused bool scratch of >= len(part) + 7 entries; returns the slice's bool mask."""
    m = part.numel()
    neg = scratch[: m + (-m) % 8]
    torch.lt(part, 0, out=neg[:m])
    neg[m:] = False
    a, b = byte_span(lo, lo + m, 1)
    if LITTLE:  # as pack_codes(.., 1), copying the product's top bytes straight into out
        prod = neg.view(torch.uint8).view(torch.int64) * GATHER_BITS
        out[a:b] = prod.view(torch.uint8)[7::8]
    else:
        out[a:b] = pack_codes(neg.view(torch.uint8), 1)
    return neg[:m]


def sign_scratch(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed output of n sign bits, bool scratch for one span)."""
    out = torch.empty(packed_len(n, 1), dtype=torch.uint8, device=device)
    span = max((hi - lo for lo, hi in spans(n, device)), default=0)
    return out, torch.empty(span + 7, dtype=torch.bool, device=device)


def sign_bits(flat: torch.Tensor) -> torch.Tensor:
    """Packed (x < 0) bits of a whole flat tensor, 1 per element (bits.pack layout)."""
    if fused.wanted(flat):
        return kernels.sign_pack(flat)
    out, scratch = sign_scratch(flat.numel(), flat.device)
    for lo, hi in spans(flat.numel(), flat.device):
        pack_signs_into(out, flat[lo:hi], lo, scratch)
    return out


def require_finite(name: str, x: torch.Tensor, *stats: torch.Tensor) -> bool:
    """NaN/Inf check for free: the statistics a codec computes anyway are finite iff x is,
    unless they overflowed; only then is x itself scanned. False means finite x, overflow."""
    if bool(torch.isfinite(torch.stack([s.float() for s in stats])).all()):
        return True
    if x.numel() and not bool(torch.isfinite(x).all()):
        raise_non_finite(name, x)
    return False


def expect_layout(payload: Payload, name: str, buffers: list[tuple[torch.dtype, int]],
                  scalars: int) -> None:
    """Raise CodecError unless buffers (dtype, numel) and the scalar count are as expected."""
    got = [(b.dtype, b.numel()) for b in payload.buffers]
    if got != buffers or len(payload.scalars) != scalars or any(
            b.dim() != 1 for b in payload.buffers):
        raise CodecError(f"'{name}' payload for {payload.numel} elements needs 1-D buffers "
                         f"{buffers} and {scalars} scalar(s), got {got} and "
                         f"{len(payload.scalars)} scalar(s)")
    if not all(math.isfinite(s) for s in payload.scalars):
        raise CodecError(f"'{name}' payload has non-finite scalars {payload.scalars}")


def _dev(payload: Payload) -> torch.device:
    return payload.buffers[0].device if payload.buffers else torch.device("cpu")


class SignParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scale: Literal["none", "mean"] = "mean"

    @field_validator("scale", mode="before")
    @classmethod
    def _none_is_a_name(cls, value: object) -> object:
        return "none" if value is None else value  # the spec parser reads `none` as None


class _SignCodec(Codec):
    """1 bit per element (x < 0) plus a decode table of two values sent as scalars."""

    bytes_per_element = "1/8"
    wants_error_feedback = True
    checks_finite = True

    def _n_scalars(self) -> int:
        return 2

    def _values(self, payload: Payload) -> list[float]:
        return payload.scalars

    def _decode(self, payload: Payload, state: Slot | None) -> torch.Tensor:
        self.check(payload)
        table = torch.tensor(self._values(payload), dtype=payload.dtype, device=_dev(payload))
        return lut_decode(payload.buffers[0], table, 1, payload.numel).view(payload.shape)

    def check(self, payload: Payload) -> None:
        expect_layout(payload, self.name, [(torch.uint8, packed_len(payload.numel, 1))],
                      self._n_scalars())


@register
class SignSGD(_SignCodec):
    name = "signsgd"
    summary = "sign bits, decoded to +-1 (scale=none) or +-mean abs(x) (scale=mean, one fp32)"
    Params = SignParams
    decode_keys = ("scale",)

    def _n_scalars(self) -> int:
        return 1 if self.params.scale == "mean" else 0

    def feedback_problem(self) -> str | None:
        if self.params.scale == "none":  # +-1 whatever the magnitude: not contractive
            return "scale=none decodes to +-1 at any magnitude; use signsgd(scale=mean)"
        return None

    def _encode(self, x: torch.Tensor, state: Slot | None) -> Payload:
        flat = x.reshape(-1)
        n, mean = flat.numel(), self.params.scale == "mean"
        out, scratch = sign_scratch(n, x.device)
        total = torch.zeros((), dtype=torch.float32, device=x.device)
        for lo, hi in spans(n, x.device):  # compare, pack and reduce while the slice is hot
            part = flat[lo:hi]
            pack_signs_into(out, part, lo, scratch)
            total += (part.abs() if mean else part).sum(dtype=torch.float32)
        # sum|x| is the mean's numerator; sum x is only a NaN/Inf sentinel
        if not require_finite(self.name, x, total) and mean:
            total = torch.linalg.vector_norm(flat, 1, dtype=torch.float64)  # fp32 overflow
        scalars = [float((total / max(n, 1)).float())] if mean else []
        return self.make_payload(x, buffers=[out], scalars=scalars)

    def _values(self, payload: Payload) -> list[float]:
        s = payload.scalars[0] if self.params.scale == "mean" else 1.0
        return [s, -s]


@register
class OneBit(_SignCodec):
    name = "onebit"
    summary = "sign bits + two fp32 values: mean of the non-negative and of the negative entries"

    def _encode(self, x: torch.Tensor, state: Slot | None) -> Payload:
        flat = x.reshape(-1)
        n = flat.numel()
        out, scratch = sign_scratch(n, x.device)
        sums = torch.zeros(3, dtype=torch.float64, device=x.device)
        for lo, hi in spans(n, x.device):
            part = flat[lo:hi]
            neg = pack_signs_into(out, part, lo, scratch)
            count = torch.count_nonzero(neg).reshape(1)
            sums += torch.cat([_signed_sums(part, torch.float32).double(), count])
        if not require_finite(self.name, x, sums):
            sums[:2] = _signed_sums(flat, torch.float64)  # finite entries, fp32 sum overflowed
        pos_sum, neg_sum, n_neg = (float(v) for v in sums)
        means = [pos_sum / max(n - n_neg, 1), neg_sum / max(n_neg, 1)]
        return self.make_payload(x, buffers=[out], scalars=[_fp32(m) for m in means])


def _signed_sums(flat: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """[sum of the non-negative entries, sum of the negative entries]."""
    return torch.stack([flat.clamp(min=0).sum(dtype=acc), flat.clamp(max=0).sum(dtype=acc)])


def _fp32(value: float) -> float:
    """Round to the fp32 value the wire will carry, so in-memory and parsed payloads agree."""
    return float(torch.tensor(value, dtype=torch.float32))
