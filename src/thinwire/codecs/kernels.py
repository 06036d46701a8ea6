"""Hot loops of the dense codecs, in one place so they can be fused.

Each function here is the pure-torch reference. `thinwire.codecs.fused` may swap in compiled
versions that must give bit-identical results (tests compare the two).
"""

from __future__ import annotations

import torch

FP16_MAX = 65504.0


def upcast(buf: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return buf.to(dtype)


def to_fp16_saturating(flat: torch.Tensor) -> torch.Tensor:
    return flat.clamp(-FP16_MAX, FP16_MAX).to(torch.float16)


def absmax_rows(rows: torch.Tensor) -> torch.Tensor:
    """Per-row max |x| of a (blocks, block) view, in fp32."""
    return rows.abs().amax(dim=1).float()


def quantize_rows(rows: torch.Tensor, inv_scale: torch.Tensor, qmax: int,
                  noise: torch.Tensor | None = None) -> torch.Tensor:
    """round(x / scale) per row (stochastic when `noise` in [0,1) is given), clamped, int8."""
    scaled = rows.float() * inv_scale.unsqueeze(1)
    scaled = torch.floor(scaled + noise) if noise is not None else torch.round(scaled)
    return scaled.clamp_(-qmax, qmax).to(torch.int8)


def dequantize_rows(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return codes.float() * scale.unsqueeze(1)
