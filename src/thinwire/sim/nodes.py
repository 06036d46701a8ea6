"""A simulated node: its shard, its batch stream, its encoder and its upload policy."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..codecs import Encoder, ErrorFeedback
from ..policy import SendContext, SendPolicy
from ..wire import Update

Tensors = dict[str, torch.Tensor]


def epoch_generator(seed: int, node: int, epoch: int) -> torch.Generator:
    """Data order depends only on (seed, node, epoch), so a resumed run replays it exactly."""
    return torch.Generator().manual_seed(seed * 1_000_003 + node * 7_919 + epoch)


@dataclass
class Decision:
    """One upload decision: what to send (payloads), and for a tentative send the
    reconstruction and the state to roll back to."""
    send: bool
    reason: str
    ctx: SendContext
    payloads: list = field(default_factory=list)
    recon: Tensors | None = None
    snapshot: tuple | None = None


@dataclass
class SimNode:
    index: int
    shard: torch.Tensor          # indices into the training set
    encoder: Encoder
    policy: SendPolicy
    seed: int = 0
    epoch: int = 0
    cursor: int = 0
    last_sent: Tensors | None = None  # what the aggregator holds for this node (LAQ)
    accumulate: bool = False          # keep skipped updates and send them with the next one
    pending: Tensors | None = None
    _order: torch.Tensor | None = field(default=None, repr=False)

    @property
    def node_id(self) -> str:
        return f"node-{self.index}"

    def next_batch(self, batch_size: int) -> torch.Tensor:
        """Indices of the next batch; reshuffles when the shard is exhausted."""
        if self._order is None:
            self._order = self._permute()
        if self.cursor + batch_size > len(self._order):
            self.epoch += 1
            self.cursor = 0
            self._order = self._permute()
        take = self._order[self.cursor: self.cursor + batch_size]
        self.cursor += batch_size
        return take

    def _permute(self) -> torch.Tensor:
        gen = epoch_generator(self.seed, self.index, self.epoch)
        return self.shard[torch.randperm(len(self.shard), generator=gen)]

    @property
    def carries_error(self) -> bool:
        """Error feedback (wrapper or the codec's own) keeps the quantization error for the
        next upload instead of dropping it, so LAQ's error term does not apply."""
        codec = self.encoder.codec
        return isinstance(codec, ErrorFeedback) or getattr(codec, "own_feedback", False)

    def decide(self, tensors: Tensors, step: int, confidence: float,
               tentative: bool = False) -> Decision:
        """Ask the policy, encoding first when it (LAQ) must see the reconstruction. A skip
        leaves the encoder as it was. `tentative` (the service: the coordinator may still
        refuse) always reconstructs and keeps a snapshot for `rollback`."""
        norm = float(torch.sqrt(sum((t.float() ** 2).sum() for t in tensors.values())))
        ctx = SendContext(step=step, grad_norm=norm, confidence=confidence)
        if self.pending is not None:
            tensors = {n: t + self.pending[n] for n, t in tensors.items()}
        if not (self.policy.needs_encoding or tentative):
            send, reason = self.policy.decide(ctx)
            if not send:
                self._keep(tensors)
                return Decision(False, reason, ctx)
            self.policy.sent(ctx)
            self.pending = None
            return Decision(True, reason, ctx,
                            [self.encoder.encode(t, name) for name, t in tensors.items()])
        snapshot = (self.encoder.state_dict(), self.policy.state_dict(), self.last_sent,
                    self.pending)
        pairs = {name: self.encoder.roundtrip(t, name) for name, t in tensors.items()}
        recon = {name: r for name, (_, r) in pairs.items()}
        ctx.error_sq = 0.0 if self.carries_error else _sq_dist(tensors, recon)
        ctx.innovation_sq = _sq_dist(recon, self.last_sent)
        send, reason = self.policy.decide(ctx)
        if not send:
            self.encoder.load_state_dict(snapshot[0])
            self._keep(tensors)
            return Decision(False, reason, ctx)
        self.policy.sent(ctx)
        self.last_sent, self.pending = recon, None
        return Decision(True, reason, ctx, [p for p, _ in pairs.values()], recon,
                        snapshot if tentative else None)

    def _keep(self, tensors: Tensors) -> None:
        if self.accumulate:
            self.pending = {n: t.detach().clone() for n, t in tensors.items()}

    def rollback(self, snapshot: tuple) -> None:
        """Undo a tentative send that did not happen: encoder, policy, last-sent, pending."""
        encoder, policy, self.last_sent, self.pending = snapshot
        self.encoder.load_state_dict(encoder)
        self.policy.load_state_dict(policy)

    def prepare(self, tensors: Tensors, step: int, confidence: float,
                num_samples: int, kind: str) -> tuple[Update | None, str]:
        d = self.decide(tensors, step, confidence)
        if not d.send:
            return None, d.reason
        return Update(node_id=self.node_id, tensors=d.payloads, round=step, seq=step,
                      confidence=confidence, num_samples=num_samples, kind=kind), d.reason

    def state_dict(self) -> dict:
        return {"encoder": self.encoder.state_dict(), "policy": self.policy.state_dict(),
                "epoch": self.epoch, "cursor": self.cursor, "last_sent": self.last_sent,
                "pending": self.pending}

    def load_state_dict(self, state: dict) -> None:
        self.encoder.load_state_dict(state["encoder"])
        self.policy.load_state_dict(state["policy"])
        self.epoch, self.cursor = state["epoch"], state["cursor"]
        self.last_sent = state["last_sent"]
        self.pending = state.get("pending")
        self._order = None if self.cursor == 0 else self._permute()


def _sq_dist(a: Tensors, b: Tensors | None) -> float:
    if b is None:
        return float("inf")
    return float(sum(((a[k].float() - b[k].float()) ** 2).sum() for k in a))
