"""A peer's state: what it hands to a rejoining or diverged peer, and its checkpoint.

The shared part (model, optimizer, strategy, LAQ history, decoders, step, epoch, records) is
the same on every peer in sync mode all-to-all, so any live peer can hand it over, as
hivemind's `load_state_from_peers` does (gossip: the handing peer's own, one of several). A checkpoint adds what is the peer's own (its Sender, its data
stream, ledger, counters, RNG). Both travel as a state blob (wire/state.py): no pickle.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..tasks.step import stream_at
from ..wire.state import decode_state, encode_state

if TYPE_CHECKING:
    from .peer import Peer


def optimizer_state(tree: dict[str, Any]) -> dict[str, Any]:
    """An optimizer state dict back from JSON, whose keys are strings: torch matches the
    per-parameter state by the integer ids in param_groups."""
    return {"state": {int(k): v for k, v in tree["state"].items()},
            "param_groups": tree["param_groups"]}


class PeerState:
    def __init__(self, peer: "Peer") -> None:
        self.peer = peer

    @property
    def path(self) -> Path:
        return self.peer.dir / "checkpoint.safetensors"

    # ---- handed over --------------------------------------------------------------------
    def shared(self) -> dict[str, Any]:
        p = self.peer
        return {"model": p.model.state_dict(), "opt": p.opt.state_dict(),
                "strategy": p.strategy.state_dict(), "outer": p.outer.state_dict(),
                "history": p.history.state_dict(),
                "receiver": p.receiver.state_dict(), "step": p.step, "epoch": p.epoch,
                "records": p.records, "comm_time_s_sim": p.counts["comm_time_s_sim"]}

    def load_shared(self, tree: dict[str, Any], rejoin: bool) -> None:
        """Take over a live peer's state; a rejoining peer also takes its place in the run
        (step, epoch, records) and draws the batches it would have drawn by now."""
        p = self.peer
        p.model.load_state_dict(tree["model"])
        p.opt.load_state_dict(optimizer_state(tree["opt"]))
        p.strategy.load_state_dict(tree["strategy"])
        p.outer.load_state_dict(optimizer_state(tree["outer"]))
        p.history.load_state_dict(tree["history"])
        p.receiver.load_state_dict(tree["receiver"])
        p.strategy.expected_nodes = len(p.net.live)
        p.step, p.epoch = int(tree["step"]), int(tree["epoch"])
        if rejoin:
            p.receiver.forget(p.name)  # our encoder starts afresh
            p.records = list(tree["records"])
            p.counts["comm_time_s_sim"] = float(tree["comm_time_s_sim"])
            p.joined_at = p.step
            stream_at(p.stream, p.cfg.batch_size, p.step * p.local)

    # ---- own checkpoint -----------------------------------------------------------------
    def save_checkpoint(self) -> None:
        p = self.peer
        tree = {**self.shared(), "sender": p.sender.state_dict(),
                "stream": p.stream.state_dict(), "ledger": p.ledger.state_dict(),
                "counts": p.counts, "rng": torch.get_rng_state(),
                "departures": p.net.departures, "arrivals": p.net.arrivals}
        data, _ = encode_state(tree)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, self.path)

    def try_resume(self) -> bool:
        if not self.path.exists():
            return False
        p = self.peer
        tree = decode_state(self.path.read_bytes())
        self.load_shared(tree, rejoin=False)
        p.records = list(tree["records"])
        p.sender.load_state_dict(tree["sender"])
        p.stream.load_state_dict(tree["stream"])
        p.ledger.load_state_dict(tree["ledger"])
        p.counts.update(tree["counts"])
        p.net.departures, p.net.arrivals = list(tree["departures"]), list(tree["arrivals"])
        torch.set_rng_state(tree["rng"])
        return True
