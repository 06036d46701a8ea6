"""The coordinator's event stream: `<state-dir>/events.jsonl`, read by the dashboard.

A `round` event per evaluated round (accuracy, loss, cumulative bytes per direction and per
link, uploads sent and skipped, every worker's state) and, from the resource monitor, a
`resources` event every second with the bytes per second on each worker's link and the
workers' states, so peers that go offline or leave show within a second. `--tensorboard DIR`
streams the round events into `DIR/<run>` as TensorBoard scalars, flushed every round.
"""

from __future__ import annotations

from typing import Any

from pathlib import Path

from ..obs.events import EventLog, attach_tensorboard
from ..obs.monitor import Monitor
from ..server.watch import coordinator_monitor, worker_states


def start_events(core: Any, every: float = 1.0, tensorboard: Path | None = None) -> Monitor:
    """Give the coordinator its event log (and TensorBoard sink) and start its monitor;
    `stop_events` ends them."""
    core.events = EventLog(core.store.dir, core.cfg.name())
    core.tensorboard = attach_tensorboard(core.events, tensorboard)
    return coordinator_monitor(core, every).start()


def stop_events(core: Any, monitor: Monitor) -> None:
    monitor.stop()
    if core.done:
        core.events.emit("end", round=core.round, version=core.version)
    core.events.close()
    if core.tensorboard is not None:
        core.tensorboard.close()


def round_event(core: Any, row: dict[str, Any], c: dict[str, Any]) -> None:
    """One evaluated round (row: its results row; c: the counters when it closed)."""
    events: EventLog | None = getattr(core, "events", None)
    if events is None:
        return
    with core.lock:
        links = core.ledger.per_link()
    events.emit("round", round=row["round"], version=row["version"],
                test_accuracy=row["test_accuracy"], test_loss=row["test_loss"],
                train_loss=c["train_loss"], bytes_up_wire=c["up_wire"],
                bytes_down_wire=c["down_wire"], uploads=c["uploads"], skipped=c["skipped"],
                elapsed_s=round(c["elapsed"], 3), links=links, peers=worker_states(core))
