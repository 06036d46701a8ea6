"""`thinwire worker --specialty NAME --dataset FILE ...`: fine-tune one specialty's expert and
push on a timer (seed 003's run_worker.py).

    thinwire worker --coordinator-url http://10.0.0.1:5000 --worker-id Worker-1-Docs \\
        --specialty docs_expert --dataset docs.jsonl --base-model qwen/Qwen2-0.5B-Instruct \\
        --speed-factor 1.0 --duration 3600 --sync-interval 10.0 [--use-huggingface]

Every --sync-interval seconds the worker uploads its change since the last pull (a
pseudo-gradient, as DiLoCo's outer step; through the coordinator's codec with error
feedback) and pulls the expert again, waiting briefly for the round its upload joined to
close. Before contacting anyone it validates the dataset (a bad row names its file and line)
and embeds its training prompts with the base model: their centroid is what routing uses.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..codecs import Encoder, make_codec
from ..exchange import Sender, decode_update
from ..obs.events import EventLog
from ..obs.monitor import Monitor
from ..policy import make_policy
from ..tasks.lm.embed import centroid
from ..tasks.lm.pretrained import DEFAULT_BASE, Base, load_base
from ..tasks.lm.sft import encode_rows, read_rows
from ..tasks.lm.tuning import make_tuning
from ..wire import serialize_update
from ..wire.control import Register
from .link import Link
from .trainer import Trainer


class ExpertWorker:
    """The timed loop over any `Link`: train, upload the change, pull the expert."""

    def __init__(self, link: Link, trainer: Trainer, sender: Sender, role: str,
                 full_bytes: int, log: Any = None, events: EventLog | None = None) -> None:
        self.link, self.trainer, self.sender, self.role = link, trainer, sender, role
        self.full_bytes, self.events = full_bytes, events
        self.log = log or (lambda s: None)
        self.version, self.seq = 0, 0
        self.ref: dict[str, torch.Tensor] = {}
        self.sent = self.refused = 0

    def load(self, wait_version: int | None = None, wait_s: float = 0.0) -> bool:
        """Pull the expert; adopt it if it is newer than ours (or we must resync)."""
        msg, version = self.link.pull(wait_version, wait_s)
        if wait_version is not None and version < wait_version:
            return False
        tensors = decode_update(msg)
        self.trainer.set(tensors)
        self.ref, self.version = self.trainer.get(), version
        return True

    def run(self, duration: float, sync_interval: float, pull_wait: float) -> int:
        self.load()
        end = time.monotonic() + duration
        while time.monotonic() < end:
            done = self.trainer.train_for(min(sync_interval, max(end - time.monotonic(), 0)))
            accepted = self.upload(done)
            if accepted:
                self.load(self.version + 1, pull_wait)
            else:
                self.load()
        self.link.leave()
        self.log(f"done: {self.trainer.steps} steps, {self.sent} uploads "
                 f"({self.refused} refused), expert v{self.version}")
        return 0

    def upload(self, done: Any) -> bool:
        current = self.trainer.get()
        delta = {n: current[n] - self.ref[n] for n in current}
        proposal = self.sender.propose(delta, self.trainer.steps, 1.0, tentative=True,
                                       role=self.role)
        self.seq += 1
        metrics = {"train_loss": done.loss} if done.loss is not None else {}
        body = serialize_update(self.sender.message(
            proposal, seq=self.seq, kind="delta", base_version=self.version,
            num_samples=done.samples, metrics=metrics))
        ok, detail = self.link.push(body, self.full_bytes)
        if not ok:
            self.sender.rollback(proposal)
            self.refused += 1
            self.log(f"upload refused ({detail}); pulling the expert again")
            return False
        self.sender.commit(proposal)
        self.ref = current  # what the coordinator now holds of ours (the codec's error stays)
        self.sent += 1
        self.log(f"v{self.version}: uploaded {len(body)} bytes ({done.steps} steps, loss "
                 f"{done.loss:.4f}, {detail})")
        if self.events is not None:
            self.events.emit("push", step=self.trainer.steps, bytes=len(body),
                             train_loss=done.loss, expert_version=self.version)
        return True


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="thinwire worker", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experts", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--coordinator-url", default="http://127.0.0.1:5000")
    p.add_argument("--worker-id", required=True)
    p.add_argument("--specialty", required=True, help="e.g. python_expert, sql_expert")
    p.add_argument("--dataset", type=Path, required=True,
                   help="JSONL rows {prompt, reference_code}")
    p.add_argument("--base-model", default=DEFAULT_BASE, help="hub name or local folder")
    p.add_argument("--use-huggingface", action="store_true",
                   help="download from the Hugging Face hub instead of ModelScope")
    p.add_argument("--speed-factor", type=float, default=1.0,
                   help="emulate a device F times slower")
    p.add_argument("--duration", type=float, default=3600.0, help="seconds of training")
    p.add_argument("--sync-interval", type=float, default=10.0,
                   help="seconds between uploads (each followed by a pull)")
    p.add_argument("--pull-wait", type=float, default=None,
                   help="seconds to wait for the round to close after an upload "
                        "(default: min(5, sync interval))")
    p.add_argument("--token", default=os.environ.get("THINWIRE_TOKEN"))
    p.add_argument("--lr", type=float, default=2e-3, help="local AdamW learning rate")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=512, help="tokens per example")
    p.add_argument("--max-rows", type=int, default=None, help="use the first N rows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--retry-for", type=float, default=120.0,
                   help="give up after the coordinator is unreachable this long")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--out", type=Path, default=None, help="folder for events.jsonl")
    p.add_argument("--monitor-every", type=float, default=1.0,
                   help="with --out: seconds between resource samples; 0 disables")
    p.add_argument("--quiet", action="store_true")
    return p


def prepare(args: argparse.Namespace, log: Any) -> tuple[list[dict], Base]:
    """Validate the data first (fail in a second, not after loading a model), then load."""
    rows = read_rows(args.dataset, args.max_rows)
    base = load_base(args.base_model, args.use_huggingface)
    log(f"{len(rows)} rows from {args.dataset}; base {base.name} ({base.numel:,} parameters)")
    return rows, base


def worker_main(argv: list[str] | None = None) -> int:
    from ..exchange.http import HttpTransport
    from .link import HttpLink

    args = build_parser().parse_args(argv)
    torch.set_num_threads(max(args.threads, 1))

    def log(line: str) -> None:
        if not args.quiet:
            print(f"[worker {args.worker_id}] {line}", file=sys.stderr, flush=True)

    rows, base = prepare(args, log)
    prompts = [r["prompt"] for r in rows]
    session = secrets.token_hex(8)
    transport = HttpTransport(args.coordinator_url, args.worker_id, args.token,
                              args.retry_for, log)
    link = HttpLink(transport, args.worker_id)
    hello = Register(args.worker_id, session, args.specialty,
                     {"pid": str(os.getpid()), "sync_interval": str(args.sync_interval)},
                     base=base.fingerprint, count=len(prompts),
                     centroid=centroid(base.model, base.tokenizer, prompts).tolist())
    transport.lost = lambda r: r.status_code == 404 and "not registered" in r.text
    conf = link.register(hello)["config"]
    transport.on_reconnect = lambda: link.register(hello)
    worker = build_worker(link, conf, base, rows, args, log)
    wait = args.pull_wait if args.pull_wait is not None else min(5.0, args.sync_interval)
    monitor = Monitor(worker.events, ledger=lambda: transport.ledger, node=args.worker_id,
                      every=args.monitor_every) if worker.events is not None else None
    try:
        with monitor or contextlib.nullcontext():
            return worker.run(args.duration, args.sync_interval, wait)
    finally:
        if worker.events is not None:
            worker.events.close()


def build_worker(link: Link, conf: dict[str, Any], base: Base, rows: list[dict],
                 args: argparse.Namespace, log: Any) -> ExpertWorker:
    """The trainer and sender a worker needs, shaped by the coordinator's config."""
    log = log or (lambda s: None)
    tok = base.tokenizer
    tuning = make_tuning(conf["finetune"], conf["lora_rank"], conf["lora_alpha"],
                         conf["lora_targets"], conf["lora_seed"])
    examples = encode_rows(tok, rows, args.max_length, bool(conf.get("prompt_loss")))
    trainer = Trainer(base.model, tuning, examples, tok.pad_token_id, args.lr,
                      args.batch_size, args.seed, args.speed_factor)
    codec = make_codec(conf["codec"], conf["error_feedback"])
    sender = Sender(args.worker_id, Encoder(codec), make_policy("always"))
    events = EventLog(args.out, args.worker_id) if args.out else None
    log(f"registered for {args.specialty}: {conf['finetune']} (rank {conf['lora_rank']}), "
        f"codec {conf['codec']}, {len(examples)} examples")
    return ExpertWorker(link, trainer, sender, tuning.role, 4 * base.numel, log, events)


if __name__ == "__main__":
    from ..errors import run_main

    sys.exit(run_main(worker_main))
