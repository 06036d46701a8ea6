"""Declared sizes are bounded before anything is computed or allocated from them.

Each test crafts a hostile protobuf directly (as a fuzzer against the coordinator did) and
checks for a clean, short WireError/CodecError, raised before the expensive step.
"""

import os
import subprocess
import sys
import time
import zlib

import pytest
import torch

from codec_cases import EXAMPLES
from thinwire.codecs import Decoder, Encoder, index, make_codec
from thinwire.errors import CodecError, WireError
from thinwire.wire import Update, WireLimits, parse_payload, parse_update, serialize_update
from thinwire.wire import thinwire_pb2 as pb
from thinwire.wire.tensor import payload_to_proto

MAX_MESSAGE = 300  # characters: errors quote what is wrong, never the whole input


def update_bytes(*tensors: pb.TensorPayload, **fields) -> bytes:
    msg = pb.Update(schema_version=1, node_id="n", kind="grad", **fields)
    msg.tensors.extend(tensors)
    return msg.SerializeToString()


def rejected(data: bytes, fragment: str = "", **kw) -> str:
    """parse_update must raise WireError, fast, with a short message containing fragment."""
    start = time.perf_counter()
    with pytest.raises(WireError, match=fragment) as err:
        parse_update(data, **kw)
    assert time.perf_counter() - start < 1.0  # sanity guard against super-linear work
    assert len(str(err.value)) < MAX_MESSAGE, str(err.value)[:1000]
    return str(err.value)


def fp32(values: list[float]) -> pb.Buffer:
    return pb.Buffer(dtype=1, data=torch.tensor(values, dtype=torch.float32).numpy().tobytes())


# ---- arithmetic on declared sizes --------------------------------------------------------------
def test_fifty_thousand_huge_dims_are_rejected_before_any_product():
    t = pb.TensorPayload(codec="none", dtype=1, shape=[2**64 - 1] * 50_000)
    rejected(update_bytes(t), "number of dims.*max_dims")


@pytest.mark.parametrize("dims", [300, 8, 2])
def test_huge_dims_never_reach_an_error_message_unformatted(dims):
    t = pb.TensorPayload(codec="none", dtype=1, shape=[2**63 - 1] * dims)
    rejected(update_bytes(t), "dims|elements")


def test_huge_dims_in_a_nested_part_are_rejected_too():
    inner = pb.TensorPayload(codec="none", dtype=1, shape=[2**63 - 1] * 300)
    outer = pb.TensorPayload(codec="topk", dtype=1, shape=[4], parts=[inner])
    rejected(update_bytes(outer), "dims")
    deep = pb.TensorPayload(codec="none", dtype=1, shape=[0, 2**64 - 1])
    rejected(update_bytes(pb.TensorPayload(codec="topk", dtype=1, shape=[4], parts=[deep])),
             "over the limit")


def test_a_zero_dim_does_not_excuse_a_huge_one():
    t = pb.TensorPayload(codec="none", dtype=1, shape=[0, 2**64 - 1], buffers=[fp32([])])
    rejected(update_bytes(t), "over the limit")


def test_total_elements_count_nested_parts():
    limits = WireLimits(max_total_elements=1000)
    p = make_codec("topk(ratio=1.0)").encode(torch.randn(600), name="w")  # 600 + 600 values
    rejected(serialize_update(Update(node_id="n", tensors=[p])), "max_total_elements",
             limits=limits)


@pytest.mark.parametrize("make, knob", [
    (lambda: pb.TensorPayload(codec="none", dtype=1, name="x" * 1_000_000), "max_string"),
    (lambda: pb.TensorPayload(codec="none" * 1000, dtype=1), "max_string"),
    (lambda: pb.TensorPayload(codec="none", dtype=1, buffers=[pb.Buffer()] * 1000),
     "max_buffers"),
    (lambda: pb.TensorPayload(codec="none", dtype=1, scalars=[0.0] * 100_000), "max_scalars"),
    (lambda: pb.TensorPayload(codec="topk", dtype=1, parts=[pb.TensorPayload()] * 100),
     "max_parts"),
])
def test_every_declared_count_has_a_limit(make, knob):
    rejected(update_bytes(make()), knob)


def test_nesting_depth_is_bounded():
    t = pb.TensorPayload(codec="none", dtype=1)
    for _ in range(50):
        t = pb.TensorPayload(codec="topk", dtype=1, parts=[t])
    rejected(update_bytes(t), "nesting|max_depth|malformed")


def test_update_strings_and_maps_are_bounded():
    long_id = pb.Update(schema_version=1, node_id="n" * 100_000, kind="grad")
    rejected(long_id.SerializeToString(), "max_string")
    many = pb.Update(schema_version=1, node_id="n", kind="grad")
    many.metrics.update({f"m{i}": 0.0 for i in range(5000)})
    rejected(many.SerializeToString(), "max_metrics")
    rejected(pb.Update(schema_version=1, node_id="n", kind="k" * 10**6).SerializeToString(),
             "kind")


# ---- memory from declared, not actual, sizes ----------------------------------------------------
def bomb_topk(n: int, count: int, coding: str = "bitmap+zlib") -> pb.TensorPayload:
    """A top-k payload whose index inflates to n/8 (bitmap) or 4*count (raw) bytes of zeros
    with one set bit, streamed through compressobj so the test never holds it whole."""
    plain = n // 8 if coding.startswith("bitmap") else 4 * count
    z, step = zlib.compressobj(9), 1 << 20
    data = [z.compress(b"\x01")] + [z.compress(bytes(min(step, plain - 1 - i)))
                                    for i in range(0, plain - 1, step)] + [z.flush()]
    values = pb.TensorPayload(codec="none", dtype=1, shape=[count], buffers=[fp32([1.0] * count)])
    return pb.TensorPayload(codec="topk", dtype=1, shape=[n], params=f"index={coding}",
                            buffers=[pb.Buffer(dtype=5, data=b"".join(data))], parts=[values])


def test_a_layout_check_runs_before_any_index_is_decoded(monkeypatch):
    calls = []
    monkeypatch.setattr(index, "decode", lambda *a: calls.append(a))

    def expect(update):
        if list(update.tensors[0].shape) != [100]:
            raise WireError(f"shape {list(update.tensors[0].shape)} is not the model's")

    rejected(update_bytes(bomb_topk(1 << 28, 1)), "not the model", expect=expect)
    assert not calls


def test_an_index_count_is_trusted_only_after_its_value_part_matched_its_bytes(monkeypatch):
    """A value part declaring 2**21 values it does not carry must not size the index."""
    calls = []
    monkeypatch.setattr(index, "decode", lambda *a: calls.append(a))
    t = bomb_topk(1 << 23, 1 << 21, "raw+zlib")
    del t.parts[0].buffers[:]
    rejected(update_bytes(t), "'none' payload needs")
    assert not calls


def peak_rss_growth_mb(code: str) -> float:
    """Run `code` (which defines `data`) in a fresh interpreter; MB the peak RSS grew while
    parse_update(data) ran, a clean measure of what one request costs."""
    script = f"""
import resource, sys
from thinwire.wire import parse_update
from thinwire.errors import ThinwireError
{code}
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    parse_update(data)
except ThinwireError:
    pass
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env={"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return float(out.stdout.split()[-1])


def test_a_zlib_bitmap_index_is_decoded_in_bounded_memory():
    """33 KB of bitmap+zlib for 2**28 elements used to cost +544 MB RSS in one request."""
    code = ("import test_wire_bounds as t\n"
            "data = t.update_bytes(t.bomb_topk(1 << 28, 1000))")
    growth = peak_rss_growth_mb(code)
    assert growth < 64, f"parse grew the peak RSS by {growth:.0f} MB"


def test_bitmap_with_wrong_count_fails_before_expanding_everything():
    data = update_bytes(bomb_topk(1 << 20, 3))  # one bit set, three values
    rejected(data, "marks 1 elements, expected 3")


# ---- decoders check layout before allocating from the declared shape --------------------------
SIZED_BY_SHAPE = sorted(n for n in EXAMPLES  # sparsifiers' indices fit any larger tensor
                        if n not in ("topk", "thresholdv", "dgc", "randomk"))


@pytest.mark.parametrize("name", SIZED_BY_SHAPE)
def test_decoders_reject_a_declared_shape_their_buffers_do_not_hold(name):
    payload = Encoder(make_codec(EXAMPLES[name])).encode(torch.randn(64), name="w")
    payload.shape = (1 << 26,)
    with pytest.raises(CodecError):
        Decoder().decode(payload)


@pytest.mark.parametrize("spec", ["randomk(ratio=0.01)", "sketch(rows=3,cols=64)",
                                  "powersgd(rank=1)"])
def test_seed_and_factor_codecs_cannot_declare_more_than_the_element_limit(spec):
    payload = Encoder(make_codec(spec)).encode(torch.randn(64, 64), name="w")
    msg = payload_to_proto(payload)
    msg.shape[:] = [1 << 15, 1 << 15]
    with pytest.raises(WireError, match="over the limit"):
        parse_payload(msg.SerializeToString(), WireLimits(max_elements=1 << 26))


def test_unknown_fields_are_refused_at_every_level():
    """ByteSize() counts unknown fields, so a size check alone let them through."""
    import torch

    from thinwire.codecs import make_codec
    from thinwire.errors import WireError
    from thinwire.wire import Update, parse_update, serialize_update

    good = serialize_update(Update(node_id="a", tensors=[make_codec("none").encode(
        torch.ones(3), None, "w")]))
    parse_update(good)
    for extra in (b"\x98\x06\x01", b"\xfa\x06\x04abcd"):  # varint field 99, bytes field 111
        with pytest.raises(WireError, match="does not know"):
            parse_update(good + extra)
