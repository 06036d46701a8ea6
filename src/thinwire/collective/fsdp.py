"""Compressed gradient reduce-scatter for FSDP1 (`register_comm_hook`) and FSDP2
(`set_custom_reduce_scatter`).

FSDP hands the hook one flat tensor: the unsharded gradient of a unit (FSDP1: a FlatParameter,
padded) or the concatenated padded shards of a param group (FSDP2), of size world * S; rank r
must end up with elements [r*S, (r+1)*S) of the average. FSDP1 expects the hook to average;
FSDP2 calls it with op=AVG (fp32/bf16 reduce dtype) or SUM (it divides itself, e.g. fp16).

Every codec goes through the same communicator as under DDP (`communicators/`), by its
`reduce_scatter` method:
- none / warm-up (AllReduce): a plain reduce_scatter of the average.
- Linear (fp16, bf16, sketch, randomk with a linear value codec): each destination chunk is
  encoded on its own; equal chunks give equal payload buffers, and one reduce_scatter in the
  wire dtype sums them; each rank decodes only its own chunk.
- SharedInt8: int8 codes reduce-scattered as int8 after an all_reduce(MAX) of the scale.
- Gather (topk, thresholdv, dgc, int8 per-rank, qsgd, nc, terngrad, signsgd, onebit, laq, bbit,
  bin, sparse+quantized): per-destination-chunk payloads travel by all_to_all; rank r decodes
  the payloads about its chunk from every source with that source's Decoder. Error feedback,
  warm starts and differential references live in per-(unit, chunk) slots.
- PowerSGD is refused: its factors need the parameter matrices, and FSDP gives the hook a flat
  concatenation of padded parameter shards, with no matrix structure left to factorize.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.distributed as dist

from ..codecs.base import Codec
from ..errors import ConfigError
from .communicators import DENSE
from .state import CommHookState

try:  # FSDP2's comm interface (torch >= 2.6)
    from torch.distributed.fsdp._fully_shard._fsdp_api import ReduceScatter
except ImportError:  # pragma: no cover
    ReduceScatter = object  # type: ignore[misc,assignment]


def check_fsdp(state: CommHookState) -> CommHookState:
    if state.comm.fsdp_refusal:
        raise ConfigError(state.comm.fsdp_refusal)
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
    chunks = inp.reshape(world, -1)
    compress = state.admit(key, inp, chunks[0])
    exact = _exact(state, inp, out) if compress and state.diagnose else None
    comm = state.comm if compress else DENSE
    comm.reduce_scatter(state, key, chunks, out)
    if exact is not None:
        state.stats.compare(exact, out)
    if not average:
        out.mul_(world)


def _exact(state: CommHookState, inp: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    exact = torch.empty(out.numel(), dtype=torch.float32, device=out.device)
    dist.reduce_scatter_tensor(exact, inp.detach().float().reshape(-1) / state.world,
                               group=state.group)
    return exact.view_as(out)


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
