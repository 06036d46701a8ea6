"""Encoder and Decoder: a codec bound to the state of one side of one link.

The sender owns an `Encoder` (state per tensor name: residuals, last sent values, warm starts);
the receiver owns one `Decoder` per sender (state for differential codecs such as laq/bbit/bin).
Both checkpoint with `state_dict()` / `load_state_dict()`.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError
from .base import Codec, CodecState
from .feedback import ErrorFeedback
from .payload import Payload
from .registry import build, codec_for_payload

AnyCodec = Codec | ErrorFeedback


def make_codec(spec: str | dict | list | Codec, error_feedback: bool = False,
               extra: dict[str, Any] | None = None, momentum: float = 0.0) -> AnyCodec:
    """Build a codec from a spec, wrapped in error feedback when asked and useful
    (`momentum` > 0: with DGC's momentum correction, see feedback.py).

    Lossless codecs and codecs with their own residual (dgc, bbit) are left unwrapped.
    """
    codec = build(spec, extra)
    if error_feedback and codec.lossy and not codec.own_feedback:
        problem = codec.feedback_problem()
        if problem:
            raise ConfigError(f"error feedback around '{codec.spec()}': {problem}")
        return ErrorFeedback(codec, momentum)
    return codec


class Encoder:
    def __init__(self, codec: AnyCodec | str, error_feedback: bool = False) -> None:
        self.codec = make_codec(codec, error_feedback) if isinstance(codec, str) else codec
        self.state = CodecState()

    def encode(self, x: torch.Tensor, name: str = "") -> Payload:
        return self.codec.encode(x, self.state.slot(name), name)

    def roundtrip(self, x: torch.Tensor, name: str = "") -> tuple[Payload, torch.Tensor]:
        return self.codec.roundtrip(x, self.state.slot(name), name)

    def state_dict(self) -> dict[str, Any]:
        return {"spec": self.codec.spec(), "slots": self.state.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state.load_state_dict(state["slots"])


class Decoder:
    """Decodes any payload (codecs are rebuilt from the payload itself, cached)."""

    def __init__(self) -> None:
        self.state = CodecState()
        self._codecs: dict[tuple, Codec] = {}

    def decode(self, payload: Payload) -> torch.Tensor:
        codec = codec_for_payload(payload, self._codecs)
        return codec.decode(payload, self.state.slot(payload.name))

    def state_dict(self) -> dict[str, Any]:
        return {"slots": self.state.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state.load_state_dict(state["slots"])


def decode(payload: Payload) -> torch.Tensor:
    """Decode a payload of a codec whose decoder keeps no state."""
    return codec_for_payload(payload).decode(payload, None)
