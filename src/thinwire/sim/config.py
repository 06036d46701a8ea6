"""The simulator's `RunConfig`: the shared sections (task, codec, policy, strategy, link,
output, train) plus the simulator's own keys. Flags, a YAML/JSON file (`-c`) and
`--set key=value` overrides build it; every mistake becomes one ConfigError line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, model_validator

from ..config import LAQ, Communication
from ..config import build as build_model_config
from ..config import validate as validate_model
from ..config.base import NEGATABLE, apply_set, describe, load_file
from ..config.training import TrainingConfig
from .defaults import check_momentum_correction, sparsifier_defaults

__all__ = ["LAQ", "Communication", "RunConfig", "apply_set", "build_config", "describe",
           "load_file", "validate"]


class RunConfig(TrainingConfig):
    """The simulator: N nodes in one process over a modelled link."""

    down_error_feedback: bool = Field(False, description="the aggregator keeps the residual "
                                      "of its lossy broadcast and adds it to the next one "
                                      "(error feedback on the server, as in DoubleSqueeze)",
                                      json_schema_extra=NEGATABLE)
    momentum_correction: bool = Field(False, description="sync with error feedback: the nodes "
                                      "keep the SGD momentum inside their error feedback and "
                                      "the aggregator runs plain SGD (DGC's momentum "
                                      "correction)", json_schema_extra=NEGATABLE)
    centralized: bool = Field(False, description="one node, all data, no communication "
                              "(the baseline)")
    node_batching: Literal["loop", "vmap"] = Field(
        "loop", description="vmap: all nodes' gradients in one batched call")

    _auto: dict[str, Any] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _sparsifier_defaults(self) -> "RunConfig":
        """Fill in the sparsifier defaults (sim/defaults.py) for keys not set explicitly;
        `model_fields_set` stays the explicit keys, so `explicit()` rebuilds them."""
        auto = sparsifier_defaults(self.__dict__, self.model_fields_set)
        self.__dict__.update(auto)
        self._auto = auto
        check_momentum_correction(self.__dict__)
        return self

    @property
    def auto(self) -> dict[str, Any]:
        """The values chosen for the user ({} when none were)."""
        return dict(self._auto)

    def explicit(self, exclude: set[str] = frozenset()) -> dict[str, Any]:
        """The keys the user set, as a mapping `validate` takes (defaults recomputed)."""
        return self.model_dump(include=self.model_fields_set - set(exclude))

    def name(self) -> str:
        if self.centralized and not self.run_name:
            return f"centralized-s{self.seed}"
        tags = "-mc" if self.momentum_correction else ""
        return self.run_name or self.built_name(self.down_error_feedback, tags)


def build_config(file: Path | None = None, flags: dict[str, Any] | None = None,
                 sets: list[str] | None = None) -> RunConfig:
    """File < flags < --set; raise one ConfigError line on any problem."""
    return build_model_config(RunConfig, file, flags, sets)


def validate(data: dict[str, Any]) -> RunConfig:
    return validate_model(RunConfig, data)
