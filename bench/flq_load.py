"""Load test of the FLQ coordinator: N concurrent async clients push ~1 MB updates.

    python bench/flq_load.py [--clients 64] [--duration 30] [--json]

Starts a real coordinator (subprocess, async schedule, a synthetic task whose MLP has ~270k
fp32 parameters, so one update is ~1 MB on the wire), then N httpx async clients that each
register and push updates back to back for --duration seconds; every 3rd push is re-sent
with the same (worker, round, seq) to exercise idempotency. Reports updates/s, p50/p99 push
latency, the coordinator's peak RSS (VmHWM), and checks that the coordinator applied exactly
the acknowledged updates: none lost, none applied twice.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import httpx
import torch

from thinwire.codecs import make_codec
from thinwire.service.quick_test import free_port, wait_healthy
from thinwire.wire import Update, serialize_update

TOKEN = "load-test-token"


def start_coordinator(state_dir: str, port: int, clients: int, classes: int) -> subprocess.Popen:
    # mlp(8 -> 32 -> classes): with 8192 classes ~270k fp32 parameters, ~1 MB per update
    # (a wide output instead of a wide input keeps the synthetic task generator small)
    sets = ["schedule=async", f"total_workers={clients}", "max_rounds=1000000",
            "task=synthetic",
            f"task_args={{n_samples: {2 * classes}, num_classes: {classes}, dim: 8}}",
            "max_staleness=1000000000", "eval_every=1000000", "commit_every=1"]
    cmd = [sys.executable, "-m", "thinwire.service.coordinator", "--port", str(port),
           "--state-dir", state_dir, "--quiet"]
    for s in sets:
        cmd += ["--set", s]
    return subprocess.Popen(cmd, env={**os.environ, "THINWIRE_TOKEN": TOKEN})


async def client(i: int, http: httpx.AsyncClient, layout: dict, stop: float,
                 out: dict) -> None:
    wid = f"load-{i}"
    r = await http.post("/v1/workers", json={"worker_id": wid, "session": f"s{i}"})
    r.raise_for_status()
    key = {"X-Thinwire-Worker-Key": r.json().get("worker_key", "")}
    enc = make_codec("none")
    gen = torch.Generator().manual_seed(i)
    tensors = [enc.encode(torch.randn(shape, generator=gen) * 1e-6, None, name)
               for name, shape in layout.items()]
    seq, version = 0, 0
    while time.monotonic() < stop:
        seq += 1
        body = serialize_update(Update(node_id=wid, tensors=tensors, round=version, seq=seq,
                                       kind="delta", num_samples=1, base_version=version))
        for attempt in range(2 if seq % 3 == 0 else 1):
            t0 = time.perf_counter()
            r = await http.post("/v1/updates", content=body, headers=key)
            out["latency"].append(time.perf_counter() - t0)
            out["bytes"] += len(body)
            if r.status_code != 200:
                out["errors"].append(f"{r.status_code} {r.text[:200]}")
                continue
            answer = r.json()
            out[answer["status"]] += 1
            version = answer["version"]


async def run_clients(url: str, n: int, layout: dict, duration: float) -> dict:
    out = {"latency": [], "errors": [], "accepted": 0, "duplicate": 0, "bytes": 0}
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=300,
                                 headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        stop = time.monotonic() + duration
        start = time.monotonic()
        await asyncio.gather(*(client(i, http, layout, stop, out) for i in range(n)))
        out["wall_s"] = time.monotonic() - start
    return out


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--classes", type=int, default=8192, help="MLP outputs (8192 -> ~1 MB)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="flq-load-") as state_dir:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        coord = start_coordinator(state_dir, port, args.clients, args.classes)
        try:
            wait_healthy(url, coord)
            from thinwire.tasks import build_model

            model = build_model("mlp", args.classes, (8,))
            layout = {n: tuple(t.shape) for n, t in model.named_parameters()}
            out = asyncio.run(run_clients(url, args.clients, layout, args.duration))
            status = httpx.get(f"{url}/v1/status", timeout=60).json()
            rss = peak_rss_mb(coord.pid)
        finally:
            coord.terminate()
            coord.wait(timeout=60)
    lat = sorted(out["latency"])
    result = {
        "clients": args.clients, "duration_s": round(out["wall_s"], 1),
        "update_bytes": out["bytes"] // max(len(lat), 1),
        "accepted": out["accepted"], "duplicates_answered": out["duplicate"],
        "errors": len(out["errors"]), "applied_by_coordinator": status["applied_updates"],
        "lost_or_double": status["applied_updates"] - out["accepted"],
        "updates_per_s": round(out["accepted"] / out["wall_s"], 1),
        "MB_per_s": round(out["bytes"] / out["wall_s"] / 1e6, 1),
        "p50_ms": round(1000 * statistics.median(lat), 1) if lat else None,
        "p99_ms": round(1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], 1) if lat else None,
        "coordinator_peak_rss_mb": round(rss, 1), "cpus": os.cpu_count(),
    }
    if out["errors"]:
        result["first_error"] = out["errors"][0]
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))
    return 0 if result["lost_or_double"] == 0 and not out["errors"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
