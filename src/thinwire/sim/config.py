"""Experiment configuration: flags, a YAML/JSON file (`-c`) and `--set key=value` overrides,
validated by pydantic into one `RunConfig`. Every mistake becomes one ConfigError line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import ConfigError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class Communication(Strict):
    """The design's trigger (configs/comm_config.yaml: `communication:`)."""
    grad_norm_threshold: float = Field(0.15, ge=0)
    confidence_threshold: float = Field(0.7, ge=0, le=1)
    sync_interval: int = Field(5, ge=1)


class LAQ(Strict):
    depth: int = Field(10, ge=1, description="D: model-change history length")
    xi: float | None = Field(None, gt=0, description="weight per history term (0.8/D)")
    t_bar: int = Field(100, ge=1, description="force an upload after this many skips")
    thr_scale: float = Field(1.0, ge=0)
    warmup: int = Field(1, ge=0)


class RunConfig(Strict):
    run_name: str | None = None
    task: str = "mnist"
    data_dir: Path | None = None
    download: bool = False
    model: str | None = None
    nodes: int = Field(4, ge=1, le=1024)
    split: str = "iid"
    mode: Literal["sync", "fedavg"] = "sync"
    local_steps: int = Field(5, ge=1, description="fedavg: local SGD steps per round")
    codec: str = "none"
    error_feedback: bool = False
    down_codec: str = "none"
    policy: str = "always"
    skipped: Literal["reuse", "drop", "accumulate"] = "reuse"
    weight: Literal["samples", "uniform", "confidence"] = "samples"
    aggregate: Literal["mean", "median", "trimmed_mean", "krum"] = "mean"
    communication: Communication = Field(default_factory=Communication)
    laq: LAQ = Field(default_factory=LAQ)
    epochs: int = Field(3, ge=1)
    max_steps: int | None = Field(None, ge=1, description="stop after this many steps (tests)")
    batch_size: int = Field(64, ge=1, description="per node")
    lr: float = Field(0.05, gt=0)
    lr_schedule: Literal["constant", "step", "cosine"] = "constant"
    lr_milestones: list[int] = Field(default_factory=list,
                                     description="step schedule: epochs where lr *= lr_gamma")
    lr_gamma: float = Field(0.1, gt=0, le=1)
    lr_warmup: int = Field(0, ge=0, description="steps of linear lr warm-up")
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    seed: int = 0
    bandwidth: str = "10gbit"
    downlink: str | None = None
    latency_ms: float = Field(0.0, ge=0)
    topology: Literal["star", "ring"] = "star"
    centralized: bool = False
    node_batching: Literal["loop", "vmap"] = "loop"
    pack: bool = Field(False, description="one flat tensor per message: one payload, "
                       "global top-k, no per-tensor metadata")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads")
    out: Path = Path("runs")
    checkpoint_every: int = Field(5, ge=0, description="epochs; 0 disables")
    resume: bool = False
    task_args: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_specs(self) -> "RunConfig":
        from ..strategy import check as check_strategy
        from ..codecs import make_codec
        from ..policy import make_policy
        from .link import LinkModel

        make_codec(self.codec)
        make_codec(self.down_codec)
        make_policy(self.policy, self.communication.model_dump(), self.laq.model_dump())
        LinkModel.build(self.nodes, self.bandwidth, self.downlink, self.latency_ms)
        check_strategy(self.aggregate, self.weight, self.skipped)
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
        extras = "".join(f"-{tag}" for tag, on in (
            ("pack", self.pack), (self.skipped, self.skipped != "reuse"),
            (f"lr{self.lr_schedule}", self.lr_schedule != "constant")) if on)
        return f"{self.mode}-{self.codec}{ef}-{self.policy}{extras}-s{self.seed}"


def load_file(path: Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    try:
        data = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise ConfigError(f"config {path} is not valid YAML/JSON: {exc}".replace("\n", " "))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping of keys to values")
    return data


def apply_set(data: dict[str, Any], assignment: str) -> None:
    """`--set communication.sync_interval=3` (values parsed as YAML scalars)."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected key=value")
    key, raw = assignment.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    node = data
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: {part} is not a section")
    node[parts[-1]] = value


def build_config(file: Path | None = None, flags: dict[str, Any] | None = None,
                 sets: list[str] | None = None) -> RunConfig:
    """File < flags < --set; raise one ConfigError line on any problem."""
    data: dict[str, Any] = load_file(file) if file else {}
    for key, value in (flags or {}).items():
        if value is not None:
            data[key] = value
    for assignment in sets or []:
        apply_set(data, assignment)
    return validate(data)


def validate(data: dict[str, Any]) -> RunConfig:
    try:
        return RunConfig(**data)
    except ValidationError as exc:
        raise ConfigError(describe(exc)) from None


def describe(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "config"
        if err["type"] == "extra_forbidden":
            problems.append(f"unknown key '{key}'")
        elif err["type"] == "value_error" and "ctx" in err:
            problems.append(str(err["ctx"].get("error", err["msg"])))
        else:
            problems.append(f"{key}={err.get('input')!r}: {err['msg']}")
    return "bad config: " + "; ".join(problems)
