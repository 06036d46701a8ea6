"""Dense casts: none (original dtype, lossless), fp16 (saturating), bf16."""

from __future__ import annotations

import torch

from ..errors import CodecError
from . import kernels
from .base import Codec, Slot, raise_non_finite
from .payload import Payload
from .registry import register

FP16_MAX = 65504.0


class _Cast(Codec):
    wire_dtype: torch.dtype
    checks_finite = True  # the cast kernel reports NaN/Inf in the same pass

    def _encode(self, x: torch.Tensor, state: Slot | None) -> Payload:
        buf, finite = self._cast(x.reshape(-1))
        if not bool(finite):
            raise_non_finite(self.name, x)
        return self.make_payload(x, buffers=[buf.contiguous()])

    def _cast(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return kernels.cast_checked(flat, self.wire_dtype)

    def _decode(self, payload: Payload, state: Slot | None) -> torch.Tensor:
        self.check(payload)  # the view below trusts the declared shape
        buf = payload.buffers[0]
        return kernels.upcast(buf, payload.dtype).view(payload.shape)

    def check(self, payload: Payload) -> None:
        expect = (self.wire_dtype, payload.numel)
        got = [(b.dtype, b.numel()) for b in payload.buffers]
        if got != [expect]:
            raise CodecError(f"'{self.name}' payload needs one {expect[0]} buffer of "
                             f"{expect[1]} elements, got {got}")


@register
class NoCompression(_Cast):
    name = "none"
    summary = "the tensor as is (fp32 for fp32 gradients)"
    bytes_per_element = "4"
    lossy = False
    unbiased = True
    linear = True

    def _encode(self, x: torch.Tensor, state: Slot | None) -> Payload:
        flat = x.reshape(-1).contiguous()
        if not bool(kernels.all_finite(flat)):
            raise_non_finite(self.name, x)
        return self.make_payload(x, buffers=[flat])

    def _decode(self, payload: Payload, state: Slot | None) -> torch.Tensor:
        self.check(payload)
        return kernels.fresh_copy(payload.buffers[0].view(payload.shape))

    def check(self, payload: Payload) -> None:
        expect = [(payload.dtype, payload.numel)]
        got = [(b.dtype, b.numel()) for b in payload.buffers]
        if got != expect:
            raise CodecError(f"'none' payload needs one {payload.dtype} buffer of "
                             f"{payload.numel} elements, got {got}")


@register
class FP16(_Cast):
    name = "fp16"
    summary = "IEEE half precision, saturating at +-65504"
    bytes_per_element = "2"
    linear = True
    wire_dtype = torch.float16

    def _cast(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return kernels.fp16_checked(flat)


@register
class BF16(_Cast):
    name = "bf16"
    summary = "bfloat16 (fp32 range, 8-bit mantissa)"
    bytes_per_element = "2"
    linear = True
    wire_dtype = torch.bfloat16
