"""Edge computations: what a mixed edge computes from its input, the op weights and its candidates.

``MixedEdge`` is the one primitive every search space is made of: a set of candidate modules weighted by
the op weights that the space's relaxation produced from the architecture parameters. The DARTS cell, and
any user model with a few choice points, are built from it, so every relaxation and regulariser applies.

An edge computation (registry ``EDGES``, the ``edge`` part of a recipe) is called by the space as
``edge(C, stride, candidates)``, ``candidates(C, stride)`` returning the named candidate modules, and
returns the edge module; it may schedule itself with ``on_epoch_start(epoch, epochs)``.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .ops import FactorizedReduce
from .registry import Registry
from .schedule import check_shape, interpolate

EDGES = Registry("edge computation")

Candidates = Callable[[int, int], dict[str, nn.Module]]


class MixedEdge(nn.Module):
    """A choice among candidate modules: o_bar(x) = sum_o w_o * o(x) (DARTS, Liu et al. ICLR 2019, Eq. 2).

    With ``active`` (an op index, from a hard relaxation such as GDAS), only that op runs: the output is
    w_a * o_a(x) + sum_{o != a} w_o, whose second term is zero in value but passes the straight-through
    gradient to every alpha (Dong & Yang, GDAS, CVPR 2019, Sec. 3.2).
    """

    def __init__(self, candidates: Mapping[str, nn.Module]):
        super().__init__()
        if not candidates:
            raise ValueError("a mixed edge needs at least one candidate op")
        self.names = list(candidates)
        self.ops = nn.ModuleList(candidates.values())

    def forward(self, x: torch.Tensor, weights: torch.Tensor, active: int | None = None) -> torch.Tensor:
        if active is None:
            return sum(w * op(x) for w, op in zip(weights, self.ops))
        return weights[active] * self.ops[active](x) + (weights.sum() - weights[active])

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
        return channel_shuffle(torch.cat([y, rest], dim=1), self.k)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle: interleave the channels of ``groups`` equal groups."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class AuxiliarySkipEdge(nn.Module):
    """A mixed edge plus ``beta * skip(x)``, beta read from the scheduling part (DARTS-)."""

    def __init__(self, mixed: MixedEdge, skip: nn.Module, schedule: "AuxiliarySkip"):
        super().__init__()
        self.mixed, self.skip = mixed, skip
        self.schedule = schedule

    def forward(self, x, weights, active=None):
        return self.mixed(x, weights, active) + self.schedule.beta * self.skip(x)


class GaussianNoise(nn.Module):
    """Adds N(mean, sigma^2) noise to a module's output in training mode (NoisyDARTS)."""

    def __init__(self, module: nn.Module, sigma: float, mean: float = 0.0):
        super().__init__()
        self.module, self.sigma, self.mean = module, sigma, mean

    def forward(self, x):
        y = self.module(x)
        return y + self.mean + self.sigma * torch.randn_like(y) if self.training else y


@EDGES.register("sum")
class WeightedSum:
    """DARTS: every candidate runs on the whole input (Eq. 2)."""

    def __call__(self, C: int, stride: int, candidates: Candidates) -> nn.Module:
        return MixedEdge(candidates(C, stride))


@EDGES.register("partial_channel")
class PartialChannel:
    """PC-DARTS partial channel connections with K = 4 (Xu et al., ICLR 2020, Sec. 4.2)."""

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
    (linearly by default) so that the skip's unfair advantage is factored out of the op weights."""

    def __init__(self, start: float = 1.0, end: float = 0.0, decay: str = "linear"):
        self.start, self.end, self.decay = start, end, check_shape(decay)
        self.beta = start

    def __call__(self, C, stride, candidates):
        skip = nn.Identity() if stride == 1 else FactorizedReduce(C, C, affine=False)
        return AuxiliarySkipEdge(MixedEdge(candidates(C, stride)), skip, self)

    def on_epoch_start(self, epoch, epochs):
        self.beta = interpolate(self.start, self.end, epoch, epochs, self.decay)
        return {"aux_skip_beta": self.beta}


@EDGES.register("noisy_skip")
class NoisySkip:
    """NoisyDARTS (Chu et al., arXiv:2005.03566, Sec. 3): unbiased Gaussian noise (mean 0) on the skip
    connection's output during search, so that its weight cannot grow on a gradient advantage alone."""

    def __init__(self, sigma: float = 0.1, mean: float = 0.0):
        self.sigma, self.mean = sigma, mean

    def __call__(self, C, stride, candidates):
        ops = candidates(C, stride)
        if "skip_connect" not in ops:
            raise ValueError(f"noisy_skip needs skip_connect among the candidate ops, got {list(ops)}")
        ops["skip_connect"] = GaussianNoise(ops["skip_connect"], self.sigma, self.mean)
        return MixedEdge(ops)
