"""What every coordinator runtime shares below the runtimes: durable state (an atomic
safetensors snapshot plus an fsynced journal, journal-before-acknowledge admission) and HTTP
plumbing (a request guard: tokens before bodies, bounded and timed bodies; control bodies as
protobuf or JSON, control.py; a header deadline in uvicorn's h11 protocol, http11.py;
per-worker keys, credentials.py; JSON errors; listen flags and loopback rules) and the
coordinator's resource monitor (watch.py)."""

from .admission import admit, check_staleness
from .durable import Durable
from .guard import GuardRules, RequestGuard
from .http import HttpError, add_json_errors
from .listen import add_listen_flags, is_loopback, require_token
from .state import StateError, StateStore

__all__ = ["Durable", "GuardRules", "HttpError", "RequestGuard", "StateError", "StateStore",
           "add_json_errors", "add_listen_flags", "admit", "check_staleness", "is_loopback",
           "require_token"]
