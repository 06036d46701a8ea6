"""A model message: what a coordinator sends on a pull, typed end to end.

Two frames (wire/framing.py): a `ModelAnnounce` (version, round, done, the LAQ model-change
history, the downlink codec) and the `Update` holding the model or its delta. It replaces the
`X-Thinwire-*` headers, so every transport (HTTP, in-process, ZeroMQ) carries the same bytes.
"""

from __future__ import annotations

from ..errors import WireError
from .control import ModelAnnounce, parse_model_announce, serialize
from .framing import Kind, frame, read_frames
from .limits import WireLimits
from .messages import Update, parse_update


def model_message(announce: ModelAnnounce, update: bytes) -> bytes:
    """The bytes of one model message; `update` is an already serialized Update."""
    return frame(serialize(announce), Kind.MODEL_ANNOUNCE) + frame(update, Kind.UPDATE)


def parse_model_message(data: bytes, limits: WireLimits = WireLimits()
                        ) -> tuple[ModelAnnounce, Update]:
    """Parse untrusted bytes: exactly an announce frame then an update frame."""
    frames = list(read_frames(data, limits.max_message_bytes))
    kinds = [f.kind for f in frames]
    if kinds != [Kind.MODEL_ANNOUNCE, Kind.UPDATE]:
        raise WireError(f"model message holds frames {kinds[:4]}; expected "
                        f"[{int(Kind.MODEL_ANNOUNCE)}, {int(Kind.UPDATE)}] (announce, update)")
    return (parse_model_announce(frames[0].body, limits),
            parse_update(frames[1].body, limits))
