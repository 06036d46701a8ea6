"""Flower records <-> thinwire tensors, the thinwire blob inside an ArrayRecord, and
Flower's own count of a message's bytes.

A compressed ArrayRecord keeps its record key and holds one uint8 Array, `BLOB_KEY`: the
serialized thinwire `Update` (protobuf, thinwire/wire), next to any non-float arrays, which
travel as they are. Flower ships an ArrayRecord's arrays as chunked objects, so the blob is
counted and moved like any model array.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from ..wire.state import decode_state, encode_state

BLOB_KEY = "thinwire.update"  # the Update blob's key inside a compressed ArrayRecord
DOWN_KEY = "thinwire.down"    # ConfigRecord beside a compressed downlink: record key -> version
STATE_KEY = "thinwire"        # the node's ConfigRecord in Context.state (one state blob)

Tensors = dict[str, torch.Tensor]


def is_coded(array: Array) -> bool:
    """Float arrays go through the codec; integer ones (BatchNorm counters) travel raw."""
    return np.issubdtype(np.dtype(array.dtype), np.floating)


def split_record(record: ArrayRecord) -> tuple[Tensors, dict[str, Array]]:
    """(float tensors as fp32 torch, raw non-float arrays) of an ArrayRecord, in key order."""
    coded: Tensors = {}
    raw: dict[str, Array] = {}
    for key, array in record.items():
        if is_coded(array):
            coded[key] = torch.from_numpy(np.array(array.numpy(), dtype=np.float32, copy=True))
        else:
            raw[key] = array
    return coded, raw


def make_record(tensors: Tensors, raw: dict[str, Array] | None = None,
                order: list[str] | None = None,
                dtypes: dict[str, str] | None = None) -> ArrayRecord:
    """An ArrayRecord of fp32 tensors (cast to `dtypes[key]` when given) plus raw arrays, in
    `order` when given."""
    raw = raw or {}
    arrays: dict[str, Array] = {}
    for key in order or [*tensors, *raw]:
        if key in raw:
            arrays[key] = raw[key]
        else:
            value = tensors[key].detach().cpu().numpy()
            if dtypes and key in dtypes:
                value = value.astype(np.dtype(dtypes[key]), copy=False)
            arrays[key] = Array(np.ascontiguousarray(value))
    return ArrayRecord(OrderedDict(arrays))


def blob_record(blob: bytes, raw: dict[str, Array] | None = None) -> ArrayRecord:
    """A compressed ArrayRecord: the Update blob as uint8 plus the raw arrays."""
    arrays = {BLOB_KEY: Array(np.frombuffer(blob, dtype=np.uint8).copy())}
    arrays.update(raw or {})
    return ArrayRecord(OrderedDict(arrays))


def read_blob_record(record: ArrayRecord) -> tuple[bytes, dict[str, Array]] | None:
    """(Update blob, raw arrays) of a compressed ArrayRecord, or None for a plain one."""
    if BLOB_KEY not in record:
        return None
    raw = {k: a for k, a in record.items() if k != BLOB_KEY}
    return record[BLOB_KEY].numpy().tobytes(), raw


def replace_records(content: RecordDict, new: dict[str, object],
                    drop: tuple[str, ...] = ()) -> RecordDict:
    """A new RecordDict: `content`'s records in order, those in `new` replaced, `drop`
    left out (messages of one round share their RecordDict: never edit it in place)."""
    out = RecordDict()
    for key, record in content.items():
        if key not in drop:
            out[key] = new.get(key, record)
    for key, record in new.items():
        if key not in out:
            out[key] = record
    return out


def message_nbytes(message: Message) -> int:
    """Flower's own size of a message: the bytes of every object Flower's runtime stores and
    ships for it (`deflate()` of the message, its RecordDict, records, arrays and array
    chunks; identical chunks once, as Flower's object store keeps them)."""
    return sum(len(obj.deflate()) for obj in get_all_nested_objects(message).values())


def load_state(context: Context) -> dict:
    """This node's thinwire state (error-feedback residuals, downlink replica) from
    Context.state, where Flower keeps it between rounds: a ClientApp may be built anew for
    every message."""
    record = context.state.get(STATE_KEY)
    if record is None:
        return {}
    return decode_state(record["blob"])


def save_state(context: Context, state: dict) -> None:
    """Store the state tree as one safetensors + JSON blob (wire/state.py, no pickle)."""
    context.state[STATE_KEY] = ConfigRecord({"blob": encode_state(state)[0]})
