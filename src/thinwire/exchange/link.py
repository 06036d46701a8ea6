"""Link model: how long a set of transfers would take on links of given bandwidth and latency.

Star topology (every node talks to an aggregator over its own uplink/downlink): a step's
communication time is the slowest node's upload plus the slowest node's download. Peer to peer
(a swarm on full-duplex links): every peer uploads its copies while it downloads the others',
so the exchange lasts as long as the slowest peer's longer direction. A ring all-reduce formula
is available for dense synchronous training.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import ConfigError

_UNITS = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_RATE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?\d+)?)\s*([kmgt]?)(bit|bps|b/s|byte/s|bytes/s|"
                   r"b|B/s|Bps)?\s*$", re.I)


def parse_bandwidth(text: str | float | int) -> float:
    """'10gbit', '100mbit', '1Gbps', '12.5MB/s', or a number of bits/s -> bits per second."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        match = _RATE.match(str(text))
        if not match:
            raise ConfigError(f"bandwidth {text!r} not understood; use e.g. 10gbit, 100mbit, "
                              "1Gbps or 12.5MB/s")
        number, prefix, unit = match.groups()
        unit = unit or ""
        bytes_unit = unit in ("B", "B/s", "Bps") or "byte" in unit.lower()
        value = float(number) * _UNITS[prefix.lower()] * (8 if bytes_unit else 1)
    if value <= 0:
        raise ConfigError(f"bandwidth must be positive, got {text!r}")
    return value


@dataclass(frozen=True)
class Link:
    up_bps: float = 10e9
    down_bps: float = 10e9
    latency_s: float = 0.0

    def up_time(self, nbytes: int) -> float:
        return self.latency_s + 8.0 * nbytes / self.up_bps if nbytes else 0.0

    def down_time(self, nbytes: int) -> float:
        return self.latency_s + 8.0 * nbytes / self.down_bps if nbytes else 0.0


class LinkModel:
    """Per-node links to the aggregator."""

    def __init__(self, links: list[Link], topology: str = "star") -> None:
        if topology not in ("star", "ring"):
            raise ConfigError(f"topology {topology!r}: use star or ring")
        self.links = links
        self.topology = topology

    @classmethod
    def build(cls, nodes: int, bandwidth: str, downlink: str | None = None,
              latency_ms: float = 0.0, topology: str = "star") -> "LinkModel":
        ups = _per_node(bandwidth, nodes)
        downs = _per_node(downlink, nodes) if downlink else ups
        links = [Link(u, d, latency_ms / 1e3) for u, d in zip(ups, downs)]
        return cls(links, topology)

    def step_time(self, up_bytes: list[int], down_bytes: list[int]) -> float:
        """Seconds for one exchange: slowest upload, then slowest download (star)."""
        up = max((lk.up_time(b) for lk, b in zip(self.links, up_bytes)), default=0.0)
        down = max((lk.down_time(b) for lk, b in zip(self.links, down_bytes)), default=0.0)
        return up + down

    def exchange_time(self, sent: list[int], received: list[int]) -> float:
        """Seconds for a peer-to-peer exchange on full-duplex links: peer i uploads `sent[i]`
        bytes (every copy it sends shares its uplink) while it downloads `received[i]`, so the
        two directions overlap; the slowest peer's longer one decides (latency counted once)."""
        return max((max(lk.up_time(s), lk.down_time(r))
                    for lk, s, r in zip(self.links, sent, received)), default=0.0)

    def ring_allreduce_time(self, nbytes: int) -> float:
        """Bandwidth-optimal ring all-reduce of `nbytes` per node: 2(N-1)/N * bytes / B."""
        n = len(self.links)
        if n < 2 or not nbytes:
            return 0.0
        slowest = min(min(lk.up_bps, lk.down_bps) for lk in self.links)
        latency = max(lk.latency_s for lk in self.links)
        return 2 * (n - 1) * (nbytes / n * 8.0 / slowest + latency)


def _per_node(spec: str, nodes: int) -> list[float]:
    parts = [p for p in str(spec).split(",") if p.strip()]
    if len(parts) == 1:
        return [parse_bandwidth(parts[0])] * nodes
    if len(parts) != nodes:
        raise ConfigError(f"{len(parts)} bandwidths given for {nodes} nodes; give one for all "
                          "or one per node")
    return [parse_bandwidth(p) for p in parts]
