"""Quantizing codecs: qsgd, nc, terngrad (unbiased), signsgd, onebit, laq, bbit, bin."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from thinwire.codecs import Decoder, Encoder, bits, decode, make_codec, rounding, sign
from thinwire.codecs.sign import lut_decode, pack_codes, unpack_codes
from thinwire.errors import CodecError, ConfigError, WireError
from thinwire.wire import parse_payload, to_bytes

COVERED = {"qsgd", "nc", "terngrad", "signsgd", "onebit", "laq", "bbit", "bin"}
SPECS = ["qsgd", "qsgd(levels=1)", "qsgd(levels=3)", "qsgd(levels=100)", "nc", "terngrad",
         "signsgd", "signsgd(scale=none)", "onebit", "laq", "laq(bits=1)", "laq(bits=8)",
         "bbit", "bbit(bits=3)", "bin"]
DIFFERENTIAL = ["laq", "laq(bits=2)", "bbit(bits=3)", "bin"]


def heavy(shape, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen) * torch.rand(shape, generator=gen) ** 4
    return x.to(dtype)


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 8), n=st.integers(0, 300), seed=st.integers(0, 99))
def test_pack_matches_bits_module_and_inverts(b, n, seed):
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 1 << b, (n,), generator=gen, dtype=torch.uint8)
    packed = pack_codes(codes, b)
    assert torch.equal(packed, bits.pack(codes, b))
    assert torch.equal(unpack_codes(packed, b, n), codes)
    values = torch.randn(1 << b, generator=gen)
    assert torch.equal(lut_decode(packed, values, b, n), values[codes.long()])
    top = torch.full((n,), (1 << b) - 1, dtype=torch.uint8)  # no carries between fields
    assert torch.equal(pack_codes(top, b), bits.pack(top, b))
    x = torch.randn(n, generator=gen)
    assert torch.equal(sign.sign_bits(x), bits.pack((x < 0).to(torch.uint8), 1))


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_round_trip_keeps_shape_dtype_and_wire_size(spec, dtype):
    enc, direct, via_wire = Encoder(spec), Decoder(), Decoder()
    for step, shape in enumerate([(), (0,), (3, 0), (1,), (7,), (13, 9), (1001,)]):
        x = heavy(shape, step, dtype)
        payload = enc.encode(x, name=f"t{step}")
        data = to_bytes(payload)
        assert payload.nbytes == len(data)
        y, z = direct.decode(payload), via_wire.decode(parse_payload(data))
        assert y.shape == x.shape and y.dtype == x.dtype
        assert torch.equal(y, z)
        assert bool(torch.isfinite(y).all())


@pytest.mark.parametrize("spec", SPECS)
def test_slicing_into_chunks_does_not_change_the_result(spec, monkeypatch):
    """On CPU the codecs work in CHUNK-element slices; tiny slices (and a ragged last one)
    give the same codes and random draws. Chunked sums may differ in the last bits."""
    exact = not spec.startswith(("signsgd", "onebit", "bin"))
    steps = 3 if exact else 1

    def run() -> list:
        enc, dec, out = Encoder(spec), Decoder(), []
        for step in range(steps):
            payload = enc.encode(heavy((1001,), step), "w")
            out.append((payload, dec.decode(parse_payload(to_bytes(payload)))))
        return out

    whole = run()
    monkeypatch.setattr(sign, "CHUNK", 64)
    monkeypatch.setattr(sign, "MAX_SPANS", 1000)
    for (p1, y1), (p2, y2) in zip(whole, run()):
        assert all(torch.equal(a, b) for a, b in zip(p1.buffers, p2.buffers))
        assert p1.scalars == pytest.approx(p2.scalars, rel=1e-6)
        assert torch.equal(y1, y2) if exact else torch.allclose(y1, y2, rtol=1e-6)


def draws(spec: str, x: torch.Tensor, k: int) -> torch.Tensor:
    """k decodes of x, each with its own generator stream (the Encoder's step counter)."""
    enc = Encoder(spec)
    return torch.stack([decode(enc.encode(x, "w")).double() for _ in range(k)])


def rounding_variance(spec: str, x: torch.Tensor) -> torch.Tensor:
    """Per-element variance of an unbiased two-point rounding of |x| to its grid (lo, hi):
    (hi - |x|)(|x| - lo). For nc values below the base, (0, 2^base) with the largest base."""
    a = x.double().abs()
    codec = make_codec(spec)
    if codec.name == "qsgd":
        step = float(x.norm()) / codec.params.levels
        lo = torch.floor(a / step) * step
        hi = lo + step
    elif codec.name == "terngrad":
        lo, hi = torch.zeros_like(a), torch.full_like(a, float(a.max()))
    else:
        lo = torch.exp2(torch.floor(torch.log2(a)))
        base = 2.0 ** (math.floor(math.log2(float(a.max()))) + 2 - 127)
        below = a < base
        lo, hi = torch.where(below, 0.0, lo), torch.where(below, base, 2 * lo)
    return torch.where(a > 0, (hi - a) * (a - lo), 0.0).clamp(min=0)


@pytest.mark.parametrize("spec", ["qsgd", "qsgd(levels=2)", "nc", "terngrad"])
def test_unbiased_within_a_tolerance_derived_from_the_variance(spec):
    # heavy-tailed values plus a zero, a value above 2 (nc then trims tiny exponents) and a
    # tiny normal number that nc must round to 0 or its base power of two
    x = torch.cat([heavy((40,), 3), torch.tensor([0.0, 3.0, -1.25 * 2.0 ** -125])])
    k = 2000
    ys = draws(spec, x, k)
    var = rounding_variance(spec, x)
    gap = (ys.mean(0) - x.double()).abs()
    # 5 standard errors of the mean per element, plus fp32 rounding of the scale; elements
    # on the grid (zero variance) must come back exactly
    tol = 5 * (var / k).sqrt() + 1e-6 * x.double().abs()
    assert bool((gap <= tol).all()), (gap / tol).max()
    # and the spread is the one of two-point rounding, not more
    assert 0.8 < float(ys.var(0).sum() / var.sum()) < 1.25
    assert int((ys.var(0) > 0).sum()) >= 20


def test_uniform_noise_is_uniform_on_its_grid():
    n = 200_000
    first, key = torch.tensor(5, dtype=torch.int32), rounding.split_key(99, torch.device("cpu"))
    u = rounding.uniform(first, n, key, torch.zeros(1)).double()
    assert float(u.min()) >= 0 and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 5 * math.sqrt(1 / 12 / n)  # unbiased, to 5 sigma
    assert abs(float(u.var()) - 1 / 12) < 0.01
    hist = torch.histc(u.float(), bins=16, min=0, max=1)
    assert float((hist - n / 16).abs().max()) < 5 * math.sqrt(n / 16)
    steps = u * 2 ** 23  # on the 2**-23 grid
    assert torch.equal(steps - steps.floor(), torch.zeros_like(steps))


def test_seeds_change_the_draws_and_are_reproducible():
    x = heavy((500,))
    a = make_codec("qsgd(seed=1)").encode(x)
    b = make_codec("qsgd(seed=1)").encode(x)
    c = make_codec("qsgd(seed=2)").encode(x)
    assert to_bytes(a) == to_bytes(b) != to_bytes(c)
    enc = Encoder("terngrad")
    assert to_bytes(enc.encode(x, "w")) != to_bytes(enc.encode(x, "w"))  # step advances


def test_terngrad_decodes_to_minus_zero_plus_max():
    x = heavy((2000,), 1)
    y = decode(make_codec("terngrad").encode(x))
    s = float(x.abs().max())
    assert set(torch.unique(y).tolist()) <= {-s, 0.0, s}
    assert bool((y * x >= 0).all())  # never flips a sign


@pytest.mark.parametrize("levels", [1, 5, 16, 127])
def test_qsgd_decodes_to_signed_levels_of_the_norm(levels):
    x = heavy((3000,), 2)
    payload = make_codec(f"qsgd(levels={levels})").encode(x)
    y = decode(payload)
    norm = float(x.norm())
    assert payload.scalars[0] == pytest.approx(norm, rel=1e-6)
    lv = y.double() * levels / norm
    assert torch.allclose(lv, lv.round(), atol=1e-4)
    assert float(lv.abs().max()) <= levels + 1e-4
    assert bool((y * x >= 0).all())
    # |level| is the floor or the ceiling of s|x|/norm
    exact = x.double().abs() * levels / norm
    assert bool(((lv.abs() - exact).abs() < 1 + 1e-4).all())


def test_nc_decodes_to_the_neighbouring_powers_of_two():
    x = heavy((3000,), 4)
    x[:5] = 0.0
    y = decode(make_codec("nc").encode(x))
    nz = y != 0
    assert bool((y[:5] == 0).all())
    mant, _ = torch.frexp(y[nz])
    assert bool((mant.abs() == 0.5).all())  # powers of two
    lo = torch.exp2(torch.floor(torch.log2(x[nz].abs())))
    assert bool(((y[nz].abs() == lo) | (y[nz].abs() == 2 * lo)).all())
    assert bool((torch.sign(y[nz]) == torch.sign(x[nz])).all())
    assert make_codec("nc").encode(x).buffers[0].numel() == x.numel()  # one byte each


def test_signsgd_exact_values():
    x = heavy((1001,), 5)
    x[3] = 0.0
    neg = x < 0
    y = decode(make_codec("signsgd(scale=none)").encode(x))
    assert torch.equal(y, torch.where(neg, -1.0, 1.0))
    y = decode(make_codec("signsgd(scale=mean)").encode(x))
    m = float(x.abs().mean())
    assert torch.allclose(y, torch.where(neg, -m, m), rtol=1e-6, atol=0)
    assert make_codec("signsgd").encode(x).buffers[0].numel() == (x.numel() + 7) // 8


def test_onebit_decodes_to_the_two_means():
    x = heavy((1001,), 6) + 0.05
    neg = x < 0
    y = decode(make_codec("onebit").encode(x))
    lo, hi = float(x[neg].mean()), float(x[~neg].mean())
    assert torch.allclose(y, torch.where(neg, lo, hi), rtol=1e-5, atol=0)
    assert float(decode(make_codec("onebit").encode(torch.ones(9))).sum()) == 9.0  # no negatives


@pytest.mark.parametrize("b", [1, 2, 4, 8])
def test_laq_error_per_element_is_at_most_tau_r(b):
    enc = Encoder(f"laq(bits={b})")
    ref = torch.zeros(777)
    for step in range(4):
        x = heavy((777,), step)
        radius = float((x - ref).abs().max())
        _, recon = enc.roundtrip(x, "w")
        tau = 1 / (2 ** b - 1)
        assert float((recon - x).abs().max()) <= tau * radius * (1 + 1e-5) + 1e-7
        slot = enc.state.slot("w")
        assert slot["last_error_sq"] == pytest.approx(float((x - recon).double().pow(2).sum()),
                                                      rel=1e-4)
        assert slot["last_innovation_sq"] == pytest.approx(
            float((recon - ref).double().pow(2).sum()), rel=1e-4)
        ref = recon


@pytest.mark.parametrize("spec", DIFFERENTIAL)
def test_decoder_matches_the_encoders_reconstruction(spec):
    enc, dec = Encoder(spec), Decoder()
    for step in range(6):
        x = heavy((31, 17), step, torch.float16 if step % 2 else torch.float32)
        payload, recon = enc.roundtrip(x, "w")
        y = dec.decode(parse_payload(to_bytes(payload)))
        assert y.dtype == x.dtype and torch.equal(y, recon)
    recon.add_(1.0)  # the caller's copy is not the codec's reference
    assert torch.equal(enc.state.slot("w")["ref"].view(31, 17).to(x.dtype), y)


@pytest.mark.parametrize("spec", DIFFERENTIAL + ["qsgd", "nc", "terngrad"])
def test_state_dict_round_trip_continues_identically(spec):
    enc, dec = Encoder(spec), Decoder()
    for step in range(3):
        dec.decode(enc.encode(heavy((50,), step), "w"))
    enc2, dec2 = Encoder(spec), Decoder()
    enc2.load_state_dict(enc.state_dict())
    dec2.load_state_dict(dec.state_dict())
    for step in range(3, 6):
        x = heavy((50,), step)
        p1, p2 = enc.encode(x, "w"), enc2.encode(x, "w")
        assert to_bytes(p1) == to_bytes(p2)
        assert torch.equal(dec.decode(p1), dec2.decode(p2))


def test_laq_converges_on_a_constant_input():
    enc, dec = Encoder("laq(bits=2)"), Decoder()
    x = heavy((300,), 9)
    errs = [float((dec.decode(enc.encode(x, "w")) - x).abs().max()) for _ in range(12)]
    assert errs[-1] < 1e-3 * errs[0]  # R shrinks by 1/3 each step


def test_bbit_residual_is_bounded_and_sums_track():
    enc, dec = Encoder("bbit(bits=3)"), Decoder()
    total = torch.zeros(400, dtype=torch.float64)
    sent = torch.zeros(400, dtype=torch.float64)
    norms = []
    for step in range(60):
        x = heavy((400,), step)
        total += x.double()
        sent += dec.decode(enc.encode(x, "w")).double()
        residual = enc.state.slot("w")["residual"].double()
        assert torch.allclose(total - sent, residual, atol=1e-4)
        norms.append(float(residual.norm()))
    assert max(norms) < 3 * float(heavy((400,), 0).norm())  # 3 bits: about 2x the input
    assert max(norms[40:]) < 3 * max(norms[10:20])
    assert make_codec("bbit", error_feedback=True).__class__.__name__ == "BBit"  # not wrapped


def test_bin_decodes_ref_plus_signed_mean():
    enc = Encoder("bin")
    x = heavy((100,), 1)
    payload, recon = enc.roundtrip(x, "w")
    m = float(x.abs().mean())
    assert payload.scalars[0] == pytest.approx(m, rel=1e-6)
    assert torch.allclose(recon, torch.where(x < 0, -m, m))


@pytest.mark.parametrize("spec", DIFFERENTIAL)
def test_differential_payload_needs_the_receivers_state(spec):
    payload = Encoder(spec).encode(heavy((10,)), "w")
    with pytest.raises(CodecError, match="one Decoder per sender"):
        decode(payload)
    dec = Decoder()
    dec.decode(payload)
    with pytest.raises(CodecError, match="one slot per tensor name"):
        dec.decode(Encoder(spec).encode(heavy((11,)), "w"))


def tampered(payload):
    first, rest = payload.buffers[0], payload.buffers[1:]
    yield "short buffer", dict(buffers=[first[:-1]] + rest)
    yield "long buffer", dict(buffers=[torch.cat([first, first[:1]])] + rest)
    yield "wrong dtype", dict(buffers=[first.view(torch.int8)] + rest)
    yield "extra buffer", dict(buffers=payload.buffers + [first])
    yield "extra scalar", dict(scalars=payload.scalars + [1.0])
    if payload.scalars:
        yield "missing scalar", dict(scalars=payload.scalars[:-1])
        bad = {"nc": 0.5, "qsgd": -1.0, "terngrad": -1.0, "laq": -1.0}.get(payload.codec)
        if bad is not None:
            yield "bad scalar value", dict(scalars=[bad])


@pytest.mark.parametrize("spec", SPECS)
def test_tampered_payloads_are_rejected_by_the_parser(spec):
    payload = Encoder(spec).encode(heavy((37,)), "w")
    parse_payload(to_bytes(payload))  # the untouched one is fine
    for what, change in tampered(payload):
        bad = type(payload)(**{**payload.__dict__, **change})
        with pytest.raises(WireError):
            parse_payload(to_bytes(bad))
            pytest.fail(what)


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_input_raises(spec, bad):
    for x in (heavy((50,)), heavy((), dtype=torch.float16)):
        x = x.clone()
        x.view(-1)[-1] = bad
        with pytest.raises(CodecError, match="non-finite"):
            Encoder(spec).encode(x, "w")


@pytest.mark.parametrize("spec", ["qsgd(levels=0)", "qsgd(levels=128)", "laq(bits=9)",
                                  "laq(bits=0)", "bbit(bits=9)", "bbit(bits=2)", "bin(bits=2)",
                                  "signsgd(scale=foo)", "terngrad(seed=-1)", "nc(levels=2)"])
def test_bad_params_raise_config_error(spec):
    with pytest.raises(ConfigError):
        make_codec(spec)


def test_extreme_values_stay_finite():
    tiny = torch.tensor([1e-42, -3e-43, 0.0, 1e-45])  # subnormal norms and radii
    for spec in set(SPECS) - {"signsgd(scale=none)"}:
        y = Decoder().decode(Encoder(spec).encode(tiny, "w"))
        assert bool(torch.isfinite(y).all()) and float(y.abs().max()) < 1e-40, spec
    x = torch.tensor([3e38, -3e38, 1e-45, 0.0, 1.0])
    for spec in ["nc", "terngrad", "signsgd", "onebit", "laq(bits=1)", "bin"]:
        y = Decoder().decode(Encoder(spec).encode(x, "w"))
        assert bool(torch.isfinite(y).all()), spec
    with pytest.raises(CodecError, match="fp32 range"):
        make_codec("qsgd").encode(x)  # the norm itself is not an fp32 number
    y = decode(make_codec("qsgd").encode(x / 3))  # squares overflow, the norm does not
    assert bool(torch.isfinite(y).all()) and float(y.abs().max()) <= 1e38 * 2 ** 0.5 * 1.001
    for spec in ["laq(bits=3)", "bbit(bits=3)", "bin"]:  # constant input: R decays to 0
        enc, dec = Encoder(spec), Decoder()
        for _ in range(300):
            y = dec.decode(enc.encode(x[2:], "w"))
        assert bool(torch.isfinite(y).all()), spec
    h, enc = torch.tensor([65504.0, -65504.0, 1.0], dtype=torch.float16), Encoder("nc")
    for _ in range(20):
        y = decode(enc.encode(h, "w"))  # rounding up would overflow fp16
        assert bool(torch.isfinite(y).all()) and float(y.abs().max()) == 32768.0


def test_spec_round_trip_of_signsgd_scale_none():
    assert make_codec(make_codec("signsgd(scale=none)").spec()).params.scale == "none"
    assert make_codec("signsgd").params.scale == "mean"
    with pytest.raises(ConfigError, match="scale=mean"):  # +-1 would make the residual grow
        make_codec("signsgd(scale=none)", error_feedback=True)
    make_codec("signsgd(scale=mean)", error_feedback=True)


def test_sign_codecs_fused_path_is_bit_identical():
    from thinwire.codecs import fused

    x = torch.randn(20_001) * torch.rand(20_001) ** 4
    for spec in ("signsgd(scale=mean)", "signsgd(scale=none)", "onebit"):
        with fused.forced("0"):
            p0 = make_codec(spec).encode(x)
            d0 = decode(p0)
        with fused.forced("1", 1):
            p1 = make_codec(spec).encode(x)
            d1 = decode(p1)
        assert torch.equal(p0.buffers[0], p1.buffers[0]) and torch.equal(d0, d1), spec
