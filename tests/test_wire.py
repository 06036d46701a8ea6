import random
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from thinwire.codecs import Payload, decode, make_codec
from thinwire.errors import WireError
from thinwire.wire import Update, WireLimits, parse_payload, parse_update, serialize_update
from thinwire.wire import thinwire_pb2 as pb
from thinwire.wire import to_bytes
from thinwire.wire.framing import frame, read_frames

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int8, torch.uint8, torch.int32,
          torch.int64]


@st.composite
def payloads(draw, depth=0):
    buffers = [torch.zeros(draw(st.integers(0, 300)), dtype=draw(st.sampled_from(DTYPES)))
               for _ in range(draw(st.integers(0, 3)))]
    parts = [draw(payloads(depth + 1))] if depth < 2 and draw(st.booleans()) else []
    return Payload(codec=draw(st.text(max_size=12)), name=draw(st.text(max_size=20)),
                   shape=tuple(draw(st.lists(st.integers(0, 2**40), max_size=4))),
                   dtype=draw(st.sampled_from(DTYPES[:3])), params=draw(st.text(max_size=30)),
                   scalars=draw(st.lists(st.floats(-1e3, 1e3, width=32), max_size=4)),
                   seed=draw(st.integers(0, 2**64 - 1)), buffers=buffers, parts=parts)


@settings(max_examples=300, deadline=None)
@given(payloads())
def test_nbytes_equals_serialized_length(p):
    assert p.nbytes == len(to_bytes(p))


def test_generated_code_is_fresh():
    """The committed module embeds exactly what thinwire.proto compiles to (with whichever
    protoc is installed; tests/test_wire_protobuf.py checks the pinned one byte for byte)."""
    from google.protobuf import descriptor_pb2

    from thinwire.wire import regen

    pytest.importorskip("grpc_tools")
    compiled = regen.compiled_file()
    committed = descriptor_pb2.FileDescriptorProto.FromString(pb.DESCRIPTOR.serialized_pb)
    assert compiled == committed, "thinwire.proto changed: run `make proto`"


def make_update() -> Update:
    torch.manual_seed(0)
    tensors = [make_codec("int8").encode(torch.randn(50, 4), name="fc.weight"),
               make_codec("fp16").encode(torch.randn(4), name="fc.bias")]
    return Update(node_id="node-1", tensors=tensors, round=3, seq=7, confidence=0.8,
                  num_samples=128, metrics={"loss": 0.5})


def test_update_round_trip():
    u = make_update()
    back = parse_update(serialize_update(u))
    assert (back.node_id, back.round, back.seq, back.num_samples) == ("node-1", 3, 7, 128)
    assert back.metrics == {"loss": 0.5}
    assert abs(back.confidence - 0.8) < 1e-6
    for a, b in zip(u.tensors, back.tensors):
        assert a.name == b.name and torch.equal(decode(a), decode(b))


def test_trailing_and_truncated_bytes_are_rejected():
    data = serialize_update(make_update())
    with pytest.raises(WireError, match="trailing|malformed"):
        parse_update(data + b"\x00")
    with pytest.raises(WireError, match="trailing|unknown"):
        parse_update(data + data)  # a second copy would silently merge
    for cut in (1, 10, len(data) // 2):
        with pytest.raises(WireError):
            parse_update(data[:-cut])


def tamper(update: Update, fn) -> bytes:
    msg = update.to_proto()
    fn(msg)
    return msg.SerializeToString()


@pytest.mark.parametrize("fn, fragment", [
    (lambda m: setattr(m.tensors[0], "codec", "zstd9"), "unknown codec"),
    (lambda m: m.tensors[0].buffers[0].MergeFrom(pb.Buffer(data=b"\x01\x02")), "buffers"),
    (lambda m: m.tensors[0].shape.append(3), "buffers"),
    (lambda m: m.tensors[0].scalars.append(float("nan")), "non-finite"),
    (lambda m: m.tensors[0].buffers[1].MergeFrom(
        pb.Buffer(data=torch.tensor([float("inf")]).numpy().tobytes())), "buffers|non-finite"),
    (lambda m: setattr(m.tensors[0], "params", "num_bits=99"), "num_bits"),
    (lambda m: setattr(m.tensors[0], "params", "evil=1"), "not decode parameters"),
    (lambda m: setattr(m, "schema_version", 9), "schema_version"),
    (lambda m: setattr(m.tensors[1], "dtype", 4), "floating"),
])
def test_inconsistent_updates_are_rejected(fn, fragment):
    with pytest.raises(WireError, match=fragment):
        parse_update(tamper(make_update(), fn))


def test_element_limit():
    data = serialize_update(make_update())
    with pytest.raises(WireError, match="over the limit"):
        parse_update(data, WireLimits(max_elements=100))
    huge = tamper(make_update(), lambda m: m.tensors[0].shape.extend([2**40]))
    with pytest.raises(WireError):
        parse_update(huge)


def test_fuzz_random_and_mutated_bytes_only_raise_wire_error():
    rng = random.Random(1234)
    seed = serialize_update(make_update())
    payload_seed = to_bytes(make_codec("int8(num_bits=4)").encode(torch.randn(33)))
    for i in range(3000):
        base = seed if i % 2 else payload_seed
        data = bytearray(base)
        for _ in range(rng.randint(1, 6)):
            op = rng.random()
            pos = rng.randrange(len(data)) if data else 0
            if op < 0.5 and data:
                data[pos] = rng.randrange(256)
            elif op < 0.7:
                data.insert(pos, rng.randrange(256))
            elif data:
                del data[pos: pos + rng.randint(1, 8)]
        if i % 7 == 0:
            data = bytearray(rng.randbytes(rng.randint(0, 200)))
        parse = parse_update if base is seed else parse_payload
        try:
            parse(bytes(data))
        except WireError:
            pass


def test_frames_round_trip_and_reject_garbage():
    bodies = [b"", b"abc", bytes(1000)]
    stream = b"".join(frame(b) for b in bodies)
    assert [f.body for f in read_frames(stream)] == bodies
    for bad in (stream[:-1], b"XX" + stream[2:], stream + b"\x00"):
        with pytest.raises(WireError):
            list(read_frames(bad))


def test_design_grad_update_is_expressible():
    """The seed's GradUpdate{node_id, sparse_grad_idx(zlib), quant_grad(int8), confidence}."""
    proto = Path(__file__).parents[1] / "src/thinwire/wire/thinwire.proto"
    assert "confidence" in proto.read_text()
    pytest.importorskip("thinwire.codecs.sparse")
    p = make_codec("topk(ratio=0.05,index=raw+zlib)+int8").encode(torch.randn(400), name="g")
    u = parse_update(serialize_update(Update(node_id="0", tensors=[p], confidence=0.9)))
    t = u.tensors[0]
    assert t.codec == "topk" and "zlib" in t.params and t.parts[0].codec == "int8"
