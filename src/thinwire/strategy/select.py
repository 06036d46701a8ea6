"""Budgeted client selection (FLQ): score = ||q||^2 / cost, top-k or greedy knapsack."""

from __future__ import annotations


def select_top_k(scores: dict[str, float], k: int) -> list[str]:
    """The k highest-scoring candidates (ties broken by id for determinism)."""
    ranked = sorted(scores, key=lambda c: (-scores[c], c))
    return ranked[: max(k, 0)]


def select_budget(gains: dict[str, float], costs: dict[str, int], budget_bits: int) -> list[str]:
    """Greedy knapsack: take candidates by gain/cost while their bits fit in the budget."""
    ratio = {c: gains[c] / max(costs[c], 1) for c in gains}
    chosen, used = [], 0
    for cand in select_top_k(ratio, len(ratio)):
        if used + costs[cand] <= budget_bits:
            chosen.append(cand)
            used += costs[cand]
    return sorted(chosen)
