"""Length-prefixed frames for byte streams (TCP, files): magic, version, length, body."""

from __future__ import annotations

import struct
from collections.abc import Iterator

from ..errors import WireError

MAGIC = b"TW"
VERSION = 1
HEADER = struct.Struct("<2sBI")  # magic, frame version, body length


def frame(body: bytes) -> bytes:
    return HEADER.pack(MAGIC, VERSION, len(body)) + body


def read_frames(data: bytes, max_body: int = 1 << 31) -> Iterator[bytes]:
    """Split a buffer of back-to-back frames; raises WireError on any malformed frame."""
    view = memoryview(data)
    pos = 0
    while pos < len(view):
        if len(view) - pos < HEADER.size:
            raise WireError(f"truncated frame header at byte {pos}")
        magic, version, size = HEADER.unpack_from(view, pos)
        if magic != MAGIC:
            raise WireError(f"bad frame magic {bytes(magic)!r} at byte {pos} (expected {MAGIC!r})")
        if version != VERSION:
            raise WireError(f"frame version {version} at byte {pos}; this build reads {VERSION}")
        if size > max_body:
            raise WireError(f"frame of {size} bytes at byte {pos} exceeds the limit {max_body}")
        start = pos + HEADER.size
        if start + size > len(view):
            raise WireError(f"truncated frame at byte {pos}: {len(view) - start} of {size} bytes")
        yield bytes(view[start:start + size])
        pos = start + size
