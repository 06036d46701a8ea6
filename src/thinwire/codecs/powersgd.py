"""powersgd: rank-r approximation by one warm-started power iteration (Vogels et al. 2019).

The tensor is viewed as an m x c matrix M: (shape[0], rest) for ndim >= 2, a near-square
factorization of n for 0-d/1-D. With Q (c x r) from the encoder's state slot (the previous step's
Q, a seeded Gaussian on the first step):

    P = M Q;  P = orthonormalize(P) (QR);  Q = M^T P;  send P, Q (fp32);  decode P Q^T

The new Q is kept as the next warm start. P Q^T = P P^T M is the projection of M onto span(P),
so a matrix of rank <= r is reproduced exactly (to fp32 rounding). Tensors where the factors
would not be `min_compression` times smaller than n are sent as raw fp32 with `raw=true` in the
payload params, so the receiver knows.

Not linear here: summing the P Q^T of several workers is not the P Q^T of the sum. PowerSGD is
linear only in its two-round collective form (all-reduce P, orthonormalize, all-reduce Q), which
the collective hooks implement; hence `linear = False`.
"""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict, Field

from ..errors import CodecError
from .base import Codec, Slot, raise_non_finite
from .payload import Payload
from .registry import register
from .sparse import wire_params
from .spec import format_params


class PowerSGDParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rank: int = Field(4, ge=1, le=4096)
    seed: int = Field(0, ge=0, description="seeds the first Q")
    min_compression: float = Field(2.0, ge=1.0, description="else send raw fp32")
    raw: bool = Field(False, description="send raw fp32 (set on the wire for small tensors)")


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """(shape[0], rest) for ndim >= 2; the most square m x c with m * c = n otherwise."""
    n = math.prod(shape)
    if len(shape) >= 2:
        return (shape[0], n // shape[0]) if shape[0] else (0, 0)
    if n == 0:
        return (0, 0)
    cand = torch.arange(1, math.isqrt(n) + 1)
    m = int(cand[n % cand == 0].max())
    return m, n // m


@register
class PowerSGD(Codec):
    name = "powersgd"
    summary = "rank-r factors P (m x r) and Q (c x r), fp32, one warm-started power iteration"
    bytes_per_element = "4*r*(m+c)/(m*c)"
    low_rank = True
    wants_error_feedback = True
    checks_finite = True
    Params = PowerSGDParams
    decode_keys = ("rank", "raw")

    def _stateful(self) -> bool:
        return True

    def rank_for(self, m: int, c: int, rank: int | None = None) -> int:
        return min(rank or self.params.rank, m, c)

    def factors(self, shape: tuple[int, ...]) -> bool:
        """Whether a tensor of this shape is sent as factors (else raw: too small to gain)."""
        m, c = matrix_shape(shape)
        r = self.rank_for(m, c)
        return (not self.params.raw and m * c > 0
                and m * c >= self.params.min_compression * r * (m + c))

    def _encode(self, x: torch.Tensor, state: Slot | None) -> Payload:
        assert state is not None
        flat = x.reshape(-1).float()
        if not self.factors(tuple(x.shape)):
            if flat.numel() and not bool(torch.isfinite(flat).all()):
                raise_non_finite(self.name, x)
            payload = self.make_payload(x, buffers=[flat.contiguous()])
            payload.params = format_params({"rank": self.params.rank, "raw": True})
            return payload
        m, c = matrix_shape(tuple(x.shape))
        r = self.rank_for(m, c)
        M = flat.view(m, c)
        q = self._warm_start(state, c, r, M.device)
        p = M @ q
        if not bool(torch.isfinite(p).all()):  # any NaN/Inf in M reaches P
            raise_non_finite(self.name, x)
        p = torch.linalg.qr(p).Q
        q = M.t() @ p
        state["q"] = q
        return self.make_payload(x, buffers=[p.reshape(-1).contiguous(),
                                             q.reshape(-1).contiguous()])

    def _warm_start(self, state: Slot, c: int, r: int, device: torch.device) -> torch.Tensor:
        q = state.get("q")
        if q is None:
            gen = torch.Generator().manual_seed(self.params.seed)
            return torch.randn(c, r, generator=gen).to(device)
        if tuple(q.shape) != (c, r):
            raise CodecError(f"powersgd state holds Q of shape {tuple(q.shape)}, this tensor "
                             f"needs {(c, r)}; use one Encoder slot per tensor name")
        return q.to(device)

    def _decode(self, payload: Payload, state: Slot | None) -> torch.Tensor:
        self.check(payload)
        wire = wire_params(self, payload)
        if wire.raw:
            out = payload.buffers[0].clone()
        else:
            m, c = matrix_shape(payload.shape)
            r = self.rank_for(m, c, wire.rank)
            p, q = (b.view(-1, r) for b in payload.buffers)
            out = p @ q.t()
        return out.to(payload.dtype).reshape(payload.shape)

    def check(self, payload: Payload) -> None:
        wire = wire_params(self, payload)
        n = payload.numel
        if wire.raw:
            want = [(torch.float32, n)]
        else:
            m, c = matrix_shape(payload.shape)
            r = self.rank_for(m, c, wire.rank)
            if m * c == 0:
                raise CodecError("an empty tensor cannot carry low-rank factors")
            want = [(torch.float32, m * r), (torch.float32, c * r)]
        got = [(b.dtype, b.numel()) for b in payload.buffers]
        if got != want:
            raise CodecError(f"powersgd payload for shape {payload.shape} needs buffers {want}, "
                             f"got {got}")
