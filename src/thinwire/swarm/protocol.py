"""What swarm peers say to each other: message kinds, their typed bodies, the model hash.

Every body is a wire message parsed strictly (wire/): an `Update` for a contribution, a `Skip`
for a step a peer sat out or its goodbye, a `Register` for hello, join and state requests
(their fields in `capabilities`), a state blob (wire/state.py) for a model handed over.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import IntEnum

import torch

from ..errors import ThinwireError, WireError
from ..wire.control import Register, Skip, parse, serialize


class Msg(IntEnum):
    HELLO = 1      # Register: config digest, model hash, step; reply=1 from a running swarm
    UPDATE = 2     # Update of one step; envelope tag: model hash at the step's start (or 0)
    SKIP = 3       # Skip: the policy sat this step out; same tag
    STATE_REQ = 4  # Register: why (rejoin | diverged) and the step the state is wanted for
    STATE = 5      # state blob: model, optimizer, strategy, decoders, members, step
    JOIN = 6       # Register: peer `worker_id` (session) takes part from `step`
    BYE = 7        # Skip: this peer finished; envelope tag: its final model hash


class SwarmError(ThinwireError):
    """Peers that cannot work together: configs differ, a peer never came, no state."""


@dataclass(frozen=True)
class Hello:
    name: str
    session: int
    config: str
    model: int
    step: int
    reply: bool = False

    def to_bytes(self) -> bytes:
        caps = {"config": self.config, "model": f"{self.model:x}", "step": str(self.step),
                "reply": "1" if self.reply else "0"}
        return serialize(Register(self.name, str(self.session), "swarm", caps))

    @classmethod
    def from_bytes(cls, data: bytes) -> "Hello":
        reg = parse(Register, data)
        caps = reg.capabilities
        try:
            return cls(reg.worker_id, int(reg.session), caps["config"], int(caps["model"], 16),
                       int(caps["step"]), caps.get("reply") == "1")
        except (KeyError, ValueError) as exc:
            raise WireError(f"hello from {reg.worker_id!r} lacks a field: {exc}") from None


@dataclass(frozen=True)
class Request:
    """A state request (`why`: rejoin | diverged) or a join notice (`why`: join)."""

    name: str
    session: int
    why: str
    step: int

    def to_bytes(self) -> bytes:
        caps = {"why": self.why, "step": str(self.step)}
        return serialize(Register(self.name, str(self.session), "swarm", caps))

    @classmethod
    def from_bytes(cls, data: bytes) -> "Request":
        reg = parse(Register, data)
        try:
            return cls(reg.worker_id, int(reg.session), reg.capabilities["why"],
                       int(reg.capabilities["step"]))
        except (KeyError, ValueError) as exc:
            raise WireError(f"request from {reg.worker_id!r} lacks a field: {exc}") from None


def skip_bytes(name: str, step: int, reason: str) -> bytes:
    return serialize(Skip(name, step, reason))


def parse_skip(data: bytes) -> Skip:
    return parse(Skip, data)


def model_hash(model: torch.nn.Module) -> int:
    """63 bits of blake2b over every parameter and buffer, in order: equal models, equal hash."""
    h = hashlib.blake2b(digest_size=8)
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
                 .tobytes())
    return int.from_bytes(h.digest(), "little") >> 1 or 1
