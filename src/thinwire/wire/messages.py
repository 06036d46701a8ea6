"""`Update`: one node's contribution for one step or round, as it crosses the wire.

The seed design's `GradUpdate {node_id, sparse_grad_idx (zlib), quant_grad (int8),
confidence_score}` maps onto it as: node_id -> node_id; each gradient tensor -> one
`TensorPayload` with codec "topk" whose first buffer holds the (zlib-compressed) indices and
whose part is an "int8" payload holding the quantized values; confidence_score -> confidence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..codecs.payload import Payload
from ..errors import WireError
from . import thinwire_pb2 as pb
from .limits import WireLimits
from .tensor import parse_strict, payload_from_proto, payload_to_proto

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


def parse_update(data: bytes, limits: WireLimits = WireLimits()) -> Update:
    """Parse and validate untrusted bytes; raises WireError saying what was wrong."""
    if len(data) > limits.max_message_bytes:
        raise WireError(f"Update of {len(data)} bytes exceeds the limit of "
                        f"{limits.max_message_bytes}")
    msg = pb.Update()
    parse_strict(msg, data, "Update")
    if msg.schema_version != SCHEMA_VERSION:
        raise WireError(f"Update schema_version {msg.schema_version}; this build speaks "
                        f"version {SCHEMA_VERSION}")
    if msg.kind not in KINDS:
        raise WireError(f"Update kind {msg.kind!r} is not one of {KINDS}")
    if not math.isfinite(msg.confidence):
        raise WireError("Update confidence is not finite")
    if len(msg.tensors) > limits.max_tensors:
        raise WireError(f"Update carries {len(msg.tensors)} tensors, over {limits.max_tensors}")
    total = sum(math.prod(t.shape) for t in msg.tensors)
    if total > limits.max_total_elements:
        raise WireError(f"Update describes {total} elements, over {limits.max_total_elements}")
    bad = [k for k, v in msg.metrics.items() if not math.isfinite(v)]
    if bad:
        raise WireError(f"Update metrics {bad} are not finite")
    return Update(node_id=msg.node_id, round=msg.round, seq=msg.seq,
                  confidence=msg.confidence, num_samples=msg.num_samples,
                  metrics=dict(msg.metrics), kind=msg.kind, base_version=msg.base_version,
                  tensors=[payload_from_proto(t, limits) for t in msg.tensors])
