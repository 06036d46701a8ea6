"""`Update`: one node's contribution for one step or round, as it crosses the wire.

The seed design's `GradUpdate {node_id, sparse_grad_idx (zlib), quant_grad (int8),
confidence_score}` maps onto it as: node_id -> node_id; each gradient tensor -> one
`TensorPayload` with codec "topk" whose first buffer holds the (zlib-compressed) indices and
whose part is an "int8" payload holding the quantized values; confidence_score -> confidence.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from ..codecs.payload import Payload
from ..errors import WireError
from . import thinwire_pb2 as pb
from .limits import WireLimits, brief_text, check_count, check_text
from .tensor import ElementBudget, check_size, parse_strict, payload_from_proto, \
    payload_to_proto, validate_payload

SCHEMA_VERSION = 1
KINDS = ("grad", "delta", "model")


@dataclass
class Update:
    node_id: str
    tensors: list[Payload] = field(default_factory=list)
    round: int = 0
    seq: int = 0
    confidence: float = 0.0
    num_samples: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    kind: str = "grad"
    base_version: int = 0

    def to_proto(self) -> pb.Update:
        msg = pb.Update(schema_version=SCHEMA_VERSION, node_id=self.node_id, round=self.round,
                        seq=self.seq, confidence=self.confidence, num_samples=self.num_samples,
                        kind=self.kind, base_version=self.base_version)
        msg.metrics.update({k: float(v) for k, v in self.metrics.items()})
        msg.tensors.extend(payload_to_proto(t) for t in self.tensors)
        return msg


def serialize_update(update: Update) -> bytes:
    return update.to_proto().SerializeToString(deterministic=True)


def parse_update(data: bytes, limits: WireLimits = WireLimits(),
                 expect: Callable[[Update], None] | None = None) -> Update:
    """Parse and validate untrusted bytes; raises WireError saying what was wrong.

    `expect` (e.g. a check of names, shapes and codecs against the model) runs once every
    declared count is bounded but before any codec reads a buffer (index decoding, finite
    checks), so an update the caller would reject anyway costs no decoding work.
    """
    check_size(data, limits.max_message_bytes, "Update")
    msg = pb.Update()
    parse_strict(msg, data, "Update")
    check_fields(msg, limits)
    budget = ElementBudget(limits.max_total_elements)
    update = Update(node_id=msg.node_id, round=msg.round, seq=msg.seq,
                    confidence=msg.confidence, num_samples=msg.num_samples,
                    metrics=dict(msg.metrics), kind=msg.kind, base_version=msg.base_version,
                    tensors=[payload_from_proto(t, limits, budget=budget, validate=False)
                             for t in msg.tensors])
    if expect is not None:
        expect(update)
    for t in update.tensors:
        validate_payload(t)
    return update


def check_schema(what: str, version: int) -> None:
    if version != SCHEMA_VERSION:
        raise WireError(f"{what} schema_version {version}; this build speaks "
                        f"version {SCHEMA_VERSION}")


def check_fields(msg: pb.Update, limits: WireLimits) -> None:
    """Everything but the tensors: version, kind, strings, counts, finite numbers."""
    check_schema("Update", msg.schema_version)
    check_text("Update node_id", msg.node_id, limits)
    if msg.kind not in KINDS:
        raise WireError(f"Update kind {brief_text(msg.kind)} is not one of {KINDS}")
    if not math.isfinite(msg.confidence):
        raise WireError("Update confidence is not finite")
    check_count("Update tensors", len(msg.tensors), limits.max_tensors, "max_tensors")
    check_count("Update metrics", len(msg.metrics), limits.max_metrics, "max_metrics")
    for key, value in msg.metrics.items():
        check_text("Update metric name", key, limits)
        if not math.isfinite(value):
            raise WireError(f"Update metric {brief_text(key)} is not finite")
