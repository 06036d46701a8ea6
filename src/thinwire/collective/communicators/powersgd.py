"""PowerSGD in its two-round collective form (Vogels et al. 2019) for a DDP bucket.

Per matrix M (a bucket gradient of ndim >= 2, viewed as (shape[0], rest), plus its error-feedback
residual) with the shared warm-start Q:

    round 1: all_reduce(P = M Q)          (the bucket's 1-D and small tensors ride along raw)
             P = orthonormalize(P)        (identical on every rank: same input, same QR)
    round 2: all_reduce(Q = M^T P)
    output:  P Q^T / world_size = P P^T mean(M),   next warm start: the summed Q

This is linear where the one-round `powersgd` codec is not: the factors of the sum are computed
from summed factors. A matrix is factorized only if r(m+c) * min_compression_rate <= m*c.
Error feedback (the library's `ErrorFeedback`) keeps the local projection error
M - P (M^T P)^T, whose mean over ranks is the error of the averaged gradient; raw tensors are
sent exactly and keep no residual. (torch's own powerSGD_hook implements the same algorithm;
this one shares the codec's params and seeds, the hook state and the metrics of the others.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
import torch.distributed as dist

from ...codecs.powersgd import matrix_shape
from ...errors import ConfigError
from ..comm import Future, all_reduce_async, completed, now, run_sync
from .base import Communicator
from .seeds import keep_warm_start, warm_start

if TYPE_CHECKING:
    from ..state import CommHookState

Plan = tuple[list[tuple[int, int, int, int]], list[int]]


class PowerSGD(Communicator):
    path = "powersgd"
    per_tensor_rate = True
    fsdp_refusal = ("powersgd cannot run under FSDP: it factorizes parameter matrices, and "
                    "FSDP's reduce-scatter input is a flat concatenation of padded shards. Use "
                    "DDP for powersgd, or a sparse/quantizing codec with FSDP")

    def reduce_scatter(self, state: CommHookState, key: str, chunks: torch.Tensor,
                       out: torch.Tensor) -> None:
        raise ConfigError(self.fsdp_refusal)

    def average(self, state: CommHookState, name: str, buf: torch.Tensor,
                grads: Sequence[torch.Tensor]) -> Future:
        """Average the bucket through rank-r factors; `grads` are views into `buf`."""
        slot, feedback = state.slot(name), state.feedback
        t0 = now()
        if feedback is not None:
            buf.copy_(feedback.compensate(buf, slot))
        low, raw = plan(state, grads)
        mats = [grads[i].reshape(m, c).float() for i, m, c, _ in low]
        seed = state.codec.params.seed
        qs = [warm_start(slot, i, seed, c, r, buf.device) for (i, _, c, r) in low]
        ps = [mat @ q for mat, q in zip(mats, qs)]
        bad = (~torch.isfinite(buf)).any().float().reshape(1)
        round1 = torch.cat([*(p.reshape(-1) for p in ps),
                            *(grads[i].reshape(-1).float() for i in raw), bad])
        state.stats.add(compress_s=now() - t0)
        run_sync(state.stats, "all_reduce", lambda: dist.all_reduce(round1, group=state.group,
                                                                   async_op=True))
        if float(round1[-1]) > 0:
            return completed(torch.full_like(buf, float("nan")))
        t0 = now()
        ps, raw_sum = _split_round1(round1, ps)
        q_local = [mat.t() @ p for mat, p in zip(mats, ps)]
        if feedback is not None:
            recon = buf.detach().float().clone()  # raw tensors arrive exactly
            for (i, *_), p, q in zip(low, ps, q_local):
                _view_in(recon, buf, grads[i]).copy_((p @ q.t()).reshape(-1))
            feedback.absorb(slot, buf, recon)
        round2 = torch.cat([q.reshape(-1) for q in q_local]) if q_local else \
            buf.new_zeros(0).float()
        state.stats.add(compress_s=now() - t0,
                        bytes_compressed=4 * (round1.numel() + round2.numel()),
                        elements_sent=round1.numel() + round2.numel())
        fut = all_reduce_async(state.stats, round2, state.group, "all_reduce", extra=True)

        def decode(f: Future) -> torch.Tensor:
            t1 = now()
            _write_back(state, slot, (low, raw), ps, f.value()[0], raw_sum, grads)
            state.stats.add(decompress_s=now() - t1)
            return buf

        return fut.then(decode)


def plan(state: CommHookState, grads: Sequence[torch.Tensor]) -> Plan:
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


def _split_round1(round1: torch.Tensor, ps: list[torch.Tensor]
                  ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Orthonormalized summed P factors, and the summed raw tensors."""
    out, pos = [], 0
    for p in ps:
        out.append(torch.linalg.qr(round1[pos:pos + p.numel()].view_as(p)).Q)
        pos += p.numel()
    return out, round1[pos:-1]


def _write_back(state: CommHookState, slot: dict, bucket_plan: Plan, ps: list[torch.Tensor],
                q_sum: torch.Tensor, raw_sum: torch.Tensor,
                grads: Sequence[torch.Tensor]) -> None:
    """grads <- P Q^T / world (matrices) and raw sums / world; keep the summed Q warm."""
    low, raw = bucket_plan
    pos = 0
    for (i, m, c, r), p in zip(low, ps):
        q = q_sum[pos:pos + c * r].view(c, r)
        pos += c * r
        keep_warm_start(slot, i, q)
        grads[i].copy_((p @ q.t()).div_(state.world).reshape(grads[i].shape))
    pos = 0
    for i in raw:
        n = grads[i].numel()
        grads[i].copy_(raw_sum[pos:pos + n].div(state.world).view_as(grads[i]))
        pos += n


def _view_in(res: torch.Tensor, buf: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The slice of `res` (a copy of `buf`) where gradient view `g` lives."""
    off = (g.data_ptr() - buf.data_ptr()) // buf.element_size()
    return res[off:off + g.numel()]
