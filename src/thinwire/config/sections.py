"""Field groups every runtime shares, one meaning and one description per key.

A runtime's config inherits the groups it uses (multiple inheritance), so its keys stay flat
in YAML/JSON files; `laq` and `communication` are nested, as in the design's files. A runtime
changes a default with `redefault`, keeping the group's bounds, description and aliases.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, Field, model_validator
from pydantic.fields import FieldInfo

from .base import Strict


def redefault(group: type[BaseModel], name: str, default: Any) -> Any:
    """The group's field `name` with another default (for a runtime's class body)."""
    return FieldInfo.merge_field_infos(group.model_fields[name], default=default)


class TaskSection(Strict):
    """What to train on and with which model."""

    task: str = Field("mnist", description="mnist | cifar10 | synthetic | pkg.module:factory "
                      "(returns a Task or a (train, test) pair)")
    data_dir: Path | None = Field(None, description="dataset folder; default: the embedded 5k "
                                  "MNIST digits")
    download: bool = Field(False, description="fetch MNIST/CIFAR-10 (checksummed)")
    model: str | None = Field(None, description="mnist_cnn | mlp | resnet_cifar | "
                              "pkg.module:factory (default: the task's)")
    task_args: dict[str, Any] = Field(default_factory=dict, description="the task's options "
                                      "(synthetic: n_samples, num_classes, dim, ...) or the "
                                      "task factory's keyword arguments")
    split: str = Field("iid", description="iid | dirichlet:ALPHA | shards:K")
    seed: int = Field(0, description="seeds the split, the model and the batches")

    @model_validator(mode="after")
    def _check_split(self) -> "TaskSection":
        from ..tasks.split import parse_spec

        parse_spec(self.split)
        return self


class CodecSection(Strict):
    """How each update is compressed, up and down."""

    codec: str = Field("none", description="upload codec spec, e.g. "
                              "'topk(ratio=0.01)+int8' (list: thinwire codecs)")
    error_feedback: bool = Field(False, description="wrap lossy codecs in error feedback")
    down_codec: str = Field("none", description="codec for the aggregator's broadcast")

    @model_validator(mode="after")
    def _check_codecs(self) -> "CodecSection":
        from ..codecs import make_codec

        if self.codec is not None:
            make_codec(self.codec)
        make_codec(self.down_codec)
        return self


class Communication(Strict):
    """The design's dynamic trigger (`communication:` in its comm_config.yaml)."""

    grad_norm_threshold: float = Field(0.15, ge=0, description="trigger: send when the "
                                       "gradient norm moved this fraction since the last send")
    confidence_threshold: float = Field(0.7, ge=0, le=1, description="trigger: send when the "
                                        "mean softmax confidence is below this")
    sync_interval: int = Field(5, ge=1, description="trigger: send at least every this many "
                               "steps")


class LAQ(Strict):
    """The lazy rule of Sun et al. 2019 (upload iff the innovation is large, or on the clock)."""

    depth: int = Field(10, ge=1, description="D: model-change history length")
    xi: float | None = Field(None, gt=0, description="weight per history term (0.8/D)")
    t_bar: int = Field(100, ge=1, validation_alias=AliasChoices("t_bar", "clock"),
                       description="force an upload after this many skips (the clock)")
    thr_scale: float = Field(1.0, ge=0, description="lazy-rule threshold constant")
    warmup: int = Field(1, ge=0, description="steps (rounds) that always upload")


class PolicySection(Strict):
    """When a node sends."""

    policy: str = Field("always", description="always | every:K | trigger | laq")
    communication: Communication = Field(default_factory=Communication,
                                         description="the trigger's thresholds")
    laq: LAQ = Field(default_factory=LAQ, description="the lazy rule's constants")

    @model_validator(mode="after")
    def _check_policy(self) -> "PolicySection":
        from ..policy import make_policy

        make_policy(self.policy, self.communication.model_dump(), self.laq.model_dump())
        return self


class StrategySection(Strict):
    """How the aggregator combines what arrives."""

    aggregate: Literal["mean", "median", "trimmed_mean", "krum"] = Field(
        "mean", description="how contributions combine")
    weight: Literal["samples", "uniform", "confidence"] = Field(
        "samples", description="weight of each node in the mean")
    skipped: Literal["reuse", "drop", "accumulate"] = Field(
        "reuse", description="a skipped update: the aggregator reuses the node's last one, "
        "drops it, or the node sends it later added to its next (accumulate)")

    @model_validator(mode="after")
    def _check_strategy(self) -> "StrategySection":
        from ..strategy import check

        check(self.aggregate, self.weight, self.skipped)  # the strategy's own checks
        return self


class LinkSection(Strict):
    """The simulated network that turns bytes into seconds."""

    bandwidth: str = Field("10gbit", description="per-node link, e.g. 10gbit, 100mbit, or a "
                           "comma list (one per node)")
    downlink: str | None = Field(None, description="downlink bandwidth if different")
    latency_ms: float = Field(0.0, ge=0, description="one-way latency per message")
    topology: Literal["star", "ring"] = Field("star", description="aggregator star or "
                                              "ring all-reduce")


class OutputSection(Strict):
    """Where results, logs and checkpoints go."""

    out: Path = Field(Path("runs"), description="output folder (results.jsonl, run folders)")
    run_name: str | None = Field(None, description="default: built from the settings")
    checkpoint_every: int = Field(5, ge=0, description="epochs between checkpoints; 0 disables")
    resume: bool = Field(False, description="continue from the run's checkpoint")
    monitor_every: float = Field(1.0, ge=0, description="seconds between resource samples "
                                 "in events.jsonl (obs/monitor.py); 0 disables")
    tensorboard: Path | None = Field(None, description="also write loss, accuracy, bytes "
                                     "and uploads as TensorBoard scalars into PATH/<run> "
                                     '(pip install "thinwire[tensorboard]")')


class ServerSection(Strict):
    """What one client may make a coordinator hold (bodies, time)."""

    max_request_bytes: int = Field(256 << 20, ge=1024, description="largest update body")
    max_json_bytes: int = Field(64 << 10, ge=1024, description="largest body of the JSON "
                                "endpoints (register, skip, offer, ...)")
    request_timeout: float = Field(10.0, gt=0, description="seconds for a request's "
                                   "headers, and the longest silence inside a body")
    body_min_rate: int = Field(1024, ge=1, description="bytes/s a body must average "
                               "(after request_timeout) before it is cut off with 408")


SECTIONS: tuple[type[Strict], ...] = (TaskSection, CodecSection, PolicySection,
                                      StrategySection, LinkSection, OutputSection, LAQ,
                                      ServerSection)
