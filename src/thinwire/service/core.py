"""The coordinator's state machine, free of HTTP: registry, model, downlink, persistence.

`Coordinator` is driven by the FastAPI app (service/coordinator.py) and, without any network,
by the bits benchmark. All mutation happens under one lock; every accepted message is
journaled (fsync) before the call returns, and the whole state is snapshotted after each
applied round (see state.py). Round mechanics live in rounds.py (`RoundLogic`).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..codecs import Encoder, make_codec
from ..exchange import Receiver, TensorSet, layout_of
from ..exchange.tensorset import wire_role
from ..obs.events import EventLog, TensorBoardSink
from ..obs.ledger import LinkLedger
from ..policy import ModelDiffHistory
from ..strategy import Strategy
from ..tasks import Task, build_model, load_task
from ..wire import Update, WireLimits, serialize_update
from ..wire.control import ModelAnnounce
from ..wire.model import model_message
from .config import FLQConfig
from ..tasks.evaluate import evaluate
from .admission import ServiceError
from ..server.credentials import Caller
from .observe import round_event
from .registry import Registry
from .results import counters, plot_rounds, progress_line, round_row, write_row
from .rounds import RoundLogic
from ..server import Durable, StateStore

Log = Callable[[str], None]
Tensors = dict[str, torch.Tensor]


class Coordinator(Registry, RoundLogic, Durable):
    events: EventLog | None = None  # set by observe.start_events
    tensorboard: TensorBoardSink | None = None  # and this, given --tensorboard

    def __init__(self, cfg: FLQConfig, state_dir: Path | str, log: Log | None = None,
                 task: Task | None = None) -> None:
        self.cfg, self.log = cfg, log or (lambda s: None)
        self.task = task or load_task(cfg.task, cfg.data_dir, cfg.download, **cfg.task_args)
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model or self.task.model, self.task.num_classes,
                            self.task.in_shape)
        self.params = {n: p.detach().clone().float() for n, p in model.named_parameters()}
        self.buffers = {n: b.detach().clone() for n, b in model.named_buffers()
                        if b.is_floating_point()}
        self.layout = layout_of(TensorSet(self.params).add(self.buffers, "buffer"))
        self.numel = sum(p.numel() for p in self.params.values())
        self.codec_name = make_codec(cfg.upload_codec()).name
        self.limits = WireLimits(max_message_bytes=cfg.max_request_bytes)
        self.down_none = make_codec(cfg.down_codec).name == "none"
        self.down_encoder = Encoder(make_codec(cfg.down_codec))
        self.view = self.params if self.down_none else {n: p.clone() for n, p in
                                                        self.params.items()}
        self.lock = threading.RLock()
        self.evaluations: queue.Queue = queue.Queue()
        self.store = StateStore(state_dir)
        self.started = time.time()
        self.time_before = 0.0
        self._eval_model: torch.nn.Module | None = None
        self._fresh_state()
        self._replaying = False
        self._restore()

    def _fresh_state(self) -> None:
        self.version = self.round = self.applied = 0
        self.workers: dict[str, dict[str, Any]] = {}
        self.receiver = Receiver(self.layout, self.cfg.upload_codec(), self.limits)
        c = self.cfg
        self.strategy = Strategy("mean", "samples", c.skipped, server_lr=c.server_lr,
                                 staleness_exponent=c.staleness_exponent, mix=c.mix(),
                                 sel_clients=c.sel_clients, up_budget_bits=c.up_budget_bits,
                                 sel_ref=c.sel_ref)
        self.history = ModelDiffHistory(self.cfg.depth)
        self.ledger = LinkLedger(hub="coordinator")
        self.applied_keys: dict[str, list[list[int]]] = {}
        self.selection_history: list[dict[str, Any]] = []
        self.accuracy_history: list[dict[str, Any]] = []
        self.samples = 0
        self.train_losses: list[float] = []
        self._cache: dict[str, bytes] = {}
        self._reset_round()

    # ---- downlink ---------------------------------------------------------------------
    def pull(self, wid: str, have: int | None = None,
             caller: Caller | None = None) -> tuple[bytes, dict[str, str]]:
        """The model message for worker `wid` (wire/model.py: announce + Update): a delta
        against `have` when possible, else in full. Headers repeat the announce for humans."""
        with self.lock:
            self.authorize(wid, caller)
            self._touch(wid)
            self._round_seen()
            self._took_part(wid)
            key = "delta" if (not self.down_none and have == self.version - 1
                              and "delta" in self._cache) else "full"
            if key not in self._cache:
                self._cache["full"] = self._full_message()
            framed = f"{key}@round{self.round}"  # the announce changes with round or version
            if framed not in self._cache:  # (the cache is emptied when the version moves)
                announce = ModelAnnounce(
                    version=self.version, round=self.round, done=self.done,
                    diffs=list(self.history.diffs),
                    model_codec=self.cfg.down_codec if key == "delta" else "")
                self._cache[framed] = model_message(announce, self._cache[key])
            body = self._cache[framed]
            self.ledger.download(wid, 4 * self.numel, len(body))
            headers = {"X-Thinwire-Round": str(self.round),
                       "X-Thinwire-Version": str(self.version),
                       "X-Thinwire-Done": "1" if self.done else "0",
                       "X-Thinwire-Kind": key}
            return body, headers

    def _full_message(self) -> bytes:
        none = make_codec("none")
        model = TensorSet(self.view).add(self.buffers, "buffer")
        tensors = []
        for name, role, t in model.items_with_roles():
            tensors.append(none.encode(t.float(), None, name))
            tensors[-1].role = wire_role(role)
        return serialize_update(Update(node_id="coordinator", tensors=tensors, kind="model",
                                       round=self.round, base_version=self.version))

    def _advance_view(self) -> None:
        """After a model change: the downlink delta (through down_codec) and what workers
        that follow deltas will hold (`view`), so lossy downlinks never drift apart."""
        self._cache = {}
        if self.down_none:
            return
        payloads = []
        for n, p in self.params.items():
            payload, recon = self.down_encoder.roundtrip(p - self.view[n], n)
            self.view[n].add_(recon.float())
            payloads.append(payload)
        self._cache["delta"] = serialize_update(Update(
            node_id="coordinator", tensors=payloads, kind="delta", round=self.round,
            base_version=self.version - 1))

    # ---- after a round: progress, evaluation, results rows ------------------------------
    def elapsed(self) -> float:
        return time.time() - self.started + self.time_before

    def _after_round(self, entry: dict[str, Any]) -> None:
        self.log(progress_line(self, entry))
        if (entry["round"] + 1) % self.cfg.eval_every and not self.done:
            return
        snap = ({n: p.clone() for n, p in self.params.items()},
                {n: b.clone() for n, b in self.buffers.items()})
        self.evaluations.put((entry, counters(self), snap))

    def run_evaluations(self) -> int:
        """Evaluate queued round snapshots (off the lock), record accuracy, append rows."""
        done = 0
        while True:
            try:
                entry, c, (params, buffers) = self.evaluations.get_nowait()
            except queue.Empty:
                return done
            if self._eval_model is None:
                self._eval_model = build_model(self.cfg.model or self.task.model,
                                               self.task.num_classes, self.task.in_shape)
            self._eval_model.load_state_dict({**params, **buffers}, strict=False)
            acc, loss = evaluate(self._eval_model, self.task)
            row = round_row(self, entry, c, acc, loss)
            with self.lock:
                self.accuracy_history.append({
                    "round": row["round"], "version": row["version"], "test_accuracy": acc,
                    "test_loss": loss, "bits_up": row["bits_up"],
                    "bits_down": row["bits_down"], "time_s": round(c["elapsed"], 3)})
            write_row(self.results_path, row)
            round_event(self, row, c)
            self.log(f"  eval after round {row['round']}: test accuracy {100 * acc:.2f}% "
                     f"(loss {loss:.4f}), uploaded {row['bits_up'] / 1e6:.2f} Mbit")
            done += 1

    @property
    def results_path(self) -> Path:
        return self.store.dir / "results.jsonl"

    def plots(self) -> Path | None:
        return plot_rounds(self.results_path, self.store.dir)

    # ---- status -----------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        with self.lock:
            totals = self.ledger.totals()
            last = self.accuracy_history[-1] if self.accuracy_history else {}
            return {
                "round": self.round, "version": self.version, "done": self.done,
                "max_rounds": self.cfg.max_rounds, "schedule": self.cfg.schedule,
                "preset": self.cfg.preset, "codec": self.cfg.upload_codec(),
                "lazy": self.cfg.is_lazy(), "applied_updates": self.applied,
                "workers": [{"id": w["id"], "state": w["state"],
                             "last_seen": round(w["last_seen"], 3), "index": w["index"],
                             "sent": w["sent"], "skipped": w["skipped"]}
                            for w in self.workers.values()],
                "bytes_up": totals["up_wire"], "bytes_down": totals["down_wire"],
                "bits_up": 8 * totals["up_wire"], "bits_down": 8 * totals["down_wire"],
                "control_bytes": totals["control"], "uploads": totals["sent"],
                "skipped": totals["skipped"], "pending": sorted(self.pending),
                "responded": sorted(self._responded()), "expected": sorted(self._expected()),
                "selection_history": self.selection_history[-50:],
                "accuracy_history": self.accuracy_history,
                "test_accuracy": last.get("test_accuracy"), "uptime_s": time.time() - self.started,
            }

    @property
    def done(self) -> bool:
        return self.round >= self.cfg.max_rounds

    # ---- persistence ------------------------------------------------------------------
    def _tree(self) -> dict[str, Any]:
        return {
            "format": 2, "config": self.cfg.model_dump(mode="json"),
            "version": self.version, "round": self.round, "applied": self.applied,
            "params": self.params, "buffers": self.buffers,
            "view": None if self.down_none else self.view,
            "down": self.down_encoder.state_dict(), "workers": self.workers,
            "receiver": self.receiver.state_dict(),
            "strategy": self.strategy.state_dict(), "history": self.history.state_dict(),
            "ledger": self.ledger.state_dict(), "applied_keys": self.applied_keys,
            "selection_history": self.selection_history,
            "accuracy_history": self.accuracy_history, "samples": self.samples,
            "train_losses": self.train_losses[-1000:],
            "elapsed": self.elapsed(),
        }

    def _restore(self) -> None:
        tree = self.stored()
        if tree is None:
            return
        if tree["config"] != self.cfg.model_dump(mode="json"):
            self.log(f"warning: {self.store.dir} was created with a different config; "
                     "resuming with the new one (model shapes must match)")
        self.version, self.round, self.applied = tree["version"], tree["round"], tree["applied"]
        for n, t in tree["params"].items():
            self._known_tensor(n, t, self.params)
        for n, t in tree["buffers"].items():
            self._known_tensor(n, t, self.buffers)
        if tree["view"] is not None and not self.down_none:
            self.view = {n: t.clone() for n, t in tree["view"].items()}
        self.down_encoder.load_state_dict(tree["down"])
        self.workers = tree["workers"]
        for info in self.workers.values():  # snapshots from before `took_part`: as if all
            info.setdefault("took_part", self.round - 1)  # took part (the old rule)
        self.receiver.load_state_dict(tree["receiver"])
        self.strategy.load_state_dict(tree["strategy"])
        self.history.load_state_dict(tree["history"])
        self.ledger.load_state_dict(tree["ledger"])
        self.applied_keys = tree["applied_keys"]
        self.selection_history = tree["selection_history"]
        self.accuracy_history = tree["accuracy_history"]
        self.samples = tree["samples"]
        self.train_losses = tree["train_losses"]
        self.time_before = tree["elapsed"]
        replayed = self._replay()
        self.log(f"resumed from {self.store.dir}: round {self.round}, version {self.version}, "
                 f"{replayed} journaled message(s) replayed")

    def _known_tensor(self, name: str, t: torch.Tensor, into: Tensors) -> None:
        if name not in into or tuple(into[name].shape) != tuple(t.shape):
            raise ServiceError(500, f"state dir holds tensor '{name}' {list(t.shape)} that this "
                                    "config's model does not have; use the config the state "
                                    "was created with, or a fresh --state-dir")
        into[name].copy_(t)

    def close(self) -> None:
        with self.lock:
            self.store.close()
