"""The server side: wrap any Flower strategy so it aggregates decoded weights.

    strategy = ThinwireStrategy(FedAvg(), codec="topk(ratio=0.01)+int8",
                                down="topk(ratio=0.05)+int8")
    result = strategy.start(grid, initial_arrays=ArrayRecord(model.state_dict()), num_rounds=5)
    strategy.rounds   # {round: {bytes_up, bytes_down, plain_up, plain_down, ...}}

Replies from `thinwire_mod` clients carry a thinwire `Update` (the encoded update); a
`Receiver` per ArrayRecord key (one `Decoder` per node: differential codecs keep state)
decodes it, and the weights the node trained from plus the update go to the wrapped strategy
as an ordinary reply. Plain replies pass through untouched.

Optional compressed downlink (`down`): the server keeps, per node, the replica of the global
model that node holds (a version number), sends `encode(global - replica)` and moves the
replica by what the node will decode. The part the codec dropped stays in `global - replica`
and goes out next time: server-side error feedback with the replica as its memory. A node
with no replica (first round, or it missed a reply) gets the full model, as plain Flower
sends it. Nodes holding the same version share one encoding.

Bytes are Flower's own: `message_nbytes` (records.py) of every message as it leaves and
arrives, next to the size of the same message in plain form (`plain_*`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from logging import INFO, WARNING
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from ..codecs import Encoder, make_codec
from ..errors import ConfigError
from ..exchange import Receiver, Rejected, decode_update
from ..wire import Update, WireLimits, parse_update, serialize_update
from .records import (DOWN_KEY, Tensors, blob_record, make_record, message_nbytes,
                      read_blob_record, replace_records, split_record)

COUNTERS = ("bytes_down", "bytes_up", "plain_down", "plain_up", "messages_down",
            "messages_up", "rejected")


@dataclass
class Weights:
    """What one node holds for one ArrayRecord: fp32 tensors, key order, dtypes."""

    tensors: Tensors
    order: list[str]
    dtypes: dict[str, str]

    @classmethod
    def of(cls, record: ArrayRecord) -> "Weights":
        tensors, _ = split_record(record)
        return cls(tensors, list(record.keys()), {k: str(a.dtype) for k, a in record.items()})

    def matches(self, other: "Weights") -> bool:
        return self.order == other.order and all(
            self.tensors[n].shape == other.tensors[n].shape for n in self.tensors)


class ThinwireStrategy(Strategy):
    def __init__(self, strategy: Strategy, codec: str | None = None, down: str | None = None,
                 limits: WireLimits | None = None) -> None:
        """`strategy`: the Flower strategy that aggregates; `codec`: the clients' uplink spec
        (checked on arrival when given); `down`: a codec for the downlink (None: plain)."""
        self.inner = strategy
        self.codec = codec
        self.down = make_codec(down) if down else None
        if self.down is not None and self.down.stateful:
            raise ConfigError(f"downlink codec '{down}' keeps state between calls; use a "
                              "stateless one (the server's replica already feeds the error "
                              "back)")
        self.limits = limits or WireLimits()
        self.receivers: dict[str, Receiver] = {}
        self.sent: dict[int, dict[str, Weights]] = {}     # node -> key -> what it trains from
        self.held: dict[int, dict[str, int]] = {}         # node -> key -> replica version
        self.pending: dict[int, dict[str, int]] = {}      # versions sent, not yet confirmed
        self.replicas: dict[int, Weights] = {}
        self.next_version = 1
        self.rounds: dict[int, dict[str, int]] = {}

    def __getattr__(self, name: str) -> Any:  # the wrapped strategy's settings
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    # ---- Strategy ---------------------------------------------------------------------
    def summary(self) -> None:
        self.inner.summary()
        log(INFO, "\t└──> thinwire: uplink %s, downlink %s", self.codec or "(any codec)",
            self.down.spec() if self.down else "plain")

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        return self.outgoing(server_round,
                             self.inner.configure_train(server_round, arrays, config, grid))

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        arrays, metrics = self.inner.aggregate_train(server_round,
                                                     self.incoming(server_round, replies))
        stats = self.rounds[server_round]
        metrics = MetricRecord() if metrics is None else metrics
        metrics["thinwire-bytes-up"] = stats["bytes_up"]
        metrics["thinwire-bytes-down"] = stats["bytes_down"]
        metrics["thinwire-plain-up"] = stats["plain_up"]
        metrics["thinwire-plain-down"] = stats["plain_down"]
        return arrays, metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.outgoing(server_round,
                             self.inner.configure_evaluate(server_round, arrays, config, grid))

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, self.incoming(server_round, replies))

    # ---- the two directions -----------------------------------------------------------
    def stats(self, server_round: int) -> dict[str, int]:
        return self.rounds.setdefault(server_round, dict.fromkeys(COUNTERS, 0))

    def totals(self) -> dict[str, int]:
        return {k: sum(r[k] for r in self.rounds.values()) for k in COUNTERS}

    def outgoing(self, server_round: int, messages: Iterable[Message]) -> list[Message]:
        stats, out = self.stats(server_round), []
        weights: dict[int, Weights] = {}          # id(record) -> its tensors, split once
        encoded: dict[tuple, tuple[ArrayRecord, int]] = {}  # (key, record, base) -> once
        for msg in messages:
            stats["plain_down"] += message_nbytes(msg)
            node = msg.metadata.dst_node_id
            if msg.has_content():
                new, versions = {}, {}
                for key, record in msg.content.array_records.items():
                    if id(record) not in weights:
                        weights[id(record)] = Weights.of(record)
                    target = weights[id(record)]
                    if self.down is None:
                        self.sent.setdefault(node, {})[key] = target
                        continue
                    base = self.held.get(node, {}).get(key)
                    slot = (key, id(record), base)
                    if slot not in encoded:
                        encoded[slot] = self.encode_down(record, target, base, server_round)
                    new[key], versions[key] = encoded[slot]
                    self.sent.setdefault(node, {})[key] = self.replicas[versions[key]]
                if versions:
                    new[DOWN_KEY] = ConfigRecord(versions)
                    msg.content = replace_records(msg.content, new)
                    self.pending[node] = versions
            stats["bytes_down"] += message_nbytes(msg)
            stats["messages_down"] += 1
            out.append(msg)
        self.collect()
        return out

    def encode_down(self, record: ArrayRecord, target: Weights, base: int | None,
                    server_round: int) -> tuple[ArrayRecord, int]:
        """(the record to send, the replica version the node will hold)."""
        version, self.next_version = self.next_version, self.next_version + 1
        held = self.replicas.get(base) if base is not None else None
        if held is None or not held.matches(target):  # no replica there: the full model
            self.replicas[version] = Weights({n: t.clone() for n, t in target.tensors.items()},
                                             target.order, target.dtypes)
            return record, version
        encoder = Encoder(self.down)
        payloads = [encoder.encode(target.tensors[n] - held.tensors[n], n)
                    for n in held.tensors]
        blob = serialize_update(Update(node_id="server", tensors=payloads, round=server_round,
                                       seq=version, kind="delta", base_version=base))
        # the replica moves by exactly what the node decodes from these bytes
        delta = decode_update(parse_update(blob, self.limits)).params
        self.replicas[version] = Weights({n: held.tensors[n] + delta[n] for n in held.tensors},
                                         held.order, held.dtypes)
        _, raw = split_record(record)
        return blob_record(blob, raw), version

    def incoming(self, server_round: int, replies: Iterable[Message]) -> list[Message]:
        stats, out = self.stats(server_round), []
        waiting = set(self.pending)
        for reply in replies:
            stats["bytes_up"] += message_nbytes(reply)
            stats["messages_up"] += 1
            node = reply.metadata.src_node_id
            waiting.discard(node)
            if reply.has_error():
                self.forget(node)
                out.append(reply)
                continue
            if node in self.pending:
                self.held.setdefault(node, {}).update(self.pending.pop(node))
            try:
                decoded = self.decode_reply(reply, node)
            except Rejected as exc:
                log(WARNING, "thinwire: reply from node %s left out: %s", node, exc)
                stats["rejected"] += 1
                self.forget(node)
                continue
            stats["plain_up"] += message_nbytes(decoded)
            out.append(decoded)
        for node in waiting:  # sent, no reply: what it holds is unknown now
            self.forget(node)
        self.collect()
        return out

    def decode_reply(self, reply: Message, node: int) -> Message:
        new = {}
        for key, record in reply.content.array_records.items():
            got = read_blob_record(record)
            if got is None:
                continue
            blob, raw = got
            base = self.sent.get(node, {}).get(key)
            if base is None:
                raise Rejected(f"an update for '{key}' from a node that was sent no '{key}'")
            receiver = self.receivers.setdefault(key, Receiver(codec=self.codec,
                                                              limits=self.limits))
            receiver.layout = {n: (tuple(t.shape), "param") for n, t in base.tensors.items()}
            delta = receiver.receive(blob, peer=str(node)).tensors.params
            weights = {n: base.tensors[n] + delta[n] for n in base.tensors}
            new[key] = make_record(weights, raw, base.order, base.dtypes)
        if new:
            reply.content = replace_records(reply.content, new)
        return reply

    def forget(self, node: int) -> None:
        """What this node holds is unknown: it gets the full model next time."""
        self.held.pop(node, None)
        self.pending.pop(node, None)

    def collect(self) -> None:
        """Drop replicas no node holds or is about to hold."""
        live = {v for held in (*self.held.values(), *self.pending.values())
                for v in held.values()}
        for version in [v for v in self.replicas if v not in live]:
            del self.replicas[version]


__all__ = ["ThinwireStrategy", "Weights"]
