"""Byte ledger: raw (dense fp32) and wire (serialized protobuf) bytes, up and down, per node.

`raw` counts what a dense fp32 always-send exchange would have moved for every upload
opportunity (sent or skipped), so `up_raw / up_wire` (the reported compression ratio) is the
uplink saving of codec and policy together; the downlink is reported separately.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class NodeBytes:
    up_raw: int = 0
    up_wire: int = 0
    down_raw: int = 0
    down_wire: int = 0
    sent: int = 0
    skipped: int = 0


@dataclass
class Ledger:
    nodes: dict[str, NodeBytes] = field(default_factory=dict)
    epochs: list[dict[str, int]] = field(default_factory=list)
    _epoch_start: dict[str, int] = field(default_factory=dict)

    def node(self, node_id: str) -> NodeBytes:
        return self.nodes.setdefault(node_id, NodeBytes())

    def upload(self, node_id: str, raw: int, wire: int) -> None:
        n = self.node(node_id)
        n.up_raw += raw
        n.up_wire += wire
        n.sent += 1

    def skip(self, node_id: str, raw: int) -> None:
        n = self.node(node_id)
        n.up_raw += raw
        n.skipped += 1

    def download(self, node_id: str, raw: int, wire: int) -> None:
        n = self.node(node_id)
        n.down_raw += raw
        n.down_wire += wire

    def totals(self) -> dict[str, int]:
        keys = NodeBytes.__dataclass_fields__
        return {k: sum(getattr(n, k) for n in self.nodes.values()) for k in keys}

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

    def state_dict(self) -> dict:
        return {"nodes": {k: asdict(v) for k, v in self.nodes.items()}, "epochs": self.epochs,
                "epoch_start": self._epoch_start}

    def load_state_dict(self, state: dict) -> None:
        self.nodes = {k: NodeBytes(**v) for k, v in state["nodes"].items()}
        self.epochs = list(state["epochs"])
        self._epoch_start = dict(state["epoch_start"])
