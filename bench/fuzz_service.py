"""Long fuzz run against a live coordinator process: structured and mutated requests.

    python bench/fuzz_service.py [--requests 20000] [--seed 0] [--seconds 0] [--json]

Starts a coordinator (subprocess, 127.0.0.1, token, the fuzz config of
thinwire.service.fuzz_check), registers a silent `victim` worker (so no round can close)
and fuzz workers, then sends --requests requests built by thinwire.service.fuzz (JSON
bodies with fields replaced, Update headers and tensors mutated, near-miss ids, tokens,
keys and paths, ~2% raw malformed HTTP). Checks: no 5xx, no answer over --max-latency,
RSS growth (VmRSS of the coordinator, after the setup), the model unchanged (a pull's hash,
every 500 requests), and after the run kill -9 plus a restart that serves the same model.
Prints counts of status codes, max latency, RSS growth and whether the restart worked.
Exits 1 on any problem.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

from thinwire.service.fuzz_check import FUZZ_SETS, FuzzSession
from thinwire.service.quick_test import free_port, wait_healthy

TOKEN = "fuzz-token"
SYNTH = ["task=synthetic", "task_args={n_samples: 400, num_classes: 4, dim: 8}"]


def start(state_dir: str, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "thinwire.service.coordinator", "--port", str(port),
           "--state-dir", state_dir, "--quiet"]
    for s in [*SYNTH, *FUZZ_SETS]:
        cmd += ["--set", s]
    proc = subprocess.Popen(cmd, env={**os.environ, "THINWIRE_TOKEN": TOKEN},
                            stderr=subprocess.DEVNULL)  # uvicorn warns on each bad request
    wait_healthy(f"http://127.0.0.1:{port}", proc)
    return proc


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS:")).split()[1])


def run(requests: int, seed: int, seconds: float, max_latency: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="tw-fuzz-") as state:
        port = free_port()
        proc = start(state, port)
        try:
            session = FuzzSession(f"http://127.0.0.1:{port}", TOKEN, lambda: rss_kib(proc.pid),
                                  seed=seed, max_latency=max_latency)
            t0 = time.monotonic()
            report = session.run(requests, seconds)
            out = {**report.summary(), "wall_s": round(time.monotonic() - t0, 1),
                   "requests_per_s": round(report.requests / (time.monotonic() - t0), 1)}
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc = start(state, port)
            out["restart_ok"] = session.pull_hash() == session.model_hash
            session.close()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seconds", type=float, default=0, help="stop early after this long")
    ap.add_argument("--max-latency", type=float, default=2.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    report = run(args.requests, args.seed, args.seconds, args.max_latency)
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:>18}: {value}")
    return 1 if report["problems"] or not report["restart_ok"] else 0


if __name__ == "__main__":
    sys.exit(main())
