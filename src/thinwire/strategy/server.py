"""The server step: add a combined delta to the model, and take its buffers.

Parameters move by `scale * delta`; buffers (BatchNorm statistics, role `buffer`) are
replaced by the combined value in a synchronous round, or blended toward it (lerp by the
step's weight) when one asynchronous update arrives. Returns ||step||^2, the model change LAQ
keeps in its history.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..exchange.tensorset import TensorSet


@torch.no_grad()
def apply_delta(params: Mapping[str, torch.Tensor], buffers: Mapping[str, torch.Tensor],
                delta: TensorSet, scale: float = 1.0, replace_buffers: bool = True) -> float:
    change = 0.0
    for name, p in params.items():
        step = delta[name].to(p.dtype) * scale
        p.add_(step)
        change += float(step.float().pow(2).sum())
    new_buffers = delta.buffers
    for name, b in buffers.items():
        new = new_buffers.get(name)
        if new is None:
            continue
        if replace_buffers:
            b.copy_(new)
        else:
            b.lerp_(new.to(b.dtype), min(scale, 1.0))
    return change
