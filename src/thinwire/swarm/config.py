"""The swarm's config: every training key `thinwire run` takes (TrainingConfig) plus how the
peers reach each other and how long they wait for one another."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from ..config import build as build_model_config
from ..config import validate as validate_model
from ..config.training import TrainingConfig


class SwarmConfig(TrainingConfig):
    """Peers as OS processes exchanging updates all-to-all over ZeroMQ."""

    transport: Literal["ipc", "tcp"] = Field("ipc", description="ipc: unix sockets (one "
                                             "machine, lowest latency); tcp: 127.0.0.1 ports")
    host: str = Field("127.0.0.1", description="tcp: the address the launcher's peers bind")
    peer_timeout: float = Field(30.0, gt=0, description="seconds an awaited peer may stay "
                                "silent before the others carry on without it")
    startup_timeout: float = Field(180.0, gt=0, description="seconds to wait for every peer "
                                   "at the start (imports, data loading)")
    hash_every: int = Field(10, ge=0, description="steps between model-hash checks "
                            "(0: only after membership changes and at the end)")
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
            raise ValueError("topology=ring: the swarm exchanges all-to-all (use star, the "
                             "default; its link model is used per peer)")
        if self.nodes < 2:
            raise ValueError("a swarm needs --nodes >= 2")
        return self

    def name(self) -> str:
        return self.run_name or "swarm-" + super().name()

    def digest(self) -> str:
        """What peers compare at the start: the config without the keys that may differ
        between peers (resume, where files go, threads and waits of each machine)."""
        data = self.model_dump(mode="json", exclude={"resume", "out", "data_dir", "download",
                                                     "threads", "host", "startup_timeout"})
        text = json.dumps(data, sort_keys=True)
        return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def build_config(file: Path | None = None, flags: dict[str, Any] | None = None,
                 sets: list[str] | None = None) -> SwarmConfig:
    """File < flags < --set; one ConfigError line on any problem."""
    return build_model_config(SwarmConfig, file, flags, sets)


def validate(data: dict[str, Any]) -> SwarmConfig:
    return validate_model(SwarmConfig, data)
