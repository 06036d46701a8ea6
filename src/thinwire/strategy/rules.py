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


def krum_choice(flat: list[torch.Tensor], byzantine: int | None = None) -> int | None:
    """Krum (Blanchard et al. 2017): the index of the contribution closest to its n - f - 2
    nearest neighbours, over whole flattened contributions. f defaults to the largest with
    n > 2f + 2; None when there are too few nodes (n <= 3) to tell."""
    n = len(flat)
    f = (n - 3) // 2 if byzantine is None else byzantine
    if n <= 3 or n <= 2 * f + 2:
        return None
    stacked = torch.stack([t.reshape(-1).float() for t in flat])
    dist = torch.cdist(stacked, stacked) ** 2
    closest = dist.sort(dim=1).values[:, 1: n - f - 1]  # skip the distance to itself
    return int(closest.sum(dim=1).argmin())


def krum(tensors: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """Krum on one tensor (the Strategy applies it to whole contributions)."""
    best = krum_choice(tensors)
    return median(tensors, weights) if best is None else tensors[best]


RULES: dict[str, Callable[[list[torch.Tensor], list[float]], torch.Tensor]] = {
    "mean": weighted_mean,
    "median": median,
    "trimmed_mean": trimmed_mean,
    "krum": krum,
}


def combine(rule: str, tensors: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    try:
        fn = RULES[rule]
    except KeyError:
        raise ConfigError(f"unknown aggregation rule {rule!r}; valid: {', '.join(RULES)}") from None
    return fn(tensors, weights)
