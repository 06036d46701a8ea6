"""Hot loops of the dense, int8 and sign codecs, DGC's accumulation and the sketch's
estimate, in one place so they can be fused (the stochastic rounding ones are in `rounding`).

Each function body here is the pure-torch reference. The `@fusable` ones dispatch to a compiled
twin built by `thinwire.codecs.fused` for large CPU tensors; the twin is compiled from the same
body, so results are bit-identical (tests/test_fused.py compares the two bit for bit). Keep the
bodies free of data-dependent Python control flow so they compile to one graph. Kernels that
produce a large fp32 tensor write into `fused.empty` (huge pages): faulting in a fresh output
page by page otherwise costs more than the arithmetic.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from . import fused
from .fused import fusable

FP16_MAX = 65504.0


def upcast(buf: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Wire dtype -> tensor dtype (half/bfloat16 -> float32 is the hot case).

    Eager `copy_` already converts in one vectorized pass; what limits it is faulting in the
    fresh output, which `fused.empty` backs with huge pages.
    """
    if buf.dtype == dtype:
        return buf
    return fused.empty(buf.shape, dtype, buf).copy_(buf)


def fresh_copy(buf: torch.Tensor) -> torch.Tensor:
    """`buf.clone()` into a huge-page-backed output when large."""
    return fused.empty(buf.shape, buf.dtype, buf).copy_(buf)


@fusable
def fp16_checked(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Saturating fp16 cast plus an all-finite flag, in one pass once compiled."""
    return flat.clamp(-FP16_MAX, FP16_MAX).to(torch.float16), torch.isfinite(flat).all()


@fusable
def cast_checked(flat: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain cast plus an all-finite flag, in one pass once compiled."""
    return flat.to(dtype), torch.isfinite(flat).all()


@fusable
def all_finite(flat: torch.Tensor) -> torch.Tensor:
    """0-d bool: no NaN/Inf (a fused read-only pass, no bool temporary)."""
    return torch.isfinite(flat).all()


def _split(n: int, size: int) -> tuple[int, int]:
    """(elements in whole blocks, number of whole blocks): the ragged tail is done apart, so
    no kernel needs a padded copy or masked loads."""
    nb = n // size
    return nb * size, nb


def int8_scales(flat: torch.Tensor, size: int,
                qmax: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(scale, 1/scale or 0, all-finite flag) per block of `size`: max|x| / qmax."""
    n = flat.numel()
    m, nb = _split(n, size)
    blocks = nb + (m < n)
    scale = torch.empty(blocks, dtype=torch.float32, device=flat.device)
    inv = torch.empty_like(scale)
    finite = torch.ones((), dtype=torch.bool, device=flat.device)
    for lo, hi, rows in ((0, m, nb), (m, n, 1)):  # whole blocks, then the short last one
        if hi > lo:
            b0 = lo // size
            finite = finite & scales_into(flat[lo:hi].view(rows, -1), qmax,
                                          scale[b0:b0 + rows], inv[b0:b0 + rows])
    return scale, inv, finite


def quantize_blocks(flat: torch.Tensor, inv_scale: torch.Tensor, qmax: int, size: int,
                    noise: torch.Tensor | None = None) -> torch.Tensor:
    """n int8 codes: round(x * inv_scale of its block), stochastic with `noise` (any shape
    holding >= n uniforms in [0,1), laid out like the padded blocks), clamped to +-qmax."""
    n = flat.numel()
    m, nb = _split(n, size)
    out = torch.empty(n, dtype=torch.int8, device=flat.device)
    u = noise.reshape(-1) if noise is not None else None
    for lo, hi, rows in ((0, m, nb), (m, n, 1)):
        if hi > lo:
            quantize_into(flat[lo:hi].view(rows, -1), inv_scale[lo // size:lo // size + rows],
                          qmax, None if u is None else u[lo:hi].view(rows, -1),
                          out[lo:hi].view(rows, -1))
    return out


def dequantize_blocks(codes: torch.Tensor, scale: torch.Tensor, size: int) -> torch.Tensor:
    """n fp32 values codes * scale of their block, into a huge-page-backed output if large."""
    n = codes.numel()
    m, nb = _split(n, size)
    out = fused.empty((n,), torch.float32, codes)
    for lo, hi, rows in ((0, m, nb), (m, n, 1)):
        if hi > lo:
            dequantize_into(codes[lo:hi].view(rows, -1), scale[lo // size:lo // size + rows],
                            out[lo:hi].view(rows, -1))
    return out


@fusable
def absmax_rows(rows: torch.Tensor) -> torch.Tensor:
    """Per-row max |x| of a (blocks, block) view, in fp32 (NaN propagates, for detection)."""
    return rows.abs().amax(dim=1).float()


@fusable
def scales_into(rows: torch.Tensor, qmax: int, scale: torch.Tensor,
                inv: torch.Tensor) -> torch.Tensor:
    """Per-row absmax / qmax into `scale`, its reciprocal (0 for all-zero rows) into `inv`;
    returns the all-finite flag. One kernel once compiled (on a busy machine every small
    eager op costs a thread wake-up)."""
    amax = rows.abs().amax(dim=1).float()
    scale.copy_(amax / qmax)
    inv.copy_(torch.where(scale > 0, 1.0 / scale, torch.zeros_like(scale)))
    return torch.isfinite(amax).all()


@fusable
def quantize_into(rows: torch.Tensor, inv_scale: torch.Tensor, qmax: int,
                  noise: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor:
    """round(x * (1/scale)) per row (floor(x/scale + noise) when stochastic), clamped, int8.

    Multiplying by a precomputed reciprocal (not dividing) keeps eager and compiled identical.
    """
    scaled = rows.float() * inv_scale.unsqueeze(1)
    scaled = torch.floor(scaled + noise) if noise is not None else torch.round(scaled)
    return out.copy_(scaled.clamp_(-qmax, qmax))


@fusable
def dequantize_into(codes: torch.Tensor, scale: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out = codes * scale per row; 2-D on both sides keeps the compiled loop vectorized."""
    return out.copy_(codes.float() * scale.unsqueeze(1))


# (blocks, block)-shaped entry points (collective/communicators/int8.py uses these)
def quantize_rows(rows: torch.Tensor, inv_scale: torch.Tensor, qmax: int,
                  noise: torch.Tensor | None = None) -> torch.Tensor:
    out = torch.empty(rows.shape, dtype=torch.int8, device=rows.device)
    return quantize_into(rows, inv_scale, qmax, noise, out)


def dequantize_rows(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return dequantize_into(codes, scale, fused.empty(codes.shape, torch.float32, codes))


def sign_pack(flat: torch.Tensor) -> torch.Tensor:
    """1 bit per element, set where x < 0, little-endian within a byte (`bits.pack(.., 1)`
    layout, as sign.py's `sign_bits`). Returns ceil(n/8) bytes; the last byte's tail is 0."""
    flat = flat.reshape(-1)
    if flat.numel() == 0:
        return flat.new_zeros(0, dtype=torch.uint8)
    return _sign_pack(flat)


@fusable
def _sign_pack(flat: torch.Tensor) -> torch.Tensor:
    bits = (flat < 0).to(torch.uint8)
    groups = F.pad(bits, (0, (-flat.numel()) % 8)).view(-1, 8)
    out = groups[:, 0]
    for j in range(1, 8):  # the eight bit positions of a byte, not elements
        out = out | (groups[:, j] << j)
    return out


def sign_unpack(packed: torch.Tensor, n: int, pos: float | torch.Tensor,
                neg: float | torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of `sign_pack`: n values of `dtype`, `neg` where the bit is set, else `pos`."""
    device = packed.device
    pos_t = torch.as_tensor(pos, dtype=dtype, device=device).reshape(())
    neg_t = torch.as_tensor(neg, dtype=dtype, device=device).reshape(())
    packed = packed.reshape(-1)
    if n == 0:
        return torch.zeros(0, dtype=dtype, device=device)
    if sys.byteorder != "little":
        return _unpack_bytes(packed, pos_t, neg_t)[:n]
    pad = (-packed.numel()) % 4
    if pad:
        packed = torch.cat([packed, packed.new_zeros(pad)])
    words = packed.view(torch.int32)
    out = fused.empty((words.numel() * 32,), dtype, packed)
    return sign_unpack_into(words, pos_t, neg_t, out)[:n]


@fusable(work=lambda words, pos, neg, out: out.numel())
def sign_unpack_into(words: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor,
                     out: torch.Tensor) -> torch.Tensor:
    """32 elements per int32 word: a 32-lane inner loop vectorizes fully once compiled."""
    shifts = torch.arange(32, dtype=torch.int32, device=words.device)
    bits = (words.unsqueeze(1) >> shifts) & 1
    return out.copy_(torch.where(bits.bool(), neg, pos).reshape(-1))


def _unpack_bytes(packed: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Byte-wise unpack for big-endian hosts, where the int32 view would reorder bits."""
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    bits = (packed.unsqueeze(1) >> shifts) & 1
    return torch.where(bits.bool(), neg, pos).reshape(-1)


@fusable
def dgc_accumulate(x: torch.Tensor, u: torch.Tensor, v: torch.Tensor, momentum: torch.Tensor,
                   threshold: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """DGC's pass, in place: u = u * momentum + x, v = v + u, mask (uint8) = |v| >= threshold.
    One read of x, u, v and one write of u, v, mask once compiled (three passes eager).
    Multiply then add, as two ops, so eager and compiled round alike. The mask is the same
    exact comparison either way, written as inductor vectorizes it (`where` to uint8; a
    bool store stays scalar) or as eager does it cheapest (`ge` into the bool view)."""
    u.mul_(momentum).add_(x)
    v.add_(u)
    if torch.compiler.is_compiling():
        return mask.copy_(torch.where(v.abs() >= threshold, 1, 0).to(torch.uint8))
    torch.ge(v.abs(), threshold, out=mask.view(torch.bool))
    return mask


def median_values(vals: list[torch.Tensor], plan: tuple[tuple[int, int, bool, bool], ...]
                  ) -> torch.Tensor:
    """Elementwise median of equal-shaped tensors through a comparator `plan`
    (`sketch.median_plan`); functional, so it compiles to one loop."""
    v, mid = list(vals), len(vals) // 2
    for i, j, lo, hi in plan:
        a, b = v[i], v[j]
        if lo:
            v[i] = torch.minimum(a, b)
        if hi:
            v[j] = torch.maximum(a, b)
    return (v[mid - 1] + v[mid]) * 0.5 if len(v) % 2 == 0 else v[mid]


@fusable(work=lambda out, vals, plan, whole: whole)
def median_into(out: torch.Tensor, vals: list[torch.Tensor],
                plan: tuple[tuple[int, int, bool, bool], ...], whole: int) -> torch.Tensor:
    """out = the elementwise median of `vals` (`median_values`), one loop once compiled.
    `whole`, the size of the tensor being decoded, is what the fused policy looks at: the
    sketch calls this on cache-sized chunks of it."""
    return out.copy_(median_values(vals, plan))
