"""`thinwire sweep`: a grid of codecs x policies x seeds from one command, finished runs reused,
the accuracy-vs-total-bytes Pareto front as a PNG and a table sorted by the bytes each
configuration moved before it reached a target accuracy.

The grid comes from flags (`--codecs`, `--policies`, `--seeds`) and/or the config file's
`codecs`, `policies`, `seeds` and `target` keys (flags win); every other key is a `thinwire
run` key shared by all runs. A planned run whose name already has a row in
`<out>/results.jsonl` is not run again.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..codecs.spec import split_top_level
from ..config.base import apply_set, canonical_tree, load_file, merge
from ..errors import ConfigError
from ..obs.pareto import bytes_to_target, pareto_front
from ..obs.results import format_table, group_key, read_rows
from ..tasks import load_task
from .config import RunConfig, validate
from .experiment import run_experiment

GRID_KEYS = ("codecs", "policies", "seeds", "target")
DEFAULT_TARGET = 0.97


def add_grid_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--codecs", help="comma list (commas inside parentheses belong to the "
                   "codec); default: the file's codecs, else the codec key")
    p.add_argument("--policies", help="comma list (default: the file's policies, else the "
                   "policy key)")
    p.add_argument("--seeds", help="comma list, e.g. 0,1,2 (default: the file's seeds, else "
                   "the seed key)")
    p.add_argument("--target", type=float, help="target test accuracy for the bytes-to-target "
                   f"column, as 0.97 or 97 (default {DEFAULT_TARGET})")


def listed(value: Any, key: str) -> list[str]:
    """A grid axis from a flag or file: a comma string (top-level commas) or a list."""
    items = split_top_level(value, ",") if isinstance(value, str) else list(value)
    out = [str(v).strip() for v in items if str(v).strip()]
    if not out:
        raise ConfigError(f"sweep {key}: empty list")
    return out


def plan_sweep(file: Path | None, flags: dict[str, Any], sets: list[str],
               grid_flags: dict[str, Any]) -> tuple[list[RunConfig], float]:
    """(validated configs, target): file < flags < --set for the shared keys, flags over the
    file for the grid. Sparsifier defaults (sim/defaults.py) are chosen per run."""
    data = load_file(Path(file)) if file else {}
    grid = {k: data.pop(k) for k in GRID_KEYS if k in data}
    grid.update({k: v for k, v in grid_flags.items() if v is not None})
    data = canonical_tree(RunConfig, data)
    merge(data, canonical_tree(RunConfig, {k: v for k, v in flags.items() if v is not None}))
    for assignment in sets:
        apply_set(data, assignment, RunConfig)
    base = validate(data).explicit({"codec", "policy", "seed"})
    codecs = listed(grid.get("codecs", data.get("codec", "none")), "codecs")
    policies = listed(grid.get("policies", data.get("policy", "always")), "policies")
    try:
        seeds = [int(s) for s in listed(grid.get("seeds", data.get("seed", 0)), "seeds")]
    except ValueError:
        raise ConfigError(f"sweep seeds {grid.get('seeds')!r}: use integers") from None
    target = float(grid.get("target", DEFAULT_TARGET))
    target = target / 100 if target > 1 else target
    configs = [validate({**base, "codec": c, "policy": p, "seed": s})
               for s in seeds for p in policies for c in codecs]
    names = [c.name() for c in configs]
    if len(set(names)) < len(names):
        raise ConfigError("sweep: two grid points have one run name; drop run_name")
    return configs, target


def finished(out: Path) -> dict[str, dict]:
    """The latest results row of each run name in `<out>/results.jsonl`."""
    path = Path(out) / "results.jsonl"
    return {r["run_name"]: r for r in read_rows(path)} if path.exists() else {}


def run_sweep(configs: list[RunConfig], out: Path, target: float, as_json: bool = False,
              progress: bool = True, echo: Callable[[str], None] = print) -> list[dict]:
    """Run the grid (reusing finished runs), then write pareto.png and sweep.md."""
    from ..obs.plots import plot_pareto

    done = finished(out)
    todo = [c for c in configs if c.name() not in done]
    task = None
    if todo:
        first = todo[0]
        task = load_task(first.task, first.data_dir, first.download, **first.task_args)
    echo(f"sweep: {len(configs)} runs, {len(configs) - len(todo)} reused from "
         f"{Path(out) / 'results.jsonl'}, {len(todo)} to run")
    rows = []
    bar = tqdm(configs, desc="sweep", unit="run", disable=not progress, file=sys.stderr)
    for cfg in bar:
        bar.set_postfix_str(cfg.name(), refresh=True)
        row = done.get(cfg.name())
        if row is None:
            row = run_experiment(cfg, task=task, progress=progress)
        rows.append(row)
    bar.close()
    summary = summarize(rows, target)
    png = plot_pareto([(s["label"], s["bytes"], s["accuracy"]) for s in summary],
                      [s["front"] for s in summary], Path(out) / "pareto.png",
                      title=f"accuracy vs total bytes ({len(rows)} runs; front in red)")
    table = Path(out) / "sweep.md"
    table.write_text(markdown(summary, target))
    if as_json:
        for s in summary:
            echo(json.dumps(s))
    else:
        echo(format_table(table_lines(summary, target)))
    plot = png if png is not None else 'skipped (no matplotlib: pip install "thinwire[plots]")'
    echo(f"table: {table}\nplot: {plot}\nresults: {Path(out) / 'results.jsonl'}")
    return rows


def label(row: dict) -> str:
    ef = "+ef" if row.get("error_feedback") and row.get("codec") != "none" else ""
    return f"{row['codec_config']}{ef}, {row['policy']}"


def summarize(rows: list[dict], target: float) -> list[dict]:
    """One entry per configuration (seeds pooled: means of final accuracy, total bytes and
    bytes to target), front marked, sorted by bytes to target; configurations that did not
    reach the target on every seed come last, most accurate first."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        groups[group_key(row)].append(row)
    out = []
    for name, rs in groups.items():
        hits = [bytes_to_target(r.get("history") or [], target) for r in rs]
        reached = [h for h in hits if h is not None]
        out.append({
            "config": name, "label": label(rs[0]), "seeds": [r["seed"] for r in rs],
            "accuracy": statistics.mean(r["test_accuracy"] for r in rs),
            "bytes": statistics.mean(r["bytes_wire_total"] for r in rs),
            "ratio_total": statistics.mean(r.get("compression_ratio_total") or 0 for r in rs),
            "reached": len(reached),
            "bytes_to_target": (statistics.mean(b for b, _ in reached)
                                if len(reached) == len(rs) else None),
            "epoch_to_target": (statistics.mean(e for _, e in reached)
                                if len(reached) == len(rs) else None),
        })
    front = pareto_front([(s["bytes"], s["accuracy"]) for s in out])
    for s, f in zip(out, front):
        s["front"] = f
    return sorted(out, key=lambda s: (s["bytes_to_target"] is None,
                                      s["bytes_to_target"] or 0, -s["accuracy"]))


def table_lines(summary: list[dict], target: float) -> list[list[str]]:
    header = ["config", "front", "acc %", "total MB", "ratio total",
              f"MB to {100 * target:g}%", "epoch", "seeds reached"]
    lines = [header]
    for s in summary:
        lines.append([
            s["label"], "*" if s["front"] else "", f"{100 * s['accuracy']:.2f}",
            f"{s['bytes'] / 1e6:.3f}", f"{s['ratio_total']:.1f}",
            "never" if s["bytes_to_target"] is None else f"{s['bytes_to_target'] / 1e6:.3f}",
            "-" if s["epoch_to_target"] is None else f"{s['epoch_to_target']:g}",
            f"{s['reached']}/{len(s['seeds'])}"])
    return lines


def markdown(summary: list[dict], target: float) -> str:
    lines = table_lines(summary, target)
    rows = ["| " + " | ".join(line) + " |" for line in lines]
    rows.insert(1, "|" + "---|" * len(lines[0]))
    note = (f"Sorted by the bytes (up + down, cumulative at the first epoch whose evaluation "
            f"reached {100 * target:g}%, mean over seeds); `never`: some seed did not reach "
            f"it. `*`: on the accuracy-vs-total-bytes Pareto front (final accuracy).\n")
    return "\n".join(rows) + "\n\n" + note
