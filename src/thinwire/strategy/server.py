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


def snapshot(params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A copy of the parameters: the start of a round, or the model before a step."""
    return {n: p.detach().clone() for n, p in params.items()}


def change_sq(params: Mapping[str, torch.Tensor], before: Mapping[str, torch.Tensor]) -> float:
    """||theta - before||^2: the model change LAQ keeps in its history."""
    return float(sum(((p.detach() - before[n]) ** 2).sum() for n, p in params.items()))


@torch.no_grad()
def restore(params: Mapping[str, torch.Tensor], buffers: Mapping[str, torch.Tensor],
            saved: Mapping[str, torch.Tensor], saved_buffers: Mapping[str, torch.Tensor]) -> None:
    """Put a snapshot back (fedavg: every node starts its round from the same model)."""
    for n, p in params.items():
        p.copy_(saved[n])
    for n, b in buffers.items():
        b.copy_(saved_buffers[n])
