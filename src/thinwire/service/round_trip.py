"""One worker round, the same over HTTP and in process: pull, train, propose, offer, push.

`Link` is what a worker needs from its coordinator. The HTTP worker (worker.py) implements it
over `HttpTransport`; the FLQ bits benchmark implements it by calling the `Coordinator`
directly. Both run `worker_round`, so there is one copy of the loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..errors import CodecError
from ..exchange import decode_update
from ..wire import Update
from ..wire.model import parse_model_message
from .learner import Learner, Proposal


@dataclass
class ModelInfo:
    """What comes with each model pull."""

    round: int
    version: int
    done: bool
    diffs: list[float]          # the LAQ model-change history


class Link(Protocol):
    def pull(self, have: int | None, wait_round: int | None) -> tuple[Update, ModelInfo]: ...
    def skip(self, round_: int, reason: str) -> None: ...
    def offer(self, round_: int, score: float, bits: int) -> bool: ...
    def push(self, body: bytes) -> tuple[bool, str]: ...


def read_model(body: bytes) -> tuple[Update, ModelInfo]:
    """A pulled model message (wire/model.py) as the Update and its info."""
    announce, update = parse_model_message(body)
    return update, ModelInfo(announce.round, announce.version, announce.done,
                             list(announce.diffs))


@dataclass
class RoundResult:
    info: ModelInfo
    proposal: Proposal | None = None
    outcome: str = "waiting"     # sent, skipped, unselected, refused, done, waiting
    detail: str = ""


def load_model(learner: Learner, link: Link, have: int | None,
               wait_round: int | None) -> tuple[ModelInfo, int | None]:
    """Pull and load the model (a delta when the worker holds the previous version).
    Returns the info and the version now held."""
    msg, info = link.pull(have, wait_round)
    try:
        tensors = decode_update(msg)
    except CodecError:  # a delta this worker cannot decode alone: ask for the full model
        msg, info = link.pull(None, wait_round)
        tensors = decode_update(msg)
    learner.load(tensors, add=msg.kind == "delta")
    learner.set_history(info.diffs)
    return info, info.version


def worker_round(learner: Learner, link: Link, info: ModelInfo, seq: int, sync: bool,
                 selection: bool, local_steps: int, seconds: float) -> RoundResult:
    """Train on the loaded model, then skip, offer and push as the policy and the
    coordinator decide. The proposal is committed only when the coordinator accepts it."""
    if sync:
        delta, n, conf = learner.train(steps=local_steps)
    else:
        delta, n, conf = learner.train(seconds=seconds)
    p = learner.propose(delta, info.round if sync else info.version, seq, info.version, n, conf)
    if p.update is None:
        link.skip(info.round, p.reason)
        return RoundResult(info, p, "skipped", p.reason)
    if selection and not link.offer(info.round, p.score, p.bits):
        learner.rollback(p)
        return RoundResult(info, p, "unselected", f"{p.bits} bits offered")
    accepted, detail = link.push(p.body)
    if accepted:
        learner.commit(p)
        return RoundResult(info, p, "sent", detail)
    learner.rollback(p)
    return RoundResult(info, p, "refused", detail)


class LocalLink:
    """A worker's link to a `Coordinator` in the same process (benchmarks, tests): the same
    calls the HTTP app makes, with the same serialized bodies, and no sockets."""

    def __init__(self, coordinator, wid: str) -> None:
        self.co, self.wid = coordinator, wid

    def pull(self, have: int | None, wait_round: int | None) -> tuple[Update, ModelInfo]:
        body, _ = self.co.pull(self.wid, have)
        return read_model(body)

    def skip(self, round_: int, reason: str) -> None:
        self.co.skip(self.wid, round_, reason)

    def offer(self, round_: int, score: float, bits: int) -> bool:
        return bool(self.co.offer(self.wid, round_, score, bits)["selected"])

    def push(self, body: bytes) -> tuple[bool, str]:
        from .admission import ServiceError

        try:
            return True, str(self.co.push(body)["status"])
        except ServiceError as exc:
            return False, f"{exc.status}: {exc.message}"
