"""CIFAR-10 from the canonical `cifar-10-batches-py` folder (python pickles of uint8 rows).

The batches are a trusted local dataset format (the same files every framework unpickles), but
their content is still checked: a dict with b"data" (N, 3072) uint8 and b"labels" (N ints in
0..9); anything else is a DataError naming the file.
"""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .data import DataBundle, check_labels, download
from .transforms import CropFlip

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, 32, 32) -> float32, scaled to [0, 1] then standardised per channel."""
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (images.float().div_(255.0) - mean) / std


def augmenter() -> CropFlip:
    """Random crop 32 (padding 4) + horizontal flip; pads with black, as on raw images."""
    return CropFlip(padding=4, fill=[-m / s for m, s in zip(MEAN, STD)])


def read_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One pickled batch -> (uint8 (N, 3, 32, 32), int64 (N,)), validated."""
    fix = "delete the folder and download the archive again (--download)"
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")  # trusted local dataset format
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; {fix}") from None
    except Exception as exc:  # unpickling garbage can raise almost any exception type
        raise DataError(f"{path}: not a readable CIFAR-10 batch ({type(exc).__name__}: {exc}); "
                        f"{fix}") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataError(f"{path}: expected a dict with keys b'data' and b'labels'; {fix}")
    data, labels = batch[b"data"], batch[b"labels"]
    if (not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2
            or data.shape[1] != 3072):
        desc = (f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray)
                else type(data).__name__)
        raise DataError(f"{path}: b'data' is {desc}, expected a uint8 array (N, 3072); {fix}")
    try:
        label_arr = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise DataError(f"{path}: b'labels' is not a list of integers; {fix}") from None
    images = torch.from_numpy(np.ascontiguousarray(data)).view(-1, 3, 32, 32)
    return images, check_labels(torch.from_numpy(label_arr), len(images), 10, str(path))


def batches_dir(data_dir: Path) -> Path:
    """Accept either the folder holding `cifar-10-batches-py` or that folder itself."""
    data_dir = Path(data_dir)
    return data_dir if data_dir.name == FOLDER else data_dir / FOLDER


def fetch(data_dir: Path) -> None:
    """Download and unpack the archive (md5-checked) unless the batches are already there."""
    if (batches_dir(data_dir) / TEST_BATCH).is_file():
        return
    root = batches_dir(data_dir).parent
    archive = download(URL, root / "cifar-10-python.tar.gz", ARCHIVE_MD5)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: refuse unsafe members
                tar.extractall(root, filter="data")
            else:
                tar.extractall(root)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{archive}: cannot unpack ({exc}); delete it and download again") from None


def load_cifar10(data_dir: Path | None, download: bool = False) -> DataBundle:
    """The 50,000/10,000 CIFAR-10 split, normalised per channel."""
    if data_dir is None:
        raise DataError("CIFAR-10 has no embedded copy: pass --data-dir DIR (the folder holding "
                        f"{FOLDER}/), adding --download to fetch it ({URL})")
    if download:
        fetch(Path(data_dir))
    folder = batches_dir(Path(data_dir))
    missing = [n for n in (*TRAIN_BATCHES, TEST_BATCH) if not (folder / n).is_file()]
    if missing:
        raise DataError(f"CIFAR-10 files missing in {folder}: {', '.join(missing)}; pass "
                        f"--download to fetch and unpack {URL}")
    parts = [read_batch(folder / n) for n in TRAIN_BATCHES]
    test_x, test_y = read_batch(folder / TEST_BATCH)
    train_x = torch.cat([p[0] for p in parts])
    train_y = torch.cat([p[1] for p in parts])
    return DataBundle(normalize(train_x), train_y, normalize(test_x), test_y,
                      source=f"CIFAR-10 batches in {folder}")
