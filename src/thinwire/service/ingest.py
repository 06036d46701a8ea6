"""Validation of untrusted updates against the model, and all-or-nothing decoding.

The wire layer (`parse_update`) already checks structure, sizes and finite buffers; here the
update is checked against what this coordinator expects (tensor names and shapes of the
model, the configured codec, finite decoded values). A rejected update leaves the worker's
decoder state exactly as it was.
"""

from __future__ import annotations

import re

import torch

from ..codecs import Decoder
from ..errors import CodecError, ThinwireError, WireError
from ..wire import Update, WireLimits, parse_update

WORKER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_SEQ = 1 << 53
Tensors = dict[str, torch.Tensor]


class ServiceError(ThinwireError):
    """An HTTP-mappable error: status code plus a message a person can act on."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def check_worker_id(wid: str) -> str:
    if not isinstance(wid, str) or not WORKER_ID.match(wid):
        raise ServiceError(400, f"worker id {wid!r} is invalid: use 1-64 characters from "
                                "letters, digits, '_', '.', '-' (starting with a letter/digit)")
    return wid


def parse(body: bytes, limits: WireLimits) -> Update:
    try:
        return parse_update(body, limits)
    except WireError as exc:
        raise ServiceError(400, f"malformed update: {exc}") from None


def check_layout(update: Update, layout: dict[str, tuple[int, ...]], codec: str) -> None:
    """Names must be exactly the model's parameters (plus optional `buffer:` tensors sent
    with codec none); shapes must match; parameters must use the configured codec."""
    names = [t.name for t in update.tensors]
    if len(set(names)) != len(names):
        raise ServiceError(400, "update names a tensor twice; send each parameter once")
    params = {n for n in layout if not n.startswith("buffer:")}
    missing = sorted(params - set(names))
    unknown = sorted(set(names) - set(layout))
    if missing or unknown:
        raise ServiceError(400, f"update tensors do not match the model: missing {missing[:5]}"
                                f", unknown {unknown[:5]}; pull the model again and train on it")
    for t in update.tensors:
        if tuple(t.shape) != layout[t.name]:
            raise ServiceError(400, f"tensor '{t.name}' has shape {list(t.shape)} but the model "
                                    f"has {list(layout[t.name])}")
        want = "none" if t.name.startswith("buffer:") else codec
        if t.codec != want:
            raise ServiceError(400, f"tensor '{t.name}' is encoded with '{t.codec}' but this "
                                    f"coordinator expects '{want}' (mode/codec in its config)")


def check_header(update: Update, wid: str | None = None) -> None:
    if wid is not None and update.node_id != wid:
        raise ServiceError(400, f"update node_id {update.node_id!r} != worker {wid!r}")
    check_worker_id(update.node_id)
    if update.kind != "delta":
        raise ServiceError(400, f"update kind {update.kind!r}: workers send 'delta' updates")
    if update.seq >= MAX_SEQ or update.round >= MAX_SEQ:
        raise ServiceError(400, f"round/seq {update.round}/{update.seq} out of range")


def decode_all(decoder: Decoder, update: Update) -> tuple[Tensors, dict | None]:
    """Decode every tensor, or none: on any failure the decoder state is restored.

    Returns the decoded tensors and the decoder's prior state (for `restore`, should the
    update fail later, e.g. when the journal cannot be written)."""
    before = decoder.state_dict() if decoder.state.slots else None
    try:
        out = {t.name: decoder.decode(t).float() for t in update.tensors}
        bad = [n for n, v in out.items() if v.numel() and not bool(torch.isfinite(v).all())]
        if bad:
            raise ServiceError(400, f"update decodes to non-finite values in {bad[:5]}; check "
                                    "the worker's learning rate / loss")
        return out, before
    except (CodecError, WireError) as exc:
        restore(decoder, before)
        raise ServiceError(400, f"update cannot be decoded: {exc}") from None
    except BaseException:
        restore(decoder, before)
        raise


def restore(decoder: Decoder, before: dict | None) -> None:
    if before is None:
        decoder.state.reset()
    else:
        decoder.load_state_dict(before)
