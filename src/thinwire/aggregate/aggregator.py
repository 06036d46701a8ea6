"""Round-wise aggregation of decoded contributions, with reuse of skipped nodes' last one.

`skipped="reuse"` (default) keeps a lazy node's last contribution in the average, as LAQ's
server does (its gradient is assumed to have changed little); `"drop"` averages only the nodes
that sent this round; `"accumulate"` is for nodes that keep what they skip and send it later
(their contribution is a sum of pending updates), so a skipped node counts as zero in a mean
over every node: over time each update is applied exactly once, only late.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .rules import RULES, combine

Tensors = dict[str, torch.Tensor]
WEIGHTS = ("samples", "uniform", "confidence")
SKIPPED = ("reuse", "drop", "accumulate")


@dataclass
class Contribution:
    tensors: Tensors
    num_samples: int = 1
    confidence: float = 1.0


class Aggregator:
    def __init__(self, rule: str = "mean", weight: str = "samples",
                 skipped: str = "reuse", expected_nodes: int | None = None) -> None:
        if rule not in RULES:
            raise ConfigError(f"unknown aggregation rule {rule!r}; valid: {', '.join(RULES)}")
        if weight not in WEIGHTS:
            raise ConfigError(f"weight {weight!r}: use one of {', '.join(WEIGHTS)}")
        if skipped not in SKIPPED:
            raise ConfigError(f"skipped {skipped!r}: use {', '.join(SKIPPED)}")
        if skipped == "accumulate" and rule != "mean":
            raise ConfigError(f"skipped=accumulate needs aggregate=mean (a skipped node counts "
                              f"as zero, which a {rule} would treat as a vote)")
        if skipped == "accumulate" and weight == "confidence":
            raise ConfigError("skipped=accumulate needs weight samples or uniform: a delayed "
                              "update would be weighted by a later confidence")
        self.expected_nodes = expected_nodes
        self.rule, self.weight, self.skipped = rule, weight, skipped
        self.last: dict[str, Contribution] = {}
        self.fresh: dict[str, Contribution] = {}

    def submit(self, node: str, contribution: Contribution) -> None:
        self.fresh[node] = contribution

    def result(self) -> Tensors | None:
        """Combine this round's contributions (plus reused ones) and start the next round."""
        pool = dict(self.last) if self.skipped == "reuse" else {}
        pool.update(self.fresh)
        self.last.update(self.fresh)
        self.fresh = {}
        if not pool:
            return None
        nodes = sorted(pool)
        weights = [self._weight(pool[n]) for n in nodes]
        names = pool[nodes[0]].tensors.keys()
        out = {k: combine(self.rule, [pool[n].tensors[k] for n in nodes], weights)
               for k in names}
        if self.skipped == "accumulate":  # a mean over every node, skipped ones as zero
            scale = sum(weights) / self._total_weight()
            out = {k: v if k.startswith("buffer:") else v * scale for k, v in out.items()}
        return out

    def _total_weight(self) -> float:
        """Weights of every node: those seen so far, and for expected nodes that have not
        sent yet the mean weight of the seen ones."""
        seen = [self._weight(c) for c in self.last.values()]
        missing = max((self.expected_nodes or 0) - len(seen), 0)
        return sum(seen) + missing * sum(seen) / len(seen)

    def _weight(self, c: Contribution) -> float:
        if self.weight == "samples":
            return float(c.num_samples)
        if self.weight == "confidence":
            return float(c.confidence)
        return 1.0

    def state_dict(self) -> dict:
        return {n: {"tensors": c.tensors, "num_samples": c.num_samples,
                    "confidence": c.confidence} for n, c in self.last.items()}

    def load_state_dict(self, state: dict) -> None:
        self.last = {n: Contribution(**c) for n, c in state.items()}
