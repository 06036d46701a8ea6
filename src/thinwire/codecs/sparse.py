"""Sparsifiers: topk, randomk, thresholdv, dgc. Values go to parts[0] through the inner codec.

topk, thresholdv and dgc send one index buffer coded by `index.py` (the coding used is in the
params, e.g. `index=varint+zlib`) and the values; randomk sends only the seed of its indices.
Magnitudes are compared as integers (the bit pattern with the sign bit cleared orders like |x|,
with NaN and Inf above every finite value), so a threshold pass always catches non-finite
entries among its candidates: no separate NaN/Inf pass is needed (`checks_finite`).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import CodecError, ConfigError
from . import index, kernels
from .base import Codec, Slot, raise_non_finite
from .payload import Payload
from .registry import lookup, register
from .spec import format_params, parse_params

INT_VIEW = {torch.float32: (torch.int32, 0x7FFFFFFF), torch.float16: (torch.int16, 0x7FFF),
            torch.bfloat16: (torch.int16, 0x7FFF), torch.float64: (torch.int64, 2**63 - 1)}
CHUNK = 1 << 15       # elements per threshold-pass op: cache-sized and under torch's
                      # parallel grain (serial ops; small parallel regions stall when busy)
SAMPLE_MIN = 2048     # sampled top-k: at least this many samples, else n // 500


# ---- selection ----------------------------------------------------------------------------
def magnitude_bits(flat: torch.Tensor) -> torch.Tensor:
    """|x| as ordered integers (int32, or int64 for float64)."""
    itype, mask = INT_VIEW[flat.dtype]
    out = flat.contiguous().view(itype) & mask
    return out.long() if itype == torch.int64 else out.int()


def ceil_bits(value: float, dtype: torch.dtype) -> int:
    """Bits of the smallest magnitude representable in `dtype` that is >= value."""
    t = torch.tensor(value, dtype=torch.float64).to(dtype)
    bits = int(t.view(INT_VIEW[dtype][0]))
    return bits + 1 if float(t) < value else bits


def select_ge(flat: torch.Tensor, bits: int) -> torch.Tensor:
    """Sorted indices with magnitude bits >= `bits` (NaN/Inf always qualify)."""
    n = flat.numel()
    itype, absmask = INT_VIEW[flat.dtype]
    ints = flat.contiguous().view(itype)
    mask = torch.empty(n + (-n) % 8, dtype=torch.bool, device=flat.device)
    mask[n:] = False
    buf = torch.empty(min(n, CHUNK), dtype=itype, device=flat.device)
    for start in range(0, n, CHUNK):  # chunks, not elements
        stop = min(n, start + CHUNK)
        part = buf[: stop - start]
        torch.bitwise_and(ints[start:stop], absmask, out=part)
        torch.ge(part, bits, out=mask[start:stop])
    return sparse_nonzero(mask)


def sparse_nonzero(mask: torch.Tensor) -> torch.Tensor:
    """nonzero() of a mostly-false bool mask (length a multiple of 8), via 8-byte words."""
    words = mask.view(torch.uint8).view(torch.int64)
    hit = words.nonzero().squeeze(1)
    if hit.numel() * 4 > words.numel():  # dense: the plain way is cheaper
        return mask.nonzero().squeeze(1)
    sub = words[hit].view(torch.uint8).nonzero().squeeze(1)
    return (hit[sub >> 3] << 3) | (sub & 7)


def exact_among(flat: torch.Tensor, cand: torch.Tensor, k: int) -> torch.Tensor:
    """The k largest magnitudes among sorted candidates; ties go to the lower index."""
    if cand.numel() <= k:
        return cand
    bits = magnitude_bits(flat[cand])
    kth = torch.kthvalue(bits, bits.numel() - k + 1).values
    keep = bits > kth
    ties = bits == kth
    keep |= ties & (ties.cumsum(0) <= k - int(keep.sum()))
    return cand[keep]


def topk_indices(flat: torch.Tensor, k: int, method: str = "sampled",
                 slack: float = 3.0) -> torch.Tensor:
    """Sorted indices of exactly the k largest |x|.

    `sampled` (DGC-style): take the threshold from a random sample of magnitudes so that about
    k + slack*sqrt(k) elements pass (in sample units), gather the candidates with one compare
    pass, lower the threshold if fewer than k passed, then pick exactly k among the few.
    """
    n = flat.numel()
    if k >= n:
        return torch.arange(n, device=flat.device)
    if k <= 0:
        return torch.zeros(0, dtype=torch.int64, device=flat.device)
    if method == "torch":
        mags = flat.abs() if flat.dtype == torch.float64 else flat.float().abs()
        return torch.topk(mags, k, sorted=False).indices.sort().values
    samples = min(n, max(SAMPLE_MIN, n // 500))
    if samples * 2 > n:  # small tensor: the whole tensor is the candidate set
        return exact_among(flat, torch.arange(n, device=flat.device), k)
    gen = torch.Generator().manual_seed(n * 1_000_003 + k)
    pos = torch.randint(0, n, (samples,), generator=gen).to(flat.device)
    ranked = magnitude_bits(flat[pos]).sort(descending=True).values
    expect = k * samples / n
    rank = max(1, math.ceil(expect + slack * math.sqrt(expect) + 1))
    while rank <= samples:
        cand = select_ge(flat, int(ranked[rank - 1]))
        if cand.numel() >= k:
            return exact_among(flat, cand, k)
        rank *= 2  # too few passed: lower the threshold and retry
    return exact_among(flat, torch.arange(n, device=flat.device), k)


def check_finite(name: str, x: torch.Tensor) -> None:
    """NaN/Inf check in one cheap reduction (the exact pass runs only if the sum is not finite)."""
    if x.numel() and not math.isfinite(float(x.sum())) and not bool(torch.isfinite(x).all()):
        raise_non_finite(name, x)


def wire_params(codec: Codec, payload: Payload) -> BaseModel:
    """Decode params as the payload states them (the sender may hold `index=auto`, `cols=0`)."""
    try:
        given = parse_params(payload.params, codec.name)
        wire = {k: v for k, v in given.items() if k in codec.decode_keys}
        return codec.Params(**{**codec.params.model_dump(), **wire})
    except (ConfigError, ValidationError) as exc:
        raise CodecError(f"bad '{codec.name}' params {payload.params!r}: {exc}") from None


def count_for(n: int, ratio: float, k: int | None) -> int:
    if n == 0:
        return 0
    return min(n, k if k is not None else max(1, round(ratio * n)))


# ---- shared payload layout ------------------------------------------------------------------
class _Sparse(Codec):
    """Indices in buffers[0] (coded by index.py), values in parts[0] (inner codec)."""

    takes_inner = True
    sparse = True
    wants_error_feedback = True
    checks_finite = True
    decode_keys = ("index",)

    @property
    def value_codec(self) -> Codec:
        return self.inner if self.inner is not None else lookup("none")()

    def _send(self, x: torch.Tensor, idx: torch.Tensor, values: torch.Tensor,
              state: Slot | None) -> tuple[Payload, torch.Tensor]:
        """Payload for these sorted indices and values, and the values the receiver gets."""
        if values.numel() and not bool(torch.isfinite(values).all()):
            raise_non_finite(self.name, x)
        coding, buf = index.encode(idx, x.numel(), self.params.index, self.params.zlib_level)
        inner = state.setdefault("inner", {}) if state is not None else None
        part, recon = self.value_codec.roundtrip(values, inner)
        payload = self.make_payload(x, buffers=[buf], parts=[part])
        payload.params = format_params({"index": coding})
        return payload, recon

    def _decode(self, payload: Payload, state: Slot | None) -> torch.Tensor:
        idx = self._indices(payload)
        part = payload.parts[0]
        inner = state.setdefault("inner", {}) if state is not None else None
        values = self.value_codec.decode(part, inner).reshape(-1)
        out = torch.zeros(payload.numel, dtype=payload.dtype, device=values.device)
        out[idx.to(values.device)] = values.to(payload.dtype)
        return out.view(payload.shape)

    def _indices(self, payload: Payload) -> torch.Tensor:
        if len(payload.buffers) != 1 or len(payload.parts) != 1:
            raise CodecError(f"'{self.name}' payload needs one index buffer and one value part, "
                             f"got {len(payload.buffers)} buffers, {len(payload.parts)} parts")
        part = payload.parts[0]
        if len(part.shape) != 1:
            raise CodecError(f"'{self.name}' values must be 1-D, got shape {part.shape}")
        coding = wire_params(self, payload).index
        return index.decode(payload.buffers[0], coding, payload.numel, part.numel)

    def check(self, payload: Payload) -> None:
        self._indices(payload)


# ---- topk ---------------------------------------------------------------------------------
class TopKParams(index.IndexParams):
    ratio: float = Field(0.01, gt=0, le=1, description="fraction of elements kept")
    k: int | None = Field(None, ge=1, description="elements kept; overrides ratio")
    method: Literal["sampled", "torch"] = "sampled"


@register
class TopK(_Sparse):
    name = "topk"
    summary = "the k largest |x|: coded indices (raw/varint/bitmap, +zlib) + values (inner codec)"
    bytes_per_element = "~ratio*(4+1..4)"
    Params = TopKParams

    def _select(self, flat: torch.Tensor) -> torch.Tensor:
        k = count_for(flat.numel(), self.params.ratio, self.params.k)
        return topk_indices(flat, k, self.params.method)

    def _encode(self, x: torch.Tensor, state: Slot | None) -> Payload:
        flat = x.reshape(-1)
        idx = self._select(flat)
        return self._send(x, idx, flat[idx], state)[0]

    def _roundtrip(self, x: torch.Tensor, state: Slot | None) -> tuple[Payload, torch.Tensor]:
        flat = x.reshape(-1)
        idx = self._select(flat)
        payload, recon = self._send(x, idx, flat[idx], state)
        out = torch.zeros_like(flat)
        out[idx] = recon.to(x.dtype)
        return payload, out.view(x.shape)


# ---- thresholdv ---------------------------------------------------------------------------
class ThresholdParams(index.IndexParams):
    v: float = Field(1e-3, gt=0, description="send entries with |x| >= v")


@register
class ThresholdV(TopK):
    name = "thresholdv"
    summary = "entries with |x| >= v: coded indices + values (inner codec)"
    bytes_per_element = "~frac(|x|>=v)*(4+1..4)"
    Params = ThresholdParams

    def _select(self, flat: torch.Tensor) -> torch.Tensor:
        return select_ge(flat, ceil_bits(self.params.v, flat.dtype))


# ---- randomk ------------------------------------------------------------------------------
class RandomKParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ratio: float = Field(0.01, gt=0, le=1)
    k: int | None = Field(None, ge=1)
    seed: int = Field(0, ge=0)
    unbiased: bool = Field(True, description="scale by n/k and sum duplicates")


def mix_seed(seed: int, step: int) -> int:
    """splitmix64 of (seed, step): a fresh 64-bit generator seed per call."""
    z = (seed * 0x9E3779B97F4A7C15 + step + 1) & (2**64 - 1)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & (2**64 - 1)
    return z ^ (z >> 31)


def random_indices(n: int, k: int, seed: int, device: torch.device) -> torch.Tensor:
    """k indices in [0, n) with replacement; drawn on the CPU so every device agrees."""
    if n == 0 or k == 0:
        return torch.zeros(0, dtype=torch.int64, device=device)
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, n, (k,), generator=gen).to(device)


@register
class RandomK(_Sparse):
    name = "randomk"
    summary = "k values at seeded random indices (only the seed is sent), scaled n/k"
    bytes_per_element = "~ratio*4"
    unbiased = True  # with unbiased=true (the default)
    linear = True  # same seed and step on every sender: the indices agree, values add
    wants_error_feedback = False
    Params = RandomKParams
    decode_keys = ("unbiased",)

    def feedback_problem(self) -> str | None:
        if self.params.unbiased:
            return ("randomk(unbiased=true) scales values by n/k, which is not contractive, so "
                    "the residual grows without bound; use randomk(unbiased=false)")
        return super().feedback_problem()

    def _encode(self, x: torch.Tensor, state: Slot | None) -> Payload:
        flat = x.reshape(-1)
        check_finite(self.name, flat)
        n = flat.numel()
        k = count_for(n, self.params.ratio, self.params.k)
        step = (state or {}).get("step", 0)
        seed = mix_seed(self.params.seed, step)
        if state is not None:
            state["step"] = step + 1
        values = flat[random_indices(n, k, seed, flat.device)]
        if self.params.unbiased:
            values = values.float() * (n / max(k, 1))
        inner = state.setdefault("inner", {}) if state is not None else None
        part = self.value_codec.encode(values, inner)
        return self.make_payload(x, seed=seed, parts=[part])

    def _decode(self, payload: Payload, state: Slot | None) -> torch.Tensor:
        self.check(payload)
        inner = state.setdefault("inner", {}) if state is not None else None
        values = self.value_codec.decode(payload.parts[0], inner).reshape(-1).float()
        idx = random_indices(payload.numel, values.numel(), payload.seed, values.device)
        out = torch.zeros(payload.numel, dtype=torch.float32, device=values.device)
        if wire_params(self, payload).unbiased:
            out.index_add_(0, idx, values)  # duplicates add up: E[out] = x
        else:
            out[idx] = values
        return out.to(payload.dtype).view(payload.shape)

    def check(self, payload: Payload) -> None:
        if payload.buffers or len(payload.parts) != 1:
            raise CodecError("randomk payload carries no buffers and exactly one value part")
        part = payload.parts[0]
        if len(part.shape) != 1 or part.numel > payload.numel:
            raise CodecError(f"randomk values of shape {part.shape} do not fit a tensor of "
                             f"{payload.numel} elements")


# ---- dgc ----------------------------------------------------------------------------------
class DGCParams(index.IndexParams):
    ratio: float = Field(0.01, gt=0, le=1)
    momentum: float = Field(0.9, ge=0, lt=1)
    sample_ratio: float = Field(0.01, gt=0, le=1)


@register
class DGC(_Sparse):
    """Deep Gradient Compression (Lin et al. 2018): momentum correction, local accumulation,
    sampled threshold, momentum factor masking. The accumulator is the error feedback."""

    name = "dgc"
    summary = "momentum-corrected accumulator above a sampled threshold: indices + values"
    bytes_per_element = "~ratio*(4+1..4)"
    own_feedback = True
    Params = DGCParams

    def _stateful(self) -> bool:
        return True

    def _encode(self, x: torch.Tensor, state: Slot | None) -> Payload:
        assert state is not None
        flat = x.reshape(-1).float()
        check_finite(self.name, flat)  # before the accumulators are touched
        n = flat.numel()
        u, v = state.get("u"), state.get("v")
        if u is None or v is None:
            u, v = torch.zeros_like(flat), torch.zeros_like(flat)
        elif u.shape != flat.shape or v.shape != flat.shape:
            raise CodecError(f"dgc state holds {u.numel()} elements but the tensor has {n}; "
                             "use one Encoder slot per tensor name")
        u, v = u.to(flat.device), v.to(flat.device)
        step = state.get("step", 0)
        idx = self._accumulate_and_select(flat, u, v, count_for(n, self.params.ratio, None),
                                          step)
        payload, recon = self._send(x, idx, v[idx], state)
        v[idx] -= recon.float()  # what the receiver did not get stays accumulated
        u[idx] = 0.0             # momentum factor masking
        state.update(u=u, v=v, step=step + 1)
        return payload

    def _accumulate_and_select(self, x: torch.Tensor, u: torch.Tensor, v: torch.Tensor,
                               k: int, step: int) -> torch.Tensor:
        """u = m*u + x, v += u, then the indices whose |v| reaches a threshold sampled at the
        target ratio (trimmed to k if > 1.3k pass). The sample is taken first, from the
        updated values at the sampled positions (the same elementwise arithmetic), so the
        update and the compare run as one pass (`kernels.dgc_accumulate`)."""
        n = v.numel()
        samples = min(n, max(1, math.ceil(self.params.sample_ratio * n)))
        momentum = torch.tensor(self.params.momentum, dtype=torch.float32, device=v.device)
        mask = torch.empty(n + (-n) % 8, dtype=torch.bool, device=v.device)
        mask[n:] = False
        if k >= n or samples >= n:
            kernels.dgc_accumulate(x, u, v, momentum, torch.tensor(float("inf")),
                                   mask[:n].view(torch.uint8))
            return topk_indices(v, k)
        pos = torch.randint(0, n, (samples,), generator=torch.Generator().manual_seed(step))
        pos = pos.to(v.device)
        sampled = v[pos] + (x[pos] + u[pos] * momentum)
        ranked = sampled.abs().sort(descending=True).values  # |x| orders as its bits do
        threshold = ranked[min(samples, max(1, round(k * samples / n))) - 1]
        kernels.dgc_accumulate(x, u, v, momentum, threshold, mask[:n].view(torch.uint8))
        cand = sparse_nonzero(mask)
        return exact_among(v, cand, k) if cand.numel() > 1.3 * k else cand
