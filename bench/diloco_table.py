"""Paired table of collective runs against per-step `none` DDP on the same seed.

    python bench/diloco_table.py runs/bench_diloco/results.jsonl

One line per (method, seed): val PPL, the paired difference to `none` on that seed, the
compression ratio against per-step fp32 DDP and the bytes one rank sent; then the mean per
method over the seeds that have both runs. The latest row of each (run_name) counts.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def method(row: dict) -> str:
    cfg = row["compress_config"]
    name = row["compress_method"] + (" + EF" if cfg.get("error_feedback") else "")
    if cfg.get("outer_steps"):
        name += (f", H={cfg['outer_steps']}, outer lr {cfg['outer_lr']} "
                 f"m {cfg['outer_momentum']}")
    return name


def table(rows: list[dict]) -> str:
    latest = {r["run_name"]: r for r in rows}.values()
    base = {r["seed"]: r for r in latest if r["compress_method"] == "none"
            and not r["compress_config"].get("outer_steps")}
    lines = ["| method | seed | val PPL | vs `none` (paired) | compression vs per-step DDP "
             "| MB sent per rank | step ms |", "|---|---|---|---|---|---|---|"]
    diffs: dict[str, list[float]] = defaultdict(list)
    ratios: dict[str, list[float]] = defaultdict(list)
    for r in sorted(latest, key=lambda r: (method(r) != "none", method(r), r["seed"])):
        b = base.get(r["seed"])
        diff = 100 * (r["val_ppl"] / b["val_ppl"] - 1) if b else None
        if diff is not None and r is not b:
            diffs[method(r)].append(diff)
            ratios[method(r)].append(r["compression_ratio"])
        lines.append(f"| `{method(r)}` | {r['seed']} | {r['val_ppl']:.2f} | "
                     f"{'-' if diff is None or r is b else f'{diff:+.2f}%'} | "
                     f"{r['compression_ratio']:.1f}x | {r['bytes_compressed_total'] / 1e6:.1f} | "
                     f"{r['step_time_ms_mean']:.0f} |")
    lines += ["", "| method | seeds | mean paired PPL difference (s.e.) | compression |",
              "|---|---|---|---|"]
    for name, ds in diffs.items():
        se = statistics.stdev(ds) / len(ds) ** 0.5 if len(ds) > 1 else float("nan")
        lines.append(f"| `{name}` | {len(ds)} | {statistics.fmean(ds):+.2f}% ({se:.2f}%) | "
                     f"{statistics.fmean(ratios[name]):.1f}x |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    rows = [json.loads(line) for line in Path(argv[0]).read_text().splitlines() if line]
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
