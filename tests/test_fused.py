"""Compiled kernels must equal the pure-torch references bit for bit, and fail over cleanly.

Compiling costs seconds per kernel, so every kernel is compiled once, on one odd size above a
lowered threshold (4099 elements, threshold 1000): ~12 compiles in all, cached on disk by
inductor for later runs.
"""

import warnings

import pytest
import torch

from thinwire.codecs import decode, fused, kernels, make_codec, rounding

COVERED = {"none", "fp16", "bf16", "int8", "qsgd", "nc", "terngrad", "laq", "bbit", "dgc",
           "sketch"}
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit:DeprecationWarning")
N = 4099  # odd, not a multiple of 8, 32 or the block size: exercises every tail path
BLOCK = 64


@pytest.fixture
def on():
    with fused.forced("auto", min_numel=1000):
        yield


def sample(n=N, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=gen) * torch.rand(n, generator=gen) ** 4
    x[:6] = torch.tensor([-0.0, 0.0, 1e6, -1e6, 3e-8, -70000.0])  # zeros, saturation, subnormal
    return x


def bits(t: torch.Tensor) -> torch.Tensor:
    """Raw bit pattern, so -0.0 != 0.0 and NaN payloads count."""
    width = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    return t.contiguous().view(width) if t.dtype != torch.bool else t


def same(a, b) -> bool:
    if isinstance(a, tuple):
        return all(same(u, v) for u, v in zip(a, b, strict=True))
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(bits(a), bits(b))


def check(kernel, *args):
    """Call the dispatching kernel (compiled) and its reference on copies of the arguments;
    results and written-to `out` arguments must agree exactly."""
    ref_args = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    got = kernel(*args)
    assert kernel.__name__ in fused.status()["compiled"], "kernel did not take the fused path"
    want = kernel.reference(*ref_args)
    assert same(got, want), kernel.__name__
    for a, b in zip(args, ref_args):
        assert not isinstance(a, torch.Tensor) or same(a, b), kernel.__name__
    return got


def test_policy_env_threshold_and_override(monkeypatch):
    big, small = torch.zeros(2000), torch.zeros(10)
    for env, want in (("0", (False, False)), ("1", (True, True)), ("auto", (True, False))):
        monkeypatch.setenv("THINWIRE_FUSED", env)
        with fused.forced(None, min_numel=1000):
            assert (fused.wanted(big), fused.wanted(small)) == want
    monkeypatch.setenv("THINWIRE_FUSED", "0")
    with fused.forced(True):
        assert fused.wanted(small) and not fused.wanted(torch.zeros(0))
        with fused.forced(False):
            assert not fused.wanted(big)
        assert fused.wanted(small)
    assert not fused.wanted(big)
    with pytest.raises(ValueError):
        fused.configure("sometimes")


def test_dense_casts(on):
    x = sample()
    half, ok = check(kernels.fp16_checked, x)
    assert bool(ok) and half[2] == 65504 and half[5] == -65504
    check(kernels.cast_checked, x, torch.bfloat16)
    assert bool(check(kernels.all_finite, x))
    x[100] = float("nan")  # NaN payload bits may differ; the encoder refuses it anyway
    assert not bool(kernels.fp16_checked(x)[1]) and not bool(check(kernels.all_finite, x))
    x[100] = float("inf")
    assert not bool(check(kernels.fp16_checked, x)[1])


@pytest.mark.parametrize("size", [N, BLOCK], ids=["per_tensor", "per_block"])
def test_int8_quantize_and_dequantize(on, size):
    x = sample()
    rows = x[: N // size * size].view(-1, size)
    amax = check(kernels.absmax_rows, rows)
    scale, inv = torch.zeros(rows.shape[0]), torch.zeros(rows.shape[0])
    assert bool(check(kernels.scales_into, rows, 127, scale, inv))
    assert torch.equal(scale, amax / 127) and torch.equal(inv, 1 / scale)
    out = torch.zeros(rows.shape, dtype=torch.int8)
    codes = check(kernels.quantize_into, rows, inv, 127, None, out)
    assert codes.data_ptr() == out.data_ptr()  # written in place, no extra copy
    if size == BLOCK:
        noise = torch.rand(rows.shape, generator=torch.Generator().manual_seed(1))
        check(kernels.quantize_into, rows, inv, 7, noise, torch.zeros_like(out))
    deq = check(kernels.dequantize_into, codes, scale, torch.zeros(rows.shape))
    assert ((deq - rows).abs() <= scale.unsqueeze(1) / 2 + 1e-7).all()


def test_sign_pack_and_unpack(on):
    from thinwire.codecs.bits import pack

    x = sample()
    packed = check(kernels._sign_pack, x)
    assert torch.equal(packed, pack((x < 0).to(torch.uint8), 1))  # bit = negative, as sign.py
    words = torch.cat([packed, packed.new_zeros((-packed.numel()) % 4)]).view(torch.int32)
    pos, neg = torch.tensor(0.25), torch.tensor(-0.5)
    out = check(kernels.sign_unpack_into, words, pos, neg, torch.zeros(words.numel() * 32))
    assert torch.equal(out[:N], torch.where(x < 0, -0.5, 0.25))
    assert torch.equal(kernels.sign_unpack(packed, N, 0.25, -0.5), out[:N])


@pytest.mark.parametrize("spec", ["none", "fp16", "bf16", "int8", f"int8(block={BLOCK})",
                                  "int8(block=100,stochastic=true)"])
def test_codecs_identical_with_and_without_fusion(spec):
    x = sample().view(1, N)
    with fused.forced(False):
        ref = make_codec(spec).encode(x)
        ref_y = decode(ref)
    with fused.forced("auto", min_numel=1000):
        p = make_codec(spec).encode(x)
        y = decode(p)
    assert p.scalars == ref.scalars and all(map(same, p.buffers, ref.buffers))
    assert same(y, ref_y)


def keyed(lo=0, key=0x12345678):
    return torch.tensor(lo, dtype=torch.int32), rounding.split_key(key, torch.device("cpu"))


def test_stochastic_rounding_kernels(on):
    x = sample()
    first, key = keyed(17)
    codes = check(rounding.qsgd_codes, x, first, key, torch.tensor(16 / float(x.norm())), 16)
    assert codes.dtype == torch.uint8 and int(codes.max()) <= 32
    check(rounding.qsgd_codes, x, first, key, torch.tensor(1e31, dtype=torch.float64), 3)
    tern = check(rounding.terngrad_codes, x, first, key, x.abs().max())
    assert set(tern.unique().tolist()) <= {0, 1, 3} and tern[2] == 1 and tern[3] == 3
    top, base = torch.tensor(254), torch.tensor(21)
    nc, low = check(rounding.nc_codes, x, first, key, top, base)
    assert not bool(low) and nc[0] == 128 and nc[1] == 0  # -0.0 keeps its sign, 0 stays 0
    for stochastic in (False, True):
        levels = check(rounding.grid_codes, x, first, key, torch.tensor(7.5 / 70000), 4,
                       stochastic)
        assert levels.dtype == torch.float32 and 0 <= float(levels.min()) <= 15


def test_noise_is_uniform_and_fresh_per_key():
    """The hash noise passes a chi-square test on 64 bins, and two keys (steps) or two
    neighbouring elements are uncorrelated: what stochastic rounding's unbiasedness needs."""
    n = 1 << 20
    first, key = keyed()
    u = rounding.uniform(first, n, key, torch.zeros(1))
    counts = torch.histc(u, 64, 0, 1)
    chi2 = float(((counts - n / 64) ** 2 / (n / 64)).sum())
    assert chi2 < 120, chi2  # 63 dof: p < 1e-5 above ~115
    assert 0 <= float(u.min()) and float(u.max()) < 1
    v = rounding.uniform(first, n, keyed(key=0x12345679)[1], torch.zeros(1))
    for a, b in ((u, v), (u[1:], u[:-1])):
        corr = float(torch.corrcoef(torch.stack([a, b]))[0, 1])
        assert abs(corr) < 5 / n ** 0.5, corr
    # the draw of element i does not depend on where the slice starts
    assert torch.equal(rounding.uniform(torch.tensor(1000, dtype=torch.int32), 10, key, u),
                       u[1000:1010])


@pytest.mark.parametrize("fuse", [False, True])
def test_nc_rounds_values_far_below_the_largest_the_same_on_both_paths(fuse):
    """Values 2**-128 of the largest fall below nc's base exponent; they go to 0 or to the
    smallest power, unbiased, with the same draws whether or not the kernel is compiled."""
    x = torch.full((4000,), 3e-33)  # biased exponent 18; base is 21 below a max of 1e6
    x[0] = 1e6
    with fused.forced(fuse, min_numel=1000):
        y = decode(make_codec("nc(seed=3)").encode(x))
    with fused.forced(not fuse, min_numel=1000):
        assert torch.equal(y, decode(make_codec("nc(seed=3)").encode(x)))
    small = y[1:]
    assert set(small.unique().tolist()) == {0.0, float(small.max())}  # 0 or 2**(base - 127)
    assert abs(float(small.mean()) / 3e-33 - 1) < 0.15  # ~970 of 3999 round up


def test_dgc_accumulate_and_sketch_estimate(on):
    from thinwire.codecs.sketch import median_plan

    x = sample()
    u, v = sample(seed=1), sample(seed=2)
    mask = torch.zeros(N, dtype=torch.uint8)
    got = check(kernels.dgc_accumulate, x, u, v, torch.tensor(0.9), torch.tensor(0.5), mask)
    assert torch.equal(got.bool(), v.abs() >= 0.5) and got.any() and not got.all()
    gen = torch.Generator().manual_seed(3)
    for rows in (5, 4):  # odd: a comparator picks the median; even: the mean of the middle two
        vals = [torch.randn(N, generator=gen) for _ in range(rows)]
        out = check(kernels.median_into, torch.zeros(N), vals, median_plan(rows), N)
        want = torch.stack(vals).sort(0).values
        mid = want[rows // 2] if rows % 2 else (want[rows // 2 - 1] + want[rows // 2]) * 0.5
        assert torch.equal(out, mid)


@pytest.mark.parametrize("spec", ["qsgd(levels=16)", "qsgd(levels=3,seed=4)", "terngrad", "nc",
                                  "laq(bits=4)", "bbit(bits=4,seed=2)", "bbit(bits=3)",
                                  "dgc(ratio=0.05)", "dgc(ratio=0.05)+int8", "dgc(ratio=1)",
                                  "sketch(ratio=0.2)", "sketch(rows=4,ratio=0.2)"])
def test_stochastic_codecs_identical_with_and_without_fusion(spec):
    """Three steps of one codec state: payloads, decodes and the state (accumulators,
    LAQ statistics)."""
    x = sample()
    runs = []
    for mode in (False, True):
        with fused.forced(mode, min_numel=1000):
            codec, state = make_codec(spec), {}
            payloads = [codec.encode(x * (1 + 0.25 * i), state) for i in range(3)]
            codec_out, slot = make_codec(spec), {}
            runs.append((payloads, state, [codec_out.decode(p, slot) for p in payloads]))
    (ref, ref_state, ref_y), (got, got_state, got_y) = runs
    for p, q in zip(got, ref):
        assert p.scalars == q.scalars and all(map(same, p.buffers, q.buffers))
        assert [(t.codec, t.params) for t in p.parts] == [(t.codec, t.params) for t in q.parts]
        assert all(same(a, b) for t, r in zip(p.parts, q.parts)
                   for a, b in zip(t.buffers, r.buffers))
    assert all(torch.equal(a, b) for a, b in zip(got_y, ref_y))  # sketch: +-0 may differ
    for k, v in ref_state.items():
        assert same(got_state[k], v) if isinstance(v, torch.Tensor) else got_state[k] == v
    assert fused.status()["compiled"]


def test_compile_failure_falls_back_with_one_warning(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(fused.torch, "compile", broken)

    @fused.fusable
    def _test_only_kernel(t):
        return t * 2

    with fused.forced(True), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert torch.equal(_test_only_kernel(torch.ones(3)), torch.full((3,), 2.0))
        assert torch.equal(_test_only_kernel(torch.ones(3)), torch.full((3,), 2.0))
    assert len([w for w in caught if "no C++ compiler" in str(w.message)]) == 1
    assert "_test_only_kernel" in fused.status()["failed"]


def test_runtime_failure_of_compiled_kernel_falls_back(monkeypatch):
    monkeypatch.setattr(fused.torch, "compile", lambda fn, **kw: lambda *a: 1 / 0)

    @fused.fusable
    def _test_only_kernel2(t):
        return t + 1

    with fused.forced(True), pytest.warns(RuntimeWarning, match="ZeroDivisionError"):
        assert torch.equal(_test_only_kernel2(torch.zeros(2)), torch.ones(2))


def test_huge_page_output_is_an_ordinary_tensor():
    like = torch.zeros(1)
    with fused.forced(True):
        t = fused.empty((3 << 20,), torch.float32, like)  # 12 MB: advised, still plain memory
    assert t.shape == (3 << 20,) and t.dtype == torch.float32
    t.fill_(1.5)
    assert float(t.sum()) == 1.5 * (3 << 20)
    x = sample(3 << 20).half()
    with fused.forced(True):
        assert torch.equal(kernels.upcast(x, torch.float32), x.float())
