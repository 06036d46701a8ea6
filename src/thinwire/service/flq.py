"""A worker's FLQ step without any network: local SGD on its shard, then the upload decision.

`Learner.propose` is the simulator's decision (`SimNode.decide`, run/nodes.py) made
tentatively: the snapshot it keeps rolls the encoder/policy state back when the upload does
not happen (not selected, rejected by the coordinator). The shard, batch order and state
containers are the simulator's `SimNode`; the model-change history comes from the
coordinator with each model.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ..codecs import Encoder, make_codec
from ..policy import Always, LAQRule, ModelDiffHistory
from ..sim.nodes import SimNode
from ..tasks import Task, build_model
from ..wire import Update, serialize_update

Tensors = dict[str, torch.Tensor]


@dataclass
class Proposal:
    """The outcome of one local round: an update to send (or None: lazy skip)."""

    update: Update | None
    reason: str
    score: float = 0.0      # ||q||^2 of what the coordinator would gain (budget selection)
    bits: int = 0           # exact serialized size of the update, in bits
    snapshot: Any = field(default=None, repr=False)
    body: bytes = b""


def make_policy(conf: dict[str, Any], history: ModelDiffHistory):
    """The LAQ rule on model deltas, or always.

    LAQ steps theta -= alpha * sum_m Q_m, so its threshold divides the model changes by
    alpha^2 M^2 to compare them with one worker's innovation. Here the step is the *mean* of
    already lr-scaled deltas (theta += mean_m q_m), so the same comparison needs alpha = 1 and
    M = 1; thr_scale stays the design's knob."""
    if not conf["lazy"]:
        return Always()
    return LAQRule(history, alpha=1.0, workers=1, depth=conf["depth"],
                   xi=conf.get("xi"), t_bar=conf["clock"], thr_scale=conf["thr_scale"],
                   warmup=conf["warmup"])


class Learner:
    def __init__(self, task: Task, shard: torch.Tensor, index: int, conf: dict[str, Any],
                 worker_id: str, speed_factor: float = 1.0) -> None:
        self.task, self.conf, self.worker_id = task, conf, worker_id
        self.speed_factor = max(speed_factor, 1.0)
        torch.manual_seed(conf["seed"])
        self.model = build_model(conf.get("model") or task.model, task.num_classes,
                                 task.in_shape)
        self.params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        self.buffers = {n: b for n, b in self.model.named_buffers() if b.is_floating_point()}
        self.history = ModelDiffHistory(conf["depth"])
        encoder = Encoder(make_codec(conf["codec"], conf["error_feedback"]))
        self.node = SimNode(index, shard, encoder, make_policy(conf, self.history),
                            conf["seed"])
        self.buffer_codec = make_codec("none")
        self.losses: list[float] = []

    # ---- model ------------------------------------------------------------------------
    def load(self, tensors: Tensors, add: bool = False) -> None:
        """Set (or, for a downlink delta, add to) the model's parameters and float buffers."""
        with torch.no_grad():
            for name, t in tensors.items():
                target = (self.buffers.get(name[7:]) if name.startswith("buffer:")
                          else self.params.get(name))
                if target is None:
                    continue
                target.add_(t.to(target.dtype)) if add else target.copy_(t.to(target.dtype))

    def set_history(self, diffs: list[float]) -> None:
        self.history.load_state_dict({"depth": self.conf["depth"], "diffs": diffs})

    # ---- local training ---------------------------------------------------------------
    def train(self, steps: int | None = None,
              seconds: float | None = None) -> tuple[Tensors, int, float]:
        """Local SGD from the current model: `steps` steps, or as many as fit in `seconds`
        (at least one). Returns (delta, samples, mean confidence); the model is reset."""
        start = {n: p.detach().clone() for n, p in self.params.items()}
        opt = torch.optim.SGD(self.model.parameters(), lr=self.conf["lr"],
                              momentum=self.conf.get("momentum", 0.0))
        begin, done, samples, confs = time.monotonic(), 0, 0, []
        self.model.train()
        while True:
            t0 = time.monotonic()
            idx = self.node.next_batch(min(self.conf["batch_size"], len(self.node.shard)))
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
        d = self.node.decide(delta, round_, confidence, tentative=True)
        if not d.send:
            return Proposal(None, d.reason)
        score = d.ctx.innovation_sq
        if not math.isfinite(score):  # first upload: the whole quantized update is new
            score = sum(float((r.float() ** 2).sum()) for r in d.recon.values())
        tensors = d.payloads + [self.buffer_codec.encode(b.float(), None, "buffer:" + n)
                                for n, b in self.buffers.items()]
        recent = self.losses[-10:]
        update = Update(node_id=self.worker_id, tensors=tensors, round=round_, seq=seq,
                        confidence=confidence, num_samples=samples, kind="delta",
                        base_version=base_version,
                        metrics={"train_loss": sum(recent) / max(len(recent), 1)})
        body = serialize_update(update)
        return Proposal(update, d.reason, score, 8 * len(body), d.snapshot, body)

    def rollback(self, proposal: Proposal) -> None:
        """Undo an upload that did not happen: encoder, policy and last-sent go back."""
        if proposal.snapshot is None:
            return
        self.node.rollback(proposal.snapshot)
        proposal.snapshot = None
