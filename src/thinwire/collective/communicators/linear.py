"""Linear codecs summed in their compressed form (fp16, bf16, sketch, randomk + linear value).

The payload buffers of all ranks are summed by one all_reduce (DDP) or reduce_scatter (FSDP,
one payload per destination chunk: equal chunks give equal buffers) and decoded once: sketch
tables add; randomk ranks share the seed and step, so they pick the same indices. A rank whose
gradient is not finite sends NaN buffers of the right size, so every rank sees NaN and nobody
waits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
import torch.distributed as dist
from torch.profiler import record_function

from ...codecs.payload import Payload
from ...errors import CodecError
from ..comm import Future, all_reduce_async, now, run_sync
from ..packing import buffers_of, index_bytes, sent_elements, with_buffers
from .base import Communicator, advance, chunk_payloads, encode

if TYPE_CHECKING:
    from ..state import CommHookState


class Linear(Communicator):
    path = "linear"

    def average(self, state: CommHookState, name: str, buf: torch.Tensor,
                grads: Sequence[torch.Tensor]) -> Future:
        x = buf / state.world
        payload = encode(state, name, x)
        ok = payload is not None
        if payload is None:  # keep step counters in line with the other ranks
            payload = advance(state, name, torch.zeros_like(x))
        flat, sizes = flatten(state, payload)
        if not ok:
            flat = torch.full_like(flat, float("nan"))
        state.stats.add(bytes_compressed=flat.numel() * flat.element_size(),
                        elements_sent=sent_elements(payload), index_bytes=index_bytes(payload))
        fut = all_reduce_async(state.stats, flat, state.group)

        def decode(f: Future) -> torch.Tensor:
            summed = f.value()[0]
            if not bool(torch.isfinite(summed).all()):
                return torch.full_like(buf, float("nan"))
            return decode_sum(state, payload, summed, sizes).to(buf.dtype)

        return fut.then(decode)

    def reduce_scatter(self, state: CommHookState, key: str, chunks: torch.Tensor,
                       out: torch.Tensor) -> None:
        payloads = chunk_payloads(state, key, chunks)
        ok = payloads is not None
        if payloads is None:  # keep step counters in line with the other ranks
            payloads = [advance(state, f"{key}.c{j}", torch.zeros_like(chunks[j]))
                        for j in range(state.world)]
        flats = [flatten(state, p)[0] for p in payloads]
        if len({(f.numel(), f.dtype) for f in flats}) != 1:
            raise CodecError(f"'{state.spec}' gives chunks payloads of different sizes/dtypes; "
                             "cannot reduce-scatter them")
        send = torch.cat(flats) if ok else torch.full_like(torch.cat(flats), float("nan"))
        recv = torch.empty_like(flats[0])
        state.stats.add(bytes_compressed=send.numel() * send.element_size(),
                        elements_sent=sum(sent_elements(p) for p in payloads),
                        index_bytes=sum(index_bytes(p) for p in payloads))
        run_sync(state.stats, "reduce_scatter", lambda: dist.reduce_scatter_tensor(
            recv, send, group=state.group, async_op=True))
        if not bool(torch.isfinite(recv).all()):
            out.fill_(float("nan"))
            return
        mine = payloads[state.rank]
        sizes = [b.numel() for b in buffers_of(mine)]
        out.copy_(decode_sum(state, mine, recv, sizes).reshape(out.shape))


def flatten(state: CommHookState, payload: Payload) -> tuple[torch.Tensor, list[int]]:
    """The payload's buffers as one flat tensor (one dtype: it is summed) and their sizes."""
    bufs = buffers_of(payload)
    if len({b.dtype for b in bufs}) > 1:
        raise CodecError(f"'{state.spec}' payload mixes buffer dtypes; not all-reducible")
    return torch.cat([b.reshape(-1) for b in bufs]), [b.numel() for b in bufs]


def decode_sum(state: CommHookState, payload: Payload, summed: torch.Tensor,
               sizes: list[int]) -> torch.Tensor:
    """Decode the summed buffers with this rank's Decoder, as a flat tensor."""
    t0 = now()
    with record_function("thinwire::decode"):
        out = state.decoders[state.rank].decode(with_buffers(payload, list(summed.split(sizes))))
    state.stats.add(decompress_s=now() - t0)
    return out.reshape(-1)
