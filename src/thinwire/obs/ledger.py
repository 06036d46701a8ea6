"""One byte ledger per link: (src, dst, kind) -> wire bytes, raw bytes and message count.

Transports feed it (every byte they move is recorded where it moved); runtimes read totals.
`kind` says what the bytes were: `payload` (tensor updates and models), `control`
(register/skip/offer/acks), `padding` (collective all-gather padding) or `index`.

`raw` counts what a dense fp32 always-send exchange would have moved for every upload
opportunity (sent or skipped), so `up_raw / up_wire` is the uplink saving of codec and policy
together (see obs/record.py for the three compression ratios).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

HUB = "aggregator"
KINDS = ("payload", "control", "padding", "index")


@dataclass
class LinkBytes:
    wire: int = 0
    raw: int = 0
    messages: int = 0


@dataclass
class NodeCounts:
    skipped: int = 0
    skipped_raw: int = 0


@dataclass
class LinkLedger:
    """Bytes per link. A link whose `src` is the hub is downlink, any other is uplink."""

    hub: str = HUB
    links: dict[tuple[str, str, str], LinkBytes] = field(default_factory=dict)
    nodes: dict[str, NodeCounts] = field(default_factory=dict)
    epochs: list[dict[str, int]] = field(default_factory=list)
    _epoch_start: dict[str, int] = field(default_factory=dict)

    def record(self, src: str, dst: str, wire: int, raw: int = 0,
               kind: str = "payload") -> None:
        if kind not in KINDS:
            raise ValueError(f"ledger kind {kind!r}: use one of {KINDS}")
        link = self.links.setdefault((src, dst, kind), LinkBytes())
        link.wire += int(wire)
        link.raw += int(raw)
        link.messages += 1

    # ---- the star view the simulator and the service use ---------------------------------
    def upload(self, node_id: str, raw: int, wire: int) -> None:
        self.record(node_id, self.hub, wire, raw)

    def skip(self, node_id: str, raw: int) -> None:
        """An upload opportunity not taken: its dense size still counts as raw."""
        counts = self.nodes.setdefault(node_id, NodeCounts())
        counts.skipped += 1
        counts.skipped_raw += int(raw)

    def download(self, node_id: str, raw: int, wire: int) -> None:
        self.record(self.hub, node_id, wire, raw)

    def control(self, src: str, dst: str, wire: int) -> None:
        self.record(src, dst, wire, 0, "control")

    def totals(self) -> dict[str, int]:
        out = {"up_raw": 0, "up_wire": 0, "down_raw": 0, "down_wire": 0, "control": 0,
               "sent": 0}
        for (src, _, kind), b in self.links.items():
            if kind == "control":
                out["control"] += b.wire
                continue
            side = "down" if src == self.hub else "up"
            out[f"{side}_raw"] += b.raw
            out[f"{side}_wire"] += b.wire
            out["sent"] += b.messages if side == "up" else 0
        out["up_raw"] += sum(c.skipped_raw for c in self.nodes.values())
        out["skipped"] = sum(c.skipped for c in self.nodes.values())
        return out

    def per_link(self) -> list[dict]:
        return [{"src": s, "dst": d, "kind": k, **asdict(b)}
                for (s, d, k), b in sorted(self.links.items())]

    def close_epoch(self) -> dict[str, int]:
        """Record and return this epoch's totals (differences since the last close)."""
        now = self.totals()
        row = {k: v - self._epoch_start.get(k, 0) for k, v in now.items()}
        self._epoch_start = now
        self.epochs.append(row)
        return row

    @property
    def wire_total(self) -> int:
        t = self.totals()
        return t["up_wire"] + t["down_wire"]

    @property
    def raw_total(self) -> int:
        t = self.totals()
        return t["up_raw"] + t["down_raw"]

    def absorb(self, other: "LinkLedger") -> None:
        """Add another ledger's links and skips (a swarm adds up its peers' ledgers)."""
        for key, b in other.links.items():
            mine = self.links.setdefault(key, LinkBytes())
            mine.wire, mine.raw, mine.messages = (mine.wire + b.wire, mine.raw + b.raw,
                                                  mine.messages + b.messages)
        for node, c in other.nodes.items():
            mine_c = self.nodes.setdefault(node, NodeCounts())
            mine_c.skipped += c.skipped
            mine_c.skipped_raw += c.skipped_raw

    @classmethod
    def from_state(cls, state: dict) -> "LinkLedger":
        ledger = cls()
        ledger.load_state_dict(state)
        return ledger

    def state_dict(self) -> dict:
        return {"links": [[list(k), asdict(v)] for k, v in self.links.items()],
                "nodes": {k: asdict(v) for k, v in self.nodes.items()},
                "epochs": self.epochs, "epoch_start": self._epoch_start, "hub": self.hub}

    def load_state_dict(self, state: dict) -> None:
        self.links = {tuple(k): LinkBytes(**v) for k, v in state["links"]}
        self.nodes = {k: NodeCounts(**v) for k, v in state["nodes"].items()}
        self.epochs = list(state["epochs"])
        self._epoch_start = dict(state["epoch_start"])
        self.hub = state.get("hub", HUB)
