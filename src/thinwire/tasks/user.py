"""Your own model and data in any runtime: a `pkg.module:factory` path (`--model`, `--task`,
or the `model` / `task` keys of any config) or Python objects (`thinwire.simulate`).

A model factory is called with no arguments, or with (num_classes, in_shape) when it
requires two (the built-in models' signature). A task factory gets `task_args` as keyword
arguments and returns a `Task` or a (train, test) pair; each split is an (x, y) pair of
tensors or a map-style Dataset of (x, y) items.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from . import Task
from .models import MODELS

ModelFactory = Callable[..., nn.Module]


def import_object(path: str, what: str) -> Any:
    """`pkg.module:attr` -> the attribute; the working directory is importable, as for
    `python -m`. A missing module or attribute is one ConfigError line."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{what} {path!r}: expected pkg.module:factory")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{what} {path!r}: cannot import {module_name} ({exc})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{what} {path!r}: {module_name} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"{what} {path!r}: {attr} is not callable")
    return obj


def make_model(factory: ModelFactory, num_classes: int, in_shape: Sequence[int],
               name: str) -> nn.Module:
    """Call a user's model factory with the arguments it asks for; check what comes back."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # some builtins and C callables have no signature
        params = []
    required = [p for p in params if p.default is p.empty
                and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    model = factory(num_classes, tuple(in_shape)) if len(required) >= 2 else factory()
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model {name}: the factory returned {type(model).__name__}, "
                          "not a torch.nn.Module")
    return model


def model_from_path(path: str, num_classes: int, in_shape: Sequence[int]) -> nn.Module:
    return make_model(import_object(path, "model"), num_classes, in_shape, path)


@contextlib.contextmanager
def registered_model(factory: ModelFactory) -> Iterator[str]:
    """A name under which `build_model` makes `factory`'s model, for the duration."""
    name = f"{getattr(factory, '__module__', 'user')}:" \
           f"{getattr(factory, '__qualname__', type(factory).__name__)}"
    previous = MODELS.get(name)
    MODELS[name] = lambda num_classes, in_shape: make_model(factory, num_classes, in_shape,
                                                            name)
    try:
        yield name
    finally:
        if previous is None:
            MODELS.pop(name, None)
        else:
            MODELS[name] = previous


def split_tensors(split: Any, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) from an (x, y) pair or a map-style Dataset: float inputs, int64 labels."""
    if isinstance(split, torch.utils.data.TensorDataset) and len(split.tensors) == 2:
        x, y = split.tensors
    elif isinstance(split, (tuple, list)) and len(split) == 2:
        x, y = (torch.as_tensor(v) for v in split)
    elif hasattr(split, "__getitem__") and hasattr(split, "__len__"):
        items = [split[i] for i in range(len(split))]
        if not items or any(not isinstance(it, (tuple, list)) or len(it) < 2 for it in items):
            raise ConfigError(f"{what}: a Dataset must yield (x, y) items and not be empty")
        x = torch.stack([torch.as_tensor(it[0]) for it in items])
        y = torch.as_tensor([int(it[1]) for it in items])
    else:
        raise ConfigError(f"{what}: expected an (x, y) pair of tensors or a Dataset of (x, y), "
                          f"got {type(split).__name__}")
    return check_split(x, y, what)


def check_split(x: torch.Tensor, y: torch.Tensor, what: str) -> tuple[torch.Tensor, ...]:
    if len(x) != len(y) or len(y) == 0:
        raise ConfigError(f"{what}: {len(x)} inputs and {len(y)} labels; need as many, > 0")
    if y.dim() != 1 or y.is_floating_point() and not torch.equal(y, y.round()):
        raise ConfigError(f"{what}: labels must be one class index per sample")
    if int(y.min()) < 0:
        raise ConfigError(f"{what}: labels must be class indices >= 0")
    return (x if x.is_floating_point() else x.float()), y.long()


def task_from_data(train: Any, test: Any, name: str = "custom",
                   num_classes: int | None = None) -> Task:
    """A Task from your own splits; the default model is the MLP (it flattens any shape)."""
    tx, ty = split_tensors(train, "train")
    vx, vy = split_tensors(test, "test")
    if tx.shape[1:] != vx.shape[1:]:
        raise ConfigError(f"train inputs are {tuple(tx.shape[1:])} but test inputs are "
                          f"{tuple(vx.shape[1:])}")
    classes = num_classes or int(max(ty.max(), vy.max())) + 1
    return Task(name, tx, ty, vx, vy, classes, tuple(tx.shape[1:]), "mlp",
                source=f"{name}: {len(ty)} train / {len(vy)} test samples")


def task_from_path(path: str, **options: Any) -> Task:
    """`--task pkg.module:factory`: the factory's Task, or a Task from its (train, test)."""
    result = import_object(path, "task")(**options)
    if isinstance(result, Task):
        return result
    if isinstance(result, (tuple, list)) and len(result) == 2:
        return task_from_data(*result, name=path)
    raise ConfigError(f"task {path!r}: the factory returned {type(result).__name__}; "
                      "return a Task or a (train, test) pair")
