"""Standard CIFAR augmentation on whole batches (N x C x H x W), vectorised, with no torchvision.

Random numbers come from an explicit CPU ``torch.Generator`` (None: torch's global one), so a run is
reproducible on any device; only the small index/mask tensors move to the batch's device (``device.on_device``).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..device import on_device


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero-pad each side by ``padding``, then crop back to H x W at a random offset per sample
    (torchvision's ``RandomCrop(size, padding)`` on the uint8 image: padded pixels are 0 before normalising)."""
    if padding == 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)
    dy, dx = on_device(torch.randint(0, 2 * padding + 1, (2, n), generator=generator), x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # N x H x 1
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]  # N x 1 x W
    batch = torch.arange(n, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


def random_hflip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each sample left-right with probability 0.5."""
    flip = on_device(torch.rand(len(x), generator=generator) < 0.5, x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def cutout(x: torch.Tensor, length: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero a ``length`` x ``length`` square (clipped at the border) centred at a uniformly random pixel of
    each sample (DeVries & Taylor 2017). Use after normalising, as DARTS does, so the hole is the mean colour."""
    n, _, h, w = x.shape
    cy = on_device(torch.randint(0, h, (n,), generator=generator), x.device)
    cx = on_device(torch.randint(0, w, (n,), generator=generator), x.device)
    top, left = cy - length // 2, cx - length // 2
    ys, xs = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    in_rows = (ys >= top[:, None]) & (ys < top[:, None] + length)  # N x H
    in_cols = (xs >= left[:, None]) & (xs < left[:, None] + length)  # N x W
    return x.masked_fill((in_rows[:, :, None] & in_cols[:, None, :])[:, None], 0)


def normalize(x: torch.Tensor, mean: Sequence[float] | torch.Tensor,
              std: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """uint8 images to float32: ``(x / 255 - mean) / std`` per channel."""
    mean = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(-1, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(-1, 1, 1)
    return x.float().div_(255).sub_(mean).div_(std)
