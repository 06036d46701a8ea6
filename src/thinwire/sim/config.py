"""The simulator's `RunConfig`: the shared sections (task, codec, policy, strategy, link,
output, train) plus the simulator's own keys. Flags, a YAML/JSON file (`-c`) and
`--set key=value` overrides build it; every mistake becomes one ConfigError line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from ..config import LAQ, Communication
from ..config import build as build_model_config
from ..config import validate as validate_model
from ..config.base import apply_set, describe, load_file
from ..config.training import TrainingConfig

__all__ = ["LAQ", "Communication", "RunConfig", "apply_set", "build_config", "describe",
           "load_file", "validate"]


class RunConfig(TrainingConfig):
    """The simulator: N nodes in one process over a modelled link."""

    down_error_feedback: bool = Field(False, description="the aggregator keeps the residual "
                                      "of its lossy broadcast and adds it to the next one "
                                      "(error feedback on the server, as in DoubleSqueeze)")
    centralized: bool = Field(False, description="one node, all data, no communication "
                              "(the baseline)")
    node_batching: Literal["loop", "vmap"] = Field(
        "loop", description="vmap: all nodes' gradients in one batched call")

    def name(self) -> str:
        if self.centralized and not self.run_name:
            return f"centralized-s{self.seed}"
        return self.run_name or self.built_name(self.down_error_feedback)


def build_config(file: Path | None = None, flags: dict[str, Any] | None = None,
                 sets: list[str] | None = None) -> RunConfig:
    """File < flags < --set; raise one ConfigError line on any problem."""
    return build_model_config(RunConfig, file, flags, sets)


def validate(data: dict[str, Any]) -> RunConfig:
    return validate_model(RunConfig, data)
