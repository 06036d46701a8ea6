"""The swarm runtime: real peer processes over ZeroMQ on this machine (ipc and tcp).

Process start-up (torch imports) dominates on a small machine, so the runs are few and each
checks several things: learning, agreement of the models, ledger bytes against the bytes
counted on the sockets, malformed frames, the simulator's result for the same config, resume,
and a peer killed with SIGKILL that comes back.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

zmq = pytest.importorskip("zmq")

from thinwire.errors import ConfigError  # noqa: E402
from thinwire.exchange.transport import TransportError  # noqa: E402
from thinwire.exchange.zmq import Delivery, ZmqTransport  # noqa: E402
from thinwire.obs.ledger import LinkLedger  # noqa: E402
from thinwire.sim.config import RunConfig  # noqa: E402
from thinwire.sim.config import validate as sim_config  # noqa: E402
from thinwire.sim.experiment import run_experiment  # noqa: E402
from thinwire.swarm.config import validate  # noqa: E402
from thinwire.swarm.launch import launch, read_stats  # noqa: E402
from thinwire.swarm.protocol import SwarmError  # noqa: E402
from thinwire.swarm.schedule import Schedule  # noqa: E402

SYNTH = {"task": "synthetic", "task_args": {"n_samples": 400, "num_classes": 4, "dim": 8},
         "nodes": 2, "epochs": 2, "batch_size": 16, "lr": 0.05, "threads": 1,
         "checkpoint_every": 1}
SWARM_KEYS = ("transport", "peer_timeout")


def ipc_pair(tmp_path: Path, **kw) -> tuple[ZmqTransport, ZmqTransport]:
    addrs = [f"ipc://{tmp_path}/a", f"ipc://{tmp_path}/b"]
    return ZmqTransport(0, addrs, **kw), ZmqTransport(1, addrs, **kw)


def receive(t: ZmqTransport, count: int, others: list[ZmqTransport], timeout: float = 10.0):
    got, end = [], time.monotonic() + timeout
    while len(got) < count and time.monotonic() < end:
        got += [d for d in t.poll(0.05) if isinstance(d, Delivery)]
        for o in others:
            o.poll(0)
    return got


def test_transport_chunks_acks_and_counts_every_byte(tmp_path):
    a, b = ipc_pair(tmp_path, chunk_bytes=1024)
    try:
        a.send("node-0", "node-1", b"x" * 5000, raw=20000, msg=2, step=7, tag=9)
        a.send("node-0", "node-1", b"hi", kind="control", msg=1)
        got = receive(b, 2, [a])
        assert [(d.kind, d.step, d.tag, len(d.body)) for d in got] == [(2, 7, 9, 5000),
                                                                        (1, 0, 0, 2)]
        a.flush(5.0)
        assert not a.unacked[1] and a.counts["acks"] == 2
        for t in (a, b):  # every byte a socket sent is in that peer's ledger
            t_ledger = sum(x["wire"] for x in t.ledger.per_link())
            assert t_ledger == t.counts["bytes_socket_sent"] > 0
        assert a.counts["bytes_socket_sent"] == b.counts["bytes_socket_received"]
        assert a.counts["frames_sent"] == 2 * (5 + 1)  # five chunks and one message, 2 frames
    finally:
        a.close()
        b.close()


def test_malformed_frames_are_counted_and_dropped(tmp_path):
    a, b = ipc_pair(tmp_path)
    rogue = zmq.Context.instance().socket(zmq.DEALER)
    try:
        rogue.connect(f"ipc://{tmp_path}/b")
        rogue.send_multipart([b"one frame"])
        rogue.send_multipart([b"X" * 54, b"bad magic"])
        rogue.send_multipart([a_envelope(), b"claims to be node-0"])  # wrong socket identity
        a.send("node-0", "node-1", b"real", msg=2)
        got = receive(b, 1, [a])
        assert [d.body for d in got] == [b"real"]
        end = time.monotonic() + 5
        while b.counts["malformed_frames"] < 3 and time.monotonic() < end:
            b.poll(0.05)
        assert b.counts["malformed_frames"] == 3
    finally:
        rogue.close(linger=0)
        a.close()
        b.close()


def a_envelope() -> bytes:
    from thinwire.exchange.zmq import Envelope

    return Envelope(2, 0, 12345, 1, total=19).pack()


def test_a_full_queue_fails_loudly_instead_of_dropping(tmp_path):
    nobody = f"ipc://{tmp_path}/nobody"
    a = ZmqTransport(0, [f"ipc://{tmp_path}/a", nobody], hwm=1, send_timeout=0.2)
    try:
        with pytest.raises(TransportError, match="high-water mark"):
            for _ in range(5):
                a.send("node-0", "node-1", b"x" * 100, msg=2)
    finally:
        a.close()


def test_swarm_config_refuses_what_a_swarm_cannot_do():
    for bad, text in (({"centralized": True}, "central"), ({"down_codec": "int8"}, "down_codec"),
                      ({"node_batching": "vmap"}, "vmap"), ({"nodes": 1}, "nodes")):
        with pytest.raises(ConfigError, match=text):
            validate({**SYNTH, **bad})
    assert validate(SYNTH).name().startswith("swarm-")
    assert validate(SYNTH).digest() == validate({**SYNTH, "resume": True}).digest()


def test_gossip_schedule_and_what_gossip_refuses():
    for nodes, k in ((4, 2), (16, 3)):
        schedule = Schedule(nodes, 0, k)
        for step in range(20):  # every peer sends K and hears from K; all agree on it
            targets = {i: schedule.targets(step, i) for i in range(nodes)}
            assert all(len(t) == k and i not in t for i, t in targets.items())
            assert all(schedule.sources(step, i) == {j for j in targets if i in targets[j]}
                       for i in range(nodes))
        assert Schedule(nodes, 0, k).shifts(7) == schedule.shifts(7)
    gossip = {**SYNTH, "nodes": 4, "exchange": "gossip"}
    for bad, text in (({"gossip_fanout": 3}, "use --exchange all"),
                      ({"codec": "laq"}, "stateless codec"),
                      ({"skipped": "accumulate"}, "reuse or drop")):
        with pytest.raises(ConfigError, match=text):
            validate({**gossip, **bad})
    assert validate(gossip).digest() != validate({**gossip, "gossip_fanout": 1}).digest()


def inject_garbage(run_dir: Path, stop: threading.Event) -> None:
    """Connect to node-0 as a stranger and send frames that do not parse."""
    while not (run_dir / "peers.json").exists() and not stop.is_set():
        time.sleep(0.05)
    if stop.is_set():
        return
    address = json.loads((run_dir / "peers.json").read_text())["peers"][0]
    bound = Path(address.removeprefix("ipc://"))  # connect once node-0 listens, so the
    while not bound.exists() and not stop.is_set():  # junk lands while it trains
        time.sleep(0.01)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.connect(address)
    for junk in ([b"junk"], [b"Y" * 54, b"x"], [b"TZ", b"", b""]):
        sock.send_multipart(junk)
    stop.wait(30)
    sock.close(linger=0)


@pytest.fixture(scope="module")
def ipc_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("swarm")
    cfg = validate({**SYNTH, "out": out, "transport": "ipc"})
    stop = threading.Event()
    garbage = threading.Thread(target=inject_garbage, args=(out / cfg.name(), stop))
    garbage.start()
    try:
        row = launch(cfg, echo=False)
    finally:
        stop.set()
        garbage.join()
    return cfg, row


def test_ipc_swarm_learns_agrees_and_counts_bytes_truly(ipc_run):
    cfg, row = ipc_run
    assert row["runtime"] == "swarm" and row["test_accuracy"] > 0.9  # chance is 0.25
    assert row["models_agree"] and row["peers_finished"] == ["node-0", "node-1"]
    ledger = row["bytes_wire_total"] + row["bytes_control"]
    assert abs(ledger - row["bytes_socket_received"]) <= 0.01 * row["bytes_socket_received"]
    assert ledger == row["bytes_socket_total"]
    assert row["malformed_frames"] >= 3 and row["hash_checks"] > 0
    lines = (cfg.out / "results.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["run_name"] == row["run_name"]
    assert "epoch 2:" in (cfg.out / cfg.name() / "training.log").read_text()
    events = [json.loads(e) for e in  # one stream, every line whole, for the dashboard
              (cfg.out / cfg.name() / "events.jsonl").read_text().splitlines()]
    for kind in ("step", "epoch", "resources"):
        assert {e.get("node") for e in events if e["type"] == kind} == {"node-0", "node-1"}
    assert [e["type"] for e in events].count("end") == 1 and events[-1]["type"] == "end"


def test_swarm_matches_the_simulator_on_the_same_config(ipc_run, tmp_path):
    cfg, row = ipc_run
    keys = {k: v for k, v in cfg.model_dump().items()
            if k in RunConfig.model_fields and k not in ("out", "run_name")}
    sim = run_experiment(sim_config({**keys, "out": tmp_path}), progress=False, log=None)
    assert sim["test_accuracy"] == pytest.approx(row["test_accuracy"], abs=1e-9)
    assert sim["test_loss"] == pytest.approx(row["test_loss"], rel=1e-4)
    assert sim["bytes_up_wire"] * (cfg.nodes - 1) == row["bytes_wire_total"]  # all-to-all
    assert sim["bytes_up_wire"] == row["bytes_update_wire"]  # the very same Update bytes


def test_resume_continues_from_the_checkpoints(ipc_run):
    cfg, first = ipc_run
    row = launch(validate({**cfg.model_dump(), "resume": True, "epochs": 3}), echo=False)
    assert [h["epoch"] for h in row["history"]] == [1, 2, 3]
    assert row["steps"] == first["steps"] * 3 // 2 and row["models_agree"]
    assert row["test_accuracy"] > 0.9
    assert "resumed from" in (cfg.out / cfg.name() / "training.log").read_text()


WARM = """
import sys
from thinwire.swarm.config import validate
from thinwire.swarm.peer import Peer
from thinwire.tasks import load_task
cfg = validate(__import__("json").loads(sys.argv[1]))
task = load_task(cfg.task)
print("ready", flush=True)
sys.stdin.readline()
Peer(cfg, 2, sys.argv[2].split(","), task=task).run()
"""


def wait_for(path: Path, text: str, timeout: float = 120.0) -> float:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists() and text in path.read_text(errors="replace"):
            return time.monotonic()
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in {path} after {timeout:.0f}s")


def test_tcp_swarm_survives_kill_9_and_the_peer_rejoins(tmp_path):
    # 4 epochs of 42 steps: the rejoin (~40 steps after the kill on an idle machine) must
    # land while the others still train, also on a loaded CI machine (2 epochs once did not)
    cfg = validate({"task": "mnist", "nodes": 3, "epochs": 4, "batch_size": 32, "threads": 1,
                    "checkpoint_every": 0, "transport": "tcp", "peer_timeout": 20,
                    "out": tmp_path})
    run_dir, result = tmp_path / cfg.name(), {}
    thread = threading.Thread(target=lambda: result.update(row=launch(cfg, echo=False)))
    thread.start()
    wait_for(run_dir / "peers.json", "pids")
    info = json.loads((run_dir / "peers.json").read_text())
    data = json.dumps(cfg.model_dump(mode="json"))
    warm = subprocess.Popen([sys.executable, "-c", WARM, data, ",".join(info["peers"])],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            stderr=open(tmp_path / "rejoin.log", "w"))
    try:
        assert warm.stdout.readline().strip() == "ready"
        wait_for(run_dir / "events.jsonl", '"node": "node-2"')
        os.kill(info["pids"][2], signal.SIGKILL)
        killed = time.monotonic()
        noticed = wait_for(run_dir / "training.log", "node-2 left", cfg.peer_timeout + 10)
        assert noticed - killed < cfg.peer_timeout
        warm.stdin.write("go\n")
        warm.stdin.flush()
        thread.join(300)
        assert warm.wait(60) == 0
    finally:
        if warm.poll() is None:
            warm.kill()
    row = result["row"]
    assert row["test_accuracy"] > 0.8 and row["models_agree"]
    assert row["peers_left"][0]["node"] == "node-2"
    assert set(row["peers_left"][0]["seen_by"]) == {"node-0", "node-1"}
    assert [j["node"] for j in row["peers_joined"]] == ["node-2"]
    assert row["peers_finished"] == ["node-0", "node-1", "node-2"]
    assert "rejoined at step" in (run_dir / "training.log").read_text()


def test_peers_refuse_a_swarm_with_another_config(tmp_path):
    """Two peers (threads here: only the hello runs) with different seeds each say which
    peer differs and stop."""
    from thinwire.swarm.peer import Peer

    folder = tmp_path / "ipc"
    folder.mkdir()
    peers = [f"ipc://{folder}/a", f"ipc://{folder}/b"]
    errors: list[str] = []

    def one(i: int) -> None:
        cfg = validate({**SYNTH, "seed": i, "out": tmp_path, "startup_timeout": 60})
        try:
            Peer(cfg, i, peers, echo=False).run()
        except SwarmError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=one, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert len(errors) == 2 and all("runs another config" in e for e in errors)


def swarm_in_threads(cfg, prepare=None) -> list[dict]:
    """Peers as threads of this process: cheap, for what does not need separate processes
    (built one after another, so every peer's initial model is the same)."""
    from thinwire.swarm.peer import Peer

    stats: list[dict] = [{}] * cfg.nodes
    with tempfile.TemporaryDirectory(prefix="tw-") as folder:
        peers = [Peer(cfg, i, [f"ipc://{folder}/{j}" for j in range(cfg.nodes)], echo=False)
                 for i in range(cfg.nodes)]
        if prepare is not None:
            prepare(peers)
        threads = [threading.Thread(target=lambda i=i: stats.__setitem__(i, peers[i].run()))
                   for i in range(cfg.nodes)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    return stats


@pytest.mark.parametrize("extra", [
    {"outer_steps": 2, "codec": "int8"},  # fedavg with DiLoCo's outer Nesterov step
    {"policy": "trigger", "codec": "topk(ratio=0.25)+int8", "error_feedback": True,
     "pack": True}])
def test_codecs_and_policies_mean_what_they_mean_in_the_simulator(tmp_path, extra):
    cfg = validate({**SYNTH, **extra, "nodes": 3, "checkpoint_every": 0, "out": tmp_path})
    stats = swarm_in_threads(cfg)
    keys = {k: v for k, v in cfg.model_dump().items()
            if k in RunConfig.model_fields and k not in ("out", "run_name")}
    # the swarm has no momentum correction: the simulator's sparsifier default must not add it
    sim = run_experiment(sim_config({**keys, "out": tmp_path, "momentum_correction": False}),
                         progress=False, log=None)
    last = stats[0]["records"][-1]
    assert (last["test_accuracy"], last["test_loss"]) == (sim["test_accuracy"], sim["test_loss"])
    assert sum(s["counts"]["uploads"] for s in stats) == sim["uploads"]
    assert sum(s["counts"]["skipped"] for s in stats) == sim["skipped_uploads"]
    assert sum(s["counts"]["update_bytes"] for s in stats) == sim["bytes_up_wire"]


def test_a_diverged_peer_takes_the_reference_state(tmp_path):
    """Peer 1's model is knocked off at step 3; the next hash check sees it and it takes
    peer 0's state, so the run ends with one model."""
    import torch

    cfg = validate({**SYNTH, "hash_every": 1, "checkpoint_every": 0, "out": tmp_path})

    def knock(peers):
        step = peers[1]._one_step

        def knocked() -> None:
            if peers[1].step == 3:
                with torch.no_grad():
                    next(iter(peers[1].params.values())).add_(0.01)
            step()

        peers[1]._one_step = knocked

    stats = swarm_in_threads(cfg, knock)
    assert stats[1]["counts"]["hash_mismatches"] >= 1 and stats[1]["counts"]["resyncs"] >= 1
    assert stats[0]["final_hash"] == stats[1]["final_hash"]


def test_ipc_gossip_swarm_sends_k_updates_per_step(tmp_path):
    """4 peers, fanout 2, on the shipped digits: each sends every update to 2 peers, the
    ledger and the sockets agree, and the record says whose accuracy it reports."""
    cfg = validate({"task": "mnist", "nodes": 4, "exchange": "gossip", "gossip_fanout": 2,
                    "epochs": 1, "batch_size": 32, "threads": 1, "checkpoint_every": 0,
                    "transport": "ipc", "out": tmp_path})
    row = launch(cfg, echo=False)
    assert (row["exchange"], row["gossip_fanout"], row["accuracy_of"]) == ("gossip", 2, "node-0")
    assert row["models_agree"] is None and row["hash_checks"] == 0
    assert row["test_accuracy"] == row["peer_test_accuracy"]["node-0"] > 0.6  # chance: 0.1
    assert min(row["peer_test_accuracy"].values()) > 0.6 and len(row["peer_test_accuracy"]) == 4
    assert row["bytes_wire_total"] == 2 * row["bytes_update_wire"]  # not N-1 = 3 copies
    ledger = row["bytes_wire_total"] + row["bytes_control"]
    assert ledger == row["bytes_socket_total"] == row["bytes_socket_received"]
    for s in read_stats(tmp_path / cfg.name()):  # every peer: 2 updates' bytes per step
        sent = LinkLedger.from_state(s["ledger"]).totals()
        assert s["counts"]["uploads"] == s["step"] == row["steps"]
        assert sent["up_wire"] == 2 * s["counts"]["update_bytes"]
        assert sent["up_wire"] + sent["control"] == s["socket"]["bytes_socket_sent"]
    assert "epoch 1:" in (tmp_path / cfg.name() / "training.log").read_text()


def test_gossip_carries_on_without_a_peer_that_leaves_and_takes_it_back(tmp_path):
    """Peer 3's sockets close at step 4 (as after kill -9): it is skipped in the schedule,
    every other peer notices (waiting for it or not); started again, it rejoins and all
    finish."""
    from thinwire.swarm.peer import Peer

    cfg = validate({**SYNTH, "nodes": 4, "exchange": "gossip", "epochs": 6,
                    "checkpoint_every": 0, "out": tmp_path})

    class Killed(Exception):
        pass

    def leave(peers):
        dead, run = peers[3], peers[3].run
        steps = {p: p._one_step for p in peers}

        def slow(p) -> None:
            """Steps slow enough for the restart to rejoin before the end; a peer asked for
            its state dawdles, so others may run ahead of its join notice (_skip_missed)."""
            if p is dead and p.step == 4:
                raise Killed  # run() closes the peer's sockets
            time.sleep(1.0 if p.net.requests else 0.05)
            steps[p]()

        def restart() -> dict:
            with pytest.raises(Killed):
                run()
            end = time.monotonic() + 20
            while any(3 in p.net.live for p in peers[:3]) and time.monotonic() < end:
                time.sleep(0.05)  # every other peer saw it go: restart
            return Peer(cfg, 3, dead.net.transport.addresses, echo=False).run()

        for p in peers:
            p._one_step = lambda p=p: slow(p)
        dead.run = restart

    stats = swarm_in_threads(cfg, leave)
    assert all(s["finished"] and s["step"] == stats[0]["step"] > 20 for s in stats)
    assert stats[3]["joined_at"] > 4
    for s in stats[:3]:
        assert [(d["node"], d["reason"]) for d in s["departures"]] == \
            [("node-3", "its socket closed")]
        assert [a["node"] for a in s["arrivals"]] == ["node-3"]
