import json
import subprocess
import sys

import pytest
import torch

from thinwire.errors import ConfigError
from thinwire.sim import sim as sim_module
from thinwire.sim.config import build_config, validate
from thinwire.sim.experiment import run_experiment
from thinwire.exchange.link import Link, LinkModel, parse_bandwidth
from thinwire.wire import serialize_update

SYNTH = {"task": "synthetic", "task_args": {"n_samples": 400, "num_classes": 4, "dim": 8},
         "nodes": 2, "epochs": 3, "batch_size": 16, "lr": 0.05, "checkpoint_every": 0}


def cfg(tmp_path, **kw):
    return validate({**SYNTH, "out": tmp_path, **kw})


def run(config):
    return run_experiment(config, progress=False, log=None)


def test_bandwidth_units_and_link_arithmetic():
    assert parse_bandwidth("10gbit") == 10e9
    assert parse_bandwidth("100mbit") == 1e8
    assert parse_bandwidth("12.5MB/s") == 1e8
    with pytest.raises(ConfigError):
        parse_bandwidth("fast")
    link = Link(up_bps=8e6, down_bps=16e6, latency_s=0.01)
    assert link.up_time(1_000_000) == pytest.approx(1.01)
    assert link.down_time(0) == 0.0
    model = LinkModel([link, Link(8e6, 8e6, 0.0)])
    # slowest upload (node 0: 1.01 s) + slowest download (node 1: 2 MB at 1 MB/s)
    assert model.step_time([1_000_000, 500_000], [2_000_000, 2_000_000]) == pytest.approx(3.01)
    # full duplex, peer to peer: node 0 max(up 1.01, down 0.01 + 4 MB at 2 MB/s = 2.01),
    # node 1 max(up 3 MB at 1 MB/s = 3.0, down 0.5) -> 3.0 (the star would say 3.0 + 2.01)
    assert model.exchange_time([1_000_000, 3_000_000], [4_000_000, 500_000]) == \
        pytest.approx(3.0)
    assert model.exchange_time([1_000_000, 0], [0, 1_000_000]) == pytest.approx(1.01)
    assert model.exchange_time([0, 0], [0, 0]) == 0.0
    ring = LinkModel.build(4, "8mbit")
    assert ring.ring_allreduce_time(4_000_000) == pytest.approx(2 * 3 * 1.0)
    with pytest.raises(ConfigError, match="bandwidths given"):
        LinkModel.build(3, "1gbit,2gbit")


def test_two_nodes_learn_a_separable_task(tmp_path):
    row = run(cfg(tmp_path, codec="topk(ratio=0.25)+int8", error_feedback=True))
    assert row["test_accuracy"] > 0.9  # chance is 0.25
    assert row["compression_ratio"] > 2  # small MLP: per-tensor metadata is a large share
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["run_name"] == row["run_name"]
    assert (tmp_path / row["run_name"] / "training.log").read_text().count("epoch") >= 3


def test_ledger_equals_serialized_message_sizes(tmp_path, monkeypatch):
    sizes = {"up": 0, "down": 0}

    def recording(update):
        data = serialize_update(update)
        sizes["down" if update.node_id == "aggregator" else "up"] += len(data)
        return data

    monkeypatch.setattr(sim_module, "serialize_update", recording)
    row = run(cfg(tmp_path, codec="int8", policy="trigger", epochs=1))
    assert sizes["up"] == row["bytes_up_wire"] > 0
    assert sizes["down"] * 1 == row["bytes_down_wire"] // 2  # one broadcast, two receivers
    assert row["bytes_wire_total"] == row["bytes_up_wire"] + row["bytes_down_wire"]


def test_same_seed_same_result_and_different_seed_differs(tmp_path):
    keys = ("test_accuracy", "test_loss", "bytes_wire_total", "uploads", "skipped_uploads")
    a = run(cfg(tmp_path / "a", codec="qsgd(levels=4)", policy="trigger"))
    b = run(cfg(tmp_path / "b", codec="qsgd(levels=4)", policy="trigger"))
    c = run(cfg(tmp_path / "c", codec="qsgd(levels=4)", policy="trigger", seed=1))
    assert [a[k] for k in keys] == [b[k] for k in keys]
    assert a["test_loss"] != c["test_loss"]


# explicit milestones: the default one (the last epoch) moves when --epochs grows on resume
PACKED_ACCUMULATING = {"pack": True, "skipped": "accumulate", "lr_schedule": "step",
                      "lr_milestones": [2], "lr_warmup": 5}


@pytest.mark.parametrize("mode, codec, policy, extra", [
    ("sync", "int8", "laq", {}), ("fedavg", "laq(bits=4)", "always", {}),
    ("sync", "dgc(ratio=0.1)", "always", {"lr_milestones": [2]}),  # the sparsifier's step
    ("sync", "topk(ratio=0.1)+int8", "every:3", PACKED_ACCUMULATING)])
def test_resume_continues_identically(tmp_path, mode, codec, policy, extra):
    common = dict(mode=mode, codec=codec, policy=policy, error_feedback=True, epochs=3,
                  checkpoint_every=1, split="dirichlet:0.5", **extra)
    straight = run(cfg(tmp_path / "straight", **common))
    run(cfg(tmp_path / "resumed", **{**common, "epochs": 2}))
    resumed = run(cfg(tmp_path / "resumed", **common, resume=True))
    for key in ("test_accuracy", "test_loss", "bytes_wire_total", "uploads", "skipped_uploads"):
        assert straight[key] == resumed[key], key


def test_fedavg_non_iid_learns_and_laq_skips(tmp_path):
    row = run(cfg(tmp_path, mode="fedavg", split="dirichlet:0.5", local_steps=3, epochs=4))
    assert row["test_accuracy"] > 0.85
    lazy = run(cfg(tmp_path, codec="laq(bits=4)", policy="laq", epochs=4))
    assert lazy["skipped_uploads"] > lazy["uploads"] and lazy["test_accuracy"] > 0.85


def test_centralized_baseline_moves_no_bytes(tmp_path):
    row = run(cfg(tmp_path, centralized=True))
    assert row["bytes_wire_total"] == 0 and row["nodes"] == 1 and row["test_accuracy"] > 0.9


def test_config_file_and_overrides(tmp_path):
    path = tmp_path / "comm_config.yaml"
    path.write_text("communication:\n  grad_norm_threshold: 0.3\n  sync_interval: 7\nnodes: 3\n")
    c = build_config(path, {"epochs": 2}, ["communication.sync_interval=9"])
    assert (c.communication.grad_norm_threshold, c.communication.sync_interval) == (0.3, 9)
    assert (c.nodes, c.epochs) == (3, 2)
    for bad in (["nodez=3"], ["communication.threshold=1"], ["mode=async"], ["codec=topk(ratio=2)"]):
        with pytest.raises(ConfigError):
            build_config(None, {}, bad)


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "thinwire.cli", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def test_cli_bad_input_is_one_clear_line(tmp_path):
    for args, fragment in [(["run", "--epochs", "0"], "epochs"),
                           (["run", "--codec", "topk(ratio=2)"], "ratio"),
                           (["run", "--task", "mnist", "--data-dir", str(tmp_path)], "missing")]:
        res = cli(*args, "--out", str(tmp_path), cwd=tmp_path)
        assert res.returncode == 2, res.stderr
        assert fragment in res.stderr and "Traceback" not in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1


def test_cli_compare_json_rows_table_and_plot(tmp_path):
    res = cli("compare", "--task", "synthetic", "--set", "task_args.n_samples=200",
              "--nodes", "2", "--epochs", "1", "--codecs", "none,topk(ratio=0.5,index=raw)",
              "--centralized", "--json", "--no-progress", "--out", str(tmp_path), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in res.stdout.strip().splitlines()]
    assert [r["codec_config"] for r in rows] == ["-", "none", "topk(ratio=0.5,index=raw)"]
    assert (tmp_path / "accuracy.png").stat().st_size > 10_000
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 3


def test_vmap_node_batching_matches_the_loop(tmp_path):
    loop = run(cfg(tmp_path / "loop", codec="int8", epochs=2))
    batched = run(cfg(tmp_path / "vmap", codec="int8", epochs=2, node_batching="vmap"))
    assert batched["test_loss"] == pytest.approx(loop["test_loss"], rel=1e-4)
    assert batched["bytes_up_wire"] == loop["bytes_up_wire"]


def test_pack_sends_one_payload_and_none_codec_matches_unpacked(tmp_path):
    """Packing changes the message layout, not the arithmetic: with `none` the training
    is identical; with top-k it removes per-tensor metadata, so the uplink ratio grows."""
    keys = ("test_accuracy", "test_loss", "uploads")
    plain = run(cfg(tmp_path / "a", codec="none"))
    packed = run(cfg(tmp_path / "b", codec="none", pack=True))
    assert [plain[k] for k in keys] == pytest.approx([packed[k] for k in keys], rel=1e-5)
    msgs = []
    real = sim_module.serialize_update

    def recording(update):
        msgs.append(update)
        return real(update)

    sim_module.serialize_update = recording
    try:
        sparse_plain = run(cfg(tmp_path / "c", codec="topk(ratio=0.05)+int8", error_feedback=True,
                               epochs=1, pack=False))
        msgs.clear()
        sparse_packed = run(cfg(tmp_path / "d", codec="topk(ratio=0.05)+int8",
                                error_feedback=True, epochs=1, pack=True))
    finally:
        sim_module.serialize_update = real
    assert all(len(m.tensors) == 1 for m in msgs)
    assert sparse_packed["compression_ratio"] > 1.5 * sparse_plain["compression_ratio"]
    assert sparse_packed["test_accuracy"] > 0.8


def test_lr_schedules_follow_the_step(tmp_path):
    from thinwire.config.training import lr_at

    step = cfg(tmp_path, lr=0.1, epochs=3, lr_schedule="step")
    assert [lr_at(step, s, 10) for s in (0, 19, 20, 29)] == pytest.approx([0.1, 0.1, 0.01, 0.01])
    two = cfg(tmp_path, lr=0.1, epochs=3, lr_schedule="step", lr_milestones=[1, 2], lr_gamma=0.5)
    assert [lr_at(two, s, 10) for s in (9, 10, 20)] == pytest.approx([0.1, 0.05, 0.025])
    cos = cfg(tmp_path, lr=0.1, epochs=2, lr_schedule="cosine")
    assert [lr_at(cos, s, 10) for s in (0, 10, 20)] == pytest.approx([0.1, 0.05, 0.0])
    warm = cfg(tmp_path, lr=0.1, epochs=3, lr_schedule="step", lr_warmup=4)
    assert [lr_at(warm, s, 10) for s in (0, 3, 4, 25)] == pytest.approx([0.025, 0.1, 0.1, 0.01])
    with pytest.raises(ConfigError, match="lr_milestones"):
        cfg(tmp_path, lr_schedule="step", lr_milestones=[0])
    with pytest.raises(ConfigError, match="laq"):
        cfg(tmp_path, skipped="accumulate", policy="laq")
    assert cfg(tmp_path, pack=True, skipped="drop", lr_schedule="step").name() == \
        "sync-none-always-pack-drop-lrstep-s0"
    # the schedule reaches the optimizer: a decayed last epoch moves the weights less
    flat = run(cfg(tmp_path / "flat", epochs=2, lr=0.5))
    decayed = run(cfg(tmp_path / "dec", epochs=2, lr=0.5, lr_schedule="step", lr_gamma=0.01))
    assert flat["history"][0]["test_loss"] == decayed["history"][0]["test_loss"]
    assert flat["history"][1]["test_loss"] != decayed["history"][1]["test_loss"]
