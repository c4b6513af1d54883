"""Edge computations: what a mixed edge computes from its input, the op weights and its candidates.

``MixedEdge`` is the one primitive every search space is made of: a set of candidate modules weighted by
the op weights that the space's relaxation produced from the architecture parameters. The DARTS cell, and
any user model with a few choice points, are built from it, so every relaxation and regulariser applies.

An edge computation (registry ``EDGES``, the ``edge`` part of a recipe) is called by the space as
``edge(C, stride, candidates)``, ``candidates(C, stride)`` returning the named candidate modules, and
returns the edge module; it may schedule itself with ``on_epoch_start(epoch, epochs)``.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .ops import FactorizedReduce
from .registry import Registry
from .schedule import check_shape, interpolate

EDGES = Registry("edge computation")
CONVOLUTIONAL = ("darts", "nb201")  # the spaces of image cells, whose edges' ops are convolutional

Candidates = Callable[[int, int], dict[str, nn.Module]]


class MixedEdge(nn.Module):
    """A choice among candidate modules: o_bar(x) = sum_o w_o * o(x) (DARTS, Liu et al. ICLR 2019, Eq. 2).

    With ``active`` (the indices of the ops to run), only those run: the output is
    sum_{o in active} w_o * o(x) + sum_{o not in active} w_o. The second term is zero in value, since the
    ops left out weigh zero (a hard relaxation's one-hot sample, or ops masked out of the space), but
    passes the straight-through gradient of a hard sample to every alpha (Dong & Yang, GDAS, CVPR 2019,
    Sec. 3.2).
    """

    def __init__(self, candidates: Mapping[str, nn.Module]):
        super().__init__()
        if not candidates:
            raise ValueError("a mixed edge needs at least one candidate op")
        self.names = list(candidates)
        self.ops = nn.ModuleList(candidates.values())

    def forward(self, x: torch.Tensor, weights: torch.Tensor, active: list[int] | None = None) -> torch.Tensor:
        if active is None:
            return sum(w * op(x) for w, op in zip(weights, self.ops))
        return sum(weights[i] * self.ops[i](x) for i in active) + (weights.sum() - weights[active].sum())

    def extra_repr(self) -> str:
        return f"candidates={self.names}"


class PartialChannelEdge(MixedEdge):
    """PC-DARTS (Xu et al., ICLR 2020, Sec. 3.2, Eq. 2): the mixed op sees only the first 1/K of the
    channels, the rest bypass it (max-pooled on a reducing edge), then a channel shuffle mixes the two."""

    def __init__(self, candidates: Mapping[str, nn.Module], k: int, stride: int):
        super().__init__(candidates)
        self.k, self.stride = k, stride

    def forward(self, x, weights, active=None):
        c = x.shape[1] // self.k
        y = super().forward(x[:, :c], weights, active)
        rest = x[:, c:] if self.stride == 1 else F.max_pool2d(x[:, c:], 2, 2)
        # ShuffleNet's channel shuffle (interleave the channels of K equal groups) by PyTorch's own kernel,
        # which keeps channels_last (a view-transpose-reshape copies NHWC 4-element runs, ~20x slower)
        return F.channel_shuffle(torch.cat([y, rest], dim=1), self.k)


class AuxiliarySkipEdge(nn.Module):
    """A mixed edge plus ``beta * skip(x)``, beta read from the scheduling part (DARTS-)."""

    def __init__(self, mixed: MixedEdge, skip: nn.Module, schedule: "AuxiliarySkip"):
        super().__init__()
        self.mixed, self.skip = mixed, skip
        self.schedule = schedule

    def forward(self, x, weights, active=None):
        return self.mixed(x, weights, active) + self.schedule.beta * self.skip(x)


class GaussianNoise(nn.Module):
    """Adds N(mean, (factor * std(y))^2) noise to a module's output y in training mode (NoisyDARTS): the
    noise scales with the signal, and its standard deviation is a constant of the gradient."""

    def __init__(self, module: nn.Module, factor: float, mean: float = 0.0):
        super().__init__()
        self.module, self.factor, self.mean = module, factor, mean

    @staticmethod
    def draw(shape, like: torch.Tensor) -> torch.Tensor:
        """N(0, 1) noise of ``shape``, drawn in (N, C, H, W) order whatever the layout of ``like``: a seeded
        step adds the same noise in NCHW and NHWC, and in the fused cell."""
        return torch.randn(shape, dtype=like.dtype, device=like.device)

    def forward(self, x):
        y = self.module(x)
        if not self.training:
            return y
        return y + self.mean + self.factor * y.detach().std() * self.draw(y.shape, y)


@EDGES.register("sum")
class WeightedSum:
    """DARTS: every candidate runs on the whole input (Eq. 2)."""

    def __call__(self, C: int, stride: int, candidates: Candidates) -> nn.Module:
        return MixedEdge(candidates(C, stride))


@EDGES.register("partial_channel")
class PartialChannel:
    """PC-DARTS partial channel connections with K = 4 (Xu et al., ICLR 2020, Sec. 4.2)."""

    spaces = CONVOLUTIONAL  # it changes the edges' convolutional ops

    def __init__(self, k: int = 4):
        self.k = k

    def __call__(self, C, stride, candidates):
        if C % self.k:
            raise ValueError(f"partial channels with k={self.k} need channels divisible by {self.k}, got {C}")
        return PartialChannelEdge(candidates(C // self.k, stride), self.k, stride)


@EDGES.register("auxiliary_skip")
class AuxiliarySkip:
    """DARTS- (Chu et al., ICLR 2021, Sec. 3.2, Eq. 4): every edge gets an auxiliary skip connection
    beta * x (a FactorizedReduce on a reducing edge), beta decayed from ``start`` to ``end`` over the search
    (linearly by default, beta = 1 - epoch / epochs) so that the skip's unfair advantage is factored out
    of the op weights."""

    spaces = CONVOLUTIONAL  # it adds a convolutional skip to the edges

    def __init__(self, start: float = 1.0, end: float = 0.0, decay: str = "linear"):
        self.start, self.end, self.decay = start, end, check_shape(decay)
        self.beta = start

    def __call__(self, C, stride, candidates):
        skip = nn.Identity() if stride == 1 else FactorizedReduce(C, C, affine=False)
        return AuxiliarySkipEdge(MixedEdge(candidates(C, stride)), skip, self)

    def on_epoch_start(self, epoch, epochs):
        # DARTS-'s beta_0 * (1 - epoch / epochs): reaches ``end`` one epoch after the last
        self.beta = interpolate(self.start, self.end, epoch, epochs + 1, self.decay)
        return {"aux_skip_beta": self.beta}


@EDGES.register("noisy_skip")
class NoisySkip:
    """NoisyDARTS (Chu et al., BMVC 2021, Sec. 3, Eq. 5): unbiased additive Gaussian noise on the skip
    connection's output during search, with standard deviation ``factor`` (lambda) times that of the
    output; lambda = 0.2, mean 0 is the paper's chosen setting (its Table 7, NoisyDARTS-a)."""

    spaces = CONVOLUTIONAL  # it changes the edges' convolutional ops

    def __init__(self, factor: float = 0.2, mean: float = 0.0):
        self.factor, self.mean = factor, mean

    def __call__(self, C, stride, candidates):
        ops = candidates(C, stride)
        if "skip_connect" not in ops:
            raise ValueError(f"noisy_skip needs skip_connect among the candidate ops, got {list(ops)}")
        ops["skip_connect"] = GaussianNoise(ops["skip_connect"], self.factor, self.mean)
        return MixedEdge(ops)


class ScheduledDropout(nn.Module):
    """Dropout whose rate ``owner.rate`` is set by a scheduling part."""

    def __init__(self, owner):
        super().__init__()
        self.owner = owner

    def mask(self, shape, like: torch.Tensor) -> torch.Tensor:
        """The dropout mask of ``shape`` scaled by 1 / (1 - rate) (ones out of training), drawn in (N, C, H, W)
        order whatever the layout of ``like``: a seeded step drops the same in NCHW and NHWC, and in the
        fused cell."""
        return F.dropout(like.new_ones(shape), self.owner.rate, self.training)

    def forward(self, x):
        return x * self.mask(x.shape, x) if self.training else x


@EDGES.register("skip_dropout")
class SkipDropout:
    """P-DARTS search regularisation (Chen et al., ICCV 2019, Sec. 3.3): dropout after the skip connection
    of every edge, so that the parameter-free skip cannot win on its fast early gradients. The rate decays as
    in its code (chenxin061/pdarts train_search.py): during the ``warmup`` epochs of weight steps only,
    rate * (epochs - epoch - 1) / epochs; from the first epoch that moves the alphas, rate * exp(-decay
    (epoch - warmup)), decay 0.2. ``warmup`` None: the first form over the whole search."""

    spaces = CONVOLUTIONAL  # it changes the edges' convolutional ops

    def __init__(self, rate: float = 0.0, warmup: int | None = None, decay: float = 0.2):
        self.initial, self.rate, self.warmup, self.decay = rate, rate, warmup, decay

    def __call__(self, C, stride, candidates):
        ops = candidates(C, stride)
        if "skip_connect" in ops:
            ops["skip_connect"] = nn.Sequential(ops["skip_connect"], ScheduledDropout(self))
        return MixedEdge(ops)

    def on_epoch_start(self, epoch, epochs):
        if self.warmup is None or epoch < self.warmup:
            self.rate = self.initial * (epochs - epoch - 1) / epochs
        else:
            self.rate = self.initial * math.exp(-self.decay * (epoch - self.warmup))
        return {"skip_dropout": self.rate}
