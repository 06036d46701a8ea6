import torch

from thinwire.codecs import decode, make_codec

COVERED = {"none", "fp16", "bf16", "int8"}


def test_none_is_exact_and_keeps_dtype():
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        x = torch.randn(7, 3).to(dtype)
        y = decode(make_codec("none").encode(x))
        assert y.dtype == dtype and torch.equal(x, y)


def test_fp16_saturates_instead_of_overflowing():
    x = torch.tensor([1e6, -1e6, 1.5, 0.0])
    y = decode(make_codec("fp16").encode(x))
    assert y.tolist() == [65504.0, -65504.0, 1.5, 0.0]


def test_bf16_keeps_range():
    x = torch.tensor([1e30, -3e-30])
    y = decode(make_codec("bf16").encode(x))
    assert torch.allclose(x, y, rtol=1e-2)


def test_int8_error_within_half_scale_per_tensor_and_block():
    torch.manual_seed(0)
    x = torch.randn(1000) * torch.rand(1000) ** 4
    for bits in (2, 3, 4, 8):
        for block in (0, 64, 999):
            p = make_codec(f"int8(num_bits={bits},block={block})").encode(x)
            y = decode(p)
            scale = p.buffers[1]
            size = block or x.numel()
            per_elem = scale.repeat_interleave(size)[: x.numel()]
            assert ((x - y).abs() <= per_elem / 2 + 1e-7).all()
            assert p.buffers[0].numel() == (x.numel() * bits + 7) // 8


def test_int8_block_scales_adapt_to_local_magnitude():
    x = torch.cat([torch.full((64,), 1e-3), torch.full((64,), 10.0)])
    y = decode(make_codec("int8(block=64)").encode(x))
    assert torch.allclose(x, y, rtol=1e-2)
    y_tensor = decode(make_codec("int8").encode(x))
    assert not torch.allclose(x[:64], y_tensor[:64], rtol=1e-2)  # one scale loses the small block


def test_int8_stochastic_is_unbiased():
    x = torch.linspace(-1, 1, 101)
    draws = torch.stack([decode(make_codec(f"int8(num_bits=3,stochastic=true,seed={s})")
                                .encode(x)) for s in range(400)])
    scale = x.abs().max() / 3
    # each draw errs by at most one step; the mean of 400 has std <= scale/2/sqrt(400)
    assert ((draws.mean(0) - x).abs() <= 5 * scale / 2 / 20).all()


def test_all_zero_tensor_has_zero_scale_and_decodes_to_zero():
    y = decode(make_codec("int8").encode(torch.zeros(10)))
    assert torch.equal(y, torch.zeros(10))
