"""Wire format: protobuf schema, conversion, validation and framing. Never pickle."""

from .limits import WireLimits
from .messages import SCHEMA_VERSION, Update, parse_update, serialize_update
from .tensor import parse_payload, payload_from_proto, payload_to_proto, to_bytes

__all__ = ["SCHEMA_VERSION", "Update", "WireLimits", "parse_payload", "parse_update",
           "payload_from_proto", "payload_to_proto", "serialize_update", "to_bytes"]
