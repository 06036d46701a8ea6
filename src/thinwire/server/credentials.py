"""Who is calling: the bearer token (worker or admin) and per-worker keys.

The shared bearer token only says "one of our workers"; a per-worker key, issued once at
registration and stored as its SHA-256 (keys are 256 random bits, so a fast hash is
enough), says "this worker id". The admin token may act for any worker id.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

KEY_HEADER = "x-thinwire-worker-key"


@dataclass(frozen=True)
class Caller:
    """What an HTTP request proved: a worker key (maybe) and whether it holds admin rights.
    In-process callers (benchmarks, tests) pass no Caller and are trusted."""

    key: str | None = None
    admin: bool = False


def new_key() -> tuple[str, str]:
    """A fresh worker key and the hash the coordinator keeps of it."""
    key = secrets.token_urlsafe(32)
    return key, hash_key(key)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_matches(stored: str, key: str | None) -> bool:
    return key is not None and hmac.compare_digest(stored, hash_key(key))


def bearer_role(authorization: bytes, token: str | None, admin: str | None) -> str | None:
    """'admin', 'worker' or None for an `Authorization` header value. Without any token
    configured every caller is a worker; the admin token also works alone."""
    for secret, role in ((admin, "admin"), (token, "worker")):
        if secret and hmac.compare_digest(authorization, b"Bearer " + secret.encode()):
            return role
    return "worker" if token is None else None
