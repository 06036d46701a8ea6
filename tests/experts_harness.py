"""The federated-experts tests' harness: data slices, the coordinator subprocess and its
worker processes, and crafted clients (register, pull an adapter, build an upload)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import torch

from thinwire.codecs import decode, make_codec
from thinwire.tasks.lm.pretrained import load_base
from thinwire.tasks.lm.sft import read_rows
from thinwire.tasks.lm.tuning import QWEN2_ATTENTION, QWEN2_MLP
from thinwire.wire import Update, parse_update, serialize_update

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "instruct"
if not DATA.is_dir():
    DATA = Path("/work/shared/data/instruct")
SRC = str(Path(__file__).resolve().parents[1] / "src")
TOKEN = "experts-token"
TARGETS = ",".join(QWEN2_ATTENTION + QWEN2_MLP)
CODEC = "int8"
WORKERS = {  # id: (specialty, file)
    "py-1": ("python_expert", "python_a"), "py-2": ("python_expert", "python_b"),
    "sql-1": ("sql_expert", "sql"), "docs-1": ("docs_expert", "docs")}


def slices() -> tuple[dict[str, list], dict[str, list]]:
    """Training rows per file and held-out rows per specialty (MBPP's test ids for python,
    Spider dev for sql, the end of the file for docs)."""
    python = read_rows(DATA / "python.jsonl")
    sql = read_rows(DATA / "sql.jsonl")
    docs = read_rows(DATA / "docs.jsonl")
    train = {"python_a": python[510:550], "python_b": python[550:590], "sql": sql[:40],
             "docs": docs[:40]}
    dev = [r for r in sql if r.get("split") == "dev"]
    held = {"python_expert": python[10:26], "sql_expert": dev[:16], "docs_expert": docs[-16:]}
    return train, held


def until(predicate, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.2)


class Coordinator:
    """The coordinator subprocess and an HTTP client that speaks to it."""

    def __init__(self, root: Path, base: Path, port: int) -> None:
        self.root, self.base, self.port = root, base, port
        self.url = f"http://127.0.0.1:{port}"
        self.env = {**os.environ, "PYTHONPATH": SRC, "THINWIRE_TOKEN": TOKEN}
        self.launch()

    def start(self) -> None:
        self.launch()
        self.ready()

    def launch(self) -> None:
        cmd = [sys.executable, "-m", "thinwire.cli", "coordinator", "--experts", "--port",
               str(self.port), "--state-dir", str(self.root / "state"), "--base-model",
               str(self.base), "--codec", CODEC, "--lora-targets", TARGETS,
               "--round-timeout", "8", "--monitor-every", "0.5",
               "--prompt-loss"]  # experts learn prompts: loss routing
        self.log = open(self.root / "coordinator.log", "a")
        self.proc = subprocess.Popen(cmd, env=self.env, stderr=self.log)

    def ready(self) -> None:
        until(self.healthy, 90, "coordinator start")

    def healthy(self) -> bool:
        assert self.proc.poll() is None, (self.root / "coordinator.log").read_text()
        try:
            return httpx.get(f"{self.url}/v1/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)

    def call(self, method: str, path: str, token: str = TOKEN, headers: dict | None = None,
             **kw) -> httpx.Response:
        return httpx.request(method, self.url + path, timeout=60,
                             headers={"Authorization": f"Bearer {token}", **(headers or {})},
                             **kw)

    def get(self, path: str, **kw):
        r = self.call("GET", path, **kw)
        assert r.status_code == 200, r.text
        return r.json()

    def worker(self, wid: str, specialty: str, dataset: Path) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "thinwire.cli", "worker", "--coordinator-url", self.url,
               "--worker-id", wid, "--specialty", specialty, "--dataset", str(dataset),
               "--base-model", str(self.base), "--duration", "8", "--sync-interval", "1.5",
               "--speed-factor", "3",  # sleeps 2/3 of the time: four workers share 2 cores
               "--lr", "1e-2", "--max-length", "160", "--token", TOKEN, "--retry-for", "30",
               "--out", str(self.root / "events" / wid), "--monitor-every", "0.5"]
        log = open(self.root / f"{wid}.log", "w")
        return subprocess.Popen(cmd, env=self.env, stderr=log)


def register(co, wid: str, specialty: str = "probe_expert", **change):
    base = load_base(co.base)
    body = {"worker_id": wid, "session": "probe", "specialty": specialty,
            "base": base.fingerprint, "centroid": [1e3] * base.model.config.hidden_size,
            "count": 1, **change}
    return co.call("POST", "/v1/workers", json=body)


def adapter(co, wid: str) -> tuple[dict[str, torch.Tensor], int]:
    r = co.call("GET", "/v1/experts/adapter", params={"worker_id": wid})
    assert r.status_code == 200, r.text
    return {t.name: decode(t) for t in parse_update(r.content).tensors}, \
        int(r.headers["x-thinwire-version"])


def upload(wid: str, tensors: dict, seq: int, version: int, codec: str = CODEC,
           nan: bool = False, role: str = "adapter") -> bytes:
    payloads = [make_codec(codec).encode(t, None, n) for n, t in tensors.items()]
    for payload in payloads:
        payload.role = role
    if nan:  # an int8 payload whose scale is NaN: well-formed, decodes to NaN
        payloads[0].buffers[-1] = torch.tensor([float("nan")])
    return serialize_update(Update(node_id=wid, kind="delta", seq=seq, base_version=version,
                                   num_samples=8, tensors=payloads))


def routed(co, held: dict, method: str | None = None) -> dict[str, float]:
    """{specialty: share of its held-out prompts /v1/route sends to its expert}."""
    body = {} if method is None else {"method": method}
    out = {}
    for specialty, rows in held.items():
        replies = [co.call("POST", "/v1/route", json={"prompt": r["prompt"], **body}).json()
                   for r in rows]
        assert all(r["method"] == (method or "centroid") for r in replies), replies[0]
        out[specialty] = sum(r["expert"] == specialty for r in replies) / len(rows)
    return out
