"""Packing: all of a model's tensors as one flat tensor, so one payload carries the update.

With `pack`, a message holds a single payload: a sparsifier's top-k is global over the model
rather than per tensor, and no per-tensor metadata crosses the wire. Every runtime packs before
`Sender.propose` and unpacks what it decoded, in the model's parameter order.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

Tensors = dict[str, torch.Tensor]
PACKED = "packed"


class Packing:
    """Packs in the order and shapes of `like` (the model's parameters); off: passes through."""

    def __init__(self, like: Mapping[str, torch.Tensor], enabled: bool = True) -> None:
        self.like, self.enabled = like, enabled

    def pack(self, tensors: Tensors) -> Tensors:
        if not self.enabled:
            return tensors
        return {PACKED: torch.cat([tensors[n].reshape(-1) for n in self.like])}

    def unpack(self, tensors: Tensors) -> Tensors:
        if not self.enabled:
            return tensors
        flat, out, at = tensors[PACKED], {}, 0
        for n, p in self.like.items():
            out[n] = flat[at: at + p.numel()].view_as(p)
            at += p.numel()
        return out

    def layout(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """What a receiver should expect (wire name -> (shape, role)) for these params."""
        if not self.enabled:
            return {n: (tuple(p.shape), "param") for n, p in self.like.items()}
        return {PACKED: ((sum(p.numel() for p in self.like.values()),), "param")}
