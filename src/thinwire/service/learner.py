"""A worker's FLQ step without any network: local SGD on its shard, then the upload decision.

`Learner.propose` is a tentative `Sender.propose` (exchange/): the worker commits it once the
coordinator accepts the upload and rolls it back when it does not happen (not selected,
refused), so encoder and policy state stay in step with the coordinator's decoder. The batch
order is the shared `ShardStream`; the model-change history comes with each model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ..codecs import Encoder, make_codec
from ..exchange import Proposal as Decision
from ..exchange import Sender, TensorSet
from ..policy import Always, LAQRule, ModelDiffHistory
from ..tasks import Task, build_model
from ..tasks.stream import ShardStream
from ..wire import Update, serialize_update
from .config import WorkerConfig

Tensors = dict[str, torch.Tensor]


@dataclass
class Proposal:
    """The outcome of one local round: an update to send (or None: lazy skip)."""

    update: Update | None
    reason: str
    score: float = 0.0      # ||q||^2 of what the coordinator would gain (budget selection)
    bits: int = 0           # exact serialized size of the update, in bits
    decision: Decision | None = field(default=None, repr=False)
    body: bytes = b""


def make_policy(conf: WorkerConfig, history: ModelDiffHistory):
    """The LAQ rule on model deltas, or always.

    LAQ steps theta -= alpha * sum_m Q_m, so its threshold divides the model changes by
    alpha^2 M^2 to compare them with one worker's innovation. Here the step is the *mean* of
    already lr-scaled deltas (theta += mean_m q_m), so the same comparison needs alpha = 1 and
    M = 1; thr_scale stays the design's knob."""
    if not conf.lazy:
        return Always()
    return LAQRule(history, alpha=1.0, workers=1, depth=conf.depth, xi=conf.xi,
                   t_bar=conf.t_bar, thr_scale=conf.thr_scale, warmup=conf.warmup)


class Learner:
    def __init__(self, task: Task, shard: torch.Tensor, index: int,
                 conf: WorkerConfig | dict[str, Any],
                 worker_id: str, speed_factor: float = 1.0) -> None:
        conf = WorkerConfig.of(conf)
        self.task, self.conf, self.worker_id = task, conf, worker_id
        self.speed_factor = max(speed_factor, 1.0)
        torch.manual_seed(conf.seed)
        self.model = build_model(conf.model or task.model, task.num_classes,
                                 task.in_shape)
        self.params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        self.buffers = {n: b for n, b in self.model.named_buffers() if b.is_floating_point()}
        self.history = ModelDiffHistory(conf.depth)
        encoder = Encoder(make_codec(conf.codec, conf.error_feedback))
        self.stream = ShardStream(index, shard, conf.seed)
        self.sender = Sender(worker_id, encoder, make_policy(conf, self.history))
        self.losses: list[float] = []

    # ---- model ------------------------------------------------------------------------
    def load(self, tensors: TensorSet | Tensors, add: bool = False) -> None:
        """Set (or, for a downlink delta, add to) the model's parameters and float buffers
        (a plain dict holds parameters only)."""
        if not isinstance(tensors, TensorSet):
            tensors = TensorSet(tensors)
        with torch.no_grad():
            for name, t in tensors.items():
                own = self.buffers if tensors.role(name) == "buffer" else self.params
                target = own.get(name)
                if target is None:
                    continue
                target.add_(t.to(target.dtype)) if add else target.copy_(t.to(target.dtype))

    def set_history(self, diffs: list[float]) -> None:
        self.history.load_state_dict({"depth": self.conf.depth, "diffs": diffs})

    # ---- local training ---------------------------------------------------------------
    def train(self, steps: int | None = None,
              seconds: float | None = None) -> tuple[Tensors, int, float]:
        """Local SGD from the current model: `steps` steps, or as many as fit in `seconds`
        (at least one). Returns (delta, samples, mean confidence); the model is reset."""
        start = {n: p.detach().clone() for n, p in self.params.items()}
        opt = torch.optim.SGD(self.model.parameters(), lr=self.conf.lr,
                              momentum=self.conf.momentum)
        begin, done, samples, confs = time.monotonic(), 0, 0, []
        self.model.train()
        while True:
            t0 = time.monotonic()
            idx = self.stream.next_batch(min(self.conf.batch_size, len(self.stream.shard)))
            x, y = self.task.train_x[idx], self.task.train_y[idx]
            opt.zero_grad(set_to_none=True)
            out = self.model(x)
            loss = F.cross_entropy(out, y)
            loss.backward()
            opt.step()
            self.losses.append(float(loss.detach()))
            confs.append(float(out.detach().softmax(1).amax(1).mean()))
            samples, done = samples + len(y), done + 1
            if self.speed_factor > 1:  # emulate a slower device
                time.sleep((self.speed_factor - 1) * (time.monotonic() - t0))
            if steps is not None and done >= steps:
                break
            if steps is None and time.monotonic() - begin >= (seconds or 0):
                break
        delta = {n: p.detach() - start[n] for n, p in self.params.items()}
        self.load(start)
        return delta, samples, sum(confs) / len(confs)

    # ---- the upload decision ----------------------------------------------------------
    def propose(self, delta: Tensors, round_: int, seq: int, base_version: int,
                samples: int, confidence: float) -> Proposal:
        d = self.sender.propose(delta, round_, confidence, tentative=True)
        if not d.send:
            return Proposal(None, d.reason)
        recent = self.losses[-10:]
        update = self.sender.message(
            d, TensorSet(self.buffers, "buffer"), round=round_, seq=seq,
            confidence=confidence, num_samples=samples, kind="delta", base_version=base_version,
            metrics={"train_loss": sum(recent) / max(len(recent), 1)})
        body = serialize_update(update)
        return Proposal(update, d.reason, d.innovation, 8 * len(body), d, body)

    def commit(self, proposal: Proposal) -> None:
        """The coordinator accepted the upload: policy, last-sent and pending move on."""
        if proposal.decision is not None:
            self.sender.commit(proposal.decision)

    def rollback(self, proposal: Proposal) -> None:
        """Undo an upload that did not happen: encoder, policy and last-sent go back."""
        if proposal.decision is not None:
            self.sender.rollback(proposal.decision)
            proposal.decision = None
