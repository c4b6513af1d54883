"""Relaxations: how an edge turns its architecture parameters alpha into weights over candidate ops.

A relaxation maps alpha of shape (edges, ops) to op weights of the same shape; an alpha of -inf (an op
masked out of the space) gets weight 0. ``weights`` is what the
supernet multiplies the ops by in training (it may sample); ``strengths`` is the deterministic view used
in evaluation mode, by selection and by reports. ``hard = True`` (optional, ``is_hard``) means each row of
``weights`` is one-hot in value, so that the space runs only the chosen op of each edge. A relaxation with
a schedule (a temperature) defines ``on_epoch_start(epoch, epochs)``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .registry import Registry
from .schedule import check_shape, interpolate

RELAXATIONS = Registry("relaxation")


def is_hard(relaxation) -> bool:
    """Whether ``relaxation``'s weights are one-hot in value (its ``hard`` attribute; none: soft)."""
    return getattr(relaxation, "hard", False)


@RELAXATIONS.register("softmax")
class Softmax:
    """DARTS continuous relaxation, Eq. 1 of Liu et al. (ICLR 2019): w_o = exp(alpha_o) / sum_o' exp(alpha_o')."""

    hard = False

    def weights(self, alpha: torch.Tensor) -> torch.Tensor:
        return torch.softmax(alpha, dim=-1)

    def strengths(self, alpha: torch.Tensor) -> torch.Tensor:
        return torch.softmax(alpha, dim=-1)


@RELAXATIONS.register("sigmoid")
class Sigmoid:
    """FairDARTS (Chu et al., ECCV 2020, Eq. 2): w_o = sigmoid(alpha_o), independently per op, so that ops
    do not compete for a share of one softmax (the 'exclusive competition' it blames for skip collapse)."""

    hard = False

    def weights(self, alpha):
        return torch.sigmoid(alpha)

    def strengths(self, alpha):
        return torch.sigmoid(alpha)


@RELAXATIONS.register("gumbel")
class GumbelSoftmax:
    """Gumbel-softmax sampling of one op per edge: w = softmax((alpha + g) / tau), g ~ Gumbel(0, 1).

    ``hard=True`` is GDAS (Dong & Yang, CVPR 2019, Eq. 3-5): the one-hot argmax in the forward pass with
    the soft sample's gradient (straight-through), so only the sampled op runs. ``hard=False`` is SNAS
    (Xie et al., ICLR 2019, Eq. 5): the soft sample itself. tau is annealed from ``tau[0]`` to ``tau[1]``
    over the search (GDAS: linearly from 10 to 0.1; ``schedule="exponential"`` gives a geometric decay).
    """

    def __init__(self, hard: bool = True, tau: tuple[float, float] = (10.0, 0.1), schedule: str = "linear"):
        self.hard, self.tau_range, self.schedule = hard, tuple(tau), check_shape(schedule)
        self.tau = self.tau_range[0]

    def on_epoch_start(self, epoch, epochs):
        self.tau = interpolate(*self.tau_range, epoch, epochs, self.schedule)
        return {"tau": self.tau}

    def weights(self, alpha):
        # -log(Exponential) is Gumbel(0, 1); clamping keeps log finite (GDAS retries non-finite samples)
        gumbel = -torch.empty_like(alpha).exponential_().clamp_min(1e-20).log()
        soft = torch.softmax((alpha + gumbel) / self.tau, dim=-1)
        if not self.hard:
            return soft
        # a scatter, not F.one_hot, which checks its input on the host
        one_hot = torch.zeros_like(soft).scatter_(-1, soft.argmax(-1, keepdim=True), 1.0)
        return one_hot - soft.detach() + soft

    def strengths(self, alpha):
        return torch.softmax(alpha, dim=-1)


@RELAXATIONS.register("dirichlet")
class Dirichlet:
    """DrNAS (Chen et al., ICLR 2021, Sec. 3.1): op weights sampled from Dir(beta), beta = elu(alpha) + 1
    (positive), differentiated by the pathwise (reparameterised) gradient of the sample; the deterministic
    view is the mean beta / sum(beta)."""

    hard = False

    @staticmethod
    def concentration(alpha):
        return F.elu(alpha) + 1

    def weights(self, alpha):
        # ops masked out of the space (alpha = -inf) weigh 0; the others' renormalised sample is
        # Dirichlet over them alone (the aggregation property). No branch on the mask and no argument
        # validation: either would read a device tensor on the host, which a CUDA-graph capture forbids
        live = torch.isfinite(alpha)
        beta = self.concentration(alpha.masked_fill(~live, 0.0))
        sample = torch.distributions.Dirichlet(beta, validate_args=False).rsample() * live
        return sample / sample.sum(-1, keepdim=True)

    def strengths(self, alpha):
        beta = self.concentration(alpha)
        return beta / beta.sum(-1, keepdim=True)
