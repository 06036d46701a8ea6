"""The gateway model: every trained expert merged into one, rebuilt on each expert update,
with a version and a history of what each version was made of.

Only the merged change and the history are kept; the weights (base + change) are built when
someone downloads them and cached for that version, and after a restart the change is
rebuilt from the restored experts (deterministic), so snapshots stay the size of the
adapters rather than of the model.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import torch

from ..tasks.lm.merge import apply, merge, merge_weights
from .config import ExpertsConfig
from .expert import Expert

Tensors = dict[str, torch.Tensor]


class Gateway:
    def __init__(self, cfg: ExpertsConfig, base_state: Tensors, base_model: torch.nn.Module
                 ) -> None:
        self.cfg, self.base_state, self.base_model = cfg, base_state, base_model
        self.version = 0
        self.history: list[dict[str, Any]] = []
        self.delta: Tensors = {}
        self.weights: dict[str, float] = {}
        self.experts: dict[str, int] = {}
        self._body: tuple[int, bytes] | None = None

    def expert_delta(self, expert: Expert, module: str | None = None) -> Tensors:
        """The dense change an expert makes to the base weights (or to one module's)."""
        tensors = expert.tensors if module is None else {module: expert.tensors[module]}
        return self.cfg.tuning(expert.name).dense(tensors, self.base_model)

    def rebuild(self, experts: Mapping[str, Expert], trigger: str | None = None,
                bump: bool = True) -> None:
        """Merge the trained experts again; `bump` starts a new version (not on restore)."""
        trained = {n: e for n, e in sorted(experts.items()) if e.version > 0}
        self.weights = merge_weights(self.cfg.merge_weights,
                                     {n: e.samples for n, e in trained.items()})
        weights = [self.weights[n] for n in trained]
        self.delta = {}
        for module in sorted(next(iter(trained.values())).tensors) if trained else []:
            # one module at a time: only one weight's worth of dense changes is alive
            deltas = [self.expert_delta(e, module) for e in trained.values()]
            self.delta.update(merge(self.cfg.merge, deltas, weights, self.cfg.merge_scale,
                                    self.cfg.ties_density))
        self.experts = {n: e.version for n, e in trained.items()}
        self._body = None
        if bump:
            self.version += 1
            entry = {"version": self.version, "time": round(time.time(), 3),
                     "trigger": trigger, "method": self.cfg.merge, "weights": self.weights,
                     "experts": self.experts}
            self.history = (self.history + [entry])[-self.cfg.history:]

    def weights_state(self) -> Tensors:
        return apply(self.base_state, self.delta)

    def body(self) -> bytes:
        """The merged weights as safetensors bytes (cached per version)."""
        if self._body is None or self._body[0] != self.version:
            self._body = (self.version, weights_body(self.weights_state(), self.metadata()))
        return self._body[1]

    def metadata(self) -> dict[str, str]:
        return {"kind": "gateway", "version": str(self.version), "method": self.cfg.merge}

    def info(self) -> dict[str, Any]:
        return {"version": self.version, "method": self.cfg.merge,
                "weights_by": self.cfg.merge_weights, "weights": self.weights,
                "scale": self.cfg.merge_scale,
                "ties_density": self.cfg.ties_density if self.cfg.merge == "ties" else None,
                "parameters": sum(t.numel() for t in self.base_state.values()),
                "experts": self.experts, "history": self.history[-20:]}

    def state_dict(self) -> dict[str, Any]:
        return {"version": self.version, "history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.version, self.history = state["version"], list(state["history"])


def weights_body(tensors: Tensors, metadata: dict[str, str]) -> bytes:
    from safetensors.torch import save

    return save({n: t.detach().float().contiguous() for n, t in tensors.items()},
                metadata=metadata)
