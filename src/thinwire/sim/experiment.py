"""Run one configured experiment end to end: epochs, evaluation, checkpoints, results row."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import torch
from tqdm import tqdm

from ..obs.events import EventLog, attach_tensorboard
from ..config.training import run_common, run_extras
from ..errors import require
from ..obs.monitor import Monitor
from ..obs.record import epoch_line, epoch_record, record
from ..obs.resources import ResourceMonitor
from ..obs.results import append_row
from ..tasks import Task, format_histograms, load_task
from .config import RunConfig
from .defaults import describe as describe_defaults
from .defaults import hint
from .sim import Simulation

Log = Callable[[str], None]


def stderr_log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run_experiment(cfg: RunConfig, task: Task | None = None, progress: bool = True,
                   log: Log | None = stderr_log) -> dict:
    """Train, evaluate every epoch, append a row to `<out>/results.jsonl`, return the row."""
    if cfg.tensorboard is not None:  # before anything starts
        require("tensorboard", "tensorboard", "--tensorboard")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    task = task or load_task(cfg.task, cfg.data_dir, cfg.download, **cfg.task_args)
    sim = Simulation(cfg, task, log=log)
    resumed = cfg.resume and sim.try_resume()
    if not resumed:
        sim.write(f"run {cfg.name()}: {len(sim.nodes)} node(s), split {cfg.split}, "
                  f"codec {cfg.codec}, policy {cfg.policy}\n"
                  + "".join(line + "\n" for line in header_lines(cfg))
                  + format_histograms(sim.histograms))
    steps = sim.steps_per_epoch()
    events = EventLog(sim.run_dir, cfg.name(), every=max(1, steps // 50), fresh=not resumed)
    tensorboard = attach_tensorboard(events, cfg.tensorboard)
    started = time.perf_counter()
    peers = {s.node_id: "alive" for s in sim.senders}  # in-process nodes never leave
    with Monitor(events, ledger=lambda: sim.ledger, every=cfg.monitor_every,
                 extra=lambda: {"peers": peers}):
        train(sim, events, steps, progress)
    row = result_row(sim, time.perf_counter() - started)
    events.emit("end", record={k: v for k, v in row.items() if k != "history"})
    events.close()
    if tensorboard is not None:
        tensorboard.close()
    append_row(cfg.out / "results.jsonl", row)
    sim.write(f"done: test_accuracy={row['test_accuracy']:.4f} wire={row['bytes_wire_total']} "
              f"uplink ratio={row['compression_ratio'] or 0:.1f}")
    return row


def header_lines(cfg: RunConfig) -> list[str]:
    """The chosen sparsifier defaults and a missing-error-feedback hint, if any."""
    lines = [describe_defaults(cfg.auto)] if cfg.auto else []
    return lines + [h for h in (hint(cfg.__dict__),) if h]


def train(sim: Simulation, events: EventLog, steps: int, progress: bool) -> None:
    """The epochs left: steps, a step event each, evaluation and an epoch event each."""
    cfg, monitor = sim.cfg, ResourceMonitor()
    for epoch in range(sim.epoch, cfg.epochs):
        bar = tqdm(range(steps), desc=f"{cfg.name()} epoch {epoch + 1}/{cfg.epochs}",
                   disable=not progress, leave=False, file=sys.stderr)
        for _ in bar:
            t0 = time.perf_counter()
            sim.sync_step() if cfg.mode == "sync" or cfg.centralized else sim.fedavg_round()
            sim.compute_time += time.perf_counter() - t0
            sim.step += 1
            step_event(sim, events)
            if cfg.max_steps and sim.step >= cfg.max_steps:
                break
        finish_epoch(sim, epoch)
        events.emit("epoch", **sim.records[-1], links=sim.ledger.per_link(),
                    resources=monitor.sample())
        if cfg.max_steps and sim.step >= cfg.max_steps:
            break


def step_event(sim: Simulation, events: EventLog) -> None:
    if sim.step % events.every:
        return
    t = sim.ledger.totals()
    recent = sim.train_losses[-len(sim.nodes):]
    events.step(sim.step, train_loss=sum(recent) / max(len(recent), 1), lr=sim.lr(),
                bytes_up_wire=t["up_wire"], bytes_down_wire=t["down_wire"],
                uploads=t["sent"], skipped=t["skipped"], comm_time_s_sim=sim.comm_time)


def finish_epoch(sim: Simulation, epoch: int) -> None:
    bytes_epoch = sim.ledger.close_epoch()
    acc, loss = sim.evaluate()
    recent = sim.train_losses[-sim.steps_per_epoch() * len(sim.nodes):]
    record = epoch_record(epoch + 1, sim.step, acc, loss, sum(recent) / max(len(recent), 1),
                          sim.ledger.wire_total, bytes_epoch, sim.comm_time, sim.compute_time)
    sim.records.append(record)
    sim.epoch = epoch + 1
    sim.write(epoch_line(record))
    every = sim.cfg.checkpoint_every
    if every and (epoch + 1) % every == 0:
        sim.save_checkpoint()


def result_row(sim: Simulation, elapsed: float) -> dict:
    cfg, central = sim.cfg, sim.cfg.centralized
    codec = "-" if central else sim.senders[0].encoder.codec.name
    common = run_common(cfg, cfg.model or sim.task.model, len(sim.nodes), codec,
                        sim.records[-1], central)
    return record("sim", common, sim.ledger.totals(),
                  **run_extras(cfg, sim.records, sim.step, sim.ledger.wire_total, sim.comm_time,
                               sim.compute_time, elapsed, sim.samples),
                  momentum_correction=cfg.momentum_correction,
                  auto_defaults=sorted(cfg.auto), history=sim.records)
