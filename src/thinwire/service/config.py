"""FLQ service configuration: the design's flq_config.json keys plus the service's own.

    {"total_workers": 4, "max_rounds": 100, "batch_size": 32, "mode": "laq8", "b_up": 8}

`mode` picks the upload codec and whether the lazy (LAQ) rule runs:
fedavg = fp32, always; laq8 = int8 stochastic per-tensor scale, always; bbit = b_up-bit
stochastic grid of the innovation with its own residual, lazy; bin = sign(diff)*mean|diff|,
lazy. `codec` / `lazy` override the mode's choice (any codec spec from `thinwire codecs`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import ConfigError
from ..sim.config import apply_set, describe, load_file

MODES = ("fedavg", "laq8", "bbit", "bin")


class FLQConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    # ---- the design's flq_config.json ------------------------------------------------------
    total_workers: int = Field(4, ge=1, le=4096, description="expected workers (shards)")
    max_rounds: int = Field(20, ge=1, description="rounds until training is done")
    batch_size: int = Field(32, ge=1)
    local_steps: int = Field(10, ge=1, description="local SGD steps per round")
    lr: float = Field(0.05, gt=0, description="workers' local learning rate")
    mode: Literal["fedavg", "laq8", "bbit", "bin"] = "fedavg"
    b_up: int = Field(4, ge=1, le=8, description="bits per element for mode bbit")
    up_budget_bits: int = Field(0, ge=0, description="per-round upload budget; 0 = none")
    sel_clients: int = Field(0, ge=0, description="take the top-k uploads by ||q||^2/bits")
    thr_scale: float = Field(1.0, ge=0, description="LAQ lazy-rule constant")
    clock: int = Field(10, ge=1, description="force an upload after this many skips")
    warmup: int = Field(1, ge=0, description="rounds that always upload")
    error_feedback: bool = True
    down_codec: str = Field("none", description="downlink codec (stateless decode)")

    # ---- service ---------------------------------------------------------------------------
    schedule: Literal["sync", "async"] = "sync"
    round_timeout: float = Field(30.0, gt=0, description="seconds from a round's first pull")
    min_workers: int = Field(1, ge=1, description="responses needed to close a late round")
    offline_after: float | None = Field(None, gt=0, description="default 2*round_timeout")
    sel_ref: int = Field(0, ge=0, description="step *= m_selected/sel_ref; 0 = off")
    skipped: Literal["reuse", "drop"] = "reuse"
    server_lr: float = Field(1.0, gt=0)
    momentum: float = Field(0.5, ge=0, lt=1, description="local SGD momentum (per round)")
    depth: int = Field(10, ge=1, description="LAQ model-change history length D")
    xi: float | None = Field(None, gt=0)
    staleness_exponent: float = Field(0.5, ge=0, description="async weight (1+s)^-a")
    max_staleness: int = Field(64, ge=0, description="async: reject older updates")
    async_alpha: float | None = Field(None, gt=0, description="async mix; 1/total_workers")
    commit_every: int = Field(1, ge=1, description="async: rounds between snapshots "
                                                    "(sync snapshots after every round)")
    eval_every: int = Field(1, ge=1, description="rounds between test evaluations")
    max_request_bytes: int = Field(256 << 20, ge=1024)
    codec: str | None = Field(None, description="override the mode's upload codec")
    lazy: bool | None = Field(None, description="override the mode's lazy rule")

    # ---- task ------------------------------------------------------------------------------
    task: str = "mnist"
    data_dir: Path | None = None
    model: str | None = None
    task_args: dict[str, Any] = Field(default_factory=dict)
    split: str = "iid"
    seed: int = 0
    run_name: str | None = None

    @model_validator(mode="after")
    def _check(self) -> "FLQConfig":
        from ..codecs import make_codec
        from ..tasks.split import parse_spec

        make_codec(self.upload_codec())
        make_codec(self.down_codec)
        parse_spec(self.split)
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
                "bbit": f"bbit(bits={self.b_up})", "bin": "bin"}[self.mode]

    def is_lazy(self) -> bool:
        return self.lazy if self.lazy is not None else self.mode in ("bbit", "bin")

    @property
    def selection(self) -> bool:
        return self.sel_clients > 0 or self.up_budget_bits > 0

    def offline_seconds(self) -> float:
        return self.offline_after or 2.0 * self.round_timeout

    def mix(self) -> float:
        return self.async_alpha or 1.0 / self.total_workers

    def name(self) -> str:
        return self.run_name or f"flq-{self.mode}-{self.schedule}-s{self.seed}"

    def worker_view(self) -> dict[str, Any]:
        """What a worker needs to train and encode like every other worker."""
        keys = ("total_workers", "batch_size", "local_steps", "lr", "momentum", "mode",
                "error_feedback", "thr_scale", "clock", "warmup", "depth", "xi", "schedule",
                "task", "model", "task_args", "split", "seed", "max_rounds")
        view = {k: getattr(self, k) for k in keys}
        view.update(codec=self.upload_codec(), lazy=self.is_lazy(), selection=self.selection,
                    data_dir=str(self.data_dir) if self.data_dir else None)
        return view


def load_config(path: Path | str | None = None, overrides: dict[str, Any] | None = None,
                sets: list[str] | None = None) -> FLQConfig:
    """File (JSON or YAML) < overrides < `--set key=value`; one ConfigError line on problems."""
    data: dict[str, Any] = load_file(Path(path)) if path else {}
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    for assignment in sets or []:
        apply_set(data, assignment)
    return validate(data)


def validate(data: dict[str, Any]) -> FLQConfig:
    try:
        return FLQConfig(**data)
    except ValidationError as exc:
        raise ConfigError(describe(exc).replace("bad config", "bad FLQ config")) from None


def dump(cfg: FLQConfig) -> str:
    return json.dumps(cfg.model_dump(mode="json"), indent=2, sort_keys=True)
