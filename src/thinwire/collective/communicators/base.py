"""The communicator contract, and the encode steps the payload-moving paths share.

GRACE's split: the codec compresses, `ErrorFeedback` remembers what was not sent, and a
communicator moves the result across the ranks. One communicator serves both runtimes:

- `average(state, name, buf, grads)` (DDP): a future of the average of `buf` over ranks;
  `grads` are the bucket's gradient views into `buf` (PowerSGD needs their shapes).
- `reduce_scatter(state, key, chunks, out)` (FSDP): `chunks` is the flat input viewed as
  (world, S); `out` receives this rank's chunk of the average.

Communicators hold no state: everything that lives between calls is in the `CommHookState`
(encoder slots, decoders, counters), so it is checkpointed in one place.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import torch
from torch.profiler import record_function

from ...codecs import ErrorFeedback
from ...codecs.payload import Payload
from ...errors import CodecError
from ..comm import Future, now
from ..packing import buffers_of

if TYPE_CHECKING:
    from ..state import CommHookState


class Communicator:
    """One way for a bucket or FSDP unit to cross the ranks."""

    path: ClassVar[str]                      # the name rows and checkpoints record
    compresses: ClassVar[bool] = True        # False: the plain fp32 average
    per_tensor_rate: ClassVar[bool] = False  # applies min_compression_rate per tensor itself
    per_rank_seeds: ClassVar[bool] = False   # stochastic codecs draw independent noise per rank
    fsdp_refusal: ClassVar[str | None] = None  # why FSDP cannot use it (None: it can)

    def average(self, state: CommHookState, name: str, buf: torch.Tensor,
                grads: Sequence[torch.Tensor]) -> Future:
        raise NotImplementedError

    def reduce_scatter(self, state: CommHookState, key: str, chunks: torch.Tensor,
                       out: torch.Tensor) -> None:
        raise NotImplementedError

    def shrinks(self, state: CommHookState, name: str, x: torch.Tensor) -> bool:
        """Does the codec make `x` at least `min_compression_rate` times smaller?"""
        raw = x.numel() * x.element_size()
        try:
            trial = state.codec.encode(x.detach(), {}, name)
        except CodecError:  # NaN/Inf: the communicator's own path handles it
            return True
        sent = sum(b.numel() * b.element_size() for b in buffers_of(trial))
        return raw >= state.min_compression_rate * max(sent, 1)

    def __repr__(self) -> str:
        return f"<communicator {self.path}>"


def encode(state: CommHookState, name: str, x: torch.Tensor) -> Payload | None:
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


def advance(state: CommHookState, name: str, zeros: torch.Tensor) -> Payload:
    """Encode zeros without touching the residual, so step counters (randomk's shared seed)
    advance on this rank exactly as on the ranks whose encode succeeded."""
    codec, slot = state.encoder.codec, state.slot(name)
    if isinstance(codec, ErrorFeedback):
        return codec.inner.encode(zeros, slot.setdefault("inner", {}), name)
    return codec.encode(zeros, slot, name)


def chunk_payloads(state: CommHookState, key: str, chunks: torch.Tensor) -> list[Any] | None:
    """One payload per destination chunk (a slot per chunk), or None if any chunk is bad."""
    payloads = []
    for j in range(state.world):
        payload = encode(state, f"{key}.c{j}", chunks[j] / state.world)
        if payload is None:
            return None
        payloads.append(payload)
    return payloads
