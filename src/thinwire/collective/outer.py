"""Local steps + compressed pseudo-gradients (DiLoCo) on plain torch.distributed.

    sync = OuterSync(model, CommHookState("int8"), steps=25, lr=0.7, momentum=0.9)
    for step in range(n):
        ... inner optimizer step on this rank's batch (no gradient all-reduce) ...
        sync.after_step(step)            # every H steps: average, outer step, reset

Each rank trains alone for H inner steps (AdamW keeps its own state, as in DiLoCo), then the
ranks average the pseudo-gradient delta = theta_local - theta_start through the same
communicators the DDP hook uses (`communicators.communicator_for`: any codec, error feedback
per bucket, PowerSGD on the parameter matrices), and every rank applies the same outer step
(`strategy.OuterOptimizer`: Nesterov SGD, lr 0.7, momentum 0.9 in Douillard et al. 2023) to
its copy of theta_start. With an SGD inner optimizer, H = 1, outer lr 1 and no momentum this
is synchronous data-parallel SGD.

Bytes are the hook's counters, so a run sends (steps / H) x the payload size of one sync.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist

from ..exchange.tensorset import TensorSet
from ..strategy.outer import OuterOptimizer
from .communicators import DENSE
from .state import CommHookState


def buckets_of(params: Sequence[torch.Tensor], cap_bytes: int) -> list[list[int]]:
    """Consecutive parameter indices, at most `cap_bytes` of fp32 each (one if larger)."""
    out: list[list[int]] = [[]]
    size = 0
    for i, p in enumerate(params):
        nbytes = p.numel() * 4
        if out[-1] and size + nbytes > cap_bytes:
            out.append([])
            size = 0
        out[-1].append(i)
        size += nbytes
    return out


class OuterSync:
    """The anchor theta_start, the outer optimizer on it, and the bucketed average."""

    def __init__(self, model: torch.nn.Module, state: CommHookState, steps: int,
                 lr: float = 0.7, momentum: float = 0.9, nesterov: bool = True,
                 bucket_cap_mb: float = 25.0) -> None:
        if steps < 1:
            raise ValueError(f"outer steps must be >= 1, got {steps}")
        self.state, self.steps = state, steps
        self.params = [p for p in model.parameters() if p.requires_grad]  # tied ones once
        broadcast_from_rank0(self.params, state)
        self.anchor = [p.detach().clone() for p in self.params]
        self.outer = OuterOptimizer({str(i): a for i, a in enumerate(self.anchor)}, lr,
                                    momentum, nesterov)
        self.buckets = buckets_of(self.params, int(bucket_cap_mb * 2**20))
        self.syncs = 0
        self.skipped = 0  # outer steps dropped because the average was not finite

    def due(self, step: int, last: int) -> bool:
        """Sync after every H-th step, and after the last one (the model returned is global)."""
        return (step + 1) % self.steps == 0 or step == last

    @torch.no_grad()
    def sync(self) -> bool:
        """Average the pseudo-gradients, step the anchor, reset every rank to it. False if
        the average held NaN/Inf: the anchor stays and every rank goes back to it."""
        state, deltas, finite = self.state, {}, True
        for b, idx in enumerate(self.buckets):
            buf = torch.cat([(self.params[i] - self.anchor[i]).reshape(-1).float()
                             for i in idx])
            views = split_views(buf, [self.params[i] for i in idx])
            name = f"outer{b}"
            comm = state.comm if state.admit(name, buf) else DENSE
            avg = comm.average(state, name, buf, views).wait()
            finite = finite and bool(torch.isfinite(avg).all())
            for i, view in zip(idx, split_views(avg, [self.params[i] for i in idx])):
                deltas[str(i)] = view
        state.iter += 1
        self.syncs += 1
        if finite:
            self.outer.step(TensorSet(deltas))
        else:
            self.skipped += 1
        for p, a in zip(self.params, self.anchor):
            p.copy_(a)
        return finite

    def state_dict(self) -> dict:
        """The anchor and outer momentum (the hook state is checkpointed on its own)."""
        return {"anchor": [a.clone() for a in self.anchor], "outer": self.outer.state_dict(),
                "syncs": self.syncs, "skipped": self.skipped}


def split_views(flat: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Views of `flat` shaped like `like`, in order (PowerSGD reads the matrices from them)."""
    out, at = [], 0
    for p in like:
        out.append(flat[at:at + p.numel()].view(p.shape))
        at += p.numel()
    return out


def broadcast_from_rank0(params: Sequence[torch.Tensor], state: CommHookState) -> None:
    """Every rank starts from rank 0's weights (DDP does the same when it wraps a model)."""
    if state.world > 1:
        with torch.no_grad():
            for p in params:
                dist.broadcast(p.data, src=0, group=state.group)
