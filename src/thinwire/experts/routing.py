"""Loss routing: score a prompt under every trained expert and pick the lowest loss (the
domain posterior of Branch-Train-Merge, Li et al. 2022, with a uniform prior).

Centroid routing needs one base forward pass but trusts the base's upper layers to separate
the specialties; an expert's own loss on the prompt asks each expert whether the text looks
like what it was trained on, at one forward pass per expert. The experts must have learned
their prompts (`prompt_loss`): trained on answers only, they score prompts near chance
(the base was never taught the prompts either).

Each expert is cached per version so a route is only the forward passes. LoRA experts are
not built as models: their low-rank factors are added to the shared base's outputs by
forward hooks for the pass (memory: the adapters, not a model per expert). A full fine-tune
(small models) is cached as a model of its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from ..tasks.lm.likelihood import prompt_ids, prompt_loss, template_prefix
from ..tasks.lm.merge import apply
from ..tasks.lm.tuning import FFALora, Tuning
from ..tasks.lm.weights import model_from_weights

Tensors = dict[str, torch.Tensor]
Factors = dict[str, tuple[torch.Tensor, torch.Tensor]]


@dataclass
class ExpertView:
    """One expert as routing runs it: low-rank factors on the base, or its own model."""

    version: int
    factors: Factors | None = None
    model: torch.nn.Module | None = None

    @contextlib.contextmanager
    def active(self, base: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """The model to run: `base` with this expert's hooks for the duration, or its own."""
        if self.model is not None:
            yield self.model
            return
        handles = [base.get_submodule(name).register_forward_hook(partial(_low_rank, a, b))
                   for name, (a, b) in (self.factors or {}).items()]
        try:
            yield base
        finally:
            for handle in handles:
                handle.remove()


def _low_rank(a: torch.Tensor, b: torch.Tensor, module: torch.nn.Module, inputs: tuple,
              output: torch.Tensor) -> torch.Tensor:
    """A LoRA forward: W x + s·B A x (b holds s·B)."""
    return output + (inputs[0] @ a.T) @ b.T


class LossRouter:
    """Per-expert views cached by version, and the prompt's loss under each. Not locked:
    the caller serializes calls (they add hooks to the shared base model)."""

    def __init__(self, base: Any, base_state: Tensors, tuning_of: Callable[[str], Tuning],
                 snapshot: Callable[[str], tuple[int, Tensors]], max_length: int = 256
                 ) -> None:
        """`snapshot(name)`: an expert's (version, tensors), read consistently (a copy)."""
        self.base, self.base_state, self.tuning_of = base, base_state, tuning_of
        self.snapshot, self.max_length = snapshot, max_length
        self.views: dict[str, ExpertView] = {}
        self._prefix: str | None = None

    def view(self, name: str, version: int) -> ExpertView:
        """The cached view of expert `name`, rebuilt when its version is not `version`."""
        cached = self.views.get(name)
        if cached is None or cached.version != version:
            cached = self.views[name] = self.build(name, *self.snapshot(name))
        return cached

    def build(self, name: str, version: int, tensors: Tensors) -> ExpertView:
        tuning = self.tuning_of(name)
        if isinstance(tuning, FFALora):
            return ExpertView(version, factors=tuning.factors(tensors, self.base.model))
        state = apply(self.base_state, tuning.dense(tensors, self.base.model))
        return ExpertView(version, model=model_from_weights(self.base.model.config, state))

    def scores(self, prompt: str, versions: Mapping[str, int]) -> dict[str, float]:
        """{expert: mean loss of the prompt's tokens} for the experts of `versions`
        {name: current version}; cached views of other experts are dropped."""
        if self._prefix is None:
            self._prefix = template_prefix(self.base.tokenizer)
        ids, start = prompt_ids(self.base.tokenizer, prompt, self.max_length, self._prefix)
        for gone in set(self.views) - set(versions):
            del self.views[gone]
        out = {}
        for name, version in sorted(versions.items()):
            with self.view(name, version).active(self.base.model) as model:
                out[name] = prompt_loss(model, ids, start)
        return out
