"""Whatever the API accepted, the coordinator restarts from: snapshots carry no in-band
markers, journal replay skips a bad record instead of refusing to start, and random
sequences of API calls followed by a kill (the process state dropped, the disk kept) come
back to the same state. In-process, through the real ASGI app and its guard."""

import hashlib
import json
import logging
import zlib
import tempfile

import pytest
import torch
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from safetensors.torch import save as st_save
from starlette.testclient import TestClient

from service_harness import ADMIN, KEY_HEADER, TOKEN, coordinator, delta_update
from thinwire.service.coordinator import create_app
from thinwire.server.state import StateStore


# ---- snapshot encoding -----------------------------------------------------------------
def test_snapshot_values_cannot_pose_as_tensors(tmp_path):
    tree = {"caps": {"__tensor__": "nope"}, "forged": {"__tensor__": "0"},
            "paths": [["t", 0], None], "t": torch.arange(3.0), "deep": [[{"x": torch.ones(2)}]]}
    StateStore(tmp_path).save(tree)
    back = StateStore(tmp_path).load()
    assert back["caps"] == {"__tensor__": "nope"} and back["forged"] == {"__tensor__": "0"}
    assert back["paths"] == [["t", 0], None]
    assert back["t"].equal(torch.arange(3.0)) and back["deep"][0][0]["x"].equal(torch.ones(2))


def test_snapshots_from_before_the_reference_list_still_load(tmp_path):
    meta = {"t": {"__tensor__": "t/t"}, "caps": {"__tensor__": "nope"}}
    data = st_save({"t/t": torch.ones(2)}, metadata={"thinwire": json.dumps(meta)})
    (tmp_path / "state.safetensors").write_bytes(data)
    back = StateStore(tmp_path).load()
    assert back["t"].equal(torch.ones(2)) and back["caps"] == {"__tensor__": "nope"}


# ---- journal replay ------------------------------------------------------------------------
def test_replay_skips_every_kind_of_bad_record(tmp_path):
    coordinator(tmp_path).close()
    store = StateStore(tmp_path)
    deep = json.loads("[" * 700 + "]" * 700)
    for rec in ({"type": "register", "worker": "d", "session": "s", "capabilities": deep},
                {"type": "register", "worker": "f", "session": "s",
                 "capabilities": {"x": {"__tensor__": "nope"}}},
                {"type": "register", "worker": "w1\n", "session": "s"},
                {"type": "leave", "worker": "ghost"}, {"type": "leave"},
                {"type": "skip", "worker": "ghost", "round": 0, "reason": "lazy"},
                {"type": "skip", "worker": "ok", "round": "zero", "reason": "lazy"},
                {"type": "select", "round": 0, "selected": ["ghost"],
                 "offers": {"ghost": [1.0, 8]}},
                {"type": "mystery"}, ["not", "a", "dict"],
                {"type": "register", "worker": "ok", "session": "s", "capabilities": {}}):
        store.append(rec)
    from thinwire.server.state import RECORD_HEAD
    from thinwire.wire.framing import Kind, frame

    store._journal.write(frame(RECORD_HEAD.pack(5) + b"{oops", Kind.RAW))  # unreadable JSON
    store.close()
    lines = []
    co = coordinator(tmp_path, log=lines.append)
    assert list(co.workers) == ["ok"]
    assert sum("skipped a record" in line for line in lines) == 8  # the rest: no effect
    co.register("a", "s")
    co.close()
    assert set(coordinator(tmp_path).workers) == {"ok", "a"}


# ---- property: random accepted API calls, kill, restart ------------------------------------
IDS = st.sampled_from(["a", "b", "worker-7", "x.y", "z_9"])
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
CAPS = st.dictionaries(st.sampled_from(["__tensor__", "gpu", "t", "0", "pid", "mem.gb"]),
                       st.one_of(TEXT, st.integers(-2**40, 2**40), st.booleans(), st.none(),
                                 st.floats(allow_nan=False, allow_infinity=False)),
                       max_size=4)
WHO = st.sampled_from(["key", "key", "key", "none", "wrong", "admin"])


class Restarts(RuleBasedStateMachine):
    """Calls through the HTTP app; `kill_and_restart` drops the coordinator without closing
    it (what kill -9 leaves: the fsynced journal and the last snapshot)."""

    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="tw-restart-")
        self.keys: dict[str, str] = {}
        self.seq = 0
        self.boot()
        self.names = {n: t.shape for n, t in self.co.params.items()}

    def boot(self):
        self.co = coordinator(self.dir, min_workers=1, max_registered=4)
        self.http = TestClient(create_app(self.co, TOKEN, ADMIN))

    def call(self, method, path, wid=None, who="key", **kw):
        token = ADMIN if who == "admin" else TOKEN
        headers = {"Authorization": f"Bearer {token}"}
        if who == "key" and wid in self.keys:
            headers[KEY_HEADER] = self.keys[wid]
        elif who == "wrong":
            headers[KEY_HEADER] = "wrong"
        r = self.http.request(method, path, headers=headers, **kw)
        assert r.status_code < 500, r.text
        return r

    @rule(wid=IDS, session=st.sampled_from(["s1", "s2"]), caps=CAPS, specialty=TEXT, who=WHO)
    def register(self, wid, session, caps, specialty, who):
        r = self.call("POST", "/v1/workers", wid, who, json={
            "worker_id": wid, "session": session, "capabilities": caps, "specialty": specialty})
        if r.status_code == 200 and "worker_key" in r.json():
            self.keys[wid] = r.json()["worker_key"]

    @rule(wid=IDS, who=WHO)
    def leave(self, wid, who):
        self.call("POST", f"/v1/workers/{wid}/leave", wid, who)

    @rule(wid=IDS, who=WHO, value=st.floats(-1, 1), late=st.booleans())
    def push(self, wid, who, value, late):
        self.seq += 1
        body = delta_update(wid, self.co.round + late, self.seq,
                            {n: torch.full(s, value) for n, s in self.names.items()})
        self.call("POST", "/v1/updates", wid, who, content=body)

    @rule(wid=IDS, who=WHO)
    def skip(self, wid, who):
        self.call("POST", "/v1/skips", wid, who,
                  json={"worker_id": wid, "round": self.co.round, "reason": "lazy"})

    @rule(value=st.floats(-1, 1))
    def everyone_answers(self, value):
        """Each active worker pushes or skips with its key: the round closes."""
        for i, wid in enumerate(sorted(w for w, info in self.co.workers.items()
                                       if info["state"] == "active")):
            if i % 2:
                self.skip(wid, "key")
            else:
                self.push(wid, "key", value, late=False)

    @rule(wid=IDS, who=WHO)
    def pull(self, wid, who):
        self.call("GET", "/v1/model", wid, who, params={"worker_id": wid})

    @rule()
    def kill_and_restart(self):
        before = self.observe()
        event(f"restart at version {min(self.co.version, 3)}, {len(self.co.workers)} workers")
        self.co.store._journal.close()  # the fd only; nothing is flushed or snapshotted
        self.boot()
        assert self.observe() == before

    def observe(self):
        s = self.co.status()
        keep = ("round", "version", "uploads", "skipped", "pending", "responded",
                "applied_updates", "bytes_up")
        return ({k: s[k] for k in keep}, [(w["id"], w["state"] == "left", w["sent"],
                                           w["skipped"]) for w in s["workers"]],
                {n: hashlib.sha256(p.numpy().tobytes()).hexdigest()
                 for n, p in self.co.params.items()})

    @invariant()
    def registry_is_capped(self):
        assert len(self.co.workers) <= 4

    def teardown(self):
        self.co.close()


Restarts.TestCase.settings = settings(max_examples=25, stateful_step_count=20, deadline=None,
                                      suppress_health_check=[HealthCheck.too_slow])
test_restart_from_any_accepted_state = Restarts.TestCase


@pytest.fixture(autouse=True)
def quiet_httpx():
    logging.getLogger("httpx").setLevel(logging.WARNING)


def test_journal_cuts_a_torn_tail_so_later_records_survive(tmp_path):
    """A crash mid-append leaves a torn frame; records acknowledged after the restart must
    not hide behind it (the store cuts the tail before appending)."""
    store = StateStore(tmp_path)
    store.append({"type": "skip", "n": 1}, b"one")
    store.close()
    with open(tmp_path / "journal.bin", "ab") as f:
        f.write(b"TW\x02\x00\xff\xff")  # a frame header cut short by the crash
    store = StateStore(tmp_path)
    store.append({"type": "skip", "n": 2}, b"two")
    store.close()
    assert [(h["n"], body) for h, body in StateStore(tmp_path).records()] == \
        [(1, b"one"), (2, b"two")]


def test_journal_of_the_previous_format_is_converted(tmp_path):
    import struct

    head, body = json.dumps({"type": "skip", "n": 7}).encode(), b"old"
    legacy = (b"TWJ1" + struct.pack("<IQ", len(head), len(body)) + head + body
              + struct.pack("<I", zlib.crc32(body, zlib.crc32(head))))
    (tmp_path / "journal.bin").write_bytes(legacy)
    store = StateStore(tmp_path)
    store.append({"type": "skip", "n": 8})
    assert [h["n"] for h, _ in store.records()] == [7, 8]
    store.close()
