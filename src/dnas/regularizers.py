"""Regularisers: extra terms of the architecture objective, L_val(w, alpha) + sum_r r(model).

A regulariser is called as ``r(model)`` on the supernet (its ``alphas`` and ``ops``) and returns a scalar
that the architecture step adds to the validation loss; it may schedule its weight with
``on_epoch_start(epoch, epochs)``.
"""
from __future__ import annotations

import torch

from .ops import PARAMETER_FREE_OPS
from .registry import Registry
from .schedule import check_shape, interpolate

REGULARIZERS = Registry("regularizer")


class Scheduled:
    """A regulariser whose weight follows a schedule from ``weight[0]`` to ``weight[1]`` (a number: fixed)."""

    def __init__(self, weight, shape: str = "linear"):
        self.weight_range = (weight, weight) if isinstance(weight, (int, float)) else tuple(weight)
        self.shape = check_shape(shape)
        self.weight = self.weight_range[0]

    def on_epoch_start(self, epoch, epochs):
        self.weight = interpolate(*self.weight_range, epoch, epochs, self.shape)
        return {f"{self.name}_weight": self.weight}


@REGULARIZERS.register("beta_decay")
class BetaDecay(Scheduled):
    """beta-DARTS (Ye et al., CVPR 2022, Eq. 9-11): lambda * mean over edges of logsumexp(alpha_edge),
    which pulls the architecture parameters of every edge towards a flat, small-norm distribution; lambda
    grows linearly over the search: from ``weight[0]`` to ``weight[1]``, or, with ``per_epoch``, by that
    much each epoch whatever the search's length (its code: 0.5 per epoch, so 24.5 at the 50th)."""

    name = "beta_decay"

    def __init__(self, weight=(0.0, 1.0), shape: str = "linear", per_epoch: float | None = None):
        super().__init__(weight, shape)
        self.per_epoch = per_epoch

    def on_epoch_start(self, epoch, epochs):
        if self.per_epoch is None:
            return super().on_epoch_start(epoch, epochs)
        self.weight = self.weight_range[0] + self.per_epoch * epoch
        return {f"{self.name}_weight": self.weight}

    def __call__(self, model) -> torch.Tensor:
        alphas = torch.cat([a for a in model.alphas.values()])
        return self.weight * torch.logsumexp(alphas, dim=-1).mean()


@REGULARIZERS.register("zero_one")
class ZeroOne(Scheduled):
    """FairDARTS zero-one loss (Chu et al., ECCV 2020, Eq. 4): -w01 / N * sum_i (sigmoid(alpha_i) - 0.5)^2,
    pushing every sigmoid weight towards 0 or 1 so that the threshold selection is unambiguous; w01 = 10."""

    name = "zero_one"

    def __init__(self, weight=10.0, shape: str = "linear"):
        super().__init__(weight, shape)

    def __call__(self, model):
        alphas = torch.cat([a.flatten() for a in model.alphas.values()])
        return -self.weight * (torch.sigmoid(alphas) - 0.5).pow(2).mean()


@REGULARIZERS.register("l1_parameter_free")
class L1ParameterFree(Scheduled):
    """An L1 penalty on the alphas of the parameter-free ops (skip, pooling, none), a direct counter to
    the DARTS collapse onto skip connections (the CDARTS-style penalty of the survey's collapse family)."""

    name = "l1_parameter_free"

    def __init__(self, weight=1e-3, ops: tuple[str, ...] = tuple(sorted(PARAMETER_FREE_OPS)), shape="linear"):
        super().__init__(weight, shape)
        self.ops = tuple(ops)

    def __call__(self, model):
        cols = [i for i, name in enumerate(model.ops) if name in self.ops]
        # columns as views, stacked: indexing by a list would copy it to the device on every call
        return self.weight * torch.stack([a[:, i] for a in model.alphas.values() for i in cols]).abs().sum()


@REGULARIZERS.register("dirichlet_kl")
class DirichletKL(Scheduled):
    """DrNAS's anchor regulariser (Chen et al., ICLR 2021, Sec. 3.1), its code's ``reg_type="kl"``: weight *
    KL(Dir(beta) || Dir(1)) per edge, summed, on the concentrations beta = elu(alpha) + 1 of the ops the
    space keeps, which holds the distribution near the uniform anchor. Its code's default, ``reg_type="l2"``,
    is the alphas' weight decay (1e-3) that every search's Adam has, so the drnas recipe adds no part; with
    this one its code sets that weight decay to 0 (``arch_weight_decay = 0``)."""

    name = "dirichlet_kl"

    def __init__(self, weight=1e-3, shape="linear"):
        super().__init__(weight, shape)

    def __call__(self, model):
        from .relax import Dirichlet

        total = 0
        for a in model.alphas.values():
            live = torch.isfinite(a)  # ops masked out of the space (alpha = -inf) are no part of the distribution
            beta = torch.where(live, Dirichlet.concentration(a.masked_fill(~live, 0.0)), torch.ones_like(a))
            s = beta.masked_fill(~live, 0.0).sum(-1)
            k = live.sum(-1).to(a.dtype)
            # closed form; a masked op's beta of 1 adds lgamma(1) = 0 and (1 - 1) (...) = 0
            kl = (torch.lgamma(s) - torch.lgamma(beta).sum(-1) - torch.lgamma(k)
                  + ((beta - 1) * (torch.digamma(beta) - torch.digamma(s)[..., None])).sum(-1))
            total = total + kl.sum()
        return self.weight * total
