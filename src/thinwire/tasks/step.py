"""One node's local step on its next batch: the batch (augmented reproducibly), forward,
cross-entropy, backward. The simulator runs it for each node in turn, a swarm peer for itself,
so both draw the same batches and compute the same gradients.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .stream import ShardStream

if TYPE_CHECKING:
    from . import Task


def next_batch(task: "Task", stream: ShardStream, batch: int, seed: int, step: int,
               local: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The node's next (x, y); augmentation is seeded by (seed, step, node, local step)."""
    idx = stream.next_batch(min(batch, len(stream.shard)))
    x, y = task.train_x[idx], task.train_y[idx]
    if task.augment is not None:
        gen = torch.Generator().manual_seed(hash((seed, step, stream.index, local)) & 0x7FFFFFFF)
        x = task.augment(x, gen)
    return x, y


def forward_backward(model: torch.nn.Module, x: torch.Tensor,
                     y: torch.Tensor) -> tuple[float, float]:
    """Gradients of the mean cross-entropy into `.grad`; returns (loss, confidence), the
    confidence being the mean max-softmax (the design's confidence_score)."""
    model.zero_grad(set_to_none=True)
    out = model(x)
    loss = F.cross_entropy(out, y)
    loss.backward()
    return float(loss.detach()), float(out.detach().softmax(1).amax(1).mean())


def stream_at(stream: ShardStream, batch: int, batches: int) -> None:
    """Move `stream` to where it stands after `batches` batches from the start (a peer that
    rejoins at a later step draws the batches it would have drawn)."""
    size = min(batch, len(stream.shard))
    per_pass = max(len(stream.shard) // size, 1)
    stream.load_state_dict({"epoch": batches // per_pass, "cursor": (batches % per_pass) * size})
