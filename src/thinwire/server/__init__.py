"""What every coordinator runtime shares below the runtimes: durable state (an atomic
safetensors snapshot plus an fsynced journal) and HTTP plumbing (JSON errors, a bearer
token, bounded bodies, loopback rules)."""

from .http import BodyLimit, HttpError, add_json_errors, bearer, is_loopback, require_token
from .state import StateError, StateStore

__all__ = ["BodyLimit", "HttpError", "StateError", "StateStore", "add_json_errors", "bearer",
           "is_loopback", "require_token"]
