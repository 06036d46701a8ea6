"""In-process simulation: N nodes train one model, exchanging real serialized `Update`s.

Each node is a `Sender` (exchange/); its serialized `Update` crosses a `MemoryTransport` to the
aggregator's `Receiver`, and a `Strategy` (strategy/) combines what arrived, so the ledger's
wire bytes are the lengths of real messages. Communication time comes from the link model;
compute time is measured.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

from ..codecs import Encoder, make_codec
from ..config.training import lr_at, make_sender, set_step_lr, steps_per_epoch
from ..exchange import MemoryTransport, Receiver, Sender, TensorSet
from ..exchange.link import LinkModel
from ..exchange.packing import Packing
from ..obs.ledger import HUB
from ..policy import ModelDiffHistory
from ..strategy import (Contribution, OuterOptimizer, Strategy, apply_delta, change_sq, restore,
                        snapshot)
from ..tasks import Task, build_model, class_histograms, split_indices
from ..tasks.evaluate import evaluate
from ..tasks.step import forward_backward, next_batch
from ..tasks.stream import ShardStream
from ..wire import Update, serialize_update
from .batched import VmapGrads
from .config import RunConfig
from .defaults import settle_warmup

Tensors = dict[str, torch.Tensor]

Log = Callable[[str], None]


class Simulation:
    def __init__(self, cfg: RunConfig, task: Task, log: Log | None = None,
                 progress: bool = False) -> None:
        self.cfg, self.task, self.progress = cfg, task, progress
        self.run_dir = Path(cfg.out) / cfg.name()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.run_dir / "training.log", "a")
        self.log = log or (lambda s: None)
        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg.model or task.model, task.num_classes, task.in_shape)
        self.params = dict((n, p) for n, p in self.model.named_parameters() if p.requires_grad)
        self.buffers = {n: b for n, b in self.model.named_buffers() if b.is_floating_point()}
        # momentum correction: the nodes keep the momentum, the aggregator steps plain SGD
        node_momentum = cfg.momentum if cfg.momentum_correction else 0.0
        self.opt = torch.optim.SGD(self.model.parameters(), lr=cfg.lr,
                                   momentum=cfg.momentum - node_momentum,
                                   weight_decay=cfg.weight_decay)
        n_nodes = 1 if cfg.centralized else cfg.nodes
        # centralized: one node with the global batch, so steps and samples per step match
        self.batch = cfg.batch_size * (cfg.nodes if cfg.centralized else 1)
        parts = split_indices(task.train_y, n_nodes, "iid" if cfg.centralized else cfg.split,
                              cfg.seed)
        self.histograms = class_histograms(task.train_y, parts, task.num_classes)
        self.history = ModelDiffHistory(cfg.laq.depth)
        self.nodes = [ShardStream(i, part, cfg.seed) for i, part in enumerate(parts)]
        self.senders = [make_sender(cfg, f"node-{i}", self.history, node_momentum)
                        for i in range(len(parts))]
        self.packing = Packing(self.params, cfg.pack)
        self.transport = MemoryTransport()
        self.receiver, self.down_receiver = Receiver(), Receiver()
        self.strategy = Strategy(cfg.aggregate, cfg.weight, cfg.skipped,
                                 expected_nodes=len(self.nodes))
        self.down_encoder = Encoder(make_codec(cfg.down_codec, cfg.down_error_feedback))
        self.outer = OuterOptimizer(self.params, cfg.outer_lr, cfg.outer_momentum,
                                    nesterov=True)
        self.link = LinkModel.build(n_nodes, cfg.bandwidth, cfg.downlink, cfg.latency_ms,
                                    cfg.topology)
        self.raw_bytes = 4 * sum(p.numel() for p in self.params.values())
        self._vmapped = VmapGrads(self.model) if cfg.node_batching == "vmap" else None
        self.step = self.epoch = 0
        self.comm_time = self.compute_time = 0.0
        self.samples = 0
        self.records: list[dict] = []
        self.train_losses: list[float] = []
        settle_warmup(cfg, self.steps_per_epoch())

    def write(self, line: str) -> None:
        self._log_file.write(line + "\n")
        self._log_file.flush()
        self.log(line)

    # ---- one exchange ------------------------------------------------------------------
    def steps_per_epoch(self) -> int:
        local = self.cfg.local_steps if self.cfg.mode == "fedavg" and not self.cfg.centralized \
            else 1
        return steps_per_epoch(len(self.task.train_y), self.batch, len(self.nodes), local)

    @property
    def ledger(self):
        return self.transport.ledger

    def _batch(self, node: ShardStream, local: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        return next_batch(self.task, node, self.batch, self.cfg.seed, self.step, local)

    def _forward_backward(self, node: ShardStream, local: int = 0) -> float:
        x, y = self._batch(node, local)
        loss, confidence = forward_backward(self.model, x, y)
        self.train_losses.append(loss)
        self.samples += len(y)
        return confidence

    def _exchange(self, sender: Sender, tensors: Tensors, confidence: float, samples: int,
                  kind: str) -> int:
        """Policy and encoding (Sender), then the serialized Update crosses the transport.
        Returns uploaded bytes."""
        proposal = sender.propose(self.packing.pack(tensors), self.step, confidence)
        if not proposal.send:
            self.ledger.skip(sender.node_id, self.raw_bytes)
            return 0
        extra = TensorSet(self.buffers, "buffer") if kind == "delta" and self.buffers else None
        update = sender.message(proposal, extra, round=self.step, seq=self.step,
                                confidence=confidence, num_samples=samples, kind=kind)
        data = serialize_update(update)
        self.transport.send(sender.node_id, HUB, data, raw=self.raw_bytes)
        return len(data)

    def _collect(self) -> None:
        """The aggregator's side: decode every arrived Update and hand it to the strategy."""
        for src, data in self.transport.drain(HUB):
            arrival = self.receiver.receive(data, src)
            update = arrival.update
            self.strategy.submit(src, Contribution(arrival.tensors, update.num_samples,
                                                   update.confidence))

    def _broadcast(self, tensors: Tensors) -> tuple[Tensors, int]:
        """Encode the aggregate once for every node (down_codec); return what nodes decode."""
        payloads = [self.down_encoder.encode(t, n) for n, t in tensors.items()]
        data = serialize_update(Update(node_id=HUB, tensors=payloads, round=self.step,
                                       kind="grad" if self.cfg.mode == "sync" else "delta"))
        self.transport.broadcast(HUB, [s.node_id for s in self.senders], data, self.raw_bytes)
        received = [self.transport.drain(s.node_id) for s in self.senders]
        arrival = self.down_receiver.receive(received[0][0][1], HUB)  # identical bytes
        return dict(arrival.tensors.params), len(data)

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
        ups = [self._exchange(sender, grads, conf, self.batch, "grad")
               for sender, (grads, conf) in zip(self.senders, self._node_grads())]
        self._collect()
        combined = self.strategy.result()
        down = 0
        if combined is not None:
            grads, down = self._broadcast(combined.tensors.params)
            grads = self.packing.unpack(grads)
            before = snapshot(self.params)
            for n, p in self.params.items():
                p.grad = grads[n].to(p.dtype)
            self.opt.step()
            self.history.push(change_sq(self.params, before))
        self._account(ups, down)

    def fedavg_round(self) -> None:
        start = snapshot(self.params)
        start_buffers = snapshot(self.buffers)
        ups = []
        for node, sender in zip(self.nodes, self.senders):
            restore(self.params, self.buffers, start, start_buffers)
            local = torch.optim.SGD(self.model.parameters(), lr=self.lr(),
                                    momentum=self.cfg.momentum,
                                    weight_decay=self.cfg.weight_decay)
            confs = []
            for k in range(self.cfg.local_steps):
                confs.append(self._forward_backward(node, k))
                local.step()
            delta = {n: p.detach() - start[n] for n, p in self.params.items()}
            samples = self.cfg.local_steps * self.batch
            ups.append(self._exchange(sender, delta, sum(confs) / len(confs), samples, "delta"))
        restore(self.params, self.buffers, start, start_buffers)
        self._collect()
        combined = self.strategy.result()
        down = 0
        if combined is not None:
            delta, down = self._broadcast(combined.tensors.params)
            self.outer.step(TensorSet(self.packing.unpack(delta)))  # plain FedAvg at lr 1
            apply_delta({}, self.buffers, TensorSet(combined.tensors.buffers, "buffer"))
            self.history.push(change_sq(self.params, start))
        self._account(ups, down)

    def _set_lr(self) -> None:
        set_step_lr(self.cfg, self.lr(), self.opt, [s.policy for s in self.senders])

    def _account(self, ups: list[int], down: int) -> None:
        if self.cfg.topology == "ring":
            self.comm_time += self.link.ring_allreduce_time(max(ups, default=0))
        else:
            self.comm_time += self.link.step_time(ups, [down] * len(self.nodes))

    # ---- evaluation --------------------------------------------------------------------
    def evaluate(self) -> tuple[float, float]:
        return evaluate(self.model, self.task)

    # ---- checkpoints -------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoint.pt"

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict(),
                "nodes": [n.state_dict() for n in self.nodes],
                "senders": [s.state_dict() for s in self.senders],
                "receiver": self.receiver.state_dict(),
                "down": [self.down_encoder.state_dict(), self.down_receiver.state_dict()],
                "strategy": self.strategy.state_dict(), "outer": self.outer.state_dict(),
                "history": self.history.state_dict(),
                "ledger": self.ledger.state_dict(), "records": self.records,
                "counters": [self.step, self.epoch, self.comm_time, self.compute_time,
                             self.samples], "train_losses": self.train_losses,
                "rng": torch.get_rng_state()}

    def load_state_dict(self, s: dict) -> None:
        self.model.load_state_dict(s["model"])
        self.opt.load_state_dict(s["opt"])
        for node, state in zip(self.nodes, s["nodes"]):
            node.load_state_dict(state)
        for sender, state in zip(self.senders, s["senders"]):
            sender.load_state_dict(state)
        self.receiver.load_state_dict(s["receiver"])
        self.down_encoder.load_state_dict(s["down"][0])
        self.down_receiver.load_state_dict(s["down"][1])
        self.strategy.load_state_dict(s["strategy"])
        self.outer.load_state_dict(s["outer"])
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
