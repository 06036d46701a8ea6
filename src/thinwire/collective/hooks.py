"""DDP communication hooks for every codec of the library, from one factory.

    state = CommHookState("topk(ratio=0.01)+int8", error_feedback=True)
    ddp_model.register_comm_hook(state, comm_hook)        # or register_ddp_hook(model, ...)

Each bucket goes through the communicator the state picked for its codec
(`communicators.communicator_for`: allreduce, linear, int8_shared, powersgd or gather; the FSDP
reduce-scatter uses the same ones). Warm-up iterations (< start_iter) and buckets the codec
would not shrink by `min_compression_rate` take the plain fp32 average, as DDP's default.

The input is divided by world_size before encoding (fp16 cannot overflow, decoded sums are
averages). Non-finite gradients are never encoded: the rank says so through the collective it
was going to issue (an empty payload, NaN buffers, a MAX flag), every rank returns a NaN bucket,
and the trainer skips the step on all ranks alike; no rank is left waiting in a collective.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from ..codecs import Decoder
from ..codecs.base import Codec
from .comm import Future
from .communicators import DENSE
from .state import CommHookState


def comm_hook(state: CommHookState, bucket: dist.GradBucket) -> Future:
    """The DDP hook: average `bucket` across ranks through the state's codec."""
    buf = bucket.buffer()
    name = f"b{bucket.index()}"
    compress = state.admit(name, buf)
    exact = exact_average(state, buf) if compress and state.diagnose else None
    comm = state.comm if compress else DENSE
    fut = comm.average(state, name, buf, bucket.gradients())
    if bucket.is_last():
        state.iter += 1
    if exact is not None:
        def compare(f: Future) -> torch.Tensor:
            out = f.value()
            state.stats.compare(exact, out)
            return out
        fut = fut.then(compare)
    return fut


# DDP checks these annotations literally (this module uses postponed annotations).
comm_hook.__annotations__.update(bucket=dist.GradBucket, state=CommHookState,
                                 **{"return": torch.futures.Future[torch.Tensor]})


def register_ddp_hook(model: Any, spec: str | Codec = "none", config: dict | None = None,
                      **options: Any) -> CommHookState:
    """Build the state for `spec` and register `comm_hook` on a DDP model."""
    state = CommHookState(spec, config, **options)
    model.register_comm_hook(state, comm_hook)
    return state


def exact_average(state: CommHookState, buf: torch.Tensor) -> torch.Tensor:
    """Diagnostics only: the uncompressed average (not counted in the comm metrics)."""
    exact = buf.detach().float() / state.world
    dist.all_reduce(exact, group=state.group)
    return exact


__all__ = ["CommHookState", "Decoder", "comm_hook", "register_ddp_hook"]
