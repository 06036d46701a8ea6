"""One specialty's expert: its adapter (or weight change), its version and history, and the
round of uploads it is collecting.

A round gathers the uploads of the specialty's workers: a worker that uploads twice before
the round closes adds to its own contribution (the sum is its change since it last pulled).
Each upload is weighted by its staleness when it arrives. Closing combines the workers'
contributions with the strategy's rule (a weighted mean by default) and moves the expert by
the outer step; with FFA-LoRA the mean of the B's is exactly the mean of the workers' ΔW.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..exchange import TensorSet
from ..strategy import Contribution, OuterOptimizer, Strategy, change_sq

Tensors = dict[str, torch.Tensor]


@dataclass
class Pending:
    """A worker's contribution to the open round."""

    tensors: Tensors
    samples: int = 0
    uploads: int = 0
    staleness: int = 0
    losses: list[float] = field(default_factory=list)

    def add(self, tensors: Tensors, weight: float, samples: int, staleness: int,
            loss: float | None) -> None:
        for n, t in tensors.items():
            self.tensors[n].add_(t.float(), alpha=weight)
        self.samples += samples
        self.uploads += 1
        self.staleness = max(self.staleness, staleness)
        if loss is not None:
            self.losses.append(loss)

    def state_dict(self) -> dict[str, Any]:
        return {"tensors": self.tensors, "samples": self.samples, "uploads": self.uploads,
                "staleness": self.staleness, "losses": self.losses}


class Expert:
    def __init__(self, name: str, layout: dict[str, tuple[int, ...]], role: str,
                 strategy: Strategy, outer: Callable[[Tensors], OuterOptimizer],
                 keep: int = 1000) -> None:
        self.name, self.layout, self.role = name, layout, role
        self.strategy, self.keep = strategy, keep
        self.tensors: Tensors = {n: torch.zeros(s) for n, s in layout.items()}
        self.outer = outer(self.tensors)  # steps these tensors in place
        self.version = self.samples = self.uploads = self.upload_bytes = 0
        self.history: list[dict[str, Any]] = []
        self.pending: dict[str, Pending] = {}
        self.opened: float | None = None  # monotonic time of the round's first upload

    # ---- the open round ------------------------------------------------------------------
    def add(self, wid: str, tensors: Tensors, samples: int, staleness: int, nbytes: int,
            loss: float | None = None) -> None:
        weight = self.strategy.async_weight(staleness) / self.strategy.async_weight(0)
        pending = self.pending.get(wid)
        if pending is None:
            pending = self.pending[wid] = Pending({n: torch.zeros(s) for n, s in
                                                   self.layout.items()})
        pending.add(tensors, weight, samples, staleness, loss)
        self.uploads += 1
        self.upload_bytes += nbytes
        if self.opened is None:
            self.opened = time.monotonic()

    def due(self, expected: set[str], timeout: float) -> bool:
        """Close when every expected worker uploaded, or `timeout` after the first upload."""
        if not self.pending:
            return False
        if expected <= set(self.pending):
            return True
        return self.opened is not None and time.monotonic() - self.opened >= timeout

    def close(self, reason: str) -> dict[str, Any]:
        """Combine the round, take the outer step, start the next round; the history entry."""
        for wid, p in sorted(self.pending.items()):
            self.strategy.submit(wid, Contribution(TensorSet(p.tensors, self.role),
                                                   max(p.samples, 1)))
        combined = self.strategy.result()
        before = {n: t.clone() for n, t in self.tensors.items()}
        self.outer.step(combined.tensors)
        change = change_sq(self.tensors, before)
        losses = [v for p in self.pending.values() for v in p.losses]
        entry = {"version": self.version + 1, "time": round(time.time(), 3), "reason": reason,
                 "contributors": [{"worker": w, "samples": p.samples, "uploads": p.uploads,
                                   "staleness": p.staleness}
                                  for w, p in sorted(self.pending.items())],
                 "train_loss": sum(losses) / len(losses) if losses else None,
                 "step_norm": change ** 0.5}
        self.version += 1
        self.samples += sum(p.samples for p in self.pending.values())
        self.history = (self.history + [entry])[-self.keep:]
        self.pending, self.opened = {}, None
        return entry

    # ---- views and checkpoints -------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "samples": self.samples,
                "uploads": self.uploads,
                "bytes_per_upload": self.upload_bytes / self.uploads if self.uploads else None,
                "pending": sorted(self.pending), "history": self.history[-20:]}

    def state_dict(self) -> dict[str, Any]:
        return {"tensors": self.tensors, "version": self.version, "samples": self.samples,
                "uploads": self.uploads, "upload_bytes": self.upload_bytes,
                "history": self.history, "outer": self.outer.state_dict(),
                "pending": {w: p.state_dict() for w, p in self.pending.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for n, t in state["tensors"].items():
            if n not in self.tensors or tuple(t.shape) != tuple(self.tensors[n].shape):
                raise ValueError(f"expert {self.name}: stored tensor {n} {list(t.shape)} does "
                                 "not fit this base model")
            self.tensors[n].copy_(t)  # in place: the outer optimizer holds these tensors
        self.version, self.samples = state["version"], state["samples"]
        self.uploads, self.upload_bytes = state["uploads"], state["upload_bytes"]
        self.history = list(state["history"])
        self.outer.load_state_dict(state["outer"])
        self.pending = {w: Pending(**p) for w, p in state["pending"].items()}
        self.opened = time.monotonic() if self.pending else None
