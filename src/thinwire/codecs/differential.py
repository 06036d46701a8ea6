"""Differential codecs: send the innovation x - ref, ref being what the receiver rebuilt last.

Both sides keep the same `ref` (zeros at first) in their own slot: the sender's Encoder slot
and the receiver's Decoder slot for that tensor name, so a receiver needs one Decoder per
sender. Decoding returns the full reconstruction ref + innovation. laq (Sun et al., NeurIPS
2019) rounds the innovation on a b-bit grid of radius R = max|d|; bbit rounds stochastically on
the same grid and keeps its own error-feedback residual; bin sends sign(d) * mean|d|.

The encoder slot also records, for LAQ's lazy-upload rule, `last_error_sq` = ||v - Q(v)||^2
(v = x for laq and bin, x + residual for bbit) and `last_innovation_sq` = ||Q(v) - ref_old||^2.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from ..errors import CodecError
from . import fused, rounding
from .base import Codec, Slot
from .bits import packed_len
from .payload import Payload
from .registry import register
from .sign import Lut, expect_layout, pack_codes, pack_into, require_finite, spans
from .stochastic import next_key


def grid_levels(d: torch.Tensor, radius: float, bits: int, first: int = 0,
                key: torch.Tensor | None = None) -> torch.Tensor:
    """fp32 integer levels in 0..2^b-1 of d on the grid -R + 2*tau*R*k, tau = 1/(2^b - 1):
    floor((d + R) / (2 tau R) + u), u = 1/2, or uniform noise keyed by `key` (unbiased).
    d[0] is element `first` of its tensor (the noise is a hash of the element's index)."""
    top = (1 << bits) - 1
    inv = top / (2.0 * radius) if radius > 0 else 0.0  # 1 / (2 tau R)
    wide = torch.float64 if inv > 1e30 else torch.float32  # R near fp32 underflow (rare)
    inv_t = torch.tensor(inv, dtype=wide, device=d.device)
    first_t = torch.tensor(first % (1 << 31), dtype=torch.int32, device=d.device)
    stochastic = key is not None
    if key is None:
        key = torch.zeros((), dtype=torch.int32, device=d.device)
    return rounding.grid_codes(d, first_t, key, inv_t, bits, stochastic)


def grid_values(levels: torch.Tensor, radius: float, bits: int) -> torch.Tensor:
    """In place: level k -> 2 tau R k - R. The decoder's table goes through this same
    function, so sender and receiver reconstructions agree bit for bit."""
    top = (1 << bits) - 1
    step = 2.0 * radius / top
    if step < 1e38:
        return levels.mul_(step).sub_(radius)
    return levels.mul_(2.0 / top).sub_(1.0).mul_(radius)  # 2R/top would overflow fp32


class Differential(Codec):
    """Base: subclasses give the wire statistic (`_reduce`, `_scalar`), the per-slice
    quantizer (`_quantize`) and the receiver's table (`_lut`). Work goes slice by slice
    (`spans`): one pass for the statistic, one to quantize and update ref in place."""

    checks_finite = True
    bits = 1

    def _stateful(self) -> bool:
        return True

    # ---- sender -------------------------------------------------------------------------
    def _encode(self, x: torch.Tensor, state: Slot | None) -> Payload:
        return self._step(x, self._slot(state))[0]

    def _roundtrip(self, x: torch.Tensor, state: Slot | None) -> tuple[Payload, torch.Tensor]:
        payload, ref = self._step(x, self._slot(state))
        return payload, _copy_out(ref, x.dtype).view(x.shape)  # never hand out the state

    def _step(self, x: torch.Tensor, state: Slot) -> tuple[Payload, torch.Tensor]:
        flat = x.reshape(-1)
        n, dev = flat.numel(), x.device
        ref = _tensor(self.name, state, "ref", n, dev, "encoder")
        res = (_tensor(self.name, state, "residual", n, dev, "encoder")
               if self.own_feedback else None)

        def diff(lo: int, hi: int, into_residual: bool = False) -> torch.Tensor:
            """v = x - ref (laq, bin) or residual + x - ref (bbit; written over the residual
            slice in the second pass, which then turns it into v - Q(v) in place)."""
            if res is None:
                return flat[lo:hi].float() - ref[lo:hi]
            x_part = flat[lo:hi].float()
            v = res[lo:hi].add_(x_part) if into_residual else torch.add(res[lo:hi], x_part)
            return v.sub_(ref[lo:hi])

        parts = [self._reduce(diff(lo, hi)) for lo, hi in spans(n, dev)]
        scalar = self._scalar(x, parts, n)
        key = self._key(state, dev)
        out = torch.empty(packed_len(n, self.bits), dtype=torch.uint8, device=dev)
        sums = torch.zeros(2, dtype=torch.float64, device=dev)  # ||Q(v)||^2, ||v - Q(v)||^2
        for lo, hi in spans(n, dev):  # state changes only now, after the checks
            d = diff(lo, hi, into_residual=True)
            codes, q = self._quantize(d, scalar, lo, key)
            pack_into(out, codes, lo, self.bits)
            ref[lo:hi].add_(q)
            err = d.sub_(q)  # for bbit: the new residual, in place
            sums += torch.stack([torch.dot(q, q), torch.dot(err, err)]).double()
        state["last_innovation_sq"], state["last_error_sq"] = (float(v) for v in sums)
        return self.make_payload(x, buffers=[out], scalars=[scalar]), ref

    def _slot(self, state: Slot | None) -> Slot:
        if state is None:
            raise CodecError(f"{self.name} keeps the receiver's last reconstruction: pass a "
                             "state slot (thinwire.codecs.Encoder owns one per tensor name)")
        return state

    def _key(self, state: Slot, device: torch.device) -> torch.Tensor | None:
        """Noise key of this encode (stochastic codecs), None for deterministic rounding."""
        return None

    def _reduce(self, d: torch.Tensor) -> torch.Tensor:
        """Partial statistic of one slice of v."""
        raise NotImplementedError

    def _scalar(self, x: torch.Tensor, parts: list[torch.Tensor], n: int) -> float:
        """The fp32 scalar sent on the wire, from the partial statistics."""
        raise NotImplementedError

    def _quantize(self, d: torch.Tensor, scalar: float, first: int,
                  key: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 codes of one slice of v (starting at element `first`) and their fp32
        values Q(v) (do not modify d)."""
        raise NotImplementedError

    # ---- receiver -----------------------------------------------------------------------
    def _decode(self, payload: Payload, state: Slot | None) -> torch.Tensor:
        if state is None:
            raise CodecError(f"'{self.name}' payloads are differences against the receiver's "
                             "previous reconstruction, so they cannot be decoded statelessly: "
                             "the receiver must keep one Decoder per sender (it holds a slot "
                             "per tensor name) and decode every payload of that sender in order")
        self.check(payload)
        n, data = payload.numel, payload.buffers[0]
        lut = self._lut(payload.scalars[0], data.device)
        ref = _tensor(self.name, state, "ref", n, data.device, "decoder")
        out = fused.empty((n,), payload.dtype, data)
        for lo, hi in spans(n, data.device):
            part = ref[lo:hi]
            part.add_(lut.chunk(data, lo, hi))
            out[lo:hi] = part
        return out.view(payload.shape)

    def _lut(self, scalar: float, device: torch.device) -> Lut:
        raise NotImplementedError


def _tensor(name: str, state: Slot, key: str, n: int, device: torch.device,
            side: str) -> torch.Tensor:
    """state[key], an fp32 vector of n elements (zeros at first)."""
    t = state.get(key)
    if t is None:
        t = state[key] = torch.zeros(n, dtype=torch.float32, device=device)
    if t.numel() != n or t.dtype != torch.float32:
        raise CodecError(f"{name}: the {side} slot's {key} has {t.numel()} elements "
                         f"({t.dtype}) but this tensor has {n}; use one slot per tensor name "
                         "(and, on the receiver, one Decoder per sender)")
    if t.device != device:
        t = state[key] = t.to(device)
    return t


def _copy_out(ref: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return fused.empty(ref.shape, dtype, ref).copy_(ref)


class GridParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bits: int = Field(4, ge=1, le=8)


class BBitParams(GridParams):
    # error feedback on top of differential coding feeds each step's error in twice
    # (v' = dx + 2e - e_prev), which a 1- or 2-bit grid amplifies: the residual diverges
    bits: int = Field(4, ge=3, le=8, description="3..8 (1-2 bit grids diverge)")
    seed: int = Field(0, ge=0)


class _Grid(Differential):
    """b-bit grid codes of the innovation + fp32 radius R = max|v|."""

    bytes_per_element = "b/8"
    decode_keys = ("bits",)

    @property
    def bits(self) -> int:  # type: ignore[override]
        return self.params.bits

    def _reduce(self, d: torch.Tensor) -> torch.Tensor:
        lo, hi = torch.aminmax(d)
        return torch.maximum(-lo, hi)

    def _scalar(self, x: torch.Tensor, parts: list[torch.Tensor], n: int) -> float:
        if not parts:
            return 0.0
        radius = torch.stack(parts).max()
        if not require_finite(self.name, x, radius):
            raise CodecError(f"{self.name}: x - reference overflows fp32; reset the codec state")
        return float(radius)

    def _quantize(self, d: torch.Tensor, scalar: float, first: int,
                  key: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        levels = grid_levels(d, scalar, self.bits, first, key)
        return levels.to(torch.uint8), grid_values(levels, scalar, self.bits)

    def _lut(self, scalar: float, device: torch.device) -> Lut:
        levels = torch.arange(1 << self.bits, dtype=torch.float32, device=device)
        return Lut(grid_values(levels, scalar, self.bits), self.bits)

    def check(self, payload: Payload) -> None:
        n, bits = payload.numel, self.params.bits
        expect_layout(payload, self.name, [(torch.uint8, packed_len(n, bits))], 1)
        if payload.scalars[0] < 0:
            raise CodecError(f"{self.name} payload has a negative radius {payload.scalars[0]}")


@register
class LAQ(_Grid):
    name = "laq"
    summary = "b-bit grid of x - last reconstruction (round to nearest) + fp32 max abs(diff)"
    Params = GridParams


@register
class BBit(_Grid):
    name = "bbit"
    summary = "b-bit stochastic grid of x + residual - last reconstruction + fp32 radius"
    wants_error_feedback = True
    own_feedback = True
    Params = BBitParams

    def _key(self, state: Slot, device: torch.device) -> torch.Tensor | None:
        return next_key(self.params.seed, state, device)


@register
class Bin(Differential):
    name = "bin"
    summary = "sign bits of x - last reconstruction, decoded to +-mean abs(diff) (one fp32)"
    bytes_per_element = "1/8"

    def _reduce(self, d: torch.Tensor) -> torch.Tensor:
        total = d.abs().sum().double()
        return total if bool(torch.isfinite(total)) else d.abs().sum(dtype=torch.float64)

    def _scalar(self, x: torch.Tensor, parts: list[torch.Tensor], n: int) -> float:
        total = torch.stack(parts).sum() if parts else torch.zeros(())
        require_finite(self.name, x, total)
        return float((total / max(n, 1)).float())

    def _quantize(self, d: torch.Tensor, scalar: float, first: int,
                  key: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        neg = torch.lt(d, 0).view(torch.uint8)
        # the receiver's table on the packed bits: exactly +-mean on both sides
        return neg, self._lut(scalar, d.device).chunk(pack_codes(neg, 1), 0, d.numel())

    def _lut(self, scalar: float, device: torch.device) -> Lut:
        return Lut(torch.tensor([scalar, -scalar], dtype=torch.float32, device=device), 1)

    def check(self, payload: Payload) -> None:
        expect_layout(payload, self.name, [(torch.uint8, packed_len(payload.numel, 1))], 1)
