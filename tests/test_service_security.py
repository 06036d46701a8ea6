"""The coordinator survives hostile requests: one size/time/auth guard in front of every
endpoint, bounded registration data, a capped registry, idempotent journaling and
per-worker keys. Each test drives a real coordinator process over real sockets."""

import json
import time

import httpx
import pytest

from service_harness import (ADMIN, KEY_HEADER, TOKEN, delta_update, filled, read_status,
                             services)  # noqa: F401  (fixture)

SETS = ["total_workers=2", "max_rounds=5", "max_request_bytes=1048576",
        "request_timeout=2"]
AUTH = f"Authorization: Bearer {TOKEN}\r\n".encode()


def chunked_head(path: str, auth: bool) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n").encode() + (AUTH if auth else b"") + b"\r\n"


def chunks(total: int, size: int = 65536) -> bytes:
    piece = b"%x\r\n" % size + b"[" * size + b"\r\n"
    return piece * (total // size)


def answered_within(sock, seconds: float) -> int | None:
    t0 = time.monotonic()
    status = read_status(sock)
    assert time.monotonic() - t0 < seconds, f"answer took {time.monotonic() - t0:.1f}s"
    return status


@pytest.fixture
def svc(tmp_path, services):
    return services(tmp_path, SETS)


# ---- finding 3: bodies are bounded, timed and authenticated before they are read ----------
def test_chunked_body_without_token_is_refused_before_it_is_read(svc):
    rss = svc.rss_kib()
    sock = svc.raw(chunked_head("/v1/workers", auth=False), chunks(4 << 20))
    assert answered_within(sock, 3) == 401
    assert svc.rss_kib() - rss < 16 << 10


def test_chunked_body_over_the_limit_is_cut_off_at_the_limit(svc):
    # a JSON endpoint: 64 KiB; the update endpoint: max_request_bytes (1 MiB here)
    for path, sent in (("/v1/workers", 1 << 20), ("/v1/updates", 2 << 20)):
        sock = svc.raw(chunked_head(path, auth=True), chunks(sent))
        assert answered_within(sock, 3) == 413


def test_lying_or_slow_bodies_are_answered_within_seconds(svc):
    head = f"POST /v1/updates HTTP/1.1\r\nHost: x\r\n{AUTH.decode()}"
    huge = svc.raw(f"{head}Content-Length: {1 << 40}\r\n\r\n".encode(), b"x" * 100)
    assert answered_within(huge, 2) == 413
    short = svc.raw(f"{head}Content-Length: 1000\r\n\r\n".encode(), b"x" * 100)
    assert answered_within(short, 5) == 408  # request_timeout=2 of silence


def test_slow_headers_are_dropped(svc):
    sock = svc.raw(b"POST /v1/wor")
    t0 = time.monotonic()
    assert read_status(sock) in (None, 408)
    assert time.monotonic() - t0 < 5


def test_json_endpoints_have_a_small_limit(svc):
    caps = {f"k{i}": "v" * 1000 for i in range(2048)}  # 2 MiB of capabilities
    r = svc.call("POST", "/v1/workers", json={"worker_id": "a", "session": "s",
                                              "capabilities": caps})
    assert r.status_code == 413 and "max_json_bytes" in r.json()["error"]
    assert svc.status()["workers"] == []


def test_token_is_checked_before_the_body_is_parsed(svc):
    r = httpx.post(svc.url + "/v1/workers", content=b"{not json",
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 401
    r = svc.call("POST", "/v1/workers", content=b"{not json",
                 headers={"Content-Type": "application/json"})
    assert r.status_code == 400


# ---- finding 4: registration data is bounded and cannot break a restart --------------------
@pytest.mark.parametrize("caps", [
    {"deep": json.loads("[" * 700 + "]" * 700)},
    {"x": {"__tensor__": "nope"}},
    {"k" * 100: 1},
    {"big": "v" * 5000},
])
def test_bad_capabilities_are_refused(svc, caps):
    r = svc.call("POST", "/v1/workers", json={"worker_id": "a", "session": "s",
                                              "capabilities": caps})
    assert r.status_code == 400, r.text
    assert svc.status()["workers"] == []


def test_accepted_registration_survives_round_close_and_kill(svc):
    svc.register("a", capabilities={"__tensor__": "nope"})  # the snapshot's old marker
    svc.register("c", capabilities={"gpu": True, "mem": 16.5, "os": "linux"})
    svc.register("b")
    for w in ("b", "c"):
        svc.model(w)  # all three take part in round 0, so it waits for their skips
    theta = svc.model("a")
    assert svc.push(delta_update("a", 0, 1, filled(theta, 0.01))).status_code == 200
    assert svc.skip("b", 0).status_code == 200
    assert svc.skip("c", 0).status_code == 200
    svc.wait(lambda s: s["version"] == 1)
    svc.kill()
    svc.start()
    assert svc.status()["version"] == 1
    assert svc.register("a")["round"] == 1


# ---- finding 5: bounded registry, idempotent journal ---------------------------------------
def test_registry_is_capped(tmp_path, services):
    svc = services(tmp_path, ["total_workers=2", "max_registered=5"])
    codes = [svc.call("POST", "/v1/workers", json={"worker_id": f"w{i}", "session": "s"}
                      ).status_code for i in range(9)]
    assert codes == [200] * 5 + [429] * 4
    r = svc.call("POST", "/v1/workers", json={"worker_id": "w9", "session": "s"})
    assert "max_registered" in r.json()["error"]
    assert len(svc.status()["workers"]) == 5


def test_repeated_register_and_leave_do_not_grow_the_journal(svc, tmp_path):
    journal = tmp_path / "journal.bin"
    svc.register("a")
    size = journal.stat().st_size
    for _ in range(3):
        svc.register("a")
    assert journal.stat().st_size == size
    assert svc.call("POST", "/v1/workers/a/leave", wid="a").status_code == 200
    size = journal.stat().st_size
    for _ in range(3):
        assert svc.call("POST", "/v1/workers/a/leave", wid="a").status_code == 200
    assert journal.stat().st_size == size


# ---- findings 6 and 7: what the wire and the id rules refuse -------------------------------
def test_update_with_unknown_protobuf_field_is_refused_and_not_journaled(svc, tmp_path):
    svc.register("a")
    svc.register("b")
    body = delta_update("a", 0, 1, filled(svc.model("a"), 0.01)) + b"\x98\x06\x01"  # field 99
    size = (tmp_path / "journal.bin").stat().st_size
    assert svc.push(body, wid="a").status_code == 400
    assert (tmp_path / "journal.bin").stat().st_size == size
    assert svc.status()["uploads"] == 0


def test_worker_id_with_trailing_newline_is_refused(svc):
    r = svc.call("POST", "/v1/workers", json={"worker_id": "w1\n", "session": "s"})
    assert r.status_code == 400
    svc.register("w1")
    theta = svc.model("w1")
    assert svc.push(delta_update("w1\n", 0, 1, filled(theta, 0.01)), wid="w1"
                    ).status_code in (400, 404)
    assert svc.status()["uploads"] == 0


# ---- per-worker keys, status behind the token, no long poll for strangers ----------------
def test_worker_key_guards_every_call_for_that_id(svc):
    info = svc.register("a")
    svc.register("b")
    assert len(info["worker_key"]) >= 32
    theta = svc.model("a")
    body = delta_update("a", 0, 1, filled(theta, 0.01))
    bad = {KEY_HEADER: "wrong"}
    for r in (svc.call("POST", "/v1/updates", content=body, headers=bad),
              svc.call("POST", "/v1/skips", headers=bad,
                       json={"worker_id": "a", "round": 0}),
              svc.call("POST", "/v1/workers/a/leave", headers=bad),
              svc.call("GET", "/v1/model", params={"worker_id": "a"}, headers=bad),
              svc.call("POST", "/v1/workers", headers=bad,
                       json={"worker_id": "a", "session": "other"})):
        assert r.status_code == 403, r.text
    assert svc.status()["uploads"] == 0
    assert svc.push(body).status_code == 200
    # the admin token may take the id over (new session, new key, fresh codec state)
    r = svc.call("POST", "/v1/workers", token=ADMIN,
                 json={"worker_id": "a", "session": "other"})
    assert r.status_code == 200 and r.json()["worker_key"] != info["worker_key"]


def test_unknown_worker_gets_404_without_the_long_poll(svc):
    t0 = time.monotonic()
    r = svc.call("GET", "/v1/model", params={"worker_id": "ghost", "wait_round": 3})
    assert r.status_code == 404 and time.monotonic() - t0 < 2


def test_status_needs_the_token_off_loopback(tmp_path, services):
    svc = services(tmp_path, ["total_workers=2"], host="0.0.0.0")
    assert httpx.get(svc.url + "/v1/status").status_code == 401
    assert svc.call("GET", "/v1/status").status_code == 200
    assert httpx.get(svc.url + "/v1/health").status_code == 200


def test_restarted_worker_takes_its_id_back_with_its_key_file(tmp_path, services):
    svc = services(tmp_path / "state", ["total_workers=2", "round_timeout=600"])
    key_file = tmp_path / "w0.key"
    first = svc.worker("w0", "--key-file", str(key_file))
    end = time.monotonic() + 60
    while not key_file.exists() and time.monotonic() < end:
        time.sleep(0.2)
    first_key = key_file.read_text()
    first.kill()
    first.wait()
    assert svc.worker("w0").wait(timeout=60) != 0  # a new session without the key: refused
    again = svc.worker("w0", "--key-file", str(key_file))
    while key_file.read_text() == first_key and time.monotonic() < end + 60:
        time.sleep(0.2)
    assert key_file.read_text() != first_key and again.poll() is None
