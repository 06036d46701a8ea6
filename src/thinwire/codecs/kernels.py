"""Hot loops of the dense codecs, in one place so they can be fused.

Each function body here is the pure-torch reference. The `@fusable` ones dispatch to a compiled
twin built by `thinwire.codecs.fused` for large CPU tensors; the twin is compiled from the same
body, so results are bit-identical (tests/test_fused.py compares the two bit for bit). Keep the
bodies free of data-dependent Python control flow so they compile to one graph.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from .fused import fusable

FP16_MAX = 65504.0


def upcast(buf: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Wire dtype -> tensor dtype (half/bfloat16 -> float32 is the hot case)."""
    if buf.dtype == dtype:
        return buf
    return convert(buf, dtype)


@fusable
def convert(buf: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return buf.to(dtype)


@fusable
def to_fp16_saturating(flat: torch.Tensor) -> torch.Tensor:
    """Clamp to the fp16 range first so large values saturate instead of becoming Inf."""
    return flat.clamp(-FP16_MAX, FP16_MAX).to(torch.float16)


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


@fusable
def absmax_rows(rows: torch.Tensor) -> torch.Tensor:
    """Per-row max |x| of a (blocks, block) view, in fp32 (NaN propagates, for detection)."""
    return rows.abs().amax(dim=1).float()


@fusable
def quantize_rows(rows: torch.Tensor, inv_scale: torch.Tensor, qmax: int,
                  noise: torch.Tensor | None = None) -> torch.Tensor:
    """round(x * (1/scale)) per row (stochastic when `noise` in [0,1) is given), clamped, int8.

    Multiplying by a precomputed reciprocal (not dividing) keeps eager and compiled identical.
    """
    scaled = rows.float() * inv_scale.unsqueeze(1)
    scaled = torch.floor(scaled + noise) if noise is not None else torch.round(scaled)
    return scaled.clamp_(-qmax, qmax).to(torch.int8)


@fusable
def dequantize_rows(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return codes.float() * scale.unsqueeze(1)


def sign_pack(flat: torch.Tensor) -> torch.Tensor:
    """1 bit per element, set where x >= 0, little-endian within a byte (as `bits.pack(.., 1)`).

    Returns ceil(n/8) uint8 bytes; the tail of the last byte is zero.
    """
    if flat.numel() == 0:
        return flat.new_zeros(0, dtype=torch.uint8)
    return _sign_pack(flat.reshape(-1))


@fusable
def _sign_pack(flat: torch.Tensor) -> torch.Tensor:
    bits = (flat >= 0).to(torch.uint8)
    groups = F.pad(bits, (0, (-flat.numel()) % 8)).view(-1, 8)
    out = groups[:, 0]
    for j in range(1, 8):  # the eight bit positions of a byte, not elements
        out = out | (groups[:, j] << j)
    return out


def sign_unpack(packed: torch.Tensor, n: int, pos: float | torch.Tensor,
                neg: float | torch.Tensor) -> torch.Tensor:
    """Inverse of `sign_pack`: n float32 values, `pos` where the bit is set, else `neg`."""
    device = packed.device
    if n == 0:
        return torch.zeros(0, dtype=torch.float32, device=device)
    pos_t = torch.as_tensor(pos, dtype=torch.float32, device=device).reshape(())
    neg_t = torch.as_tensor(neg, dtype=torch.float32, device=device).reshape(())
    packed = packed.reshape(-1)
    if sys.byteorder != "little":
        return _unpack_bytes(packed, pos_t, neg_t)[:n]
    pad = (-packed.numel()) % 4
    if pad:
        packed = torch.cat([packed, packed.new_zeros(pad)])
    # 32 elements per int32 word: inner loop of 32 lanes vectorizes fully once compiled.
    return _sign_unpack(packed.view(torch.int32), n, pos_t, neg_t)[:n]


def _sign_unpack_words(words: torch.Tensor, n: int, pos: torch.Tensor,
                       neg: torch.Tensor) -> torch.Tensor:
    shifts = torch.arange(32, dtype=torch.int32, device=words.device)
    bits = (words.unsqueeze(1) >> shifts) & 1
    return torch.where(bits.bool(), pos, neg).reshape(-1)  # caller slices: no extra copy


_sign_unpack = fusable(_sign_unpack_words, work=lambda words, n, pos, neg: n)


def _unpack_bytes(packed: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Byte-wise unpack for big-endian hosts, where the int32 view would reorder bits."""
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    bits = (packed.unsqueeze(1) >> shifts) & 1
    return torch.where(bits.bool(), pos, neg).reshape(-1)
