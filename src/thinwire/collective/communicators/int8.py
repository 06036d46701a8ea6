"""int8 gradients summed *as int8*: one shared scale agreed through all_reduce(MAX).

Every rank takes max|g| (per tensor, or per block of the `int8` codec's `block`), one
all_reduce(MAX) makes the scale common, ranks quantize onto a grid of +-Q with
Q = (2^(b-1)-1) // world_size so that the sum of world_size codes still fits in int8 (the
world-size headroom), and the codes are summed by an int8 all_reduce (DDP) or reduce_scatter
(FSDP). Costs: one extra small collective; the grid gets coarser as the world grows (Q = 63 on
2 ranks, 15 on 8). `stochastic=true` rounds with independent noise per rank.

The alternative, `int8_mode="per-rank"`, keeps each rank's own scale (full 8-bit grid at any
world size) at the price of an all-gather (the Gather communicator). Non-finite gradients are
flagged through the same MAX all-reduce, so every rank sees them and returns NaN together
instead of one rank raising while the others wait in a collective.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
import torch.distributed as dist

from ...codecs import kernels
from ...codecs.base import Codec
from ...codecs.intquant import block_rows
from ...errors import ConfigError
from ..comm import Future, all_reduce_async, completed, now, run_sync
from .base import Communicator
from .seeds import rank_step_generator

if TYPE_CHECKING:
    from ..state import CommHookState


def headroom(codec: Codec, world: int) -> int:
    """The largest code Q with world * Q still inside the signed b-bit range."""
    return (2 ** (codec.params.num_bits - 1) - 1) // world


class SharedInt8(Communicator):
    path = "int8_shared"

    def __init__(self, codec: Codec, world: int) -> None:
        if headroom(codec, world) < 1:
            raise ConfigError(f"int8 with a shared scale needs world size <= "
                              f"{headroom(codec, 1)} (headroom for the int8 sum); use "
                              "int8_mode='per-rank'")

    def shrinks(self, state: CommHookState, name: str, x: torch.Tensor) -> bool:
        return x.numel() * x.element_size() >= state.min_compression_rate * max(x.numel(), 1)

    def average(self, state: CommHookState, name: str, buf: torch.Tensor,
                grads: Sequence[torch.Tensor]) -> Future:
        res = quantize(state, name, buf)
        if res is None:
            return completed(torch.full_like(buf, float("nan")))
        codes, scale = res
        state.stats.add(bytes_compressed=codes.numel(), elements_sent=codes.numel())
        fut = all_reduce_async(state.stats, codes, state.group, "all_reduce")
        block, n, dtype = state.codec.params.block, codes.numel(), buf.dtype

        def decode(f: Future) -> torch.Tensor:
            summed = f.value()[0]
            return (summed.float() * scale_per_element(scale, block, n)).to(dtype)

        return fut.then(decode)

    def reduce_scatter(self, state: CommHookState, key: str, chunks: torch.Tensor,
                       out: torch.Tensor) -> None:
        res = quantize(state, key, chunks)
        if res is None:
            out.fill_(float("nan"))
            return
        codes, scale = res
        shard = torch.empty(out.numel(), dtype=torch.int8, device=out.device)
        run_sync(state.stats, "reduce_scatter",
                 lambda: dist.reduce_scatter_tensor(shard, codes, group=state.group,
                                                    async_op=True))
        state.stats.add(bytes_compressed=codes.numel(), elements_sent=codes.numel())
        full_scale = scale_per_element(scale, state.codec.params.block, codes.numel())
        lo = state.rank * out.numel()
        out.copy_((shard.float() * full_scale[lo:lo + out.numel()]).view_as(out))


def quantize(state: CommHookState, name: str,
             x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(int8 codes, per-block scale) of x / world (+ the error-feedback residual, which is
    updated here); None if any rank has a non-finite value."""
    v = x.reshape(-1).float() / state.world
    feedback, slot = state.feedback, state.slot(name)
    if feedback is not None:
        v = feedback.compensate(v, slot)
    res = _shared_codes(state, slot, v)
    if res is None:
        return None
    codes, scale, recon = res
    if feedback is not None:
        feedback.absorb(slot, v, recon)
    return codes, scale


def _shared_codes(state: CommHookState, slot: dict, v: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(codes, scale, local reconstruction) of flat fp32 `v` on the agreed grid."""
    p = state.codec.params
    n = v.numel()
    rows = block_rows(v, p.block)
    amax = kernels.absmax_rows(rows)
    bad = (~torch.isfinite(amax)).any().float().reshape(1)
    ext = torch.cat([torch.nan_to_num(amax, nan=0.0, posinf=0.0, neginf=0.0), bad])
    run_sync(state.stats, "all_reduce_max",
             lambda: dist.all_reduce(ext, op=dist.ReduceOp.MAX, group=state.group,
                                     async_op=True), extra=True)
    state.stats.add(bytes_compressed=ext.numel() * 4)
    if float(ext[-1]) > 0:
        return None
    t0 = now()
    q = headroom(state.codec, state.world)
    scale = ext[:-1] / q
    inv = torch.where(scale > 0, 1.0 / scale, torch.zeros_like(scale))
    noise = None
    if p.stochastic:
        gen = rank_step_generator(p.seed, state.rank, state.world, slot, rows.device)
        noise = torch.rand(rows.shape, generator=gen, device=rows.device)
    code_rows = kernels.quantize_rows(rows, inv, q, noise)
    recon = kernels.dequantize_rows(code_rows, scale).reshape(-1)[:n]
    state.stats.add(compress_s=now() - t0)
    return code_rows.reshape(-1)[:n].contiguous(), scale, recon


def scale_per_element(scale: torch.Tensor, block: int, n: int) -> torch.Tensor:
    if block <= 0:
        return scale.expand(n)
    return scale.repeat_interleave(block)[:n]
