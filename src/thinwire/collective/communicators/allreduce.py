"""The plain fp32 average: `none`, warm-up iterations and buckets not worth compressing."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
import torch.distributed as dist

from ..comm import Future, all_reduce_async, run_sync
from .base import Communicator

if TYPE_CHECKING:
    from ..state import CommHookState


class AllReduce(Communicator):
    """DDP's default (all_reduce of buf / world) and FSDP's (reduce_scatter of it)."""

    path = "allreduce"
    compresses = False

    def average(self, state: CommHookState, name: str, buf: torch.Tensor,
                grads: Sequence[torch.Tensor]) -> Future:
        buf.div_(state.world)
        state.stats.add(bytes_compressed=buf.numel() * buf.element_size())
        fut = all_reduce_async(state.stats, buf, state.group)
        return fut.then(lambda f: f.value()[0])

    def reduce_scatter(self, state: CommHookState, key: str, chunks: torch.Tensor,
                       out: torch.Tensor) -> None:
        src = chunks.reshape(-1) / state.world
        state.stats.add(bytes_compressed=src.numel() * src.element_size())
        flat = out.view(-1)
        run_sync(state.stats, "reduce_scatter", lambda: dist.reduce_scatter_tensor(
            flat, src, group=state.group, async_op=True))
