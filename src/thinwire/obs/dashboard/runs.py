"""Which runs the dashboard shows, and reading their event files from a byte offset.

The dashboard is given folders: a run folder (it holds `events.jsonl`) or a parent of run
folders (`runs/`, `runs/demo/`). Folders are rescanned (at most once a second), so a run
that starts after the page opened appears by itself. Runs are looked up by name in this
index only: a request never turns into a path, so nothing outside the given folders is read.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..events import EVENTS_FILE

RESCAN_S = 1.0
CHUNK_BYTES = 1 << 20  # one answer's worth of events; the client asks again from `next`
DEPTH = 2  # runs/<name>/events.jsonl and runs/<group>/<name>/events.jsonl


@dataclass(frozen=True)
class Chunk:
    events: list[dict[str, Any]]
    start: int  # the offset these events start at (0 after a reset)
    next: int  # the offset to ask from next time
    reset: bool  # the file shrank (a fresh run under the same name): start over


class RunIndex:
    """Run name -> events file, over run folders and parents of run folders."""

    def __init__(self, folders: list[Path | str]) -> None:
        self.folders = [Path(f).expanduser().absolute() for f in folders]
        self._runs: dict[str, Path] = {}
        self._scanned = 0.0
        self._lock = threading.Lock()

    def runs(self) -> dict[str, Path]:
        with self._lock:
            if time.monotonic() - self._scanned > RESCAN_S:
                self._runs = self._scan()
                self._scanned = time.monotonic()
            return dict(self._runs)

    def find(self, name: str) -> Path | None:
        return self.runs().get(name)

    def _scan(self) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for folder in self.folders:
            for name, path in _runs_in(folder):
                unique, n = name, 2
                while unique in found and found[unique] != path:
                    unique, n = f"{name}#{n}", n + 1
                found[unique] = path
        return found

    def describe(self) -> list[dict[str, Any]]:
        """Name, folder, size and last write of every run, for `/api/runs`."""
        out = []
        for name, path in sorted(self.runs().items()):
            try:
                st = path.stat()
            except OSError:
                continue
            out.append({"name": name, "dir": str(path.parent), "bytes": st.st_size,
                        "modified": round(st.st_mtime, 3)})
        return out


def _runs_in(folder: Path) -> list[tuple[str, Path]]:
    """(name, events file) under one folder: itself if a run, else its runs down to DEPTH."""
    own = folder / EVENTS_FILE
    if own.is_file():
        return [(folder.name, own)]
    out = []
    for depth in range(1, DEPTH + 1):
        pattern = "/".join(["*"] * depth + [EVENTS_FILE])
        try:
            files = sorted(folder.glob(pattern))
        except OSError:
            continue
        out += [(p.parent.relative_to(folder).as_posix(), p) for p in files if p.is_file()]
    return out


def read_chunk(path: Path, since: int, limit: int = CHUNK_BYTES) -> Chunk:
    """Whole events from byte `since` on, about `limit` bytes of them; a torn last line waits
    for the next call. A file shorter than `since` was started anew: read it from 0."""
    try:
        size = path.stat().st_size
    except OSError:
        return Chunk([], since, since, False)
    reset = since > size
    start = 0 if reset else since
    events, offset = [], start
    try:
        with open(path, "rb") as f:
            f.seek(start)
            while offset - start < limit:
                line = f.readline()
                if not line.endswith(b"\n"):
                    break
                offset += len(line)
                event = _parse(line)
                if event is not None:
                    events.append(event)
    except OSError:
        pass
    return Chunk(events, start, offset, reset)


def _parse(line: bytes) -> dict[str, Any] | None:
    try:  # NaN and infinities become null: browsers' JSON.parse refuses them
        event = json.loads(line, parse_constant=lambda _: None)
    except (ValueError, UnicodeDecodeError):
        return None
    return event if isinstance(event, dict) else None
