"""exchange/: TensorSet roles, Sender proposals, all-or-nothing Receiver, MemoryTransport
ledger; obs/: the run record's ratios and the event stream, on a real simulator run."""

from __future__ import annotations

import json

import pytest
import torch

from thinwire.codecs import Encoder
from thinwire.exchange import MemoryTransport, Receiver, Rejected, Sender, TensorSet, layout_of
from thinwire.obs.events import read_events
from thinwire.obs.ledger import HUB
from thinwire.policy import Always
from thinwire.sim.config import validate
from thinwire.sim.experiment import run_experiment
from thinwire.wire import serialize_update


def model_set() -> TensorSet:
    return TensorSet({"w": torch.randn(4, 3), "b": torch.randn(3)}).add(
        {"bn.mean": torch.zeros(3)}, "buffer")


def test_tensorset_roles_travel_and_come_back():
    ts = model_set()
    assert list(ts.params) == ["w", "b"] and list(ts.buffers) == ["bn.mean"]
    back = TensorSet.from_state_dict(ts.state_dict())
    assert [back.role(n) for n in back] == ["param", "param", "buffer"]
    assert layout_of(ts)["bn.mean"] == ((3,), "buffer")
    with pytest.raises(ValueError, match="role"):
        TensorSet({"x": torch.ones(1)}, role="weights")


def test_update_crosses_the_transport_and_decodes_with_roles():
    model = model_set()
    sender = Sender("n0", Encoder("int8"), Always())
    proposal = sender.propose(dict(model.params), step=0, confidence=1.0)
    update = sender.message(proposal, TensorSet(model.buffers, "buffer"), round=0)
    transport = MemoryTransport()
    data = serialize_update(update)
    transport.send("n0", HUB, data, raw=4 * 15)
    src, got = transport.recv(HUB)
    receiver = Receiver(layout_of(model), codec="int8")
    arrival = receiver.receive(got, src)
    assert [t.name for t in update.tensors] == ["w", "b", "bn.mean"]  # names as in the model
    assert arrival.tensors.role("bn.mean") == "buffer"
    assert torch.equal(arrival.tensors["bn.mean"], model["bn.mean"])  # lossless
    assert torch.allclose(arrival.tensors["w"], model["w"], atol=0.05)
    totals = transport.ledger.totals()
    assert totals["up_wire"] == len(data) and totals["sent"] == 1 and totals["up_raw"] == 60


def test_receiver_refuses_wrong_layout_and_codec_and_changes_nothing():
    model = model_set()
    receiver = Receiver(layout_of(model), codec="laq")
    sender = Sender("n0", Encoder("laq"), Always())
    good = serialize_update(sender.message(sender.propose(dict(model.params), 0, 1.0)))
    receiver.receive(good, "n0")
    before = receiver.state_dict()
    wrong_shape = Sender("n0", Encoder("laq"), Always())
    bad = {"w": torch.randn(3, 4), "b": torch.randn(3)}
    with pytest.raises(Rejected, match="shape"):
        receiver.receive(serialize_update(wrong_shape.message(wrong_shape.propose(bad, 0, 1.0))))
    other = Sender("n0", Encoder("int8"), Always())
    with pytest.raises(Rejected, match="expects 'laq'"):
        receiver.receive(serialize_update(other.message(other.propose(dict(model.params), 0, 1))))
    as_param = Sender("n0", Encoder("laq"), Always())  # a buffer sent as a parameter
    swapped = {"w": model["w"], "b": model["b"], "bn.mean": model["bn.mean"]}
    with pytest.raises(Rejected, match="sent as a param"):
        receiver.receive(serialize_update(as_param.message(as_param.propose(swapped, 0, 1.0))))
    with pytest.raises(Rejected, match="malformed"):
        receiver.receive(b"\x00garbage")
    assert json.dumps(receiver.state_dict(), default=str) == json.dumps(before, default=str)


def test_receiver_restores_decoder_state_when_one_tensor_fails(monkeypatch):
    """All or nothing: the first tensor decodes (and would move laq's state), the second
    fails, so the sender's decoder state is exactly as before."""
    receiver = Receiver()
    sender = Sender("n0", Encoder("laq"), Always())
    tensors = {"a": torch.randn(5), "b": torch.randn(5)}
    receiver.receive(serialize_update(sender.message(sender.propose(tensors, 0, 1.0))))
    before = {k: v.clone() for k, v in receiver.decoders["n0"].state.slots["a"].items()
              if isinstance(v, torch.Tensor)}
    update = sender.message(sender.propose({k: v * 2 for k, v in tensors.items()}, 1, 1.0))
    update.tensors[1].shape = (6,)  # the second payload now lies about its shape
    with pytest.raises(Rejected):
        receiver.decode(update)
    after = receiver.decoders["n0"].state.slots["a"]
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_sim_record_ratios_match_the_ledger_and_events_are_written(tmp_path):
    cfg = validate({"task": "synthetic", "task_args": {"n_samples": 400, "dim": 8},
                    "nodes": 2, "epochs": 2, "batch_size": 32, "lr": 0.1, "out": tmp_path,
                    "codec": "topk(ratio=0.25)+int8", "error_feedback": True,
                    "down_codec": "fp16", "checkpoint_every": 0})
    row = run_experiment(cfg, progress=False, log=None)
    up, down = row["bytes_up_wire"], row["bytes_down_wire"]
    assert row["compression_ratio_up"] == pytest.approx(row["bytes_up_raw"] / up)
    assert row["compression_ratio_down"] == pytest.approx(row["bytes_down_raw"] / down)
    assert row["compression_ratio_total"] == pytest.approx(row["bytes_raw_total"] / (up + down))
    assert 1.5 < row["compression_ratio_down"] <= 2  # fp16 broadcast, less its metadata
    events = list(read_events(tmp_path / row["run_name"]))
    kinds = [e["type"] for e in events]
    assert kinds.count("epoch") == 2 and kinds[-1] == "end" and "step" in kinds
    last_epoch = [e for e in events if e["type"] == "epoch"][-1]
    assert last_epoch["bytes_wire_cum"] == up + down
    assert sum(link["wire"] for link in last_epoch["links"]) == up + down
    assert last_epoch["resources"]["rss_bytes"] > 0
    assert events[-1]["record"]["compression_ratio_total"] == row["compression_ratio_total"]


def test_server_error_feedback_keeps_applied_sum_close_to_aggregate_sum():
    """DoubleSqueeze-style downlink: what nodes apply, summed over T broadcasts, differs from
    the sum of the aggregates by exactly the server's residual, which stays bounded; without
    error feedback the gap grows with T."""
    from thinwire.codecs import decode

    gen = torch.Generator().manual_seed(0)
    aggregates = [torch.randn(2000, generator=gen) + 0.05 for _ in range(60)]
    gaps = {}
    for ef in (True, False):
        enc = Encoder("topk(ratio=0.05)+int8", error_feedback=ef)
        applied = torch.zeros(2000)
        for g in aggregates:
            applied += decode(enc.encode(g, "w"))
        gaps[ef] = float((applied - sum(aggregates)).norm())
        if ef:
            residual = enc.state.slot("w")["residual"]
            assert gaps[ef] == pytest.approx(float(residual.norm()), rel=1e-4)
    one = float(aggregates[0].norm())
    assert gaps[True] < 3 * one < gaps[False]


def test_sim_downlink_with_error_feedback_learns_and_compresses_both_ways(tmp_path):
    cfg = validate({"task": "synthetic", "task_args": {"n_samples": 400, "dim": 8},
                    "nodes": 2, "epochs": 3, "batch_size": 32, "lr": 0.1, "out": tmp_path,
                    "codec": "topk(ratio=0.25)+int8", "error_feedback": True,
                    "down_codec": "topk(ratio=0.25)+int8", "down_error_feedback": True,
                    "checkpoint_every": 0})
    row = run_experiment(cfg, progress=False, log=None)
    assert "down-topk" in row["run_name"] and "+ef" in row["run_name"]
    assert row["test_accuracy"] > 0.85  # 4 classes: chance is 0.25
    assert row["compression_ratio_down"] > 2 and row["compression_ratio_total"] > 2


SYNTH = {"task": "synthetic", "task_args": {"n_samples": 400, "dim": 8}, "nodes": 2,
         "batch_size": 32, "lr": 0.1, "momentum": 0.0, "checkpoint_every": 0, "epochs": 1}


def test_one_local_step_with_plain_outer_sgd_is_synchronous_sgd(tmp_path):
    """H=1, plain inner SGD, outer lr 1 without momentum: the pseudo-gradient path is
    synchronous SGD (the mean of -lr*g_i is -lr times the mean gradient)."""
    sync = run_experiment(validate({**SYNTH, "out": tmp_path / "a", "mode": "sync"}),
                          progress=False, log=None)
    local = run_experiment(validate({**SYNTH, "out": tmp_path / "b", "mode": "fedavg",
                                     "local_steps": 1}), progress=False, log=None)
    assert sync["steps"] == local["steps"]
    assert local["test_loss"] == pytest.approx(sync["test_loss"], rel=1e-5)
    assert local["test_accuracy"] == sync["test_accuracy"]


def test_outer_steps_send_one_pseudo_gradient_per_h_steps(tmp_path):
    cfg = validate({**SYNTH, "out": tmp_path, "outer_steps": 4, "codec": "int8",
                    "error_feedback": True, "epochs": 2})
    assert (cfg.mode, cfg.local_steps, cfg.outer_lr, cfg.outer_momentum) == \
        ("fedavg", 4, 0.7, 0.9)
    row = run_experiment(cfg, progress=False, log=None)
    rounds, inner_steps = row["steps"], row["steps"] * 4
    assert row["uploads"] == 2 * inner_steps // 4 == 2 * rounds
    sender = Sender("node-0", Encoder("int8"), Always())
    from thinwire.tasks import build_model, load_task

    task = load_task("synthetic", **SYNTH["task_args"])
    model = build_model(task.model, task.num_classes, task.in_shape)
    grads = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    one = len(serialize_update(sender.message(sender.propose(grads, 0, 1.0), round=1, seq=1,
                                               confidence=0.5, num_samples=128, kind="delta")))
    assert row["bytes_up_wire"] == pytest.approx(row["uploads"] * one, rel=0.01)
    assert "H4-outer0.7m0.9" in row["run_name"] and row["test_accuracy"] > 0.5
