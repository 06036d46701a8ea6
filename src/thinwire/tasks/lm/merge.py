"""Merging fine-tuned experts into one model: task arithmetic (linear) and TIES.

Both take each expert's dense weight change τ_i (a "task vector") and a weight w_i, and
return one change to add to the base:
- linear (Ilharco et al., 2023): scale · Σ w_i τ_i;
- ties (Yadav et al., 2023): trim each τ_i to its `density` largest magnitudes, elect a
  sign per coordinate by the weighted sum, and average (weighted) only the values that agree
  with it, so experts that pull a weight in opposite directions do not cancel each other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ...errors import ConfigError

Tensors = dict[str, torch.Tensor]
METHODS = ("linear", "ties")


def linear(deltas: Sequence[Tensors], weights: Sequence[float], scale: float = 1.0) -> Tensors:
    out: Tensors = {}
    for delta, w in zip(deltas, weights):
        for name, t in delta.items():
            acc = out.setdefault(name, torch.zeros_like(t, dtype=torch.float32))
            acc.add_(t.float(), alpha=float(w) * scale)
    return out


def trim(t: torch.Tensor, density: float) -> torch.Tensor:
    """`t` with all but its `density` fraction of largest magnitudes set to zero."""
    if density >= 1.0:
        return t
    keep = max(int(round(density * t.numel())), 1)
    threshold = t.abs().reshape(-1).kthvalue(t.numel() - keep + 1).values
    return torch.where(t.abs() >= threshold, t, torch.zeros_like(t))


def ties_tensor(values: Sequence[torch.Tensor], weights: Sequence[float],
                density: float) -> torch.Tensor:
    stacked = torch.stack([trim(v.float(), density) for v in values])
    w = torch.tensor([float(x) for x in weights]).view(-1, *([1] * (stacked.dim() - 1)))
    weighted = stacked * w
    sign = torch.sign(weighted.sum(dim=0))
    agree = (torch.sign(stacked) == sign) & (stacked != 0)
    total = (weighted * agree).sum(dim=0)
    count = (w * agree).sum(dim=0)
    return torch.where(count > 0, total / count.clamp_min(1e-12), torch.zeros_like(total))


def ties(deltas: Sequence[Tensors], weights: Sequence[float], scale: float = 1.0,
         density: float = 0.2) -> Tensors:
    if not 0.0 < density <= 1.0:
        raise ConfigError(f"ties density {density}: use a fraction in (0, 1]")
    names = sorted({n for d in deltas for n in d})
    out: Tensors = {}
    for name in names:
        present = [(d[name], w) for d, w in zip(deltas, weights) if name in d]
        merged = ties_tensor([v for v, _ in present], [w for _, w in present], density)
        out[name] = merged * scale
    return out


def merge(method: str, deltas: Sequence[Tensors], weights: Sequence[float],
          scale: float = 1.0, density: float = 0.2) -> Tensors:
    if len(deltas) != len(weights):
        raise ValueError("one weight per expert")
    if method == "linear":
        return linear(deltas, weights, scale)
    if method == "ties":
        return ties(deltas, weights, scale, density)
    raise ConfigError(f"merge method {method!r}: use one of {', '.join(METHODS)}")


def merge_weights(spec: str | Mapping[str, float], samples: Mapping[str, int]) -> dict[str, float]:
    """Each expert's weight: `samples` (its share of the trained samples), `uniform`
    (1/n), or given as `name=w,...` / a mapping (used as given; missing experts get 0)."""
    names = sorted(samples)
    if not names:
        return {}
    if isinstance(spec, Mapping):
        return {n: float(spec.get(n, 0.0)) for n in names}
    if spec == "uniform" or (spec == "samples" and sum(samples.values()) <= 0):
        return {n: 1.0 / len(names) for n in names}
    if spec == "samples":
        total = float(sum(samples.values()))
        return {n: samples[n] / total for n in names}
    given = parse_given(spec)
    return {n: given.get(n, 0.0) for n in names}


def parse_given(spec: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, sep, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise ConfigError(f"merge weights {spec!r}: use samples, uniform or "
                              "name=weight,name=weight")
    return out


def apply(base: Mapping[str, torch.Tensor], delta: Mapping[str, torch.Tensor]) -> Tensors:
    """base + delta for every base tensor (tensors without a delta are shared, not copied)."""
    return {n: (t.float() + delta[n]).to(t.dtype) if n in delta else t
            for n, t in base.items()}
