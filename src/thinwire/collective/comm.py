"""Timed collectives and the counters a hook keeps (bytes, times, collectives, diagnostics).

Collectives are only ever *issued* from the hook body, i.e. from the autograd thread in bucket
order, so every rank issues them in the same order (gloo matches collectives by issue order and
runs future callbacks on its own worker threads; NCCL runs them inline). Callbacks only decode.

Communication time is the union of the intervals during which at least one collective was in
flight (issue -> completion as the host sees it), so overlapping buckets are not double counted.
On CUDA these are host-side times; `--profile` gives device times.
"""

from __future__ import annotations

import math
import threading
import time
from collections import defaultdict
from typing import Any, Callable

import torch
import torch.distributed as dist

Future = torch.futures.Future
COUNTERS = ("bytes_raw", "bytes_compressed", "pad_bytes", "index_bytes", "elements",
            "elements_sent", "compress_s", "decompress_s", "collectives", "extra_collectives",
            "diag_err_sq", "diag_ref_sq", "diag_dot", "diag_out_sq", "diag_samples")


def now() -> float:
    return time.perf_counter()


def union_length(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, -math.inf
    for t0, t1 in sorted(intervals):
        if t1 <= end:
            continue
        total += t1 - max(t0, end)
        end = t1
    return total


class CommStats:
    """Per-step and run totals; thread-safe because gloo completes futures on its threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.step: dict[str, float] = defaultdict(float)
        self.total: dict[str, float] = defaultdict(float)
        self.by_op: dict[str, float] = defaultdict(float)
        self.intervals: list[tuple[str, float, float, bool]] = []
        self.sharded = False  # FSDP: each rank holds a shard, diagnostics sum over ranks

    def add(self, **counts: float) -> None:
        with self.lock:
            for key, value in counts.items():
                self.step[key] += value

    def interval(self, op: str, t0: float, t1: float, extra: bool = False) -> None:
        with self.lock:
            self.intervals.append((op, t0, t1, extra))

    def compare(self, exact: torch.Tensor, out: torch.Tensor) -> None:
        """Accumulate ||g - g_hat||^2, ||g||^2, <g, g_hat>, ||g_hat||^2 for the diagnostics."""
        g, h = exact.double().reshape(-1), out.double().reshape(-1)
        self.add(diag_err_sq=float(torch.sum((g - h) ** 2)), diag_ref_sq=float(g @ g),
                 diag_dot=float(g @ h), diag_out_sq=float(h @ h), diag_samples=1)

    def end_step(self) -> dict[str, Any]:
        """Close the step: its counters, comm time (union) and comm time by op."""
        with self.lock:
            step, intervals = dict(self.step), self.intervals
            self.step, self.intervals = defaultdict(float), []
        ops: dict[str, list] = defaultdict(list)
        for op, t0, t1, _ in intervals:
            ops[op].append((t0, t1))
        step["comm_s"] = union_length([(t0, t1) for _, t0, t1, _ in intervals])
        step["extra_comm_s"] = union_length([(t0, t1) for _, t0, t1, x in intervals if x])
        step["by_op"] = {op: union_length(iv) for op, iv in ops.items()}
        with self.lock:
            for key, value in step.items():
                if key != "by_op":
                    self.total[key] += value
            for op, value in step["by_op"].items():
                self.by_op[op] += value
        return step

    def state_dict(self) -> dict[str, Any]:
        return {"total": dict(self.total), "by_op": dict(self.by_op)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.total = defaultdict(float, state.get("total", {}))
        self.by_op = defaultdict(float, state.get("by_op", {}))


def diag_summary(step: dict[str, float]) -> tuple[float | None, float | None]:
    """(relative error, cosine similarity) from accumulated diagnostic sums."""
    if not step.get("diag_samples"):
        return None, None
    ref, out = step["diag_ref_sq"], step["diag_out_sq"]
    rel = math.sqrt(step["diag_err_sq"] / ref) if ref > 0 else 0.0
    cos = step["diag_dot"] / math.sqrt(ref * out) if ref > 0 and out > 0 else 1.0
    return rel, cos


# ---- collectives --------------------------------------------------------------------------
def run_sync(stats: CommStats, op: str, fn: Callable[[], Any], extra: bool = False) -> None:
    """Issue a collective and wait for it, recording its interval."""
    t0 = now()
    work = fn()
    if work is not None:
        work.wait()
    stats.interval(op, t0, now(), extra)
    stats.add(collectives=1, extra_collectives=int(extra))


def run_async(stats: CommStats, op: str, fn: Callable[[], Any], extra: bool = False) -> Future:
    """Issue an async collective; the returned future completes after its interval is noted."""
    t0 = now()
    fut = fn().get_future()
    stats.add(collectives=1, extra_collectives=int(extra))

    def done(f: Future) -> Any:
        stats.interval(op, t0, now(), extra)
        return f.value()

    return fut.then(done)


def all_reduce_async(stats: CommStats, tensor: torch.Tensor, group: Any, op_name: str = "all_reduce",
                     extra: bool = False) -> Future:
    return run_async(stats, op_name, lambda: dist.all_reduce(tensor, group=group, async_op=True),
                     extra)


def gather_lengths(stats: CommStats, n: int, device: torch.device, group: Any,
                   world: int) -> list[int]:
    """Everyone's packed length (the extra round gloo's equal-size all-gather needs)."""
    mine = torch.tensor([n], dtype=torch.int64, device=device)
    outs = [torch.empty_like(mine) for _ in range(world)]
    run_sync(stats, "all_gather", lambda: dist.all_gather(outs, mine, group=group,
                                                         async_op=True), extra=True)
    return [int(v) for v in torch.cat(outs).tolist()]


def completed(value: torch.Tensor) -> Future:
    fut: Future = Future()
    fut.set_result(value)
    return fut
