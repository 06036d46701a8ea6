"""results.jsonl rows and the comparison table printed after a compare."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path


def append_row(path: Path, row: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row, default=str) + "\n")


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def group_key(row: dict) -> str:
    return row["run_name"].rsplit("-s", 1)[0]


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.2f}"
    return f"{100 * statistics.mean(values):.2f} +- {100 * statistics.stdev(values):.2f}"


def _mean_ratio(rows: list[dict], key: str) -> str:
    values = [r[key] for r in rows if r.get(key)]
    return f"{statistics.mean(values):.1f}" if values else "-"


def summary_table(rows: list[dict]) -> str:
    """One line per configuration (seeds pooled): accuracy mean +- std, bytes, ratio, times."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        groups[group_key(row)].append(row)
    header = ["config", "acc % (mean +- std)", "MB/epoch", "ratio up", "down", "total",
              "sent/skipped", "train s", "sim comm s", "sim wall s"]
    lines = [header]
    for name, rs in groups.items():
        lines.append([
            name, _mean_std([r["test_accuracy"] for r in rs]),
            f"{statistics.mean(r['bytes_per_epoch'] for r in rs) / 1e6:.3f}",
            *(_mean_ratio(rs, f"compression_ratio_{k}") for k in ("up", "down", "total")),
            f"{sum(r['uploads'] for r in rs)}/{sum(r['skipped_uploads'] for r in rs)}",
            f"{statistics.mean(r['train_time_s'] for r in rs):.1f}",
            f"{statistics.mean(r['comm_time_s_sim'] for r in rs):.4f}",
            f"{statistics.mean(r['wall_time_s'] for r in rs):.1f}",
        ])
    return format_table(lines)


def format_table(lines: list[list]) -> str:
    """Left-aligned columns under a dashed rule; the first line is the header. Every
    runtime's table (simulator, service, collective report) prints through this."""
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(lines[0]))]
    out = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)) for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def result_text(row: dict, out: Path, as_json: bool = False, extra: str = "") -> str:
    """What a run command prints: the row as one JSON line, or the table, `extra` lines and
    where results.jsonl is."""
    if as_json:
        return json.dumps({k: v for k, v in row.items() if k != "history"})
    return "\n".join([summary_table([row]), *([extra] if extra else []),
                      f"results: {Path(out) / 'results.jsonl'}"])
