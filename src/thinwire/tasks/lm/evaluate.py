"""LM evaluation: mean next-token loss and perplexity over blocks of token ids.

One function for every runtime: the collective trainer's periodic and final validation (blocks
split evenly across ranks, sums all-reduced) and `thinwire validate` on a saved checkpoint
(one process) compute the same token-weighted mean, so their figures compare.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ...errors import ConfigError


@dataclass(frozen=True)
class LMScore:
    loss: float   # token-weighted mean next-token NLL
    ppl: float    # exp(loss)
    tokens: int   # predicted tokens, over all ranks


def token_losses(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Per-token next-token NLL of a (batch, length) block: shape (batch, length - 1)."""
    logits = model(input_ids=ids).logits[:, :-1].float()
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1), reduction="none"
    ).view(ids.size(0), -1)


def rank_share(blocks: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """This rank's equal share of the blocks (every rank runs the same number of forwards,
    as FSDP requires; the remainder is left out)."""
    per_rank = blocks.size(0) // world if world > 1 else blocks.size(0)
    if per_rank < 1:
        raise ConfigError(f"{blocks.size(0)} validation blocks for {world} ranks")
    return blocks[rank * per_rank:(rank + 1) * per_rank]


@torch.no_grad()
def evaluate(model: torch.nn.Module, blocks: torch.Tensor, batch_size: int, *,
             device: torch.device | None = None, rank: int = 0, world: int = 1,
             max_batches: int = 0) -> LMScore:
    """Loss and perplexity of `model` over `blocks` (at most `max_batches` batches per rank;
    0 = all). With world > 1 every rank of the default group must call it."""
    device = device or next(model.parameters()).device
    mine = rank_share(blocks, rank, world)
    if max_batches:
        mine = mine[: max_batches * batch_size]
    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)
    for start in range(0, mine.size(0), batch_size):
        losses = token_losses(model, mine[start:start + batch_size].to(device))
        total += torch.stack([losses.double().sum(), torch.tensor(losses.numel(),
                                                                 dtype=torch.float64,
                                                                 device=device)])
    if world > 1:
        dist.all_reduce(total)
    model.train(was_training)
    loss = float(total[0] / total[1])
    return LMScore(loss, math.exp(min(loss, 700.0)), int(total[1]))
