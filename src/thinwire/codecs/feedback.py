"""Error feedback as a wrapper around any lossy codec (BytePS-style decorator).

    v = x + residual;  payload = inner(v);  residual = v - decode(payload)

The sum of what the receiver decodes then tracks the sum of the inputs, with the gap bounded by
one residual. The receiver needs nothing: payloads are the inner codec's.
"""

from __future__ import annotations

import torch

from .base import Codec, Slot, check_input
from .payload import Payload


class ErrorFeedback:
    def __init__(self, inner: Codec) -> None:
        self.inner = inner

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def stateful(self) -> bool:
        return True

    def spec(self) -> str:
        return self.inner.spec()

    def __repr__(self) -> str:
        return f"<codec {self.spec()} with error feedback>"

    def roundtrip(self, x: torch.Tensor, state: Slot, name: str = "") -> tuple[Payload, torch.Tensor]:
        check_input(self.name, x, name, check_finite=not self.inner.checks_finite)
        residual = state.get("residual")
        v = x.detach().float()
        if residual is not None:
            v = v + residual
        payload, recon = self.inner._roundtrip(v, state.setdefault("inner", {}))
        state["residual"] = v - recon.float()
        payload.dtype = x.dtype
        payload.name = name
        return payload, recon.to(x.dtype)

    def encode(self, x: torch.Tensor, state: Slot, name: str = "") -> Payload:
        return self.roundtrip(x, state, name)[0]

    def decode(self, payload: Payload, state: Slot | None = None) -> torch.Tensor:
        return self.inner.decode(payload, state)
