"""One swarm peer: a node that trains on its shard and exchanges updates with the others.

Each step (sync) or round (fedavg) the peer computes its contribution (tasks/step.py), lets its
`Sender` decide and encode (codec and policy from the config), sends the serialized `Update`
(or a skip notice) to the live peers the schedule names, collects theirs (network.py), decodes
each with its `Receiver` (its own bytes too, so every peer combines exactly the same tensors),
combines them with the `Strategy` and applies the result. All-to-all, every peer therefore
ends each step with the same model; the hash of the model rides on every update every
`hash_every` steps. Gossip (D-PSGD style): a peer combines its own contribution with the K it
heard, so models differ across peers and nothing is hash-checked.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..config.training import lr_at, make_sender, set_step_lr, steps_per_epoch
from ..errors import WireError
from ..exchange import Receiver, Rejected, TensorSet, layout_of
from ..exchange.link import LinkModel
from ..exchange.packing import Packing
from ..exchange.zmq import Delivery
from ..obs.events import EventLog
from ..obs.monitor import Monitor
from ..obs.record import epoch_line, epoch_record
from ..obs.resources import ResourceMonitor
from ..policy import ModelDiffHistory
from ..strategy import (Combined, Contribution, OuterOptimizer, Strategy, apply_delta, change_sq,
                        restore, snapshot)
from ..tasks import Task, build_model, load_task, split_indices
from ..tasks.evaluate import evaluate
from ..tasks.step import forward_backward, next_batch
from ..tasks.stream import ShardStream
from ..wire import serialize_update
from .config import SwarmConfig
from .network import Network
from .protocol import Msg, model_hash, parse_skip, skip_bytes
from .schedule import step_bytes
from .state import PeerState

Tensors = dict[str, torch.Tensor]


class RunLog:
    """The run's training.log, shared by its peers (one O_APPEND write per line), and stderr."""

    def __init__(self, path: Path, name: str, echo: bool = True) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.name, self.echo = name, echo

    def __call__(self, line: str) -> None:
        text = f"[{self.name} {time.strftime('%H:%M:%S')}] {line}"
        os.write(self.fd, (text + "\n").encode())
        if self.echo:
            print(text, file=sys.stderr, flush=True)


class Peer:
    def __init__(self, cfg: SwarmConfig, index: int, addresses: list[str],
                 task: Task | None = None, echo: bool = True) -> None:
        if len(addresses) != cfg.nodes or not 0 <= index < cfg.nodes:
            raise ValueError(f"peer {index} of {len(addresses)} addresses, nodes={cfg.nodes}")
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.cfg, self.index, self.digest = cfg, index, cfg.digest()
        self.names = [f"node-{i}" for i in range(cfg.nodes)]
        self.name = self.names[index]
        self.run_dir = Path(cfg.out) / cfg.name()
        self.dir = self.run_dir / self.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log: Callable[[str], None] = RunLog(self.run_dir / "training.log", self.name, echo)
        self.task = task or load_task(cfg.task, cfg.data_dir, cfg.download, **cfg.task_args)
        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg.model or self.task.model, self.task.num_classes,
                                 self.task.in_shape)
        self.params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        self.buffers = {n: b for n, b in self.model.named_buffers() if b.is_floating_point()}
        self.opt = torch.optim.SGD(self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                   weight_decay=cfg.weight_decay)
        parts = split_indices(self.task.train_y, cfg.nodes, cfg.split, cfg.seed)
        self.stream = ShardStream(index, parts[index], cfg.seed)
        self.history = ModelDiffHistory(cfg.laq.depth)
        self.sender = make_sender(cfg, self.name, self.history)
        self.packing = Packing(self.params, cfg.pack)
        layout = {**self.packing.layout(), **layout_of(TensorSet(self.buffers, "buffer"))}
        self.receiver = Receiver(layout, cfg.codec)
        self.strategy = Strategy(cfg.aggregate, cfg.weight, cfg.skipped,
                                 expected_nodes=cfg.nodes)
        self.outer = OuterOptimizer(self.params, cfg.outer_lr, cfg.outer_momentum,
                                    nesterov=True)
        self.link = LinkModel.build(cfg.nodes, cfg.bandwidth, cfg.downlink, cfg.latency_ms)
        self.raw_bytes = 4 * sum(p.numel() for p in self.params.values())
        self.local = cfg.local_steps if cfg.mode == "fedavg" else 1
        self.spe = steps_per_epoch(len(self.task.train_y), cfg.batch_size, cfg.nodes, self.local)
        self.net = Network(self, addresses)
        self.state = PeerState(self)
        self.step = self.epoch = 0
        self.records: list[dict[str, Any]] = []
        self.epoch_losses: list[float] = []
        self.counts: dict[str, Any] = dict.fromkeys(
            ("samples", "uploads", "skipped", "update_bytes", "received_bytes",
             "rejected_updates", "hash_checks", "hash_mismatches", "resyncs"), 0)
        self.counts.update(compute_time_s=0.0, wait_time_s=0.0, comm_time_s_sim=0.0,
                           epoch_uploads=0, epoch_skipped=0)
        self.hash_force, self._tag, self.joined_at = 0, 0, None
        self.events = EventLog(self.run_dir, cfg.name(), every=max(1, self.spe // 50),
                               shared=True)  # one stream per run, every event names its node
        self.monitor = ResourceMonitor()

    @property
    def ledger(self):
        return self.net.transport.ledger

    def model_hash(self) -> int:
        return model_hash(self.model)

    def lr(self) -> float:
        return lr_at(self.cfg, self.step, self.spe)

    # ---- state shared with other peers --------------------------------------------------
    def shared_state(self) -> dict[str, Any]:
        return self.state.shared()

    def load_shared(self, tree: dict[str, Any], rejoin: bool) -> None:
        self.state.load_shared(tree, rejoin)

    def forget(self, name: str, live: int) -> None:
        """A peer left or came back with a new session: its decoder and reused contribution
        go, the mean counts the peers now alive, and the next steps check model hashes."""
        self.receiver.forget(name)
        self.strategy.forget(name)
        self.strategy.expected_nodes = live
        self.hash_force = 3

    # ---- the run ------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train to the end with the others; returns this peer's stats (also in its folder)."""
        monitor = Monitor(self.events, ledger=lambda: self.ledger, every=self.cfg.monitor_every,
                          node=self.name, extra=lambda: {"peers": self.net.view()})
        try:
            with monitor:
                return self._run(time.perf_counter())
        except BaseException:
            self.net.transport.close(linger=1.0)  # what we said so far still reaches them
            raise
        finally:
            self.events.close()

    def _run(self, started: float) -> dict[str, Any]:
        if self.cfg.resume and self.state.try_resume():
            self.log(f"resumed from {self.state.path} at epoch {self.epoch}, step {self.step}")
        self.net.handshake()
        self.log(f"{self.name}: {len(self.stream.shard)} samples, {self.spe} steps/epoch, "
                 f"codec {self.cfg.codec}, policy {self.cfg.policy}, {len(self.net.live)} "
                 f"peer(s) over {self.cfg.transport}")
        while self.epoch < self.cfg.epochs and not (self._capped() and self.records):
            end = (self.epoch + 1) * self.spe
            while self.step < end and not self._capped():
                self._one_step()
            self._finish_epoch()
        final = self.model_hash()
        self.net.goodbye(final)
        stats = self.write_stats(final, time.perf_counter() - started)
        self.events.emit("peer", node=self.name, peer=self.name, state="done",
                         record={k: v for k, v in stats.items() if k != "ledger"})
        self.net.transport.close()
        return stats

    def _capped(self) -> bool:
        return bool(self.cfg.max_steps and self.step >= self.cfg.max_steps)

    def _one_step(self) -> None:
        self.net.begin_step(self.step)
        t0 = time.perf_counter()
        force, self.hash_force = self.hash_force > 0, max(self.hash_force - 1, 0)
        every = self.cfg.hash_every
        check = force or bool(every and self.step % every == 0)
        self._tag = self.model_hash() if check and not self.net.schedule.gossip else 0
        wait0 = self.counts["wait_time_s"]
        diverged = self._sync_step() if self.cfg.mode == "sync" else self._fedavg_round()
        self.counts["compute_time_s"] += (time.perf_counter() - t0
                                          - (self.counts["wait_time_s"] - wait0))
        self.step += 1
        self._step_event()
        if diverged and self.net.resync(self.step):
            self.counts["resyncs"] += 1
            self.log(f"took node state of step {self.step} from the reference peer")

    def _seen(self, loss: float, samples: int) -> None:
        self.epoch_losses.append(loss)
        self.counts["samples"] += samples

    def _sync_step(self) -> bool:
        set_step_lr(self.cfg, self.lr(), self.opt, [self.sender.policy])
        x, y = next_batch(self.task, self.stream, self.cfg.batch_size, self.cfg.seed, self.step)
        loss, conf = forward_backward(self.model, x, y)
        self._seen(loss, len(y))
        grads = {n: p.grad for n, p in self.params.items()}
        combined, diverged = self._exchange(self._offer(grads, conf, len(y), "grad"))
        if combined is not None:
            grads = self.packing.unpack(combined.tensors.params)
            before = snapshot(self.params)
            for n, p in self.params.items():
                p.grad = grads[n].to(p.dtype)
            self.opt.step()
            self.history.push(change_sq(self.params, before))
        return diverged

    def _fedavg_round(self) -> bool:
        start = snapshot(self.params)
        start_buffers = snapshot(self.buffers)
        local = torch.optim.SGD(self.model.parameters(), lr=self.lr(),
                                momentum=self.cfg.momentum, weight_decay=self.cfg.weight_decay)
        confs = []
        for k in range(self.cfg.local_steps):
            x, y = next_batch(self.task, self.stream, self.cfg.batch_size, self.cfg.seed,
                              self.step, k)
            loss, conf = forward_backward(self.model, x, y)
            self._seen(loss, len(y))
            confs.append(conf)
            local.step()
        delta = {n: p.detach() - start[n] for n, p in self.params.items()}
        extra = TensorSet(self.buffers, "buffer") if self.buffers else None
        own = self._offer(delta, sum(confs) / len(confs),
                          self.cfg.local_steps * self.cfg.batch_size, "delta", extra)
        restore(self.params, self.buffers, start, start_buffers)
        combined, diverged = self._exchange(own)
        if combined is not None:
            self.outer.step(TensorSet(self.packing.unpack(combined.tensors.params)))
            apply_delta({}, self.buffers, TensorSet(combined.tensors.buffers, "buffer"))
            self.history.push(change_sq(self.params, start))
        return diverged

    # ---- one exchange -------------------------------------------------------------------
    def _offer(self, tensors: Tensors, confidence: float, samples: int, kind: str,
               extra: TensorSet | None = None) -> bytes | None:
        """Policy and encoding (Sender); the Update (or a skip notice) goes to the peers the
        schedule names."""
        proposal = self.sender.propose(self.packing.pack(tensors), self.step, confidence)
        if not proposal.send:
            self.counts["skipped"] += 1
            sent = self.net.send_step(Msg.SKIP, skip_bytes(self.name, self.step,
                                                           proposal.reason),
                                      self.step, tag=self._tag)
            self.ledger.skip(self.name, self.raw_bytes * sent)
            return None
        update = self.sender.message(proposal, extra, round=self.step, seq=self.step,
                                     confidence=confidence, num_samples=samples, kind=kind)
        data = serialize_update(update)
        self.net.send_step(Msg.UPDATE, data, self.step, tag=self._tag, raw=self.raw_bytes,
                           kind="payload")
        self.counts["uploads"] += 1
        self.counts["update_bytes"] += len(data)
        return data

    def _exchange(self, own: bytes | None) -> tuple[Combined | None, bool]:
        t0 = time.perf_counter()
        arrivals = self.net.collect(self.step)
        self.counts["wait_time_s"] += time.perf_counter() - t0
        diverged = self._diverged(arrivals)
        bodies = {self.index: own} if own is not None else {}
        for j, d in arrivals.items():
            if d.kind == Msg.UPDATE:
                bodies[j] = d.body
                self.counts["received_bytes"] += len(d.body)
            else:
                self._check_skip(d)
        for j in sorted(bodies):
            self._submit(self.names[j], bodies[j])
        self._account({j: len(b) for j, b in bodies.items()})
        return self.strategy.result(exclude=self._unheard()), diverged

    def _unheard(self) -> set[str]:
        """Gossip: the peers this step does not hear from, whose last contributions the
        strategy must not reuse (it reuses only those of heard peers that skipped)."""
        heard = self.net.schedule.sources(self.step, self.index) | {self.index}
        return {n for j, n in enumerate(self.names) if j not in heard}

    def _check_skip(self, d: Delivery) -> None:
        try:
            parse_skip(d.body)
        except WireError as exc:
            self.counts["rejected_updates"] += 1
            self.log(f"dropped a malformed skip notice from {self.names[d.index]}: {exc}")

    def _submit(self, name: str, body: bytes) -> None:
        """Decode (all or nothing) and hand to the strategy; a rejected update counts as a
        skip of that peer here (the next hash check repairs any difference)."""
        try:
            arrival = self.receiver.receive(body, name)
        except Rejected as exc:
            self.counts["rejected_updates"] += 1
            self.log(f"rejected the update of {name} at step {self.step}: {exc}")
            return
        u = arrival.update
        self.strategy.submit(name, Contribution(arrival.tensors, u.num_samples, u.confidence))

    def _diverged(self, arrivals: dict[int, Delivery]) -> bool:
        """Compare our model hash with the lowest live peer's, when both sent one."""
        ref = min(set(arrivals) | {self.index})
        if ref == self.index or not self._tag or not arrivals[ref].tag:
            return False
        self.counts["hash_checks"] += 1
        if arrivals[ref].tag == self._tag:
            return False
        self.counts["hash_mismatches"] += 1
        self.log(f"model hash differs from {self.names[ref]}'s at step {self.step}; "
                 "asking it for its state")
        return True

    def _account(self, sizes: dict[int, int]) -> None:
        """Simulated time of this step's exchange on full-duplex links (`--bandwidth`,
        `LinkModel.exchange_time`): a peer uploads a copy per receiver while it downloads."""
        sent, received = step_bytes(self.net.schedule, self.step, self.net.live, self.index,
                                    sizes)
        self.counts["comm_time_s_sim"] += self.link.exchange_time(sent, received)

    # ---- epochs, events, stats ----------------------------------------------------------
    def _finish_epoch(self) -> None:
        totals = self.ledger.close_epoch()
        c = self.counts
        totals.update(sent=c["uploads"] - c["epoch_uploads"],
                      skipped=c["skipped"] - c["epoch_skipped"])
        c["epoch_uploads"], c["epoch_skipped"] = c["uploads"], c["skipped"]
        acc, loss = evaluate(self.model, self.task)
        losses, self.epoch_losses = self.epoch_losses, []
        record = epoch_record(self.epoch + 1, self.step, acc, loss,
                              sum(losses) / max(len(losses), 1), self.ledger.wire_total, totals,
                              c["comm_time_s_sim"], c["compute_time_s"])
        self.records.append(record)
        self.epoch += 1
        self.log(epoch_line(record))
        self.events.emit("epoch", **record, node=self.name, links=self.ledger.per_link(),
                         resources=self.monitor.sample(), peers=self.net.view())
        every = self.cfg.checkpoint_every
        if every and self.epoch % every == 0:
            self.state.save_checkpoint()
        self.write_stats(None, None)

    def _step_event(self) -> None:
        if self.step % self.events.every:
            return
        t = self.ledger.totals()
        self.events.step(self.step, node=self.name, train_loss=self.epoch_losses[-1]
                         if self.epoch_losses else None, lr=self.lr(),
                         bytes_up_wire=t["up_wire"], bytes_down_wire=self.counts["received_bytes"],
                         uploads=self.counts["uploads"], skipped=self.counts["skipped"],
                         comm_time_s_sim=self.counts["comm_time_s_sim"],
                         links=self.ledger.per_link(), peers=self.net.view())
        self.write_stats(None, None)

    def stats(self, final_hash: int | None, elapsed: float | None) -> dict[str, Any]:
        net, transport = self.net, self.net.transport
        return {"node": self.name, "session": net.session, "finished": final_hash is not None,
                "model": self.cfg.model or self.task.model,
                "codec": self.sender.encoder.codec.name, "step": self.step, "epoch": self.epoch,
                "records": self.records, "counts": self.counts, "socket": transport.counts,
                "ledger": self.ledger.state_dict(),
                "departures": net.departures, "arrivals": net.arrivals,
                "joined_at": self.joined_at, "final_hash": final_hash,
                "peer_hashes": {self.names[j]: h for j, h in net.finished.items()},
                "malformed": transport.counts["malformed_frames"] + net.bad_bodies,
                "stale_messages": net.stale, "train_time_s": elapsed, "time": time.time()}

    def write_stats(self, final_hash: int | None, elapsed: float | None) -> dict[str, Any]:
        """This incarnation's stats file, rewritten with every step event, every epoch and at
        the end, so a killed peer's traffic up to its last step event still counts."""
        stats = self.stats(final_hash, elapsed)
        path = self.dir / f"stats-{self.net.session:x}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(stats, default=str))
        os.replace(tmp, path)
        return stats
