"""Coordinator outputs: test evaluation, results.jsonl round rows, plots, progress lines.

Round rows are run records (obs/record.py: the common keys and the three compression ratios)
plus round, version, selected, skipped, bits_up and bits_down.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..obs.record import record
from ..obs.results import append_row, read_rows


def counters(coord: Any) -> dict[str, Any]:
    """Cumulative traffic and work at the moment a round closes."""
    t = coord.ledger.totals()
    losses = coord.train_losses[-max(len(coord.workers), 1) * 4:]
    return {"up_wire": t["up_wire"], "down_wire": t["down_wire"], "up_raw": t["up_raw"],
            "down_raw": t["down_raw"], "uploads": t["sent"], "skipped": t["skipped"],
            "totals": t,
            "samples": coord.samples, "elapsed": coord.elapsed(),
            "train_loss": sum(losses) / len(losses) if losses else None}


def round_row(coord: Any, entry: dict[str, Any], c: dict[str, Any], acc: float,
              loss: float) -> dict[str, Any]:
    cfg, rounds = coord.cfg, entry["round"] + 1
    epochs = c["samples"] / max(len(coord.task.train_y), 1)
    common = {
        "run_name": cfg.name(), "task": cfg.task, "model": cfg.model or coord.task.model,
        "nodes": cfg.total_workers, "split": cfg.split, "mode": cfg.preset,
        "codec": coord.codec_name, "codec_config": cfg.upload_codec(),
        "down_codec": cfg.down_codec, "error_feedback": cfg.error_feedback,
        "policy": "laq" if cfg.is_lazy() else "always", "seed": cfg.seed,
        "test_accuracy": acc, "test_loss": loss, "train_loss": c["train_loss"],
    }
    wire = c["up_wire"] + c["down_wire"]
    return record(
        "service", common, c["totals"],
        epochs=epochs, steps=rounds * cfg.local_steps, batch_size=cfg.batch_size, lr=cfg.lr,
        bytes_per_epoch=wire / epochs if epochs else None, bandwidth="http",
        comm_time_s_sim=0.0, compute_time_s=c["elapsed"], wall_time_s=c["elapsed"],
        train_time_s=c["elapsed"],
        samples_per_s=c["samples"] / c["elapsed"] if c["elapsed"] else None, history=[],
        round=rounds, version=entry["version"], schedule=cfg.schedule,
        selected=entry.get("selected", []), skipped=entry.get("skipped", []),
        bits_up=8 * c["up_wire"], bits_down=8 * c["down_wire"])


def write_row(path: Path, row: dict[str, Any]) -> None:
    append_row(path, row)


def plot_rounds(results: Path, out_dir: Path) -> Path | None:
    """accuracy vs rounds and vs cumulative wire bytes (log x), one line per run name."""
    if not Path(results).exists():
        return None
    rows = [r for r in read_rows(results) if "round" in r and "bytes_wire_total" in r]
    if not rows:
        return None
    from ..obs.plots import plot_accuracy  # matplotlib only when plotting

    curves = {name: [(r["round"], r["bytes_wire_total"], r["test_accuracy"])
                     for r in sorted((r for r in rows if r["run_name"] == name),
                                     key=lambda r: r["round"])]
              for name in sorted({r["run_name"] for r in rows})}
    return plot_accuracy(curves, Path(out_dir) / "accuracy.png", progress="round")


def progress_line(coord: Any, entry: dict[str, Any], acc: float | None = None) -> str:
    cfg = coord.cfg
    active = sum(w["state"] == "active" for w in coord.workers.values())
    head = f"round {entry['round'] + 1}/{cfg.max_rounds} v{entry['version']}"
    if cfg.schedule == "sync":
        body = (f"sent {len(entry['selected'])} skipped {len(entry['skipped'])}"
                f"{' unselected ' + str(len(entry['unselected'])) if entry['unselected'] else ''}"
                f"{' missing ' + str(len(entry['missing'])) if entry['missing'] else ''}"
                f" ({entry['reason']})")
    else:
        body = f"applied {coord.applied} staleness {entry.get('staleness', 0)}"
    tail = f" acc {100 * acc:.2f}%" if acc is not None else ""
    return (f"{head} | workers {active} active | {body} | up "
            f"{entry['bits_up'] / 8e6:.3f} MB{tail}")
