"""The state a compression hook carries between calls (like torch's PowerSGDState).

One `CommHookState` per process group and model: the codec, the communicator chosen for it
(`communicators.communicator_for`), one Encoder whose slots are keyed by
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

from ..codecs import Decoder, Encoder, ErrorFeedback, build, make_codec
from ..codecs.base import Codec
from ..errors import ConfigError
from .comm import CommStats
from .communicators import communicator_for, offset_seeds


class CommHookState:
    """State shared by every call of one compression hook on one rank."""

    def __init__(self, spec: str | Codec = "none", config: dict[str, Any] | None = None, *,
                 error_feedback: bool = False, process_group: Any = None, start_iter: int = 1,
                 min_compression_rate: float = 2.0, int8_mode: str = "shared") -> None:
        if start_iter < 0 or min_compression_rate < 0:
            raise ConfigError("start_iter and min_compression_rate must be >= 0")
        self.group = process_group
        self.world = dist.get_world_size(process_group) if dist.is_initialized() else 1
        self.rank = dist.get_rank(process_group) if dist.is_initialized() else 0
        self.codec = build(spec, config)
        self.comm = communicator_for(self.codec, int8_mode, self.world)
        base = offset_seeds(self.codec, self.rank) if self.comm.per_rank_seeds else self.codec
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

    @property
    def spec(self) -> str:
        return self.codec.spec()

    @property
    def path(self) -> str:
        return self.comm.path

    @property
    def feedback(self) -> ErrorFeedback | None:
        """The error-feedback memory around the codec (None without, or if the codec keeps
        its own residual)."""
        codec = self.encoder.codec
        return codec if isinstance(codec, ErrorFeedback) else None

    @property
    def compressing(self) -> bool:
        return self.iter >= self.start_iter and self.comm.compresses

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

    def admit(self, name: str, x: torch.Tensor, probe: torch.Tensor | None = None) -> bool:
        """Count bucket/unit `x` and decide whether it goes compressed (`probe`: the part the
        codec's size is judged on, default all of x)."""
        self.track(name, x.numel())
        self.stats.add(bytes_raw=x.numel() * x.element_size())
        compress = self.compressing and self.worth_compressing(name, x if probe is None else
                                                               probe)
        if compress:  # density is measured over compressed buckets/units
            self.stats.add(elements=x.numel())
        return compress

    def worth_compressing(self, name: str, x: torch.Tensor) -> bool:
        """Per key, decided once: does the codec shrink it at least `min_compression_rate`x?"""
        if not self.comm.compresses:
            return False
        if self.comm.per_tensor_rate or self.min_compression_rate <= 0:
            return True
        if name not in self.decisions:
            # the trial size can depend on the data (thresholdv): ranks agree through MIN,
            # else one rank would compress while another all-reduces and both would hang
            shrinks = self.comm.shrinks(self, name, x)
            flag = torch.tensor([1.0 if shrinks else 0.0], device=x.device)
            if self.world > 1:
                dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=self.group)
            self.decisions[name] = bool(flag.item() > 0)
        return self.decisions[name]

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
