"""`thinwire swarm`: one OS process per peer on this machine, then one results row.

The launcher writes the config (`swarm.json`) and the peers' addresses and process ids
(`peers.json`, with each peer's command line, so a killed peer can be started again by hand),
starts the peers, follows the run's `training.log`, and when they are done builds the row from
the stats every peer incarnation wrote (`node-i/stats-<session>.json`): the ledger bytes of
all peers, the bytes counted on their sockets, who left and who came back.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..config.training import run_common, run_extras
from ..errors import require
from ..obs.events import EventLog, to_tensorboard
from ..obs.ledger import LinkLedger
from ..obs.record import record
from ..obs.results import append_row
from .config import SwarmConfig
from .protocol import SwarmError


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def addresses(cfg: SwarmConfig) -> list[str]:
    """ipc:// sockets in a fresh short folder (unix socket paths are short), or tcp:// ports."""
    if cfg.transport == "ipc":
        folder = tempfile.mkdtemp(prefix="tw-")
        return [f"ipc://{folder}/node-{i}" for i in range(cfg.nodes)]
    return [f"tcp://{cfg.host}:{free_port(cfg.host)}" for _ in range(cfg.nodes)]


def peer_command(index: int, peers: list[str], config: Path) -> list[str]:
    return [sys.executable, "-m", "thinwire.swarm.cli", "peer", "--id", str(index),
            "--peers", ",".join(peers), "-c", str(config)]


class Follow:
    """Echo the lines a file gains (the run's training.log) while the peers run."""

    def __init__(self, path: Path, echo: bool) -> None:
        self.path, self.echo, self.at = path, echo, path.stat().st_size if path.exists() else 0

    def __call__(self) -> None:
        if not (self.echo and self.path.exists()):
            return
        with open(self.path) as f:
            f.seek(self.at)
            text = f.read()
        cut = text.rfind("\n") + 1
        self.at += len(text[:cut].encode())
        if cut:
            print(text[:cut], end="", file=sys.stderr, flush=True)


def launch(cfg: SwarmConfig, echo: bool = True) -> dict[str, Any]:
    """Run the swarm to the end; append and return its results row."""
    if cfg.tensorboard is not None:  # written from events.jsonl at the end: fail now
        require("tensorboard", "tensorboard", "--tensorboard")
    run_dir = Path(cfg.out) / cfg.name()
    run_dir.mkdir(parents=True, exist_ok=True)
    config = run_dir / "swarm.json"
    config.write_text(cfg.model_dump_json(indent=1))
    peers = addresses(cfg)
    events = EventLog(run_dir, cfg.name(), fresh=not cfg.resume, shared=True)  # peers append
    follow = Follow(run_dir / "training.log", echo)
    started, procs = time.time(), []
    try:
        for i in range(cfg.nodes):
            log = open(run_dir / f"peer-{i}.log", "ab")
            procs.append(subprocess.Popen(peer_command(i, peers, config), stdout=log,
                                          stderr=log))
        (run_dir / "peers.json").write_text(json.dumps(
            {"peers": peers, "pids": [p.pid for p in procs],
             "commands": [peer_command(i, peers, config) for i in range(cfg.nodes)]},
            indent=1))
        wait(procs, run_dir, follow)
    finally:
        for p in procs:  # interrupted or failed: no peer outlives its launcher
            if p.poll() is None:
                p.terminate()
        if cfg.transport == "ipc":
            shutil.rmtree(Path(peers[0].removeprefix("ipc://")).parent, ignore_errors=True)
    row = swarm_row(cfg, read_stats(run_dir, started), time.time() - started)
    events.emit("end", record={k: v for k, v in row.items() if k != "history"})
    events.close()
    if cfg.tensorboard is not None:
        to_tensorboard(events.path, cfg.tensorboard)
    append_row(Path(cfg.out) / "results.jsonl", row)
    return row


def wait(procs: list[subprocess.Popen], run_dir: Path, follow: Follow) -> None:
    """Until every peer exits. A peer killed by a signal is the others' business (they carry
    on); one that fails on its own stops the swarm with its last words."""
    while True:
        running = [p.poll() is None for p in procs]
        follow()
        failed = [i for i, p in enumerate(procs) if p.returncode is not None and p.returncode > 0]
        if failed:
            for other in procs:
                if other.poll() is None:
                    other.send_signal(signal.SIGTERM)
            i = failed[0]
            raise SwarmError(f"peer {i} failed (exit {procs[i].returncode}): "
                             f"{last_line(run_dir / f'peer-{i}.log')}")
        if not any(running):
            return
        time.sleep(0.2)


def last_line(path: Path) -> str:
    lines = [x for x in path.read_text(errors="replace").splitlines() if x.strip()]
    return lines[-1] if lines else "(no output)"


def read_stats(run_dir: Path, since: float = 0.0) -> list[dict[str, Any]]:
    """Every peer incarnation's stats of this launch, lowest node first, finished first."""
    out = []
    for path in sorted(run_dir.glob("node-*/stats-*.json")):
        stats = json.loads(path.read_text())
        if stats["time"] >= since:
            out.append(stats)
    return sorted(out, key=lambda s: (int(s["node"].split("-")[1]), not s["finished"]))


def swarm_row(cfg: SwarmConfig, stats: list[dict[str, Any]], elapsed: float) -> dict[str, Any]:
    """The results row: the reference peer's evaluation (`accuracy_of`; every peer's in
    `peer_test_accuracy`, since gossip's models differ), everyone's bytes and counts, and the
    slowest finished peer's simulated communication time."""
    done = [s for s in stats if s["finished"]]
    if not done:
        raise SwarmError("no peer finished the run")
    ref, gossip = done[0], cfg.exchange == "gossip"  # gossip: models differ, not checked
    ledger = LinkLedger(hub="")
    for s in stats:
        ledger.absorb(LinkLedger.from_state(s["ledger"]))
    count = {k: sum(s["counts"][k] for s in stats) for k in stats[0]["counts"]}
    sock = {k: sum(s["socket"][k] for s in stats) for k in stats[0]["socket"]}
    totals = {**ledger.totals(), "sent": count["uploads"], "skipped": count["skipped"]}
    history = merged_history(ref["records"], stats)
    common = run_common(cfg, ref["model"], cfg.nodes, ref["codec"], history[-1])
    extras = run_extras(cfg, history, ref["step"], ledger.wire_total,
                        max(s["counts"]["comm_time_s_sim"] for s in done),
                        max(s["counts"]["compute_time_s"] for s in done), elapsed,
                        count["samples"])
    # like the simulator's: samples over the time in steps (compute and exchange), the
    # slowest peer's; evaluation and start-up are in wall_time_s only
    steps = {s["node"]: s["counts"]["compute_time_s"] + s["counts"]["wait_time_s"] for s in done}
    extras.update(wall_time_s=max(s["train_time_s"] for s in done),
                  samples_per_s=count["samples"] / max(steps.values()))
    return record(
        "swarm", common, totals, **extras, transport=cfg.transport,
        bytes_socket_total=sock["bytes_socket_sent"],
        bytes_socket_received=sock["bytes_socket_received"],
        bytes_socket_framing=sock["bytes_framing_sent"], bytes_update_wire=count["update_bytes"],
        peer_samples_per_s=sum(s["counts"]["samples"] / steps[s["node"]] for s in done)
        / len(done), comm_wait_s=max(s["counts"]["wait_time_s"] for s in done),
        exchange=cfg.exchange, gossip_fanout=cfg.gossip_fanout if gossip else None,
        accuracy_of=ref["node"], peer_test_accuracy={
            s["node"]: s["records"][-1]["test_accuracy"] for s in done if s["records"]},
        models_agree=None if gossip else len({s["final_hash"] for s in done}) == 1,
        peers_finished=[s["node"] for s in done], peers_left=merged_events(stats, "departures"),
        peers_joined=merged_events(stats, "arrivals"),
        malformed_frames=sum(s["malformed"] for s in stats),
        rejected_updates=count["rejected_updates"], resyncs=count["resyncs"],
        hash_checks=count["hash_checks"], history=history)


def merged_history(records: list[dict[str, Any]], stats: list[dict[str, Any]]) -> list[dict]:
    """The reference peer's epochs, with bytes, uploads and skips summed over all peers."""
    out = []
    for r in records:
        mine = [x for s in stats for x in s["records"] if x["epoch"] == r["epoch"]]
        row = dict(r)
        for key in ("bytes_wire_cum", "bytes_wire_epoch", "uploads", "skipped"):
            row[key] = sum(x[key] for x in mine)
        row["train_loss"] = sum(x["train_loss"] for x in mine) / len(mine)
        out.append(row)
    return out


def merged_events(stats: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Departures (or arrivals) as the peers saw them: one entry per node and session (peers
    may notice at different steps, gossip's especially), the first report's step and time,
    and who saw it."""
    seen: dict[tuple[str, int], dict[str, Any]] = {}
    for s in stats:
        for e in s[key]:
            entry = seen.setdefault((e["node"], e.get("session", e["step"])),
                                    {**e, "seen_by": []})
            entry["time"] = min(entry["time"], e["time"])
            if e["step"] < entry["step"]:
                entry.update(step=e["step"], epoch=e["epoch"])
            entry["seen_by"].append(s["node"])
    return sorted(seen.values(), key=lambda e: e["time"])


__all__ = ["addresses", "launch", "peer_command", "read_stats", "swarm_row"]
