"""Coordinator outputs: test evaluation, results.jsonl round rows, plots, progress lines.

Round rows carry the simulator's result-row keys (see run/experiment.py `result_row`) plus
round, version, selected, skipped, bits_up and bits_down, so `thinwire compare` readers and
the same plotting habits apply.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..obs.results import append_row, read_rows
from ..tasks import Task


@torch.no_grad()
def evaluate(model: torch.nn.Module, task: Task) -> tuple[float, float]:
    model.eval()
    correct, loss_sum, n = 0, 0.0, len(task.test_y)
    for i in range(0, n, 1000):
        x, y = task.test_x[i:i + 1000], task.test_y[i:i + 1000]
        out = model(x)
        loss_sum += float(F.cross_entropy(out, y, reduction="sum"))
        correct += int((out.argmax(1) == y).sum())
    return correct / max(n, 1), loss_sum / max(n, 1)


def counters(coord: Any) -> dict[str, Any]:
    """Cumulative traffic and work at the moment a round closes."""
    t = coord.ledger.totals()
    losses = coord.train_losses[-max(len(coord.workers), 1) * 4:]
    return {"up_wire": t["up_wire"], "down_wire": t["down_wire"], "up_raw": t["up_raw"],
            "down_raw": t["down_raw"], "uploads": t["sent"], "skipped": t["skipped"],
            "samples": coord.samples, "elapsed": coord.elapsed(),
            "train_loss": sum(losses) / len(losses) if losses else None}


def round_row(coord: Any, entry: dict[str, Any], c: dict[str, Any], acc: float,
              loss: float) -> dict[str, Any]:
    cfg, rounds = coord.cfg, entry["round"] + 1
    wire, raw = c["up_wire"] + c["down_wire"], c["up_raw"] + c["down_raw"]
    epochs = c["samples"] / max(len(coord.task.train_y), 1)
    return {
        "run_name": cfg.name(), "task": cfg.task, "model": cfg.model or coord.task.model,
        "nodes": cfg.total_workers, "split": cfg.split, "mode": cfg.mode,
        "codec": coord.codec_name, "codec_config": cfg.upload_codec(),
        "error_feedback": cfg.error_feedback, "policy": "laq" if cfg.is_lazy() else "always",
        "seed": cfg.seed, "epochs": epochs, "steps": rounds * cfg.local_steps,
        "batch_size": cfg.batch_size, "lr": cfg.lr, "test_accuracy": acc, "test_loss": loss,
        "train_loss": c["train_loss"], "bytes_raw_total": raw, "bytes_wire_total": wire,
        "bytes_up_wire": c["up_wire"], "bytes_down_wire": c["down_wire"],
        "compression_ratio": c["up_raw"] / c["up_wire"] if c["up_wire"] else None,
        "compression_ratio_total": raw / wire if wire else None,
        "uploads": c["uploads"], "skipped_uploads": c["skipped"],
        "bytes_per_epoch": wire / epochs if epochs else None, "bandwidth": "http",
        "comm_time_s_sim": 0.0, "compute_time_s": c["elapsed"], "wall_time_s": c["elapsed"],
        "train_time_s": c["elapsed"],
        "samples_per_s": c["samples"] / c["elapsed"] if c["elapsed"] else None,
        "history": [],
        "round": rounds, "version": entry["version"], "schedule": cfg.schedule,
        "selected": entry.get("selected", []), "skipped": entry.get("skipped", []),
        "bits_up": 8 * c["up_wire"], "bits_down": 8 * c["down_wire"],
    }


def write_row(path: Path, row: dict[str, Any]) -> None:
    append_row(path, row)


def plot_rounds(results: Path, out_dir: Path) -> Path | None:
    """accuracy vs rounds and vs cumulative uploaded bits (log x), one line per run name."""
    if not Path(results).exists():
        return None
    rows = [r for r in read_rows(results) if "round" in r and "bits_up" in r]
    if not rows:
        return None
    from ..obs.plots import plt, save_figure  # matplotlib only when plotting

    fig, (ax_r, ax_b) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = sorted({r["run_name"] for r in rows})
    for i, name in enumerate(names):
        rs = sorted((r for r in rows if r["run_name"] == name), key=lambda r: r["round"])
        acc = [100 * r["test_accuracy"] for r in rs]
        ax_r.plot([r["round"] for r in rs], acc, marker="o", color=f"C{i % 10}", label=name)
        ax_b.plot([max(r["bits_up"], 1) for r in rs], acc, marker="o", color=f"C{i % 10}")
    ax_r.set(xlabel="round", ylabel="test accuracy (%)", title="accuracy vs rounds")
    ax_b.set(xlabel="cumulative uploaded bits", ylabel="test accuracy (%)",
             title="accuracy vs uploaded bits", xscale="log")
    for ax in (ax_r, ax_b):
        ax.grid(alpha=0.3)
    ax_r.legend(fontsize=8)
    return save_figure(fig, Path(out_dir) / "accuracy.png")


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
