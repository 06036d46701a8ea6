"""Index coding: sorted int64 indices into a tensor of n elements <-> one buffer.

Codings (the one used is written into the payload params as `index=<coding>`, so the receiver
never guesses):

  raw      int32 per index (int64 when n > 2**31)
  varint   gap coding + LEB128: values are idx[0], then idx[i] - idx[i-1] - 1 (>= 0 because the
           indices strictly increase), 7 bits per byte, high bit set on every byte of a value
           but its last
  bitmap   n bits (one per element), packed with `bits.pack`
  X+zlib   any of the three, compressed with Python's zlib at `level`

`auto` (encoder only) compares exactly this: the three plain sizes, computed analytically
(raw = count * 4|8, varint = sum of the per-gap byte counts, bitmap = ceil(n / 8)); it builds the
smallest (ties go to varint, then bitmap, then raw), zlib-compresses that one buffer and keeps the
compressed form only if it is strictly smaller. It never tries zlib on the other two codings.

Decoding trusts nothing: dtype and size, indices < n, strictly increasing, the expected count,
canonical and complete varints, zlib streams (output capped at the largest size possible for
n and count, inflated piece by piece, no trailing data) are all checked and raise CodecError.
Nothing is allocated from n alone: a bitmap is scanned in chunks, never expanded to n bytes.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Iterator

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..errors import CodecError
from .bits import pack, packed_len

BASES = ("raw", "varint", "bitmap")
CODINGS = BASES + tuple(f"{b}+zlib" for b in BASES)  # what may appear on the wire
CHOICES = CODINGS + ("auto",)                          # what a user may ask for
CHUNK_BYTES = 1 << 16  # bitmap/zlib bytes handled at a time: bounded temporaries
BIT_SHIFTS = torch.arange(8, dtype=torch.uint8)  # bit j of a byte is element 8*byte + j


def validate(spec: str) -> str:
    """Pydantic-style validator for the `index` parameter."""
    if spec not in CHOICES:
        raise ValueError(f"index coding must be one of {', '.join(CHOICES)}")
    return spec


class IndexParams(BaseModel):
    """The index-coding parameters every sparsifier with an index buffer takes."""

    model_config = ConfigDict(extra="forbid")
    index: str = Field("auto", description="auto|raw|varint|bitmap, optionally +zlib")
    zlib_level: int = Field(3, ge=0, le=9)

    @field_validator("index")
    @classmethod
    def _known_coding(cls, value: str) -> str:
        return validate(value)


def raw_dtype(n: int) -> torch.dtype:
    return torch.int64 if n > 2**31 else torch.int32


def max_varint_len(n: int) -> int:
    """Bytes of the longest varint a valid gap (< n) can need."""
    return max(1, math.ceil(max(n - 1, 1).bit_length() / 7))


# ---- varint -------------------------------------------------------------------------------
def gaps(idx: torch.Tensor) -> torch.Tensor:
    """idx[0], then idx[i] - idx[i-1] - 1: non-negative for strictly increasing indices."""
    out = idx.clone()
    if idx.numel() > 1:
        out[1:] = idx[1:] - idx[:-1] - 1
    return out


def varint_lengths(values: torch.Tensor) -> torch.Tensor:
    """LEB128 byte count of each non-negative value (loop over <= 9 byte positions)."""
    lengths = torch.ones_like(values)
    top = int(values.max()) if values.numel() else 0
    for j in range(1, 10):
        if top < (1 << (7 * j)):
            break
        lengths += values >= (1 << (7 * j))
    return lengths


def encode_varint(values: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Scatter the 7-bit groups of every value to its byte offsets (cumsum of the lengths)."""
    if lengths is None:
        lengths = varint_lengths(values)
    total = int(lengths.sum()) if values.numel() else 0
    out = torch.empty(total, dtype=torch.uint8, device=values.device)
    if total == 0:
        return out
    starts = lengths.cumsum(0) - lengths
    for j in range(int(lengths.max())):  # byte position within a value
        keep = (lengths > j).nonzero().squeeze(1) if j else None
        val = values if keep is None else values[keep]
        pos = starts if keep is None else starts[keep]
        more = (lengths if keep is None else lengths[keep]) > j + 1
        byte = ((val >> (7 * j)) & 0x7F) | (more.long() << 7)
        out[pos + j] = byte.to(torch.uint8)
    return out


def decode_varint(buf: torch.Tensor, count: int, n: int) -> torch.Tensor:
    """Values of `count` varints, each < n; segment ids come from the terminal bytes."""
    if buf.numel() == 0:
        if count:
            raise CodecError(f"varint index buffer is empty but {count} indices are expected")
        return torch.zeros(0, dtype=torch.int64, device=buf.device)
    terminal = buf < 0x80
    if not bool(terminal[-1]):
        raise CodecError("varint index buffer ends inside a value (truncated)")
    ends = terminal.nonzero().squeeze(1)
    if ends.numel() != count:
        raise CodecError(f"varint index buffer holds {ends.numel()} values, expected {count}")
    starts = torch.cat([ends.new_zeros(1), ends[:-1] + 1])
    lengths = ends - starts + 1
    if int(lengths.max()) > max_varint_len(n):
        raise CodecError(f"varint longer than {max_varint_len(n)} bytes for n={n}")
    if bool(((buf[ends] == 0) & (lengths > 1)).any()):
        raise CodecError("non-canonical varint (zero final byte)")
    seg = terminal.long().cumsum(0) - terminal.long()
    pos = torch.arange(buf.numel(), device=buf.device) - starts[seg]
    groups = (buf & 0x7F).long() << (7 * pos)
    values = torch.zeros(count, dtype=torch.int64, device=buf.device).index_add_(0, seg, groups)
    if bool((values >= n).any()):
        raise CodecError(f"varint gap out of range for n={n}")
    return values


# ---- encode -------------------------------------------------------------------------------
def encode(idx: torch.Tensor, n: int, coding: str = "auto",
           level: int = 3) -> tuple[str, torch.Tensor]:
    """Code sorted, unique int64 indices < n; returns (coding used, buffer)."""
    idx = idx.reshape(-1)
    if coding == "auto":
        return _auto(idx, n, level)
    base, _, z = coding.partition("+")
    buf = _plain(idx, n, base)
    return coding, (_compress(buf, level) if z else buf)


def _plain(idx: torch.Tensor, n: int, base: str,
           lengths: torch.Tensor | None = None) -> torch.Tensor:
    if base == "raw":
        return idx.to(raw_dtype(n))
    if base == "varint":
        return encode_varint(gaps(idx), lengths)
    mask = torch.zeros(n, dtype=torch.uint8, device=idx.device)
    mask[idx] = 1
    return pack(mask, 1)


def _auto(idx: torch.Tensor, n: int, level: int) -> tuple[str, torch.Tensor]:
    count = idx.numel()
    lengths = varint_lengths(gaps(idx))
    sizes = {"varint": int(lengths.sum()) if count else 0, "bitmap": packed_len(n, 1),
             "raw": count * torch.empty(0, dtype=raw_dtype(n)).element_size()}
    base = min(sizes, key=lambda b: sizes[b])  # dict order breaks ties
    buf = _plain(idx, n, base, lengths)
    packed = _compress(buf, level)
    if packed.numel() < _nbytes(buf):
        return f"{base}+zlib", packed
    return base, buf


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _compress(buf: torch.Tensor, level: int) -> torch.Tensor:
    data = buf.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()
    out = torch.frombuffer(bytearray(zlib.compress(data, level)), dtype=torch.uint8)
    return out.to(buf.device)


# ---- decode -------------------------------------------------------------------------------
def plain_size(base: str, n: int, count: int) -> int:
    """Most bytes a valid plain buffer can have (exact for raw and bitmap)."""
    if base == "raw":
        return count * torch.empty(0, dtype=raw_dtype(n)).element_size()
    if base == "varint":
        return count * max_varint_len(n)
    return packed_len(n, 1)


def decode(buf: torch.Tensor, coding: str, n: int, count: int) -> torch.Tensor:
    """Validated inverse of `encode`: sorted int64 indices, exactly `count` of them, all < n.

    `count` must already be checked against real bytes (the value part's length): memory
    and zlib output are bounded by it (raw, varint) or by n/8 (bitmap), and a bitmap is never
    expanded to n elements: it is scanned CHUNK_BYTES at a time, expanding only set bytes.
    """
    if coding not in CODINGS:
        raise CodecError(f"index coding {coding!r} is not one of {', '.join(CODINGS)}")
    if not 0 <= count <= n:
        raise CodecError(f"{count} indices cannot address a tensor of {n} elements")
    base, _, z = coding.partition("+")
    if buf.dim() != 1:
        raise CodecError("index buffer must be 1-D")
    if base == "bitmap":
        return _decode_bitmap(_bitmap_chunks(buf, n, bool(z)), n, count).to(buf.device)
    if z:
        dtype = raw_dtype(n) if base == "raw" else torch.uint8
        buf = _as_tensor(b"".join(inflate(buf, plain_size(base, n, count))), dtype, buf.device)
    if base == "raw":
        return _decode_raw(buf, n, count)
    if buf.dtype != torch.uint8 or not count <= buf.numel() <= plain_size(base, n, count):
        raise CodecError(f"varint index buffer: {buf.dtype} of {buf.numel()} bytes is "
                         f"impossible for {count} indices < {n}")
    values = decode_varint(buf, count, n)
    idx = values.cumsum(0) + torch.arange(count, device=buf.device)
    return _check_range(idx, n)


def inflate(buf: torch.Tensor, cap: int) -> Iterator[bytes]:
    """zlib-decompress a uint8 buffer in pieces of at most CHUNK_BYTES, never past `cap`
    bytes in all; the stream must end exactly at the end of the buffer."""
    if buf.dtype != torch.uint8:
        raise CodecError(f"zlib index buffer must be uint8, got {buf.dtype}")
    stream, total = zlib.decompressobj(), 0
    pending = buf.cpu().numpy().tobytes()
    while not stream.eof:
        try:
            piece = stream.decompress(pending, CHUNK_BYTES)
        except zlib.error as exc:
            raise CodecError(f"corrupt zlib index buffer: {exc}") from None
        pending = stream.unconsumed_tail
        total += len(piece)
        if total > cap:
            raise CodecError(f"zlib index buffer inflates past {cap} bytes, the most possible")
        if not piece and not pending:
            break  # input used up before the end of the stream
        if piece:
            yield piece
    if not stream.eof or stream.unused_data:
        raise CodecError("zlib index buffer is truncated or has trailing bytes")


def _as_tensor(data: bytes, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    item = torch.empty(0, dtype=dtype).element_size()
    if len(data) % item:
        raise CodecError("zlib index buffer inflates to a partial index")
    if not data:
        return torch.zeros(0, dtype=dtype, device=device)
    return torch.frombuffer(bytearray(data), dtype=dtype).to(device)


def _decode_raw(buf: torch.Tensor, n: int, count: int) -> torch.Tensor:
    want = raw_dtype(n)
    if buf.dtype != want or buf.numel() != count:
        raise CodecError(f"raw index buffer must be {count} x {want}, got "
                         f"{buf.numel()} x {buf.dtype}")
    idx = buf.long()
    if count > 1 and not bool((idx[1:] > idx[:-1]).all()):
        raise CodecError("raw indices are not strictly increasing")
    if count and int(idx[0]) < 0:
        raise CodecError("negative index")
    return _check_range(idx, n)


def _bitmap_chunks(buf: torch.Tensor, n: int, zipped: bool) -> Iterator[torch.Tensor]:
    """The bitmap's bytes, CHUNK_BYTES at a time (inflated on the fly when zipped)."""
    if zipped:
        for piece in inflate(buf, packed_len(n, 1)):
            yield torch.frombuffer(bytearray(piece), dtype=torch.uint8)
        return
    if buf.dtype != torch.uint8 or buf.numel() != packed_len(n, 1):
        raise CodecError(f"bitmap index buffer must be {packed_len(n, 1)} uint8 bytes, got "
                         f"{buf.numel()} x {buf.dtype}")
    yield from buf.split(CHUNK_BYTES)


def _decode_bitmap(chunks: Iterable[torch.Tensor], n: int, count: int) -> torch.Tensor:
    """Set bits of a bitmap of n bits, chunk by chunk; stops as soon as more than `count`
    are set, so memory stays within one chunk's expansion plus `count` indices."""
    found, offset, pieces = 0, 0, []
    for chunk in chunks:
        hit = _set_bytes(chunk)
        if hit.numel():
            bits = ((chunk[hit].unsqueeze(1) >> BIT_SHIFTS.to(chunk.device)) & 1).bool()
            pos = ((hit + offset).unsqueeze(1) * 8 + BIT_SHIFTS.to(hit.device).long())[bits]
            if int(pos[-1]) >= n:
                raise CodecError("bitmap index buffer has bits set past the end of the tensor")
            found += pos.numel()
            if found > count:
                raise CodecError(f"bitmap marks more than {count} elements, expected {count}")
            pieces.append(pos)
        offset += chunk.numel()
    if offset != packed_len(n, 1):
        raise CodecError(f"bitmap index buffer has {offset} bytes, expected {packed_len(n, 1)}")
    if found != count:
        raise CodecError(f"bitmap marks {found} elements, expected {count}")
    return torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.int64)


def _set_bytes(chunk: torch.Tensor) -> torch.Tensor:
    """Positions of the nonzero bytes, found through 8-byte words (8x fewer candidates)."""
    pad = (-chunk.numel()) % 8
    if pad or chunk.storage_offset() % 8:
        chunk = torch.cat([chunk, chunk.new_zeros(pad)])
    words = chunk.view(torch.int64)
    hit = words.nonzero().squeeze(1)
    sub = words[hit].view(torch.uint8).nonzero().squeeze(1)
    return hit[sub >> 3] * 8 + (sub & 7)


def _check_range(idx: torch.Tensor, n: int) -> torch.Tensor:
    if idx.numel() and int(idx[-1]) >= n:
        raise CodecError(f"index {int(idx[-1])} out of range for a tensor of {n} elements")
    return idx
