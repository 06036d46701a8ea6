"""The Python front door: train your own model on your own data over simulated thin links.

    import thinwire
    row = thinwire.simulate(model=lambda: MyNet(), train=(x, y), test=test_dataset,
                            nodes=4, codec="topk(ratio=0.01)+int8", epochs=3)
    row["test_accuracy"], row["bytes_wire_total"]
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import ConfigError


def simulate(model: Any = None, train: Any = None, test: Any = None, *,
             config: str | Path | None = None, verbose: bool = False,
             **keys: Any) -> dict[str, Any]:
    """Run one simulated experiment and return its record (the results.jsonl row).

    model: a zero-argument factory returning your `nn.Module` (one producing logits), or a
        model name; default: the task's model.
    train, test: each an (x, y) pair of tensors or a map-style Dataset of (x, y); without
        them the `task` key picks a built-in or `pkg.module:factory` task.
    config: a YAML/JSON config file; `keys` (any RunConfig key: nodes, codec, epochs, out,
        policy, communication={...}, ...) override it.
    verbose: print progress bars and the run log to stderr.
    """
    from .sim.config import RunConfig, build_config
    from .sim.experiment import run_experiment, stderr_log

    task = user_task(train, test, keys)
    with model_name(model) as name:
        if name is not None:
            keys["model"] = name
        cfg: RunConfig = build_config(Path(config) if config else None, keys)
        return run_experiment(cfg, task=task, progress=verbose,
                              log=stderr_log if verbose else None)


def user_task(train: Any, test: Any, keys: dict[str, Any]) -> Any:
    """The Task your splits (or a Task passed as `task=`) make; None for a config's task."""
    from .tasks import Task
    from .tasks.user import task_from_data

    given = keys.get("task")
    if isinstance(given, Task):
        if train is not None or test is not None:
            raise ConfigError("give either task=<Task> or train/test, not both")
        keys["task"] = given.name
        return given
    if (train is None) != (test is None):
        raise ConfigError("give both train and test (or neither, to use the task key)")
    if train is None:
        return None
    task = task_from_data(train, test, name=given or "custom")
    keys["task"] = task.name
    return task


@contextlib.contextmanager
def model_name(model: Any) -> Iterator[str | None]:
    """The config's `model` for `model`: a name as is, a factory registered for the run."""
    if model is None or isinstance(model, str):
        yield model
        return
    if not callable(model):
        raise ConfigError(f"model: expected a zero-argument factory returning an nn.Module, "
                          f"got {type(model).__name__}")
    from .tasks.user import registered_model

    with registered_model(model) as name:
        yield name
