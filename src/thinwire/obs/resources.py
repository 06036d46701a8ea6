"""Resource samples: CPU, memory and (when torch sees one) GPU use of this process.

Runtimes add one sample to their events every epoch or round, so the event stream and the
live dashboard show what a run cost the machine, not only the wire.
"""

from __future__ import annotations

import os
import time
from typing import Any

import psutil


class ResourceMonitor:
    def __init__(self, pid: int | None = None) -> None:
        self.proc = psutil.Process(pid or os.getpid())
        self.proc.cpu_percent(None)  # the first call only starts the measurement
        self.started = time.time()

    def sample(self) -> dict[str, Any]:
        """cpu % (of one core, since the last sample), RSS bytes, threads, GPU if any."""
        with self.proc.oneshot():
            out = {"cpu_percent": self.proc.cpu_percent(None),
                   "rss_bytes": self.proc.memory_info().rss,
                   "threads": self.proc.num_threads(),
                   "uptime_s": round(time.time() - self.started, 3)}
        out.update(_gpu())
        return out


def _gpu() -> dict[str, Any]:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a core dependency
        return {}
    if not torch.cuda.is_available():
        return {}
    return {"gpu_memory_bytes": int(torch.cuda.memory_allocated()),
            "gpu_utilization": _gpu_utilization()}


def _gpu_utilization() -> float | None:
    import torch

    try:
        return float(torch.cuda.utilization())
    except Exception:  # needs pynvml; absent on many machines
        return None
