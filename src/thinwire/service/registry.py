"""Who is registered and who may act for a worker id (mixed into `Coordinator`).

The registry is capped (`cfg.registry_cap()`): when it is full a new id evicts the
longest-gone worker that left, else it is refused with 429. A registration hands out a
per-worker key (kept only as a hash); later calls for that id must present it, or the
admin token. Re-registering with the same session and key, or leaving twice, writes no
journal record, so repeating them cannot grow the journal.
"""

from __future__ import annotations

import re
import time
from typing import Any

from pydantic import ValidationError

from .admission import ServiceError
from ..server.credentials import Caller, key_matches, new_key
from .schemas import RegisterIn

EVICTED = "evicted"  # ledger name that evicted workers' byte counts are folded into


class Registry:
    def register(self, wid: str, session: str, specialty: str = "",
                 capabilities: dict[str, Any] | None = None,
                 caller: Caller | None = None) -> dict[str, Any]:
        """Join (or come back). Returns the worker's view of the run, and its key when a
        new one was issued (only then: the coordinator keeps just its hash)."""
        body = registration(wid, session, specialty, capabilities)
        with self.lock:
            info = self.workers.get(wid)
            proven = self._proven(info, caller)
            if info is not None and info["state"] != "left" and not proven:
                raise ServiceError(403, f"worker id {wid!r} is registered with a key: send "
                                        "its X-Thinwire-Worker-Key (or the admin token), or "
                                        "use another worker id")
            if info is not None and info["session"] == session and proven:
                if info["state"] != "left":  # already here: nothing new to journal
                    self._touch(wid)
                    info["state"] = "active"
                    return self._welcome(wid, None)
                rec, key = self._record(body, fresh=False), None
            else:
                key, key_hash = new_key() if self.cfg.worker_keys else (None, None)
                evict = self._make_room() if info is None else []
                rec = self._record(body, fresh=True, key_hash=key_hash, evict=evict)
            self.store.append(rec)
            self._do_register(rec)
            self._touch(wid)
            return self._welcome(wid, key)

    @staticmethod
    def _record(body: RegisterIn, fresh: bool, **extra: Any) -> dict[str, Any]:
        return {"type": "register", "worker": body.worker_id, "session": body.session,
                "specialty": body.specialty, "capabilities": body.capabilities,
                "fresh": fresh, **extra}

    def _welcome(self, wid: str, key: str | None) -> dict[str, Any]:
        info = self.workers[wid]
        out = {"worker_id": wid, "index": info["index"], "round": self.round,
               "version": self.version, "done": self.done, "config": self.cfg.worker_view()}
        if key is not None:
            out["worker_key"] = key
        return out

    def _do_register(self, rec: dict[str, Any]) -> None:
        """A new worker, or a new session for an id (its codec state starts fresh), or a
        worker that left coming back with its session and key (codec state kept)."""
        for gone in rec.get("evict", []):
            self._evict(gone)
        wid = rec["worker"]
        old = self.workers.get(wid)
        fresh = rec.get("fresh")
        if fresh is None:  # a record from before keys: the session decides
            fresh = old is None or old["session"] != rec["session"]
        if old is not None and not fresh:
            old["state"] = "active"
            return
        self.receiver.forget(wid)
        self.strategy.forget(wid)
        self.applied_keys.pop(wid, None)
        index = old["index"] if old else self._index_for(wid)
        self.workers[wid] = {"id": wid, "session": rec["session"], "state": "active",
                             "last_seen": time.time(), "joined_round": self.round,
                             "index": index, "specialty": rec.get("specialty", ""),
                             "capabilities": rec.get("capabilities", {}), "sent": 0,
                             "skipped": 0, "key_hash": rec.get("key_hash"),
                             "took_part": None}  # rounds.py: none yet, so not waited for
        if not self._replaying:
            self.log(f"worker {wid} joined (shard {index}) at round {self.round}")

    def _index_for(self, wid: str) -> int:
        """The trailing number of the id (worker-3 -> 3), else the lowest free index."""
        taken = {w["index"] for w in self.workers.values()}
        match = re.search(r"(\d+)$", wid)
        if match:
            return int(match.group(1)) % self.cfg.total_workers
        return next(i for i in range(len(taken) + 1) if i not in taken)

    # ---- the cap ------------------------------------------------------------------------
    def _make_room(self) -> list[str]:
        """Ids to evict so one more fits: the longest-gone worker that left and has no
        part in the open round; 429 when there is none."""
        cap = self.cfg.registry_cap()
        if len(self.workers) < cap:
            return []
        busy = self._responded() | set(self.offers) | (self.selected or set())
        gone = [w for w in self.workers.values()
                if w["state"] == "left" and w["id"] not in busy]
        if not gone:
            raise ServiceError(429, f"registry full: {len(self.workers)} workers registered "
                                    f"(max_registered={cap}); retry after a worker leaves")
        return [min(gone, key=lambda w: w["last_seen"])["id"]]

    def _evict(self, wid: str) -> None:
        """Forget a worker that left; its byte counts stay in the totals (as 'evicted')."""
        if self.workers.pop(wid, None) is None:
            return
        self.receiver.forget(wid)
        self.strategy.forget(wid)
        self.applied_keys.pop(wid, None)
        fold_ledger(self.ledger, wid)

    # ---- leaving and proving who you are ---------------------------------------------
    def leave(self, wid: str, caller: Caller | None = None) -> dict[str, Any]:
        with self.lock:
            if self.authorize(wid, caller)["state"] != "left":
                self.store.append({"type": "leave", "worker": wid})
                self._do_leave(wid)
            return {"worker_id": wid, "state": "left"}

    def _do_leave(self, wid: str) -> None:
        self.workers[wid]["state"] = "left"
        self.strategy.forget(wid)

    def authorize(self, wid: str, caller: Caller | None) -> dict[str, Any]:
        """The worker's entry, if it is registered (404) and the caller may act for it (403)."""
        with self.lock:
            info = self._known(wid)
            if not self._proven(info, caller):
                raise ServiceError(403, f"wrong or missing X-Thinwire-Worker-Key for worker "
                                        f"{wid!r}: send the key its registration returned")
            return info

    @staticmethod
    def _proven(info: dict[str, Any] | None, caller: Caller | None) -> bool:
        if caller is None or caller.admin or info is None or not info.get("key_hash"):
            return True
        return key_matches(info["key_hash"], caller.key)

    def _known(self, wid: str) -> dict[str, Any]:
        info = self.workers.get(wid)
        if info is None:
            raise ServiceError(404, f"worker {wid!r} is not registered: POST /v1/workers first "
                                    "(workers re-register by themselves after a restart)")
        return info

    def _touch(self, wid: str) -> None:
        info = self.workers.get(wid)
        if info is not None:
            info["last_seen"] = time.time()
            if info["state"] == "offline":
                info["state"] = "active"

    def count_control(self, nbytes: int, wid: str | None = None) -> None:
        """Bytes of a control request (register, skip, offer, leave) on the worker's link."""
        with self.lock:
            src = wid if wid in self.workers else "client"  # no ledger entry per unknown id
            self.ledger.control(src, self.ledger.hub, nbytes)


def registration(wid: str, session: str, specialty: str,
                 capabilities: dict[str, Any] | None) -> RegisterIn:
    """The bounded registration (the HTTP layer validated it already; in-process callers
    get the same rules)."""
    try:
        return RegisterIn(worker_id=wid, session=session, specialty=specialty,
                          capabilities=capabilities or {})
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(p) for p in problem["loc"])
        raise ServiceError(400, f"bad registration: {where}: {problem['msg']}") from None


def fold_ledger(ledger: Any, wid: str) -> None:
    """Move a worker's links and skip counts to the EVICTED name, keeping every total."""
    for (src, dst, kind) in [k for k in ledger.links if wid in k[:2]]:
        old = ledger.links.pop((src, dst, kind))
        key = (EVICTED if src == wid else src, EVICTED if dst == wid else dst, kind)
        into = ledger.links.setdefault(key, type(old)())
        into.wire, into.raw = into.wire + old.wire, into.raw + old.raw
        into.messages += old.messages
    if wid in ledger.nodes:
        old = ledger.nodes.pop(wid)
        into = ledger.nodes.setdefault(EVICTED, type(old)())
        into.skipped, into.skipped_raw = (into.skipped + old.skipped,
                                          into.skipped_raw + old.skipped_raw)
