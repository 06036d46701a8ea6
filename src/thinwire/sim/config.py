"""The simulator's `RunConfig`: the shared sections (task, codec, policy, strategy, link,
output) plus the simulator's own training keys. Flags, a YAML/JSON file (`-c`) and
`--set key=value` overrides build it; every mistake becomes one ConfigError line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from ..config import (LAQ, CodecSection, Communication, LinkSection, OutputSection,
                      PolicySection, StrategySection, TaskSection)
from ..config import build as build_model_config
from ..config import validate as validate_model
from ..config.base import apply_set, describe, load_file

__all__ = ["LAQ", "Communication", "RunConfig", "apply_set", "build_config", "describe",
           "load_file", "validate"]


class RunConfig(TaskSection, CodecSection, PolicySection, StrategySection, LinkSection,
                OutputSection):
    """The simulator: N nodes in one process over a modelled link."""

    nodes: int = Field(4, ge=1, le=1024, description="number of nodes")
    mode: Literal["sync", "fedavg"] = Field("sync", description="sync: data-parallel SGD, "
                                            "every step; fedavg: local steps, then deltas")
    local_steps: int = Field(5, ge=1, description="fedavg: local SGD steps per round")
    outer_steps: int | None = Field(None, ge=1, description="DiLoCo: H local steps, then the "
                                    "pseudo-gradient through an outer Nesterov SGD (sets "
                                    "mode fedavg, local_steps H; outer lr 0.7, momentum 0.9 "
                                    "unless given)")
    outer_lr: float = Field(1.0, gt=0, description="fedavg/DiLoCo outer step size (1: FedAvg)")
    outer_momentum: float = Field(0.0, ge=0, lt=1, description="outer Nesterov momentum")
    down_error_feedback: bool = Field(False, description="the aggregator keeps the residual "
                                      "of its lossy broadcast and adds it to the next one "
                                      "(error feedback on the server, as in DoubleSqueeze)")
    centralized: bool = Field(False, description="one node, all data, no communication "
                              "(the baseline)")
    epochs: int = Field(3, ge=1, description="passes over the training data")
    max_steps: int | None = Field(None, ge=1, description="stop after this many steps (tests)")
    batch_size: int = Field(64, ge=1, description="per node")
    lr: float = Field(0.05, gt=0, description="learning rate")
    lr_schedule: Literal["constant", "step", "cosine"] = Field(
        "constant", description="step: x lr_gamma at lr_milestones (default: the last "
        "epoch); cosine: anneal to 0")
    lr_milestones: list[int] = Field(default_factory=list,
                                     description="step schedule: epochs where lr *= lr_gamma")
    lr_gamma: float = Field(0.1, gt=0, le=1, description="step schedule's factor")
    lr_warmup: int = Field(0, ge=0, description="steps of linear lr warm-up")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    weight_decay: float = Field(0.0, ge=0, description="SGD weight decay")
    node_batching: Literal["loop", "vmap"] = Field(
        "loop", description="vmap: all nodes' gradients in one batched call")
    pack: bool = Field(False, description="one flat tensor per message: one payload, "
                       "global top-k, no per-tensor metadata")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads "
                                "(default: torch's)")

    @model_validator(mode="before")
    @classmethod
    def _outer_steps(cls, data: Any) -> Any:
        """`outer_steps: H` is DiLoCo's preset: fedavg with H local steps and an outer
        Nesterov SGD (lr 0.7, momentum 0.9) unless the config says otherwise."""
        if isinstance(data, dict) and data.get("outer_steps") is not None:
            data = {"outer_lr": 0.7, "outer_momentum": 0.9, **data, "mode": "fedavg",
                    "local_steps": data["outer_steps"]}
        return data

    @model_validator(mode="after")
    def _check_run(self) -> "RunConfig":
        from .link import LinkModel

        LinkModel.build(self.nodes, self.bandwidth, self.downlink, self.latency_ms)
        if self.skipped == "accumulate" and self.policy == "laq":
            raise ValueError("skipped=accumulate does not fit policy laq: LAQ measures "
                             "innovation against the reused last upload; use reuse")
        if any(m < 1 for m in self.lr_milestones):
            raise ValueError(f"lr_milestones={self.lr_milestones}: epochs count from 1")
        return self

    def name(self) -> str:
        if self.run_name:
            return self.run_name
        if self.centralized:
            return f"centralized-s{self.seed}"
        from ..codecs import build

        ef = "+ef" if self.error_feedback and build(self.codec).lossy else ""
        down = build(self.down_codec)
        extras = "".join(f"-{tag}" for tag, on in (
            (f"down-{self.down_codec}" + ("+ef" if self.down_error_feedback else ""),
             self.down_codec != "none" and down.lossy),
            ("pack", self.pack), (self.skipped, self.skipped != "reuse"),
            (f"lr{self.lr_schedule}", self.lr_schedule != "constant"),
            (f"H{self.local_steps}-outer{self.outer_lr:g}m{self.outer_momentum:g}",
             self.mode == "fedavg" and (self.outer_lr, self.outer_momentum) != (1.0, 0.0)))
            if on)
        return f"{self.mode}-{self.codec}{ef}-{self.policy}{extras}-s{self.seed}"


def build_config(file: Path | None = None, flags: dict[str, Any] | None = None,
                 sets: list[str] | None = None) -> RunConfig:
    """File < flags < --set; raise one ConfigError line on any problem."""
    return build_model_config(RunConfig, file, flags, sets)


def validate(data: dict[str, Any]) -> RunConfig:
    return validate_model(RunConfig, data)
