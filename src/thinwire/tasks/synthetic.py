"""A tiny Gaussian-blobs classification task, generated from a seed in milliseconds.

Class centres sit `separation` apart along orthogonal directions (random ones when there are
more classes than dimensions) and the noise is unit Gaussian, so a linear model reaches ~100%
quickly: what fast simulator tests need to see loss fall without touching any file.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from .data import DataBundle


def class_centres(num_classes: int, dim: int, separation: float,
                  gen: torch.Generator) -> torch.Tensor:
    if num_classes <= dim:
        q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen))
        basis = q[:num_classes]
    else:
        basis = torch.nn.functional.normalize(torch.randn(num_classes, dim, generator=gen), dim=1)
    return basis * separation / 2 ** 0.5  # orthonormal rows: pairwise distance = separation


def make_blobs(n_samples: int = 512, num_classes: int = 4, dim: int = 8, seed: int = 0,
               separation: float = 8.0, test_fraction: float = 0.25) -> DataBundle:
    """Balanced blobs (labels cycle through classes) split into train/test by `test_fraction`."""
    if num_classes < 2 or dim < 1 or not 0 < test_fraction < 1:
        raise ConfigError(f"synthetic task: need num_classes >= 2, dim >= 1 and 0 < "
                          f"test_fraction < 1, got {num_classes}, {dim}, {test_fraction}")
    n_test = int(round(n_samples * test_fraction))
    if n_samples - n_test < num_classes or n_test < 1:
        raise ConfigError(f"synthetic task: n_samples={n_samples} is too small for "
                          f"{num_classes} classes with test_fraction={test_fraction}")
    gen = torch.Generator().manual_seed(seed)
    centres = class_centres(num_classes, dim, separation, gen)
    labels = torch.arange(n_samples) % num_classes
    labels = labels[torch.randperm(n_samples, generator=gen)]
    x = centres[labels] + torch.randn(n_samples, dim, generator=gen)
    return DataBundle(x[n_test:], labels[n_test:], x[:n_test], labels[:n_test],
                      source=f"synthetic blobs (n={n_samples}, classes={num_classes}, "
                             f"dim={dim}, seed={seed})")
