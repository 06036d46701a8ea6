"""A peer's view of the swarm: who is alive, what arrived, and the control plane.

Peers start with a hello to everyone (same config, same initial model, same step, else a
clear error). In each step a peer sends its update (or a skip notice) to the live peers the
schedule names (schedule.py: every other, or gossip's K) and waits for those it hears from; a
peer whose socket closed (kill -9) or that stayed silent past `peer_timeout` while awaited is
declared gone, logged, and the others carry on without it (gossip skips it in the schedule).

A restarted peer says hello with a new session; a running peer answers, and the lowest one
that answered hands it the state at the start of its next step and tells everyone else, before
its own update of that step, that the newcomer takes part from that step (JOIN). A peer whose
model hash differs from the lowest live peer's (a kill mid-send can leave peers with different
sets of contributions) asks that peer for its state the same way and carries on from it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import WireError
from ..exchange.zmq import Delivery, LinkEvent, ZmqTransport
from ..wire.state import decode_state, encode_state
from .protocol import Hello, Msg, Request, SwarmError, skip_bytes
from .schedule import Schedule

if TYPE_CHECKING:
    from .peer import Peer

DOWN_GRACE = 0.5  # seconds a closed link may take to come back before its peer counts as gone


@dataclass
class Outgoing:
    """This step's message, kept so a peer admitted mid-step still receives it."""

    step: int
    msg: Msg
    data: bytes
    raw: int
    kind: str
    tag: int
    to: set[int] | None = None  # None: every live peer
    sent_to: set[int] = field(default_factory=set)

    def wants(self, j: int) -> bool:
        return j not in self.sent_to and (self.to is None or j in self.to)


class Network:
    def __init__(self, peer: "Peer", addresses: list[str]) -> None:
        cfg = peer.cfg
        self.peer, self.cfg, self.me, self.names = peer, cfg, peer.index, peer.names
        self.transport = ZmqTransport(peer.index, addresses, peer.names, hwm=cfg.hwm,
                                      send_timeout=cfg.send_timeout,
                                      chunk_bytes=cfg.chunk_bytes, log=peer.log)
        self.session = self.transport.session
        self.sessions: dict[int, int] = {self.me: self.session}
        self.live: set[int] = set(range(len(addresses)))
        self.schedule = Schedule(len(addresses), cfg.seed,
                                 cfg.gossip_fanout if cfg.exchange == "gossip" else None)
        self.running = False
        self.inbox: dict[tuple[int, int], Delivery] = {}
        self.hellos: dict[int, Hello] = {}
        self.requests: list[tuple[int, Request]] = []
        self.joins: dict[int, dict[int, int]] = {}
        self.state_reply: Delivery | None = None
        self.finished: dict[int, int] = {}  # peer -> final model hash (its goodbye)
        self.heard: dict[int, float] = {}
        self.down_since: dict[int, float] = {}
        self.current: Outgoing | None = None
        self.departures: list[dict[str, Any]] = []
        self.arrivals: list[dict[str, Any]] = []
        self.bad_bodies = 0
        self.stale = 0

    # ---- sending ------------------------------------------------------------------------
    def others(self) -> list[int]:
        return sorted(self.live - {self.me})

    def send_to(self, j: int, msg: Msg, data: bytes, step: int = 0, tag: int = 0,
                raw: int = 0, kind: str = "control") -> None:
        self.transport.send(self.peer.name, self.names[j], data, raw, kind, msg=int(msg),
                            step=step, tag=tag)

    def broadcast(self, msg: Msg, data: bytes, step: int, tag: int = 0, raw: int = 0,
                  kind: str = "control", to: set[int] | None = None) -> int:
        """To every live peer (or those in `to`); kept for a peer admitted meanwhile.
        Returns how many peers it went to."""
        self.current = Outgoing(step, msg, data, raw, kind, tag, to)
        for j in self.others():
            if self.current.wants(j):
                self._send_current(j)
        return len(self.current.sent_to)

    def send_step(self, msg: Msg, data: bytes, step: int, tag: int = 0, raw: int = 0,
                  kind: str = "control") -> int:
        """This step's update or skip notice to the live peers the schedule names; returns
        how many it went to."""
        return self.broadcast(msg, data, step, tag, raw, kind,
                              self.schedule.targets(step, self.me))

    def _send_current(self, j: int) -> None:
        c = self.current
        self.send_to(j, c.msg, c.data, c.step, c.tag, c.raw, c.kind)
        c.sent_to.add(j)

    # ---- receiving ----------------------------------------------------------------------
    def pump(self, timeout: float) -> None:
        for item in self.transport.poll(timeout):
            self._dispatch(item)

    def _dispatch(self, item: Delivery | LinkEvent) -> None:
        now = time.monotonic()
        if isinstance(item, LinkEvent):
            if item.up:
                self.down_since.pop(item.index, None)
            else:
                self.down_since.setdefault(item.index, now)
            return
        self.heard[item.index] = now
        try:
            if item.kind == Msg.HELLO:
                self._on_hello(item)
            elif self.sessions.get(item.index) != item.session:
                self.stale += 1  # an old incarnation's last words, or a stranger
            else:
                self._on_message(item)
        except WireError as exc:
            self.bad_bodies += 1
            self.peer.log(f"dropped a malformed message from {self.names[item.index]}: {exc}")

    def _on_message(self, d: Delivery) -> None:
        if d.kind in (Msg.UPDATE, Msg.SKIP):
            if d.step >= self.peer.step:
                self.inbox[(d.index, d.step)] = d
        elif d.kind == Msg.STATE_REQ:
            self.requests.append((d.index, Request.from_bytes(d.body)))
        elif d.kind == Msg.STATE:
            self.state_reply = d
        elif d.kind == Msg.JOIN:
            r = Request.from_bytes(d.body)
            if r.name not in self.names:
                raise WireError(f"join notice names an unknown peer {r.name!r}")
            self.joins.setdefault(r.step, {})[self.names.index(r.name)] = r.session
        elif d.kind == Msg.BYE:
            self.finished[d.index] = d.tag
        else:
            raise WireError(f"unknown message kind {d.kind}")

    def _on_hello(self, d: Delivery) -> None:
        h = Hello.from_bytes(d.body)
        if h.name != self.names[d.index] or h.session != d.session:
            raise WireError(f"hello names {h.name!r} session {h.session}")
        known = self.sessions.get(d.index)
        self.hellos[d.index] = h
        if known == d.session:
            return
        if self.running and d.index in self.live:  # restarted before we noticed it had gone
            self.declare_gone(d.index, "restarted (a new session said hello)")
        self.sessions[d.index] = d.session
        if not self.running:
            return
        self.peer.log(f"{h.name} says hello again (new session); answering")
        reply = Hello(self.peer.name, self.session, self.peer.digest, self.peer.model_hash(),
                      self.peer.step, reply=True)
        self.send_to(d.index, Msg.HELLO, reply.to_bytes())

    # ---- membership ---------------------------------------------------------------------
    def declare_gone(self, j: int, reason: str) -> None:
        if j not in self.live:
            return
        self.live.discard(j)
        self.inbox = {k: v for k, v in self.inbox.items() if k[0] != j}
        self.transport.reset_peer(j)
        self.down_since.pop(j, None)
        self.peer.forget(self.names[j], len(self.live))
        p = self.peer
        self.departures.append({"node": self.names[j], "session": self.sessions.get(j),
                                "step": p.step, "epoch": p.epoch + 1, "time": time.time(),
                                "reason": reason})
        p.log(f"{self.names[j]} left at step {p.step} (epoch {p.epoch + 1}): {reason}; "
              f"carrying on with {len(self.live)} peer(s)")
        p.events.emit("peer", node=p.name, peer=self.names[j], state="gone", step=p.step,
                      reason=reason)

    def admit(self, j: int) -> None:
        self.live.add(j)
        self.peer.forget(self.names[j], len(self.live))
        p = self.peer
        self.arrivals.append({"node": self.names[j], "session": self.sessions.get(j),
                              "step": p.step, "epoch": p.epoch + 1, "time": time.time()})
        p.log(f"{self.names[j]} takes part again from step {p.step}")
        p.events.emit("peer", node=p.name, peer=self.names[j], state="alive", step=p.step)

    def apply_joins(self, step: int) -> None:
        for at in sorted(k for k in self.joins if k <= step):
            for j, session in self.joins.pop(at).items():
                if j == self.me:
                    continue
                if j in self.live and self.sessions.get(j) != session:
                    self.declare_gone(j, "restarted (a join notice names a new session)")
                self.sessions[j] = session
                if j not in self.live:
                    self.admit(j)
                c = self.current
                if c is not None and c.step == step and c.wants(j):
                    self._send_current(j)
                self._skip_missed(j, at, step)

    def _skip_missed(self, j: int, joined: int, step: int) -> None:
        """Gossip lets a peer run steps ahead of a join notice: for the steps since `joined`
        that it passed without `j`, tell `j` it sat them out, so `j` does not wait for it."""
        for s in range(joined, step):
            if j in self.schedule.targets(s, self.me):
                self.send_to(j, Msg.SKIP, skip_bytes(self.peer.name, s, "joined late"), s)

    def view(self) -> dict[str, str]:
        """Every peer's state as this peer sees it (for events and the dashboard)."""
        gone = {d["node"] for d in self.departures}
        out = {}
        for j, name in enumerate(self.names):
            out[name] = ("done" if j in self.finished else "alive" if j in self.live
                         else "gone" if name in gone else "absent")
        return out

    def _check_alive(self, j: int, since: float | None) -> None:
        """An awaited peer (`since`: when the wait began) that finished, closed its socket or
        stayed silent is out; one not awaited (None) only when its socket closed."""
        now = time.monotonic()
        down = self.down_since.get(j)
        if j in self.finished:
            if since is not None:
                self.live.discard(j)
        elif down is not None and now - down > DOWN_GRACE:
            self.declare_gone(j, "its socket closed")
        elif since is not None and now - max(since, self.heard.get(j, since)) > \
                self.cfg.peer_timeout:
            self.declare_gone(j, f"silent for {self.cfg.peer_timeout:.0f}s")

    # ---- one step -----------------------------------------------------------------------
    def begin_step(self, step: int) -> None:
        """Before this step's send: admit joiners, hand over states that were asked for."""
        self.apply_joins(step)
        self.answer_requests(step, begin=True)
        self.inbox = {k: v for k, v in self.inbox.items() if k[1] >= step}

    def collect(self, step: int) -> dict[int, Delivery]:
        """The message of `step` of every live peer this one hears from (every other, or
        gossip's sources); peers that leave meanwhile are dropped."""
        since, sources = time.monotonic(), self.schedule.sources(step, self.me)
        while True:
            self.apply_joins(step)
            self.answer_requests(step, begin=False)
            awaited = [j for j in self.others() if j in sources]
            missing = [j for j in awaited if (j, step) not in self.inbox]
            if not missing:
                return {j: self.inbox.pop((j, step)) for j in awaited}
            for j in self.others():  # an awaited peer whose message is here stays
                if j in missing or j not in sources:
                    self._check_alive(j, since if j in missing else None)
            self.pump(0.05)

    # ---- handing over state -------------------------------------------------------------
    def answer_requests(self, step: int, begin: bool) -> None:
        """A rejoining peer gets the state at the start of our next step (and everyone a
        join notice first); a diverged one as soon as we are at the step it asked for."""
        keep = []
        for j, req in self.requests:
            if req.why == "rejoin" and not begin or req.why == "diverged" and req.step > step:
                keep.append((j, req))
            elif req.why == "rejoin":
                notice = Request(self.names[j], self.sessions[j], "join", step).to_bytes()
                for k in self.others():
                    self.send_to(k, Msg.JOIN, notice)
                self.admit(j)
                self._send_state(j, step)
            elif req.why == "diverged" and j in self.live:
                self._send_state(j, step)
        self.requests = keep

    def _send_state(self, j: int, step: int) -> None:
        members = {str(k): self.sessions[k] for k in self.live}
        data, _ = encode_state({**self.peer.shared_state(), "members": members})
        self.send_to(j, Msg.STATE, data, step=step, raw=len(data), kind="payload")
        self.peer.log(f"handed the state of step {step} to {self.names[j]} "
                      f"({len(data) / 1e6:.2f} MB)")

    def await_state(self, ref: int, timeout: float) -> dict[str, Any] | None:
        """Wait for `ref`'s state; None if it leaves or takes longer than `timeout`."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            d, self.state_reply = self.state_reply, None
            if d is not None and d.index == ref:
                return decode_state(d.body)
            down = self.down_since.get(ref)
            if ref in self.finished or down is not None and time.monotonic() - down > DOWN_GRACE:
                return None
            self.pump(0.05)
        return None

    def resync(self, step: int) -> bool:
        """Ask the reference peer (the lowest live one) for its state at `step`."""
        ref = min(self.live)
        self.send_to(ref, Msg.STATE_REQ, Request(self.peer.name, self.session, "diverged",
                                                 step).to_bytes())
        tree = self.await_state(ref, self.cfg.peer_timeout)
        if tree is None:
            self.peer.log(f"{self.names[ref]} did not hand over its state; keeping ours")
            return False
        self.peer.load_shared(tree, rejoin=False)
        return True

    # ---- start and end ------------------------------------------------------------------
    def handshake(self) -> None:
        """Hello to everyone; a fresh start needs every peer's hello with the same config,
        model and step. A running swarm's answer means we restarted: rejoin instead."""
        p = self.peer
        hello = Hello(p.name, self.session, p.digest, p.model_hash(), p.step)
        for j in self.others():
            self.send_to(j, Msg.HELLO, hello.to_bytes())
        end = time.monotonic() + self.cfg.startup_timeout
        while len(self.hellos) < len(self.names) - 1:
            if any(h.reply for h in self.hellos.values()):
                self.pump(0.5)  # let the other running peers answer too
                return self._rejoin()
            if time.monotonic() > end:
                missing = [n for j, n in enumerate(self.names) if j != self.me
                           and j not in self.hellos]
                raise SwarmError(f"peers {', '.join(missing)} did not say hello within "
                                 f"{self.cfg.startup_timeout:.0f}s: are they running, with the "
                                 "same --peers list?")
            self.pump(0.1)
        for h in self.hellos.values():
            self._check_peer(h, hello)
        self.running = True

    def _check_peer(self, h: Hello, mine: Hello) -> None:
        if h.config != mine.config:
            raise SwarmError(f"{h.name} runs another config (digest {h.config}, ours "
                             f"{mine.config}): start every peer with the same flags")
        if h.reply:
            return
        if h.step != mine.step:
            raise SwarmError(f"{h.name} starts at step {h.step}, this peer at {mine.step}: "
                             "resume every peer from the same checkpoints or none")
        resumed_gossip = self.schedule.gossip and mine.step > 0  # its models differ
        if h.model != mine.model and not resumed_gossip:
            raise SwarmError(f"{h.name} starts from another model (hash {h.model:x}, ours "
                             f"{mine.model:x}): same --seed, --model and checkpoints everywhere")

    def _rejoin(self) -> None:
        mine = Hello(self.peer.name, self.session, self.peer.digest, 0, 0)
        running = sorted(j for j, h in self.hellos.items() if h.reply)
        for j in running:
            self._check_peer(self.hellos[j], mine)
        for ref in running:
            self.peer.log(f"the swarm is running; asking {self.names[ref]} for its state")
            self.send_to(ref, Msg.STATE_REQ, Request(self.peer.name, self.session, "rejoin",
                                                     0).to_bytes())
            tree = self.await_state(ref, self.cfg.startup_timeout)
            if tree is not None:
                self.sessions.update({int(k): v for k, v in tree["members"].items()})
                self.live = {int(k) for k in tree["members"]} | {self.me}
                self.peer.load_shared(tree, rejoin=True)
                self.running = True
                self.peer.log(f"rejoined at step {self.peer.step} with "
                              f"{len(self.live)} peer(s)")
                return
        if self.finished:
            raise SwarmError("the swarm finished before this peer could rejoin")
        raise SwarmError("no running peer handed over its state; restart the swarm")

    def goodbye(self, final_hash: int) -> None:
        """Tell everyone we are done; wait (up to peer_timeout) for theirs and our acks."""
        self.broadcast(Msg.BYE, skip_bytes(self.peer.name, self.peer.step, "done"),
                       self.peer.step, tag=final_hash)
        for j in {j for j, _ in self.requests} - self.live:  # came too late to rejoin
            self.send_to(j, Msg.BYE, self.current.data, self.peer.step, tag=final_hash)
        since = time.monotonic()
        while any(j not in self.finished for j in self.others()):
            for j in self.others():
                self._check_alive(j, since)
            self.pump(0.05)
        self.transport.flush(2.0)
