"""Sparsifiers (topk, randomk, thresholdv, dgc), sketch, powersgd and index coding."""

import zlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from thinwire.codecs import Decoder, Encoder, index, make_codec
from thinwire.codecs import sketch as sketch_module
from thinwire.codecs.powersgd import matrix_shape
from thinwire.codecs.sparse import topk_indices
from thinwire.errors import CodecError, ConfigError, WireError
from thinwire.wire import parse_payload, to_bytes
from thinwire.wire.tensor import payload_to_proto

COVERED = {"topk", "randomk", "thresholdv", "dgc", "sketch", "powersgd"}

SPECS = ["topk(ratio=0.1)", "topk(ratio=0.3,method=torch)", "topk(k=1000)", "topk(index=raw)",
         "topk(ratio=0.5,index=bitmap+zlib)", "randomk(ratio=0.2)",
         "randomk(k=3,unbiased=false)", "thresholdv(v=0.2)", "dgc(ratio=0.1)",
         "sketch(rows=3,cols=32,heavy=4)", "sketch", "powersgd(rank=2)", "powersgd",
         "topk(ratio=0.01)+int8", "dgc(ratio=0.2)+int8(num_bits=4)"]
SHAPES = [(), (0,), (3, 0), (1,), (7,), (5, 3), (257,), (33, 65)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def heavy_tailed(n, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, generator=gen) * torch.rand(n, generator=gen) ** 4).to(dtype)


# ---- shared properties ----------------------------------------------------------------------
@pytest.mark.parametrize("spec", SPECS)
def test_round_trips_keep_shape_dtype_and_exact_size(spec):
    for shape in SHAPES:
        for dtype in DTYPES:
            x = heavy_tailed(shape, 1, dtype) if shape else torch.tensor(0.7).to(dtype)
            enc, dec = Encoder(make_codec(spec)), Decoder()
            for _ in range(2):
                payload = enc.encode(x, "w")
                data = to_bytes(payload)
                assert payload.nbytes == len(data)
                y = dec.decode(payload)
                assert y.shape == x.shape and y.dtype == x.dtype, (spec, shape, dtype)
                assert torch.equal(y, Decoder().decode(parse_payload(data)))
                assert torch.equal(y, enc.codec.decode(payload))  # the sender's own instance


@pytest.mark.parametrize("bad", [
    "topk(ratio=0)", "topk(ratio=2)", "topk(k=0)", "topk(index=foo)", "topk(index=auto+zlib)",
    "topk(method=heap)", "randomk(ratio=0)", "thresholdv(v=0)", "dgc(momentum=1)",
    "dgc(ratio=2)", "sketch(rows=0)", "powersgd(rank=0)", "powersgd(min_compression=0.5)"])
def test_bad_params_raise_config_error(bad):
    with pytest.raises(ConfigError):
        make_codec(bad)


# ---- topk / thresholdv ----------------------------------------------------------------------
@pytest.mark.parametrize("method", ["sampled", "torch"])
@pytest.mark.parametrize("n, k", [(1, 1), (100, 7), (20000, 200), (100003, 1000), (50000, 1)])
def test_topk_keeps_exactly_the_k_largest(method, n, k):
    x = torch.randn(n, generator=torch.Generator().manual_seed(n))  # no ties
    y = make_codec(f"topk(k={k},method={method})").roundtrip(x)[1]
    want = set(torch.topk(x.abs(), k).indices.tolist())
    got = set(y.nonzero().squeeze(1).tolist())
    assert got == want
    assert torch.equal(y[list(want)], x[list(want)])


def test_sampled_selection_retries_when_the_sample_overshoots():
    x = heavy_tailed(50000, 3)
    want = torch.topk(x.abs(), 2000).indices.sort().values
    for slack in (-30.0, -3.0, 0.0, 3.0):  # negative slack: too few pass, threshold is lowered
        assert torch.equal(topk_indices(x, 2000, "sampled", slack), want)


@pytest.mark.parametrize("dtype", DTYPES)
def test_topk_with_ties_keeps_k_and_nothing_smaller(dtype):
    x = (torch.randint(-20, 21, (30000,), generator=torch.Generator().manual_seed(2)) / 4)
    x = x.to(dtype)
    idx = topk_indices(x, 1234)
    assert idx.numel() == 1234 and bool((idx[1:] > idx[:-1]).all())
    mask = torch.zeros(x.numel(), dtype=torch.bool)
    mask[idx] = True
    assert x[mask].float().abs().min() >= x[~mask].float().abs().max()


def test_topk_plus_int8_composes():
    x = heavy_tailed(5000, 4)
    payload = make_codec("topk(ratio=0.01)+int8").encode(x)
    assert payload.parts[0].codec == "int8" and payload.parts[0].shape == (50,)
    y = Decoder().decode(parse_payload(to_bytes(payload)))
    keep = torch.topk(x.abs(), 50).indices
    assert set(y.nonzero().squeeze(1).tolist()) <= set(keep.tolist())
    scale = x.abs().max() / 127
    assert torch.allclose(y[keep], x[keep], atol=float(scale) / 2 + 1e-7)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("v", [0.1, 0.7])  # each rounds down in some dtype, up in another
def test_thresholdv_keeps_exactly_abs_ge_v(dtype, v):
    x = heavy_tailed(3000, 5, dtype)
    x[10] = v      # rounds to the dtype: kept only if the rounded value is >= v
    x[11] = -v
    y = make_codec(f"thresholdv(v={v})").roundtrip(x)[1]
    keep = x.double().abs() >= v
    assert torch.equal(y, torch.where(keep, x, torch.zeros_like(x)))


@pytest.mark.parametrize("spec", ["topk(ratio=0.01)", "topk(ratio=0.01,method=torch)",
                                  "thresholdv(v=5)", "dgc(ratio=0.01)", "sketch", "powersgd"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_fast_paths_still_refuse_non_finite(spec, bad):
    x = heavy_tailed(30000, 6)
    x[12345] = bad
    enc = Encoder(make_codec(spec))
    enc.encode(heavy_tailed(30000, 7), "w")
    before = enc.state_dict()
    with pytest.raises(CodecError, match="non-finite"):
        enc.encode(x, "w")
    after = enc.state_dict()
    for key, value in before["slots"]["w"].items():  # a refused tensor leaves no trace
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, after["slots"]["w"][key])


# ---- randomk --------------------------------------------------------------------------------
def test_randomk_is_unbiased_and_sends_no_indices():
    n, k, steps = 40, 8, 1500
    x = heavy_tailed(n, 8) + 0.1
    enc, dec = Encoder(make_codec(f"randomk(k={k},seed=3)")), Decoder()
    total, seeds = torch.zeros(n, dtype=torch.float64), set()
    for _ in range(steps):
        payload = enc.encode(x, "w")
        assert payload.buffers == [] and payload.parts[0].numel == k
        seeds.add(payload.seed)
        total += dec.decode(parse_payload(to_bytes(payload))).double()
    assert len(seeds) == steps  # a fresh draw every call
    # one decode: c_i ~ Binomial(k, 1/n) copies of (n/k) x_i, so Var = x_i^2 (n/k) (1 - 1/n)
    std = x.double().abs() * ((n / k) * (1 - 1 / n) / steps) ** 0.5
    assert ((total / steps - x.double()).abs() <= 5 * std + 1e-9).all()


def test_randomk_biased_variant_sends_plain_values():
    x = heavy_tailed(100, 9)
    y = make_codec("randomk(k=10,unbiased=false)").roundtrip(x)[1]
    hit = y != 0
    assert 1 <= int(hit.sum()) <= 10 and torch.equal(y[hit], x[hit])


# ---- dgc ------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["dgc(ratio=0.05,momentum=0.9)", "dgc(ratio=0.05,momentum=0)",
                                  "dgc(ratio=0.1,sample_ratio=0.2)+int8(num_bits=4)"])
def test_dgc_keeps_what_is_not_sent_in_the_accumulator(spec):
    codec = make_codec(spec, error_feedback=True)
    assert type(codec).__name__ == "DGC"  # its accumulator is the feedback: not wrapped twice
    enc, dec = Encoder(codec), Decoder()
    m = codec.params.momentum
    momentum_sum = torch.zeros(2000, dtype=torch.float64)
    sent = torch.zeros(2000, dtype=torch.float64)
    for step in range(12):
        x = heavy_tailed(2000, step)
        slot = enc.state.slot("w")
        u_prev = slot.get("u", torch.zeros(2000))
        momentum_sum += (m * u_prev + x).double()
        y = dec.decode(enc.encode(x, "w")).double()
        sent += y
        sent_idx = y.nonzero().squeeze(1)
        assert bool((slot["u"][sent_idx] == 0).all())  # momentum factor masking
        assert sent_idx.numel() <= int(1.3 * codec.params.ratio * 2000) + 1
    assert torch.allclose(sent + slot["v"].double(), momentum_sum, atol=1e-4)


# ---- sketch ---------------------------------------------------------------------------------
def planted(n=20000, hitters=10, seed=10):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=gen) * 0.01
    where = torch.randperm(n, generator=gen)[:hitters]
    sign = torch.randint(0, 2, (hitters,), generator=gen) * 2 - 1
    x[where] = (5 + 5 * torch.rand(hitters, generator=gen)) * sign
    return x, where


@pytest.mark.parametrize("spec, hitters", [("sketch(rows=5,cols=3000,heavy=10)", 10),
                                           ("sketch(rows=3,cols=4000,heavy=5,seed=7)", 5),
                                           ("sketch(rows=5,ratio=0.75,heavy=10,seed=1)", 10)])
def test_sketch_recovers_planted_heavy_hitters(spec, hitters):
    x, where = planted(hitters=hitters)
    y = Decoder().decode(parse_payload(to_bytes(make_codec(spec).encode(x))))
    assert set(y.nonzero().squeeze(1).tolist()) == set(where.tolist())
    assert torch.allclose(y[where], x[where], atol=0.25)


def test_sketch_is_linear():
    x, _ = planted(seed=11)
    z, _ = planted(seed=12)
    codec = make_codec("sketch(rows=5,cols=2000,heavy=20,seed=3)")
    summed = codec.encode(x)  # what the collective's linear path all-reduces: the tables
    summed.buffers[0] = summed.buffers[0] + codec.encode(z).buffers[0]
    direct = codec.encode(x + z)
    assert torch.allclose(summed.buffers[0], direct.buffers[0], atol=1e-5)
    assert torch.allclose(Decoder().decode(summed), Decoder().decode(direct), atol=1e-4)


def test_sketch_hash_cache_is_bounded_and_per_instance():
    codec, other = make_codec("sketch(rows=3,cols=64)"), make_codec("sketch(rows=3,cols=64)")
    for n in range(100, 120):
        codec.decode(codec.encode(heavy_tailed(n)))
    assert 0 < len(codec._hashes) <= sketch_module.CACHE_SIZE and not other._hashes


def test_sketch_refuses_to_build_absurd_hashes():
    payload = make_codec("sketch(rows=5,cols=16)").encode(heavy_tailed(50))
    payload.shape = (2**25,)  # every row would need one hash per element
    with pytest.raises(WireError, match="too narrow"):
        parse_payload(to_bytes(payload))


# ---- powersgd -------------------------------------------------------------------------------
@pytest.mark.parametrize("shape, rank", [((40, 30), 3), ((1200,), 2), ((6, 5, 8), 2)])
def test_powersgd_is_exact_on_a_rank_r_matrix(shape, rank):
    m, c = matrix_shape(shape)
    gen = torch.Generator().manual_seed(0)
    mat = torch.randn(m, rank, generator=gen) @ torch.randn(rank, c, generator=gen)
    y = Decoder().decode(Encoder(make_codec(f"powersgd(rank={rank})")).encode(mat.view(shape)))
    assert torch.allclose(y.view(m, c), mat, rtol=1e-4, atol=1e-4)


def test_powersgd_sends_small_tensors_raw():
    x = heavy_tailed(7, 1)
    payload = Encoder(make_codec("powersgd(rank=4)")).encode(x)
    assert "raw=true" in payload.params and torch.equal(Decoder().decode(payload), x)
    assert matrix_shape((1200,)) == (30, 40) and matrix_shape((13,)) == (1, 13)


def test_powersgd_warm_start_survives_a_state_dict_round_trip():
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(50, 6, generator=gen) @ torch.randn(6, 40, generator=gen)
    enc = Encoder(make_codec("powersgd(rank=3,seed=5)"))
    errors = [float((Decoder().decode(enc.encode(base, "w")) - base).norm()) for _ in range(3)]
    assert errors[2] < errors[0]  # warm start: the power iteration converges
    enc2 = Encoder(make_codec("powersgd(rank=3,seed=5)"))
    enc2.load_state_dict(enc.state_dict())
    for _ in range(2):
        x = base + 0.1 * torch.randn(50, 40, generator=gen)
        assert to_bytes(enc.encode(x, "w")) == to_bytes(enc2.encode(x, "w"))


# ---- tampering ------------------------------------------------------------------------------
def _set_shape(shape):
    return lambda msg: (msg.ClearField("shape"), msg.shape.extend(shape))


def _buffer_bytes(data):
    return lambda msg: setattr(msg.buffers[0], "data", data)


@pytest.mark.parametrize("spec, edit", [
    ("topk(ratio=0.1,index=varint)", _buffer_bytes(b"\x05\x85")),               # truncated varint
    ("topk(ratio=0.1,index=varint)", _set_shape([3])),                             # out of range
    ("topk(ratio=0.1,index=raw)", lambda m: setattr(m.buffers[0], "dtype", 7)),   # int64 for int32
    ("topk(ratio=0.1,index=raw)", _buffer_bytes(bytes(40))),                       # not increasing
    ("topk(ratio=0.1,index=bitmap)", _buffer_bytes(b"\xff" * 13)),                 # count mismatch
    ("topk(ratio=0.1,index=varint+zlib)", _buffer_bytes(b"\x78\x9c\x00")),         # corrupt zlib
    ("topk(ratio=0.1,index=raw+zlib)", _buffer_bytes(zlib.compress(bytes(10**6)))),  # bomb
    ("topk(ratio=0.1)", lambda m: setattr(m, "params", "index=auto")),
    ("topk(ratio=0.1)", lambda m: m.parts[0].shape.append(1)),                     # 2-D values
    ("randomk(ratio=0.1)", lambda m: m.buffers.add(dtype=5, data=b"\x01")),
    ("randomk(ratio=0.1)", _set_shape([5])),                                       # k > n
    ("sketch(rows=5,cols=64)", _buffer_bytes(bytes(4 * 5 * 63))),
    ("sketch(rows=5,cols=64)", lambda m: setattr(m, "params", "rows=5,cols=0,heavy=3")),
    ("powersgd(rank=2)", lambda m: setattr(m, "params", "rank=3,raw=false")),
    ("powersgd(rank=2)", lambda m: setattr(m, "params", "rank=2,raw=true")),
])
def test_tampered_payloads_are_rejected_by_the_parser(spec, edit):
    payload = Encoder(make_codec(spec)).encode(heavy_tailed((10, 10), 2), "w")
    parse_payload(to_bytes(payload))  # the untampered payload is fine
    msg = payload_to_proto(payload)
    edit(msg)
    with pytest.raises(WireError):
        parse_payload(msg.SerializeToString())


# ---- index coding ---------------------------------------------------------------------------
@st.composite
def index_sets(draw):
    n = draw(st.integers(1, 3000))
    chosen = draw(st.sets(st.integers(0, n - 1), max_size=min(n, 400)))
    return n, torch.tensor(sorted(chosen), dtype=torch.int64)


@settings(max_examples=25, deadline=None)
@given(index_sets())
def test_every_coding_round_trips(case):
    n, idx = case
    for coding in index.CHOICES:
        used, buf = index.encode(idx, n, coding)
        assert used in index.CODINGS and (coding == "auto" or used == coding)
        assert torch.equal(index.decode(buf, used, n, idx.numel()), idx)


@settings(max_examples=25, deadline=None)
@given(index_sets())
def test_auto_picks_the_smallest_of_what_it_compares(case):
    n, idx = case
    plain = {b: index.encode(idx, n, b)[1] for b in index.BASES}
    size = {b: t.numel() * t.element_size() for b, t in plain.items()}
    used, buf = index.encode(idx, n, "auto")
    base = used.split("+")[0]
    assert size[base] == min(size.values())
    packed = index.encode(idx, n, base + "+zlib")[1].numel()
    assert buf.numel() * buf.element_size() == min(size[base], packed)
    assert used.endswith("+zlib") == (packed < size[base])


def test_auto_compresses_structured_indices():
    idx = torch.arange(100, 1100)  # a run: bitmap is smallest, and zlib shrinks it further
    used, buf = index.encode(idx, 5000, "auto")
    assert used == "bitmap+zlib" and buf.numel() < 100
    assert torch.equal(index.decode(buf, used, 5000, 1000), idx)


def test_varint_boundaries_and_wide_tensors():
    n = 2**40
    idx = torch.tensor([0, 127, 128, 129, 2**14 + 129, 2**21 + 2**14 + 130, n - 1])
    for coding in ("varint", "raw", "varint+zlib"):
        used, buf = index.encode(idx, n, coding)
        assert torch.equal(index.decode(buf, used, n, idx.numel()), idx)
    assert index.encode(idx, n, "raw")[1].dtype == torch.int64
    assert index.raw_dtype(2**31) == torch.int32 and index.raw_dtype(2**31 + 1) == torch.int64
    coded = index.encode(torch.tensor([0, 128, 257, 16642]), 10**6, "varint")[1].tolist()
    assert coded == [0x00, 0x7F, 0x80, 0x01, 0x80, 0x80, 0x01]  # gaps 0, 127, 128, 16384


@pytest.mark.parametrize("buf, coding, n, count, match", [
    (torch.tensor([0x85], dtype=torch.uint8), "varint", 10**6, 1, "truncated"),
    (torch.tensor([0x05, 0x05], dtype=torch.uint8), "varint", 10**6, 1, "holds 2"),
    (torch.tensor([0x80, 0x00], dtype=torch.uint8), "varint", 10**6, 1, "non-canonical"),
    (torch.tensor([0xFF, 0xFF, 0x7F, 0, 0, 0], dtype=torch.uint8), "varint", 1000, 4, "longer"),
    (torch.tensor([99, 0], dtype=torch.uint8), "varint", 100, 2, "out of range"),
    (torch.tensor([0x05], dtype=torch.int8), "varint", 100, 1, "impossible"),
    (torch.tensor([3, 3], dtype=torch.int32), "raw", 100, 2, "increasing"),
    (torch.tensor([-1, 3], dtype=torch.int32), "raw", 100, 2, "negative"),
    (torch.tensor([3, 100], dtype=torch.int32), "raw", 100, 2, "out of range"),
    (torch.tensor([3], dtype=torch.int64), "raw", 100, 1, "must be"),
    (torch.tensor([0xFF, 0x01], dtype=torch.uint8), "bitmap", 9, 5, "expected 5"),
    (torch.tensor([0xFF, 0x03], dtype=torch.uint8), "bitmap", 9, 9, "past the end"),
    (torch.tensor([0xFF], dtype=torch.uint8), "bitmap", 9, 8, "must be 2"),
    (torch.frombuffer(bytearray(zlib.compress(bytes(10**5))), dtype=torch.uint8),
     "bitmap+zlib", 80, 0, "inflates past"),
    (torch.frombuffer(bytearray(zlib.compress(b"\x01") + b"x"), dtype=torch.uint8),
     "varint+zlib", 80, 1, "trailing"),
    (torch.frombuffer(bytearray(zlib.compress(b"\x01")[:-2]), dtype=torch.uint8),
     "varint+zlib", 80, 1, "truncated"),
    (torch.tensor([1, 2], dtype=torch.uint8), "raw+zlib", 80, 1, "corrupt"),
    (torch.tensor([1], dtype=torch.uint8), "auto", 80, 1, "not one of"),
    (torch.tensor([1], dtype=torch.uint8), "varint", 80, 81, "cannot address"),
])
def test_index_decoding_rejects_corrupt_input(buf, coding, n, count, match):
    with pytest.raises(CodecError, match=match):
        index.decode(buf, coding, n, count)
