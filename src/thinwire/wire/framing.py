"""Length-prefixed frames for byte streams (TCP) and append-only journals (files).

A frame is a 12-byte header, then the body:

    magic "TW" | version u8 | kind u8 | body length u32 | crc32(body) u32   (little-endian)

`kind` says which message the body holds (`Kind`), so one stream or journal can interleave
Updates and control messages. The declared length is bounded (`max_body`) before a single
body byte is buffered, and the checksum catches a torn or corrupted journal write.

Three readers, for three situations:
  read_frames   a complete buffer that must be intact (raises WireError on any defect);
  FrameReader   a stream that arrives in pieces (`feed` returns the frames completed so far);
  scan_journal  a file that may end in a torn write: returns the intact prefix and says where
                it ends and why, so the writer can truncate there and append again.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import IntEnum
from typing import BinaryIO

from ..errors import WireError

MAGIC = b"TW"
VERSION = 2
HEADER = struct.Struct("<2sBBII")  # magic, version, kind, body length, crc32(body)
MAX_BODY = (1 << 32) - 1  # the largest body a u32 length can declare


class Kind(IntEnum):
    """What a frame's body holds."""

    RAW = 0
    UPDATE = 1
    TENSOR_PAYLOAD = 2
    REGISTER = 3
    SKIP = 4
    OFFER = 5
    MODEL_ANNOUNCE = 6
    RESOURCE_REPORT = 7


@dataclass(frozen=True)
class Frame:
    kind: int
    body: bytes
    offset: int = 0  # where the frame starts in its buffer or file


def frame(body: bytes, kind: int = Kind.RAW) -> bytes:
    """The bytes of one frame."""
    if not 0 <= int(kind) <= 255:
        raise WireError(f"frame kind {kind} does not fit a byte")
    if len(body) > MAX_BODY:
        raise WireError(f"frame body of {len(body)} bytes does not fit a u32 length")
    return HEADER.pack(MAGIC, VERSION, int(kind), len(body), zlib.crc32(body)) + body


def append_frame(file: BinaryIO, body: bytes, kind: int = Kind.RAW, sync: bool = True) -> None:
    """Append one frame to a journal file, fsynced unless `sync=False`."""
    file.write(frame(body, kind))
    file.flush()
    if sync:
        os.fsync(file.fileno())


def parse_header(view: memoryview, pos: int, max_body: int) -> tuple[int, int, int]:
    """(kind, body length, crc) of the complete header at `pos`; raises WireError if it is
    not a header this build reads or declares more than `max_body` bytes."""
    magic, version, kind, size, crc = HEADER.unpack_from(view, pos)
    if magic != MAGIC:
        raise WireError(f"bad frame magic {bytes(magic)!r} at byte {pos} (expected {MAGIC!r})")
    if version != VERSION:
        raise WireError(f"frame version {version} at byte {pos}; this build reads {VERSION}")
    if size > max_body:
        raise WireError(f"frame of {size} bytes at byte {pos} exceeds the limit {max_body}")
    return kind, size, crc


def _body(view: memoryview, start: int, size: int, crc: int, pos: int) -> bytes:
    body = bytes(view[start:start + size])
    if zlib.crc32(body) != crc:
        raise WireError(f"frame at byte {pos} fails its checksum (corrupt or torn write)")
    return body


def frame_at(view: memoryview, pos: int, max_body: int = MAX_BODY) -> Frame:
    """The whole frame at `pos`; raises WireError if it is truncated or not intact."""
    if len(view) - pos < HEADER.size:
        raise WireError(f"truncated frame header at byte {pos}")
    kind, size, crc = parse_header(view, pos, max_body)
    start = pos + HEADER.size
    if start + size > len(view):
        raise WireError(f"truncated frame at byte {pos}: {len(view) - start} of {size} bytes")
    return Frame(kind, _body(view, start, size, crc, pos), pos)


def _end(f: Frame) -> int:
    return f.offset + HEADER.size + len(f.body)


def read_frames(data: bytes, max_body: int = MAX_BODY) -> Iterator[Frame]:
    """Every frame of a buffer that must be intact; raises WireError on any defect."""
    view, pos = memoryview(data), 0
    while pos < len(view):
        f = frame_at(view, pos, max_body)
        yield f
        pos = _end(f)


@dataclass
class FrameReader:
    """Frames from a stream that arrives in pieces: `feed` each piece as it comes."""

    max_body: int = MAX_BODY
    _buf: bytearray = field(default_factory=bytearray)
    _offset: int = 0  # stream position of _buf[0]

    def feed(self, chunk: bytes) -> list[Frame]:
        """The frames `chunk` completes; a partial frame waits for more bytes. A bad header
        raises WireError as soon as it is complete, before its body is buffered."""
        self._buf += chunk
        out, view, pos = [], memoryview(self._buf), 0
        try:
            while len(view) - pos >= HEADER.size:
                kind, size, crc = parse_header(view, pos, self.max_body)
                start = pos + HEADER.size
                if start + size > len(view):
                    break
                out.append(Frame(kind, _body(view, start, size, crc, self._offset + pos),
                                 self._offset + pos))
                pos = start + size
        finally:
            view.release()
        del self._buf[:pos]
        self._offset += pos
        return out

    @property
    def pending(self) -> int:
        """Bytes of a frame not yet complete."""
        return len(self._buf)

    def close(self) -> None:
        """End of stream: raises WireError if it ended inside a frame."""
        if self._buf:
            raise WireError(f"stream ended inside a frame at byte {self._offset} "
                            f"({len(self._buf)} bytes of it)")


@dataclass(frozen=True)
class JournalScan:
    frames: list[Frame]
    end: int                  # bytes of intact frames: truncate the file here to append
    problem: str | None = None  # why reading stopped before the end of the data, if it did

    @property
    def torn_tail(self) -> bool:
        return self.problem is not None


def scan_journal(data: bytes, max_body: int = MAX_BODY) -> JournalScan:
    """The intact frames of a journal, stopping cleanly at the first truncated, oversized,
    unreadable or corrupt frame (after a crash, only the last append can be torn)."""
    view, pos, frames = memoryview(data), 0, []
    while pos < len(view):
        try:
            frames.append(frame_at(view, pos, max_body))
        except WireError as exc:
            return JournalScan(frames, pos, str(exc))
        pos = _end(frames[-1])
    return JournalScan(frames, pos)
