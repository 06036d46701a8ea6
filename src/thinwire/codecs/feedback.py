"""Error feedback as a wrapper around any lossy codec (BytePS-style decorator).

    v = x + residual;  payload = inner(v);  residual = v - decode(payload)

The sum of what the receiver decodes then tracks the sum of the inputs, with the gap bounded by
one residual. The receiver needs nothing: payloads are the inner codec's.

With `momentum` m > 0 it is DGC's momentum correction (Lin et al. 2018) around any codec: the
sender keeps the momentum, u = m*u + x, compresses v = u + residual, and zeroes u where the
receiver got a value (momentum factor masking), so the receiver applies plain SGD. Sparsified
updates under momentum SGD on the receiver lose accuracy that this recovers (bench/RESULTS.md).
"""

from __future__ import annotations

import torch

from .base import Codec, Slot, check_input
from .payload import Payload


class ErrorFeedback:
    def __init__(self, inner: Codec, momentum: float = 0.0) -> None:
        self.inner = inner
        self.momentum = momentum

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def stateful(self) -> bool:
        return True

    def spec(self) -> str:
        return self.inner.spec()

    def __repr__(self) -> str:
        extra = f", momentum correction {self.momentum:g}" if self.momentum else ""
        return f"<codec {self.spec()} with error feedback{extra}>"

    def compensate(self, x: torch.Tensor, state: Slot) -> torch.Tensor:
        """v = x + residual (fp32): what to compress this step. Split from `absorb` so
        compressors that need a collective in the middle (shared scales, two-round PowerSGD)
        keep the same memory."""
        residual = state.get("residual")
        v = x.detach().float()
        if self.momentum:
            u = state.get("momentum")
            v = v if u is None else torch.add(v, u.to(v.device), alpha=self.momentum)
            state["momentum"] = v
        return v + residual if residual is not None else v

    def absorb(self, state: Slot, v: torch.Tensor, recon: torch.Tensor) -> None:
        """Remember what the receiver did not get: residual = v - recon."""
        state["residual"] = v - recon.float()
        if self.momentum:  # momentum factor masking: what was sent restarts its momentum
            state["momentum"] = state["momentum"].masked_fill(recon != 0, 0.0)

    def roundtrip(self, x: torch.Tensor, state: Slot, name: str = "") -> tuple[Payload, torch.Tensor]:
        check_input(self.name, x, name, check_finite=not self.inner.checks_finite)
        v = self.compensate(x, state)
        payload, recon = self.inner._roundtrip(v, state.setdefault("inner", {}))
        self.absorb(state, v, recon)
        payload.dtype = x.dtype
        payload.name = name
        return payload, recon.to(x.dtype)

    def encode(self, x: torch.Tensor, state: Slot, name: str = "") -> Payload:
        return self.roundtrip(x, state, name)[0]

    def decode(self, payload: Payload, state: Slot | None = None) -> torch.Tensor:
        return self.inner.decode(payload, state)
