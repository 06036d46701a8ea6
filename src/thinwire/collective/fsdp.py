"""Compressed gradient reduce-scatter for FSDP1 (`register_comm_hook`) and FSDP2
(`set_custom_reduce_scatter`).

FSDP hands the hook one flat tensor: the unsharded gradient of a unit (FSDP1: a FlatParameter,
padded) or the concatenated padded shards of a param group (FSDP2), of size world * S; rank r
must end up with elements [r*S, (r+1)*S) of the average. FSDP1 expects the hook to average;
FSDP2 calls it with op=AVG (fp32/bf16 reduce dtype) or SUM (it divides itself, e.g. fp16).

Which codecs work, and how:
- none / warm-up: a plain reduce_scatter of the average.
- linear codecs (fp16, bf16, sketch, randomk with a linear value codec): each destination chunk
  is encoded on its own; chunks have equal sizes, so their payload buffers have equal sizes too
  and one reduce_scatter in the wire dtype sums them; each rank decodes only its own chunk.
- int8 (shared scale): int8 codes reduce-scattered as int8 after an all_reduce(MAX) of the scale.
- every other codec (topk, thresholdv, dgc, int8 per-rank, qsgd, nc, terngrad, signsgd, onebit,
  laq, bbit, bin, sparse+quantized): per-destination-chunk payloads travel by all_to_all (one
  round for lengths, one with split sizes: no padding); rank r decodes the payloads about its
  chunk from every source with that source's Decoder and averages. Error feedback, warm starts
  and differential references live in per-(unit, chunk) slots.
- powersgd is refused: its factors need the parameter matrices, and FSDP gives the hook a flat
  concatenation of padded parameter shards, with no matrix structure left to factorize.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.distributed as dist

from ..codecs.base import Codec
from ..errors import CodecError, ConfigError
from .comm import now, run_sync
from .hooks import _advance, _encode
from .int8_allreduce import reduce_scatter_shared_int8
from .packing import buffers_of, index_bytes, pack, sent_elements, unpack, with_buffers
from .state import CommHookState

try:  # FSDP2's comm interface (torch >= 2.6)
    from torch.distributed.fsdp._fully_shard._fsdp_api import ReduceScatter
except ImportError:  # pragma: no cover
    ReduceScatter = object  # type: ignore[misc,assignment]


def check_fsdp(state: CommHookState) -> CommHookState:
    if state.path == "powersgd":
        raise ConfigError("powersgd cannot run under FSDP: it factorizes parameter matrices, "
                          "and FSDP's reduce-scatter input is a flat concatenation of padded "
                          "shards. Use DDP for powersgd, or a sparse/quantizing codec with FSDP")
    state.stats.sharded = True
    return state


def reduce_scatter(state: CommHookState, key: str, inp: torch.Tensor, out: torch.Tensor,
                   average: bool = True) -> None:
    """out = this rank's chunk of the average (or sum) of `inp` over ranks, via the codec."""
    world = state.world
    if inp.numel() != world * out.numel():
        raise ConfigError(f"reduce-scatter input of {inp.numel()} elements is not "
                          f"{world} x {out.numel()}")
    state.fsdp_calls += 1
    state.track(key, inp.numel())
    state.stats.add(bytes_raw=inp.numel() * inp.element_size())
    chunks = inp.reshape(world, -1)
    compress = state.compressing and state.worth_compressing(key, chunks[0])
    if compress:  # density is measured over compressed units
        state.stats.add(elements=inp.numel())
    exact = _exact(state, inp, out) if compress and state.diagnose else None
    if not compress:
        _plain(state, inp, out)
    elif state.path == "int8_shared":
        reduce_scatter_shared_int8(state, key, inp, out)
    elif state.path == "linear":
        _linear(state, key, chunks, out)
    else:
        _all_to_all(state, key, chunks, out)
    if exact is not None:
        state.stats.compare(exact, out)
    if not average:
        out.mul_(world)


def _exact(state: CommHookState, inp: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    exact = torch.empty(out.numel(), dtype=torch.float32, device=out.device)
    dist.reduce_scatter_tensor(exact, inp.detach().float().reshape(-1) / state.world,
                               group=state.group)
    return exact.view_as(out)


def _plain(state: CommHookState, inp: torch.Tensor, out: torch.Tensor) -> None:
    src = inp.reshape(-1) / state.world
    state.stats.add(bytes_compressed=src.numel() * src.element_size())
    flat = out.view(-1)
    run_sync(state.stats, "reduce_scatter", lambda: dist.reduce_scatter_tensor(
        flat, src, group=state.group, async_op=True))


def _chunk_payloads(state: CommHookState, key: str, chunks: torch.Tensor) -> list | None:
    """One payload per destination chunk (slot per chunk), or None if any chunk is bad."""
    payloads = []
    for j in range(state.world):
        payload = _encode(state, f"{key}.c{j}", chunks[j] / state.world)
        if payload is None:
            return None
        payloads.append(payload)
    return payloads


def _linear(state: CommHookState, key: str, chunks: torch.Tensor, out: torch.Tensor) -> None:
    payloads = _chunk_payloads(state, key, chunks)
    ok = payloads is not None
    if not ok:  # keep step counters in line with the other ranks; send NaN of the right size
        payloads = [_advance(state, f"{key}.c{j}", torch.zeros_like(chunks[j]))
                    for j in range(state.world)]
    flats = [torch.cat([b.reshape(-1) for b in buffers_of(p)]) for p in payloads]
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
    t0 = now()
    mine = payloads[state.rank]
    sizes = [b.numel() for b in buffers_of(mine)]
    summed = with_buffers(mine, list(recv.split(sizes)))
    out.copy_(state.decoders[state.rank].decode(summed).reshape(out.shape))
    state.stats.add(decompress_s=now() - t0)


def _all_to_all(state: CommHookState, key: str, chunks: torch.Tensor,
                out: torch.Tensor) -> None:
    world, device = state.world, out.device
    payloads = _chunk_payloads(state, key, chunks)
    packed = [pack(p, device) for p in payloads] if payloads is not None else \
        [torch.zeros(0, dtype=torch.uint8, device=device) for _ in range(world)]
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
    t0 = now()
    acc = torch.zeros(out.numel(), dtype=torch.float32, device=device)
    name = f"{key}.c{state.rank}"
    for decoder, piece, n in zip(state.decoders, recv.split(lens), lens):
        if n:
            acc += decoder.decode(unpack(piece, name)).reshape(-1).float()
    state.stats.add(decompress_s=now() - t0)
    out.copy_(acc.view(out.shape) if min(lens) else torch.full_like(acc, float("nan")).view(
        out.shape))


# ---- FSDP1 --------------------------------------------------------------------------------
def fsdp1_hook(state: CommHookState, grad: torch.Tensor, output: torch.Tensor | None = None
               ) -> None:
    """FSDP1 comm hook for sharded strategies: units are keyed by their order in backward."""
    if output is None:
        raise ConfigError("the thinwire FSDP1 hook serves sharded strategies (FULL_SHARD, "
                          "SHARD_GRAD_OP); use DDP hooks for NO_SHARD")
    reduce_scatter(state, f"u{state.fsdp_calls}", grad, output, average=True)


def register_fsdp1_hook(model: Any, spec: str | Codec = "none", config: dict | None = None,
                        **options: Any) -> CommHookState:
    state = check_fsdp(CommHookState(spec, config, **options))
    model.register_comm_hook(state, fsdp1_hook)
    model.register_forward_pre_hook(lambda module, args: state.fsdp_begin())
    return state


# ---- FSDP2 --------------------------------------------------------------------------------
class CompressedReduceScatter(ReduceScatter):  # type: ignore[misc,valid-type]
    """FSDP2 reduce-scatter through a codec; one instance per FSDP module (its state key)."""

    def __init__(self, state: CommHookState, key: str) -> None:
        self.state, self.key = state, key

    def allocate(self, size: Sequence[int], *, dtype: torch.dtype,
                 device: torch.device) -> torch.Tensor:
        return torch.empty(*size, dtype=dtype, device=device)

    def __call__(self, output_tensor: torch.Tensor, input_tensor: torch.Tensor, group: Any,
                 op: Any, async_op: bool = False) -> None:
        if dist.get_world_size(group) != self.state.world:
            raise ConfigError("FSDP's reduce-scatter group differs from the hook state's group")
        if _is(op, dist.ReduceOp.AVG):
            average = True
        elif _is(op, dist.ReduceOp.SUM):
            average = False
        else:
            raise ConfigError(f"compressed reduce-scatter supports op=AVG or SUM, got {op}; "
                              "leave FSDP's gradient_divide_factor unset")
        reduce_scatter(self.state, self.key, input_tensor, output_tensor, average)
        return None


def _is(op: Any, ref: Any) -> bool:
    try:
        return bool(op == ref)
    except (TypeError, RuntimeError):
        return False


def register_fsdp2(model: Any, spec: str | Codec = "none", config: dict | None = None,
                   **options: Any) -> CommHookState:
    """Install the compressed reduce-scatter on every FSDP2 module of `model`."""
    state = check_fsdp(CommHookState(spec, config, **options))
    count = 0
    for qualname, module in model.named_modules():
        if hasattr(module, "set_custom_reduce_scatter"):
            module.set_custom_reduce_scatter(CompressedReduceScatter(state, f"m{count}"))
            count += 1
    if not count:
        raise ConfigError("no FSDP2 module found: call fully_shard() before register_fsdp2()")
    model.register_forward_pre_hook(lambda module, args: state.fsdp_begin())
    return state
