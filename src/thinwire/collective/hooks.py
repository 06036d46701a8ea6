"""DDP communication hooks for every codec of the library, from one factory.

    state = CommHookState("topk(ratio=0.01)+int8", error_feedback=True)
    ddp_model.register_comm_hook(state, comm_hook)        # or register_ddp_hook(model, ...)

Each bucket goes one of five ways (`state.path`, chosen from the codec):

- allreduce: `none`, warm-up iterations (< start_iter) and buckets the codec would not shrink
  by `min_compression_rate`: the fp32 average, as DDP's default.
- linear (fp16, bf16, sketch, randomk with a linear value codec): payload buffers are summed by
  one all_reduce and decoded once (sketch tables add; randomk ranks share the seed and step, so
  they pick the same indices).
- int8_shared: int8 codes with a scale agreed by all_reduce(MAX), summed as int8.
- powersgd: the two-round P/Q all-reduce (lowrank.py).
- gather (everything else: topk, thresholdv, dgc, qsgd, nc, terngrad, signsgd, onebit, laq,
  bbit, bin, int8 per-rank, sparse+quantized hybrids): payloads are packed into one uint8 tensor
  each; one all_gather of the lengths, then one all_gather of the packed payloads padded to the
  longest (gloo needs equal sizes); every rank decodes every rank's payload with that rank's
  Decoder (so differential codecs work) and averages.

The input is divided by world_size before encoding (fp16 cannot overflow, decoded sums are
averages). Non-finite gradients are never encoded: the rank says so through the collective it
was going to issue (an empty payload, NaN buffers, a MAX flag), every rank returns a NaN bucket,
and the trainer skips the step on all ranks alike; no rank is left waiting in a collective.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.profiler import record_function

from ..codecs import Decoder, ErrorFeedback
from ..codecs.base import Codec
from ..errors import CodecError
from .comm import Future, all_reduce_async, completed, gather_lengths, now, run_async
from .int8_allreduce import allreduce_shared_int8
from .lowrank import powersgd_bucket
from .packing import buffers_of, index_bytes, pack, sent_elements, unpack, with_buffers
from .state import CommHookState


def comm_hook(state: CommHookState, bucket: dist.GradBucket) -> Future:
    """The DDP hook: average `bucket` across ranks through the state's codec."""
    buf = bucket.buffer()
    name = f"b{bucket.index()}"
    state.track(name, buf.numel())
    state.stats.add(bytes_raw=buf.numel() * buf.element_size())
    compress = state.compressing and state.worth_compressing(name, buf)
    if compress:  # density is measured over compressed buckets
        state.stats.add(elements=buf.numel())
    exact = exact_average(state, buf) if compress and state.diagnose else None
    if not compress:
        fut = allreduce_average(state, buf)
    elif state.path == "powersgd":
        fut = powersgd_bucket(state, name, buf, bucket.gradients())
    elif state.path == "int8_shared":
        fut = allreduce_shared_int8(state, name, buf)
    elif state.path == "linear":
        fut = linear_average(state, name, buf)
    else:
        fut = gather_average(state, name, buf)
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


def allreduce_average(state: CommHookState, buf: torch.Tensor) -> Future:
    buf.div_(state.world)
    state.stats.add(bytes_compressed=buf.numel() * buf.element_size())
    fut = all_reduce_async(state.stats, buf, state.group)
    return fut.then(lambda f: f.value()[0])


def _encode(state: CommHookState, name: str, x: torch.Tensor):
    """The payload, or None if x holds NaN/Inf (peers are told through the collective)."""
    t0 = now()
    try:
        with record_function("thinwire::encode"):
            payload = state.encoder.encode(x, name)
    except CodecError:
        if bool(torch.isfinite(x).all()):
            raise
        payload = None
    state.stats.add(compress_s=now() - t0)
    return payload


def _advance(state: CommHookState, name: str, zeros: torch.Tensor):
    """Encode zeros without touching the residual, so step counters (randomk's shared seed)
    advance on this rank exactly as on the ranks whose encode succeeded."""
    codec, slot = state.encoder.codec, state.slot(name)
    if isinstance(codec, ErrorFeedback):
        return codec.inner.encode(zeros, slot.setdefault("inner", {}), name)
    return codec.encode(zeros, slot, name)


def linear_average(state: CommHookState, name: str, buf: torch.Tensor) -> Future:
    x = buf / state.world
    payload = _encode(state, name, x)
    if payload is None:  # peers must still see a same-sized buffer: NaN of the right size
        payload = _advance(state, name, torch.zeros_like(x))
        bufs = [torch.full_like(b, float("nan")) for b in buffers_of(payload)]
    else:
        bufs = buffers_of(payload)
    if len({b.dtype for b in bufs}) > 1:
        raise CodecError(f"'{state.spec}' payload mixes buffer dtypes; not all-reducible")
    sizes = [b.numel() for b in bufs]
    flat = torch.cat([b.reshape(-1) for b in bufs])
    state.stats.add(bytes_compressed=flat.numel() * flat.element_size(),
                    elements_sent=sent_elements(payload), index_bytes=index_bytes(payload))
    fut = all_reduce_async(state.stats, flat, state.group)
    decoder = state.decoders[state.rank]

    def decode(f: Future) -> torch.Tensor:
        t0 = now()
        summed = f.value()[0]
        if not bool(torch.isfinite(summed).all()):
            return torch.full_like(buf, float("nan"))
        summed_payload = with_buffers(payload, list(summed.split(sizes)))
        with record_function("thinwire::decode"):
            out = decoder.decode(summed_payload).reshape(-1).to(buf.dtype)
        state.stats.add(decompress_s=now() - t0)
        return out

    return fut.then(decode)


def gather_average(state: CommHookState, name: str, buf: torch.Tensor) -> Future:
    x = buf / state.world
    payload = _encode(state, name, x)
    packed = pack(payload, buf.device) if payload is not None else \
        torch.zeros(0, dtype=torch.uint8, device=buf.device)
    lens = gather_lengths(state.stats, packed.numel(), buf.device, state.group, state.world)
    state.stats.add(bytes_compressed=packed.numel() + 8, pad_bytes=max(lens) - packed.numel())
    if payload is not None:
        state.stats.add(elements_sent=sent_elements(payload), index_bytes=index_bytes(payload))
    if max(lens) == 0:  # every rank had NaN/Inf: everyone returns NaN, nobody waits
        return completed(torch.full_like(buf, float("nan")))
    padded = F.pad(packed, (0, max(lens) - packed.numel()))
    outs = [torch.empty_like(padded) for _ in range(state.world)]
    fut = run_async(state.stats, "all_gather",
                    lambda: dist.all_gather(outs, padded, group=state.group, async_op=True))

    def decode(f: Future) -> torch.Tensor:
        t0 = now()
        acc = torch.zeros(buf.numel(), dtype=torch.float32, device=buf.device)
        with record_function("thinwire::decode"):
            for decoder, out, n in zip(state.decoders, outs, lens):
                if n:  # decode even when the step is lost: stateful decoders stay in step
                    acc += decoder.decode(unpack(out[:n], name)).reshape(-1).float()
        state.stats.add(decompress_s=now() - t0)
        if min(lens) == 0:  # a rank had NaN/Inf (an empty payload): the step is skipped
            return torch.full_like(buf, float("nan"))
        return acc.to(buf.dtype)

    return fut.then(decode)


__all__ = ["CommHookState", "Decoder", "comm_hook", "register_ddp_hook"]
