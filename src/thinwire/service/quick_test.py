"""`thinwire quick-test`: a coordinator and N workers as separate processes on 127.0.0.1.

    python -m thinwire.service.quick_test [--workers 2] [--rounds 15] [--preset fedavg] [--json]

Runs N rounds on the embedded MNIST subset (or --config / --set), prints the coordinator's
progress, then a summary table; `--json` prints the final round row (test_accuracy, rounds,
bits_up, ...) as the last line. The design's quick_test.sh.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from ..errors import ThinwireError
from ..obs.results import format_table, read_rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def module_cmd(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", f"thinwire.service.{module}", *args]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise ThinwireError(f"coordinator exited with code {proc.returncode} at startup")
        try:
            if httpx.get(f"{url}/v1/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise ThinwireError(f"coordinator at {url} not healthy after {timeout:.0f}s")


def summary(rows: list[dict[str, Any]], status: dict[str, Any]) -> str:
    lines = [["round", "acc %", "loss", "sent", "skipped", "Mbit up (cum)", "Mbit down (cum)",
              "ratio total"]]
    for r in rows:
        lines.append([str(r["round"]), f"{100 * r['test_accuracy']:.2f}", f"{r['test_loss']:.4f}",
                      str(len(r["selected"])), str(len(r["skipped"])),
                      f"{r['bits_up'] / 1e6:.2f}", f"{r['bits_down'] / 1e6:.2f}",
                      f"{r['compression_ratio_total']:.1f}"
                      if r.get("compression_ratio_total") else "-"])
    out = [format_table(lines)]
    workers = ", ".join(f"{w['id']}:{w['state']}(sent {w['sent']}, skipped {w['skipped']})"
                        for w in status["workers"])
    out.append(f"workers: {workers}")
    out.append(f"uploads {status['uploads']}, skipped {status['skipped']}, "
               f"up {status['bytes_up'] / 1e6:.2f} MB, down {status['bytes_down'] / 1e6:.2f} MB")
    return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="thinwire quick-test", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--preset", "--mode", dest="preset",
                   help="fedavg | laq8 | bbit | bin (default: config's, fedavg)")
    p.add_argument("--config", type=Path, help="flq_config JSON/YAML")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--state-dir", type=Path, help="default: a temporary folder")
    p.add_argument("--timeout", type=float, default=900.0, help="give up after SEC seconds")
    p.add_argument("--json", action="store_true", help="print the final row as JSON last")
    return p


def quick_test_main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.workers < 1 or args.rounds < 1:
        raise ThinwireError("--workers and --rounds must be >= 1")
    tmp = None
    if args.state_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="thinwire-quick-")
        args.state_dir = Path(tmp.name)
    port, token = free_port(), secrets.token_hex(12)
    url = f"http://127.0.0.1:{port}"
    sets = [f"total_workers={args.workers}", f"max_rounds={args.rounds}", *args.set]
    if args.preset:
        sets.append(f"preset={args.preset}")
    coord_args = ["--port", str(port), "--state-dir", str(args.state_dir)]
    if args.config:
        coord_args += ["--config", str(args.config)]
    for s in sets:
        coord_args += ["--set", s]
    env = {**os.environ, "THINWIRE_TOKEN": token}
    procs: list[subprocess.Popen] = []
    log = open(args.state_dir / "workers.log", "w")
    try:
        coord = subprocess.Popen(module_cmd("coordinator", *coord_args), env=env)
        procs.append(coord)
        wait_healthy(url, coord)
        for i in range(args.workers):
            procs.append(subprocess.Popen(module_cmd(
                "worker", "--coordinator-url", url, "--worker-id", f"worker-{i}"),
                env=env, stdout=log, stderr=subprocess.STDOUT))
        status = wait_done(url, coord, args.timeout)
    finally:
        for p in procs[1:]:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        if procs and procs[0].poll() is None:
            procs[0].terminate()
            procs[0].wait(timeout=30)
        log.close()
    rows = [r for r in read_rows(args.state_dir / "results.jsonl") if "round" in r] \
        if (args.state_dir / "results.jsonl").exists() else []
    if not rows:
        raise ThinwireError("no evaluated round; see the coordinator output above")
    print(summary(rows, status))
    final = {k: v for k, v in rows[-1].items() if k != "history"}
    final["rounds"] = final["round"]
    if args.json:
        print(json.dumps(final))
    if tmp is not None:
        tmp.cleanup()
    return 0


def wait_done(url: str, coord: subprocess.Popen, timeout: float) -> dict[str, Any]:
    end, status = time.monotonic() + timeout, {}
    while time.monotonic() < end:
        try:
            status = httpx.get(f"{url}/v1/status", timeout=10).json()
        except httpx.TransportError:
            if coord.poll() is not None:
                break
        else:
            hist = status.get("accuracy_history") or []
            if status.get("done") and hist and hist[-1]["round"] >= status["max_rounds"]:
                return status
        time.sleep(0.5)
    if not status:
        raise ThinwireError("coordinator did not answer /v1/status")
    if not status.get("done"):
        raise ThinwireError(f"training not done after {timeout:.0f}s (round "
                            f"{status.get('round')}); see {url}/v1/status")
    return status


if __name__ == "__main__":
    from ..errors import run_main

    sys.exit(run_main(quick_test_main))
