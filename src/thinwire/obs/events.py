"""The event stream: one JSON line per step, epoch or round, appended as the run goes.

Every runtime writes the same shape, `{"t": unix time, "run": name, "type": ..., ...}`:
- `step`: train loss and the bytes that crossed this step, up and down;
- `epoch` / `round`: test accuracy and loss, cumulative bytes per direction and per link,
  and a resource sample;
- `end`: the run record;
- `resources`: a monitor sample (obs/monitor.py), about once a second;
- any event may carry `node` (which process or peer wrote it) and `peers` ({id: state}).
Tables and plots (`read_events`), TensorBoard (`TensorBoardSink` live, `to_tensorboard`
after) and the live dashboard read these files, so a run is observed the same way while it
runs and after.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from ..errors import require

EVENTS_FILE = "events.jsonl"


Listener = Callable[[dict[str, Any]], None]


class EventLog:
    """Appends events to `<dir>/events.jsonl`; `every` thins `step` events on long runs.

    Thread-safe, since a monitor thread writes samples beside the training loop. `fresh`
    starts the file anew (a new run under an old name); listeners see every event written.
    `shared`: several processes append to this one file (a swarm's peers), so every line
    goes out in one write to the append-only file and lines never interleave.
    """

    def __init__(self, folder: Path | str, run: str, every: int = 1,
                 fresh: bool = False, shared: bool = False) -> None:
        self.path = Path(folder) / EVENTS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.run, self.every = run, max(every, 1)
        self.listeners: list[Listener] = []
        self._lock = threading.Lock()
        if fresh:
            self.path.write_text("")
        self._file: TextIO | None = open(self.path, "a", buffering=1 if shared else -1)

    def emit(self, kind: str, **fields: Any) -> None:
        line = {"t": round(time.time(), 3), "run": self.run, "type": kind, **fields}
        with self._lock:
            if self._file is None:
                return
            self._file.write(json.dumps(line, default=str) + "\n")
            if kind != "step":
                self._file.flush()
        for listener in self.listeners:
            listener(line)

    def step(self, step: int, **fields: Any) -> None:
        if step % self.every == 0:
            self.emit("step", step=step, **fields)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def read_events(path: Path | str, kind: str | None = None) -> Iterator[dict[str, Any]]:
    """Events of a file (or of `<dir>/events.jsonl`), skipping a torn last line."""
    path = Path(path)
    if path.is_dir():
        path = path / EVENTS_FILE
    if not path.exists():
        return
    with open(path) as f:
        for line in f:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if kind is None or event.get("type") == kind:
                yield event


# the events that become TensorBoard scalars, and the fields that are their x, not a value
SCALAR_EVENTS = ("step", "epoch", "round")
NOT_SCALARS = ("t", "step", "epoch", "round")


def scalars(event: dict[str, Any]) -> Iterator[tuple[str, float, int]]:
    """(tag, value, x) for each number of a step, epoch or round event: the tag is
    `type/key` (`node/type/key` when a peer wrote it), x its step, else epoch, else round."""
    if event.get("type") not in SCALAR_EVENTS:
        return
    x = event.get("step", event.get("epoch", event.get("round")))
    if not isinstance(x, int):
        return
    prefix = f"{event['node']}/" if "node" in event else ""
    for key, value in event.items():
        if key not in NOT_SCALARS and isinstance(value, (int, float)) \
                and not isinstance(value, bool):
            yield f"{prefix}{event['type']}/{key}", value, x


class TensorBoardSink:
    """Writes a run's events as TensorBoard scalars as they happen (loss, accuracy, bytes up
    and down, uploads sent and skipped, ...): an `EventLog` listener, flushed every epoch or
    round. Needs the tensorboard package (`thinwire[tensorboard]`)."""

    def __init__(self, logdir: Path | str) -> None:
        require("tensorboard", "tensorboard", "--tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.logdir = Path(logdir)
        self.writer, self.count = SummaryWriter(str(self.logdir)), 0

    def __call__(self, event: dict[str, Any]) -> None:
        for tag, value, x in scalars(event):
            self.writer.add_scalar(tag, value, x, walltime=event.get("t"))
            self.count += 1
        if event.get("type") in ("epoch", "round", "end"):
            self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def attach_tensorboard(events: EventLog, logdir: Path | str | None) -> TensorBoardSink | None:
    """`--tensorboard DIR`: stream `events` into `DIR/<run name>` (None: nothing)."""
    if logdir is None:
        return None
    sink = TensorBoardSink(Path(logdir) / events.run)
    events.listeners.append(sink)
    return sink


def to_tensorboard(events: Path | str, logdir: Path | str) -> int:
    """Write the scalars of a finished events.jsonl (`scalars`) under `logdir/<run name>`;
    returns the count."""
    sinks: dict[str, TensorBoardSink] = {}
    for event in read_events(events):
        if next(scalars(event), None) is not None:
            run = str(event.get("run", "run"))
            if run not in sinks:
                sinks[run] = TensorBoardSink(Path(logdir) / run)
            sinks[run](event)
    for sink in sinks.values():
        sink.close()
    return sum(sink.count for sink in sinks.values())
