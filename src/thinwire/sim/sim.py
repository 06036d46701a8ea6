"""In-process simulation: N nodes train one model, exchanging real serialized `Update`s.

Every upload is encoded, serialized to protobuf, parsed and decoded on the aggregator side, so
the ledger's wire bytes are the lengths of real messages. Communication time comes from the
link model; compute time is measured.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from ..aggregate import Aggregator, Contribution
from ..codecs import Decoder, Encoder, make_codec
from ..obs.ledger import Ledger
from ..policy import ModelDiffHistory, make_policy
from ..tasks import Task, build_model, class_histograms, format_histograms, split_indices
from ..wire import Update, parse_update, serialize_update
from .config import RunConfig
from .link import LinkModel
from .batched import VmapGrads
from .nodes import SimNode, Tensors
from .schedule import lr_at

PACKED = "packed"

Log = Callable[[str], None]


class Simulation:
    def __init__(self, cfg: RunConfig, task: Task, log: Log | None = None,
                 progress: bool = False) -> None:
        self.cfg, self.task, self.progress = cfg, task, progress
        self.run_dir = Path(cfg.out) / cfg.name()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.run_dir / "train.log", "a")
        self.log = log or (lambda s: None)
        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg.model or task.model, task.num_classes, task.in_shape)
        self.params = dict((n, p) for n, p in self.model.named_parameters() if p.requires_grad)
        self.buffers = {n: b for n, b in self.model.named_buffers() if b.is_floating_point()}
        self.opt = torch.optim.SGD(self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                   weight_decay=cfg.weight_decay)
        n_nodes = 1 if cfg.centralized else cfg.nodes
        # centralized: one node with the global batch, so steps and samples per step match
        self.batch = cfg.batch_size * (cfg.nodes if cfg.centralized else 1)
        parts = split_indices(task.train_y, n_nodes, "iid" if cfg.centralized else cfg.split,
                              cfg.seed)
        self.histograms = class_histograms(task.train_y, parts, task.num_classes)
        self.history = ModelDiffHistory(cfg.laq.depth)
        self.nodes = [SimNode(i, part, Encoder(make_codec(cfg.codec, cfg.error_feedback)),
                              self._policy(), cfg.seed, accumulate=cfg.skipped == "accumulate")
                      for i, part in enumerate(parts)]
        self.decoders = {n.node_id: Decoder() for n in self.nodes}
        self.buffer_encoders = {n.node_id: Encoder(make_codec("none")) for n in self.nodes}
        self.aggregator = Aggregator(cfg.aggregate, cfg.weight, cfg.skipped,
                                     expected_nodes=len(self.nodes))
        self.down_encoder, self.down_decoder = Encoder(make_codec(cfg.down_codec)), Decoder()
        self.link = LinkModel.build(n_nodes, cfg.bandwidth, cfg.downlink, cfg.latency_ms,
                                    cfg.topology)
        self.ledger = Ledger()
        self.raw_bytes = 4 * sum(p.numel() for p in self.params.values())
        self._vmapped = VmapGrads(self.model) if cfg.node_batching == "vmap" else None
        self.step = self.epoch = 0
        self.comm_time = self.compute_time = 0.0
        self.samples = 0
        self.records: list[dict] = []
        self.train_losses: list[float] = []

    def _policy(self):
        """LAQ's step is theta -= alpha * sum_m g_m. Ours is the mean over M nodes of
        lr * grad (sync, alpha = lr/M) or of deltas that already include lr (fedavg,
        alpha = 1/M), so its threshold scale 1/(alpha^2 M^2) is 1/lr^2 or 1."""
        c = self.cfg
        alpha = (c.lr if c.mode == "sync" else 1.0) / c.nodes
        return make_policy(c.policy, c.communication.model_dump(), c.laq.model_dump(),
                           self.history, alpha=alpha, workers=c.nodes)

    def write(self, line: str) -> None:
        self._log_file.write(line + "\n")
        self._log_file.flush()
        self.log(line)

    # ---- one exchange ------------------------------------------------------------------
    def steps_per_epoch(self) -> int:
        per = self.batch * len(self.nodes)
        if self.cfg.mode == "fedavg" and not self.cfg.centralized:
            per *= self.cfg.local_steps
        return max(1, math.ceil(len(self.task.train_y) / per))

    def _batch(self, node: SimNode, local: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        idx = node.next_batch(min(self.batch, len(node.shard)))
        x, y = self.task.train_x[idx], self.task.train_y[idx]
        if self.task.augment is not None:
            gen = torch.Generator().manual_seed(hash((self.cfg.seed, self.step, node.index,
                                                      local)) & 0x7FFFFFFF)
            x = self.task.augment(x, gen)
        return x, y

    def _forward_backward(self, node: SimNode, local: int = 0) -> float:
        x, y = self._batch(node, local)
        self.model.zero_grad(set_to_none=True)
        out = self.model(x)
        loss = F.cross_entropy(out, y)
        loss.backward()
        self.train_losses.append(float(loss.detach()))
        self.samples += len(y)
        return float(out.detach().softmax(1).amax(1).mean())

    def _exchange(self, node: SimNode, tensors: Tensors, confidence: float, samples: int,
                  kind: str) -> int:
        """Policy, encode, serialize, parse, decode, submit. Returns uploaded bytes."""
        update, _ = node.prepare(self._pack(tensors), self.step, confidence, samples, kind)
        if update is None:
            self.ledger.skip(node.node_id, self.raw_bytes)
            return 0
        if kind == "delta" and self.buffers:
            enc = self.buffer_encoders[node.node_id]
            update.tensors += [enc.encode(b, "buffer:" + n) for n, b in self.buffers.items()]
        data = serialize_update(update)
        self.ledger.upload(node.node_id, self.raw_bytes, len(data))
        received = parse_update(data)
        decoder = self.decoders[node.node_id]
        decoded = {t.name: decoder.decode(t) for t in received.tensors}
        self.aggregator.submit(node.node_id, Contribution(decoded, received.num_samples,
                                                          received.confidence))
        return len(data)

    def _broadcast(self, tensors: Tensors) -> tuple[Tensors, int]:
        """Encode the aggregate once for every node (down_codec); return what nodes decode."""
        payloads = [self.down_encoder.encode(t, n) for n, t in tensors.items()]
        data = serialize_update(Update(node_id="aggregator", tensors=payloads, round=self.step,
                                       kind="grad" if self.cfg.mode == "sync" else "delta"))
        for node in self.nodes:
            self.ledger.download(node.node_id, self.raw_bytes, len(data))
        received = parse_update(data)
        return {t.name: self.down_decoder.decode(t) for t in received.tensors}, len(data)

    def _pack(self, tensors: Tensors) -> Tensors:
        """`pack`: one flat tensor, so one payload carries the whole model (top-k is global)."""
        if not self.cfg.pack:
            return tensors
        return {PACKED: torch.cat([tensors[n].reshape(-1) for n in self.params])}

    def _unpack(self, tensors: Tensors) -> Tensors:
        if not self.cfg.pack:
            return tensors
        flat, out, at = tensors[PACKED], {}, 0
        for n, p in self.params.items():
            out[n] = flat[at: at + p.numel()].view_as(p)
            at += p.numel()
        return out

    def lr(self) -> float:
        return lr_at(self.cfg, self.step, self.steps_per_epoch())

    def _node_grads(self) -> list[tuple[Tensors, float]]:
        """Each node's gradient on its next batch, one node at a time or batched with vmap."""
        if self._vmapped is not None:
            return self._vmapped.grads([self._batch(node) for node in self.nodes], self)
        out = []
        for node in self.nodes:
            conf = self._forward_backward(node)
            out.append(({n: p.grad for n, p in self.params.items()}, conf))
        return out

    def sync_step(self) -> None:
        self._set_lr()  # before the exchange: LAQ's threshold uses this step's lr
        if self.cfg.centralized:
            self._forward_backward(self.nodes[0])
            self.opt.step()
            return
        ups = [self._exchange(node, grads, conf, self.batch, "grad")
               for node, (grads, conf) in zip(self.nodes, self._node_grads())]
        avg = self.aggregator.result()
        down = 0
        if avg is not None:
            grads, down = self._broadcast(avg)
            grads = self._unpack(grads)
            before = self._snapshot()
            for n, p in self.params.items():
                p.grad = grads[n].to(p.dtype)
            self.opt.step()
            self.history.push(self._change_sq(before))
        self._account(ups, down)

    def fedavg_round(self) -> None:
        start = self._snapshot()
        start_buffers = {n: b.detach().clone() for n, b in self.buffers.items()}
        ups = []
        for node in self.nodes:
            self._load(start, start_buffers)
            local = torch.optim.SGD(self.model.parameters(), lr=self.lr(),
                                    momentum=self.cfg.momentum,
                                    weight_decay=self.cfg.weight_decay)
            confs = []
            for k in range(self.cfg.local_steps):
                confs.append(self._forward_backward(node, k))
                local.step()
            delta = {n: p.detach() - start[n] for n, p in self.params.items()}
            samples = self.cfg.local_steps * self.batch
            ups.append(self._exchange(node, delta, sum(confs) / len(confs), samples, "delta"))
        self._load(start, start_buffers)
        avg = self.aggregator.result()
        down = 0
        if avg is not None:
            buffer_avg = {k[7:]: v for k, v in avg.items() if k.startswith("buffer:")}
            delta, down = self._broadcast({k: v for k, v in avg.items()
                                           if not k.startswith("buffer:")})
            delta = self._unpack(delta)
            with torch.no_grad():
                for n, p in self.params.items():
                    p.add_(delta[n].to(p.dtype))
                for n, b in self.buffers.items():
                    if n in buffer_avg:
                        b.copy_(buffer_avg[n])
            self.history.push(self._change_sq(start))
        self._account(ups, down)

    def _set_lr(self) -> None:
        lr = self.lr()
        for group in self.opt.param_groups:
            group["lr"] = lr
        for node in self.nodes:  # LAQ's threshold scales with the step size (alpha = lr/M)
            if hasattr(node.policy, "alpha"):
                node.policy.alpha = lr / self.cfg.nodes

    def _account(self, ups: list[int], down: int) -> None:
        if self.cfg.topology == "ring":
            self.comm_time += self.link.ring_allreduce_time(max(ups, default=0))
        else:
            self.comm_time += self.link.step_time(ups, [down] * len(self.nodes))

    def _snapshot(self) -> Tensors:
        return {n: p.detach().clone() for n, p in self.params.items()}

    def _load(self, params: Tensors, buffers: Tensors) -> None:
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(params[n])
            for n, b in self.buffers.items():
                b.copy_(buffers[n])

    def _change_sq(self, before: Tensors) -> float:
        return float(sum(((p.detach() - before[n]) ** 2).sum() for n, p in self.params.items()))

    # ---- evaluation --------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        self.model.eval()
        correct, loss_sum, n = 0, 0.0, len(self.task.test_y)
        for i in range(0, n, 1000):
            x, y = self.task.test_x[i:i + 1000], self.task.test_y[i:i + 1000]
            out = self.model(x)
            loss_sum += float(F.cross_entropy(out, y, reduction="sum"))
            correct += int((out.argmax(1) == y).sum())
        self.model.train()
        return correct / max(n, 1), loss_sum / max(n, 1)

    # ---- checkpoints -------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoint.pt"

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict(),
                "nodes": [n.state_dict() for n in self.nodes],
                "decoders": {k: d.state_dict() for k, d in self.decoders.items()},
                "down": [self.down_encoder.state_dict(), self.down_decoder.state_dict()],
                "aggregator": self.aggregator.state_dict(), "history": self.history.state_dict(),
                "ledger": self.ledger.state_dict(), "records": self.records,
                "counters": [self.step, self.epoch, self.comm_time, self.compute_time,
                             self.samples], "train_losses": self.train_losses,
                "rng": torch.get_rng_state()}

    def load_state_dict(self, s: dict) -> None:
        self.model.load_state_dict(s["model"])
        self.opt.load_state_dict(s["opt"])
        for node, state in zip(self.nodes, s["nodes"]):
            node.load_state_dict(state)
        for k, d in self.decoders.items():
            d.load_state_dict(s["decoders"][k])
        self.down_encoder.load_state_dict(s["down"][0])
        self.down_decoder.load_state_dict(s["down"][1])
        self.aggregator.load_state_dict(s["aggregator"])
        self.history.load_state_dict(s["history"])
        self.ledger.load_state_dict(s["ledger"])
        self.records = list(s["records"])
        self.step, self.epoch, self.comm_time, self.compute_time, self.samples = s["counters"]
        self.train_losses = list(s["train_losses"])
        torch.set_rng_state(s["rng"])

    def save_checkpoint(self) -> None:
        tmp = self.checkpoint_path.with_suffix(".tmp")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, self.checkpoint_path)

    def try_resume(self) -> bool:
        if not self.checkpoint_path.exists():
            return False
        self.load_state_dict(torch.load(self.checkpoint_path, weights_only=True))
        self.write(f"resumed from {self.checkpoint_path} at epoch {self.epoch}")
        return True
