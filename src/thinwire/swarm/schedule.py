"""Who sends to whom at a step: every peer to every other (`exchange=all`), or gossip.

Gossip: each step draws K distinct shifts s in 1..N-1 from an RNG seeded by (seed, step);
peer i sends to (i + s) mod N and hears from (i - s) mod N. Every peer can compute every
other's targets, so each knows exactly whom to wait for, and every peer sends K updates and
receives K per step (in-degree = out-degree = K). The shifts change every step, so what one
peer learns reaches all within a few steps. The schedule ignores who is alive: a gone peer is
skipped, so peers that briefly disagree about who is alive still agree on whom to wait for.
"""

from __future__ import annotations

import random


class Schedule:
    def __init__(self, nodes: int, seed: int, fanout: int | None = None) -> None:
        """`fanout` None: all-to-all; else gossip to `fanout` peers per step."""
        if fanout is not None and not 1 <= fanout < nodes - 1:
            raise ValueError(f"gossip fanout {fanout} with {nodes} nodes: use 1..{nodes - 2}")
        self.nodes, self.seed, self.fanout = nodes, seed, fanout
        self._cached: tuple[int, list[int]] = (-1, [])

    @property
    def gossip(self) -> bool:
        return self.fanout is not None

    def shifts(self, step: int) -> list[int]:
        """This step's offsets from a sender to its receivers (the same on every peer)."""
        if self.fanout is None:
            return list(range(1, self.nodes))
        if self._cached[0] != step:
            rng = random.Random(f"thinwire-gossip:{self.seed}:{step}")
            self._cached = (step, sorted(rng.sample(range(1, self.nodes), self.fanout)))
        return self._cached[1]

    def targets(self, step: int, peer: int) -> set[int]:
        """The peers `peer` sends its update (or skip notice) of `step` to."""
        return {(peer + s) % self.nodes for s in self.shifts(step)}

    def sources(self, step: int, peer: int) -> set[int]:
        """The peers `peer` hears from at `step`, and waits for while they are alive."""
        return {(peer - s) % self.nodes for s in self.shifts(step)}


def step_bytes(schedule: Schedule, step: int, live: set[int], me: int,
               sizes: dict[int, int]) -> tuple[list[int], list[int]]:
    """Bytes each peer uploads and downloads at `step`, for the link model, from the update
    sizes this peer has (its own, the ones it heard). Each such sender uploads a copy per live
    receiver. Downloads: every live peer's all-to-all (all sizes are known here); in gossip only
    this peer's, so the time is what this peer's step waits for."""
    known = {me} if schedule.gossip else live
    sent = [sizes.get(j, 0) * len(schedule.targets(step, j) & live)
            for j in range(schedule.nodes)]
    received = [sum(b for k, b in sizes.items() if j in schedule.targets(step, k))
                if j in known else 0 for j in range(schedule.nodes)]
    return sent, received
