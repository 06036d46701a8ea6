"""Properties every registered codec must have, driven by tests/codec_cases.py."""

import ast
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from codec_cases import EF_EXAMPLES, EXAMPLES
from thinwire.codecs import REGISTRY, Decoder, Encoder, make_codec
from thinwire.errors import CodecError, ConfigError
from thinwire.wire import parse_payload, to_bytes

NAMES = sorted(REGISTRY)
SHAPES = st.one_of(
    st.just(()), st.just((0,)), st.just((3, 0)),
    st.lists(st.integers(1, 9), min_size=1, max_size=3).map(tuple),
    st.sampled_from([(1,), (7,), (1023,), (33, 65), (20000,)]),
)


def covered_by_test_modules() -> set[str]:
    names: set[str] = set()
    for path in Path(__file__).parent.glob("test_codecs_*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and any(
                    getattr(t, "id", None) == "COVERED" for t in node.targets):
                names |= ast.literal_eval(node.value)
    return names


def test_every_codec_has_an_example_and_a_dedicated_test():
    assert set(NAMES) == set(EXAMPLES), "tests/codec_cases.py must list every codec"
    missing = set(NAMES) - covered_by_test_modules()
    assert not missing, f"codecs without a dedicated test module: {missing}"


def test_every_codec_documents_itself():
    for cls in REGISTRY.values():
        assert cls.summary and cls.bytes_per_element, cls.name


def sample(shape, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen) * torch.rand(shape, generator=gen) ** 2
    return x.to(dtype)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=12, deadline=None)
@given(shape=SHAPES, dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
def test_round_trip_shape_dtype_and_exact_wire_size(name, shape, dtype):
    enc, direct, via_wire = Encoder(make_codec(EXAMPLES[name])), Decoder(), Decoder()
    for step in range(2):
        x = sample(shape, step, dtype)
        payload = enc.encode(x, name="w")
        data = to_bytes(payload)
        assert payload.nbytes == len(data)
        y = direct.decode(payload)
        z = via_wire.decode(parse_payload(data))
        assert y.shape == x.shape and y.dtype == x.dtype
        assert torch.equal(y, z)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_continues_identically(name):
    spec = EF_EXAMPLES[name]
    enc, dec = Encoder(make_codec(spec, error_feedback=True)), Decoder()
    for step in range(3):
        dec.decode(enc.encode(sample((40, 30), step), "w"))
    enc2, dec2 = Encoder(make_codec(spec, error_feedback=True)), Decoder()
    enc2.load_state_dict(enc.state_dict())
    dec2.load_state_dict(dec.state_dict())
    for step in range(3, 6):
        x = sample((40, 30), step)
        p1, p2 = enc.encode(x, "w"), enc2.encode(x, "w")
        assert to_bytes(p1) == to_bytes(p2)
        assert torch.equal(dec.decode(p1), dec2.decode(p2))


@pytest.mark.parametrize("name", NAMES)
def test_error_feedback_tracks_the_sum_of_inputs(name):
    codec = make_codec(EF_EXAMPLES[name], error_feedback=True)
    enc, dec = Encoder(codec), Decoder()
    sent = torch.zeros(500, dtype=torch.float64)
    total = torch.zeros(500, dtype=torch.float64)
    gaps = []
    for step in range(60):
        x = sample((500,), step)
        total += x.double()
        sent += dec.decode(enc.encode(x, "w")).double()
        gaps.append(float((total - sent).norm()))
    scale = float(sample((500,), 0).norm())
    # the gap is one residual: bounded, not growing with the number of steps
    assert max(gaps[30:]) < 12 * scale
    assert max(gaps[45:]) < 3 * max(max(gaps[15:30]), 0.05 * scale)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_input_is_refused(name, bad):
    x = sample((64,))
    x[5] = bad
    with pytest.raises(CodecError, match="non-finite"):
        Encoder(make_codec(EXAMPLES[name])).encode(x, "w")


@pytest.mark.parametrize("name", NAMES)
def test_integer_input_is_refused(name):
    with pytest.raises(CodecError, match="floating"):
        Encoder(make_codec(EXAMPLES[name])).encode(torch.arange(10), "w")


def test_error_feedback_refuses_non_contractive_codecs():
    with pytest.raises(ConfigError, match="not contractive"):
        make_codec("randomk(ratio=0.1)", error_feedback=True)
    assert make_codec("randomk(ratio=0.1,unbiased=false)", error_feedback=True).stateful
