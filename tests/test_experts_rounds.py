"""Whom an experts round waits for, in process on a tiny Qwen2: a registered id that never
pulls holds no round open, a worker that pulled is waited for until its upload or the
deadline, and a restart (journal, then snapshot) waits for the same workers."""

import pytest
import torch
from experts_harness import slices, upload

from thinwire.tasks.lm.pretrained import load_base
from thinwire.tasks.lm.qwen import make_tiny_base


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    train, _ = slices()
    root = tmp_path_factory.mktemp("tiny")
    return make_tiny_base(root / "base", [r["prompt"] for r in train["sql"]], "tiny", 300)


def open_coordinator(tiny, state):
    from thinwire.experts.config import load_config
    from thinwire.experts.core import ExpertsCoordinator

    cfg = load_config(None, {"base_model": str(tiny), "codec": "none",
                             "lora_targets": ["q_proj", "v_proj"]})
    return ExpertsCoordinator(cfg, load_base(tiny), state)


def join(co, *wids: str) -> None:
    for wid in wids:
        co.register(wid, "s", "py", co.fingerprint, [1e3] * co.hidden, 1)


def send(co, wid: str, seq: int) -> dict:
    zeros = {n: torch.zeros(s) for n, s in co.shapes.items()}
    return co.push(upload(wid, zeros, seq, co.experts["py"].version, "none"))


def test_a_silent_registration_holds_no_round_open(tiny, tmp_path):
    """An id that registers and never pulls is not waited for: the round closes complete
    with the one worker that pulled and uploaded."""
    co = open_coordinator(tiny, tmp_path / "state")
    join(co, "silent", "real")
    co.pull("real")
    assert send(co, "real", 1)["expert_version"] == 1
    assert co.experts["py"].history[-1]["reason"] == "complete"
    assert {w["id"]: w["took_part"] for w in co.status()["workers"]} == \
        {"silent": False, "real": True}
    co.close()


def test_a_worker_that_pulled_is_waited_for(tiny, tmp_path):
    """A worker that pulled and is training holds the round open until its upload, or until
    round_timeout after the round's first upload."""
    co = open_coordinator(tiny, tmp_path / "state")
    join(co, "a", "b")
    co.pull("a"), co.pull("b")
    assert send(co, "a", 1)["pending"] == ["a"]
    co.tick()
    assert co.experts["py"].version == 0
    assert send(co, "b", 1)["expert_version"] == 1
    assert co.experts["py"].history[-1]["reason"] == "complete"
    assert send(co, "a", 2)["pending"] == ["a"]  # b trains on: the deadline closes it
    co.experts["py"].opened -= co.cfg.round_timeout
    co.tick()
    assert co.experts["py"].version == 2
    assert co.experts["py"].history[-1]["reason"] == "deadline"
    co.close()


def test_a_restart_waits_for_the_same_workers(tiny, tmp_path):
    """The first pull is journaled: replay (and the snapshot after it) rebuild the same
    expected set; a journal of an older version (no flag) keeps the old rule."""
    co = open_coordinator(tiny, tmp_path / "state")
    join(co, "silent", "a", "b")
    co.pull("a"), co.pull("b")
    send(co, "a", 1)
    co.store.append({"type": "register", "worker": "old", "session": "s", "specialty": "py",
                     "centroid": [1e3] * co.hidden, "count": 1, "capabilities": {}})
    co.close()
    for _ in range(2):  # from the journal, then from the snapshot the replay ended with
        co = open_coordinator(tiny, tmp_path / "state")
        assert co._expected("py") == {"a", "b", "old"}
        assert sorted(co.experts["py"].pending) == ["a"]
        co.close()
    co = open_coordinator(tiny, tmp_path / "state")
    send(co, "b", 1), send(co, "old", 1)
    assert co.experts["py"].history[-1]["reason"] == "complete"
    co.close()
