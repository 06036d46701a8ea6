"""The client side: a Flower mod that sends the model update through a thinwire codec.

    app = ClientApp(mods=[thinwire_mod("topk(ratio=0.01)+int8")])

On the way in, a compressed downlink (ThinwireStrategy(down=...)) is rebuilt into plain
weights on this node's replica of the global model, so the app sees an ordinary message. On
the way out of a train message, each ArrayRecord that came in is replaced by the *update*
(trained - received weights) encoded by a thinwire `Sender` (codec + error feedback) as a
serialized thinwire `Update` (see records.py). The error-feedback residual and the replica
live in `Context.state`, so they survive between rounds however Flower builds the app.
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import Context, Message, MessageType, RecordDict

from ..codecs import Encoder, make_codec
from ..errors import ConfigError, ThinwireError
from ..exchange import Sender, decode_update
from ..policy.rules import Always
from ..wire import WireLimits, parse_update, serialize_update
from .records import (DOWN_KEY, Tensors, blob_record, load_state, make_record,
                      read_blob_record, replace_records, save_state, split_record)

Mod = Callable[[Message, Context, Callable[[Message, Context], Message]], Message]


class DownlinkMismatch(ThinwireError):
    """A compressed downlink built on a replica this node does not hold."""


def message_round(content: RecordDict) -> int:
    """The server round Flower's strategies put in the config (`server-round`), else 0."""
    for record in content.config_records.values():
        value = record.get("server-round")
        if isinstance(value, int):
            return value
    return 0


def num_examples(content: RecordDict) -> int:
    for record in content.metric_records.values():
        value = record.get("num-examples")
        if isinstance(value, (int, float)):
            return int(value)
    return 0


CODEC_KEY = "thinwire-codec"                  # run config keys read when the mod is
FEEDBACK_KEY = "thinwire-error-feedback"      # given no codec / error_feedback
OFF = ("", "off", "plain")


def feedback_setting(value: object, spec: str) -> bool:
    """A run config's error-feedback setting: true/false, or "auto": the codec's advice."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("", "auto"):
        return make_codec(spec).wants_error_feedback
    if text in ("true", "on", "1", "false", "off", "0"):
        return text in ("true", "on", "1")
    raise ConfigError(f"{FEEDBACK_KEY} = {value!r}: use true, false or auto")


def thinwire_mod(codec: str | None = None, error_feedback: bool | None = None,
                 limits: WireLimits | None = None) -> Mod:
    """A Flower mod that compresses this client's train replies with `codec` (any thinwire
    spec; error feedback wraps it when the codec is lossy and `error_feedback`) and decodes
    a compressed downlink. Put it in `ClientApp(mods=[...])`. Left None, both are read per
    message from the run config (`thinwire-codec`, `thinwire-error-feedback`: pyproject's
    [tool.flwr.app.config] or `flwr run --run-config`); a codec "" or "off" sends plain.
    By default ("auto") error feedback is on where the codec recommends it (topk, int8, ...),
    off where it does not (bin, a differential codec, tracks its own reference)."""
    if codec is not None and codec not in OFF:
        make_codec(codec, bool(error_feedback))  # a bad spec fails at build time
    limits = limits or WireLimits()

    def mod(msg: Message, context: Context,
            call_next: Callable[[Message, Context], Message]) -> Message:
        spec = codec if codec is not None else str(context.run_config.get(CODEC_KEY, ""))
        if not msg.has_content() or (spec in OFF and DOWN_KEY not in msg.content):
            return call_next(msg, context)
        feedback = error_feedback
        if feedback is None:
            feedback = feedback_setting(context.run_config.get(FEEDBACK_KEY, "auto"), spec)
        state = load_state(context)
        references = receive(msg, state, limits)
        reply = call_next(msg, context)
        kind = msg.metadata.message_type.split(".")[0]
        if (spec not in OFF and kind == MessageType.TRAIN and reply.has_content()
                and not reply.has_error()):
            rnd = message_round(msg.content)
            reply.content = encode_reply(reply.content, references, state, spec, feedback,
                                         str(context.node_id), rnd)
        save_state(context, state)
        return reply

    return mod


def receive(msg: Message, state: dict, limits: WireLimits) -> dict[str, dict]:
    """Rebuild a compressed downlink into plain weights (in place on `msg`) and return, per
    ArrayRecord key, what the app trains from: {tensors, order, dtypes}."""
    content = msg.content
    down = content.config_records.get(DOWN_KEY)
    replicas = state.setdefault("replicas", {})
    references, new = {}, {}
    for key, record in content.array_records.items():
        got = read_blob_record(record)
        if got is None:
            tensors, _ = split_record(record)
            ref = {"tensors": tensors, "order": list(record.keys()),
                   "dtypes": {k: str(a.dtype) for k, a in record.items()}}
            if down is not None and key in down:
                replicas[key] = {**ref, "version": int(down[key])}
        else:
            blob, raw = got
            held = replicas.get(key)
            update = parse_update(blob, limits)
            if held is None or int(held["version"]) != update.base_version:
                have = None if held is None else held["version"]
                raise DownlinkMismatch(f"downlink for '{key}' is a delta on version "
                                       f"{update.base_version}, this node holds {have}; the "
                                       "server sends the full model next time")
            delta = decode_update(update).params
            tensors = {n: held["tensors"][n] + delta[n] for n in held["tensors"]}
            ref = {"tensors": tensors, "order": held["order"], "dtypes": held["dtypes"]}
            replicas[key] = {**ref, "version": update.seq}
            new[key] = make_record(tensors, raw, ref["order"], ref["dtypes"])
        references[key] = ref
    if new or down is not None:
        msg.content = replace_records(content, new, drop=(DOWN_KEY,))
    return references


def encode_reply(content: RecordDict, references: dict[str, dict], state: dict, codec: str,
                 error_feedback: bool, node_id: str, rnd: int) -> RecordDict:
    """The reply with each ArrayRecord that came in replaced by its encoded update; a record
    whose tensors changed names or shapes goes as it is."""
    senders = state.setdefault("senders", {})
    new = {}
    for key, record in content.array_records.items():
        ref = references.get(key)
        if ref is None:
            continue
        trained, raw = split_record(record)
        base: Tensors = ref["tensors"]
        if list(trained) != list(base) or any(trained[n].shape != base[n].shape for n in base):
            continue
        sender = Sender(node_id, Encoder(make_codec(codec, error_feedback)), Always())
        if key in senders:
            sender.load_state_dict(senders[key])
        proposal = sender.propose({n: trained[n] - base[n] for n in base}, step=rnd,
                                  confidence=0.0)
        update = sender.message(proposal, round=rnd, kind="delta",
                                num_samples=num_examples(content))
        senders[key] = sender.state_dict()
        new[key] = blob_record(serialize_update(update), raw)
    return replace_records(content, new) if new else content
