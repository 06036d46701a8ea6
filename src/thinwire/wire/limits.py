"""Bounds applied to untrusted bytes before anything is computed or allocated from them.

Every count a message declares (dims, each dim, elements, buffers, parts, scalars, nesting,
string lengths) is checked here first: arithmetic on an unchecked count is itself an attack
(the product of 50,000 dims of 2**64-1 is a 960,000-digit integer), and so is printing one
(Python refuses to format integers over 4,300 digits). Error text goes through `brief`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import WireError

SHOWN_DIMS = 6  # dims printed in an error message; the rest are counted


@dataclass(frozen=True)
class WireLimits:
    max_elements: int = 1 << 28        # per tensor (shape product); also bounds each dim
    max_total_elements: int = 1 << 31  # per message, nested parts included
    max_tensors: int = 100_000
    max_depth: int = 4                 # nesting of payload parts
    max_message_bytes: int = 1 << 31
    max_control_bytes: int = 1 << 20  # one control message (Register, Offer, ...)
    max_dims: int = 32                 # entries of one shape
    max_buffers: int = 16              # per payload
    max_parts: int = 8                 # per payload
    max_scalars: int = 1024            # per payload
    max_string: int = 1024             # characters of a name, codec, params, node id, key
    max_metrics: int = 1024            # entries of a metrics/capabilities map or link list
    max_history: int = 4096            # LAQ model-change history entries in a ModelAnnounce
    max_centroid: int = 1 << 16        # values of a Register's centroid (a hidden size)


def brief(value: int) -> str:
    """An integer for an error message: exact when short, else its magnitude in bits."""
    if -10**15 < value < 10**15:
        return str(value)
    return f"~2^{abs(value).bit_length() - 1}" if value > 0 else "<-10^15"


def brief_shape(shape: Iterable[int]) -> str:
    """A declared shape for an error message: at most SHOWN_DIMS dims, each `brief`."""
    dims = list(shape)
    shown = ", ".join(brief(int(d)) for d in dims[:SHOWN_DIMS])
    more = f", ... ({len(dims)} dims)" if len(dims) > SHOWN_DIMS else ""
    return f"[{shown}{more}]"


def brief_text(text: str, limit: int = 64) -> str:
    """repr of a string cut to `limit` characters (names and params arrive unbounded)."""
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


def bounded_numel(shape: Iterable[int], limit: int) -> int | None:
    """Product of the dims, or None as soon as a dim or the running product passes `limit`.

    Dims are multiplied one at a time and the loop stops at the first overflow, so the work
    never grows with the size of the numbers (a zero dim still has every dim checked).
    """
    total = 1
    for d in shape:
        if d > limit:
            return None
        total *= d
        if total > limit:
            return None
    return total


def check_count(what: str, count: int, limit: int, knob: str) -> None:
    """Raise WireError if a declared count passes its limit (message names the knob)."""
    if count > limit:
        raise WireError(f"{what}: {brief(count)} is over the limit of {limit} "
                        f"(WireLimits.{knob})")


def check_text(what: str, text: str, limits: WireLimits) -> None:
    check_count(f"{what} length", len(text), limits.max_string, "max_string")
