"""Federated-experts coordinator configuration: the shared codec and strategy sections plus
the keys of this runtime (base model, tuning, outer step, merging, timing, limits).

What every worker must do alike (LoRA shape and targets, the codec) is decided here and
handed to each worker when it registers (`worker_view`), so a worker cannot train adapters
the coordinator could not aggregate exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import Field, model_validator

from ..config import CodecSection, ServerSection, StrategySection, build, redefault
from ..errors import ConfigError
from ..tasks.lm.merge import METHODS, parse_given
from ..tasks.lm.pretrained import DEFAULT_BASE
from ..tasks.lm.tuning import QWEN2_ATTENTION, make_tuning, specialty_seed

Routing = Literal["centroid", "loss"]
ROUTING: tuple[str, ...] = get_args(Routing)


class ExpertsConfig(CodecSection, StrategySection, ServerSection):
    """Federated experts: one LoRA expert per specialty and a merged gateway model."""

    # ---- the base and what workers train ---------------------------------------------------
    base_model: str = Field(DEFAULT_BASE, description="hub name or local transformers folder "
                            "(model + tokenizer); workers must use the same")
    use_huggingface: bool = Field(False, description="download from the HF hub, not ModelScope")
    finetune: Literal["lora", "full"] = Field("lora", description="FFA-LoRA adapters (A "
                                              "frozen per specialty) or every weight")
    lora_rank: int = Field(8, ge=1, le=1024)
    lora_alpha: float = Field(16.0, gt=0)
    lora_targets: list[str] = Field(list(QWEN2_ATTENTION), description="module names that "
                                    "get adapters (Qwen2: q_proj,k_proj,v_proj,o_proj,"
                                    "gate_proj,up_proj,down_proj)")
    seed: int = Field(0, description="seeds each specialty's frozen LoRA A")
    prompt_loss: bool = Field(False, description="workers train on the prompt tokens too, "
                              "not only the answer, so each expert models its specialty's "
                              "prompts: what loss routing scores")
    error_feedback: bool = redefault(CodecSection, "error_feedback", True)
    skipped: Literal["drop"] = Field("drop", description="uploads are pseudo-gradients: a "
                                     "worker's last one is never reused")

    # ---- aggregation per specialty ----------------------------------------------------------
    outer: Literal["plain", "nesterov"] = Field("plain", description="outer step: lr * mean, "
                                                "or Nesterov momentum (DiLoCo)")
    outer_lr: float = Field(1.0, gt=0, description="outer learning rate")
    outer_momentum: float = Field(0.9, ge=0, lt=1, description="Nesterov outer momentum")
    staleness_exponent: float = Field(0.5, ge=0, description="s versions stale: (1+s)^-a")
    max_staleness: int = Field(16, ge=0, description="refuse updates staler than this")
    round_timeout: float = Field(30.0, gt=0, description="seconds a round waits for slow "
                                 "workers after its first upload")
    offline_after: float = Field(120.0, gt=0, description="seconds of silence before a "
                                 "worker is no longer waited for")

    # ---- the gateway ------------------------------------------------------------------------
    merge: Literal["linear", "ties"] = Field("linear", description="task arithmetic or TIES")
    merge_weights: str = Field("samples", description="samples | uniform | name=w,name=w")
    merge_scale: float = Field(1.0, gt=0, description="lambda on the merged change")
    ties_density: float = Field(0.2, gt=0, le=1, description="fraction of each change kept")
    history: int = Field(1000, ge=1, description="versions of history kept")

    # ---- routing ----------------------------------------------------------------------------
    routing: Routing = Field(
        "centroid", description="how /v1/route picks an expert: nearest centroid of base "
        "embeddings (one base pass) or lowest prompt loss under each expert (a pass each)")

    # ---- limits -----------------------------------------------------------------------------
    max_json_bytes: int = redefault(ServerSection, "max_json_bytes", 1 << 20)  # centroids
    max_specialties: int = Field(64, ge=1)
    max_workers: int = Field(1024, ge=1, description="registrations kept (ids ever seen)")
    run_name: str | None = None

    @model_validator(mode="after")
    def _check(self) -> "ExpertsConfig":
        if self.down_codec != "none":
            raise ConfigError("experts: workers pull expert weights losslessly; leave "
                              "down_codec at none")
        if self.merge_weights not in ("samples", "uniform"):
            parse_given(self.merge_weights)
        if self.merge not in METHODS:
            raise ConfigError(f"merge {self.merge!r}: use one of {METHODS}")
        if self.routing == "loss" and not self.prompt_loss:
            raise ConfigError("routing: loss scores the prompt under each expert, and experts "
                              "trained on the answers alone do not model prompts (near "
                              "chance); set prompt_loss: true (--prompt-loss) as well")
        return self

    def tuning(self, specialty: str = ""):
        return make_tuning(self.finetune, self.lora_rank, self.lora_alpha, self.lora_targets,
                           specialty_seed(self.seed, specialty))

    def name(self) -> str:
        return self.run_name or f"experts-{self.finetune}-{self.merge}-s{self.seed}"

    def worker_view(self, specialty: str) -> dict[str, Any]:
        """What a worker of `specialty` needs to train and encode like its peers."""
        return {"finetune": self.finetune, "lora_rank": self.lora_rank,
                "lora_alpha": self.lora_alpha, "lora_targets": list(self.lora_targets),
                "lora_seed": specialty_seed(self.seed, specialty), "codec": self.codec,
                "error_feedback": self.error_feedback, "base_model": self.base_model,
                "prompt_loss": self.prompt_loss}


def load_config(path: Path | str | None = None, overrides: dict[str, Any] | None = None,
                sets: list[str] | None = None) -> ExpertsConfig:
    return build(ExpertsConfig, path, overrides, sets, label="experts config")
