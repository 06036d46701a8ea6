"""Requests for fuzzing a live coordinator (tests/test_service_fuzz.py, bench/fuzz_service.py).

Grammar-aware: a request is built from the API's own shapes, then some of its parts are
replaced (JSON fields by wrong types, long or deep values, extra or missing keys; protobuf
control messages' fields by near misses, or their bytes mutated; Update header fields and
tensors by wire/fuzz.py's field- and byte-level mutators; ids, tokens, keys and paths from
pools of near misses). A few are raw HTTP that no client library sends
(bad framing, lying lengths, chunked bodies that never end).

The setup the checker relies on: one `victim` worker that never answers, so no round can
close and the model must never change, plus fuzz workers whose keys the fuzzer holds.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from ..server.control import as_text
from ..wire import thinwire_pb2 as pb
from ..wire.control import Offer, Register, Skip
from ..wire.fuzz import mutate, mutate_bytes

NEAR_IDS = ["victim", "w1\n", "", "-x", "a" * 65, "a" * 64, "ghost", "f0 ", "f\u00e9", "../f0",
            "f0\x00", "F0", "f99", "0", "%0a", "worker-1"]
WEIRD = [None, True, 0, -1, 2**63, 10**30, 1e308, -0.0, 0.5, "", "x" * 300, "\u2603" * 50,
         "\n", "NaN", [], {}, [1, [2, [3]]], {"a": {"b": {}}}, {"__tensor__": "0"}]
MESSAGES = {"register": Register, "skip": Skip, "offer": Offer}
NUMBERS = {"schema_version": [0, 2, 2**32 - 1], "score": [float("nan"), float("inf"), -1.0, 1e308],
           "round": [1, 5, 2**53, 2**64 - 1], "bits": [0, 2**50, 2**64 - 1],
           "count": [0, 1, 2**64 - 1]}
TEXTS = ["", "x" * 300, "x" * 2000, "\u2603" * 50, "\n", "a b"]


@dataclass
class Probe:
    kind: str
    method: str
    path: str
    content: bytes | None = None
    params: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Fuzzer:
    rng: random.Random
    token: str
    keys: dict[str, str]  # the fuzz workers' ids and keys
    seeds: list[bytes]  # valid round-0 updates of the fuzz workers

    # ---- one request -------------------------------------------------------------------
    def probe(self) -> Probe:
        make = self.rng.choices(
            [self.update, self.register, self.skip, self.offer, self.leave, self.model,
             self.other], weights=[35, 20, 12, 8, 8, 12, 5])[0]
        probe = make()
        probe.headers = {**self.auth(probe), **probe.headers}
        return probe

    def auth(self, probe: Probe) -> dict[str, str]:
        """Mostly the right token and key (so bodies are reached), else near misses."""
        r, out = self.rng.random(), {}
        if r < 0.85:
            out["Authorization"] = f"Bearer {self.token}"
        elif r < 0.95:
            out["Authorization"] = self.rng.choice(["Bearer", f"Bearer {self.token}x", "Bearer a b",
                                                    self.token, "Basic Zm9vOmJhcg=="])
        wid = self.rng.choice(list(self.keys))
        if self.rng.random() < 0.9:
            out["X-Thinwire-Worker-Key"] = self.keys[wid]
        return out

    def wid(self) -> str:
        return self.rng.choice(list(self.keys)) if self.rng.random() < 0.7 else \
            self.rng.choice(NEAR_IDS)

    def update(self) -> Probe:
        body = self.rng.choice(self.seeds)
        r = self.rng.random()
        if r < 0.35:
            body = self.edit_header(body)
        elif r < 0.85:
            body = mutate(body, self.rng, self.seeds)
        elif r < 0.9:
            body = body + b"\x98\x06\x01"  # unknown field 99
        elif r < 0.95:
            body = self.rng.randbytes(self.rng.randrange(2000))
        probe = Probe("update", "POST", "/v1/updates", body)
        probe.headers = self.key_for(self.node_of(body))
        return probe

    def edit_header(self, body: bytes) -> bytes:
        msg = pb.Update()
        msg.ParseFromString(body)
        for _ in range(self.rng.randint(1, 3)):
            name = self.rng.choice(["node_id", "round", "seq", "kind", "base_version",
                                    "num_samples", "confidence", "metrics", "schema_version"])
            self.set_header(msg, name)
        return msg.SerializeToString()

    def set_header(self, msg: pb.Update, name: str) -> None:
        rng, big = self.rng, [0, 1, 2, 2**53, 2**63, 2**64 - 1]
        if name == "node_id":
            msg.node_id = self.wid()
        elif name == "kind":
            msg.kind = rng.choice(["delta", "model", "grad", "", "x" * 100])
        elif name == "confidence":
            msg.confidence = rng.choice([0.0, -1.0, float("nan"), float("inf"), 1e38])
        elif name == "metrics":
            msg.metrics[rng.choice(["train_loss", "x", ""])] = rng.choice(
                [float("nan"), float("inf"), -1e308, 0.5])
        elif name == "schema_version":
            msg.schema_version = rng.choice([0, 2, 2**32 - 1])
        else:
            setattr(msg, name, rng.choice(big))

    def register(self) -> Probe:
        valid = {"worker_id": self.wid(), "session": self.rng.choice(["s", "t"]),
                 "specialty": "", "capabilities": {"pid": 1, "gpu": False}}
        return self.control("register", "/v1/workers", valid)

    def skip(self) -> Probe:
        valid = {"worker_id": self.wid(), "round": self.rng.choice([0, 0, 1, 5]),
                 "reason": "lazy"}
        return self.control("skip", "/v1/skips", valid)

    def offer(self) -> Probe:
        valid = {"worker_id": self.wid(), "round": 0, "score": 1.0, "bits": 100}
        return self.control("offer", "/v1/offers", valid)

    def control(self, kind: str, path: str, valid: dict[str, Any]) -> Probe:
        """A control body as JSON or as its protobuf message (each mostly well-formed)."""
        if self.rng.random() < 0.5:
            body, kind_header = self.json_body(valid), self.json_type()
        else:
            body, kind_header = self.proto_body(kind, valid), self.proto_type()
        return Probe(kind, "POST", path, body,
                     headers={**kind_header, **self.key_for(valid["worker_id"])})

    def leave(self) -> Probe:
        wid = self.wid() if self.rng.random() < 0.8 else self.rng.choice(
            ["%0a", "%00", "..", "a" * 1000, "f0%2Fx", "%E2%98%83"])
        probe = Probe("leave", "POST", f"/v1/workers/{quote(wid, safe='%')}/leave",
                      self.maybe_body())
        probe.headers = self.key_for(wid)
        return probe

    def model(self) -> Probe:
        """A pull; `wait_round` only where it cannot long-poll (round 0, or no such id)."""
        wid = self.wid()
        params: dict[str, Any] = {"worker_id": wid}
        if self.rng.random() < 0.5:
            params["have"] = self.rng.choice([0, -1, 2**70, "x", ""])
        if self.rng.random() < 0.3:
            params["wait_round"] = 0 if wid in self.keys else self.rng.choice([3, "x", 2**70])
        probe = Probe("model", "GET", "/v1/model", self.maybe_body(), params)
        probe.headers = self.key_for(wid)
        return probe

    def other(self) -> Probe:
        method = self.rng.choice(["GET", "PUT", "DELETE", "PATCH", "POST", "OPTIONS", "HEAD"])
        path = self.rng.choice(["/v1/status", "/v1/health", "/v1/updates", "/v1/workers",
                                "/", "/v1/" + "x" * 3000, "/openapi.json", "/v2/updates"])
        return Probe("other", method, path, self.maybe_body())

    # ---- JSON bodies -------------------------------------------------------------------
    def json_body(self, valid: dict[str, Any]) -> bytes:
        """The valid body with some fields replaced, dropped or added; or its text mutated;
        or JSON no parser should enjoy (deep nesting, NaN, a huge number)."""
        r, rng = self.rng.random(), self.rng
        obj = dict(valid)
        if r < 0.6:
            for key in rng.sample(list(obj) + ["extra"], rng.randint(1, 2)):
                if rng.random() < 0.2:
                    obj.pop(key, None)
                else:
                    obj[key] = self.value(3)
            return json.dumps(obj).encode()
        if r < 0.8:
            return mutate_bytes(json.dumps(obj).encode(), rng)
        return rng.choice([
            b"[" * 50_000 + b"]" * 50_000, b"{" * 1000, b'{"worker_id": NaN}',
            b'{"round": 1' + b"0" * 5000 + b"}", b"\xff\xfe{}", b"", b"null",
            json.dumps({**obj, "capabilities": {f"k{i}": i for i in range(1000)}}).encode()])

    # ---- protobuf bodies ---------------------------------------------------------------
    def proto_body(self, kind: str, valid: dict[str, Any]) -> bytes:
        """The valid message with some fields set to near misses; or its bytes mutated,
        extended, cut or doubled; or another message's bytes."""
        rng, fields = self.rng, dict(valid)
        if "capabilities" in fields:
            fields["capabilities"] = as_text(fields["capabilities"])
        msg = MESSAGES[kind](**fields).to_proto()
        r = rng.random()
        if r < 0.5:
            for _ in range(rng.randint(1, 3)):
                self.set_control(msg, rng.choice(msg.DESCRIPTOR.fields).name)
            return msg.SerializeToString()
        data = msg.SerializeToString()
        if r < 0.85:
            return mutate_bytes(data, rng)
        other = MESSAGES[rng.choice(list(MESSAGES))](self.wid()).to_proto()
        return rng.choice([data + b"\x98\x06\x01", data + data, data[:-1], b"",
                           other.SerializeToString(), rng.randbytes(rng.randrange(300))])

    def set_control(self, msg: Any, name: str) -> None:
        rng = self.rng
        if name == "capabilities":
            for _ in range(rng.choice([1, 3, 40])):
                msg.capabilities[rng.choice(["", "k" * 100, "ok", "a b", f"k{rng.random()}"])
                                 ] = rng.choice(TEXTS)
        elif name == "centroid":
            msg.centroid.extend(rng.choice([[float("nan")], [1.0] * 9, [float("inf"), 0.0]]))
        elif name == "worker_id":
            msg.worker_id = self.wid()
        elif name in NUMBERS:
            setattr(msg, name, rng.choice(NUMBERS[name]))
        else:
            setattr(msg, name, rng.choice(TEXTS))

    def proto_type(self) -> dict[str, str]:
        return {"Content-Type": self.rng.choice(["application/x-protobuf"] * 8 + [
            "application/json", "application/x-protobuf; proto=thinwire.v1",
            "application/octet-stream"])}

    def value(self, depth: int) -> Any:
        rng = self.rng
        if depth and rng.random() < 0.25:
            if rng.random() < 0.5:
                return [self.value(depth - 1) for _ in range(rng.randrange(4))]
            return {rng.choice(["a", "__tensor__", "", "x" * 70]): self.value(depth - 1)
                    for _ in range(rng.randrange(4))}
        return rng.choice(WEIRD + NEAR_IDS)

    def maybe_body(self) -> bytes | None:
        return None if self.rng.random() < 0.8 else self.rng.randbytes(self.rng.randrange(300))

    def json_type(self) -> dict[str, str]:
        return {"Content-Type": self.rng.choice(["application/json"] * 8 + [
            "text/plain", "application/json; charset=latin-1", "application/x-protobuf"])}

    def key_for(self, wid: str) -> dict[str, str]:
        """The fuzzer's key for its own ids (most of the time), a near miss otherwise."""
        key = self.keys.get(wid)
        if key is not None and self.rng.random() < 0.85:
            return {"X-Thinwire-Worker-Key": key}
        return {"X-Thinwire-Worker-Key": self.rng.choice(["", "x", (key or "k") + "x"])}

    @staticmethod
    def node_of(body: bytes) -> str:
        msg = pb.Update()
        try:
            msg.ParseFromString(body)
        except Exception:  # noqa: BLE001  most mutated bodies do not parse
            return ""
        return msg.node_id

    # ---- raw HTTP ----------------------------------------------------------------------
    def raw(self) -> bytes:
        """Bytes for a raw socket: bad framing that a client library would not send."""
        auth = f"Authorization: Bearer {self.token}\r\n"
        return self.rng.choice([
            b"GARBAGE\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n", b"\x00\x01\x02\r\n\r\n",
            b"GET /v1/health HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
            b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20000 + b"\r\n\r\n",
            f"POST /v1/updates HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: -5\r\n\r\n".encode(),
            f"POST /v1/updates HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 5\r\n"
            "Content-Length: 6\r\n\r\nhello".encode(),
            f"POST /v1/skips HTTP/1.1\r\nHost: x\r\n{auth}Transfer-Encoding: chunked\r\n\r\n"
            "zz\r\nhello\r\n0\r\n\r\n".encode(),
            f"POST /v1/skips HTTP/1.1\r\nHost: x\r\n{auth}Transfer-Encoding: chunked\r\n\r\n"
            "ffffffffffffffff\r\nhello\r\n".encode(),
            f"POST /v1/updates HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 99\r\n\r\nab".encode(),
        ])
