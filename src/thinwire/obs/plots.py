"""PNG plots, one module for every runtime: test accuracy against progress (epoch or round)
and against cumulative wire bytes (log x), one colour and marker per configuration.

matplotlib is optional (`thinwire[plots]`, in most extras): without it `plot_accuracy` and
`plot_runs` write nothing (None, []) and callers print `SKIPPED` once instead of the paths.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import have
from .results import group_key

SKIPPED = 'plots: skipped (no matplotlib: pip install "thinwire[plots]")'


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display), or None when not installed."""
    if not have("matplotlib"):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt

Point = tuple[float, int, float]  # (epoch or round, cumulative wire bytes, accuracy 0..1)


def plot_accuracy(curves: dict[str, list[Point]], path: Path, progress: str = "epoch",
                  bytes_label: str = "cumulative wire bytes (up + down)") -> Path | None:
    """Left: accuracy vs `progress`; right: accuracy vs bytes. A curve that moved no bytes
    (centralized) is a dashed reference line on the right. None without matplotlib."""
    plt = pyplot()
    if plt is None:
        return None
    from matplotlib.ticker import NullFormatter

    fig, (ax_p, ax_b) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, (label, points) in enumerate(curves.items()):
        if not points:
            continue
        color, marker = f"C{i % 10}", "osD^v<>p*h"[i % 10]
        acc = [100 * a for _, _, a in points]
        ax_p.plot([p for p, _, _ in points], acc, marker=marker, color=color, label=label)
        if points[-1][1]:
            ax_b.plot([max(b, 1) for _, b, _ in points], acc, marker=marker, color=color)
        else:
            ax_b.axhline(acc[-1], color=color, linestyle="--", linewidth=1)
    ax_p.set(xlabel=progress, ylabel="test accuracy (%)", title=f"accuracy vs {progress}")
    ax_b.set(xlabel=bytes_label, ylabel="test accuracy (%)", title="accuracy vs bytes",
             xscale="log")
    ax_b.xaxis.set_minor_formatter(NullFormatter())
    for ax in (ax_p, ax_b):
        ax.grid(alpha=0.3)
    ax_p.legend(fontsize=8)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return save_figure(fig, Path(path))


def plot_runs(rows: list[dict], out_dir: Path) -> list[Path]:
    """The simulator's runs: per-epoch history of each results row, seeds of one
    configuration in one colour (the first seed labelled); [] without matplotlib."""
    curves: dict[str, list[Point]] = {}
    for row in rows:
        hist = row.get("history") or []
        label = group_key(row)
        if label in curves:  # another seed of the same configuration
            label = f"{label} ({row['seed']})"
        curves[label] = [(h["epoch"], h["bytes_wire_cum"], h["test_accuracy"]) for h in hist]
    path = plot_accuracy(curves, Path(out_dir) / "accuracy.png")
    return [path] if path is not None else []


def save_figure(fig: Any, path: Path) -> Path:
    """Lay out, write the PNG and free the figure (pyplot keeps every open one alive)."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path


def plot_pareto(points: list[tuple[str, float, float]], front: list[bool], path: Path,
                bytes_label: str = "total wire bytes (up + down)",
                title: str = "accuracy vs bytes: Pareto front") -> Path | None:
    """(label, bytes, accuracy 0..1) points on a log-x plot: the front's points marked,
    labelled and joined in order of bytes; the others grey with small grey labels. None
    without matplotlib."""
    plt = pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(9, 5.5))
    merged: dict[tuple[float, float, bool], list[str]] = {}
    for (lab, b, a), f in zip(points, front):  # coincident points share one label
        merged.setdefault((b, 100 * a, f), []).append(lab)
    on = sorted((b, a, " / ".join(labs)) for (b, a, f), labs in merged.items() if f)
    off = [(b, a, " / ".join(labs)) for (b, a, f), labs in merged.items() if not f]
    if off:
        ax.scatter([b for b, _, _ in off], [a for _, a, _ in off], color="0.6", s=30,
                   label="dominated", zorder=2)
    # labels alternate below/above their point, so neighbours at similar bytes stay apart
    for i, (b, a, lab) in enumerate(sorted(off)):
        ax.annotate(lab, (b, a), textcoords="offset points", xytext=(5, (-11, 5)[i % 2]),
                    fontsize=7, color="0.45")
    if on:
        ax.plot([b for b, _, _ in on], [a for _, a, _ in on], color="C3", marker="o",
                markersize=8, linewidth=1.5, label="Pareto front", zorder=3)
    for i, (b, a, lab) in enumerate(on):
        ax.annotate(lab, (b, a), textcoords="offset points", xytext=(6, (6, -15)[i % 2]),
                    fontsize=9, color="C3", weight="bold")
    ax.set(xlabel=bytes_label, ylabel="test accuracy (%)", title=title, xscale="log")
    ax.grid(alpha=0.3, which="both")
    ax.margins(x=0.25, y=0.12)  # room for the labels at the edges
    ax.legend(fontsize=8, loc="lower right")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return save_figure(fig, Path(path))
