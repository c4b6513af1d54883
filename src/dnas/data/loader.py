"""Mini-batches from a data set held whole on the device.

CIFAR-sized sets are small (50000 x 3 x 32 x 32 uint8 is 150 MB), so the images live on the GPU as uint8 and
each batch is gathered, augmented and normalised there: no worker processes; a step copies only its random
draws to the device, without waiting for it (``device.on_device``).
"""
from __future__ import annotations

import math
from typing import Iterator, Sequence

import torch

from ..device import on_device
from .augment import cutout, normalize, random_crop, random_hflip


class BatchLoader:
    """Iterate ``(images float32 normalised, labels int64)`` batches on ``device``.

    Each iteration is one epoch: with ``shuffle`` a fresh permutation is drawn from ``generator``; with
    ``augment`` each batch gets random_crop(padding) and random_hflip on uint8, then normalize, then
    cutout(``cutout``) if it is > 0. Given the generator's state, the batches are fully determined. The
    images come in ``memory_format`` (``torch.channels_last``: NHWC, the layout the model's weights are in).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, mean: Sequence[float],
                 std: Sequence[float], *, augment: bool = False, padding: int = 4, cutout: int = 0,
                 shuffle: bool = False, drop_last: bool = False, device: str | torch.device = "cpu",
                 generator: torch.Generator | None = None,
                 memory_format: torch.memory_format = torch.contiguous_format):
        if len(x) != len(y):
            raise ValueError(f"{len(x)} images but {len(y)} labels")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, not {batch_size}")
        if augment and cutout > min(x.shape[-2:]):
            raise ValueError(f"cutout {cutout} is longer than the images' side ({x.shape[-2]}x{x.shape[-1]}): its "
                             f"square would blank whole images (DARTS cuts 16 out of CIFAR's 32)")
        self.device = torch.device(device)
        self.x = x.to(self.device)
        self.y = y.to(self.device, torch.int64)
        self.mean = torch.as_tensor(mean, dtype=torch.float32, device=self.device)
        self.std = torch.as_tensor(std, dtype=torch.float32, device=self.device)
        self.batch_size, self.augment, self.padding, self.cutout = batch_size, augment, padding, cutout
        self.shuffle, self.drop_last, self.generator = shuffle, drop_last, generator
        self.memory_format = memory_format

    def __len__(self) -> int:
        n = len(self.x) / self.batch_size
        return math.floor(n) if self.drop_last else math.ceil(n)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = on_device(torch.randperm(len(self.x), generator=self.generator), self.device) if self.shuffle else None
        for b in range(len(self)):
            s = slice(b * self.batch_size, (b + 1) * self.batch_size)
            idx = s if order is None else order[s]
            x, y = self.x[idx], self.y[idx]
            if self.augment:
                x = random_hflip(random_crop(x, self.padding, self.generator), self.generator)
            x = normalize(x, self.mean, self.std)
            if self.augment and self.cutout > 0:
                x = cutout(x, self.cutout, self.generator)
            yield x.contiguous(memory_format=self.memory_format), y


def memory_format(channels_last: bool) -> torch.memory_format:
    """The layout of images and convolution weights: NHWC (``torch.channels_last``) or PyTorch's NCHW."""
    return torch.channels_last if channels_last else torch.contiguous_format


def split_indices(n: int, portion: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``floor(portion * n)`` indices and the rest: DARTS searches on the first half of the
    training set and uses the second half to update the architecture."""
    if not 0 <= portion <= 1:
        raise ValueError(f"portion must be in [0, 1], not {portion}")
    k = math.floor(portion * n)
    return torch.arange(k), torch.arange(k, n)
