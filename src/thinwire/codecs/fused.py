"""Compiled (torch.compile / inductor) versions of the hot codec kernels, built lazily.

Eager torch runs each op of a kernel as its own pass over memory (clamp, then cast; scale,
then round, then clamp, then cast), so the cheap dense codecs reach only ~7-10% of memcpy
throughput on CPU. Inductor fuses such a chain into one vectorized loop. The compiled function
is built from the very reference function in `kernels`, and inductor's C++ backend keeps
IEEE semantics (no fp contraction), so results are bit-identical; tests/test_fused.py checks.

Policy, from the environment variable THINWIRE_FUSED:
  auto (default): compiled kernels for CPU tensors of at least `threshold` elements (1 Mi),
  1: compiled kernels for every CPU tensor, 0: never.
`configure()` overrides the environment (tests use it). A kernel whose compilation or call
fails warns once and then always runs the reference.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch

DEFAULT_THRESHOLD = 1 << 20
MODES = ("0", "1", "auto")
F = TypeVar("F", bound=Callable[..., Any])

_lock = threading.Lock()
_compiled: dict[str, Callable[..., Any]] = {}
_failed: set[str] = set()
_override: dict[str, Any] = {}


def _mode() -> str:
    mode = _override.get("mode") or os.environ.get("THINWIRE_FUSED", "auto").strip().lower()
    if mode not in MODES:
        warnings.warn(f"THINWIRE_FUSED={mode!r} is not one of {MODES}; using 'auto'",
                      stacklevel=3)
        return "auto"
    return mode


def threshold() -> int:
    return int(_override.get("threshold", DEFAULT_THRESHOLD))


def configure(mode: str | bool | None = None, min_numel: int | None = None) -> None:
    """Force the policy: mode True/'1' on, False/'0' off, 'auto', None = back to the env."""
    if isinstance(mode, bool):
        mode = "1" if mode else "0"
    if mode is not None and mode not in MODES:
        raise ValueError(f"fused mode must be one of {MODES} or a bool, got {mode!r}")
    _override.clear()
    if mode is not None:
        _override["mode"] = mode
    if min_numel is not None:
        _override["threshold"] = int(min_numel)


@contextlib.contextmanager
def forced(mode: str | bool, min_numel: int | None = None) -> Iterator[None]:
    """Temporarily set the policy (restores the previous override on exit)."""
    saved = dict(_override)
    configure(mode, min_numel)
    try:
        yield
    finally:
        _override.clear()
        _override.update(saved)


def wanted(t: torch.Tensor, numel: int | None = None) -> bool:
    """Whether a kernel whose main operand is `t` (`numel` elements of work) runs compiled."""
    if t.device.type != "cpu" or t.numel() == 0:
        return False
    mode = _mode()
    if mode == "0":
        return False
    return mode == "1" or (t.numel() if numel is None else numel) >= threshold()


def _build(name: str, ref: Callable[..., Any]) -> Callable[..., Any] | None:
    with _lock:
        if name in _failed:
            return None
        if name not in _compiled:
            try:
                _compiled[name] = torch.compile(ref, dynamic=True, fullgraph=True)
            except Exception as exc:  # noqa: BLE001 - any failure means: use the reference
                _give_up(name, exc)
                return None
        return _compiled[name]


def _give_up(name: str, exc: BaseException) -> None:
    _failed.add(name)
    _compiled.pop(name, None)
    warnings.warn(f"thinwire: fused kernel '{name}' unavailable ({type(exc).__name__}: "
                  f"{str(exc).splitlines()[0] if str(exc) else ''}); using the reference "
                  "torch implementation", RuntimeWarning, stacklevel=4)


def fusable(ref: F | None = None, *, work: Callable[..., int] | None = None) -> Any:
    """Decorator: dispatch a reference kernel to its compiled twin when `wanted(first arg)`.

    `work(*args)` gives the element count the threshold applies to (default: first arg's).
    Use as `@fusable` or `@fusable(work=...)`.
    """
    if ref is None:
        return functools.partial(fusable, work=work)
    name = ref.__name__

    @functools.wraps(ref)
    def dispatch(*args: Any) -> Any:
        size = work(*args) if work is not None else None
        if name not in _failed and wanted(args[0], size):
            fn = _build(name, ref)
            if fn is not None:
                try:
                    with torch.no_grad():  # codes need no autograd; one graph per kernel
                        return fn(*args)
                except Exception as exc:  # noqa: BLE001 - compile errors surface on call
                    _give_up(name, exc)
        return ref(*args)

    dispatch.reference = ref  # type: ignore[attr-defined]
    return dispatch  # type: ignore[return-value]


def empty(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype,
          like: torch.Tensor) -> torch.Tensor:
    """Uninitialized output on `like`'s device, backed by huge pages when large.

    A fresh 40 MB output costs ~10,000 page faults (the kernel zeroes each 4 KiB page on first
    touch), which caps any kernel writing it at ~30% of memcpy speed. Advising the untouched
    range MADV_HUGEPAGE before the kernel writes it cuts that to ~20 faults: decode kernels
    run about twice as fast. Only for CPU tensors the fused policy covers; advice is harmless.
    """
    out = torch.empty(shape, dtype=dtype, device=like.device)
    nbytes = out.numel() * out.element_size()
    if nbytes >= 2 * _HUGE and wanted(out):
        _advise_huge(out.data_ptr(), nbytes)
    return out


_HUGE = 2 << 20
_MADV_HUGEPAGE = 14
_madvise: list[Any] = []  # [libc.madvise or None], resolved once


def _advise_huge(ptr: int, nbytes: int) -> None:
    if not _madvise:
        _madvise.append(_find_madvise())
    fn = _madvise[0]
    start = -(-ptr // _HUGE) * _HUGE
    end = (ptr + nbytes) // _HUGE * _HUGE
    if fn is not None and end > start:
        fn(start, end - start, _MADV_HUGEPAGE)  # advisory: failure just means small pages


def _find_madvise() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            if "[never]" in f.read():
                return None
        fn = ctypes.CDLL(None).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def status() -> dict[str, Any]:
    """Current policy and which kernels are compiled or failed (for `bench codecs`)."""
    return {"mode": _mode(), "threshold": threshold(), "compiled": sorted(_compiled),
            "failed": sorted(_failed)}
