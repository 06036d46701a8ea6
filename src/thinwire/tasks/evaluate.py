"""Classification evaluation: test accuracy and mean cross-entropy, one function for the
simulator, the service's coordinator and the benchmarks (LM evaluation is tasks/lm)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from . import Task


@torch.no_grad()
def evaluate(model: torch.nn.Module, task: "Task", batch: int = 1000) -> tuple[float, float]:
    """(accuracy, mean loss) on the task's test set; the model's train/eval mode is kept."""
    was_training = model.training
    model.eval()
    correct, loss_sum, n = 0, 0.0, len(task.test_y)
    for i in range(0, n, batch):
        x, y = task.test_x[i:i + batch], task.test_y[i:i + batch]
        out = model(x)
        loss_sum += float(F.cross_entropy(out, y, reduction="sum"))
        correct += int((out.argmax(1) == y).sum())
    model.train(was_training)
    return correct / max(n, 1), loss_sum / max(n, 1)
