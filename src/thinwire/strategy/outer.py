"""The outer step of local-update training (DiLoCo): how a combined pseudo-gradient moves
the shared weights.

Workers send Δ = (their weights after local steps) - (the weights they started from); the
combined Δ is an outer gradient with the sign flipped. `plain` adds lr·Δ (lr 1: the mean
of the workers' results, FedAvg); `nesterov` keeps a momentum m = μm + Δ and adds
lr·(Δ + μm), the outer optimizer DiLoCo found best (Douillard et al., 2023: lr 0.7, μ 0.9).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..errors import ConfigError

OUTER = ("plain", "nesterov")


class OuterStep:
    def __init__(self, kind: str = "plain", lr: float = 1.0, momentum: float = 0.9) -> None:
        if kind not in OUTER:
            raise ConfigError(f"outer step {kind!r}: use one of {', '.join(OUTER)}")
        if lr <= 0 or not 0 <= momentum < 1:
            raise ConfigError(f"outer step needs lr > 0 and 0 <= momentum < 1, got {lr}, "
                              f"{momentum}")
        self.kind, self.lr, self.momentum = kind, lr, momentum
        self.buffers: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def apply(self, weights: Mapping[str, torch.Tensor], delta: Mapping[str, torch.Tensor],
              scale: float = 1.0) -> float:
        """Move `weights` in place by the combined `delta`; returns ||step||^2."""
        change = 0.0
        for name, w in weights.items():
            d = delta[name].float() * scale
            if self.kind == "nesterov":
                m = self.buffers.setdefault(name, torch.zeros_like(d))
                m.mul_(self.momentum).add_(d)
                d = d + self.momentum * m
            step = (self.lr * d).to(w.dtype)
            w.add_(step)
            change += float(step.float().pow(2).sum())
        return change

    def state_dict(self) -> dict:
        return {"buffers": dict(self.buffers)}

    def load_state_dict(self, state: dict) -> None:
        self.buffers = {n: t.clone() for n, t in state.get("buffers", {}).items()}
