"""The state a compression hook carries between calls (like torch's PowerSGDState).

One `CommHookState` per process group and model: the codec, one Encoder whose slots are keyed by
bucket (DDP) or FSDP unit/chunk (error-feedback residuals, warm starts, step counters), one
Decoder per source rank (stateful decoders such as laq/bbit/bin), the iteration counter behind
`start_iter` (uncompressed warm-up steps), the per-bucket `min_compression_rate` decisions and
the counters of `comm.CommStats`. `state_dict()` / `load_state_dict()` checkpoint all of it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist

from ..codecs import Decoder, Encoder, build, make_codec
from ..codecs.base import Codec
from ..errors import CodecError, ConfigError
from .comm import CommStats
from .packing import buffers_of

PATHS = ("allreduce", "linear", "int8_shared", "powersgd", "gather")


def is_linear(codec: Codec) -> bool:
    """Summing payload buffers decodes to the sum: dense casts, sketch, randomk (shared seed)."""
    if codec.name == "randomk":
        return codec.inner is None or is_linear(codec.inner)
    return bool(codec.linear) and codec.inner is None


def choose_path(codec: Codec, int8_mode: str, world: int) -> str:
    if codec.name == "none" and codec.inner is None:
        return "allreduce"
    if codec.name == "powersgd":
        return "powersgd"
    if codec.name == "int8" and int8_mode == "shared":
        if (2 ** (codec.params.num_bits - 1) - 1) // world < 1:
            raise ConfigError(f"int8 with a shared scale needs world size <= "
                              f"{2 ** (codec.params.num_bits - 1) - 1} (headroom for the int8 "
                              "sum); use int8_mode='per-rank'")
        return "int8_shared"
    return "linear" if is_linear(codec) else "gather"


def offset_seeds(codec: Codec, offset: int) -> Codec:
    """A copy whose stochastic stages use seed+offset: independent rounding noise per rank."""
    inner = offset_seeds(codec.inner, offset) if codec.inner is not None else None
    params = codec.params
    if "seed" in type(params).model_fields and offset:
        params = params.model_copy(update={"seed": params.seed + offset})
    return type(codec)(params, inner)


class CommHookState:
    """State shared by every call of one compression hook on one rank."""

    def __init__(self, spec: str | Codec = "none", config: dict[str, Any] | None = None, *,
                 error_feedback: bool = False, process_group: Any = None, start_iter: int = 1,
                 min_compression_rate: float = 2.0, int8_mode: str = "shared") -> None:
        if int8_mode not in ("shared", "per-rank"):
            raise ConfigError(f"int8_mode must be 'shared' or 'per-rank', got {int8_mode!r}")
        if start_iter < 0 or min_compression_rate < 0:
            raise ConfigError("start_iter and min_compression_rate must be >= 0")
        self.group = process_group
        self.world = dist.get_world_size(process_group) if dist.is_initialized() else 1
        self.rank = dist.get_rank(process_group) if dist.is_initialized() else 0
        self.codec = build(spec, config)
        self.path = choose_path(self.codec, int8_mode, self.world)
        base = offset_seeds(self.codec, self.rank) if self.path == "gather" else self.codec
        self.error_feedback = error_feedback
        self.encoder = Encoder(make_codec(base, error_feedback))
        self.decoders = [Decoder() for _ in range(self.world)]
        self.start_iter = start_iter
        self.min_compression_rate = min_compression_rate
        self.int8_mode = int8_mode
        self.iter = 0
        self.sizes: dict[str, int] = {}
        self.decisions: dict[str, bool] = {}
        self.stats = CommStats()
        self.diagnose = False   # set by the trainer on sampled steps (extra exact all-reduce)
        self.fsdp_calls = 0
        self._fsdp_fresh = False

    @property
    def spec(self) -> str:
        return self.codec.spec()

    @property
    def compressing(self) -> bool:
        return self.iter >= self.start_iter and self.path != "allreduce"

    # ---- slots ----------------------------------------------------------------------------
    def slot(self, name: str) -> dict[str, Any]:
        return self.encoder.state.slot(name)

    def track(self, name: str, numel: int) -> None:
        """Forget a key's state when its size changes (DDP rebuilds buckets after step 0)."""
        if self.sizes.get(name, numel) != numel:
            for holder in [self.encoder.state, *(d.state for d in self.decoders)]:
                for key in [k for k in holder.slots if k == name or k.startswith(name + ".")]:
                    del holder.slots[key]
            self.decisions = {k: v for k, v in self.decisions.items()
                              if not (k == name or k.startswith(name + "."))}
        self.sizes[name] = numel

    def worth_compressing(self, name: str, x: torch.Tensor) -> bool:
        """Per key, decided once: does the codec shrink it at least `min_compression_rate`x?"""
        if self.path in ("powersgd", "allreduce"):
            return self.path == "powersgd"  # powersgd decides per tensor
        if self.min_compression_rate <= 0:
            return True
        if name not in self.decisions:
            # the trial size can depend on the data (thresholdv): ranks agree through MIN,
            # else one rank would compress while another all-reduces and both would hang
            flag = torch.tensor([1.0 if self._shrinks(name, x) else 0.0], device=x.device)
            if self.world > 1:
                dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=self.group)
            self.decisions[name] = bool(flag.item() > 0)
        return self.decisions[name]

    def _shrinks(self, name: str, x: torch.Tensor) -> bool:
        raw = x.numel() * x.element_size()
        if self.path == "int8_shared":
            return raw >= self.min_compression_rate * max(x.numel(), 1)
        try:
            trial = self.codec.encode(x.detach(), {}, name)
        except CodecError:  # NaN/Inf: the hook's own path handles it
            return True
        sent = sum(b.numel() * b.element_size() for b in buffers_of(trial))
        return raw >= self.min_compression_rate * max(sent, 1)

    def residual_norm(self) -> float:
        """||error-feedback residuals|| over all keys (dgc: its accumulator v)."""
        total = 0.0
        for slot in self.encoder.state.slots.values():
            total += _residual_sq(slot)
        return math.sqrt(total)

    # ---- FSDP iteration boundaries ----------------------------------------------------------
    def fsdp_begin(self) -> None:
        """Root forward pre-hook: a new iteration starts; FSDP1 keys restart at 0."""
        if self.fsdp_calls:
            self.iter += 1
        self.fsdp_calls = 0

    # ---- checkpoint -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"spec": self.spec, "path": self.path, "iter": self.iter,
                "error_feedback": self.error_feedback, "sizes": dict(self.sizes),
                "decisions": dict(self.decisions), "encoder": self.encoder.state_dict(),
                "decoders": [d.state_dict() for d in self.decoders],
                "stats": self.stats.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["spec"] != self.spec:
            raise ConfigError(f"hook state was saved for codec {state['spec']!r}, this hook "
                              f"uses {self.spec!r}")
        if len(state["decoders"]) != self.world:
            raise ConfigError(f"hook state has {len(state['decoders'])} decoders (world size), "
                              f"this group has {self.world}")
        self.iter = int(state["iter"])
        self.sizes = dict(state["sizes"])
        self.decisions = dict(state["decisions"])
        self.encoder.load_state_dict(state["encoder"])
        for dec, sd in zip(self.decoders, state["decoders"]):
            dec.load_state_dict(sd)
        self.stats.load_state_dict(state.get("stats", {}))


def _residual_sq(slot: Any) -> float:
    if not isinstance(slot, dict):
        return 0.0
    total = 0.0
    for key, value in slot.items():
        if key in ("residual", "v") and isinstance(value, torch.Tensor):
            total += float(value.double().pow(2).sum())
        elif isinstance(value, dict):
            total += _residual_sq(value)
    return total
