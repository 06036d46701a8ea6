"""The federated-experts coordinator as a state machine, free of HTTP: workers register for a
specialty, pull its expert, and upload pseudo-gradients; rounds close per specialty; the
gateway is re-merged after each; prompts are routed to an expert (serving.py).

The FastAPI app (app.py) and in-process links (link.py) drive it. All mutation happens under
one lock. Every accepted message is journaled (fsync) before the call returns, and the state
is snapshotted after each closed round (server/), so `kill -9` loses nothing a worker
was told was accepted: a restart loads the snapshot and replays the journal.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..codecs import make_codec
from ..exchange import Receiver, Rejected, TensorSet
from ..exchange.tensorset import wire_role
from ..obs.events import EventLog
from ..obs.ledger import LinkLedger
from ..server import Durable, HttpError, StateError, StateStore, admit, check_staleness
from ..strategy import KeyedStrategy, OuterOptimizer, Strategy
from ..tasks.lm.pretrained import Base, unique_state
from ..wire import Update, WireLimits, parse_update, serialize_update
from .config import ExpertsConfig
from .expert import Expert
from .gateway import Gateway
from .report import results_row, status_view
from .serving import Serving

Log = Callable[[str], None]
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_SEQ = 1 << 53


def check_name(what: str, value: str) -> str:
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise HttpError(400, f"{what} {value!r} is invalid: use 1-64 characters from letters, "
                             "digits, '_', '.', '-' (starting with a letter or digit)")
    return value


class ExpertsCoordinator(Serving, Durable):
    def __init__(self, cfg: ExpertsConfig, base: Base, state_dir: Path | str,
                 log: Log | None = None) -> None:
        self.cfg, self.base, self.log = cfg, base, log or (lambda s: None)
        self.base_state = {n: t.clone().float() for n, t in unique_state(base.model).items()}
        self.fingerprint = base.fingerprint
        tuning = cfg.tuning()
        self.role, self.shapes = tuning.role, tuning.layout(base.model)
        self.layout = {n: (tuple(s), self.role) for n, s in self.shapes.items()}
        self.hidden = int(base.model.config.hidden_size)
        self.full_bytes = 4 * sum(t.numel() for t in self.base_state.values())
        self.limits = WireLimits(max_message_bytes=cfg.max_request_bytes)
        self.lock, self.embed_lock = threading.RLock(), threading.Lock()
        self.store = StateStore(state_dir)
        self.events = EventLog(self.store.dir, cfg.name())
        self.started = time.time()
        self._files: dict[str, str] | None = None
        self._fresh()
        self._restore()

    def _fresh(self) -> None:
        c = self.cfg
        self.experts: dict[str, Expert] = {}
        self.receivers: dict[str, Receiver] = {}
        self.strategy = KeyedStrategy(lambda: Strategy(
            c.aggregate, c.weight, "drop", staleness_exponent=c.staleness_exponent))
        self.workers: dict[str, dict[str, Any]] = {}
        self.applied_keys: dict[str, list[int]] = {}
        self.ledger = LinkLedger(hub="coordinator")
        self.gateway = Gateway(c, self.base_state, self.base.model)
        self._cache: dict[str, tuple[int, bytes]] = {}

    def _expert(self, name: str) -> Expert:
        if name not in self.experts:
            if len(self.experts) >= self.cfg.max_specialties:
                raise HttpError(409, f"already {len(self.experts)} specialties "
                                     f"(max_specialties); reuse one of {sorted(self.experts)}")
            c = self.cfg
            nesterov = c.outer == "nesterov"
            self.experts[name] = Expert(
                name, self.shapes, self.role, self.strategy.of(name),
                lambda w: OuterOptimizer(w, c.outer_lr, c.outer_momentum if nesterov else 0.0,
                                         nesterov), c.history)
            self.receivers[name] = Receiver(self.layout, self.cfg.codec, self.limits)
        return self.experts[name]

    # ---- registry ---------------------------------------------------------------------
    def register(self, wid: str, session: str, specialty: str, base: str,
                 centroid: list[float], count: int,
                 capabilities: dict[str, Any] | None = None) -> dict[str, Any]:
        check_name("worker id", wid)
        check_name("specialty", specialty)
        if not session or len(session) > 128:
            raise HttpError(400, "register needs a session string (1-128 characters)")
        if base != self.fingerprint:
            raise HttpError(409, f"worker {wid}'s base model (fingerprint {base[:24]!r}) is not "
                                 f"the coordinator's ({self.base.name}, {self.fingerprint}): "
                                 "start both with the same --base-model")
        self._check_centroid(centroid, count)
        with self.lock:
            info = self.workers.get(wid)
            if info is not None and info["specialty"] != specialty and info["state"] != "left":
                raise HttpError(409, f"worker {wid} is registered for {info['specialty']}; "
                                     "use another --worker-id for another specialty")
            if info is None and len(self.workers) >= self.cfg.max_workers:
                raise HttpError(409, f"{len(self.workers)} workers are registered "
                                     "(max_workers); no more are accepted")
            if info is None or info["session"] != session or info["state"] != "active":
                if specialty not in self.experts:
                    self._expert(specialty)  # refuses a specialty over the limit first
                rec = {"type": "register", "worker": wid, "session": session,
                       "specialty": specialty, "centroid": [float(v) for v in centroid],
                       "count": int(count), "capabilities": dict(capabilities or {}),
                       "took_part": False}  # counted once it pulls or uploads
                self.store.append(rec)
                self._do_register(rec)
            self._touch(wid)
            return {"worker_id": wid, "specialty": specialty,
                    "expert_version": self.experts[specialty].version,
                    "gateway_version": self.gateway.version,
                    "config": self.cfg.worker_view(specialty)}

    def _check_centroid(self, centroid: list[float], count: int) -> None:
        if len(centroid) != self.hidden or count < 1:
            raise HttpError(400, f"centroid has {len(centroid)} values for {count} prompts; "
                                 f"the base model's hidden size is {self.hidden}")
        if not all(math.isfinite(v) for v in centroid):
            raise HttpError(400, "centroid holds non-finite values")

    def _do_register(self, rec: dict[str, Any]) -> None:
        """A new worker or a restarted one (new session): its decoder and keys start over."""
        wid, old = rec["worker"], self.workers.get(rec["worker"])
        self._expert(rec["specialty"])
        if old is not None and (old["session"], old["specialty"]) == (rec["session"],
                                                                      rec["specialty"]):
            old["state"] = "active"
            return
        self.receivers[rec["specialty"]].forget(wid)
        self.applied_keys.pop(wid, None)
        self.workers[wid] = {
            "id": wid, "session": rec["session"], "specialty": rec["specialty"],
            "state": "active", "last_seen": time.time(), "joined": time.time(),
            "centroid": torch.tensor(rec["centroid"], dtype=torch.float32),
            "count": rec["count"], "capabilities": rec.get("capabilities", {}),
            "sent": 0, "samples": 0, "took_part": rec.get("took_part", True)}
        if not self._replaying:
            self.log(f"worker {wid} joined {rec['specialty']}")

    def leave(self, wid: str) -> dict[str, Any]:
        with self.lock:
            self._known(wid)
            self.store.append({"type": "leave", "worker": wid})
            self._do_leave(wid)
            self._close_due(self.workers[wid]["specialty"])
            return {"worker_id": wid, "state": "left"}

    def _do_leave(self, wid: str) -> None:
        self.workers[wid]["state"] = "left"

    def _known(self, wid: str) -> dict[str, Any]:
        if wid not in self.workers:
            raise HttpError(404, f"worker {wid!r} is not registered (POST /v1/workers)")
        return self.workers[wid]

    def _touch(self, wid: str) -> None:
        info = self.workers[wid]
        info["last_seen"] = time.time()
        if info["state"] == "offline":
            info["state"] = "active"

    def _expected(self, specialty: str) -> set[str]:
        """Whom a round waits for: active workers that took part (pulled or uploaded), so an
        id that registers and stays silent holds no round open. Records and snapshots of
        older versions lack the flag: those workers count, as they did."""
        return {w for w, i in self.workers.items() if i["specialty"] == specialty
                and i["state"] == "active" and i.get("took_part", True)}

    def _took_part(self, wid: str) -> None:
        """Journal the first pull of a worker, so a restart waits for the same workers."""
        if not self.workers[wid].get("took_part", True):
            self.store.append({"type": "join", "worker": wid})
            self.workers[wid]["took_part"] = True

    # ---- uploads ----------------------------------------------------------------------
    def push(self, body: bytes) -> dict[str, Any]:
        """Parse, check, decode, journal, then add an upload to its specialty's round;
        idempotent by (worker, seq)."""
        update = self._parse(body)
        wid = update.node_id
        with self.lock:
            info = self._known(wid)
            self._touch(wid)
            expert = self.experts[info["specialty"]]
            if update.seq in self.applied_keys.get(wid, []):
                return self._answer(expert, "duplicate")
            check_staleness(expert.version, update.base_version, self.cfg.max_staleness,
                            f"{expert.name}'s")
            arrival = admit(self.receivers[expert.name], self.store, update, body,
                            {"type": "update", "worker": wid})
            self._accept(wid, update, arrival.tensors, len(body))
            self._close_due(expert.name)
            return self._answer(expert, "accepted")

    def _parse(self, body: bytes) -> Update:
        try:
            update = parse_update(body, self.limits)
        except Exception as exc:  # noqa: BLE001  WireError and anything protobuf raises
            raise HttpError(400, f"malformed update: {exc}") from None
        check_name("update node_id", update.node_id)
        if update.kind != "delta":
            raise HttpError(400, f"update kind {update.kind!r}: workers send 'delta' updates "
                                 "(the change since their last pull)")
        if update.seq >= MAX_SEQ or update.base_version >= MAX_SEQ:
            raise HttpError(400, f"seq/base_version {update.seq}/{update.base_version} out of "
                                 "range")
        return update

    def _accept(self, wid: str, update: Update, tensors: TensorSet, nbytes: int) -> None:
        info = self.workers[wid]
        expert = self.experts[info["specialty"]]
        loss = update.metrics.get("train_loss")
        expert.add(wid, dict(tensors.items()), int(update.num_samples),
                   expert.version - update.base_version, nbytes, loss)
        self.ledger.upload(wid, self.full_bytes, nbytes)
        keys = self.applied_keys.setdefault(wid, [])
        keys.append(int(update.seq))
        del keys[:-64]
        info["took_part"] = True  # the update record itself replays this
        info["sent"] += 1
        info["samples"] += int(update.num_samples)

    def _answer(self, expert: Expert, status: str) -> dict[str, Any]:
        return {"status": status, "expert_version": expert.version,
                "gateway_version": self.gateway.version, "pending": sorted(expert.pending)}

    # ---- closing rounds ---------------------------------------------------------------
    def tick(self) -> None:
        """Called periodically: silent workers go offline; late rounds close."""
        with self.lock:
            now = time.time()
            for info in self.workers.values():
                if info["state"] == "active" and now - info["last_seen"] > self.cfg.offline_after:
                    info["state"] = "offline"
                    self.log(f"worker {info['id']} offline (silent {now - info['last_seen']:.0f}s)")
            for name in list(self.experts):
                self._close_due(name)

    def _close_due(self, name: str) -> None:
        expert, expected = self.experts[name], self._expected(name)
        timeout = math.inf if self._replaying else self.cfg.round_timeout
        if expert.due(expected, timeout):
            self._close(name, "complete" if expected <= set(expert.pending) else "deadline")

    def _close(self, name: str, reason: str) -> None:
        entry = self.experts[name].close(reason)
        self.gateway.rebuild(self.experts, trigger=name)
        self._cache.pop(name, None)
        self.commit()
        if self._replaying:
            return
        self.log(f"{name} v{entry['version']} ({reason}: "
                 f"{', '.join(c['worker'] for c in entry['contributors'])}); "
                 f"gateway v{self.gateway.version}")
        row = results_row(self, name, entry)
        self.events.emit("round", **{k: v for k, v in row.items() if k != "contributors"})
        from ..obs.results import append_row

        append_row(self.store.dir / "results.jsonl", row)

    # ---- downloads --------------------------------------------------------------------
    def pull(self, wid: str) -> tuple[bytes, int]:
        """The worker's expert (adapter or weight change), lossless, and its version."""
        with self.lock:
            info = self._known(wid)
            self._touch(wid)
            self._took_part(wid)
            expert = self.experts[info["specialty"]]
            cached = self._cache.get(expert.name)
            if cached is None or cached[0] != expert.version:
                none = make_codec("none")
                tensors = [none.encode(t, None, n) for n, t in expert.tensors.items()]
                for payload in tensors:
                    payload.role = wire_role(self.role)
                cached = (expert.version, serialize_update(Update(
                    node_id="coordinator", tensors=tensors, kind="model",
                    base_version=expert.version)))
                self._cache[expert.name] = cached
            self.ledger.download(wid, self.full_bytes, len(cached[1]))
            return cached[1], expert.version

    def version_of(self, wid: str) -> int:
        with self.lock:
            return self.experts[self._known(wid)["specialty"]].version

    def status(self) -> dict[str, Any]:
        with self.lock:
            return status_view(self)

    # ---- persistence ------------------------------------------------------------------
    def _tree(self) -> dict[str, Any]:
        return {"format": 1, "fingerprint": self.fingerprint, "base": self.base.name,
                "config": self.cfg.model_dump(mode="json"),
                "experts": {n: e.state_dict() for n, e in self.experts.items()},
                "receivers": {n: r.state_dict() for n, r in self.receivers.items()},
                "workers": self.workers, "applied_keys": self.applied_keys,
                "ledger": self.ledger.state_dict(), "gateway": self.gateway.state_dict()}

    def _restore(self) -> None:
        tree = self.stored()
        if tree is None:
            return
        if tree["fingerprint"] != self.fingerprint:
            raise StateError(f"{self.store.dir} holds experts of base {tree['base']} "
                             f"({tree['fingerprint']}), not of {self.base.name}; use that base "
                             "or a fresh --state-dir")
        try:
            for name, state in tree["experts"].items():
                self._expert(name).load_state_dict(state)
        except ValueError as exc:
            raise StateError(f"{exc}; use the config the state was made with (finetune, "
                             "lora_rank, lora_targets) or a fresh --state-dir") from None
        for name, state in tree["receivers"].items():
            self.receivers[name].load_state_dict(state)
        self.workers, self.applied_keys = tree["workers"], tree["applied_keys"]
        for info in self.workers.values():  # the outage was ours: give everyone time back
            info["last_seen"] = time.time()
        self.ledger.load_state_dict(tree["ledger"])
        self.gateway.load_state_dict(tree["gateway"])
        self.gateway.rebuild(self.experts, bump=False)
        replayed = self.replay(self._replay_one)
        if replayed:
            self.commit()
        self.log(f"resumed from {self.store.dir}: experts "
                 f"{ {n: e.version for n, e in self.experts.items()} }, gateway "
                 f"v{self.gateway.version}, {replayed} journaled message(s) replayed")

    def _replay_one(self, rec: dict[str, Any], body: bytes) -> bool:
        """Re-apply one journaled message; rounds it completes close as they did live."""
        kind = rec["type"]
        if kind == "register":
            self._do_register(rec)
        elif kind == "leave" and rec["worker"] in self.workers:
            self._do_leave(rec["worker"])
        elif kind == "join" and rec["worker"] in self.workers:
            self.workers[rec["worker"]]["took_part"] = True
        elif kind != "update" or not self._replay_update(body):
            return False
        for name in list(self.experts):
            self._close_due(name)
        return True

    def _replay_update(self, body: bytes) -> bool:
        try:
            update = self._parse(body)
            info = self.workers.get(update.node_id)
            if info is None or update.seq in self.applied_keys.get(update.node_id, []):
                return False
            arrival = self.receivers[info["specialty"]].decode(update, len(body))
        except (HttpError, Rejected) as exc:
            self.log(f"journal: skipped an update that cannot be replayed ({exc})")
            return False
        self._accept(update.node_id, update, arrival.tensors, len(body))
        return True

    def close(self) -> None:
        with self.lock:
            self.store.close()
            self.events.close()
