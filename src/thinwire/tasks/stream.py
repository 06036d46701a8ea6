"""ShardStream: a node's shard of the training set as an endless, reproducible batch stream.

The order depends only on (seed, node, epoch), so a resumed run replays it exactly, and the
simulator, the service's workers and the benchmarks draw the same batches.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


def epoch_generator(seed: int, node: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + node * 7_919 + epoch)


@dataclass
class ShardStream:
    index: int
    shard: torch.Tensor          # indices into the training set
    seed: int = 0
    epoch: int = 0
    cursor: int = 0
    _order: torch.Tensor | None = field(default=None, repr=False)

    def next_batch(self, batch_size: int) -> torch.Tensor:
        """Indices of the next batch; reshuffles when the shard is exhausted."""
        if self._order is None:
            self._order = self._permute()
        if self.cursor + batch_size > len(self._order):
            self.epoch += 1
            self.cursor = 0
            self._order = self._permute()
        take = self._order[self.cursor: self.cursor + batch_size]
        self.cursor += batch_size
        return take

    def _permute(self) -> torch.Tensor:
        gen = epoch_generator(self.seed, self.index, self.epoch)
        return self.shard[torch.randperm(len(self.shard), generator=gen)]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.cursor = state["epoch"], state["cursor"]
        self._order = None if self.cursor == 0 else self._permute()
