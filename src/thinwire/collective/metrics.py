"""The results.jsonl row of a collective run (the design's required fields plus extensions).

Conventions: times in ms, mem_peak in GiB; timing statistics (step time, comm time,
compress/decompress time, tokens/s) cover the measured steps only, i.e. after `warmup_steps` and
excluding the steps that also ran the gradient-error diagnostic (it adds an exact all-reduce); bytes cover every step and
count what one rank contributes to the gradient collectives (payload, indices, scales, headers,
length exchanges; not the algorithm's link traffic, which depends on ring/tree and world size);
compression_ratio_steady leaves out the uncompressed warm-up iterations (< start_iter).
comm_time is the time with at least one gradient collective in flight, from the hook; without a
hook (the `none` baseline) it comes from DDP's own reducer timers (`comm_time_source`).
"""

from __future__ import annotations

import math
import resource
import statistics
from collections import defaultdict
from typing import Any

REQUIRED = ("run_name", "world_size", "model", "dataset", "max_length", "batch_size",
            "compress_method", "compress_config", "seed", "step_time_ms_mean",
            "step_time_ms_p50", "step_time_ms_p90", "tokens_per_s", "comm_time_ms_total",
            "comm_ratio", "comm_time_ms_by_op", "bytes_raw_total", "bytes_compressed_total",
            "compression_ratio", "train_loss", "val_loss", "val_ppl")
EXTENDED = ("compress_time_ms", "decompress_time_ms", "extra_collectives",
            "extra_collective_time_ms", "index_bytes", "density", "residual_norm",
            "grad_rel_error", "grad_cos_sim", "mem_peak", "time_to_target_ppl_s")


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100)."""
    if not values:
        return float("nan")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def mem_peak_gb() -> float:
    """Peak resident memory of this process (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class RunMetrics:
    """Per-step records on one rank; `summary()` turns them into row fields."""

    def __init__(self, warmup_steps: int) -> None:
        self.warmup_steps = warmup_steps
        self.steps: list[dict[str, Any]] = []
        self.diag: list[tuple[int, float, float]] = []
        self.train_time_s = 0.0
        self.nan_steps = 0

    def record(self, step: int, seconds: float, loss: float, comm: dict | None,
               excluded: bool = False) -> None:
        self.train_time_s += seconds
        self.steps.append({"step": step, "s": seconds, "loss": loss, "comm": comm or {},
                           "measured": step >= self.warmup_steps and not excluded})

    def measured(self) -> list[dict[str, Any]]:
        rows = [s for s in self.steps if s["measured"]]
        return rows or self.steps[-1:]  # tiny runs: at least the last step

    def timing(self) -> dict[str, float]:
        ms = [1000 * s["s"] for s in self.measured()]
        return {"step_time_ms_mean": statistics.fmean(ms) if ms else float("nan"),
                "step_time_ms_p50": percentile(ms, 50), "step_time_ms_p90": percentile(ms, 90),
                "step_time_ms_p95": percentile(ms, 95), "measured_steps": len(ms)}

    def comm(self, start_iter: int = 0) -> dict[str, Any]:
        """Hook counters: times over measured steps, bytes over all steps (and over the
        steps from start_iter on, when compression is on)."""
        measured, everything, steady = defaultdict(float), defaultdict(float), defaultdict(float)
        by_op: dict[str, float] = defaultdict(float)
        for s in self.steps:
            for key, value in s["comm"].items():
                if key != "by_op":
                    everything[key] += value
                    if s["step"] >= start_iter:
                        steady[key] += value
            if s["measured"]:
                for key, value in s["comm"].items():
                    if key != "by_op":
                        measured[key] += value
                for op, value in s["comm"].get("by_op", {}).items():
                    by_op[op] += 1000 * value
        return {"measured": measured, "all": everything, "steady": steady, "by_op": dict(by_op)}

    def train_loss(self, last: int = 10) -> float:
        losses = [s["loss"] for s in self.steps[-last:] if math.isfinite(s["loss"])]
        return statistics.fmean(losses) if losses else float("nan")


def comm_fields(metrics: RunMetrics, step_ms_total: float, raw_per_step: int,
                ddp_comm_ms_mean: float | None, start_iter: int = 0) -> dict[str, Any]:
    """The comm/bytes part of the row (from the hook counters, or analytic for no hook)."""
    c = metrics.comm(start_iter)
    m, a, steady = c["measured"], c["all"], c["steady"]
    n_steps = len(metrics.steps)
    if a.get("bytes_raw"):
        raw, sent = a["bytes_raw"], a["bytes_compressed"]
        comm_ms, source, by_op = 1000 * m.get("comm_s", 0.0), "hook", c["by_op"]
    elif ddp_comm_ms_mean is not None:  # no hook: DDP's fp32 all-reduce, its reducer timers
        raw = sent = raw_per_step * n_steps
        comm_ms = ddp_comm_ms_mean * len(metrics.measured())
        source, by_op = "ddp_logging", {"all_reduce": comm_ms}
    else:  # FSDP without a hook: no timer (use --hook-baseline or --profile)
        raw = sent = raw_per_step * n_steps
        comm_ms, source, by_op = None, "unavailable", {}
    elements = a.get("elements", 0)
    return {
        "comm_time_ms_total": comm_ms,
        "comm_ratio": comm_ms / step_ms_total if comm_ms is not None and step_ms_total else None,
        "comm_time_ms_by_op": by_op,
        "comm_time_source": source,
        "ddp_backward_comm_ms_mean": ddp_comm_ms_mean,
        "bytes_raw_total": int(raw),
        "bytes_compressed_total": int(sent),
        "compression_ratio": raw / sent if sent else None,
        "compression_ratio_total": raw / sent if sent else None,  # obs/record.py's key
        "compression_ratio_steady": (steady["bytes_raw"] / steady["bytes_compressed"]
                                     if steady.get("bytes_compressed") else
                                     (raw / sent if sent else None)),
        "compress_time_ms": 1000 * m.get("compress_s", 0.0),
        "decompress_time_ms": 1000 * m.get("decompress_s", 0.0),
        "collectives": int(a.get("collectives", 0)),
        "extra_collectives": int(a.get("extra_collectives", 0)),
        "extra_collective_time_ms": 1000 * m.get("extra_comm_s", 0.0),
        "index_bytes": int(a.get("index_bytes", 0)),
        "pad_bytes": int(a.get("pad_bytes", 0)),
        "density": a["elements_sent"] / elements if elements else 1.0,
    }
