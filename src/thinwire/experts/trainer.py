"""A worker's local fine-tuning: SFT steps on its specialty's rows for a wall-clock slice.

Only what the tuning exchanges is trained (FFA-LoRA: the B matrices; full: every weight),
with AdamW whose state survives pulls, as DiLoCo keeps its inner optimizer. `speed_factor`
F > 1 emulates a device F times slower by sleeping (F - 1) times each step's duration.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from ..tasks.lm.sft import Example, batches
from ..tasks.lm.tuning import Tuning

Tensors = dict[str, torch.Tensor]


@dataclass
class Slice:
    """What one slice of training did."""

    steps: int
    samples: int
    loss: float | None


class Trainer:
    def __init__(self, model: torch.nn.Module, tuning: Tuning, examples: list[Example],
                 pad_id: int, lr: float, batch_size: int, seed: int = 0,
                 speed_factor: float = 1.0) -> None:
        for p in model.parameters():
            p.requires_grad_(False)
        self.model = tuning.prepare(model)
        self.params = tuning.trainable(self.model)
        for p in self.params.values():
            p.requires_grad_(True)
        self.model.train()
        self.opt = torch.optim.AdamW(list(self.params.values()), lr=lr, weight_decay=0.0)
        self.batches = batches(examples, batch_size, pad_id, seed)
        self.speed_factor = max(speed_factor, 1.0)
        self.steps = 0

    def train_for(self, seconds: float) -> Slice:
        """At least one step, then steps until `seconds` have passed."""
        end = time.monotonic() + seconds
        steps = samples = 0
        loss_sum = 0.0
        while steps == 0 or time.monotonic() < end:
            start = time.monotonic()
            batch = next(self.batches)
            loss = self.model(**batch).loss
            loss.backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            steps, samples = steps + 1, samples + batch["input_ids"].size(0)
            loss_sum += float(loss.detach())
            if self.speed_factor > 1:
                time.sleep((self.speed_factor - 1) * (time.monotonic() - start))
        self.steps += steps
        return Slice(steps, samples, loss_sum / steps)

    def get(self) -> Tensors:
        return {n: p.detach().clone() for n, p in self.params.items()}

    @torch.no_grad()
    def set(self, tensors: dict[str, Any]) -> None:
        for n, p in self.params.items():
            p.copy_(tensors[n].to(p.dtype))
