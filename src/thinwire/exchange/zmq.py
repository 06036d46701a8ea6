"""ZmqTransport: peers over ZeroMQ (tcp:// or ipc://), every byte in the link ledger.

Each peer binds one ROUTER (what others send it) and connects one DEALER to every other peer
(what it sends). A message travels as one or more chunks, each a two-frame ZeroMQ message
`[envelope, part]`; the envelope carries the sender's index and session, a per-link sequence
number, the chunk's place and the caller's `kind`/`step`/`tag`. The receiver reassembles the
chunks, drops duplicates by sequence number, and acknowledges each whole message over the
ROUTER (`ROUTER_MANDATORY`: an ack to a vanished peer is an error it counts, never a silent
drop). Sends block at the high-water mark for `send_timeout` seconds, then fail with an error
that says so: a message is never dropped because a queue was full.

Truth in bytes: the ledger gets every message (its body as `payload` or `control`, the
envelopes as `control`) and every ack; independently, `bytes_socket_sent/_received` count the
frames handed to and taken from the sockets (ZMTP's own 2 or 9 header bytes per frame are
counted apart in `bytes_framing_sent`). Frames that do not parse raise a WireError inside
`poll`, which counts, logs and drops them; the peer stays up. A socket monitor per DEALER
reports links going up and down (a killed peer's socket closes at once).
"""

from __future__ import annotations

import math
import secrets
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import zmq

from ..errors import WireError
from ..obs.ledger import LinkLedger
from .transport import Transport, TransportError

MAGIC, VERSION = b"TZ", 1
# magic, version, kind, sender index, sender session, seq, step, chunk, chunks, total, tag
ENVELOPE = struct.Struct("<2sBBHQQQIIQQ")
ACK = 0  # the envelope kind of an acknowledgement; callers use kinds 1..255
UP_EVENTS = zmq.EVENT_HANDSHAKE_SUCCEEDED
DOWN_EVENTS = zmq.EVENT_DISCONNECTED


@dataclass(frozen=True)
class Envelope:
    kind: int
    sender: int
    session: int
    seq: int
    step: int = 0
    chunk: int = 0
    chunks: int = 1
    total: int = 0
    tag: int = 0

    def pack(self) -> bytes:
        return ENVELOPE.pack(MAGIC, VERSION, self.kind, self.sender, self.session, self.seq,
                             self.step, self.chunk, self.chunks, self.total, self.tag)

    @classmethod
    def unpack(cls, data: bytes) -> "Envelope":
        if len(data) != ENVELOPE.size:
            raise WireError(f"envelope of {len(data)} bytes, expected {ENVELOPE.size}")
        magic, version, *fields = ENVELOPE.unpack(data)
        if magic != MAGIC or version != VERSION:
            raise WireError(f"envelope magic/version {bytes(magic)!r}/{version}, expected "
                            f"{MAGIC!r}/{VERSION}")
        env = cls(*fields)
        if not 0 <= env.chunk < env.chunks:
            raise WireError(f"chunk {env.chunk} of {env.chunks}")
        return env


def bind_address(address: str) -> str:
    """Where to bind one's own address: a tcp:// host other than loopback is how the others
    reach this machine (a name or an outside address), so bind every interface on its port."""
    if address.startswith("tcp://"):
        host, _, port = address[len("tcp://"):].rpartition(":")
        if host not in ("127.0.0.1", "localhost", "[::1]", "*"):
            return f"tcp://*:{port}"
    return address


def identity(index: int, session: int) -> bytes:
    """A DEALER's routing id: who it belongs to, checked against every envelope."""
    return b"TW" + struct.pack("<HQ", index, session)


@dataclass
class Delivery:
    """One whole message from a peer."""

    src: str
    index: int
    session: int
    kind: int
    step: int
    tag: int
    seq: int
    body: bytes


@dataclass
class LinkEvent:
    """The link to a peer came up (ZMTP handshake done) or went down (socket closed)."""

    src: str
    index: int
    up: bool


@dataclass
class _Partial:
    env: Envelope
    parts: list[bytes] = field(default_factory=list)
    size: int = 0


class ZmqTransport(Transport):
    def __init__(self, index: int, addresses: list[str], names: list[str] | None = None,
                 session: int | None = None, ledger: LinkLedger | None = None,
                 hwm: int = 1000, send_timeout: float = 30.0, chunk_bytes: int = 1 << 20,
                 max_message: int = 1 << 30, log: Callable[[str], None] | None = None) -> None:
        super().__init__(ledger if ledger is not None else LinkLedger(hub=""))
        self.index, self.addresses = index, list(addresses)
        self.names = names or [f"node-{i}" for i in range(len(addresses))]
        self.me = self.names[index]
        self.session = session or secrets.randbits(63) or 1
        self.hwm, self.send_timeout, self.chunk_bytes = hwm, send_timeout, chunk_bytes
        self.max_message, self.log = max_message, log or (lambda s: None)
        self.ctx = zmq.Context()
        self.poller = zmq.Poller()
        self.router = self._socket(zmq.ROUTER)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.router.bind(bind_address(self.addresses[index]))
        self.poller.register(self.router, zmq.POLLIN)
        self.dealers: dict[int, zmq.Socket] = {}
        self.monitors: dict[int, zmq.Socket] = {}
        self.next_seq: dict[int, int] = {}
        self.unacked: dict[int, dict[int, float]] = {}
        self.last_seq: dict[tuple[int, int], int] = {}
        self.partial: dict[tuple[int, int], _Partial] = {}
        self.connected: dict[int, bool] = {}
        self.counts = dict.fromkeys(("bytes_socket_sent", "bytes_socket_received",
                                     "bytes_framing_sent", "frames_sent", "frames_received",
                                     "malformed_frames", "duplicates", "acks_unroutable",
                                     "acks", "ack_wait_s"), 0)
        for j in range(len(self.addresses)):
            if j != index:
                self._connect(j)

    # ---- sockets ------------------------------------------------------------------------
    def _socket(self, kind: int) -> zmq.Socket:
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.SNDHWM, self.hwm)
        sock.setsockopt(zmq.RCVHWM, self.hwm)
        sock.setsockopt(zmq.SNDTIMEO, int(self.send_timeout * 1000))
        sock.setsockopt(zmq.LINGER, 2000)
        return sock

    def _connect(self, j: int) -> None:
        dealer = self._socket(zmq.DEALER)
        dealer.setsockopt(zmq.ROUTING_ID, identity(self.index, self.session))
        monitor = dealer.get_monitor_socket(UP_EVENTS | DOWN_EVENTS)
        dealer.connect(self.addresses[j])
        self.dealers[j], self.monitors[j] = dealer, monitor
        self.poller.register(dealer, zmq.POLLIN)
        self.poller.register(monitor, zmq.POLLIN)
        self.next_seq[j], self.unacked[j], self.connected[j] = 0, {}, False

    def reset_peer(self, j: int) -> None:
        """Forget the link to peer `j` (it left or restarted): messages still queued for it
        are discarded, sequence numbers start over, a fresh DEALER reconnects."""
        for sock in (self.dealers.pop(j), self.monitors.pop(j)):
            self.poller.unregister(sock)
            sock.close(linger=0)
        for key in [k for k in self.partial if k[0] == j]:
            del self.partial[key]
        self._connect(j)

    def _send(self, sock: zmq.Socket, frames: list, dst: str, routed: bool = False) -> bool:
        try:
            sock.send_multipart(frames)
        except zmq.Again:
            raise TransportError(
                f"{self.me} -> {dst}: the queue stayed at its high-water mark ({self.hwm} "
                f"messages) for {self.send_timeout:.0f}s, so the message was not sent: the "
                "peer is not reading (stalled or gone); raise --hwm or --send-timeout only "
                "if it is alive") from None
        except zmq.ZMQError as exc:
            if routed and exc.errno == zmq.EHOSTUNREACH:
                self.counts["acks_unroutable"] += 1
                return False
            raise TransportError(f"{self.me} -> {dst}: ZeroMQ send failed: {exc}") from None
        wire = frames[1:] if routed else frames  # a ROUTER's first frame only picks the pipe
        sizes = [len(f) for f in wire]
        self.counts["bytes_socket_sent"] += sum(sizes)
        self.counts["bytes_framing_sent"] += sum(2 if n < 256 else 9 for n in sizes)
        self.counts["frames_sent"] += len(sizes)
        return True

    # ---- sending ------------------------------------------------------------------------
    def send(self, src: str, dst: str, data: bytes, raw: int = 0, kind: str = "payload", *,
             msg: int = 1, step: int = 0, tag: int = 0) -> int:
        """Queue `data` for peer `dst` as message kind `msg` (1..255); returns its sequence
        number. Blocks while the peer's queue is full, up to `send_timeout`."""
        if not 1 <= msg <= 255:
            raise ValueError(f"message kind {msg}: use 1..255 (0 is the ack)")
        j = self.names.index(dst)
        self.next_seq[j] += 1
        seq, view = self.next_seq[j], memoryview(data)
        chunks = max(1, math.ceil(len(view) / self.chunk_bytes))
        for c in range(chunks):
            env = Envelope(msg, self.index, self.session, seq, step, c, chunks, len(view), tag)
            part = view[c * self.chunk_bytes:(c + 1) * self.chunk_bytes]
            self._send(self.dealers[j], [env.pack(), part], dst)
        self.unacked[j][seq] = time.monotonic()
        envelopes = ENVELOPE.size * chunks
        if kind == "control":
            self.ledger.record(src, dst, len(view) + envelopes, 0, "control")
        else:
            self.ledger.record(src, dst, len(view), raw, kind)
            self.ledger.record(src, dst, envelopes, 0, "control")
        return seq

    def oldest_unacked(self, j: int) -> float:
        """Seconds the oldest message to peer `j` has waited for its ack (0: none waiting)."""
        waiting = self.unacked.get(j)
        return time.monotonic() - min(waiting.values()) if waiting else 0.0

    # ---- receiving ----------------------------------------------------------------------
    def poll(self, timeout: float) -> list[Delivery | LinkEvent]:
        """What arrived within `timeout` seconds: whole messages and link events. Acks are
        handled here; malformed frames are counted, logged and dropped."""
        out: list[Delivery | LinkEvent] = []
        ready = dict(self.poller.poll(max(int(timeout * 1000), 0)))
        for sock in ready:
            if sock is self.router:
                self._drain(sock, self._on_data, out)
            elif sock in self.monitors.values():
                self._drain(sock, self._on_monitor, out)
            else:
                self._drain(sock, self._on_ack, out)
        return out

    def _drain(self, sock: zmq.Socket, handle: Callable, out: list) -> None:
        for _ in range(10_000):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                handle(sock, frames, out)
            except WireError as exc:
                self.counts["malformed_frames"] += 1
                self.log(f"{self.me}: dropped a malformed frame: {exc}")

    def _count_in(self, frames: list[bytes]) -> None:
        self.counts["bytes_socket_received"] += sum(len(f) for f in frames)
        self.counts["frames_received"] += len(frames)

    def _on_data(self, sock: zmq.Socket, frames: list[bytes], out: list) -> None:
        self._count_in(frames[1:])
        if len(frames) != 3:
            raise WireError(f"message of {len(frames) - 1} frames, expected 2 "
                            "(envelope, part)")
        ident, head, part = frames
        env = Envelope.unpack(head)
        if env.kind == ACK or not 0 <= env.sender < len(self.names) or env.sender == self.index:
            raise WireError(f"envelope kind {env.kind} from index {env.sender}")
        if ident != identity(env.sender, env.session):
            raise WireError(f"envelope claims {self.names[env.sender]} but the socket "
                            "belongs to someone else")
        if env.total > self.max_message or len(part) > env.total:
            raise WireError(f"message of {env.total} bytes (limit {self.max_message})")
        body = self._assemble(env, part)
        if body is None:
            return
        self._ack(ident, env)
        key = (env.sender, env.session)
        if env.seq <= self.last_seq.get(key, 0):
            self.counts["duplicates"] += 1
            return
        self.last_seq[key] = env.seq
        out.append(Delivery(self.names[env.sender], env.sender, env.session, env.kind,
                            env.step, env.tag, env.seq, body))

    def _assemble(self, env: Envelope, part: bytes) -> bytes | None:
        key = (env.sender, env.session)
        if env.chunks == 1:
            self.partial.pop(key, None)
            whole = part
        else:
            slot = self.partial.get(key)
            if env.chunk == 0:
                slot = self.partial[key] = _Partial(env)
            elif slot is None or (slot.env.seq, len(slot.parts)) != (env.seq, env.chunk):
                self.partial.pop(key, None)
                raise WireError(f"chunk {env.chunk}/{env.chunks} of message {env.seq} out "
                                "of order")
            slot.parts.append(part)
            slot.size += len(part)
            if slot.size > env.total:
                self.partial.pop(key, None)
                raise WireError(f"chunks of message {env.seq} exceed its {env.total} bytes")
            if len(slot.parts) < env.chunks:
                return None
            whole = b"".join(self.partial.pop(key).parts)
        if len(whole) != env.total:
            raise WireError(f"message {env.seq} has {len(whole)} bytes, its envelope says "
                            f"{env.total}")
        return whole

    def _ack(self, ident: bytes, env: Envelope) -> None:
        ack = Envelope(ACK, self.index, self.session, env.seq).pack()
        if self._send(self.router, [ident, ack], self.names[env.sender], routed=True):
            self.ledger.record(self.me, self.names[env.sender], len(ack), 0, "control")

    def _on_ack(self, sock: zmq.Socket, frames: list[bytes], out: list) -> None:
        self._count_in(frames)
        j = next(k for k, s in self.dealers.items() if s is sock)
        env = Envelope.unpack(frames[0]) if len(frames) == 1 else None
        if env is None or env.kind != ACK or env.sender != j:
            raise WireError(f"unexpected reply on the link to {self.names[j]}")
        sent = self.unacked[j].pop(env.seq, None)
        if sent is not None:
            self.counts["acks"] += 1
            self.counts["ack_wait_s"] += time.monotonic() - sent

    def _on_monitor(self, sock: zmq.Socket, frames: list[bytes], out: list) -> None:
        j = next(k for k, s in self.monitors.items() if s is sock)
        event = recv_monitor_message_from(frames)
        up = bool(event & UP_EVENTS)
        if up != self.connected[j]:
            self.connected[j] = up
            out.append(LinkEvent(self.names[j], j, up))

    # ---- the end ------------------------------------------------------------------------
    def flush(self, timeout: float) -> list[Delivery | LinkEvent]:
        """Wait up to `timeout` seconds for every sent message's ack; returns what arrived
        meanwhile."""
        out: list[Delivery | LinkEvent] = []
        end = time.monotonic() + timeout
        while any(self.unacked.values()) and time.monotonic() < end:
            out += self.poll(min(0.05, max(end - time.monotonic(), 0)))
        return out

    def close(self, linger: float = 0.0) -> None:
        """Close every socket; `linger` seconds let queued messages (a last error's hello)
        still go out."""
        for sock in [*self.dealers.values(), self.router, *self.monitors.values()]:
            sock.close(linger=int(linger * 1000))
        self.ctx.term()


def recv_monitor_message_from(frames: list[bytes]) -> int:
    """The event number of a monitor message already received as frames."""
    if not frames or len(frames[0]) < 2:
        raise WireError("short socket-monitor message")
    return struct.unpack("<H", frames[0][:2])[0]


__all__ = ["ACK", "Delivery", "Envelope", "LinkEvent", "TransportError", "ZmqTransport",
           "identity"]
