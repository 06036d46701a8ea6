"""The resource monitor: a background thread that writes a `resources` event every second.

Epoch and round events say what a run learned; a run that stalls, swaps or saturates a link
shows only between them. So every process that trains starts one monitor beside its loop:

    monitor = Monitor(events, ledger=lambda: sim.ledger).start()
    ...
    monitor.stop()

Each sample holds the process (CPU %, RSS, threads, GPU utilization and memory when a GPU is
present), the traffic since the last sample (wire bytes per second per link from the
`LinkLedger`, up and down, and the machine's OS counters), and the training progress the
runtime last wrote to the same `EventLog` (step, step time, loss, accuracy, uploads sent and
skipped), which the monitor learns by listening to it. `extra` adds runtime fields, e.g. the
state of every peer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any, ContextManager

try:
    import psutil
except ImportError:  # optional (thinwire[dashboard]): no OS network counters without it
    psutil = None

from .events import EventLog
from .ledger import LinkLedger
from .resources import ResourceMonitor

LedgerSource = LinkLedger | Callable[[], LinkLedger] | None
# fields of step/round events (cumulative counts) and of epoch events (per-epoch counts,
# so only their evaluation) that the monitor repeats in its samples
PROGRESS = ("step", "round", "train_loss", "test_accuracy", "test_loss", "uploads", "skipped",
            "comm_time_s_sim", "comm_time_s")
EPOCH = ("epoch", "test_accuracy", "test_loss", "comm_time_s_sim")


class Progress:
    """The latest training figures seen on the event stream, and the time per step."""

    def __init__(self) -> None:
        self.fields: dict[str, Any] = {}
        self._last: tuple[float, float] | None = None  # (t, step or round)

    def observe(self, event: dict[str, Any]) -> None:
        if event.get("type") not in ("step", "epoch", "round"):
            return
        keys = EPOCH if event["type"] == "epoch" else PROGRESS
        self.fields.update({k: event[k] for k in keys if event.get(k) is not None})
        x = event.get("step", event.get("round"))
        if event["type"] != "epoch" and isinstance(x, (int, float)):
            if self._last is not None and x > self._last[1]:
                self.fields["step_time_s"] = (event["t"] - self._last[0]) / (x - self._last[1])
            self._last = (event["t"], x)

    def sample(self) -> dict[str, Any]:
        out = dict(self.fields)
        sent, skipped = out.get("uploads"), out.get("skipped")
        if isinstance(sent, int) and isinstance(skipped, int) and sent + skipped:
            out["upload_fraction"] = sent / (sent + skipped)
        return out


class Rates:
    """Bytes per second since the last call: per link from the ledger, and the OS counters."""

    def __init__(self, ledger: LedgerSource, lock: ContextManager[Any] | None) -> None:
        self.ledger, self.lock = ledger, lock or nullcontext()
        self.hub: str | None = None
        self._t = time.monotonic()
        self._links = self._link_bytes()
        self._net = _net_bytes()

    def _link_bytes(self) -> dict[tuple[str, str], int]:
        ledger = self.ledger() if callable(self.ledger) else self.ledger
        if ledger is None:
            return {}
        with self.lock:
            links, hub = dict(ledger.links), ledger.hub
        out: dict[tuple[str, str], int] = {}
        for (src, dst, _), b in links.items():
            out[(src, dst)] = out.get((src, dst), 0) + b.wire
        self.hub = hub
        return out

    def sample(self) -> dict[str, Any]:
        now, links, net = time.monotonic(), self._link_bytes(), _net_bytes()
        dt = max(now - self._t, 1e-6)
        rates = {(s, d): (n - self._links.get((s, d), 0)) / dt for (s, d), n in links.items()}
        out: dict[str, Any] = {"interval_s": round(dt, 3)}
        if rates:
            out["link_bps"] = {f"{s}>{d}": round(v, 1) for (s, d), v in sorted(rates.items())}
            up = sum(v for (s, _), v in rates.items() if s != self.hub)
            out["bytes_up_bps"] = round(up, 1)
            out["bytes_down_bps"] = round(sum(rates.values()) - up, 1)
        if net is not None and self._net is not None:
            out["net_sent_bps"] = round((net[0] - self._net[0]) / dt, 1)
            out["net_recv_bps"] = round((net[1] - self._net[1]) / dt, 1)
        self._t, self._links, self._net = now, links, net
        return out


def _net_bytes() -> tuple[int, int] | None:
    """The machine's bytes sent and received on all interfaces (None where unreadable)."""
    if psutil is None:
        return None
    try:
        c = psutil.net_io_counters()
    except Exception:  # noqa: BLE001  some containers hide /proc/net
        return None
    return (c.bytes_sent, c.bytes_recv) if c is not None else None


class Monitor:
    """Samples this process every `every` seconds into `events` until `stop()`."""

    def __init__(self, events: EventLog, ledger: LedgerSource = None, every: float = 1.0,
                 node: str | None = None, lock: ContextManager[Any] | None = None,
                 extra: Callable[[], dict[str, Any]] | None = None) -> None:
        self.events, self.every, self.node, self.extra = events, every, node, extra
        self.progress = Progress()
        self.rates = Rates(ledger, lock)
        self.process = ResourceMonitor()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="thinwire-monitor",
                                        daemon=True)
        events.listeners.append(self.progress.observe)

    def start(self) -> "Monitor":
        if self.every > 0:
            self._thread.start()
        return self

    def sample(self) -> dict[str, Any]:
        out = {**self.process.sample(), **self.rates.sample(), **self.progress.sample()}
        if self.node is not None:
            out["node"] = self.node
        if self.extra is not None:
            out.update(self.extra())
        return out

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.events.emit("resources", **self.sample())
            except Exception as exc:  # noqa: BLE001  the monitor must never stop a run
                self.events.emit("monitor_error", error=f"{type(exc).__name__}: {exc}")

    def stop(self) -> None:
        """Stop the thread and write one last sample, so short runs still have one."""
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join(timeout=5)
        if self.every > 0:
            self.events.emit("resources", **self.sample())
        if self.progress.observe in self.events.listeners:
            self.events.listeners.remove(self.progress.observe)

    def __enter__(self) -> "Monitor":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
