"""The codec contract: a stateless configuration plus an explicit per-tensor state slot.

A codec turns a tensor into a `Payload` and back. Anything a codec must remember between calls
(error-feedback residual, LAQ's last sent value, PowerSGD's warm-start Q, DGC momentum) lives in
a `Slot` (a plain dict) that the caller owns, one per tensor name, so it can be checkpointed
with `CodecState.state_dict()` and never hides in globals. Codecs never communicate.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import CodecError, ConfigError
from .payload import DTYPE_CODES, Payload
from .spec import format_params, format_stage

Slot = dict[str, Any]
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Codec:
    """Base class. Subclasses set the class attributes and implement `_encode`/`_decode`."""

    name: ClassVar[str]
    summary: ClassVar[str] = ""          # what goes on the wire, for the README table
    bytes_per_element: ClassVar[str] = ""
    lossy: ClassVar[bool] = True
    unbiased: ClassVar[bool] = False
    linear: ClassVar[bool] = False       # sum of payloads decodes to the sum of inputs
    sparse: ClassVar[bool] = False       # indices in buffers[0], values in parts[0]
    own_feedback: ClassVar[bool] = False  # keeps its own residual: never wrap in ErrorFeedback
    low_rank: ClassVar[bool] = False     # factors; linear in a two-round collective form
    shared_scale: ClassVar[bool] = False  # codes on a grid all ranks agree on sum as integers
    wants_error_feedback: ClassVar[bool] = False
    takes_inner: ClassVar[bool] = False  # may be followed by a value codec with '+'
    checks_finite: ClassVar[bool] = False  # _encode detects NaN/Inf itself (saves a pass)
    Params: ClassVar[type[BaseModel]] = NoParams
    decode_keys: ClassVar[tuple[str, ...]] = ()  # params the receiver needs

    def __init__(self, params: BaseModel | None = None, inner: "Codec | None" = None) -> None:
        self.params = params if params is not None else self.Params()
        if inner is not None and not self.takes_inner:
            raise ConfigError(f"'{self.name}' cannot be followed by '+{inner.spec()}': only "
                              f"{', '.join(sorted(inner_takers()))} take a value codec after '+'")
        self.inner = inner

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_params(cls, params: dict[str, Any], inner: "Codec | None" = None) -> "Codec":
        try:
            model = cls.Params(**params)
        except ValidationError as exc:
            raise ConfigError(describe_validation(cls, exc)) from None
        return cls(model, inner)

    def spec(self) -> str:
        own = format_stage(self.name, self.params.model_dump(exclude_defaults=True))
        return own if self.inner is None else f"{own}+{self.inner.spec()}"

    def __repr__(self) -> str:
        return f"<codec {self.spec()}>"

    @property
    def stateful(self) -> bool:
        return self._stateful() or (self.inner is not None and self.inner.stateful)

    def _stateful(self) -> bool:
        return False

    # ---- public API ---------------------------------------------------------------------
    def encode(self, x: torch.Tensor, state: Slot | None = None, name: str = "") -> Payload:
        """Encode `x`; `state` is this tensor's slot (required by stateful codecs)."""
        check_input(self.name, x, name, check_finite=not self.checks_finite)
        if self._stateful() and state is None:
            raise CodecError(f"{self.name} keeps state between calls: pass a state slot "
                             "(use thinwire.codecs.Encoder, which owns one per tensor name)")
        payload = self._encode(x.detach(), state)
        payload.name = name
        return payload

    def roundtrip(self, x: torch.Tensor, state: Slot | None = None,
                  name: str = "") -> tuple[Payload, torch.Tensor]:
        """Encode and return what the receiver will decode (error feedback needs both)."""
        check_input(self.name, x, name, check_finite=not self.checks_finite)
        payload, recon = self._roundtrip(x.detach(), state)
        payload.name = name
        return payload, recon

    def _roundtrip(self, x: torch.Tensor, state: Slot | None) -> tuple[Payload, torch.Tensor]:
        """Unchecked encode + reconstruction; differential codecs override (decoder state)."""
        if self._stateful() and state is None:
            raise CodecError(f"{self.name} keeps state between calls: pass a state slot")
        payload = self._encode(x, state)
        return payload, self._decode(payload, None)

    def decode(self, payload: Payload, state: Slot | None = None) -> torch.Tensor:
        if payload.codec != self.name:
            raise CodecError(f"payload was encoded by '{payload.codec}', not '{self.name}'")
        return self._decode(payload, state)

    def feedback_problem(self) -> str | None:
        """Why error feedback would diverge around this configuration (None if it is fine).

        Error feedback needs a contractive codec (||x - C(x)|| < ||x||); codecs that rescale
        to stay unbiased (randomk's n/k) are not, and their residual grows without bound.
        """
        return self.inner.feedback_problem() if self.inner is not None else None

    def decode_params(self) -> str:
        dumped = self.params.model_dump()
        return format_params({k: dumped[k] for k in self.decode_keys})

    def make_payload(self, x: torch.Tensor, **fields: Any) -> Payload:
        return Payload(codec=self.name, shape=tuple(x.shape), dtype=x.dtype,
                       params=self.decode_params(), **fields)

    def check(self, payload: Payload) -> None:
        """Validate buffer layout against shape and params; raise CodecError if inconsistent."""

    # ---- subclass hooks -----------------------------------------------------------------
    def _encode(self, x: torch.Tensor, state: Slot | None) -> Payload:
        raise NotImplementedError

    def _decode(self, payload: Payload, state: Slot | None) -> torch.Tensor:
        raise NotImplementedError


def inner_takers() -> set[str]:
    from .registry import REGISTRY

    return {n for n, c in REGISTRY.items() if c.takes_inner}


def describe_validation(cls: type[Codec], exc: ValidationError) -> str:
    fields = cls.Params.model_fields
    valid = ", ".join(f"{k}={f.default!r}" for k, f in fields.items()) or "(no parameters)"
    problems = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "?"
        if err["type"] == "extra_forbidden":
            problems.append(f"unknown parameter '{key}'")
        else:
            problems.append(f"{key}={err.get('input')!r}: {err['msg']}")
    return f"codec '{cls.name}': {'; '.join(problems)} (valid parameters: {valid})"


def check_input(codec: str, x: torch.Tensor, name: str, check_finite: bool) -> None:
    where = f"{codec}: tensor '{name}'" if name else f"{codec}: tensor"
    if not isinstance(x, torch.Tensor):
        raise CodecError(f"{where} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise CodecError(f"{where} has dtype {x.dtype}; codecs encode floating tensors "
                         "(float32/float16/bfloat16/float64). Cast with .float() first")
    if x.dtype not in DTYPE_CODES:
        raise CodecError(f"{where} has unsupported dtype {x.dtype}")
    if check_finite and x.numel() and not bool(torch.isfinite(x).all()):
        raise_non_finite(where, x)


def raise_non_finite(where: str, x: torch.Tensor) -> None:
    bad = int((~torch.isfinite(x)).sum())
    raise CodecError(f"{where} has {bad} non-finite values (NaN/Inf); refusing to encode. "
                     "Check the learning rate / loss scale or clip gradients")


class CodecState:
    """Per-tensor-name slots for one codec on one side of a link; checkpointable."""

    def __init__(self) -> None:
        self.slots: dict[str, Slot] = {}

    def slot(self, name: str) -> Slot:
        return self.slots.setdefault(name, {})

    def state_dict(self) -> dict[str, Slot]:
        return _clone(self.slots)

    def load_state_dict(self, state: dict[str, Slot]) -> None:
        self.slots = _clone(state)

    def reset(self) -> None:
        self.slots.clear()


def _clone(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _clone(v) for k, v in obj.items()}
    return copy.deepcopy(obj)
