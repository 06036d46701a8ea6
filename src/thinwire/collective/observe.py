"""The collective run's event stream and resource monitor, for `thinwire dashboard`.

Every rank appends to one `events.jsonl` in the run's log folder (`logs/<run>/`), each line
naming its rank: `step` events (loss, step time, cumulative compressed bytes) and, from
`obs.monitor.Monitor`, a `resources` sample every `--monitor-every` seconds (CPU, RSS, GPU,
OS network counters). Rank 0 also serves the live dashboard with `--dashboard PORT`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch.distributed as dist

from ..obs.dashboard import open_dashboard
from ..obs.events import EVENTS_FILE, EventLog
from ..obs.monitor import Monitor
from .runtime import Dist


class RankEvents:
    """One rank's view of the shared stream: thinned step events plus cumulative bytes."""

    def __init__(self, events: EventLog, rank: int) -> None:
        self.events, self.node, self.bytes_sent = events, f"rank-{rank}", 0.0

    def step(self, step: int, loss: float, seconds: float, lr: float,
             comm: dict[str, Any] | None) -> None:
        if comm:
            self.bytes_sent += float(comm.get("bytes_compressed", 0.0))
        self.events.step(step, node=self.node, train_loss=loss, lr=lr,
                         step_time_s=round(seconds, 6), bytes_up_wire=int(self.bytes_sent))

    def end(self, row: dict[str, Any] | None) -> None:
        if row is not None:
            self.events.emit("end", node=self.node, record=row)


@contextlib.contextmanager
def observed(folder: Path, run: str, ctx: Dist, every_s: float, steps: int,
             dashboard: str | None) -> Iterator[RankEvents]:
    """Open the run's stream (rank 0 starts it anew, the others wait for that), start this
    rank's monitor and, on rank 0, the dashboard; close all of them after the block."""
    folder.mkdir(parents=True, exist_ok=True)
    if ctx.rank == 0:
        (folder / EVENTS_FILE).write_text("")
    if ctx.world > 1 and dist.is_initialized():
        dist.barrier()
    events = EventLog(folder, run, every=max(1, steps // 200), shared=True)
    monitor = Monitor(events, every=every_s, node=f"rank-{ctx.rank}")
    try:
        with open_dashboard(dashboard if ctx.rank == 0 else None, [folder]), monitor:
            yield RankEvents(events, ctx.rank)
    finally:
        events.close()
