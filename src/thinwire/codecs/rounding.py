"""Stochastic rounding kernels of qsgd, terngrad, nc and the b-bit grid codecs, with the
counter-based noise they draw.

Why a counter-based hash and not torch's generator: on CPU, drawing 10M random words with
`Tensor.random_` costs ~17x a memcpy of the input, more than all the arithmetic of these codecs
together, and a torch generator cannot run inside a compiled kernel. Here the noise of element
i is Wellons' lowbias32 hash of i * golden + key, on int32 lanes (multiplies wrap modulo 2**32,
as torch's and inductor's vectorized int32 multiplies do; the logical right shifts are an
arithmetic shift and a mask). So
- the draws do not depend on how the work is sliced, nor on the device;
- the whole codec (noise, scale, round, clamp, cast) fuses into one loop once compiled
  (`fused.fusable`): qsgd's encode drops from ~35 to ~12 ms per 10M elements here, and the
  eager reference (small tensors, accelerators, no compiler) costs ~2.6 ns per element,
  about what drawing the words with torch did;
- the two paths compute the very same integers and floats, so they are bit-identical
  (tests/test_fused.py); the key comes from (params.seed, step), as before, so a state_dict
  round trip continues with the same draws. Elements 2**32 apart share their noise.

Each kernel is written for inductor: no data-dependent control flow, fp32 operations in a
fixed order with no multiply-add that eager would contract, and comparisons turned into codes
with `where` (inductor vectorizes that; bool-to-uint8 casts it does not).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from . import fused
from .bits import packed_len
from .fused import fusable
from .sign import pack_into, spans

INV_2_23 = 2.0 ** -23
_GOLDEN = 0x9E3779B9 - (1 << 32)  # int32 views of the hash's odd constants
_C1 = 0x7FEB352D
_C2 = 0x846CA68B - (1 << 32)
_LOW_KEY = 0x5BD1E995  # second draw of nc's values below its base exponent


def split_key(key: int, device: torch.device) -> torch.Tensor:
    """The low 32 bits of a key as a 0-d int32 tensor (a tensor, not a Python int, so a new
    key per step never recompiles a kernel)."""
    low = key & 0xFFFFFFFF
    return torch.tensor(low - (1 << 32) if low >= 1 << 31 else low, dtype=torch.int32,
                        device=device)


def slices(flat: torch.Tensor) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """(lo, flat[lo:hi], lo as a tensor): the whole tensor in one piece when the compiled
    kernels take it (no temporaries to keep in cache), else `sign.spans` slices. The draws
    do not depend on the slicing, so both give the same codes."""
    n = flat.numel()
    pieces = [(0, n)] if fused.wanted(flat) else spans(n, flat.device)
    for lo, hi in pieces:
        yield lo, flat[lo:hi], torch.tensor(lo % (1 << 31), dtype=torch.int32,
                                            device=flat.device)


def packed_codes(kernel: Callable[..., torch.Tensor], flat: torch.Tensor, bits: int,
                 *args: object) -> torch.Tensor:
    """ceil(n * bits / 8) bytes: kernel(slice, first, *args)'s uint8 codes, packed."""
    out = torch.empty(packed_len(flat.numel(), bits), dtype=torch.uint8, device=flat.device)
    for lo, part, first in slices(flat):
        pack_into(out, kernel(part, first, *args), lo, bits)
    return out


def _mix(h: torch.Tensor, k: int) -> torch.Tensor:
    """In place: h ^= h >>> k (a logical right shift of int32 lanes)."""
    return h.bitwise_xor_((h >> k).bitwise_and_((1 << (32 - k)) - 1))


def noise_at(idx: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """23 uniform random bits (int32 in [0, 2**23)) for the elements at int32 `idx`.
    In-place steps on one fresh tensor: eager makes two temporaries per element, not ten."""
    h = (idx * _GOLDEN).add_(key)
    _mix(h, 16).mul_(_C1)
    _mix(h, 15).mul_(_C2)
    return (_mix(h, 16) >> 9).bitwise_and_(0x7FFFFF)


def noise_bits(first: torch.Tensor, n: int, key: torch.Tensor,
               like: torch.Tensor) -> torch.Tensor:
    """`noise_at` for elements first .. first + n - 1."""
    return noise_at(torch.arange(n, dtype=torch.int32, device=like.device) + first, key)


def uniform(first: torch.Tensor, n: int, key: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """fp32 uniforms on the 2**-23 grid of [0, 1) (exact: 23-bit integers times 2**-23)."""
    return noise_bits(first, n, key, like).float() * INV_2_23


@fusable
def qsgd_codes(part: torch.Tensor, first: torch.Tensor, key: torch.Tensor,
               scale: torch.Tensor, levels: int) -> torch.Tensor:
    """uint8 codes sign * level + s: floor(x * s/||x|| + s + u), clamped to 0 .. 2s."""
    u = uniform(first, part.numel(), key, part)
    t = part.to(scale.dtype) * scale + levels + u  # scale is fp64 for a subnormal norm
    return t.floor().to(torch.int32).clamp(0, 2 * levels).to(torch.uint8)


@fusable
def terngrad_codes(part: torch.Tensor, first: torch.Tensor, key: torch.Tensor,
                   smax: torch.Tensor) -> torch.Tensor:
    """2-bit codes (0 = 0, 1 = +1, 3 = -1): nonzero where |x| > u * max|x|."""
    thresh = uniform(first, part.numel(), key, part).mul_(smax)
    if torch.compiler.is_compiling():  # where vectorizes in inductor, bool casts do not
        return torch.where(part > thresh, 1, torch.where(part < -thresh, 3, 0)).to(torch.uint8)
    pos = torch.gt(part, thresh).view(torch.uint8)  # eager: one byte per element throughout
    return torch.lt(part, thresh.neg_()).view(torch.uint8).mul_(3).add_(pos)


def nc_exponents(part: torch.Tensor, first: torch.Tensor, key: torch.Tensor,
                 top: torch.Tensor) -> torch.Tensor:
    """Biased fp32 exponent of |x| after stochastic rounding to a power of two (0 = zero),
    as int32: adding 23 random bits to the magnitude's bit pattern carries into the exponent
    with probability mantissa / 2**23. Clamped to `top`, the dtype's largest exponent."""
    raw = part.float().view(torch.int32) & 0x7FFFFFFF  # finite: no carry past bit 30
    rounded = (raw + noise_bits(first, part.numel(), key, part)) >> 23
    return torch.minimum(rounded, top)


@fusable
def nc_codes(part: torch.Tensor, first: torch.Tensor, key: torch.Tensor, top: torch.Tensor,
             base: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 codes sign << 7 | k, whether any exponent fell in (0, base)).

    Exponent e >= base becomes k = e - base + 1; e = 0 (zero) stays 0. An e in (0, base)
    also gets 0 here; the caller rounds those (rare: |x| below 2**(base - 127)) with
    `nc_round_low`, the same on both paths."""
    e = nc_exponents(part, first, key, top)
    k = torch.where(e >= base, e - (base - 1), torch.zeros_like(e))
    k = torch.where(part.float().view(torch.int32) < 0, k + 128, k)  # -0.0 keeps its sign
    return k.to(torch.uint8), ((e > 0) & (e < base)).any()


def nc_round_low(codes: torch.Tensor, part: torch.Tensor, first: int, key: torch.Tensor,
                 top: torch.Tensor, base: int) -> None:
    """In place: each exponent e in (0, base) gets k = 1 (2**base) with probability
    2**(e - base), else 0, which keeps it unbiased. Draws use a second key."""
    lo = torch.tensor(first % (1 << 31), dtype=torch.int32, device=part.device)
    e = nc_exponents(part, lo, key, top)
    idx = ((e > 0) & (e < base)).nonzero().squeeze(1)
    u = noise_at(idx.int() + lo, key ^ _LOW_KEY).float() * INV_2_23
    keep = u < torch.exp2((e[idx] - base).float())
    codes[idx] = codes[idx] | keep.to(torch.uint8)


@fusable
def grid_codes(d: torch.Tensor, first: torch.Tensor, key: torch.Tensor, inv: torch.Tensor,
               bits: int, stochastic: bool) -> torch.Tensor:
    """fp32 levels 0 .. 2^b-1 of d on the grid -R + 2 tau R k (inv = 1 / (2 tau R), fp64
    when R is near underflow): floor(d * inv + top/2 + u), u uniform (stochastic) or 1/2."""
    top = (1 << bits) - 1
    u = uniform(first, d.numel(), key, d) if stochastic else 0.5
    return (d.to(inv.dtype) * inv + top / 2 + u).floor().clamp(0, top).float()
