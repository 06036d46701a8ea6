"""PowerSGD in its two-round collective form (Vogels et al. 2019) for a DDP bucket.

Per matrix M (a bucket gradient of ndim >= 2, viewed as (shape[0], rest), plus its error-feedback
residual) with the shared warm-start Q:

    round 1: all_reduce(P = M Q)          (the bucket's 1-D and small tensors ride along raw)
             P = orthonormalize(P)        (identical on every rank: same input, same QR)
    round 2: all_reduce(Q = M^T P)
    output:  P Q^T / world_size = P P^T mean(M),   next warm start: the summed Q

This is linear where the one-round `powersgd` codec is not: the factors of the sum are computed
from summed factors. A matrix is factorized only if r(m+c) * min_compression_rate <= m*c.
Error feedback keeps the local projection error M - P (M^T P)^T, whose mean over ranks is the
error of the averaged gradient. (torch's own powerSGD_hook implements the same algorithm; this
one shares the codec's params and seeds, the hook state and the metrics of the other paths.)
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..codecs.powersgd import matrix_shape
from .comm import Future, all_reduce_async, completed, now, run_sync
from .state import CommHookState


def _plan(state: CommHookState, grads: list[torch.Tensor]) -> tuple[list, list]:
    """(low-rank (index, m, c, r), raw indices) for the bucket's tensors."""
    rank, rate = state.codec.params.rank, state.min_compression_rate
    low, raw = [], []
    for i, g in enumerate(grads):
        m, c = matrix_shape(tuple(g.shape))
        r = min(rank, m, c)
        if g.dim() >= 2 and m * c > 0 and m * c >= rate * r * (m + c):
            low.append((i, m, c, r))
        else:
            raw.append(i)
    return low, raw


def _warm_start(state: CommHookState, slot: dict, i: int, c: int, r: int,
                device: torch.device) -> torch.Tensor:
    q = slot.get(f"q{i}")
    if q is None or tuple(q.shape) != (c, r):
        gen = torch.Generator().manual_seed(state.codec.params.seed * 1_000_003 + i)
        q = torch.linalg.qr(torch.randn(c, r, generator=gen)).Q
    return q.to(device)


def powersgd_bucket(state: CommHookState, name: str, buf: torch.Tensor,
                    grads: list[torch.Tensor]) -> Future:
    """Average the bucket through rank-r factors; `grads` are views into `buf`."""
    slot = state.slot(name)
    t0 = now()
    if state.error_feedback and "residual" in slot:
        buf.add_(slot["residual"].to(buf.dtype))
    low, raw = _plan(state, grads)
    mats = [grads[i].reshape(m, c).float() for i, m, c, _ in low]
    qs = [_warm_start(state, slot, i, c, r, buf.device) for (i, _, c, r) in low]
    ps = [mat @ q for mat, q in zip(mats, qs)]
    bad = (~torch.isfinite(buf)).any().float().reshape(1)
    round1 = torch.cat([*(p.reshape(-1) for p in ps), *(grads[i].reshape(-1).float() for i in raw),
                        bad])
    state.stats.add(compress_s=now() - t0)
    run_sync(state.stats, "all_reduce", lambda: dist.all_reduce(round1, group=state.group,
                                                               async_op=True))
    if float(round1[-1]) > 0:
        return completed(torch.full_like(buf, float("nan")))
    t0 = now()
    offsets, pos = [], 0
    for mat, q in zip(mats, qs):
        offsets.append(pos)
        pos += mat.shape[0] * q.shape[1]
    ps = [torch.linalg.qr(round1[o:o + p.numel()].view_as(p)).Q for o, p in zip(offsets, ps)]
    raw_sum = round1[pos:-1]
    q_local = [mat.t() @ p for mat, p in zip(mats, ps)]
    if state.error_feedback:
        res = buf.detach().float().clone()
        for (i, m, c, _), mat, p, q in zip(low, mats, ps, q_local):
            _view_in(res, buf, grads[i]).copy_((mat - p @ q.t()).reshape(-1))
        for i in raw:
            _view_in(res, buf, grads[i]).zero_()
        slot["residual"] = res
    round2 = torch.cat([q.reshape(-1) for q in q_local]) if q_local else buf.new_zeros(0).float()
    state.stats.add(compress_s=now() - t0,
                    bytes_compressed=4 * (round1.numel() + round2.numel()),
                    elements_sent=round1.numel() + round2.numel())
    fut = all_reduce_async(state.stats, round2, state.group, "all_reduce", extra=True)
    world = state.world

    def decode(f: Future) -> torch.Tensor:
        t1 = now()
        q_sum = f.value()[0]
        pos2 = 0
        for (i, m, c, r), p in zip(low, ps):
            q = q_sum[pos2:pos2 + c * r].view(c, r)
            pos2 += c * r
            slot[f"q{i}"] = q.clone()
            grads[i].copy_((p @ q.t()).div_(world).reshape(grads[i].shape))
        rpos = 0
        for i in raw:
            n = grads[i].numel()
            grads[i].copy_(raw_sum[rpos:rpos + n].div(world).view_as(grads[i]))
            rpos += n
        state.stats.add(decompress_s=now() - t1)
        return buf

    return fut.then(decode)


def _view_in(res: torch.Tensor, buf: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The slice of `res` (a copy of `buf`) where gradient view `g` lives."""
    off = (g.data_ptr() - buf.data_ptr()) // buf.element_size()
    return res[off:off + g.numel()]
