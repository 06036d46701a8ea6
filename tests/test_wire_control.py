"""Control-plane messages (wire/control.py) and frames for streams and journals (framing.py)."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thinwire.errors import WireError
from thinwire.wire import WireLimits
from thinwire.wire import control as c
from thinwire.wire import thinwire_pb2 as pb
from thinwire.wire.fuzz import mutate_bytes
from thinwire.wire.framing import (HEADER, Frame, FrameReader, Kind, append_frame, frame,
                                   read_frames, scan_journal)

MESSAGES = [
    c.Register("w-1", session="s", specialty="mnist shard 3",
               capabilities={"device": "cuda", "codecs": "topk,int8"}),
    c.Skip("w-1", round=7, reason="battery low"),
    c.Offer("w-1", round=7, score=0.25, bits=123_456),
    c.ModelAnnounce(version=12, round=7, done=False, diffs=[0.5, 0.25, 0.0],
                    model_codec="topk(ratio=0.01)+int8"),
    c.ResourceReport("w-1", time=1.7e9, cpu_percent=150.0, rss_bytes=1 << 30, gpu_util=87.5,
                     links=[c.LinkBytes("coordinator", 10, 20), c.LinkBytes("peer-2", 3, 4)]),
    c.ResourceReport("cpu-node", time=1.0),
    c.Register("py-1", session="s", specialty="python_expert", base="qwen2:abc123",
               centroid=[0.5, -1.25, 0.0], count=40, capabilities={"pid": "12"}),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_control_messages_round_trip(msg):
    data = c.serialize(msg)
    assert c.parse(type(msg), data) == msg
    assert data == c.serialize(c.parse(type(msg), data))  # deterministic


def test_named_helpers_match_the_generic_ones():
    pairs = [(c.serialize_register, c.parse_register, MESSAGES[0]),
             (c.serialize_skip, c.parse_skip, MESSAGES[1]),
             (c.serialize_offer, c.parse_offer, MESSAGES[2]),
             (c.serialize_model_announce, c.parse_model_announce, MESSAGES[3]),
             (c.serialize_resource_report, c.parse_resource_report, MESSAGES[4])]
    for ser, par, msg in pairs:
        assert par(ser(msg)) == msg


def test_gpu_util_absent_is_not_zero():
    back = c.parse_resource_report(c.serialize(c.ResourceReport("n", gpu_util=0.0)))
    assert back.gpu_util == 0.0
    assert c.parse_resource_report(c.serialize(c.ResourceReport("n"))).gpu_util is None


@pytest.mark.parametrize("msg", MESSAGES[:5], ids=lambda m: type(m).__name__)
def test_malformed_bytes_are_rejected(msg):
    data = c.serialize(msg)
    for bad in (data + b"\x00", data + data, data[:-1], b"\xff" * 5):
        with pytest.raises(WireError):
            c.parse(type(msg), bad)
    with pytest.raises(WireError, match="expected bytes"):
        c.parse(type(msg), "text")
    proto = msg.to_proto()
    proto.schema_version = 2
    with pytest.raises(WireError, match="schema_version"):
        c.parse(type(msg), proto.SerializeToString())


BAD = [
    (pb.Register(schema_version=1), "worker_id is empty"),
    (pb.Register(schema_version=1, worker_id="w" * 5000), "max_string"),
    (pb.Register(schema_version=1, worker_id="w", capabilities={f"k{i}": "v" for i in range(2000)}),
     "max_metrics"),
    (pb.Register(schema_version=1, worker_id="w", capabilities={"k": "v" * 5000}), "max_string"),
    (pb.Register(schema_version=1, worker_id="w", centroid=[0.0] * 70_000), "max_centroid"),
    (pb.Register(schema_version=1, worker_id="w", centroid=[1.0, math.nan]), "centroid"),
    (pb.Register(schema_version=1, worker_id="w", centroid=[math.inf]), "centroid"),
    (pb.Register(schema_version=1, worker_id="w", base="b" * 5000), "max_string"),
    (pb.Skip(schema_version=1, worker_id="w", reason="r" * 5000), "max_string"),
    (pb.Offer(schema_version=1, worker_id="w", score=math.nan), "score"),
    (pb.Offer(schema_version=1, worker_id="w", score=math.inf), "score"),
    (pb.ModelAnnounce(schema_version=1, diffs=[0.0] * 5000), "max_history"),
    (pb.ModelAnnounce(schema_version=1, diffs=[-1.0]), "diff"),
    (pb.ModelAnnounce(schema_version=1, diffs=[math.nan]), "diff"),
    (pb.ModelAnnounce(schema_version=1, model_codec="zstd9"), "unknown codec"),
    (pb.ModelAnnounce(schema_version=1, model_codec="topk(ratio=7)"), "model_codec"),
    (pb.ResourceReport(schema_version=1, node_id="n", time=-1.0), "time"),
    (pb.ResourceReport(schema_version=1, node_id="n", cpu_percent=math.inf), "cpu_percent"),
    (pb.ResourceReport(schema_version=1, node_id="n", gpu_util=101.0), "gpu_util"),
    (pb.ResourceReport(schema_version=1, node_id="n",
                       links=[pb.LinkBytes(link="l")] * 2000), "max_metrics"),
    (pb.ResourceReport(schema_version=1, node_id="n",
                       links=[pb.LinkBytes(link="l" * 5000)]), "max_string"),
]
CLASSES = {pb.Register: c.Register, pb.Skip: c.Skip, pb.Offer: c.Offer,
           pb.ModelAnnounce: c.ModelAnnounce, pb.ResourceReport: c.ResourceReport}


@pytest.mark.parametrize("proto, fragment", BAD)
def test_limits_and_values_are_checked(proto, fragment):
    with pytest.raises(WireError, match=fragment) as err:
        c.parse(CLASSES[type(proto)], proto.SerializeToString())
    assert len(str(err.value)) < 400


@settings(max_examples=300, deadline=None)
@given(msg=st.sampled_from(MESSAGES), rng=st.randoms(use_true_random=False))
def test_mutated_control_messages_parse_or_raise_wire_errors(msg, rng):
    data = mutate_bytes(c.serialize(msg), rng) if rng.random() < 0.8 else rng.randbytes(99)
    try:
        c.parse(type(msg), data)
    except WireError:
        pass


def test_control_message_size_is_bounded():
    data = c.serialize(c.Register("w", capabilities={"k": "v" * 1000}))
    with pytest.raises(WireError, match="max_control_bytes"):
        c.parse_register(data, WireLimits(max_control_bytes=100))


# ---- frames ------------------------------------------------------------------------------------
BODIES = [(Kind.UPDATE, b"update"), (Kind.REGISTER, c.serialize(MESSAGES[0])),
          (Kind.RAW, b""), (Kind.MODEL_ANNOUNCE, bytes(1000))]
STREAM = b"".join(frame(body, kind) for kind, body in BODIES)


def test_frames_keep_kind_and_body_in_order():
    got = list(read_frames(STREAM))
    assert [(f.kind, f.body) for f in got] == BODIES
    assert got[1].offset == HEADER.size + len(b"update")


@pytest.mark.parametrize("bad, fragment", [
    (STREAM[:-1], "truncated"), (STREAM[:5], "truncated frame header"),
    (b"XX" + STREAM[2:], "magic"), (STREAM[:2] + b"\x01" + STREAM[3:], "version"),
    (STREAM[:-1] + b"\x01", "checksum"), (STREAM + b"\x00", "truncated"),
])
def test_read_frames_rejects_any_defect(bad, fragment):
    with pytest.raises(WireError, match=fragment):
        list(read_frames(bad))


def test_declared_length_is_bounded_before_the_body_arrives():
    huge = HEADER.pack(b"TW", 2, 0, 1 << 30, 0)
    with pytest.raises(WireError, match="exceeds the limit"):
        list(read_frames(huge, max_body=1 << 20))
    with pytest.raises(WireError, match="exceeds the limit"):
        FrameReader(max_body=1 << 20).feed(huge)


def test_stream_reader_assembles_frames_from_any_split():
    for step in (1, 7, 100, len(STREAM)):
        reader, got = FrameReader(), []
        for i in range(0, len(STREAM), step):
            got += reader.feed(STREAM[i:i + step])
        reader.close()
        assert [(f.kind, f.body) for f in got] == BODIES
        assert [f.offset for f in got] == [f.offset for f in read_frames(STREAM)]
    reader = FrameReader()
    reader.feed(STREAM[:-3])
    assert reader.pending > 0
    with pytest.raises(WireError, match="ended inside a frame"):
        reader.close()


def test_journal_scan_stops_cleanly_at_a_torn_tail(tmp_path):
    path = tmp_path / "journal.bin"
    with open(path, "ab") as f:
        for kind, body in BODIES:
            append_frame(f, body, kind)
    data = path.read_bytes()
    whole = scan_journal(data)
    assert [(f.kind, f.body) for f in whole.frames] == BODIES and whole.end == len(data)
    assert not whole.torn_tail
    last = whole.frames[-1].offset
    for cut in (len(data) - 1, last + 3, last + HEADER.size):
        torn = scan_journal(data[:cut])
        assert len(torn.frames) == len(BODIES) - 1 and torn.end == last and torn.torn_tail
    flipped = scan_journal(data[:-1] + bytes([data[-1] ^ 1]))
    assert flipped.end == last and "checksum" in flipped.problem
    with open(path, "r+b") as f:  # recovery: cut the torn write off and append again
        f.truncate(torn.end)
    with open(path, "ab") as f:
        append_frame(f, b"again", Kind.SKIP, sync=False)
    assert scan_journal(path.read_bytes()).frames[-1] == Frame(Kind.SKIP, b"again", last)


def test_frame_kind_must_fit_a_byte():
    with pytest.raises(WireError):
        frame(b"", 256)
