"""Drive a live coordinator with fuzz requests (fuzz.py) and check what must always hold:
no 5xx, no answer slower than `max_latency`, bounded RSS growth, the model unchanged (no
round can close while the victim stays silent), and the process still alive.

Used by tests/test_service_fuzz.py (seconds) and bench/fuzz_service.py (20k+ requests).
"""

from __future__ import annotations

import hashlib
import random
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import torch

from ..codecs import make_codec
from ..wire import Update, serialize_update
from ..wire.model import parse_model_message
from .fuzz import Fuzzer, Probe

FUZZ_SETS = ["total_workers=2", "max_rounds=5", "round_timeout=1e9", "max_request_bytes=1048576",
             "request_timeout=1", "body_min_rate=1024"]


@dataclass
class Report:
    requests: int = 0
    statuses: Counter = field(default_factory=Counter)
    kinds: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    max_latency_s: float = 0.0
    slowest: str = ""
    rss_start_kib: int = 0
    rss_end_kib: int = 0
    version_changes: int = 0
    accepted_updates: int = 0

    def add(self, probe: Probe, status: int, seconds: float, limit: float) -> None:
        self.requests += 1
        self.statuses[status] += 1
        self.kinds[probe.kind] += 1
        if probe.kind == "update" and status == 200:
            self.accepted_updates += 1
        if seconds > self.max_latency_s:
            self.max_latency_s, self.slowest = seconds, f"{probe.kind} {probe.method} " \
                                                        f"{probe.path[:60]} -> {status}"
        if status >= 500 or status < 0:
            self.problem(f"{probe.kind} {probe.method} {probe.path[:60]} -> {status}")
        if seconds > limit:
            self.problem(f"{probe.kind} {probe.method} {probe.path[:60]} took {seconds:.2f}s")

    def problem(self, text: str) -> None:
        if len(self.problems) < 20:
            self.problems.append(text)

    def summary(self) -> dict[str, Any]:
        return {"requests": self.requests, "statuses": dict(sorted(self.statuses.items())),
                "kinds": dict(self.kinds), "accepted_updates": self.accepted_updates,
                "max_latency_s": round(self.max_latency_s, 3), "slowest": self.slowest,
                "rss_growth_mib": round((self.rss_end_kib - self.rss_start_kib) / 1024, 1),
                "rss_end_mib": round(self.rss_end_kib / 1024, 1),
                "model_changed": self.version_changes, "problems": self.problems}


class FuzzSession:
    """A victim and fuzz workers registered on `url`, then fuzz requests with checks."""

    def __init__(self, url: str, token: str, rss_kib: Callable[[], int], seed: int = 0,
                 fuzz_workers: int = 6, max_latency: float = 2.0) -> None:
        self.url, self.rss_kib, self.max_latency = url, rss_kib, max_latency
        self.http = httpx.Client(base_url=url, timeout=30,
                                 headers={"Authorization": f"Bearer {token}"})
        self.victim_key = self.register("victim")
        self.model_hash = self.pull_hash()
        keys = {f"f{i}": self.register(f"f{i}") for i in range(fuzz_workers)}
        self.fuzzer = Fuzzer(random.Random(seed), token, keys, self.seeds(keys))
        self.port = httpx.URL(url).port

    def register(self, wid: str) -> str:
        r = self.http.post("/v1/workers", json={"worker_id": wid, "session": "fuzz"})
        r.raise_for_status()
        return r.json()["worker_key"]

    def pull(self) -> httpx.Response:
        r = self.http.get("/v1/model", params={"worker_id": "victim"},
                          headers={"X-Thinwire-Worker-Key": self.victim_key})
        r.raise_for_status()
        return r

    def pull_hash(self) -> str:
        return hashlib.sha256(self.pull().content).hexdigest()

    def seeds(self, keys: dict[str, str]) -> list[bytes]:
        """Valid round-0 updates, one per fuzz worker, shaped like the model."""
        model = parse_model_message(self.pull().content)[1]
        enc = make_codec("none")
        return [serialize_update(Update(
            node_id=wid, round=0, seq=i + 1, kind="delta", num_samples=10,
            tensors=[enc.encode(torch.full(tuple(t.shape), 0.01), None, t.name)
                     for t in model.tensors])) for i, wid in enumerate(keys)]

    def run(self, requests: int, seconds: float = 0.0, raw_share: float = 0.02) -> Report:
        report, start = Report(), time.monotonic()
        report.rss_start_kib = self.rss_kib()
        for i in range(requests):
            if self.fuzzer.rng.random() < raw_share:
                self.send_raw(report)
            else:
                self.send(self.fuzzer.probe(), report)
            if i % 500 == 499:
                self.check_model(report)
            if seconds and time.monotonic() - start > seconds:
                break
        self.check_model(report)
        report.rss_end_kib = self.rss_kib()
        return report

    def send(self, probe: Probe, report: Report) -> None:
        t0 = time.monotonic()
        try:
            r = self.http.request(probe.method, probe.path, content=probe.content,
                                  params=probe.params, headers=probe.headers)
            status = r.status_code
        except httpx.LocalProtocolError:  # the client library would not send it
            report.kinds["not sent"] += 1
            return
        except httpx.HTTPError as exc:
            status = -1
            report.problem(f"{probe.kind}: {type(exc).__name__}: {exc}")
        report.add(probe, status, time.monotonic() - t0, self.max_latency)

    def send_raw(self, report: Report) -> None:
        """Malformed HTTP on its own connection: an answer (or a close) within the limit;
        bodies that stall are answered once request_timeout passes."""
        data = self.fuzzer.raw()
        t0 = time.monotonic()
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            sock.sendall(data)
            status = read_status(sock)
        probe = Probe("raw", "RAW", data[:30].decode("latin-1"))
        report.add(probe, 0 if status is None else status, time.monotonic() - t0,
                   self.max_latency)

    def check_model(self, report: Report) -> None:
        """No round may close, so the model must be exactly what it was."""
        if self.pull_hash() != self.model_hash:
            report.version_changes += 1
            report.problem("the model changed")

    def close(self) -> None:
        self.http.close()


def read_status(sock: socket.socket) -> int | None:
    """The status code of the first response on `sock`; None if it closed without one."""
    data = b""
    try:
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except OSError:
        return None
    parts = data.split()
    return int(parts[1]) if data.startswith(b"HTTP/1.1 ") and len(parts) > 1 else None
