"""`thinwire worker`: pull the model, train locally, decide lazily, push a protobuf Update.
Registration, skips and offers are protobuf too (Register, Skip, Offer of thinwire.proto).

    python -m thinwire.service.worker --coordinator-url http://127.0.0.1:5000 --worker-id w0

Requests go through `HttpTransport` (exchange/http.py), which retries with exponential
backoff while the coordinator is unreachable (up to --retry-for seconds) and counts every
byte in a link ledger; after an outage the worker registers again (same session, so the
coordinator keeps its codec state) and re-sends what was not acknowledged, with the same
(worker, round, seq), so nothing is applied twice. The key the coordinator issues at
registration goes with every later request (X-Thinwire-Worker-Key; --key-file keeps it
across restarts). An update the coordinator refuses (stale round, not selected) rolls the
encoder back, keeping both sides' codec state in step.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any


from ..errors import ThinwireError
from ..exchange.http import HttpTransport, TransportError, error_of
from ..tasks import load_task, split_indices
from ..wire import Update
from ..wire.control import Offer, Register, Skip
from .config import WorkerConfig
from ..server.credentials import KEY_HEADER
from .learner import Learner
from .round_trip import ModelInfo, load_model, read_model, worker_round


class WorkerError(ThinwireError):
    """Fatal for the worker: bad token, coordinator gone for good, refused registration."""


class HttpLink:
    """The coordinator's API as a `round_trip.Link`, over an `HttpTransport`."""

    def __init__(self, transport: HttpTransport, wid: str, log: Any) -> None:
        self.transport, self.wid, self.log = transport, wid, log

    def pull(self, have: int | None, wait_round: int | None) -> tuple[Update, ModelInfo]:
        params: dict[str, Any] = {"worker_id": self.wid}
        if have is not None:
            params["have"] = have
        if wait_round is not None:
            params["wait_round"] = wait_round
        r = self.transport.request("GET", "/v1/model", params=params)
        if r.status_code != 200:
            raise WorkerError(f"cannot fetch the model: {error_of(r)}")
        return read_model(r.content)

    def skip(self, round_: int, reason: str) -> None:
        self.transport.post("/v1/skips", Skip(self.wid, round_, reason))

    def offer(self, round_: int, score: float, bits: int) -> bool:
        while True:
            r = self.transport.post("/v1/offers", Offer(self.wid, round_, score, bits))
            if r.status_code != 200:
                self.log(f"offer refused: {error_of(r)}")
                return False
            if r.json()["selected"] is not None:
                return bool(r.json()["selected"])

    def push(self, body: bytes) -> tuple[bool, str]:
        r = self.transport.send(self.wid, "/v1/updates", body)
        if r.status_code == 200:
            return True, str(r.json()["status"])
        return False, f"{r.status_code}: {error_of(r)}"


class Worker:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.wid = args, args.worker_id
        self.session = secrets.token_hex(8)
        self.transport = HttpTransport(args.coordinator_url, self.wid, args.token,
                                       args.retry_for, self.log)
        self.transport.lost = lambda r: r.status_code == 404 and "not registered" in r.text
        self.link = HttpLink(self.transport, self.wid, self.log)
        if args.key_file is not None and args.key_file.exists():
            self.use_key(args.key_file.read_text().strip())
        self.learner: Learner | None = None
        self.have: int | None = None
        self.seq = 0
        self.sent = self.skipped = 0

    def use_key(self, key: str, save: bool = False) -> None:
        """Send `key` from now on; with --key-file keep it there (0600), so a restarted
        worker (a new session) may take its id back."""
        self.transport.http.headers[KEY_HEADER] = key
        path = self.args.key_file
        if save and path is not None:
            tmp = path.with_name(path.name + ".tmp")
            tmp.touch(mode=0o600)
            tmp.write_text(key)
            tmp.replace(path)

    def log(self, line: str) -> None:
        if not self.args.quiet:
            print(f"[worker {self.wid}] {line}", file=sys.stderr, flush=True)

    def register(self) -> dict[str, Any]:
        self.transport.on_reconnect = None  # no recursion while registering
        try:
            r = self.transport.post("/v1/workers", Register(
                self.wid, self.session, self.args.specialty, {"pid": str(os.getpid())}))
        except TransportError as exc:
            raise WorkerError(str(exc)) from None
        finally:
            self.transport.on_reconnect = self.register
        if r.status_code != 200:
            raise WorkerError(f"registration refused: {error_of(r)}")
        info = r.json()
        if info.get("worker_key"):  # issued once: every later request for this id sends it
            self.use_key(info["worker_key"], save=True)
        self.have = None  # the coordinator may have restarted: take the full model next
        if self.learner is None:
            self.learner = self._learner(info)
        return info

    def _learner(self, info: dict[str, Any]) -> Learner:
        conf, a = WorkerConfig.of(info["config"]), self.args
        task_name = a.task or conf.task
        data_dir = a.data_dir or (Path(conf.data_dir) if conf.data_dir else None)
        task = load_task(task_name, data_dir, **(conf.task_args if not a.task else {}))
        index, count = info["index"], conf.total_workers
        if a.shard:
            index, count = (int(v) for v in a.shard.split("/"))
        split = a.split or conf.split
        shard = split_indices(task.train_y, count, split, conf.seed)[index % count]
        self.log(f"registered: shard {index}/{count} ({len(shard)} samples, {split}), "
                 f"codec {conf.codec}, lazy {conf.lazy}, {conf.schedule}")
        self.conf = conf
        return Learner(task, shard, index, conf, self.wid, a.speed_factor)

    # ---- main loop --------------------------------------------------------------------
    def run(self) -> int:
        try:
            return self._run()
        except TransportError as exc:
            raise WorkerError(str(exc)) from None

    def _run(self) -> int:
        info = self.register()
        end = time.monotonic() + self.args.duration if self.args.duration else None
        next_round = info["round"]
        while end is None or time.monotonic() < end:
            sync = self.conf.schedule == "sync"
            meta, self.have = load_model(self.learner, self.link, self.have,
                                         next_round if sync else None)
            if meta.done:
                self.log(f"training done at round {meta.round} (sent {self.sent}, "
                         f"skipped {self.skipped})")
                break
            if sync and meta.round < next_round:
                continue  # long poll timed out; ask again
            self.seq += 1
            result = worker_round(self.learner, self.link, meta, self.seq, sync,
                                  self.conf.selection, self.conf.local_steps,
                                  self.args.sync_seconds)
            self._report(result)
            next_round = meta.round + 1
        self.transport.request("POST", f"/v1/workers/{self.wid}/leave")
        return 0

    def _report(self, result: Any) -> None:
        r, p = result.info.round, result.proposal
        if result.outcome == "sent":
            self.sent += 1
            self.log(f"round {r}: sent {len(p.body)} bytes ({p.reason}, {result.detail})")
        elif result.outcome == "refused":
            self.log(f"round {r}: update refused ({result.detail})")
        else:
            self.skipped += 1
            self.log(f"round {r}: {result.outcome} ({result.detail})")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="thinwire worker", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--coordinator-url", default="http://127.0.0.1:5000")
    p.add_argument("--worker-id", default=f"worker-{os.getpid()}")
    p.add_argument("--task", help="task to load locally (default: the coordinator's)")
    p.add_argument("--data-dir", type=Path, help="dataset folder (default: coordinator's, "
                                                 "else the embedded MNIST subset)")
    p.add_argument("--shard", help="I/N: take part I of N (default: from the worker id)")
    p.add_argument("--split", help="iid | dirichlet:ALPHA | shards:K (default: coordinator's)")
    p.add_argument("--token", default=os.environ.get("THINWIRE_TOKEN"))
    p.add_argument("--key-file", type=Path, help="keep this worker's key here, so a restart "
                                                 "under the same --worker-id is let back in")
    p.add_argument("--duration", type=float, default=0.0, help="stop after SEC seconds")
    p.add_argument("--speed-factor", type=float, default=1.0,
                   help="emulate a device F times slower (sleeps after each step)")
    p.add_argument("--sync-seconds", "--sync-interval", dest="sync_seconds", type=float,
                   default=2.0, help="async schedule: seconds of local training between "
                                     "pushes (--sync-interval: old name; the policy's "
                                     "sync_interval is steps)")
    p.add_argument("--retry-for", type=float, default=120.0,
                   help="give up after the coordinator is unreachable this long")
    p.add_argument("--specialty", default="")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true")
    return p


def worker_main(argv: list[str] | None = None) -> int:
    import torch

    args = build_parser().parse_args(argv)
    if args.shard and not _valid_shard(args.shard):
        raise ThinwireError(f"--shard {args.shard!r}: use I/N with 0 <= I < N, e.g. 2/8")
    torch.set_num_threads(max(args.threads, 1))
    return Worker(args).run()


def _valid_shard(text: str) -> bool:
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        return False
    return 0 <= i < n


if __name__ == "__main__":
    from ..errors import run_main

    sys.exit(run_main(worker_main))
