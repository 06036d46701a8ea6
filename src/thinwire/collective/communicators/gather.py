"""Every other codec: packed payloads travel whole, each rank decodes each peer's payload.

topk, thresholdv, dgc, qsgd, nc, terngrad, signsgd, onebit, laq, bbit, bin, int8 per-rank and
sparse+quantized hybrids cannot be summed in their compressed form. Payloads are packed into
one uint8 tensor each; every rank decodes every source's payload with that source's `Decoder`
(so differential codecs stay in step) and sums the decoded averages.

- DDP: one all_gather of the lengths, then one all_gather of the payloads padded to the
  longest (gloo needs equal sizes).
- FSDP: one payload per destination chunk, moved by all_to_all (one round for the lengths, one
  with split sizes: no padding); rank r decodes only the payloads about its chunk.

An empty payload means "my gradient was not finite": every rank returns NaN for that step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.profiler import record_function

from ..comm import Future, completed, gather_lengths, now, run_async, run_sync
from ..packing import index_bytes, pack, sent_elements, unpack
from .base import Communicator, chunk_payloads, encode

if TYPE_CHECKING:
    from ..state import CommHookState


class Gather(Communicator):
    path = "gather"
    per_rank_seeds = True  # payloads are decoded one by one: rounding noise must differ

    def average(self, state: CommHookState, name: str, buf: torch.Tensor,
                grads: Sequence[torch.Tensor]) -> Future:
        payload = encode(state, name, buf / state.world)
        packed = pack(payload, buf.device) if payload is not None else _empty(buf.device)
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
            return decode_all(state, outs, lens, name, buf).to(buf.dtype)

        return fut.then(decode)

    def reduce_scatter(self, state: CommHookState, key: str, chunks: torch.Tensor,
                       out: torch.Tensor) -> None:
        world, device = state.world, out.device
        payloads = chunk_payloads(state, key, chunks)
        packed = [pack(p, device) for p in payloads] if payloads is not None else \
            [_empty(device) for _ in range(world)]
        send_lens = torch.tensor([p.numel() for p in packed], dtype=torch.int64, device=device)
        recv_lens = torch.empty_like(send_lens)
        run_sync(state.stats, "all_to_all", lambda: dist.all_to_all_single(
            recv_lens, send_lens, group=state.group, async_op=True), extra=True)
        lens = [int(v) for v in recv_lens.tolist()]
        state.stats.add(bytes_compressed=int(send_lens.sum()) + 8 * world)
        if payloads is not None:
            state.stats.add(elements_sent=sum(sent_elements(p) for p in payloads),
                            index_bytes=sum(index_bytes(p) for p in payloads))
        recv = torch.empty(sum(lens), dtype=torch.uint8, device=device)
        run_sync(state.stats, "all_to_all", lambda: dist.all_to_all_single(
            recv, torch.cat(packed), output_split_sizes=lens,
            input_split_sizes=send_lens.tolist(), group=state.group, async_op=True))
        acc = decode_all(state, list(recv.split(lens)), lens, f"{key}.c{state.rank}", out)
        out.copy_(acc.view(out.shape))


def decode_all(state: CommHookState, packed: list[torch.Tensor], lens: list[int], name: str,
               like: torch.Tensor) -> torch.Tensor:
    """Sum of every source's decoded payload (fp32, flat); NaN if a source sent nothing."""
    t0 = now()
    acc = torch.zeros(like.numel(), dtype=torch.float32, device=like.device)
    with record_function("thinwire::decode"):
        for decoder, piece, n in zip(state.decoders, packed, lens):
            if n:  # decode even when the step is lost: stateful decoders stay in step
                acc += decoder.decode(unpack(piece[:n], name)).reshape(-1).float()
    state.stats.add(decompress_s=now() - t0)
    if min(lens) == 0:  # a rank had NaN/Inf (an empty payload): the step is skipped
        return torch.full_like(acc, float("nan"))
    return acc


def _empty(device: torch.device) -> torch.Tensor:
    return torch.zeros(0, dtype=torch.uint8, device=device)
