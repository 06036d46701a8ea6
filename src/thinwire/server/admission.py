"""Whether a coordinator accepts an update, and the one path by which it does: checked
against the layout, decoded, then journaled (fsync) before anyone is told it was accepted.
"""

from collections.abc import Callable
from typing import Any

from ..exchange import Arrival, Receiver, Rejected
from ..wire import Update
from .http import HttpError
from .state import StateStore

ErrorType = Callable[[int, str], Exception]


def admit(receiver: Receiver, store: StateStore, update: Update, body: bytes,
          record: dict[str, Any], error: ErrorType = HttpError) -> Arrival:
    """Check `update` against the receiver's layout, decode it, then journal it (fsync).

    A refused update is `error(400)`; one that cannot be journaled leaves the decoder as it
    was and is `error(503)`, so nothing is acknowledged that a restart would not replay."""
    try:
        receiver.check(update)
        arrival = receiver.decode(update, len(body))
    except Rejected as exc:
        raise error(400, str(exc)) from None
    try:
        store.append(record, body)
    except OSError as exc:
        arrival.undo()
        raise error(503, f"cannot journal the update ({exc.strerror}); the coordinator's "
                         "disk is failing, retry later") from None
    return arrival


def check_staleness(version: int, base_version: int, max_staleness: int, what: str,
                    error: ErrorType = HttpError) -> int:
    """How many versions behind `what` (at `version`) an update based on `base_version`
    is; an update from the future is error(400), one staler than allowed error(409)."""
    if base_version > version:
        raise error(400, f"base_version {base_version} is ahead of {what} version {version}")
    stale = version - base_version
    if stale > max_staleness:
        raise error(409, f"update is {stale} versions stale (max_staleness {max_staleness});"
                         " pull again and train on the newer version")
    return stale
