"""Resource samples: CPU, memory and (when torch sees one) GPU use of this process.

Runtimes add one sample to their events every epoch or round, and the monitor
(obs/monitor.py) one every second, so the event stream and the live dashboard show what a run
cost the machine, not only the wire. GPU figures come from pynvml when a GPU is present and
are absent otherwise; RSS and threads come from psutil (`thinwire[dashboard]`) and are absent
without it, when the CPU % is this process's CPU time over wall time (the same measure).
"""

from __future__ import annotations

import os
import time
from typing import Any

try:
    import psutil
except ImportError:  # optional: the core install samples CPU time only
    psutil = None


class ResourceMonitor:
    def __init__(self, pid: int | None = None) -> None:
        self.proc = psutil.Process(pid or os.getpid()) if psutil is not None else None
        if self.proc is not None:
            self.proc.cpu_percent(None)  # the first call only starts the measurement
        self.started = time.time()
        self._cpu = (time.process_time(), time.monotonic())

    def sample(self) -> dict[str, Any]:
        """cpu % (of one core, since the last sample), RSS bytes, threads, GPU if any."""
        if self.proc is None:
            cpu, now = time.process_time(), time.monotonic()
            busy = 100 * (cpu - self._cpu[0]) / max(now - self._cpu[1], 1e-6)
            self._cpu = (cpu, now)
            out = {"cpu_percent": round(busy, 1),
                   "uptime_s": round(time.time() - self.started, 3)}
            out.update(_gpu())
            return out
        with self.proc.oneshot():
            out = {"cpu_percent": self.proc.cpu_percent(None),
                   "rss_bytes": self.proc.memory_info().rss,
                   "threads": self.proc.num_threads(),
                   "uptime_s": round(time.time() - self.started, 3)}
        out.update(_gpu())
        return out


def _gpu() -> dict[str, Any]:
    """GPU use when a GPU is present, else nothing; a sampling problem is never an error."""
    out = _nvml()
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():  # never init CUDA here
            out["gpu_memory_allocated_bytes"] = int(torch.cuda.memory_allocated())
    except Exception:  # noqa: BLE001  a broken driver must not stop a run
        pass
    return out


_NVML: list[Any] = []  # [pynvml module] once initialised, [None] when unavailable


def _nvml() -> dict[str, Any]:
    """Device-level utilization and memory of every GPU, summed (pynvml, if installed)."""
    if not _NVML:
        try:
            import pynvml

            pynvml.nvmlInit()
            _NVML.append(pynvml if pynvml.nvmlDeviceGetCount() else None)
        except Exception:  # noqa: BLE001  no pynvml, no driver or no GPU
            _NVML.append(None)
    nvml = _NVML[0]
    if nvml is None:
        return {}
    try:
        handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
        util = [nvml.nvmlDeviceGetUtilizationRates(h).gpu for h in handles]
        used = [nvml.nvmlDeviceGetMemoryInfo(h).used for h in handles]
    except Exception:  # noqa: BLE001
        return {}
    return {"gpu_count": len(handles), "gpu_utilization": sum(util) / len(util),
            "gpu_memory_bytes": int(sum(used))}
