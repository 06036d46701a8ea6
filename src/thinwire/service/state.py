"""Durable coordinator state: an atomic safetensors snapshot plus an fsynced update journal.

The snapshot (`state.safetensors`) holds every tensor (global model, per-worker reused
contributions and decoder references) and, in its header metadata, a JSON document: the
state tree with each tensor as null, plus a separate list of [path, tensor key] references
(typed by position, not by a marker a stored value could imitate).
One file, written to a temp name, fsynced, renamed, directory fsynced: a crash leaves either
the old or the new snapshot, never a mix. `state.json` is a readable copy of the metadata.

Between snapshots, every update the coordinator acknowledges is first appended to
`journal.bin` and fsynced, so `kill -9` loses nothing that got a 2xx: a restart loads the
snapshot and replays the journal. Records are framed as
wire/framing.py frames (magic, version, kind, length, crc32) whose body is u32 header_len |
header JSON | message; a torn tail (never acknowledged) is cut off before the next append.
Nothing here is pickled.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..errors import ThinwireError
from ..wire.framing import Kind, append_frame, frame, scan_journal

LEGACY_MAGIC = b"TWJ1"  # the journal format before wire/framing.py served it
LEGACY_FRAME = struct.Struct("<IQ")
RECORD_HEAD = struct.Struct("<I")  # length of a record's JSON header inside its frame
SNAPSHOT, META, JOURNAL = "state.safetensors", "state.json", "journal.bin"
ENCODING = 3  # tree + separate tensor references (2: in-tree {"__tensor__": key} markers)


class StateError(ThinwireError):
    """A state directory that cannot be read or written."""


# ---- tensors inside nested dicts <-> (JSON tree, tensor references, flat tensor dict) ------
def split_tree(obj: Any, tensors: dict[str, torch.Tensor], refs: list[list],
               path: list | None = None) -> Any:
    """A JSON copy of `obj` in which each tensor is None, listed in `refs` as [path, key]
    (path: dict keys and list indices from the root), its clone in `tensors[key]`. The
    references live beside the tree, not in it, so no value inside the tree (a worker's
    capabilities, say) can pose as one."""
    path = [] if path is None else path
    if isinstance(obj, torch.Tensor):
        key = str(len(tensors))
        tensors[key] = obj.detach().cpu().contiguous().clone()
        refs.append([list(path), key])
        return None
    if isinstance(obj, dict):
        items = [(str(k), v) for k, v in obj.items()]
    elif isinstance(obj, (list, tuple)):
        items = list(enumerate(obj))
    else:
        return obj
    out: Any = {} if isinstance(obj, dict) else [None] * len(items)
    for k, v in items:
        path.append(k)
        out[k] = split_tree(v, tensors, refs, path)
        path.pop()
    return out


def join_tree(tree: Any, refs: list, tensors: dict[str, torch.Tensor]) -> Any:
    """Put each referenced tensor back where `split_tree` found it."""
    for ref in refs:
        path, key = ref
        if not path or key not in tensors:
            raise ValueError(f"bad tensor reference {ref!r}")
        parent = tree
        for step in path[:-1]:
            parent = parent[step]
        last = path[-1]
        if not isinstance(parent, (dict, list)) or parent[last] is not None:
            raise ValueError(f"tensor reference {ref!r} does not point at a placeholder")
        parent[last] = tensors[key]
    return tree


def join_legacy(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Snapshots written before the references moved out of the tree ({"__tensor__": key}
    markers): a marker naming no stored tensor is left as plain data."""
    if isinstance(obj, dict):
        ref = obj.get("__tensor__")
        if len(obj) == 1 and isinstance(ref, str) and ref in tensors:
            return tensors[ref]
        return {k: join_legacy(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [join_legacy(v, tensors) for v in obj]
    return obj


# ---- atomic files -----------------------------------------------------------------------
def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


class StateStore:
    """Snapshot and journal of one coordinator state directory."""

    def __init__(self, state_dir: Path | str) -> None:
        self.dir = Path(state_dir)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(f"cannot create state dir {self.dir}: {exc.strerror}") from None
        self.journal_path = self.dir / JOURNAL
        self._open_journal()

    # ---- snapshot ---------------------------------------------------------------------
    def save(self, tree: dict[str, Any]) -> int:
        """Commit `tree` (JSON values and tensors) atomically; returns bytes written."""
        tensors: dict[str, torch.Tensor] = {}
        refs: list[list] = []
        meta = {"encoding": ENCODING, "tree": split_tree(tree, tensors, refs),
                "tensors": refs}
        data = st_save(tensors, metadata={"thinwire": json.dumps(meta)})
        atomic_write(self.dir / SNAPSHOT, data)
        atomic_write(self.dir / META, json.dumps(meta, indent=1, sort_keys=True).encode())
        return len(data)

    def load(self) -> dict[str, Any] | None:
        path = self.dir / SNAPSHOT
        if not path.exists():
            return None
        data = path.read_bytes()
        try:
            tensors = st_load(data)
            header_len = struct.unpack("<Q", data[:8])[0]
            header = json.loads(data[8: 8 + header_len])
            meta = json.loads(header["__metadata__"]["thinwire"])
            if isinstance(meta, dict) and meta.get("encoding") == ENCODING:
                return join_tree(meta["tree"], meta["tensors"], tensors)
            return join_legacy(meta, tensors)
        except (SafetensorError, KeyError, IndexError, TypeError, ValueError, struct.error,
                RecursionError) as exc:
            raise StateError(f"{path} is corrupt ({type(exc).__name__}: {exc}); restore a "
                             "backup or start with a fresh --state-dir") from None

    # ---- journal ----------------------------------------------------------------------
    def _open_journal(self) -> None:
        """Open for appending after the last intact record. A torn tail (a crash during an
        append that was never acknowledged) is cut off first, so records appended from now
        on stay readable; a journal of the previous format is rewritten in frames."""
        data = self.journal_path.read_bytes() if self.journal_path.exists() else b""
        if data.startswith(LEGACY_MAGIC):
            atomic_write(self.journal_path, b"".join(
                frame(RECORD_HEAD.pack(len(h)) + h + body, Kind.RAW)
                for h, body in legacy_records(data)))
        elif data:
            scan = scan_journal(data)
            if scan.torn_tail:
                with open(self.journal_path, "r+b") as f:
                    f.truncate(scan.end)
                    os.fsync(f.fileno())
        self._journal = open(self.journal_path, "ab", buffering=0)

    def append(self, header: dict[str, Any], body: bytes = b"") -> None:
        """Durably record one accepted message before it is acknowledged: one frame
        (wire/framing.py: magic, version, kind, length, crc32) holding the JSON header and
        the body."""
        head = json.dumps(header).encode()
        append_frame(self._journal, RECORD_HEAD.pack(len(head)) + head + body, Kind.RAW)

    def records(self) -> Iterator[tuple[dict[str, Any], bytes]]:
        """Every intact record in order; stops at a torn or corrupt tail."""
        data = self.journal_path.read_bytes() if self.journal_path.exists() else b""
        for f in scan_journal(data).frames:
            if len(f.body) < RECORD_HEAD.size:
                yield {"type": "unreadable"}, b""
                continue
            (head_len,) = RECORD_HEAD.unpack_from(f.body)
            head = f.body[RECORD_HEAD.size: RECORD_HEAD.size + head_len]
            try:
                header = json.loads(head)
            except (ValueError, RecursionError):
                header = {"type": "unreadable"}  # replay logs and skips it
            if not isinstance(header, dict):
                header = {"type": "unreadable"}
            yield header, f.body[RECORD_HEAD.size + head_len:]

    def reset_journal(self) -> None:
        """Start an empty journal (after a snapshot that covers every record)."""
        self._journal.close()
        atomic_write(self.journal_path, b"")
        self._journal = open(self.journal_path, "ab", buffering=0)

    def close(self) -> None:
        self._journal.close()


def legacy_records(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(header, body) of a journal written before the shared framing, up to a torn tail."""
    pos, fixed = 0, len(LEGACY_MAGIC) + LEGACY_FRAME.size
    while pos + fixed <= len(data) and data[pos: pos + 4] == LEGACY_MAGIC:
        head_len, body_len = LEGACY_FRAME.unpack_from(data, pos + 4)
        start = pos + fixed
        end = start + head_len + body_len
        if end + 4 > len(data):
            return
        head, body = data[start: start + head_len], data[start + head_len: end]
        if struct.unpack_from("<I", data, end)[0] != zlib.crc32(body, zlib.crc32(head)):
            return
        pos = end + 4
        yield head, body
