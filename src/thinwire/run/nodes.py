"""A simulated node: its shard, its batch stream, its encoder and its upload policy."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..codecs import Encoder
from ..policy import SendContext, SendPolicy
from ..wire import Update

Tensors = dict[str, torch.Tensor]


def epoch_generator(seed: int, node: int, epoch: int) -> torch.Generator:
    """Data order depends only on (seed, node, epoch), so a resumed run replays it exactly."""
    return torch.Generator().manual_seed(seed * 1_000_003 + node * 7_919 + epoch)


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

    def prepare(self, tensors: Tensors, step: int, confidence: float,
                num_samples: int, kind: str) -> tuple[Update | None, str]:
        """Ask the policy; encode (tentatively if the policy must see the encoding first)."""
        norm = float(torch.sqrt(sum((t.float() ** 2).sum() for t in tensors.values())))
        ctx = SendContext(step=step, grad_norm=norm, confidence=confidence)
        if not self.policy.needs_encoding:
            send, reason = self.policy.decide(ctx)
            if not send:
                return None, reason
            payloads = [self.encoder.encode(t, name) for name, t in tensors.items()]
        else:
            snapshot = self.encoder.state_dict()
            pairs = {name: self.encoder.roundtrip(t, name) for name, t in tensors.items()}
            recon = {name: r for name, (_, r) in pairs.items()}
            ctx.error_sq = _sq_dist(tensors, recon)
            ctx.innovation_sq = _sq_dist(recon, self.last_sent) if self.last_sent else None
            if ctx.innovation_sq is None:
                ctx.innovation_sq = float("inf")
            send, reason = self.policy.decide(ctx)
            if not send:
                self.encoder.load_state_dict(snapshot)
                return None, reason
            self.last_sent = recon
            payloads = [p for p, _ in pairs.values()]
        self.policy.sent(ctx)
        update = Update(node_id=self.node_id, tensors=payloads, round=step, seq=step,
                        confidence=confidence, num_samples=num_samples, kind=kind)
        return update, reason

    def state_dict(self) -> dict:
        return {"encoder": self.encoder.state_dict(), "policy": self.policy.state_dict(),
                "epoch": self.epoch, "cursor": self.cursor, "last_sent": self.last_sent}

    def load_state_dict(self, state: dict) -> None:
        self.encoder.load_state_dict(state["encoder"])
        self.policy.load_state_dict(state["policy"])
        self.epoch, self.cursor = state["epoch"], state["cursor"]
        self.last_sent = state["last_sent"]
        self._order = None if self.cursor == 0 else self._permute()


def _sq_dist(a: Tensors, b: Tensors | None) -> float:
    if b is None:
        return float("inf")
    return float(sum(((a[k].float() - b[k].float()) ** 2).sum() for k in a))
