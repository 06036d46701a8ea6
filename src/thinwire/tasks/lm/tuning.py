"""What a fine-tuning worker trains and exchanges: FFA-LoRA adapters (peft) or all weights.

Federated LoRA has a trap: the mean of the B's times the mean of the A's is not the mean of
the B·A's. FFA-LoRA (Sun et al., 2024) freezes A at a value drawn from a seed every worker of
a specialty shares, so a weight's change ΔW = (alpha/r)·B·A is linear in B: averaging the
B's is exactly averaging the ΔW's, and only B travels (half of a LoRA upload). A is drawn
here, from (seed, module name), not by peft's initializer, so a coordinator rebuilds it
without peft and without the order in which modules were wrapped mattering.

`FullTuning` trains and sends every weight (small models); its "dense delta" is the upload.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ...errors import ConfigError

Tensors = dict[str, torch.Tensor]
QWEN2_ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
QWEN2_MLP = ("gate_proj", "up_proj", "down_proj")


def specialty_seed(seed: int, specialty: str) -> int:
    """The seed of a specialty's frozen A: every worker of `specialty` derives the same."""
    digest = hashlib.sha256(f"{seed}:{specialty}".encode()).digest()
    return int.from_bytes(digest[:7], "little")


def frozen_a(seed: int, module: str, rank: int, in_features: int) -> torch.Tensor:
    """A (rank x in) from (seed, module name), scaled as peft's kaiming-uniform A."""
    digest = hashlib.sha256(f"{seed}:{module}".encode()).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(digest[:7], "little"))
    bound = 1.0 / math.sqrt(in_features)
    return (torch.rand(rank, in_features, generator=gen) * 2 - 1) * bound


def linear_shapes(model: torch.nn.Module, targets: Sequence[str]) -> dict[str, tuple[int, int]]:
    """{module name: (out, in)} of the nn.Linear modules whose last name is in `targets`."""
    out = {n: (m.out_features, m.in_features) for n, m in model.named_modules()
           if isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] in targets}
    if not out:
        raise ConfigError(f"no linear module of the model is named one of {list(targets)}; "
                          "set the LoRA targets to module names of this architecture")
    return out


@dataclass(frozen=True)
class FFALora:
    """LoRA with A frozen from `seed`: only B is trained and exchanged."""

    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = QWEN2_ATTENTION
    seed: int = 0
    role: str = field(default="adapter", init=False)

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def layout(self, base: torch.nn.Module) -> dict[str, tuple[int, ...]]:
        """{module name: shape of its B}: what a worker uploads."""
        return {n: (o, self.rank) for n, (o, _) in linear_shapes(base, self.targets).items()}

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """Wrap `model` with peft LoRA, set every A from the seed and freeze it."""
        from peft import LoraConfig, get_peft_model

        shapes = linear_shapes(model, self.targets)
        config = LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=0.0,
                            bias="none", target_modules=list(self.targets))
        wrapped = get_peft_model(model, config)
        for name, layer in lora_layers(wrapped).items():
            a = layer.lora_A["default"].weight
            with torch.no_grad():
                a.copy_(frozen_a(self.seed, name, self.rank, shapes[name][1]))
            a.requires_grad_(False)
        return wrapped

    def trainable(self, model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
        return {n: layer.lora_B["default"].weight for n, layer in lora_layers(model).items()}

    def dense(self, tensors: Tensors, base: torch.nn.Module) -> Tensors:
        """{weight name: (alpha/r)·B·A}: the change B makes to each base weight."""
        return {f"{n}.weight": b @ a for n, (a, b) in self.factors(tensors, base).items()}

    def factors(self, tensors: Tensors, base: torch.nn.Module
                ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """{module name: (A, (alpha/r)·B)}: the same change kept low-rank, so applying it
        in a forward pass costs rank-sized memory instead of a dense weight."""
        return {n: (frozen_a(self.seed, n, self.rank, base.get_submodule(n).in_features),
                    self.scaling * b.float())
                for n, b in tensors.items()}


@dataclass(frozen=True)
class FullTuning:
    """Every weight is trained; the upload is the change of each."""

    role: str = field(default="param", init=False)

    def layout(self, base: torch.nn.Module) -> dict[str, tuple[int, ...]]:
        return {n: tuple(p.shape) for n, p in base.named_parameters()}

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def trainable(self, model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
        return dict(model.named_parameters())

    def dense(self, tensors: Tensors, base: torch.nn.Module) -> Tensors:
        return {n: t.float() for n, t in tensors.items()}


Tuning = FFALora | FullTuning


def make_tuning(kind: str, rank: int = 8, alpha: float = 16.0,
                targets: Sequence[str] = QWEN2_ATTENTION, seed: int = 0) -> Tuning:
    if kind == "lora":
        return FFALora(rank, alpha, tuple(targets), seed)
    if kind == "full":
        return FullTuning()
    raise ConfigError(f"finetune {kind!r}: use lora or full")


def lora_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """{base module name: peft LoRA layer} of a peft-wrapped model."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return {n: m for n, m in inner.named_modules()
            if hasattr(m, "lora_B") and "default" in getattr(m, "lora_B", {})}


def zeros_like_layout(layout: dict[str, tuple[int, ...]]) -> Tensors:
    return {n: torch.zeros(shape) for n, shape in layout.items()}
