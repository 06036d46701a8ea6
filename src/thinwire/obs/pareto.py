"""Accuracy against bytes: which configurations are on the Pareto front, and how many bytes a
run moved before it first reached a target accuracy (from the per-epoch `history` of its
results row)."""

from __future__ import annotations

from collections.abc import Sequence


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """For (bytes, accuracy) points, whether each is on the front: no other point has bytes
    <= and accuracy >= with at least one strictly better. Equal points are all on the front
    (neither beats the other); of two with equal bytes only the more accurate is."""
    front = []
    for b, a in points:
        beaten = any(b2 <= b and a2 >= a and (b2 < b or a2 > a) for b2, a2 in points)
        front.append(not beaten)
    return front


def bytes_to_target(history: Sequence[dict], target: float) -> tuple[int, int] | None:
    """(cumulative wire bytes, epoch) at the first evaluation with test_accuracy >= target,
    or None when the run never reached it. Evaluations are per epoch, so this is an upper
    bound at epoch resolution."""
    for h in history:
        if h["test_accuracy"] >= target:
            return int(h["bytes_wire_cum"]), int(h["epoch"])
    return None
