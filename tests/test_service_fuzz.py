"""Fuzz a live coordinator process for a few seconds: structured requests (hypothesis picks
the generator's choices, and builds JSON and protobuf control bodies of its own), then plain
random ones. Every
answer must be < 500 and come within 2 s; RSS stays bounded; the model never changes (no
round can close); kill -9 and a restart work afterwards. bench/fuzz_service.py runs longer."""

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service_harness import TOKEN, services  # noqa: F401  (fixture)
from thinwire.service.fuzz import Probe
from thinwire.service.fuzz_check import FUZZ_SETS, FuzzSession, Report
from thinwire.wire import thinwire_pb2 as pb

FAST = settings(max_examples=40, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                    | st.text(max_size=40),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)
FIELDS = st.fixed_dictionaries({}, optional={
    "worker_id": st.sampled_from(["f0", "f1", "victim", "w1\n", ""]) | st.text(max_size=70),
    "session": st.text(max_size=200), "specialty": JSON, "round": JSON, "reason": JSON,
    "capabilities": st.dictionaries(st.text(max_size=70), JSON, max_size=6) | JSON,
    "score": JSON, "bits": JSON})
IDS = st.sampled_from(["f0", "f1", "victim", "w1\n", ""]) | st.text(max_size=70)
TEXT, U64 = st.text(max_size=70), st.integers(0, 2**64 - 1)
VERSION = st.sampled_from([1, 1, 1, 0, 2])
PROTO = st.one_of(
    st.builds(pb.Register, schema_version=VERSION, worker_id=IDS, session=TEXT, specialty=TEXT,
              capabilities=st.dictionaries(TEXT, st.text(max_size=300), max_size=40),
              base=TEXT, centroid=st.lists(st.floats(width=32), max_size=4), count=U64),
    st.builds(pb.Skip, schema_version=VERSION, worker_id=IDS, round=U64, reason=TEXT),
    st.builds(pb.Offer, schema_version=VERSION, worker_id=IDS, round=U64, score=st.floats(),
              bits=U64))
PATHS = st.sampled_from(["/v1/workers", "/v1/skips", "/v1/offers"])


def test_fuzz_live_coordinator(tmp_path, services):
    svc = services(tmp_path, FUZZ_SETS)
    session = FuzzSession(svc.url, TOKEN, svc.rss_kib, seed=1)
    report = Report()
    report.rss_start_kib = svc.rss_kib()

    @FAST
    @given(rng=st.randoms(use_true_random=False), count=st.integers(1, 15))
    def structured(rng, count):
        own, session.fuzzer.rng = session.fuzzer.rng, rng
        try:
            for _ in range(count):
                session.send(session.fuzzer.probe(), report)
        finally:
            session.fuzzer.rng = own

    @FAST
    @given(body=FIELDS, path=PATHS, wid=st.sampled_from(["f0", "f1", "victim"]))
    def json_bodies(body, path, wid):
        key = session.fuzzer.keys.get(wid, "nope")
        probe = Probe("json", "POST", path, json.dumps(body).encode(),
                      headers={"Content-Type": "application/json",
                               "X-Thinwire-Worker-Key": key})
        session.send(probe, report)

    @FAST
    @given(msg=PROTO, path=PATHS)
    def proto_bodies(msg, path):
        key = session.fuzzer.keys.get(msg.worker_id, "nope")
        probe = Probe("proto", "POST", path, msg.SerializeToString(),
                      headers={"Content-Type": "application/x-protobuf",
                               "X-Thinwire-Worker-Key": key})
        session.send(probe, report)

    structured()
    json_bodies()
    proto_bodies()
    plain = session.run(requests=100_000, seconds=8)
    session.check_model(report)
    summary = {**plain.summary(), "hypothesis": report.summary()}
    print(json.dumps(summary))
    assert not report.problems and not plain.problems, summary
    assert report.requests > 200 and plain.requests > 200
    assert plain.statuses[200] > 0 and len(plain.statuses) > 4  # reached more than errors
    assert svc.rss_kib() - report.rss_start_kib < 96 << 10, summary
    svc.kill()
    svc.start()
    assert session.pull_hash() == session.model_hash
    session.close()
