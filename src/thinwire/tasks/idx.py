"""IDX files (the MNIST container): big-endian `00 00 08 ndim`, ndim uint32 sizes, uint8 data.

Every inconsistency (wrong magic, truncated header or payload, trailing bytes, a broken gzip
stream) raises DataError naming the file, so a bad download fails loudly instead of training
on garbage.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError

IMAGES_MAGIC = 0x00000803  # uint8, 3 dims (N, rows, cols)
LABELS_MAGIC = 0x00000801  # uint8, 1 dim (N,)
UINT8_TYPE = 0x08


def read_bytes(path: Path) -> bytes:
    """The file's content, gunzipped when the name ends in `.gz`."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"{path}: cannot read ({exc}); the file is corrupt or truncated, delete it and "
            "download it again") from None


def parse_idx(data: bytes, path: Path, magic: int) -> torch.Tensor:
    """Parse IDX bytes whose magic must equal `magic` into a uint8 tensor of the header's dims."""
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < 4:
        raise DataError(f"{path}: only {len(data)} bytes, expected an IDX header "
                        f"(magic 0x{magic:08x}); the file is truncated, download it again")
    (found,) = struct.unpack(">I", data[:4])
    if found != magic:
        raise DataError(
            f"{path}: magic number 0x{found:08x}, expected 0x{magic:08x} "
            f"({'images' if magic == IMAGES_MAGIC else 'labels'} IDX file); the file is not "
            "the expected MNIST file or is corrupt")
    if len(data) < header:
        raise DataError(f"{path}: header truncated ({len(data)} of {header} bytes); "
                        "download the file again")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing data"
        raise DataError(
            f"{path}: {what}: {len(data)} bytes but header dims {tuple(dims)} need exactly "
            f"{expected}; download the file again")
    arr = np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)
    return torch.from_numpy(arr.copy())


def read_idx(path: Path, magic: int) -> torch.Tensor:
    """Read and validate one IDX file (raw or .gz)."""
    return parse_idx(read_bytes(path), Path(path), magic)


def write_idx(path: Path, array: torch.Tensor) -> Path:
    """Write a uint8 tensor as IDX, gzipped if the name ends in `.gz` (tests make files with it)."""
    path = Path(path)
    if array.dtype != torch.uint8:
        raise DataError(f"{path}: IDX writer takes uint8 tensors, got {array.dtype}")
    head = struct.pack(">I", (UINT8_TYPE << 8) | array.dim())
    head += struct.pack(f">{array.dim()}I", *array.shape)
    data = head + array.contiguous().numpy().tobytes()
    if path.suffix == ".gz":
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)
    return path
