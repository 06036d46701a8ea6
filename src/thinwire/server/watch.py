"""A coordinator's resource monitor: its `resources` samples carry bytes/s per worker link
(the coordinator's `LinkLedger`) and every worker's state, read under the coordinator's lock.
Both coordinator runtimes (FLQ and experts) start it the same way on their event log."""

from __future__ import annotations

from typing import Any

from ..obs.monitor import Monitor


def worker_states(core: Any) -> dict[str, str]:
    """worker id -> its state (active | offline | left), for samples and the peer panel."""
    with core.lock:
        return {wid: str(info["state"]) for wid, info in core.workers.items()}


def coordinator_monitor(core: Any, every: float) -> Monitor:
    """An unstarted monitor on `core.events` (use it as a context manager, or `.start()`)."""
    return Monitor(core.events, ledger=lambda: core.ledger, every=every, lock=core.lock,
                   extra=lambda: {"peers": worker_states(core)})
