"""Round mechanics of the coordinator (a base of `Coordinator`, which owns the state).

sync: a round collects one answer (an update, a lazy skip, or "not selected") per worker
taking part: an active worker that pulled, offered or answered in this round or the previous
one. It closes when all of them answered (and at least min_workers did), or at round_timeout
after the round's first pull with at least min_workers answers. A registered worker that
is not taking part holds no round open, and its last contribution is not reused. The step is
mean(pool) * server_lr * (m/sel_ref if sel_ref), pool = fresh updates plus the last
contribution of lazy or unselected workers (skipped="reuse").
async: each update applies on arrival, weighted by mix * (1 + staleness)^-a; a "round" is
total_workers applied updates.
Budget selection (sync): workers offer (score=||q||^2, bits) before uploading; the top
sel_clients by score/bits, or a greedy knapsack under up_budget_bits, may upload.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from ..exchange import Receiver, Rejected, TensorSet
from ..obs.ledger import LinkLedger
from ..policy import ModelDiffHistory
from ..server import admit, check_staleness
from ..strategy import Contribution, Strategy, apply_delta
from ..wire import Update
from .admission import ServiceError, check_header
from ..server.credentials import Caller
from .schemas import check_record

if TYPE_CHECKING:
    from .config import FLQConfig
    from ..server import StateStore


class RoundLogic:
    """Round mechanics over the coordinator's state. What it reads and writes is declared
    here (the Coordinator sets it up), so the dependency is explicit and type-checked."""

    cfg: FLQConfig
    lock: threading.RLock
    receiver: Receiver
    strategy: Strategy
    ledger: LinkLedger
    store: StateStore
    history: ModelDiffHistory
    params: dict[str, torch.Tensor]
    buffers: dict[str, torch.Tensor]
    workers: dict[str, dict[str, Any]]
    applied_keys: dict[str, list[list[int]]]
    selection_history: list[dict[str, Any]]
    train_losses: list[float]
    round: int
    version: int
    applied: int
    samples: int
    numel: int
    log: Callable[[str], None]

    # ---- round bookkeeping ------------------------------------------------------------
    def _reset_round(self) -> None:
        self.pending: dict[str, Contribution] = {}
        self.skips: dict[str, str] = {}
        self.offers: dict[str, tuple[float, int]] = {}
        self.selected: set[str] | None = None
        self.unselected: set[str] = set()
        self.round_started: float | None = None

    def _responded(self) -> set[str]:
        return set(self.pending) | set(self.skips) | self.unselected

    def _round_seen(self) -> None:
        """The deadline clock starts at the round's first pull (not while nobody works)."""
        if self.round_started is None and not self.done:
            self.round_started = time.monotonic()

    def _expected(self) -> set[str]:
        """Whom the round waits for: active workers taking part (`_takes_part`).
        Registering alone is not taking part, so silent ids hold no round open."""
        return {w for w, i in self.workers.items()
                if i["state"] == "active" and self._takes_part(i)}

    def _takes_part(self, info: dict[str, Any]) -> bool:
        """Pulled, offered or answered in this round or the previous one: the previous too,
        so a worker that just answered is waited for before its next pull arrives."""
        last = info.get("took_part")
        return last is not None and last >= self.round - 1

    def _took_part(self, wid: str) -> None:
        """A pull or an offer: the worker counts toward this round. Joining is journaled
        (sync), so a restart waits for the same workers; at most once a round per worker."""
        info = self.workers[wid]
        if self.cfg.schedule == "sync" and not self.done and not self._takes_part(info):
            self.store.append({"type": "join", "worker": wid, "round": self.round})
        info["took_part"] = self.round

    def _mark_offline(self) -> None:
        now, limit = time.time(), self.cfg.offline_seconds()
        for info in self.workers.values():
            if info["state"] == "active" and now - info["last_seen"] > limit:
                info["state"] = "offline"
                self.log(f"worker {info['id']} offline (silent {now - info['last_seen']:.0f}s)")

    # ---- uploads ----------------------------------------------------------------------
    def push(self, body: bytes, caller: Caller | None = None) -> dict[str, Any]:
        """Validate, decode, journal, then count an update; idempotent by (worker, round, seq)."""
        try:
            update = self.receiver.parse(body)
        except Rejected as exc:
            raise ServiceError(400, str(exc)) from None
        check_header(update)
        wid = update.node_id
        with self.lock:
            self.authorize(wid, caller)
            self._touch(wid)
            if [update.round, update.seq] in self.applied_keys.get(wid, []):
                return self._answer("duplicate", applied=False)
            self._admissible(wid, update)
            arrival = admit(self.receiver, self.store, update, body,
                            {"type": "update", "worker": wid}, ServiceError)
            self._accept(wid, update, arrival.tensors, len(body))
            answer = self._answer("accepted", applied=True)
            self._maybe_close()
            return answer

    def _answer(self, status: str, applied: bool) -> dict[str, Any]:
        return {"status": status, "applied": applied, "round": self.round,
                "version": self.version, "done": self.done}

    def _admissible(self, wid: str, update: Update) -> None:
        if self.cfg.schedule == "async":
            check_staleness(self.version, update.base_version, self.cfg.max_staleness,
                            "the coordinator's", ServiceError)
            return
        if self.done:
            raise ServiceError(409, "training is finished; nothing more is accepted")
        if update.round != self.round:
            raise ServiceError(409, f"update is for round {update.round} but round "
                                    f"{self.round} is open; pull the model and train again")
        if wid in self._responded():
            raise ServiceError(409, f"worker {wid} already answered round {self.round}")
        if self.cfg.selection and (self.selected is None or wid not in self.selected):
            raise ServiceError(409, f"worker {wid} is not selected in round {self.round}: "
                                    "POST /v1/offers first and upload only if selected")

    def _accept(self, wid: str, update: Update, decoded: TensorSet, nbytes: int) -> None:
        self.workers[wid]["sent"] += 1
        self.workers[wid]["took_part"] = self.round
        self.ledger.upload(wid, 4 * self.numel, nbytes)
        keys = self.applied_keys.setdefault(wid, [])
        keys.append([update.round, update.seq])
        del keys[:-64]
        self.samples += update.num_samples
        if "train_loss" in update.metrics:
            self.train_losses.append(float(update.metrics["train_loss"]))
            del self.train_losses[:-1000]
        if self.cfg.schedule == "sync":
            self.pending[wid] = Contribution(decoded, max(update.num_samples, 1),
                                             update.confidence)
        else:
            self._apply_async(decoded, self.version - update.base_version)

    # ---- skips and offers -------------------------------------------------------------
    def skip(self, wid: str, round_: int, reason: str = "lazy",
             caller: Caller | None = None) -> dict[str, Any]:
        with self.lock:
            self.authorize(wid, caller)
            self._touch(wid)
            if self.cfg.schedule == "sync":
                if wid in self._responded() and round_ == self.round:
                    return self._answer("duplicate", applied=False)
                if round_ != self.round or self.done:
                    raise ServiceError(409, f"skip is for round {round_} but round "
                                            f"{self.round} is open")
            rec = {"type": "skip", "worker": wid, "round": round_, "reason": str(reason)[:40]}
            self.store.append(rec)
            self._do_skip(rec)
            answer = self._answer("accepted", applied=True)
            self._maybe_close()
            return answer

    def _do_skip(self, rec: dict[str, Any]) -> None:
        self.workers[rec["worker"]]["skipped"] += 1
        self.workers[rec["worker"]]["took_part"] = self.round
        self.ledger.skip(rec["worker"], 4 * self.numel)
        if self.cfg.schedule == "sync":
            self.skips[rec["worker"]] = rec["reason"]

    def offer(self, wid: str, round_: int, score: float, bits: int,
              caller: Caller | None = None) -> dict[str, Any]:
        """Budget selection, phase one: returns selected true/false, or null (undecided)."""
        if not (math.isfinite(score) and score >= 0 and 0 < bits < 1 << 50):
            raise ServiceError(400, f"offer needs a finite score >= 0 and bits > 0, got "
                                    f"{score}, {bits}")
        with self.lock:
            self.authorize(wid, caller)
            self._touch(wid)
            if not self.cfg.selection:
                raise ServiceError(409, "budget selection is off (sel_clients = 0 and "
                                        "up_budget_bits = 0): upload directly")
            if round_ != self.round or self.done:
                raise ServiceError(409, f"offer is for round {round_} but round {self.round} "
                                        "is open")
            self._took_part(wid)
            if self.selected is None:
                self.offers[wid] = (float(score), int(bits))
                self._maybe_select()
            if self.selected is None:
                return {"selected": None, "round": self.round}
            if wid not in self.selected and wid not in self.unselected:
                self.unselected.add(wid)  # offered after the decision
                self.ledger.skip(wid, 4 * self.numel)
                self.workers[wid]["skipped"] += 1
                self._maybe_close()
            return {"selected": wid in self.selected, "round": self.round}

    def _maybe_select(self) -> None:
        if not self.cfg.selection or self.selected is not None or not self.offers:
            return
        answered = set(self.offers) | set(self.skips)
        late = (self.round_started is not None and
                time.monotonic() >= self.round_started + self.cfg.round_timeout / 2)
        if self._expected() <= answered or late:
            chosen = self.strategy.select(self.offers)
            rec = {"type": "select", "round": self.round, "selected": sorted(chosen),
                   "offers": {w: list(v) for w, v in self.offers.items()}}
            self.store.append(rec)
            self._do_select(rec)

    def _do_select(self, rec: dict[str, Any]) -> None:
        self.selected = set(rec["selected"])
        self.offers = {w: (v[0], v[1]) for w, v in rec["offers"].items()}
        self.unselected = set(self.offers) - self.selected
        for w in self.unselected:
            self.ledger.skip(w, 4 * self.numel)
            self.workers[w]["skipped"] += 1

    # ---- closing a round --------------------------------------------------------------
    def tick(self) -> None:
        """Called periodically: offline detection, selection and round deadlines."""
        with self.lock:
            self._mark_offline()
            if self.cfg.schedule == "sync" and not self.done:
                self._maybe_select()
                self._maybe_close()

    def _maybe_close(self) -> None:
        if self.cfg.schedule != "sync" or self.done:
            return
        responded = self._responded()
        if len(responded) < self.cfg.min_workers:
            return
        if not self._expected() - responded:
            self._close_round("complete")
        elif (self.round_started is not None and
              time.monotonic() >= self.round_started + self.cfg.round_timeout):
            self._close_round("deadline")

    def _close_round(self, reason: str) -> None:
        fresh, expected = self.pending, self._expected()
        for w, c in fresh.items():
            self.strategy.submit(w, c)
        gone = set(self.strategy.last) - set(fresh) - expected
        combined = self.strategy.result(exclude=gone)  # not taking part: last one not reused
        if combined is not None:
            self._step(combined.tensors, self.strategy.sync_scale(combined.count),
                       replace_buffers=True)
        entry = {"round": self.round, "version": self.version, "reason": reason,
                 "selected": sorted(fresh), "skipped": sorted(self.skips),
                 "unselected": sorted(self.unselected),
                 "combined": combined.count if combined else 0,
                 "missing": sorted(expected - self._responded()),
                 "bits_up": 8 * self.ledger.totals()["up_wire"]}
        self.selection_history.append(entry)
        self.round += 1
        self._reset_round()
        self.commit()
        self._after_round(entry)

    def _apply_async(self, decoded: TensorSet, staleness: int) -> None:
        self._step(decoded, self.strategy.async_weight(staleness), replace_buffers=False)
        self.applied += 1
        if self.applied % self.cfg.total_workers == 0:
            entry = {"round": self.round, "version": self.version, "reason": "async",
                     "staleness": staleness, "bits_up": 8 * self.ledger.totals()["up_wire"]}
            self.selection_history.append(entry)
            self.round += 1
            if self.round % self.cfg.commit_every == 0 or self.done:
                self.commit()
            self._after_round(entry)

    def _step(self, delta: TensorSet, scale: float, replace_buffers: bool) -> None:
        self.history.push(apply_delta(self.params, self.buffers, delta, scale, replace_buffers))
        self.version += 1
        self._advance_view()

    # ---- restart ----------------------------------------------------------------------
    def _replay(self) -> int:
        """Re-apply journaled messages the snapshot does not cover, in their original order.
        A record that does not fit its schema or no longer applies is logged and skipped:
        one bad record must not keep the coordinator from starting."""
        self._replaying, count, start_round = True, 0, self.round
        sync = self.cfg.schedule == "sync"
        try:
            for rec, body in self.store.records():
                problem = check_record(rec)
                if problem is None:
                    try:
                        count += 1 if self._replay_one(rec, body, sync) else 0
                    except (KeyError, TypeError, ValueError, ServiceError) as exc:
                        problem = f"{rec['type']} record failed: {type(exc).__name__}: {exc}"
                if problem is not None:
                    self.log(f"journal: skipped a record that cannot be replayed ({problem})")
        finally:
            self._replaying = False
        if count and (not sync or self.round != start_round):
            self.commit()
        return count

    def _replay_one(self, rec: dict[str, Any], body: bytes, sync: bool) -> bool:
        kind, wid = rec["type"], rec.get("worker")
        if kind == "register":
            self._do_register(rec)
        elif kind == "leave" and wid in self.workers:
            self._do_leave(wid)
        elif kind == "join" and wid in self.workers and rec["round"] == self.round:
            self.workers[wid]["took_part"] = self.round
        elif kind == "skip" and wid in self.workers and (not sync or rec["round"] == self.round):
            self._do_skip(rec)
            self._maybe_close()
        elif kind == "select" and rec["round"] == self.round and \
                set(rec["offers"]) <= set(self.workers):
            self._do_select(rec)
        elif kind == "update" and self._replay_update(body, sync):
            self._maybe_close()
        else:
            return False
        return True

    def _replay_update(self, body: bytes, sync: bool) -> bool:
        """Re-apply one journaled update; a record that no longer parses or decodes is
        logged and skipped rather than stopping the restart."""
        try:
            update = self.receiver.parse(body)
            wid = update.node_id
            if wid not in self.workers or (sync and update.round != self.round):
                return False
            if [update.round, update.seq] in self.applied_keys.get(wid, []):
                return False
            arrival = self.receiver.decode(update, len(body))
        except Rejected as exc:
            self.log(f"journal: skipped an update that cannot be replayed ({exc})")
            return False
        self._accept(wid, update, arrival.tensors, len(body))
        return True
