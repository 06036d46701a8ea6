"""PNG plots: test accuracy vs epoch and vs cumulative wire bytes (log x)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .results import group_key  # noqa: E402


def plot_runs(rows: list[dict], out_dir: Path) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, (ax_epoch, ax_bytes) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors: dict[str, int] = {}  # one colour + marker per configuration, first seen first
    for row in rows:
        hist = row.get("history") or []
        if not hist:
            continue
        label = group_key(row)
        kwargs = {"label": label} if label not in colors else {}
        i = colors.setdefault(label, len(colors))
        color, marker = f"C{i % 10}", "osD^v<>p*h"[i % 10]
        acc = [100 * h["test_accuracy"] for h in hist]
        ax_epoch.plot([h["epoch"] for h in hist], acc, marker=marker, color=color, **kwargs)
        if hist[-1]["bytes_wire_cum"]:
            ax_bytes.plot([max(h["bytes_wire_cum"], 1) for h in hist], acc, marker=marker,
                          color=color)
        else:  # no communication (centralized): its final accuracy as a reference line
            ax_bytes.axhline(acc[-1], color=color, linestyle="--", linewidth=1)
    ax_epoch.set(xlabel="epoch", ylabel="test accuracy (%)", title="accuracy vs epoch")
    ax_bytes.set(xlabel="cumulative wire bytes (up + down)", ylabel="test accuracy (%)",
                 title="accuracy vs bytes", xscale="log")
    ax_bytes.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    for ax in (ax_epoch, ax_bytes):
        ax.grid(alpha=0.3)
    ax_epoch.legend(fontsize=8)
    return [save_figure(fig, out_dir / "accuracy.png")]


def save_figure(fig: "plt.Figure", path: Path) -> Path:
    """Lay out, write the PNG and free the figure (pyplot keeps every open one alive)."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
