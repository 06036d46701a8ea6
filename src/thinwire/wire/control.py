"""Control-plane messages: Register, Skip, Offer, ModelAnnounce, ResourceReport.

The bodies thinwire workers send the HTTP coordinators (register, skip, offer; JSON stays
accepted for curl, see server/control.py), the model's announce, and the swarm's hello and
skip notices. They are parsed as strictly as an `Update`: exact bytes (no trailing data, unknown
fields or merged copies), the schema version, every string, map and list bounded by
`WireLimits` before it is walked, every float finite and in range; a WireError says which.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from typing import ClassVar, Protocol, TypeVar

from ..codecs.registry import build
from ..errors import ConfigError, WireError
from . import thinwire_pb2 as pb
from .limits import WireLimits, brief_text, check_count, check_text
from .messages import SCHEMA_VERSION, check_schema
from .tensor import check_size, parse_strict


# ---- field checks ------------------------------------------------------------------------------
def check_id(what: str, value: str, limits: WireLimits) -> None:
    """A required, bounded identifier."""
    check_text(what, value, limits)
    if not value:
        raise WireError(f"{what} is empty")


def check_float(what: str, value: float, low: float = -math.inf,
                high: float = math.inf) -> None:
    if not math.isfinite(value) or not low <= value <= high:
        raise WireError(f"{what} {value!r} is not a finite number in [{low}, {high}]")


def check_pairs(what: str, pairs: dict[str, str], limits: WireLimits) -> None:
    check_count(f"{what} entries", len(pairs), limits.max_metrics, "max_metrics")
    for key, value in pairs.items():
        check_text(f"{what} key", key, limits)
        check_text(f"{what} {brief_text(key)}", value, limits)


# ---- messages ----------------------------------------------------------------------------------
@dataclass
class Register:
    """A worker joining; `base`, `centroid` and `count` are the federated experts' (the
    base model's fingerprint, the worker's mean prompt embedding and its prompt count)."""

    PB: ClassVar = pb.Register
    worker_id: str
    session: str = ""
    specialty: str = ""
    capabilities: dict[str, str] = field(default_factory=dict)
    base: str = ""
    centroid: list[float] = field(default_factory=list)
    count: int = 0

    def to_proto(self) -> pb.Register:
        msg = pb.Register(schema_version=SCHEMA_VERSION, worker_id=self.worker_id,
                          session=self.session, specialty=self.specialty, base=self.base,
                          centroid=[float(v) for v in self.centroid], count=self.count)
        msg.capabilities.update(self.capabilities)
        return msg

    @classmethod
    def from_proto(cls, msg: pb.Register, limits: WireLimits) -> Register:
        check_id("Register worker_id", msg.worker_id, limits)
        check_text("Register session", msg.session, limits)
        check_text("Register specialty", msg.specialty, limits)
        check_pairs("Register capabilities", msg.capabilities, limits)
        check_text("Register base", msg.base, limits)
        check_count("Register centroid", len(msg.centroid), limits.max_centroid,
                    "max_centroid")
        for v in msg.centroid:
            check_float("Register centroid value", v)
        return cls(worker_id=msg.worker_id, session=msg.session, specialty=msg.specialty,
                   capabilities=dict(msg.capabilities), base=msg.base,
                   centroid=list(msg.centroid), count=msg.count)


@dataclass
class Skip:
    PB: ClassVar = pb.Skip
    worker_id: str
    round: int = 0
    reason: str = ""

    def to_proto(self) -> pb.Skip:
        return pb.Skip(schema_version=SCHEMA_VERSION, worker_id=self.worker_id,
                       round=self.round, reason=self.reason)

    @classmethod
    def from_proto(cls, msg: pb.Skip, limits: WireLimits) -> Skip:
        check_id("Skip worker_id", msg.worker_id, limits)
        check_text("Skip reason", msg.reason, limits)
        return cls(worker_id=msg.worker_id, round=msg.round, reason=msg.reason)


@dataclass
class Offer:
    PB: ClassVar = pb.Offer
    worker_id: str
    round: int = 0
    score: float = 0.0
    bits: int = 0

    def to_proto(self) -> pb.Offer:
        return pb.Offer(schema_version=SCHEMA_VERSION, worker_id=self.worker_id,
                        round=self.round, score=self.score, bits=self.bits)

    @classmethod
    def from_proto(cls, msg: pb.Offer, limits: WireLimits) -> Offer:
        check_id("Offer worker_id", msg.worker_id, limits)
        check_float("Offer score", msg.score)
        return cls(worker_id=msg.worker_id, round=msg.round, score=msg.score, bits=msg.bits)


@dataclass
class ModelAnnounce:
    PB: ClassVar = pb.ModelAnnounce
    version: int
    round: int = 0
    done: bool = False
    diffs: list[float] = field(default_factory=list)
    model_codec: str = ""

    def to_proto(self) -> pb.ModelAnnounce:
        return pb.ModelAnnounce(schema_version=SCHEMA_VERSION, version=self.version,
                                round=self.round, done=self.done,
                                diffs=[float(d) for d in self.diffs],
                                model_codec=self.model_codec)

    @classmethod
    def from_proto(cls, msg: pb.ModelAnnounce, limits: WireLimits) -> ModelAnnounce:
        check_count("ModelAnnounce diffs", len(msg.diffs), limits.max_history, "max_history")
        for d in msg.diffs:
            check_float("ModelAnnounce diff", d, low=0.0)
        check_text("ModelAnnounce model_codec", msg.model_codec, limits)
        if msg.model_codec:
            try:
                build(msg.model_codec)
            except ConfigError as exc:
                raise WireError(f"ModelAnnounce model_codec: {str(exc)[:300]}") from None
        return cls(version=msg.version, round=msg.round, done=msg.done,
                   diffs=list(msg.diffs), model_codec=msg.model_codec)


@dataclass
class LinkBytes:
    link: str
    sent: int = 0
    received: int = 0


@dataclass
class ResourceReport:
    PB: ClassVar = pb.ResourceReport
    node_id: str
    time: float = 0.0
    cpu_percent: float = 0.0
    rss_bytes: int = 0
    gpu_util: float | None = None
    links: list[LinkBytes] = field(default_factory=list)

    def to_proto(self) -> pb.ResourceReport:
        msg = pb.ResourceReport(schema_version=SCHEMA_VERSION, node_id=self.node_id,
                                time=self.time, cpu_percent=self.cpu_percent,
                                rss_bytes=self.rss_bytes)
        if self.gpu_util is not None:
            msg.gpu_util = self.gpu_util
        msg.links.extend(pb.LinkBytes(link=k.link, sent=k.sent, received=k.received)
                         for k in self.links)
        return msg

    @classmethod
    def from_proto(cls, msg: pb.ResourceReport, limits: WireLimits) -> ResourceReport:
        check_id("ResourceReport node_id", msg.node_id, limits)
        check_float("ResourceReport time", msg.time, low=0.0)
        check_float("ResourceReport cpu_percent", msg.cpu_percent, low=0.0)
        gpu = msg.gpu_util if msg.HasField("gpu_util") else None
        if gpu is not None:
            check_float("ResourceReport gpu_util", gpu, 0.0, 100.0)
        check_count("ResourceReport links", len(msg.links), limits.max_metrics, "max_metrics")
        for link in msg.links:
            check_text("ResourceReport link name", link.link, limits)
        return cls(node_id=msg.node_id, time=msg.time, cpu_percent=msg.cpu_percent,
                   rss_bytes=msg.rss_bytes, gpu_util=gpu,
                   links=[LinkBytes(k.link, k.sent, k.received) for k in msg.links])


# ---- serialize / parse -------------------------------------------------------------------------
class Control(Protocol):
    PB: ClassVar[type]

    def to_proto(self): ...

    @classmethod
    def from_proto(cls, msg, limits: WireLimits): ...


C = TypeVar("C", bound=Control)


def serialize(message: Control) -> bytes:
    """Deterministic bytes of any control message."""
    return message.to_proto().SerializeToString(deterministic=True)


def parse(cls: type[C], data: bytes, limits: WireLimits = WireLimits()) -> C:
    """Parse untrusted bytes as `cls` (Register, Skip, ...); raises WireError."""
    what = cls.__name__
    check_size(data, limits.max_control_bytes, what, "max_control_bytes")
    msg = cls.PB()
    parse_strict(msg, data, what)
    check_schema(what, msg.schema_version)
    return cls.from_proto(msg, limits)


# Named forms, mirroring serialize_update / parse_update.
serialize_register = serialize_skip = serialize_offer = serialize
serialize_model_announce = serialize_resource_report = serialize
parse_register = partial(parse, Register)
parse_skip = partial(parse, Skip)
parse_offer = partial(parse, Offer)
parse_model_announce = partial(parse, ModelAnnounce)
parse_resource_report = partial(parse, ResourceReport)
