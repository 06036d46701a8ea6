"""What every training runtime shares beyond the sections: the training keys (`TrainSection`),
the config built from all of them (`TrainingConfig`, which the simulator's `RunConfig` and the
swarm's config extend), and what follows from those keys: the learning rate of a step, the
steps of an epoch, and each node's `Sender` (codec and policy).

The learning rate is a pure function of the step, so a resumed run, a rejoining peer and every
runtime replay it exactly.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, model_validator

from ..codecs import Encoder, make_codec
from ..exchange import Sender
from ..exchange.link import LinkModel
from ..policy import ModelDiffHistory, SendPolicy, make_policy
from .base import NEGATABLE, Strict
from .sections import (CodecSection, LinkSection, OutputSection, PolicySection, StrategySection,
                       TaskSection)


class TrainSection(Strict):
    """How nodes train: steps, batches, learning rate and its schedule, optimizer."""

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
    pack: bool = Field(False, description="one flat tensor per message: one payload, "
                       "global top-k, no per-tensor metadata", json_schema_extra=NEGATABLE)
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
    def _check_milestones(self) -> "TrainSection":
        if any(m < 1 for m in self.lr_milestones):
            raise ValueError(f"lr_milestones={self.lr_milestones}: epochs count from 1")
        return self


class TrainingConfig(TaskSection, CodecSection, PolicySection, StrategySection, LinkSection,
                     OutputSection, TrainSection):
    """Every key a training runtime takes; runtimes add their own."""

    @model_validator(mode="after")
    def _check_training(self) -> "TrainingConfig":
        LinkModel.build(self.nodes, self.bandwidth, self.downlink, self.latency_ms)
        if self.skipped == "accumulate" and self.policy == "laq":
            raise ValueError("skipped=accumulate does not fit policy laq: LAQ measures "
                             "innovation against the reused last upload; use reuse")
        return self

    def name(self) -> str:
        """The run's name (its folder under `out`): `run_name`, else built from the settings."""
        return self.run_name or self.built_name()

    def built_name(self, down_error_feedback: bool = False, tags: str = "") -> str:
        from ..codecs import build

        ef = "+ef" if self.error_feedback and build(self.codec).lossy else ""
        down = build(self.down_codec)
        extras = "".join(f"-{tag}" for tag, on in (
            (f"down-{self.down_codec}" + ("+ef" if down_error_feedback else ""),
             self.down_codec != "none" and down.lossy),
            ("pack", self.pack), (self.skipped, self.skipped != "reuse"),
            (f"lr{self.lr_schedule}", self.lr_schedule != "constant"),
            (f"H{self.local_steps}-outer{self.outer_lr:g}m{self.outer_momentum:g}",
             self.mode == "fedavg" and (self.outer_lr, self.outer_momentum) != (1.0, 0.0)))
            if on)
        return f"{self.mode}-{self.codec}{ef}-{self.policy}{extras}{tags}-s{self.seed}"


def lr_at(cfg: TrainSection, step: int, steps_per_epoch: int) -> float:
    """`constant`; `step`: times lr_gamma at each epoch in lr_milestones (default: the last
    epoch); `cosine`: half a cosine from lr to 0 over the run. `lr_warmup` steps ramp it up
    linearly first (sparsified updates suffer most from a large early lr)."""
    base = _scheduled(cfg, step, steps_per_epoch)
    if step < cfg.lr_warmup:
        return base * (step + 1) / cfg.lr_warmup
    return base


def _scheduled(cfg: TrainSection, step: int, steps_per_epoch: int) -> float:
    if cfg.lr_schedule == "constant":
        return cfg.lr
    if cfg.lr_schedule == "step":
        epoch = step // max(steps_per_epoch, 1)
        milestones = cfg.lr_milestones or [cfg.epochs - 1]
        return cfg.lr * cfg.lr_gamma ** sum(epoch >= m for m in milestones if m > 0)
    total = max(cfg.epochs * steps_per_epoch, 1)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


def steps_per_epoch(train_size: int, batch: int, nodes: int, local_steps: int = 1) -> int:
    """Steps (sync) or rounds (fedavg: `local_steps` batches each) for one pass of the data
    over `nodes` nodes."""
    return max(1, math.ceil(train_size / (batch * nodes * local_steps)))


def policy_alpha(cfg: TrainingConfig, lr: float) -> float:
    """LAQ's step is theta -= alpha * sum_m g_m. Ours is the mean over M nodes of lr * grad
    (sync, alpha = lr/M) or of deltas that already include lr (fedavg, alpha = 1/M), so its
    threshold scale 1/(alpha^2 M^2) is 1/lr^2 or 1."""
    return (lr if cfg.mode == "sync" else 1.0) / cfg.nodes


def make_sender(cfg: TrainingConfig, node_id: str, history: ModelDiffHistory,
                momentum: float = 0.0) -> Sender:
    """A node's Sender: the config's codec (with error feedback if asked; `momentum` > 0:
    with momentum correction on the node) and policy."""
    policy = make_policy(cfg.policy, cfg.communication.model_dump(), cfg.laq.model_dump(),
                         history, alpha=policy_alpha(cfg, cfg.lr), workers=cfg.nodes)
    codec = make_codec(cfg.codec, cfg.error_feedback, momentum=momentum)
    return Sender(node_id, Encoder(codec), policy, accumulate=cfg.skipped == "accumulate")


def set_step_lr(cfg: TrainingConfig, lr: float, optimizer, policies: list[SendPolicy]) -> None:
    """This step's lr into the optimizer and into LAQ's threshold (alpha = lr/M), before the
    exchange: LAQ decides with the step it is about to take."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    for policy in policies:
        if hasattr(policy, "alpha"):
            policy.alpha = policy_alpha(cfg, lr)


def run_common(cfg: TrainingConfig, model: str, nodes: int, codec: str, last: dict[str, Any],
               centralized: bool = False) -> dict[str, Any]:
    """The common keys of a results row (obs/record.py) that come from the config and the
    last epoch; a centralized baseline has no codec, policy or split."""
    return {
        "run_name": cfg.name(), "task": cfg.task, "model": model, "nodes": nodes,
        "split": cfg.split if not centralized else "centralized",
        "mode": "centralized" if centralized else cfg.mode,
        "codec": codec, "codec_config": "-" if centralized else cfg.codec,
        "down_codec": cfg.down_codec, "error_feedback": cfg.error_feedback and not centralized,
        "policy": "-" if centralized else cfg.policy, "seed": cfg.seed,
        "test_accuracy": last["test_accuracy"], "test_loss": last["test_loss"],
        "train_loss": last["train_loss"],
    }


def run_extras(cfg: TrainingConfig, records: list[dict[str, Any]], steps: int, wire_total: int,
               comm_time: float, compute_time: float, elapsed: float,
               samples: int) -> dict[str, Any]:
    """The training keys of a results row: epochs, steps, bytes per epoch, times, speed."""
    return dict(epochs=len(records), steps=steps, batch_size=cfg.batch_size, lr=cfg.lr,
                lr_schedule=cfg.lr_schedule, pack=cfg.pack,
                bytes_per_epoch=wire_total / max(len(records), 1), bandwidth=cfg.bandwidth,
                comm_time_s_sim=comm_time, compute_time_s=compute_time,
                wall_time_s=comm_time + compute_time, train_time_s=elapsed,
                samples_per_s=samples / compute_time if compute_time else None)
