"""What every coordinator runtime shares below the runtimes: durable state (an atomic
safetensors snapshot plus an fsynced journal, journal-before-acknowledge admission) and HTTP
plumbing (JSON errors, a bearer token, bounded bodies, listen flags and loopback rules)."""

from .admission import admit, check_staleness
from .durable import Durable
from .http import BodyLimit, HttpError, add_json_errors, bearer
from .listen import add_listen_flags, is_loopback, require_token
from .state import StateError, StateStore

__all__ = ["BodyLimit", "Durable", "HttpError", "StateError", "StateStore", "add_json_errors",
           "add_listen_flags", "admit", "bearer", "check_staleness", "is_loopback",
           "require_token"]
