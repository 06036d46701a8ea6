"""The shapes the coordinator accepts: request bodies (JSON, or the protobuf of
wire/control.py mapped onto the same models by server/control.py), and the journal records
they become. Everything is bounded (lengths, counts, depth = flat), so whatever the API accepts
can be journaled, snapshotted and replayed; replay validates records with the same models
and skips one that does not fit instead of refusing to start.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from ..server.control import capability_map
from .admission import MAX_SEQ, WORKER_ID

WorkerId = Annotated[str, StringConstraints(pattern=WORKER_ID.pattern, max_length=64)]
Round = Annotated[int, Field(ge=0, lt=MAX_SEQ)]
MAX_CAPABILITIES = 32
Capabilities = capability_map(MAX_CAPABILITIES)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_max_length=256)


class RegisterIn(Strict):
    """A registration: capabilities are a flat map of short keys to short scalars."""

    worker_id: WorkerId
    session: Annotated[str, Field(min_length=1, max_length=128)]
    specialty: Annotated[str, Field(max_length=200)] = ""
    capabilities: Capabilities = Field(default_factory=dict)


class SkipIn(Strict):
    worker_id: WorkerId
    round: Round
    reason: Annotated[str, Field(max_length=64)] = "lazy"


class OfferIn(Strict):
    worker_id: WorkerId
    round: Round
    score: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    bits: Annotated[int, Field(gt=0, lt=1 << 50)]


# ---- journal records ---------------------------------------------------------------------
class RegisterRecord(RegisterIn):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    type: Literal["register"]
    worker_id: WorkerId = Field(alias="worker")
    key_hash: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None
    fresh: bool | None = None  # None: records from before keys (same session = keep state)
    evict: list[WorkerId] = Field(default_factory=list, max_length=64)


class LeaveRecord(Strict):
    type: Literal["leave"]
    worker: WorkerId


class SkipRecord(Strict):
    type: Literal["skip"]
    worker: WorkerId
    round: Round
    reason: Annotated[str, Field(max_length=64)]


class SelectRecord(Strict):
    type: Literal["select"]
    round: Round
    selected: list[WorkerId]
    offers: dict[WorkerId, tuple[float, int]]


class JoinRecord(Strict):
    """A worker's first pull or offer in a round that it did not count toward yet."""

    type: Literal["join"]
    worker: WorkerId
    round: Round


class UpdateRecord(Strict):
    type: Literal["update"]
    worker: WorkerId


RECORDS: dict[str, type[BaseModel]] = {
    "register": RegisterRecord, "leave": LeaveRecord, "skip": SkipRecord,
    "select": SelectRecord, "update": UpdateRecord, "join": JoinRecord}


def check_record(rec: Any) -> str | None:
    """Why a journal record cannot be replayed, or None if it fits its schema."""
    kind = rec.get("type") if isinstance(rec, dict) else None
    model = RECORDS.get(kind) if isinstance(kind, str) else None
    if model is None:
        return f"unknown record type {str(kind)[:40]!r}"
    try:
        model.model_validate(rec)
    except ValidationError as exc:
        return f"{kind} record does not fit: {exc.errors()[0]['msg']}"
    except RecursionError:
        return f"{kind} record is nested too deep"
    return None
