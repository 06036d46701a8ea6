"""Learning rate as a pure function of the step, so a resumed run replays it exactly."""

from __future__ import annotations

import math

from .config import RunConfig


def lr_at(cfg: RunConfig, step: int, steps_per_epoch: int) -> float:
    """`constant`; `step`: times lr_gamma at each epoch in lr_milestones (default: the last
    epoch); `cosine`: half a cosine from lr to 0 over the run. `lr_warmup` steps ramp it up
    linearly first (sparsified updates suffer most from a large early lr)."""
    base = _scheduled(cfg, step, steps_per_epoch)
    if step < cfg.lr_warmup:
        return base * (step + 1) / cfg.lr_warmup
    return base


def _scheduled(cfg: RunConfig, step: int, steps_per_epoch: int) -> float:
    if cfg.lr_schedule == "constant":
        return cfg.lr
    if cfg.lr_schedule == "step":
        epoch = step // max(steps_per_epoch, 1)
        milestones = cfg.lr_milestones or [cfg.epochs - 1]
        return cfg.lr * cfg.lr_gamma ** sum(epoch >= m for m in milestones if m > 0)
    total = max(cfg.epochs * steps_per_epoch, 1)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
