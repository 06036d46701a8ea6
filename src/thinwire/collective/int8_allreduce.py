"""int8 gradients summed *as int8*: one shared scale agreed through all_reduce(MAX).

The design's int8 reduce-scatter: every rank takes max|g| (per tensor, or per block of the
`int8` codec's `block`), one all_reduce(MAX) makes the scale common, ranks quantize onto a grid
of +-Q with Q = (2^(b-1)-1) // world_size so that the sum of world_size codes still fits in int8
(the world-size headroom), and the codes are summed by an int8 all_reduce (DDP) or
reduce_scatter (FSDP). Costs: one extra small collective; the grid gets coarser as the world
grows (Q = 63 on 2 ranks, 15 on 8). `stochastic=true` rounds with independent noise per rank.

The alternative, `int8_mode="per-rank"`, keeps each rank's own scale (full 8-bit grid at any
world size) at the price of an all-gather: every rank decodes every rank's payload (hooks.py).
Non-finite gradients are flagged through the same MAX all-reduce, so every rank sees them and
returns NaN together instead of one rank raising while the others wait in a collective.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..codecs import kernels
from ..codecs.intquant import block_rows
from .comm import Future, all_reduce_async, completed, now, run_sync
from .state import CommHookState


def headroom(state: CommHookState) -> int:
    return (2 ** (state.codec.params.num_bits - 1) - 1) // state.world


def shared_quantize(state: CommHookState, name: str,
                    v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(codes int8, per-block scale, local reconstruction) of flat fp32 `v`; None if any
    rank has a non-finite value."""
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
    q = headroom(state)
    scale = ext[:-1] / q
    inv = torch.where(scale > 0, 1.0 / scale, torch.zeros_like(scale))
    noise = None
    if p.stochastic:
        slot = state.slot(name)
        step = slot.get("step", 0)
        slot["step"] = step + 1
        gen = torch.Generator(device=rows.device)
        gen.manual_seed(p.seed + state.rank + state.world * step)
        noise = torch.rand(rows.shape, generator=gen, device=rows.device)
    code_rows = kernels.quantize_rows(rows, inv, q, noise)
    recon = kernels.dequantize_rows(code_rows, scale).reshape(-1)[:n]
    state.stats.add(compress_s=now() - t0)
    return code_rows.reshape(-1)[:n].contiguous(), scale, recon


def _prepare(state: CommHookState, name: str, x: torch.Tensor) -> torch.Tensor:
    v = x.reshape(-1).float() / state.world
    if state.error_feedback and "residual" in state.slot(name):
        v = v + state.slot(name)["residual"]
    return v


def _feedback(state: CommHookState, name: str, v: torch.Tensor, recon: torch.Tensor) -> None:
    if state.error_feedback:
        state.slot(name)["residual"] = v - recon


def scale_per_element(scale: torch.Tensor, block: int, n: int) -> torch.Tensor:
    if block <= 0:
        return scale.expand(n)
    return scale.repeat_interleave(block)[:n]


def allreduce_shared_int8(state: CommHookState, name: str, buf: torch.Tensor) -> Future:
    """DDP: the averaged bucket, summed as int8 codes."""
    v = _prepare(state, name, buf)
    res = shared_quantize(state, name, v)
    if res is None:
        return completed(torch.full_like(buf, float("nan")))
    codes, scale, recon = res
    _feedback(state, name, v, recon)
    state.stats.add(bytes_compressed=codes.numel(), elements_sent=codes.numel())
    fut = all_reduce_async(state.stats, codes, state.group, "all_reduce")
    block, n, dtype = state.codec.params.block, codes.numel(), buf.dtype

    def decode(f: Future) -> torch.Tensor:
        summed = f.value()[0]
        return (summed.float() * scale_per_element(scale, block, n)).to(dtype)

    return fut.then(decode)


def reduce_scatter_shared_int8(state: CommHookState, name: str, inp: torch.Tensor,
                               out: torch.Tensor) -> bool:
    """FSDP: `out` = this rank's shard of the average; False if a rank had NaN/Inf."""
    v = _prepare(state, name, inp)
    res = shared_quantize(state, name, v)
    if res is None:
        out.fill_(float("nan"))
        return False
    codes, scale, recon = res
    _feedback(state, name, v, recon)
    shard = torch.empty(out.numel(), dtype=torch.int8, device=out.device)
    run_sync(state.stats, "reduce_scatter",
             lambda: dist.reduce_scatter_tensor(shard, codes, group=state.group, async_op=True))
    state.stats.add(bytes_compressed=codes.numel(), elements_sent=codes.numel())
    full_scale = scale_per_element(scale, state.codec.params.block, codes.numel())
    lo = state.rank * out.numel()
    out.copy_((shard.float() * full_scale[lo:lo + out.numel()]).view_as(out))
    return True

