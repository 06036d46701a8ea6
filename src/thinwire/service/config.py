"""FLQ service configuration: the design's flq_config.json keys plus the service's own.

    {"total_workers": 4, "max_rounds": 100, "batch_size": 32, "preset": "laq8", "b_up": 8}

`preset` (the design's `mode`, still accepted) picks the upload codec and whether the lazy
(LAQ) rule runs: fedavg = fp32, always; laq8 = int8 stochastic per-tensor scale, always;
bbit = b_up-bit stochastic grid of the innovation with its own residual, lazy; bin =
sign(diff)*mean|diff|, lazy. `codec` / `lazy` override the preset's choice (any codec spec
from `thinwire codecs`). The LAQ knobs are the simulator's `laq:` section, flat here; the
design's `clock` is `t_bar`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..config import LAQ, CodecSection, ServerSection, TaskSection, build, describe, redefault
from ..config import validate as validate_model
from ..errors import ConfigError

PRESETS = ("fedavg", "laq8", "bbit", "bin")
MODES = PRESETS  # the design's name for them


class FLQConfig(TaskSection, CodecSection, LAQ, ServerSection):
    """The FLQ service: a coordinator and workers over HTTP."""

    # ---- the design's flq_config.json ------------------------------------------------------
    total_workers: int = Field(4, ge=1, le=4096, description="expected workers (shards)")
    max_rounds: int = Field(20, ge=1, description="rounds until training is done")
    batch_size: int = Field(32, ge=1)
    local_steps: int = Field(10, ge=1, description="local SGD steps per round")
    lr: float = Field(0.05, gt=0, description="workers' local learning rate")
    preset: Literal["fedavg", "laq8", "bbit", "bin"] = Field(
        "fedavg", validation_alias=AliasChoices("preset", "mode"),
        description="upload codec + lazy rule: fedavg (fp32), laq8 (int8), bbit (b_up-bit, "
        "lazy), bin (1-bit, lazy)")
    b_up: int = Field(4, ge=1, le=8, description="bits per element for preset bbit")
    up_budget_bits: int = Field(0, ge=0, description="per-round upload budget; 0 = none")
    sel_clients: int = Field(0, ge=0, description="take the top-k uploads by ||q||^2/bits")
    t_bar: int = redefault(LAQ, "t_bar", 10)  # also spelled `clock`
    error_feedback: bool = redefault(CodecSection, "error_feedback", True)

    # ---- service ---------------------------------------------------------------------------
    schedule: Literal["sync", "async"] = "sync"
    round_timeout: float = Field(30.0, gt=0, description="seconds from a round's first pull")
    min_workers: int = Field(1, ge=1, description="answers a sync round needs to close, on "
                             "time or late (a quorum: rounds wait only for workers taking part)")
    offline_after: float | None = Field(None, gt=0, description="default 2*round_timeout")
    sel_ref: int = Field(0, ge=0, description="step *= m_selected/sel_ref; 0 = off")
    skipped: Literal["reuse", "drop"] = "reuse"
    server_lr: float = Field(1.0, gt=0)
    momentum: float = Field(0.5, ge=0, lt=1, description="local SGD momentum (per round)")
    staleness_exponent: float = Field(0.5, ge=0, description="async weight (1+s)^-a")
    max_staleness: int = Field(64, ge=0, description="async: reject older updates")
    async_alpha: float | None = Field(None, gt=0, description="async mix; 1/total_workers")
    commit_every: int = Field(1, ge=1, description="async: rounds between snapshots "
                                                    "(sync snapshots after every round)")
    eval_every: int = Field(1, ge=1, description="rounds between test evaluations")
    max_registered: int | None = Field(None, ge=1, description="registry size; default "
                                       "4*total_workers+16 (left workers are evicted first)")
    worker_keys: bool = Field(True, description="issue a per-worker key at registration "
                              "and require it for that worker id")
    codec: str | None = Field(None, description="override the preset's upload codec")
    lazy: bool | None = Field(None, description="override the preset's lazy rule")
    run_name: str | None = None

    @model_validator(mode="after")
    def _check(self) -> "FLQConfig":
        from ..codecs import make_codec

        make_codec(self.upload_codec())
        if self.schedule == "async" and self.selection:
            raise ConfigError("budget selection (sel_clients / up_budget_bits) needs "
                              "schedule 'sync': async updates apply as they arrive")
        if self.min_workers > self.total_workers:
            raise ConfigError(f"min_workers={self.min_workers} exceeds total_workers="
                              f"{self.total_workers}; rounds could never close")
        return self

    # ---- derived ---------------------------------------------------------------------------
    def upload_codec(self) -> str:
        if self.codec:
            return self.codec
        return {"fedavg": "none", "laq8": "int8(num_bits=8,stochastic=true)",
                "bbit": f"bbit(bits={self.b_up})", "bin": "bin"}[self.preset]

    def is_lazy(self) -> bool:
        return self.lazy if self.lazy is not None else self.preset in ("bbit", "bin")

    @property
    def mode(self) -> str:
        """Old name of `preset` (kept for readers of `cfg.mode`)."""
        return self.preset

    @property
    def clock(self) -> int:
        """Old name of `t_bar` (kept for readers of `cfg.clock`)."""
        return self.t_bar

    @property
    def selection(self) -> bool:
        return self.sel_clients > 0 or self.up_budget_bits > 0

    def registry_cap(self) -> int:
        return self.max_registered or 4 * self.total_workers + 16

    def offline_seconds(self) -> float:
        return self.offline_after or 2.0 * self.round_timeout

    def mix(self) -> float:
        return self.async_alpha or 1.0 / self.total_workers

    def name(self) -> str:
        return self.run_name or f"flq-{self.preset}-{self.schedule}-s{self.seed}"

    def worker_view(self) -> dict[str, Any]:
        """What a worker needs to train and encode like every other worker (a `WorkerConfig`
        as JSON). `mode` and `clock` repeat `preset` and `t_bar` for workers that read the
        old names."""
        fields = {k: getattr(self, k) for k in WorkerConfig.model_fields
                  if k not in ("codec", "lazy", "selection", "data_dir")}
        view = WorkerConfig(**fields, codec=self.upload_codec(), lazy=self.is_lazy(),
                            selection=self.selection,
                            data_dir=str(self.data_dir) if self.data_dir else None)
        return {**view.model_dump(), "mode": self.preset, "clock": self.t_bar}


class WorkerConfig(BaseModel):
    """The coordinator's config as a worker sees it (the register answer's `config`), typed
    so a worker refuses a malformed one with a clear error instead of a KeyError later."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    total_workers: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    local_steps: int = Field(ge=1)
    lr: float = Field(gt=0)
    momentum: float = Field(ge=0, lt=1)
    preset: str
    error_feedback: bool
    thr_scale: float = Field(ge=0)
    t_bar: int = Field(ge=1)
    warmup: int = Field(ge=0)
    depth: int = Field(ge=1)
    xi: float | None = None
    schedule: Literal["sync", "async"]
    task: str
    model: str | None = None
    task_args: dict[str, Any] = Field(default_factory=dict)
    split: str
    seed: int
    max_rounds: int = Field(ge=1)
    codec: str
    lazy: bool
    selection: bool
    data_dir: str | None = None

    @classmethod
    def of(cls, data: "WorkerConfig | dict[str, Any]") -> "WorkerConfig":
        if isinstance(data, cls):
            return data
        try:
            return cls(**data)
        except ValidationError as exc:
            raise ConfigError("the coordinator sent a config this worker cannot use: "
                              f"{describe(exc)}") from None


def load_config(path: Path | str | None = None, overrides: dict[str, Any] | None = None,
                sets: list[str] | None = None) -> FLQConfig:
    """File (JSON or YAML) < overrides < `--set key=value`; one ConfigError line on problems."""
    return build(FLQConfig, path, overrides, sets, label="FLQ config")


def validate(data: dict[str, Any]) -> FLQConfig:
    return validate_model(FLQConfig, data, label="FLQ config")


def dump(cfg: FLQConfig) -> str:
    return json.dumps(cfg.model_dump(mode="json"), indent=2, sort_keys=True)
