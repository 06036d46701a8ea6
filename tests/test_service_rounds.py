"""Whom a sync round waits for: workers taking part (they pulled, offered or answered in this
round or the previous one), not every registered id. Silent ids hold no round open; a worker
that pulled and is still training is waited for until the deadline. In-process for the rule,
then a real coordinator with real worker processes on 127.0.0.1."""

import signal
import time

from service_harness import coordinator, delta_update, filled, services  # noqa: F401
from thinwire.codecs import decode
from thinwire.wire.model import parse_model_message

DEADLINE = 15.0
SETS = ["total_workers=2", f"round_timeout={DEADLINE}", "offline_after=600"]
FAKES = [f"fake-{i}" for i in range(6)]


# ---- the rule, in process --------------------------------------------------------------
def pull(co, wid):
    body, _ = co.pull(wid)
    return {t.name: decode(t) for t in parse_model_message(body)[1].tensors if not t.role}


def push(co, wid, value=0.01):
    theta = pull(co, wid)
    co.push(delta_update(wid, co.round, co.round + 1, filled(theta, value), co.version))


def test_registered_ids_that_never_pull_are_not_waited_for(tmp_path):
    co = coordinator(tmp_path, total_workers=4, round_timeout=600)
    for wid in ["a", "b", *FAKES]:
        co.register(wid, "s")
    pull(co, "a")
    pull(co, "b")
    push(co, "a")
    assert co.round == 0 and co.status()["expected"] == ["a", "b"]
    co.skip("b", 0)  # a lazy skip is taking part
    assert co.selection_history[-1]["reason"] == "complete"
    assert co.selection_history[-1]["missing"] == []
    push(co, "a")  # round 1: b answered round 0, so it is waited for before it pulls
    assert co.round == 1 and co.status()["expected"] == ["a", "b"]
    co.skip("b", 1)
    assert co.round == 2


def test_a_worker_that_pulled_is_waited_for_until_the_deadline(tmp_path):
    co = coordinator(tmp_path, round_timeout=1.0)
    for wid in "ab":
        co.register(wid, "s")
    pull(co, "b")
    push(co, "a")
    push(co, "b")
    assert co.selection_history[-1]["combined"] == 2
    push(co, "a")  # round 1: b is silent from now on
    co.tick()
    assert co.round == 1, "b took part in round 0: round 1 waits for it"
    time.sleep(1.05)
    co.tick()
    last = co.selection_history[-1]
    assert (last["reason"], last["missing"], last["combined"]) == ("deadline", ["b"], 2)
    push(co, "a")  # round 2: b took no part in rounds 1 or 2
    last = co.selection_history[-1]
    assert (last["reason"], last["missing"], last["combined"]) == ("complete", [], 1)


def test_a_restart_waits_for_the_same_workers(tmp_path):
    co = coordinator(tmp_path)
    for wid in ["a", "b", "fake"]:
        co.register(wid, "s")
    pull(co, "b")
    size = co.store.journal_path.stat().st_size
    pull(co, "b")  # joining is journaled once a round
    assert co.store.journal_path.stat().st_size == size
    push(co, "a")
    co.store._journal.close()  # what kill -9 leaves: the journal, no new snapshot
    co = coordinator(tmp_path)
    status = co.status()
    assert (status["round"], status["pending"], status["expected"]) == (0, ["a"], ["a", "b"])
    push(co, "b")
    assert co.selection_history[-1]["reason"] == "complete"


# ---- a real coordinator, real workers ----------------------------------------------------
def round_times(svc, rounds, real, timeout=90.0):
    """How long each round stayed open, polling /v1/status: round 0 from when every `real`
    worker had registered (as the fakes had), each later one from the close before it."""
    times, opened, end = [], None, time.monotonic() + timeout
    while len(times) < rounds:
        assert time.monotonic() < end, f"rounds so far took {times}"
        status, now = svc.status(), time.monotonic()
        if opened is None and set(real) <= {w["id"] for w in status["workers"]}:
            opened = now
        while opened is not None and len(times) < min(status["round"], rounds):
            times.append(now - opened)
            opened = now
        time.sleep(0.1)
    return times


def test_fake_workers_do_not_hold_rounds_open(tmp_path, services):
    svc = services(tmp_path, [*SETS, "max_rounds=3", "min_workers=2", "mode=bin"])
    for wid in FAKES:  # registered over plain HTTP, then silent
        svc.register(wid)
    real = {f"worker-{i}": svc.worker(f"worker-{i}") for i in range(2)}
    times = round_times(svc, 3, real)
    status = svc.wait(lambda s: len(s["accuracy_history"]) == 3, 60)
    assert max(times) < DEADLINE / 3, times
    assert [h["reason"] for h in status["selection_history"]] == ["complete"] * 3
    assert all(h["missing"] == [] for h in status["selection_history"])
    assert status["uploads"] + status["skipped"] == 6  # lazy skips count as answers
    states = {w["id"]: w["state"] for w in status["workers"]}
    assert all(states[f] == "active" for f in FAKES)  # active, yet not waited for
    assert all(p.wait(timeout=60) == 0 for p in real.values())


def test_a_stalled_real_worker_is_still_waited_for(tmp_path, services):
    """SIGSTOP stands for a device far slower than the rest (--speed-factor scales each
    step's measured time, so how slow it makes a worker is not predictable). min_workers=2
    keeps the slow worker from closing rounds alone before it is stopped."""
    svc = services(tmp_path, [*SETS, "max_rounds=3", "min_workers=2"])
    for wid in FAKES[:2]:
        svc.register(wid)
    slow = svc.worker("slow")
    svc.wait(lambda s: "slow" in s["expected"], 60)  # it pulled round 0
    slow.send_signal(signal.SIGSTOP)
    fast = {"fast-0", "fast-1"}
    for wid in fast:
        svc.worker(wid)
    held = svc.wait(lambda s: fast <= set(s["responded"]), 60)
    time.sleep(1)
    still = svc.status()
    slow.send_signal(signal.SIGCONT)
    assert still["round"] == held["round"], "the round closed without the stalled worker"
    assert "slow" in still["expected"] and "slow" not in still["responded"]
    status = svc.wait(lambda s: s["done"], 60)
    history = status["selection_history"]
    assert [h["reason"] for h in history] == ["complete"] * 3
    assert all("slow" in h["selected"] for h in history)
