"""Batched, vectorised train-time augmentation on normalised image tensors.

One gather does the padded random crop and the horizontal flip for a whole batch, so
augmentation costs far less than the forward pass even on CPU. Randomness comes only from the
caller's torch.Generator, so a seeded run is reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, padding: int = 4,
                     flip: bool = True, fill: Sequence[float] | None = None) -> torch.Tensor:
    """Pad by `padding` (with per-channel `fill`, default 0), crop back to H x W at a random
    offset per image, and mirror each image left-right with probability 1/2."""
    if x.dim() != 4:
        raise ValueError(f"random_crop_flip takes (B, C, H, W) batches, got shape {tuple(x.shape)}")
    b, c, h, w = x.shape
    if b == 0:
        return x.clone()
    p = padding
    padded = x.new_empty(b, c, h + 2 * p, w + 2 * p)
    if fill is None:
        padded.zero_()
    else:
        padded.copy_(torch.as_tensor(fill, dtype=x.dtype, device=x.device).view(1, c, 1, 1)
                     .expand_as(padded))
    padded[:, :, p:p + h, p:p + w] = x
    # draw on the generator's device, then move: works for any pairing of devices
    g = generator.device
    dy = torch.randint(0, 2 * p + 1, (b, 1), generator=generator, device=g).to(x.device)
    dx = torch.randint(0, 2 * p + 1, (b, 1), generator=generator, device=g).to(x.device)
    cols = torch.arange(w, device=x.device).expand(b, w)
    if flip:
        mirrored = torch.rand(b, 1, generator=generator, device=g).to(x.device) < 0.5
        cols = torch.where(mirrored, w - 1 - cols, cols)
    rows = torch.arange(h, device=x.device).expand(b, h) + dy
    cols = cols + dx
    batch = torch.arange(b, device=x.device).view(b, 1, 1)
    # (B, Hp, Wp, C)[batch, rows, cols] -> (B, H, W, C)
    out = padded.permute(0, 2, 3, 1)[batch, rows.view(b, h, 1), cols.view(b, 1, w)]
    return out.permute(0, 3, 1, 2).contiguous()


class CropFlip:
    """Picklable augment callable for a Task: `augment(batch_x, generator)`."""

    def __init__(self, padding: int = 4, fill: Sequence[float] | None = None) -> None:
        self.padding = padding
        self.fill = None if fill is None else tuple(float(v) for v in fill)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return random_crop_flip(x, generator, self.padding, True, self.fill)

    def __repr__(self) -> str:
        return f"CropFlip(padding={self.padding})"
