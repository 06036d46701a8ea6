"""Every seed and warm start the communicators use, in one place.

- Gathered payloads are decoded one by one, so stochastic codecs must draw independent noise
  per rank: `offset_seeds` gives each rank's encoder a copy seeded seed + rank.
- Shared-scale int8 with stochastic rounding draws per rank and per step:
  seed + rank + world * step, the step counted in the tensor's slot.
- Two-round PowerSGD starts each matrix from the same orthonormal Q on every rank (seeded by
  the codec seed and the tensor's index in its bucket); afterwards the summed Q of the last
  step is the warm start.
"""

from __future__ import annotations

from typing import Any

import torch

from ...codecs.base import Codec


def offset_seeds(codec: Codec, offset: int) -> Codec:
    """A copy whose stochastic stages use seed+offset: independent rounding noise per rank."""
    inner = offset_seeds(codec.inner, offset) if codec.inner is not None else None
    params = codec.params
    if "seed" in type(params).model_fields and offset:
        params = params.model_copy(update={"seed": params.seed + offset})
    return type(codec)(params, inner)


def rank_step_generator(seed: int, rank: int, world: int, slot: dict[str, Any],
                        device: torch.device) -> torch.Generator:
    """A generator for this rank's draws at this tensor's next step (counted in `slot`)."""
    step = slot.get("step", 0)
    slot["step"] = step + 1
    gen = torch.Generator(device=device)
    gen.manual_seed(seed + rank + world * step)
    return gen


def warm_start(slot: dict[str, Any], index: int, seed: int, c: int, r: int,
               device: torch.device) -> torch.Tensor:
    """The (c, r) Q to multiply matrix `index` with: last step's, or a seeded orthonormal one."""
    q = slot.get(f"q{index}")
    if q is None or tuple(q.shape) != (c, r):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + index)
        q = torch.linalg.qr(torch.randn(c, r, generator=gen)).Q
    return q.to(device)


def keep_warm_start(slot: dict[str, Any], index: int, q: torch.Tensor) -> None:
    slot[f"q{index}"] = q.clone()
