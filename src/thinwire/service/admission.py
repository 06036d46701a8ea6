"""What the coordinator admits beyond a well-formed update: worker ids and update headers.

Parsing, the layout check and all-or-nothing decoding are the exchange layer's `Receiver`;
here are the service's own rules and the HTTP-mappable `ServiceError`.
"""

from __future__ import annotations

import re

from ..server.http import HttpError
from ..wire import Update

WORKER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_SEQ = 1 << 53


class ServiceError(HttpError):
    """An HTTP-mappable error: status code plus a message a person can act on."""


def check_worker_id(wid: str) -> str:
    if not isinstance(wid, str) or not WORKER_ID.fullmatch(wid):
        raise ServiceError(400, f"worker id {wid!r} is invalid: use 1-64 characters from "
                                "letters, digits, '_', '.', '-' (starting with a letter/digit)")
    return wid


def check_header(update: Update, wid: str | None = None) -> None:
    if wid is not None and update.node_id != wid:
        raise ServiceError(400, f"update node_id {update.node_id!r} != worker {wid!r}")
    check_worker_id(update.node_id)
    if update.kind != "delta":
        raise ServiceError(400, f"update kind {update.kind!r}: workers send 'delta' updates")
    if update.seq >= MAX_SEQ or update.round >= MAX_SEQ:
        raise ServiceError(400, f"round/seq {update.round}/{update.seq} out of range")
