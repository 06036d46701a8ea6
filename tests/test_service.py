"""FLQ service: a real coordinator on 127.0.0.1 (subprocess), real worker processes, and
crafted HTTP clients for the protocol edges (idempotency, auth, bad input, restarts)."""

import json
import math
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch

from service_harness import delta_update, filled, services  # noqa: F401  (fixture)
from thinwire.codecs import decode
from thinwire.errors import ConfigError
from thinwire.errors import run_main
from thinwire.service.cli import coordinator_main
from thinwire.service.config import load_config
from thinwire.service.core import Coordinator
from thinwire.service.learner import Learner
from thinwire.server.state import StateStore
from thinwire.tasks import load_task
from thinwire.wire import parse_update, serialize_update
from thinwire.wire.model import parse_model_message

# ---- end to end with real workers -------------------------------------------------------
def test_three_round_run_learns(tmp_path, services):
    svc = services(tmp_path, ["total_workers=2", "max_rounds=3", "mode=laq8"])
    for i in range(2):
        svc.worker(f"worker-{i}")
    status = svc.wait(lambda s: s["done"] and len(s["accuracy_history"]) == 3)
    assert status["version"] == 3 and status["round"] == 3
    accs = [h["test_accuracy"] for h in status["accuracy_history"]]
    assert accs[-1] > 0.8  # 4 classes: chance is 0.25
    assert status["uploads"] == 6 and status["bits_up"] > 0 and status["bits_down"] > 0
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3]
    for key in ("run_name", "test_accuracy", "bytes_up_wire", "compression_ratio", "selected",
                "skipped", "bits_up", "bits_down", "history"):
        assert key in rows[-1]
    assert rows[-1]["bits_up"] == status["bits_up"]
    svc.wait(lambda s: all(w["state"] == "left" for w in s["workers"]), 60)
    svc.wait(lambda s: (tmp_path / "accuracy.png").exists(), 30)


def test_killed_worker_misses_deadline_and_a_new_worker_joins(tmp_path, services):
    svc = services(tmp_path, ["total_workers=3", "max_rounds=40", "round_timeout=3",
                              "offline_after=30"])
    svc.worker("worker-0")
    victim = svc.worker("worker-1")
    svc.wait(lambda s: s["round"] >= 2)
    victim.send_signal(signal.SIGKILL)
    killed_at = svc.status()["round"]
    t0 = time.monotonic()
    svc.worker("worker-2")
    status = svc.wait(lambda s: any("worker-2" in h["selected"] for h in s["selection_history"])
                      and s["round"] >= killed_at + 3, 150)
    late = [h for h in status["selection_history"] if "worker-1" in h["missing"]]
    assert late and all(h["reason"] == "deadline" for h in late)
    # every round after the kill closed within the deadline (+ training time), none stalled
    assert time.monotonic() - t0 < (status["round"] - killed_at) * (3 + 6) + 30
    joined = next(h["round"] for h in status["selection_history"] if "worker-2" in h["selected"])
    assert joined >= killed_at


# ---- protocol edges with crafted clients ------------------------------------------------
def test_token_idempotency_and_bad_updates(tmp_path, services):
    svc = services(tmp_path, ["total_workers=2", "max_rounds=5", "max_request_bytes=65536"])
    assert httpx.post(svc.url + "/v1/workers", json={"worker_id": "a", "session": "s"}
                      ).status_code == 401
    bad = svc.call("POST", "/v1/workers", token="wrong", json={"worker_id": "a", "session": "s"})
    assert bad.status_code == 401 and "token" in bad.json()["error"]
    assert httpx.get(svc.url + "/v1/health").status_code == 200
    svc.register("a")
    svc.register("b")
    theta0 = svc.model("a")
    svc.model("b")  # b takes part in round 0: the round waits for its skip
    names = list(theta0)

    def rejected(body, status=400, words=""):
        r = svc.push(body)
        assert r.status_code == status, r.text
        assert words in r.json()["error"]
        s = svc.status()
        assert s["version"] == 0 and s["pending"] == [] and s["uploads"] == 0

    rejected(b"\x00garbage\xff" * 10, words="malformed")
    nan = parse_update(delta_update("a", 0, 1, filled(theta0, 0.01)))
    nan.tensors[0].buffers[0] = torch.full_like(nan.tensors[0].buffers[0], float("nan"))
    rejected(serialize_update(nan), words="non-finite")
    rejected(delta_update("a", 0, 1, {n: t for n, t in filled(theta0, 0.01).items()
                                      if n != names[-1]}), words="missing")
    wrong = filled(theta0, 0.01)
    wrong[names[0]] = torch.zeros(3)
    rejected(delta_update("a", 0, 1, wrong), words="shape")
    rejected(delta_update("a", 0, 1, filled(theta0, 0.01), codec="fp16"), words="expects")
    rejected(delta_update("a", 7, 1, filled(theta0, 0.01)), status=409, words="round 0")
    rejected(delta_update("zz", 0, 1, filled(theta0, 0.01)), status=404, words="register")
    big = svc.push(b"x" * 70_000)
    assert big.status_code == 413 and "max_request_bytes" in big.json()["error"]

    body = delta_update("a", 0, 1, filled(theta0, 0.01))
    first, again = svc.push(body), svc.push(body)
    assert first.json()["status"] == "accepted" and again.json()["status"] == "duplicate"
    assert svc.skip("b", 0).status_code == 200
    status = svc.wait(lambda s: s["version"] == 1)
    assert status["uploads"] == 1 and status["skipped"] == 1
    theta1 = svc.model("a")
    for n in names:  # applied once: +0.01, not +0.02
        assert torch.allclose(theta1[n], theta0[n] + 0.01, atol=1e-6)
    assert svc.push(body).json()["status"] == "duplicate"  # retry after the round closed
    assert svc.model("b")[names[0]].equal(theta1[names[0]])


def test_sigkill_restart_keeps_acknowledged_updates(tmp_path, services):
    svc = services(tmp_path, ["total_workers=2", "min_workers=2", "max_rounds=5"])
    svc.register("a")
    svc.register("b")
    theta0 = svc.model("a")
    expected = theta0
    for r, (da, db) in enumerate([(0.02, 0.04), (-0.01, 0.05)]):
        body_a = delta_update("a", r, 1, filled(theta0, da), base_version=r)
        assert svc.push(body_a).json()["status"] == "accepted"
        svc.kill()
        svc.start()
        status = svc.status()
        assert status["version"] == r and status["round"] == r and status["pending"] == ["a"]
        assert svc.push(body_a).json()["status"] == "duplicate"
        assert svc.push(delta_update("b", r, 1, filled(theta0, db), base_version=r)
                        ).status_code == 200
        assert svc.status()["version"] == r + 1
        expected = {n: t + (da + db) / 2 for n, t in expected.items()}
        got = svc.model("a")
        assert all(torch.allclose(got[n], expected[n], atol=1e-6) for n in got)
    svc.kill()
    svc.start()
    assert svc.status()["version"] == 2


def test_top_k_selection_over_http(tmp_path, services):
    svc = services(tmp_path, ["total_workers=3", "sel_clients=2", "max_rounds=3"])
    offers = {"a": (10.0, 100), "b": (50.0, 100), "c": (30.0, 50)}  # score/bits: .1 .5 .6
    for w in offers:
        svc.register(w)
    for w in ("b", "c"):
        svc.model(w)  # all three take part in round 0, so selection waits for three offers
    theta0 = svc.model("a")

    def offer(w):
        score, bits = offers[w]
        return svc.call("POST", "/v1/offers", wid=w, json={
            "worker_id": w, "round": 0, "score": score, "bits": bits}).json()["selected"]

    with ThreadPoolExecutor(3) as pool:
        chosen = dict(zip(offers, pool.map(offer, offers)))
    assert chosen == {"a": False, "b": True, "c": True}
    assert svc.push(delta_update("a", 0, 1, filled(theta0, 0.1))).status_code == 409
    for w in ("b", "c"):
        assert svc.push(delta_update(w, 0, 1, filled(theta0, 0.1))).status_code == 200
    status = svc.wait(lambda s: s["version"] == 1)
    assert status["selection_history"][0]["selected"] == ["b", "c"]
    assert status["selection_history"][0]["unselected"] == ["a"]


def test_async_schedule_with_real_workers(tmp_path, services):
    svc = services(tmp_path, ["total_workers=2", "max_rounds=3", "schedule=async", "mode=bin"])
    for i in range(2):
        svc.worker(f"worker-{i}", "--sync-seconds", "0.2")
    status = svc.wait(lambda s: s["done"] and len(s["accuracy_history"]) == 3)
    assert status["applied_updates"] >= 6 and status["version"] == status["applied_updates"]
    assert status["accuracy_history"][-1]["test_accuracy"] > 0.5
    assert status["codec"] == "bin" and status["lazy"]


def test_lossy_downlink_sends_deltas_that_track_the_view(tmp_path):
    co = core(tmp_path, total_workers=1, down_codec="fp16")
    co.register("a", "s")
    body, head = co.pull("a")
    assert head["X-Thinwire-Kind"] == "full"
    worker = {t.name: decode(t) for t in parse_model_message(body)[1].tensors}
    names = [n for n in worker if not n.startswith("buffer:")]
    co.push(delta_update("a", 0, 1, {n: torch.full_like(worker[n], 1e-3) for n in names}))
    body, head = co.pull("a", have=0)
    assert head["X-Thinwire-Kind"] == "delta" and co.version == 1
    for t in parse_model_message(body)[1].tensors:
        worker[t.name] = worker[t.name] + decode(t)
    assert all(worker[n].equal(co.view[n]) for n in names)
    assert all(torch.allclose(co.view[n], co.params[n], atol=1e-5) for n in names)


def test_sparse_downlink_carries_its_residual_and_stays_bounded(tmp_path):
    """Server-side error feedback by construction: each delta encodes params - view (what
    delta-following workers hold), so what top-k drops one round goes out in a later one.
    Over T rounds the worker's sum of applied deltas tracks the sum of the aggregates."""
    co = core(tmp_path, total_workers=1, down_codec="topk(ratio=0.1)", max_rounds=40)
    co.register("a", "s")
    worker = {t.name: decode(t) for t in parse_model_message(co.pull("a")[0])[1].tensors}
    names = [n for n in worker if not n.startswith("buffer:")]
    start = {n: co.params[n].clone() for n in names}
    gen, gaps = torch.Generator().manual_seed(0), []
    for v in range(30):
        step = {n: 1e-2 * torch.randn(worker[n].shape, generator=gen) for n in names}
        co.push(delta_update("a", v, v + 1, step, base_version=v))
        body, head = co.pull("a", have=v)
        assert head["X-Thinwire-Kind"] == "delta"
        for t in parse_model_message(body)[1].tensors:
            worker[t.name] = worker[t.name] + decode(t)
        assert all(worker[n].equal(co.view[n]) for n in names)
        gaps.append(math.sqrt(sum(float((co.params[n] - worker[n]).pow(2).sum())
                                  for n in names)))
    moved = math.sqrt(sum(float((co.params[n] - start[n]).pow(2).sum()) for n in names))
    assert max(gaps[20:]) < 1.5 * max(gaps[5:15])  # bounded, not growing with T
    assert gaps[-1] < 0.5 * moved  # the worker followed most of the way


# ---- in-process: selection knapsack, lazy rule, config, state -----------------------------
def core(tmp_path, **over):
    cfg = load_config(None, {"task": "synthetic", "task_args": {"n_samples": 200, "dim": 4},
                             **over})
    return Coordinator(cfg, tmp_path, task=load_task("synthetic", n_samples=200, dim=4))


def test_budget_knapsack_picks_best_ratio_that_fits(tmp_path):
    co = core(tmp_path, total_workers=3, up_budget_bits=120)
    for w in "abc":
        co.register(w, "s")
        co.pull(w)
    assert co.offer("a", 0, 10.0, 100)["selected"] is None  # waits for the others
    co.offer("b", 0, 50.0, 100)
    assert co.offer("c", 0, 30.0, 50)["selected"] is True
    # ratio order c (.6), b (.5), a (.1): c fits (50), b would make 150 > 120, a too
    assert co.selected == {"c"} and co.unselected == {"a", "b"}


def test_lazy_rule_skips_small_innovations_and_obeys_clock(tmp_path):
    task = load_task("synthetic", n_samples=200, dim=4)
    conf = load_config(None, {"task": "synthetic", "mode": "bbit", "clock": 3,
                              "thr_scale": 1.0}).worker_view()
    learners = [Learner(task, torch.arange(50), i, conf, f"w{i}") for i in range(2)]
    base = {n: torch.full_like(p, 0.1) for n, p in learners[0].params.items()}
    for lr in learners:
        first = lr.propose(base, 0, 1, 0, 10, 1.0)
        assert first.reason == "warmup"
        lr.commit(first)  # the coordinator accepted it
        lr.set_history([1.0] * 10)  # the model moved a lot recently
    same = learners[0].propose({n: t * 1.001 for n, t in base.items()}, 1, 2, 1, 10, 1.0)
    moved = learners[1].propose({n: t * 30 for n, t in base.items()}, 1, 2, 1, 10, 1.0)
    assert same.update is None and same.reason == "lazy"
    assert moved.update is not None and moved.reason == "innovation" and moved.score > 0
    reasons = [learners[0].propose(base, r, r, r, 10, 1.0).reason for r in (2, 3)]
    assert reasons == ["lazy", "clock"]  # 3 rounds since the last upload force one


def test_config_errors_are_clear():
    with pytest.raises(ConfigError, match="unknown key 'rounds'"):
        load_config(None, {"rounds": 3})
    with pytest.raises(ConfigError, match="schedule 'sync'"):
        load_config(None, {"schedule": "async", "sel_clients": 2})
    with pytest.raises(ConfigError, match="mode"):
        load_config(None, {"mode": "zip"})
    assert run_main(coordinator_main, ["--host", "0.0.0.0", "--state-dir", "/nonexistent"]) == 2


def test_journal_ignores_torn_tail_and_snapshot_roundtrips(tmp_path):
    store = StateStore(tmp_path)
    store.append({"type": "update", "i": 1}, b"abc")
    store.append({"type": "update", "i": 2}, b"defg")
    with open(tmp_path / "journal.bin", "ab") as f:
        f.write(b"TWJ1\x05\x00")  # a record cut short by kill -9
    assert [(h["i"], b) for h, b in store.records()] == [(1, b"abc"), (2, b"defg")]
    store.save({"version": 3, "w": {"x": torch.arange(4.0)}, "inf": math.inf})
    tree = StateStore(tmp_path).load()
    assert tree["version"] == 3 and tree["w"]["x"].equal(torch.arange(4.0))
    store.reset_journal()
    assert list(store.records()) == []


def test_worker_refuses_a_malformed_coordinator_config():
    from thinwire.service.config import WorkerConfig

    view = load_config(None, {"task": "synthetic"}).worker_view()
    assert WorkerConfig.of(view).codec == "none" and view["mode"] == view["preset"]
    with pytest.raises(ConfigError, match="cannot use.*lr"):
        WorkerConfig.of({**view, "lr": -1})
    with pytest.raises(ConfigError, match="schedule"):
        WorkerConfig.of({k: v for k, v in view.items() if k != "schedule"})
