"""A real coordinator process on 127.0.0.1 and clients that talk to it like workers do;
shared by the service tests (protocol, security, fuzz)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
import torch

from thinwire.codecs import decode, make_codec
from thinwire.service.config import load_config
from thinwire.service.core import Coordinator
from thinwire.service.fuzz_check import read_status  # noqa: F401  (for the tests)
from thinwire.service.quick_test import free_port
from thinwire.wire.model import parse_model_message
from thinwire.tasks import Task, load_task
from thinwire.wire import Update, parse_update, serialize_update

SYNTH = ["task=synthetic", "task_args={n_samples: 400, num_classes: 4, dim: 8}",
         "local_steps=5", "batch_size=16", "lr=0.1"]
TOKEN = "s3cret-token"
ADMIN = "adm1n-token"
KEY_HEADER = "X-Thinwire-Worker-Key"


class Service:
    """A coordinator subprocess plus helpers to talk to it like a worker would."""

    def __init__(self, state_dir, sets, token=TOKEN, port=None, host="127.0.0.1",
                 admin=ADMIN):
        self.state_dir, self.sets, self.token = state_dir, [*SYNTH, *sets], token
        self.host, self.admin = host, admin
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workers: list[subprocess.Popen] = []
        self.keys: dict[str, str] = {}
        self.start()

    def start(self):
        cmd = [sys.executable, "-m", "thinwire.service.coordinator", "--port", str(self.port),
               "--host", self.host, "--state-dir", str(self.state_dir), "--quiet"]
        for s in self.sets:
            cmd += ["--set", s]
        env = {**os.environ, "THINWIRE_TOKEN": self.token, "THINWIRE_ADMIN_TOKEN": self.admin}
        self.proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
        end = time.monotonic() + 90
        while time.monotonic() < end:
            assert self.proc.poll() is None, self.proc.stderr.read()
            try:
                if httpx.get(f"{self.url}/v1/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        raise AssertionError("coordinator did not start")

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        for w in self.workers:
            if w.poll() is None:
                w.kill()
            w.wait()
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)

    def rss_kib(self) -> int:
        """The coordinator's resident set (VmRSS) in KiB."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            line = next(line for line in f if line.startswith("VmRSS:"))
        return int(line.split()[1])

    def worker(self, wid, *extra):
        cmd = [sys.executable, "-m", "thinwire.service.worker", "--coordinator-url", self.url,
               "--worker-id", wid, "--token", self.token, "--quiet", "--retry-for", "30",
               *extra]
        proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
        self.workers.append(proc)
        return proc

    def call(self, method, path, token=None, wid=None, **kw):
        """A request with the bearer token and, for a worker we registered, its key."""
        headers = {"Authorization": f"Bearer {token or self.token}", **kw.pop("headers", {})}
        if wid in self.keys:
            headers.setdefault(KEY_HEADER, self.keys[wid])
        return httpx.request(method, self.url + path, headers=headers, timeout=60, **kw)

    def status(self):
        return httpx.get(self.url + "/v1/status", timeout=10).json()

    def register(self, wid, session="s1", **kw):
        r = self.call("POST", "/v1/workers", wid=wid,
                      json={"worker_id": wid, "session": session, **kw})
        assert r.status_code == 200, r.text
        if r.json().get("worker_key"):
            self.keys[wid] = r.json()["worker_key"]
        return r.json()

    def model(self, wid):
        r = self.call("GET", "/v1/model", wid=wid, params={"worker_id": wid})
        assert r.status_code == 200, r.text
        return {t.name: decode(t) for t in parse_model_message(r.content)[1].tensors}

    def model_hash(self, wid) -> str:
        r = self.call("GET", "/v1/model", wid=wid, params={"worker_id": wid})
        assert r.status_code == 200, r.text
        return hashlib.sha256(r.content).hexdigest()

    def push(self, body, wid=None):
        if wid is None:
            try:
                wid = parse_update(body).node_id
            except Exception:  # noqa: BLE001  garbage on purpose
                wid = None
        return self.call("POST", "/v1/updates", wid=wid, content=body)

    def skip(self, wid, round_, reason="lazy"):
        return self.call("POST", "/v1/skips", wid=wid,
                         json={"worker_id": wid, "round": round_, "reason": reason})

    def wait(self, predicate, timeout=120.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            status = self.status()
            if predicate(status):
                return status
            time.sleep(0.2)
        raise AssertionError(f"timed out; status {json.dumps(self.status())[:2000]}")

    def raw(self, head: bytes, body: bytes = b"", timeout: float = 10.0) -> socket.socket:
        """A raw TCP connection (malformed or partial HTTP): `head` is sent at once, `body`
        from a thread, so the caller can read an answer that comes before the body ends."""
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        sock.sendall(head)
        threading.Thread(target=send_quietly, args=(sock, body), daemon=True).start()
        return sock


def send_quietly(sock: socket.socket, data: bytes) -> None:
    """Send until done or until the server closes the connection (it may refuse early)."""
    with contextlib.suppress(OSError):
        sock.sendall(data)


@pytest.fixture
def services():
    started = []
    yield lambda *a, **kw: started.append(Service(*a, **kw)) or started[-1]
    for s in started:
        s.stop()


def delta_update(wid, round_, seq, tensors, base_version=0, codec="none"):
    enc = make_codec(codec)
    return serialize_update(Update(node_id=wid, round=round_, seq=seq, kind="delta",
                                   num_samples=10, base_version=base_version,
                                   tensors=[enc.encode(t, None, n) for n, t in tensors.items()]))


def filled(model, value):
    return {n: torch.full_like(t, value) for n, t in model.items()}


@functools.cache
def small_task() -> Task:
    return load_task("synthetic", n_samples=200, dim=4)


def coordinator(state_dir, log=None, **over) -> Coordinator:
    """An in-process coordinator on a small synthetic task (no HTTP)."""
    cfg = load_config(None, {"task": "synthetic", "task_args": {"n_samples": 200, "dim": 4},
                             "total_workers": 2, **over})
    return Coordinator(cfg, state_dir, task=small_task(), log=log)
