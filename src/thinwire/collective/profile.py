"""`--profile`: a torch.profiler trace of N training steps and a comm-vs-compute summary.

The trace goes to <out>/logs/<run>/profiler/ (TensorBoard's profiler plugin or Perfetto open
it); summary_rank<r>.txt / .json next to it split the profiled wall time into communication in
flight (union of collective spans: gloo/nccl work, c10d launches, barriers; gloo runs its work
on its own threads, where it has no self time), compression (thinwire::encode/decode ranges
from the hooks) and compute (self time of every other op, device time for CUDA kernels).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

COMM = re.compile(r"gloo|nccl|c10d|all_reduce|allreduce|all_gather|allgather|reduce_scatter|"
                  r"reducescatter|all_to_all|alltoall|broadcast|barrier", re.I)
COMPRESS = re.compile(r"^thinwire::")


def category(name: str) -> str:
    if COMPRESS.search(name):
        return "compress"
    return "comm" if COMM.search(name) else "compute"


def _union(intervals: list[tuple[float, float]]) -> float:
    total, last = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b > last:
            total += b - max(a, last)
            last = b
    return total


def summarize(events: Any, top: int = 8) -> dict[str, Any]:
    """Wall time of the profiled steps and, within it, the time with a collective in flight
    (union of gloo/nccl work spans: gloo runs them on its own threads, where they have no self
    time), with a compression range open, and the self time of compute ops (prof.events())."""
    steps: list = []
    spans: dict[str, list] = {"comm": [], "compress": []}
    per_op: dict[tuple[str, str], list] = {}
    for e in events:
        name, rng = e.name, e.time_range
        if name.startswith("ProfilerStep"):
            steps.append((rng.start, rng.end))
            continue
        cat = category(name)
        if cat == "compute":
            dev = float(getattr(e, "self_device_time_total", 0.0) or 0.0)
            us = dev if dev > 0 else float(e.self_cpu_time_total)
        else:
            us = rng.end - rng.start
            spans[cat].append((rng.start, rng.end))
        entry = per_op.setdefault((cat, name), [0, 0.0])
        entry[0] += 1
        entry[1] += us / 1000
    wall = _union(steps) / 1000 or 1.0
    cats = {"comm": _union(spans["comm"]) / 1000, "compress": _union(spans["compress"]) / 1000,
            "compute": sum(v[1] for (c, _), v in per_op.items() if c == "compute")}
    ops = sorted(({"op": n, "category": c, "calls": v[0], "ms": v[1]}
                  for (c, n), v in per_op.items()), key=lambda o: -o["ms"])
    return {"wall_ms": wall, "by_category_ms": cats,
            "by_category_share": {c: v / wall for c, v in cats.items()},
            "top_ops": {c: [o for o in ops if o["category"] == c][:top] for c in cats}}


def format_summary(summary: dict[str, Any], steps: int) -> str:
    lines = [f"profiler summary over {steps} steps: {summary['wall_ms']:.0f} ms wall",
             f"{'category':10s} {'ms':>10s} {'ms/step':>9s} {'of wall':>8s}"]
    for cat, ms in summary["by_category_ms"].items():
        lines.append(f"{cat:10s} {ms:10.1f} {ms / max(steps, 1):9.2f} "
                     f"{100 * summary['by_category_share'][cat]:7.1f}%")
    lines.append("(comm: a collective in flight; compress: thinwire encode/decode; compute: "
                 "self time of the other ops; comm may overlap compute)")
    for cat, ops in summary["top_ops"].items():
        if ops:
            lines.append(f"-- top {cat} ops")
            lines += [f"   {o['op'][:48]:48s} {o['calls']:6d} calls {o['ms']:10.1f} ms"
                      for o in ops]
    return "\n".join(lines)


class StepProfiler:
    """Wraps torch.profiler with a wait/warmup/active schedule; call step() after each step."""

    def __init__(self, folder: Path, rank: int, steps: int, skip: int = 1) -> None:
        from torch.profiler import ProfilerActivity, profile, schedule

        self.folder, self.rank, self.steps = Path(folder), rank, steps
        self.folder.mkdir(parents=True, exist_ok=True)
        activities = [ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(ProfilerActivity.CUDA)
        self.summary: dict[str, Any] | None = None
        self.text = ""
        self.prof = profile(activities=activities,
                            schedule=schedule(wait=max(skip - 1, 0), warmup=1, active=steps,
                                              repeat=1),
                            on_trace_ready=self._ready)

    def _ready(self, prof: Any) -> None:
        from torch.profiler import tensorboard_trace_handler

        tensorboard_trace_handler(str(self.folder), worker_name=f"rank{self.rank}")(prof)
        self.summary = summarize(prof.events())
        self.text = format_summary(self.summary, self.steps)
        (self.folder / f"summary_rank{self.rank}.txt").write_text(self.text + "\n")
        (self.folder / f"summary_rank{self.rank}.json").write_text(
            json.dumps(self.summary, indent=1))

    def __enter__(self) -> "StepProfiler":
        self.prof.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.prof.__exit__(*exc)

    def step(self) -> None:
        self.prof.step()
