"""The typed control plane: register, skip and offer as protobuf (what workers send) or JSON
(curl), one code path after the parse. A real coordinator on 127.0.0.1 for the endpoints;
a mock HTTP transport for what the workers put on the wire."""

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from service_harness import TOKEN, services  # noqa: F401  (fixture)
from thinwire.exchange.http import HttpTransport
from thinwire.experts.link import HttpLink as ExpertsLink
from thinwire.server.state import RECORD_HEAD
from thinwire.service.worker import HttpLink
from thinwire.wire import thinwire_pb2 as pb
from thinwire.wire.control import Offer, Register, Skip, parse, serialize
from thinwire.wire.framing import scan_journal

PROTO = {"Content-Type": "application/x-protobuf"}


def post(svc, path, message, wid=None, **kw):
    body = message if isinstance(message, bytes) else serialize(message)
    return svc.call("POST", path, wid=wid, content=body,
                    headers={**PROTO, **kw.pop("headers", {})}, **kw)


def journal(state_dir, kind):
    """The journal's records of `kind`, without the fields that differ per worker."""
    out = []
    for f in scan_journal((state_dir / "journal.bin").read_bytes()).frames:
        (size,) = RECORD_HEAD.unpack_from(f.body)
        rec = json.loads(f.body[RECORD_HEAD.size: RECORD_HEAD.size + size])
        if rec["type"] == kind:
            out.append({k: v for k, v in rec.items() if k not in ("worker", "key_hash")})
    return out


@pytest.fixture
def svc(tmp_path, services):
    return services(tmp_path, ["total_workers=2", "max_rounds=5"])


def test_protobuf_register_and_skip_do_what_json_does(svc, tmp_path):
    caps = {"pid": 7, "gpu": True, "mem": 16.5, "os": "linux", "none": None}
    by_json = svc.register("a", specialty="digits", capabilities=caps)
    r = post(svc, "/v1/workers", Register("b", "s1", "digits", {
        "pid": "7", "gpu": "true", "mem": "16.5", "os": "linux", "none": "null"}))
    assert r.status_code == 200, r.text
    svc.keys["b"] = r.json()["worker_key"]
    assert set(r.json()) == set(by_json) and r.json()["config"] == by_json["config"]
    a, b = journal(tmp_path, "register")
    assert a == b and a["capabilities"]["gpu"] == "true"  # one form stored for both
    svc.register("c")  # silent until the skips are journaled: the round stays open
    for w in "abc":
        svc.model(w)  # each takes part in round 0 (pulls its model): the round waits for all
    assert post(svc, "/v1/skips", Skip("b", 0, "lazy"), headers={"X-Thinwire-Worker-Key": "x"}
                ).status_code == 403  # the worker key still guards the id
    by_json = svc.skip("a", 0)
    by_proto = post(svc, "/v1/skips", Skip("b", 0, "lazy"), wid="b")
    assert by_json.status_code == by_proto.status_code == 200, by_proto.text
    assert by_proto.json()["status"] == by_json.json()["status"] == "accepted"
    a, b = journal(tmp_path, "skip")
    assert a == b == {"type": "skip", "round": 0, "reason": "lazy"}
    assert svc.skip("c", 0).status_code == 200
    status = svc.wait(lambda s: s["round"] == 1)
    assert [w["skipped"] for w in status["workers"]] == [1, 1, 1]


def test_protobuf_offer_takes_part_in_selection(tmp_path, services):
    svc = services(tmp_path, ["total_workers=2", "sel_clients=1", "max_rounds=3"])
    for w in ("a", "b"):
        svc.register(w)
        svc.model(w)  # both take part in round 0, so selection waits for both offers

    def offer(w):
        if w == "a":
            return svc.call("POST", "/v1/offers", wid=w, json={
                "worker_id": w, "round": 0, "score": 1.0, "bits": 100}).json()
        return post(svc, "/v1/offers", Offer(w, 0, 2.0, 100), wid=w).json()

    with ThreadPoolExecutor(2) as pool:
        answers = dict(zip("ab", pool.map(offer, "ab")))
    assert answers == {"a": {"selected": False, "round": 0}, "b": {"selected": True, "round": 0}}
    [select] = journal(tmp_path, "select")
    assert select["offers"] == {"a": [1.0, 100], "b": [2.0, 100]}


def bad_bodies():
    register = serialize(Register("c", "s"))
    return {
        "malformed": ("/v1/workers", b"\xff\xff\xff\xff"),
        "does not know": ("/v1/workers", register + b"\x98\x06\x01"),  # unknown field 99
        "truncated": ("/v1/workers", register[:-1]),
        "schema_version": ("/v1/workers", pb.Register(schema_version=2, worker_id="c",
                                                      session="s").SerializeToString()),
        "centroid": ("/v1/workers", serialize(Register("c", "s", centroid=[1.0]))),
        "body.worker_id": ("/v1/workers", serialize(Register("c\n", "s"))),
        "body.session": ("/v1/workers", serialize(Register("c", ""))),
        "body.capabilities": ("/v1/workers", serialize(Register("c", "s", capabilities={
            f"k{i}": "v" for i in range(33)}))),
        "body.capabilities.big": ("/v1/workers", serialize(Register("c", "s", capabilities={
            "big": "v" * 300}))),
        "Skip worker_id is empty": ("/v1/skips", serialize(Skip("", 0))),
        "Offer score": ("/v1/offers", pb.Offer(schema_version=1, worker_id="c",
                                               score=float("nan"), bits=8).SerializeToString()),
        "body.bits": ("/v1/offers", serialize(Offer("c", 0, 1.0, 0))),
        "Skip:": ("/v1/skips", register),  # a Register is no Skip
    }


def test_bad_protobuf_gets_400_saying_why_and_the_service_goes_on(svc, tmp_path):
    for expect, (path, body) in bad_bodies().items():
        r = post(svc, path, body)
        assert r.status_code == 400, (expect, r.text)
        assert expect.split(".big")[0] in r.json()["error"], (expect, r.json())
        assert httpx.get(svc.url + "/v1/health").status_code == 200
    assert svc.status()["workers"] == [] and journal(tmp_path, "register") == []
    assert post(svc, "/v1/workers", Register("c", "s")).status_code == 200


@pytest.mark.parametrize("path", ["/v1/workers", "/v1/skips", "/v1/offers"])
def test_other_content_types_get_415(svc, path):
    for kind in ("text/plain", "application/x-www-form-urlencoded", "application/octet-stream"):
        r = svc.call("POST", path, content=b'{"worker_id": "a", "session": "s"}',
                     headers={"Content-Type": kind})
        assert r.status_code == 415, r.text
        assert "application/json" in r.json()["error"]
        assert "application/x-protobuf" in r.json()["error"]
    assert svc.status()["workers"] == []


def test_protobuf_needs_the_token_and_fits_the_control_limit(svc):
    body = serialize(Register("a", "s"))
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        r = httpx.post(svc.url + "/v1/workers", content=body, headers={**PROTO, **headers})
        assert r.status_code == 401 and "bearer token" in r.json()["error"]
    r = httpx.post(svc.url + "/v1/workers", content=b"\xff", headers=PROTO)
    assert r.status_code == 401  # the token before the body
    big = serialize(Register("a", "s", capabilities={f"k{i}": "v" * 1000 for i in range(80)}))
    r = post(svc, "/v1/workers", big)
    assert r.status_code == 413 and "max_json_bytes" in r.json()["error"]
    assert svc.status()["workers"] == []
    assert post(svc, "/v1/workers", body).status_code == 200


# ---- what the workers send ----------------------------------------------------------------
def recording_transport(replies):
    """An HttpTransport whose server is a function: (content type, path, body) are kept."""
    sent = []

    def answer(request):
        sent.append((request.headers["content-type"], request.url.path, request.content))
        return httpx.Response(200, json=replies.get(request.url.path, {}))

    transport = HttpTransport("http://coordinator", "w1", token=TOKEN)
    transport.http = httpx.Client(base_url="http://coordinator",
                                  transport=httpx.MockTransport(answer))
    return transport, sent


def test_flq_worker_sends_protobuf_skips_and_offers():
    transport, sent = recording_transport({"/v1/offers": {"selected": True, "round": 3}})
    link = HttpLink(transport, "w1", print)
    link.skip(3, "lazy")
    assert link.offer(3, 0.5, 4096) is True
    assert [(kind, path) for kind, path, _ in sent] == [
        ("application/x-protobuf", "/v1/skips"), ("application/x-protobuf", "/v1/offers")]
    assert parse(Skip, sent[0][2]) == Skip("w1", 3, "lazy")
    assert parse(Offer, sent[1][2]) == Offer("w1", 3, 0.5, 4096)
    up = transport.ledger.links[("w1", "coordinator", "control")]
    assert up.wire == len(sent[0][2]) + len(sent[1][2]) and up.messages == 2


def test_experts_link_registers_with_protobuf():
    transport, sent = recording_transport({"/v1/workers": {"config": {}}})
    hello = Register("w1", "s", "sql_expert", {"pid": "1"}, base="fp", centroid=[0.5, -1.0],
                     count=3)
    assert ExpertsLink(transport, "w1").register(hello) == {"config": {}}
    [(kind, path, body)] = sent
    assert (kind, path) == ("application/x-protobuf", "/v1/workers")
    assert parse(Register, body) == hello
