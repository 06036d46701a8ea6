"""What a dataset loader returns, and the one download helper the loaders share."""

from __future__ import annotations

import hashlib
import http.client
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import DataError


@dataclass
class DataBundle:
    """Normalised float32 images (N, C, H, W) and int64 labels for both splits."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    source: str = ""


def md5sum(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)  # integrity check, not security
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: Path, md5: str, timeout: float = 60.0) -> Path:
    """Fetch `url` to `dest` through a temporary file; the checksum must match before it lands."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=dest.parent, prefix=dest.name, suffix=".part",
                                     delete=False) as tmp:
        part = Path(tmp.name)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                shutil.copyfileobj(resp, tmp)
        except (OSError, http.client.HTTPException) as exc:
            error = f"cannot download {url} to {dest}: {exc}"
        else:
            error = ""
    if error:
        part.unlink(missing_ok=True)
        raise DataError(f"{error}; check the network or place the file there by hand")
    got = md5sum(part)
    if got != md5:
        part.unlink(missing_ok=True)
        raise DataError(f"{url}: md5 {got} but expected {md5}; the download is corrupt, "
                        "try again or fetch the file by hand")
    part.replace(dest)
    return dest


def check_labels(labels: torch.Tensor, n: int, num_classes: int, where: str) -> torch.Tensor:
    """Labels as int64, checked for count and range (a wrong file must not train silently)."""
    if labels.dim() != 1 or labels.numel() != n:
        raise DataError(f"{where}: {labels.numel()} labels for {n} images; the label and image "
                        "files do not belong together, download them again")
    labels = labels.long()
    if n and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise DataError(f"{where}: labels outside 0..{num_classes - 1}; the file is corrupt")
    return labels
