"""`thinwire worker`: pull the model, train locally, decide lazily, push a protobuf Update.

    python -m thinwire.service.worker --coordinator-url http://127.0.0.1:5000 --worker-id w0

Every request retries with exponential backoff while the coordinator is unreachable (up to
--retry-for seconds); after an outage the worker registers again (same session, so the
coordinator keeps its codec state) and re-sends what was not acknowledged, with the same
(worker, round, seq), so nothing is applied twice. An update the coordinator refuses (stale
round, not selected) rolls the encoder back, keeping both sides' codec state in step.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from ..codecs import decode
from ..errors import CodecError, ThinwireError
from ..tasks import load_task, split_indices
from ..wire import parse_update
from .flq import Learner, Proposal


class WorkerError(ThinwireError):
    """Fatal for the worker: bad token, coordinator gone for good, refused registration."""


class Client:
    """httpx with retries/backoff; calls `on_reconnect` after an outage before resending."""

    def __init__(self, url: str, token: str | None, retry_for: float, log: Any) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers,
                                 timeout=httpx.Timeout(60.0, connect=5.0))
        self.retry_for, self.log = retry_for, log
        self.on_reconnect: Any = None

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        for _ in range(5):
            r, outage = self._send(method, path, **kw)
            if outage and self.on_reconnect is not None:
                self.on_reconnect()
                continue
            if r.status_code == 404 and "not registered" in r.text and self.on_reconnect:
                self.on_reconnect()
                continue
            if r.status_code == 401:
                raise WorkerError(f"coordinator says: {error_of(r)}")
            return r
        raise WorkerError(f"{method} {path}: the coordinator keeps forgetting this worker")

    def _send(self, method: str, path: str, **kw: Any) -> tuple[httpx.Response, bool]:
        start, backoff, outage = time.monotonic(), 0.2, False
        while True:
            try:
                r = self.http.request(method, path, **kw)
                if r.status_code < 500:
                    return r, outage
                problem = f"HTTP {r.status_code}: {error_of(r)}"
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}"
            if time.monotonic() - start > self.retry_for:
                raise WorkerError(f"coordinator at {self.http.base_url} unreachable for "
                                  f"{self.retry_for:.0f}s ({problem}); is it running?")
            if not outage:
                self.log(f"coordinator unreachable ({problem}); retrying with backoff")
            outage = True
            time.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, 5.0)


def error_of(r: httpx.Response) -> str:
    try:
        return str(r.json().get("error", r.text))
    except ValueError:
        return r.text[:200]


class Worker:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.wid = args, args.worker_id
        self.session = secrets.token_hex(8)
        self.client = Client(args.coordinator_url, args.token, args.retry_for, self.log)
        self.learner: Learner | None = None
        self.have: int | None = None
        self.seq = 0
        self.sent = self.skipped = 0

    def log(self, line: str) -> None:
        if not self.args.quiet:
            print(f"[worker {self.wid}] {line}", file=sys.stderr, flush=True)

    def register(self) -> dict[str, Any]:
        self.client.on_reconnect = None  # no recursion while registering
        try:
            r = self.client.request("POST", "/v1/workers", json={
                "worker_id": self.wid, "session": self.session,
                "specialty": self.args.specialty, "capabilities": {"pid": os.getpid()}})
        finally:
            self.client.on_reconnect = self.register
        if r.status_code != 200:
            raise WorkerError(f"registration refused: {error_of(r)}")
        info = r.json()
        self.have = None  # the coordinator may have restarted: take the full model next
        if self.learner is None:
            self.learner = self._learner(info)
        return info

    def _learner(self, info: dict[str, Any]) -> Learner:
        conf, a = info["config"], self.args
        task_name = a.task or conf["task"]
        data_dir = a.data_dir or (Path(conf["data_dir"]) if conf.get("data_dir") else None)
        task = load_task(task_name, data_dir, **(conf["task_args"] if not a.task else {}))
        index, count = info["index"], conf["total_workers"]
        if a.shard:
            index, count = (int(v) for v in a.shard.split("/"))
        split = a.split or conf["split"]
        shard = split_indices(task.train_y, count, split, conf["seed"])[index % count]
        self.log(f"registered: shard {index}/{count} ({len(shard)} samples, {split}), "
                 f"codec {conf['codec']}, lazy {conf['lazy']}, {conf['schedule']}")
        self.conf = conf
        return Learner(task, shard, index, conf, self.wid, a.speed_factor)

    # ---- one exchange -----------------------------------------------------------------
    def pull(self, wait_round: int | None) -> dict[str, Any]:
        params = {"worker_id": self.wid}
        if self.have is not None:
            params["have"] = self.have
        if wait_round is not None:
            params["wait_round"] = wait_round
        r = self.client.request("GET", "/v1/model", params=params)
        if r.status_code != 200:
            raise WorkerError(f"cannot fetch the model: {error_of(r)}")
        h = r.headers
        meta = {"round": int(h["x-thinwire-round"]), "version": int(h["x-thinwire-version"]),
                "done": h["x-thinwire-done"] == "1"}
        msg = parse_update(r.content)
        try:
            tensors = {t.name: decode(t) for t in msg.tensors}
        except CodecError:  # a delta this worker cannot decode alone: ask for the full model
            self.have = None
            return self.pull(wait_round)
        self.learner.load(tensors, add=msg.kind == "delta")
        self.have = meta["version"]
        self.learner.set_history([float(v) for v in h["x-thinwire-diffs"].split(",") if v])
        return meta

    def offer(self, p: Proposal, round_: int) -> bool:
        while True:
            r = self.client.request("POST", "/v1/offers", json={
                "worker_id": self.wid, "round": round_, "score": p.score, "bits": p.bits})
            if r.status_code != 200:
                self.log(f"offer refused: {error_of(r)}")
                return False
            if r.json()["selected"] is not None:
                return bool(r.json()["selected"])

    def submit(self, p: Proposal, round_: int) -> None:
        if p.update is None:
            r = self.client.request("POST", "/v1/skips", json={
                "worker_id": self.wid, "round": round_, "reason": p.reason})
            self.skipped += 1
            self.log(f"round {round_}: skipped upload ({p.reason})")
            return
        if self.conf["selection"] and not self.offer(p, round_):
            self.learner.rollback(p)
            self.skipped += 1
            self.log(f"round {round_}: not selected ({p.bits} bits offered)")
            return
        r = self.client.request("POST", "/v1/updates", content=p.body,
                                headers={"Content-Type": "application/x-protobuf"})
        if r.status_code == 200:
            self.sent += 1
            self.log(f"round {round_}: sent {len(p.body)} bytes ({p.reason}, "
                     f"{r.json()['status']})")
        else:
            self.learner.rollback(p)
            self.log(f"round {round_}: update refused ({r.status_code}: {error_of(r)})")

    # ---- main loop --------------------------------------------------------------------
    def run(self) -> int:
        info = self.register()
        end = time.monotonic() + self.args.duration if self.args.duration else None
        next_round = info["round"]
        while end is None or time.monotonic() < end:
            sync = self.conf["schedule"] == "sync"
            meta = self.pull(next_round if sync else None)
            if meta["done"]:
                self.log(f"training done at round {meta['round']} (sent {self.sent}, "
                         f"skipped {self.skipped})")
                break
            if sync and meta["round"] < next_round:
                continue  # long poll timed out; ask again
            if sync:
                delta, n, conf = self.learner.train(steps=self.conf["local_steps"])
            else:
                delta, n, conf = self.learner.train(seconds=self.args.sync_seconds)
            self.seq += 1
            proposal = self.learner.propose(delta, meta["round"] if sync else meta["version"],
                                            self.seq, meta["version"], n, conf)
            self.submit(proposal, meta["round"])
            next_round = meta["round"] + 1
        self.client.request("POST", f"/v1/workers/{self.wid}/leave")
        return 0


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
    p.add_argument("--duration", type=float, default=0.0, help="stop after SEC seconds")
    p.add_argument("--speed-factor", type=float, default=1.0,
                   help="emulate a device F times slower (sleeps after each step)")
    p.add_argument("--sync-seconds", "--sync-interval", dest="sync_seconds", type=float,
                   default=2.0, help="async schedule: seconds of local training between "
                   "pushes (--sync-interval: old name; the policy's sync_interval is steps)")
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
