"""The swarm's config: every training key `thinwire run` takes (TrainingConfig) plus how the
peers reach each other and how long they wait for one another."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from ..codecs import build as build_codec
from ..codecs.differential import Differential
from ..config import build as build_model_config
from ..config import validate as validate_model
from ..config.training import TrainingConfig


class SwarmConfig(TrainingConfig):
    """Peers as OS processes exchanging updates over ZeroMQ, all-to-all or by gossip."""

    transport: Literal["ipc", "tcp"] = Field("ipc", description="ipc: unix sockets (one "
                                             "machine, lowest latency); tcp: 127.0.0.1 ports")
    host: str = Field("127.0.0.1", description="tcp: the address the launcher's peers bind")
    peer_timeout: float = Field(30.0, gt=0, description="seconds an awaited peer may stay "
                                "silent before the others carry on without it")
    startup_timeout: float = Field(180.0, gt=0, description="seconds to wait for every peer "
                                   "at the start (imports, data loading)")
    exchange: Literal["all", "gossip"] = Field(
        "all", description="all: each peer sends its update to every other, so all end each "
        "step with the same model (hash-checked); gossip: to --gossip-fanout peers a seeded "
        "schedule picks per step, averaging with the ones it hears from: models differ across "
        "peers, so there is no hash check and the row gives node-0's accuracy (the lowest "
        "finished peer's) and each peer's")
    gossip_fanout: int = Field(2, ge=1, description="gossip: peers each peer sends to, and "
                               "hears from, per step (below nodes-1)")
    hash_every: int = Field(10, ge=0, description="steps between model-hash checks "
                            "(0: only after membership changes and at the end; none in gossip)")
    chunk_bytes: int = Field(1 << 20, ge=1024, description="largest ZeroMQ message; "
                             "longer updates travel in chunks")
    hwm: int = Field(1000, ge=1, description="ZeroMQ high-water mark, messages per link")
    send_timeout: float = Field(60.0, gt=0, description="seconds a send may block at the "
                                "high-water mark before it fails")
    centralized: bool = Field(False, description="not for a swarm: the centralized baseline "
                              "is `thinwire run --centralized`")
    down_error_feedback: bool = Field(False, description="not for a swarm: there is no "
                                      "aggregator broadcast")
    node_batching: Literal["loop", "vmap"] = Field("loop", description="not for a swarm "
                                                   "(one node per process): loop only")

    @model_validator(mode="after")
    def _check_swarm(self) -> "SwarmConfig":
        if self.centralized:
            raise ValueError("centralized: a swarm has no central node; run the baseline "
                             "with `thinwire run --centralized`")
        if self.node_batching != "loop":
            raise ValueError("node_batching=vmap batches nodes inside one process; a swarm "
                             "peer is one node (use loop)")
        if self.down_codec != "none" or self.down_error_feedback:
            raise ValueError("down_codec / down_error_feedback: swarm peers average what they "
                             "receive, there is no aggregator broadcast to compress (use none)")
        if self.topology != "star":
            raise ValueError("topology=ring: the swarm exchanges peer to peer (use star, the "
                             "default; for large swarms, --exchange gossip)")
        if self.nodes < 2:
            raise ValueError("a swarm needs --nodes >= 2")
        if self.exchange == "gossip":
            self._check_gossip()
        return self

    def _check_gossip(self) -> None:
        """What gossip cannot do: reach everyone, or decode a sender it hears only now and
        then, or count a skipped update as zero in a mean over peers it never hears."""
        if self.gossip_fanout >= self.nodes - 1:
            lower = f" (or a fanout below {self.nodes - 1})" if self.nodes > 2 else ""
            raise ValueError(f"gossip_fanout={self.gossip_fanout} with {self.nodes} nodes: "
                             f"every peer would send to every other; use --exchange all{lower}")
        if differential(self.codec):
            raise ValueError(f"codec {self.codec}: its payloads are differences against the "
                             "receiver's last reconstruction, which a gossip receiver that "
                             "hears a sender only now and then does not have; use a stateless "
                             "codec (int8, topk, ...) or --exchange all")
        if self.skipped == "accumulate":
            raise ValueError("skipped=accumulate: a skipped update sent later would reach "
                             "other peers than the ones it skipped; use reuse or drop with "
                             "--exchange gossip")

    def name(self) -> str:
        return self.run_name or "swarm-" + super().name()

    def digest(self) -> str:
        """What peers compare at the start: the config without the keys that may differ
        between peers (resume, where files go, threads and waits of each machine)."""
        data = self.model_dump(mode="json", exclude={"resume", "out", "data_dir", "download",
                                                     "threads", "host", "startup_timeout"})
        text = json.dumps(data, sort_keys=True)
        return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def differential(spec: str) -> bool:
    """Whether a stage of the codec decodes against per-sender state (laq, bbit, bin)."""
    codec = build_codec(spec)
    while codec is not None:
        if isinstance(codec, Differential):
            return True
        codec = codec.inner
    return False


def build_config(file: Path | None = None, flags: dict[str, Any] | None = None,
                 sets: list[str] | None = None) -> SwarmConfig:
    """File < flags < --set; one ConfigError line on any problem."""
    return build_model_config(SwarmConfig, file, flags, sets)


def validate(data: dict[str, Any]) -> SwarmConfig:
    return validate_model(SwarmConfig, data)
