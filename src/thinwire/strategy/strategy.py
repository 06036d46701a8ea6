"""Strategy: what a receiver does with what arrived: combine, weight, reuse or drop skipped
nodes, weight stale updates, select under a budget, and scale the server step.

Combining is per round: `submit` the round's contributions, then `result` (optionally leaving
out nodes that are gone) combines them with the rule and starts the next round.
`skipped="reuse"` (default) keeps a lazy node's last contribution in the average, as LAQ's
server does; `"drop"` averages only the nodes that sent this round; `"accumulate"` is for
nodes that keep what they skip and send it later (a sum of pending updates), so a skipped
node counts as zero in a mean over every node: each update is applied once, only late.
Only params and adapters are scaled or voted on; other roles (buffers) are averaged as they
are.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import ConfigError
from ..exchange.tensorset import TensorSet
from .rules import RULES, combine, krum_choice
from .select import select_budget, select_top_k

WEIGHTS = ("samples", "uniform", "confidence")
VOTED = ("param", "adapter")  # roles the rule combines; buffers are always averaged
SKIPPED = ("reuse", "drop", "accumulate")


@dataclass
class Contribution:
    tensors: TensorSet
    num_samples: int = 1
    confidence: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.tensors, TensorSet):
            self.tensors = TensorSet(self.tensors)  # a plain dict holds parameters


@dataclass
class Combined:
    tensors: TensorSet
    count: int                      # contributions combined (fresh + reused)
    nodes: list[str] = field(default_factory=list)


class Strategy:
    def __init__(self, rule: str = "mean", weight: str = "samples", skipped: str = "reuse",
                 expected_nodes: int | None = None, server_lr: float = 1.0,
                 staleness_exponent: float = 0.5, mix: float = 1.0, sel_clients: int = 0,
                 up_budget_bits: int = 0, sel_ref: int = 0) -> None:
        check(rule, weight, skipped)
        self.rule, self.weight, self.skipped = rule, weight, skipped
        self.expected_nodes = expected_nodes
        self.server_lr, self.staleness_exponent, self.mix = server_lr, staleness_exponent, mix
        self.sel_clients, self.up_budget_bits, self.sel_ref = sel_clients, up_budget_bits, sel_ref
        self.last: dict[str, Contribution] = {}
        self.fresh: dict[str, Contribution] = {}

    # ---- combining ---------------------------------------------------------------------
    def submit(self, node: str, contribution: Contribution) -> None:
        self.fresh[node] = contribution

    def result(self, exclude: set[str] | None = None) -> Combined | None:
        """Combine this round's contributions (plus reused ones not in `exclude`) and start
        the next round. Excluded nodes keep their last contribution for later."""
        pool = {n: c for n, c in self.last.items()
                if n not in (exclude or ())} if self.skipped == "reuse" else {}
        pool.update(self.fresh)
        self.last.update(self.fresh)
        self.fresh = {}
        if not pool:
            return None
        nodes = sorted(pool)
        weights = [self._weight(pool[n]) for n in nodes]
        out = self._combine([pool[n].tensors for n in nodes], weights)
        if self.skipped == "accumulate":  # a mean over every node, skipped ones as zero
            scale = sum(weights) / self._total_weight()
            out = TensorSet().add({k: v * scale for k, v in out.params.items()}) \
                .add(out.buffers, "buffer")
        return Combined(out, len(nodes), nodes)

    def _combine(self, sets: list[TensorSet], weights: list[float]) -> TensorSet:
        first, out = sets[0], TensorSet()
        choice = None
        if self.rule == "krum":
            choice = krum_choice([torch.cat([s[k].reshape(-1).float() for k in s
                                             if s.role(k) in VOTED]) for s in sets])
        for name in first:
            role = first.role(name)
            values = [s[name] for s in sets]
            if role not in VOTED:
                out.add({name: combine("mean", values, weights)}, role)
            elif choice is not None:
                out.add({name: values[choice]}, role)
            else:
                out.add({name: combine(self.rule, values, weights)}, role)
        return out

    def forget(self, node: str) -> None:
        self.last.pop(node, None)
        self.fresh.pop(node, None)

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

    # ---- selection and the server step -------------------------------------------------
    @property
    def selects(self) -> bool:
        return self.sel_clients > 0 or self.up_budget_bits > 0

    def select(self, offers: dict[str, tuple[float, int]]) -> list[str]:
        """Budgeted selection over (score = ||q||^2, bits) offers: the top sel_clients by
        score/bits, or a greedy knapsack under up_budget_bits."""
        scores = {w: s for w, (s, _) in offers.items()}
        costs = {w: b for w, (_, b) in offers.items()}
        if self.sel_clients:
            ratio = {w: scores[w] / max(costs[w], 1) for w in scores}
            return select_top_k(ratio, self.sel_clients)
        return select_budget(scores, costs, self.up_budget_bits)

    def sync_scale(self, combined: int) -> float:
        """Server step size for a synchronous round of `combined` contributions."""
        return self.server_lr * (combined / self.sel_ref if self.sel_ref else 1.0)

    def async_weight(self, staleness: int) -> float:
        """An update applied on arrival: mix * server_lr * (1 + staleness)^-a."""
        return self.mix * self.server_lr * (1.0 + max(staleness, 0)) ** -self.staleness_exponent

    # ---- checkpoints -------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {n: {"set": c.tensors.state_dict(), "num_samples": c.num_samples,
                    "confidence": c.confidence} for n, c in self.last.items()}

    def load_state_dict(self, state: dict) -> None:
        self.last = {n: Contribution(TensorSet.from_state_dict(c["set"]), c["num_samples"],
                                     c["confidence"]) for n, c in state.items()}


def check(rule: str, weight: str, skipped: str) -> None:
    """Refuse combinations that cannot work, with the reason."""
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
