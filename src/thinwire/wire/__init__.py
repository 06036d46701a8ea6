"""Wire format: protobuf schema, conversion, validation and framing. Never pickle."""

import warnings

with warnings.catch_warnings():
    # The gencode is deliberately older than most runtimes in range (see regen.py); protobuf
    # 5.28 and 6.30-6.31 warn about that on import, which is the point, not a problem.
    warnings.filterwarnings("ignore", message="Protobuf gencode version", category=UserWarning)
    from . import thinwire_pb2  # noqa: F401

from .limits import WireLimits
from .messages import SCHEMA_VERSION, Update, parse_update, serialize_update
from .tensor import parse_payload, payload_from_proto, payload_to_proto, to_bytes

__all__ = ["SCHEMA_VERSION", "Update", "WireLimits", "parse_payload", "parse_update",
           "payload_from_proto", "payload_to_proto", "serialize_update", "to_bytes"]
