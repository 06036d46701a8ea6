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

from ..errors import ThinwireError, WireError
from ..wire.framing import Kind, append_frame, frame, scan_journal
from ..wire.state import ENCODING, encode_state, join_tree, read_blob

LEGACY_MAGIC = b"TWJ1"  # the journal format before wire/framing.py served it
LEGACY_FRAME = struct.Struct("<IQ")
RECORD_HEAD = struct.Struct("<I")  # length of a record's JSON header inside its frame
SNAPSHOT, META, JOURNAL = "state.safetensors", "state.json", "journal.bin"


class StateError(ThinwireError):
    """A state directory that cannot be read or written."""


# ---- snapshots written before the references moved out of the tree ----------------------
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
        data, meta = encode_state(tree)  # wire/state.py: the blob every runtime writes
        atomic_write(self.dir / SNAPSHOT, data)
        atomic_write(self.dir / META, json.dumps(meta, indent=1, sort_keys=True).encode())
        return len(data)

    def load(self) -> dict[str, Any] | None:
        path = self.dir / SNAPSHOT
        if not path.exists():
            return None
        try:
            meta, tensors = read_blob(path.read_bytes())
            if isinstance(meta, dict) and meta.get("encoding") == ENCODING:
                return join_tree(meta["tree"], meta["tensors"], tensors)
            return join_legacy(meta, tensors)
        except (WireError, KeyError, IndexError, TypeError, ValueError, RecursionError) as exc:
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
