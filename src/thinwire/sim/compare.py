"""Several configurations over several seeds, one table, one results.jsonl, PNG plots."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..obs.plots import SKIPPED, plot_runs
from ..obs.results import summary_table
from ..tasks import load_task
from .config import RunConfig, validate
from .experiment import run_experiment


def plan(base: dict[str, Any], codecs: list[str], policies: list[str], seeds: list[int],
         centralized: bool) -> list[RunConfig]:
    """Validated configs: centralized first, then codec x policy, each over every seed."""
    configs = []
    for seed in seeds:
        if centralized:
            configs.append(validate({**base, "centralized": True, "seed": seed}))
        for policy in policies:
            for codec in codecs:
                configs.append(validate({**base, "codec": codec, "policy": policy, "seed": seed}))
    return configs


def run_compare(configs: list[RunConfig], out: Path, as_json: bool = False,
                progress: bool = True, echo: Callable[[str], None] = print) -> list[dict]:
    """Run all configs on one loaded task; print JSON rows or a table; write plots."""
    first = configs[0]
    task = load_task(first.task, first.data_dir, first.download, **first.task_args)
    rows = []
    for cfg in configs:
        row = run_experiment(cfg, task=task, progress=progress)
        rows.append(row)
        if as_json:
            echo(json.dumps({k: v for k, v in row.items() if k != "history"}))
    plots = plot_runs(rows, out)
    if not as_json:
        echo(summary_table(rows))
        echo(f"results: {out / 'results.jsonl'}")
        echo("plots: " + ", ".join(str(p) for p in plots) if plots else SKIPPED)
    return rows
