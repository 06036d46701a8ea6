"""Tasks: a dataset (already normalised tensors), its shape, and the model that suits it.

    task = load_task("mnist")                 # embedded 5k subset, no download
    task = load_task("mnist", data_dir=d)     # full MNIST from IDX files
    task = load_task("synthetic", n_samples=256, num_classes=3, dim=4, seed=1)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from .data import DataBundle
from .models import MODELS, build_model
from .split import class_histograms, format_histograms, label_skew, split_indices

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@dataclass
class Task:
    """Everything a runner needs to train and evaluate; `augment` applies to train batches only."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    in_shape: tuple[int, ...]
    model: str
    augment: Augment | None = None
    source: str = ""

    def build_model(self, name: str | None = None) -> torch.nn.Module:
        """The task's default model (or `name`) sized for this task."""
        return build_model(name or self.model, self.num_classes, self.in_shape)


def from_bundle(name: str, bundle: DataBundle, num_classes: int, model: str,
                augment: Augment | None = None) -> Task:
    return Task(name, bundle.train_x, bundle.train_y, bundle.test_x, bundle.test_y,
                num_classes, tuple(bundle.train_x.shape[1:]), model, augment, bundle.source)


def _mnist(data_dir: Path | None, download: bool) -> Task:
    from .mnist import load_mnist

    return from_bundle("mnist", load_mnist(data_dir, download), 10, "mnist_cnn")


def _cifar10(data_dir: Path | None, download: bool) -> Task:
    from .cifar10 import augmenter, load_cifar10

    return from_bundle("cifar10", load_cifar10(data_dir, download), 10, "resnet_cifar",
                       augmenter())


def _synthetic(n_samples: int = 512, num_classes: int = 4, dim: int = 8, seed: int = 0,
               separation: float = 8.0, test_fraction: float = 0.25) -> Task:
    from .synthetic import make_blobs

    bundle = make_blobs(n_samples, num_classes, dim, seed, separation, test_fraction)
    return from_bundle("synthetic", bundle, num_classes, "mlp")


TASKS = ("mnist", "cifar10", "synthetic")
SYNTHETIC_OPTIONS = ("n_samples", "num_classes", "dim", "seed", "separation", "test_fraction")


def load_task(name: str, data_dir: Path | str | None = None, download: bool = False,
              **options: Any) -> Task:
    """Load `mnist`, `cifar10` (from `data_dir`, optionally downloading) or `synthetic`
    (generated; `options` are its n_samples, num_classes, dim, seed, separation, test_fraction),
    or your own `pkg.module:factory` (tasks/user.py; `options` are its keyword arguments)."""
    if name not in TASKS and ":" in name:
        from .user import task_from_path

        return task_from_path(name, **options)
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}, "
                          "or pkg.module:factory")
    if name == "synthetic":
        unknown = sorted(set(options) - set(SYNTHETIC_OPTIONS))
        if unknown:
            raise ConfigError(f"synthetic task: unknown option(s) {', '.join(unknown)}; valid: "
                              f"{', '.join(SYNTHETIC_OPTIONS)}")
        return _synthetic(**options)
    if options:
        raise ConfigError(f"task {name!r} takes no options, got {', '.join(sorted(options))}")
    path = None if data_dir is None else Path(data_dir)
    return _mnist(path, download) if name == "mnist" else _cifar10(path, download)


__all__ = ["MODELS", "TASKS", "Task", "build_model", "class_histograms", "format_histograms",
           "label_skew", "load_task", "split_indices"]
