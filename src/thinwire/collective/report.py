"""`thinwire report DIR...`: compare collective runs from their results.jsonl rows.

Prints one line per run (method, step time, tokens/s, comm share, bytes, compression ratio, val
PPL and its change against the `none` run with the same world size, model, steps and seed) and
writes val_ppl_vs_bytes.png and step_time_by_method.png to --out (default <first DIR>/report).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..obs.results import format_table, read_rows


def find_rows(paths: list[Path]) -> list[dict[str, Any]]:
    rows = []
    for path in paths:
        files = [path] if path.is_file() else sorted(path.rglob("results.jsonl"))
        if not files:
            raise DataError(f"no results.jsonl under {path}")
        for f in files:
            rows += [r for r in read_rows(f) if "compress_method" in r and "val_ppl" in r]
    if not rows:
        raise DataError("no collective runs (rows with compress_method and val_ppl) found")
    return rows


def label(row: dict[str, Any]) -> str:
    cfg = row.get("compress_config") or {}
    extra = [k for k, on in (("EF", cfg.get("error_feedback")),
                             (f"fsdp{cfg.get('fsdp')}", cfg.get("fsdp"))) if on]
    method = cfg.get("spec") or row["compress_method"]
    return method + (f" [{', '.join(extra)}]" if extra else "")


def _key(row: dict[str, Any]) -> tuple:
    return (row.get("world_size"), row.get("model"), row.get("steps"), row.get("seed"),
            row.get("dataset"))


def table(rows: list[dict[str, Any]]) -> str:
    base = {_key(r): r["val_ppl"] for r in rows
            if (r.get("compress_config") or {}).get("spec", r["compress_method"]) == "none"}
    header = ["method", "ws", "steps", "step ms", "p90 ms", "tok/s", "comm %", "MB sent",
              "ratio", "val ppl", "d ppl %"]
    lines = [header]
    for r in rows:
        ref = base.get(_key(r))
        ratio = r.get("compression_ratio")
        lines.append([
            label(r), str(r.get("world_size")), str(r.get("steps")),
            f"{r['step_time_ms_mean']:.0f}", f"{r['step_time_ms_p90']:.0f}",
            f"{r['tokens_per_s']:.0f}",
            f"{100 * r['comm_ratio']:.1f}" if r.get("comm_ratio") is not None else "-",
            f"{r['bytes_compressed_total'] / 1e6:.2f}",
            f"{ratio:.1f}" if ratio else "-", f"{r['val_ppl']:.2f}",
            f"{100 * (r['val_ppl'] / ref - 1):+.2f}" if ref else "-",
        ])
    return format_table(lines)


def plot(rows: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    from ..obs.plots import SKIPPED, pyplot, save_figure

    plt = pyplot()
    if plt is None:
        print(SKIPPED)
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, r in enumerate(rows):
        ax.scatter(max(r["bytes_compressed_total"], 1), r["val_ppl"], color=f"C{i % 10}",
                   label=label(r))
    ax.set(xscale="log", xlabel="gradient bytes sent per rank (total)", ylabel="val PPL",
           title="validation perplexity vs bytes")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ppl_path = save_figure(fig, out_dir / "val_ppl_vs_bytes.png")
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(rows)), 4.5))
    names = [label(r) for r in rows]
    step = [r["step_time_ms_mean"] for r in rows]
    comm = [min((r.get("comm_time_ms_total") or 0) / max(r.get("measured_steps") or 1, 1), s)
            for r, s in zip(rows, step)]
    xs = range(len(rows))
    ax.bar(xs, [s - c for s, c in zip(step, comm)], label="compute + other")
    ax.bar(xs, comm, bottom=[s - c for s, c in zip(step, comm)], label="communication")
    ax.set_xticks(list(xs), names, rotation=30, ha="right", fontsize=7)
    ax.set(ylabel="ms per step (mean)", title="step time by method")
    ax.legend(fontsize=8)
    step_path = save_figure(fig, out_dir / "step_time_by_method.png")
    return [ppl_path, step_path]


def report_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="thinwire report", description=__doc__)
    p.add_argument("paths", nargs="+", type=Path, help="run folders or results.jsonl files")
    p.add_argument("--out", type=Path, default=None, help="plot folder")
    p.add_argument("--no-plots", action="store_true")
    args = p.parse_args(argv)
    try:
        rows = find_rows(args.paths)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(table(rows))
    if not args.no_plots:
        first = args.paths[0]
        out = args.out or ((first.parent if first.is_file() else first) / "report")
        for path in plot(rows, out):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(report_main())
