"""Receiver: how a contribution arrives: parse, check against the expected layout, decode.

One `Decoder` per peer (differential codecs keep state per sender). Decoding is all or
nothing: if any tensor fails (codec error, non-finite values), the peer's decoder state is
restored and nothing is returned, so a rejected message changes nothing. `Arrival.undo`
restores it later too (e.g. when the message cannot be journaled).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..codecs import Decoder, make_codec
from ..errors import CodecError, ThinwireError, WireError
from ..wire import Update, WireLimits, parse_update
from ..codecs import decode as decode_stateless
from .tensorset import DEFAULT_ROLE, TensorSet, role_of

Layout = dict[str, tuple[tuple[int, ...], str]]  # wire name -> (shape, role)
CODED_ROLES = (DEFAULT_ROLE, "adapter")  # sent through the codec, required in every message
REQUIRED_ROLES = CODED_ROLES  # other roles (buffers) are lossless and may be left out


class Rejected(ThinwireError):
    """A message this receiver refuses; the text says what was wrong and how to fix it."""


class _LayoutRefusal(WireError):
    """Carries a layout refusal out of the parser's `expect` hook."""


@dataclass
class Arrival:
    update: Update
    tensors: TensorSet
    nbytes: int
    receiver: "Receiver"
    before: dict | None = None

    def undo(self) -> None:
        """Restore the sender's decoder state to what it was before this arrival."""
        self.receiver.restore(self.update.node_id, self.before)


class Receiver:
    def __init__(self, layout: Layout | None = None, codec: str | None = None,
                 limits: WireLimits | None = None) -> None:
        """`layout`: the tensors every message must carry; `codec`: the spec params must use
        (other roles are lossless); both optional (the simulator trusts its own nodes)."""
        self.layout = layout
        self.codec_name = make_codec(codec).name if codec else None
        self.limits = limits or WireLimits()
        self.decoders: dict[str, Decoder] = {}

    def receive(self, body: bytes, peer: str | None = None) -> Arrival:
        update = self.parse(body)  # checks the layout too, before any decoding work
        if peer is not None and update.node_id != peer:
            raise Rejected(f"message from {peer!r} names node {update.node_id!r}")
        return self.decode(update, len(body))

    def parse(self, body: bytes) -> Update:
        try:
            return parse_update(body, self.limits, expect=self._expect)
        except _LayoutRefusal as exc:
            raise Rejected(str(exc)) from None
        except WireError as exc:
            raise Rejected(f"malformed update: {exc}") from None

    def _expect(self, update: Update) -> None:
        """The layout check, run by the parser before any codec reads a buffer; its
        refusal surfaces from `parse` as a Rejected like any other."""
        try:
            self.check(update)
        except Rejected as exc:
            raise _LayoutRefusal(str(exc)) from None

    def check(self, update: Update) -> None:
        """Names must be exactly the layout's required tensors (plus optional other roles);
        shapes must match; params and adapters must use the expected codec, other roles
        `none`."""
        if self.layout is None:
            return
        names = [t.name for t in update.tensors]
        if len(set(names)) != len(names):
            raise Rejected("update names a tensor twice; send each parameter once")
        required = {n for n, (_, role) in self.layout.items() if role in REQUIRED_ROLES}
        missing, unknown = sorted(required - set(names)), sorted(set(names) - set(self.layout))
        if missing or unknown:
            raise Rejected(f"update tensors do not match the model: missing {missing[:5]}, "
                           f"unknown {unknown[:5]}; pull the model again and train on it")
        for t in update.tensors:
            shape, role = self.layout[t.name]
            if role_of(t.role) != role:
                raise Rejected(f"tensor '{t.name}' is sent as a {role_of(t.role)} but the model "
                               f"holds it as a {role}")
            if tuple(t.shape) != shape:
                raise Rejected(f"tensor '{t.name}' has shape {list(t.shape)[:8]} but the model "
                               f"has {list(shape)}")
            want = self.codec_name if role in CODED_ROLES else "none"
            if want is not None and t.codec != want:
                raise Rejected(f"tensor '{t.name}' is encoded with '{t.codec}' but this "
                               f"receiver expects '{want}' (mode/codec in its config)")

    def decode(self, update: Update, nbytes: int = 0) -> Arrival:
        decoder = self.decoders.setdefault(update.node_id, Decoder())
        before = decoder.state_dict() if decoder.state.slots else None
        try:
            out = TensorSet()
            for t in update.tensors:
                out.add({t.name: decoder.decode(t).float()}, role_of(t.role))
            bad = [n for n, v in out.items() if v.numel() and not bool(torch.isfinite(v).all())]
            if bad:
                raise Rejected(f"update decodes to non-finite values in {bad[:5]}; check the "
                               "sender's learning rate / loss")
        except (CodecError, WireError) as exc:
            self.restore(update.node_id, before)
            raise Rejected(f"update cannot be decoded: {exc}") from None
        except BaseException:
            self.restore(update.node_id, before)
            raise
        return Arrival(update, out, nbytes, self, before)

    def restore(self, peer: str, before: dict | None) -> None:
        decoder = self.decoders.setdefault(peer, Decoder())
        if before is None:
            decoder.state.reset()
        else:
            decoder.load_state_dict(before)

    def forget(self, peer: str) -> None:
        """A peer re-registered with a new session: its differential state starts over."""
        self.decoders.pop(peer, None)

    def state_dict(self) -> dict:
        return {peer: d.state_dict() for peer, d in self.decoders.items()}

    def load_state_dict(self, state: dict) -> None:
        self.decoders = {}
        for peer, s in state.items():
            self.decoders[peer] = Decoder()
            self.decoders[peer].load_state_dict(s)




def decode_update(update: Update) -> TensorSet:
    """Decode an update whose codecs keep no receiver state (models, downlink deltas)."""
    out = TensorSet()
    for t in update.tensors:
        out.add({t.name: decode_stateless(t)}, role_of(t.role))
    return out
