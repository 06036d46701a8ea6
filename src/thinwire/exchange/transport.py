"""Transport: moves bytes between named endpoints and records every byte in a link ledger.

The exchange layer above never sees sockets: a runtime picks a transport. Here:
`MemoryTransport` (the simulator: bytes pass through mailboxes in one process), in
exchange/http.py `HttpTransport` (the service's workers) and in exchange/zmq.py `ZmqTransport`
(swarm peers over ZeroMQ). Collectives add their own implementations of the same method.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import defaultdict, deque

from ..errors import ThinwireError
from ..obs.ledger import LinkLedger


class TransportError(ThinwireError):
    """Fatal for the endpoint: bad token, a peer or server gone for good, a send that could
    not be queued."""


class Transport(ABC):
    """Send bytes from `src` to `dst`; receive what was sent to an endpoint."""

    def __init__(self, ledger: LinkLedger | None = None) -> None:
        self.ledger = ledger if ledger is not None else LinkLedger()

    @abstractmethod
    def send(self, src: str, dst: str, data: bytes, raw: int = 0,
             kind: str = "payload") -> object | None:
        """Deliver `data`; `raw` is its dense fp32 size, for the compression ratio. A
        request/response transport returns the reply."""


class MemoryTransport(Transport):
    """In-process mailboxes: what crosses is exactly the serialized bytes."""

    def __init__(self, ledger: LinkLedger | None = None) -> None:
        super().__init__(ledger)
        self.boxes: dict[str, deque[tuple[str, bytes]]] = defaultdict(deque)

    def send(self, src: str, dst: str, data: bytes, raw: int = 0,
             kind: str = "payload") -> None:
        self.ledger.record(src, dst, len(data), raw, kind)
        self.boxes[dst].append((src, bytes(data)))

    def broadcast(self, src: str, dsts: list[str], data: bytes, raw: int = 0) -> None:
        for dst in dsts:
            self.send(src, dst, data, raw)

    def recv(self, dst: str) -> tuple[str, bytes] | None:
        """The next (src, data) sent to `dst`, or None when nothing is waiting."""
        box = self.boxes.get(dst)
        return box.popleft() if box else None

    def drain(self, dst: str) -> list[tuple[str, bytes]]:
        out = []
        while (item := self.recv(dst)) is not None:
            out.append(item)
        return out
