"""Learning rate as a pure function of the step, so a resumed run replays it exactly."""

from __future__ import annotations

import math

from .config import RunConfig


def lr_at(cfg: RunConfig, step: int, steps_per_epoch: int) -> float:
    """`constant`; `step`: times lr_gamma at each epoch in lr_milestones (default: the last
    epoch); `cosine`: half a cosine from lr to 0 over the run."""
    if cfg.lr_schedule == "constant":
        return cfg.lr
    if cfg.lr_schedule == "step":
        epoch = step // max(steps_per_epoch, 1)
        milestones = cfg.lr_milestones or [cfg.epochs - 1]
        return cfg.lr * cfg.lr_gamma ** sum(epoch >= m for m in milestones if m > 0)
    total = max(cfg.epochs * steps_per_epoch, 1)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
