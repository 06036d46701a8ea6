"""Sender: how a node's contribution leaves it: encoder + send policy + pending/last-sent.

One decision path for every runtime: `propose` asks the policy (encoding first when the policy
must see the reconstruction, as LAQ does), encodes, and returns a `Proposal`. A send becomes
final with `commit`; a tentative one (the service: the coordinator may still refuse it) can be
undone with `rollback`, which restores encoder, policy, last-sent and pending exactly. A skip
leaves the encoder as it was; with `accumulate` the skipped update is kept and added to the
next one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..codecs import Encoder, ErrorFeedback, make_codec
from ..policy import SendContext, SendPolicy
from ..wire import Update
from .tensorset import DEFAULT_ROLE, Tensors, TensorSet, wire_role

LOSSLESS_ROLES = ("buffer",)  # running statistics travel exactly


@dataclass
class Proposal:
    """One upload decision: what to send (payloads) and how to undo it (tentative only)."""

    send: bool
    reason: str
    ctx: SendContext
    payloads: list = field(default_factory=list)
    recon: Tensors | None = None
    snapshot: tuple | None = field(default=None, repr=False)
    committed: bool = False

    @property
    def innovation(self) -> float:
        """||q||^2 of what the receiver would gain (budgeted selection's score)."""
        score = self.ctx.innovation_sq
        if score is None or score == float("inf"):  # first upload: all of it is new
            return sum(float((r.float() ** 2).sum()) for r in (self.recon or {}).values())
        return float(score)


class Sender:
    def __init__(self, node_id: str, encoder: Encoder, policy: SendPolicy,
                 accumulate: bool = False) -> None:
        self.node_id, self.encoder, self.policy = node_id, encoder, policy
        self.accumulate = accumulate
        self.last_sent: Tensors | None = None   # what the receiver holds for us (LAQ)
        self.pending: Tensors | None = None      # skipped updates kept for the next send
        self.lossless = Encoder(make_codec("none"))

    @property
    def carries_error(self) -> bool:
        """Error feedback (wrapper or the codec's own) keeps the quantization error for the
        next upload instead of dropping it, so LAQ's error term does not apply."""
        codec = self.encoder.codec
        return isinstance(codec, ErrorFeedback) or codec.own_feedback

    def propose(self, tensors: Tensors, step: int, confidence: float,
                tentative: bool = False, role: str = DEFAULT_ROLE) -> Proposal:
        """`role`: what the tensors are to the receiver (params, or LoRA `adapter`s), both
        sent through the codec."""
        norm = float(torch.sqrt(sum((t.float() ** 2).sum() for t in tensors.values())))
        ctx = SendContext(step=step, grad_norm=norm, confidence=confidence)
        if self.pending is not None:
            tensors = {n: t + self.pending[n] for n, t in tensors.items()}
        snapshot = (self._state() if tentative or self.policy.needs_encoding else None)
        if self.policy.needs_encoding or tentative:
            pairs = {name: self.encoder.roundtrip(t, name) for name, t in tensors.items()}
            recon = {name: r for name, (_, r) in pairs.items()}
            ctx.error_sq = 0.0 if self.carries_error else _sq_dist(tensors, recon)
            ctx.innovation_sq = _sq_dist(recon, self.last_sent)
            payloads = [p for p, _ in pairs.values()]
        send, reason = self.policy.decide(ctx)
        if not send:
            if snapshot is not None:
                self.encoder.load_state_dict(snapshot[0])
            self._keep(tensors)
            return Proposal(False, reason, ctx)
        if not (self.policy.needs_encoding or tentative):
            payloads, recon = [self.encoder.encode(t, n) for n, t in tensors.items()], None
        for payload in payloads:
            payload.role = wire_role(role)
        proposal = Proposal(True, reason, ctx, payloads, recon,
                            snapshot if tentative else None)
        if not tentative:
            self.commit(proposal)
        return proposal

    def commit(self, proposal: Proposal) -> None:
        """The send happened: the policy, last-sent and pending move on."""
        if proposal.committed or not proposal.send:
            return
        self.policy.sent(proposal.ctx)
        if proposal.recon is not None:
            self.last_sent = proposal.recon
        self.pending = None
        proposal.committed = True

    def rollback(self, proposal: Proposal) -> None:
        """Undo a tentative proposal that was not sent: every piece of state goes back."""
        if proposal.snapshot is None:
            return
        encoder, policy, self.last_sent, self.pending = proposal.snapshot
        self.encoder.load_state_dict(encoder)
        self.policy.load_state_dict(policy)
        proposal.snapshot, proposal.committed = None, False

    def message(self, proposal: Proposal, extra: TensorSet | None = None,
                **header: Any) -> Update:
        """The wire message of a send: the proposal's payloads plus `extra` tensors of other
        roles (buffers go lossless)."""
        tensors = list(proposal.payloads)
        for name, role, t in (extra or TensorSet()).items_with_roles():
            if role == DEFAULT_ROLE:
                raise ValueError(f"extra tensor {name!r} is a param: propose it instead")
            payload = self.lossless.encode(t.float(), name)
            payload.role = wire_role(role)
            tensors.append(payload)
        return Update(node_id=self.node_id, tensors=tensors, **header)

    def _state(self) -> tuple:
        return (self.encoder.state_dict(), self.policy.state_dict(), self.last_sent,
                self.pending)

    def _keep(self, tensors: Tensors) -> None:
        if self.accumulate:
            self.pending = {n: t.detach().clone() for n, t in tensors.items()}

    def state_dict(self) -> dict:
        return {"encoder": self.encoder.state_dict(), "policy": self.policy.state_dict(),
                "last_sent": self.last_sent, "pending": self.pending}

    def load_state_dict(self, state: dict) -> None:
        self.encoder.load_state_dict(state["encoder"])
        self.policy.load_state_dict(state["policy"])
        self.last_sent, self.pending = state["last_sent"], state.get("pending")


def _sq_dist(a: Tensors, b: Tensors | None) -> float:
    if b is None:
        return float("inf")
    return float(sum(((a[k].float() - b[k].float()) ** 2).sum() for k in a))


__all__ = ["Proposal", "Sender"]
