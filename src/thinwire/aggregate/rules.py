"""Combining rules over a list of same-shaped tensors (one per node)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import ConfigError


def weighted_mean(tensors: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    total = float(sum(weights))
    if total <= 0:
        weights, total = [1.0] * len(tensors), float(len(tensors))
    out = torch.zeros_like(tensors[0], dtype=torch.float32)
    for t, w in zip(tensors, weights):
        out.add_(t.float(), alpha=w / total)
    return out.to(tensors[0].dtype)


def median(tensors: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """Coordinate-wise median: robust to a minority of arbitrary updates."""
    return torch.stack(tensors).median(dim=0).values


def trimmed_mean(tensors: list[torch.Tensor], weights: list[float],
                 trim: float = 0.2) -> torch.Tensor:
    """Drop the `trim` fraction of largest and smallest values per coordinate, average the rest."""
    stacked = torch.stack(tensors).float().sort(dim=0).values
    cut = int(len(tensors) * trim)
    kept = stacked[cut: len(tensors) - cut] if len(tensors) > 2 * cut else stacked
    return kept.mean(dim=0).to(tensors[0].dtype)


RULES: dict[str, Callable[[list[torch.Tensor], list[float]], torch.Tensor]] = {
    "mean": weighted_mean,
    "median": median,
    "trimmed_mean": trimmed_mean,
}


def combine(rule: str, tensors: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    try:
        fn = RULES[rule]
    except KeyError:
        raise ConfigError(f"unknown aggregation rule {rule!r}; valid: {', '.join(RULES)}") from None
    return fn(tensors, weights)
