"""Architecture gradients: how d L_val / d alpha is approximated in DARTS's bilevel problem.

    min_alpha L_val(w*(alpha), alpha)   s.t.   w*(alpha) = argmin_w L_train(w, alpha)     (DARTS Eq. 3-4)

An architecture gradient is called as ``grad(model, train_loss, val_loss, w_optimizer)`` where
``train_loss(params=None)`` and ``val_loss(params=None)`` evaluate the loss on the current training and
validation batch (with the model's own weights, or with ``params``, a name -> tensor mapping of the
weights). It writes the gradient into ``alpha.grad`` for every architecture parameter and returns the
validation loss. The caller zeroes the gradients before and steps the architecture optimiser after.
"""
from __future__ import annotations

from typing import Callable

import torch

from .ops import second_derivatives
from .registry import Registry

ARCH_GRADS = Registry("architecture gradient")

Loss = Callable[..., torch.Tensor]


@ARCH_GRADS.register("first_order")
class FirstOrder:
    """First-order DARTS: xi = 0 in Eq. 6, i.e. grad_alpha L_val(w, alpha) at the current weights."""

    def __call__(self, model, train_loss: Loss, val_loss: Loss, w_optimizer) -> torch.Tensor:
        loss = val_loss()
        alphas = model.arch_parameters()
        for a, g in zip(alphas, _grad(loss, alphas)):
            a.grad = g
        return loss.detach()


@ARCH_GRADS.register("second_order")
class SecondOrder:
    """Second-order DARTS, Eq. 6-8 of Liu et al. (ICLR 2019).

    The weights are unrolled by the step the weight optimiser is about to take,
    w' = w - xi * (momentum * buffer + grad_w L_train(w, alpha) + weight_decay * w), with xi its current
    learning rate (with Nesterov momentum, as GDAS's code takes it: w - xi * (g + momentum * buffer'), g the
    gradient with weight decay and buffer' = momentum * buffer + g the optimiser's next buffer); then

        grad = grad_alpha L_val(w', alpha) - xi * grad^2_{alpha,w} L_train(w, alpha) . grad_w' L_val(w', alpha)
        (with Nesterov momentum xi (1 + momentum): the step's derivative in the gradient),

    the Hessian-vector product by central finite differences (Eq. 8):
        (grad_alpha L_train(w+, alpha) - grad_alpha L_train(w-, alpha)) / (2 eps),
        w+- = w +- eps v,  v = grad_w' L_val(w', alpha),  eps = epsilon / ||v||  (epsilon = 0.01).

    ``clip``: the norm both weight gradients (of the unrolled step and v) are clipped to, as the DARTS
    recurrent search does with its gradient clip 0.25 (rnn/architect.py); None (the convolutional code): no clip.
    """

    def __init__(self, epsilon: float = 0.01, clip: float | None = None):
        self.epsilon, self.clip = epsilon, clip

    def __call__(self, model, train_loss: Loss, val_loss: Loss, w_optimizer) -> torch.Tensor:
        names, weights = zip(*model.named_weight_parameters())
        alphas = model.arch_parameters()
        unrolled = self.unrolled_weights(weights, train_loss(), w_optimizer, self.clip)

        loss = val_loss(params=dict(zip(names, unrolled)))
        grads = _grad(loss, [*alphas, *unrolled])
        dalpha, v = grads[: len(alphas)], _clipped(grads[len(alphas):], self.clip)

        hvp = self.hessian_vector_product(weights, alphas, v, train_loss)
        group = w_optimizer.param_groups[0]
        # dw'/dalpha: the unrolled step moves the weights by xi times the gradient, (1 + momentum) times it
        # with Nesterov momentum (the gradient enters the step once itself, once through the new buffer)
        xi = group["lr"] * (1 + group["momentum"]) if group.get("nesterov") else group["lr"]
        for a, g, h in zip(alphas, dalpha, hvp):
            a.grad = g - xi * h
        return loss.detach()

    @staticmethod
    def unrolled_weights(weights, loss: torch.Tensor, w_optimizer, clip: float | None = None) -> list[torch.Tensor]:
        """w' after one step of the (SGD) weight optimiser (its gradient clipped to ``clip``), as leaves that
        require grad."""
        group = w_optimizer.param_groups[0]
        xi, mu, wd = group["lr"], group.get("momentum", 0.0), group.get("weight_decay", 0.0)
        weights = list(weights)
        with torch.no_grad():  # one kernel per kind of term for all weights (foreach), not one per weight
            d = torch._foreach_add(list(_clipped(_grad(loss, weights), clip)), weights, alpha=wd)
            g = torch._foreach_mul(d, 1.0) if group.get("nesterov") else None  # the gradient, for the look-ahead
            moving = [(i, buf) for i, w in enumerate(weights)
                      if (buf := w_optimizer.state.get(w, {}).get("momentum_buffer")) is not None]
            if moving:  # d: the momentum buffer this step makes (the gradient itself where there is none yet)
                torch._foreach_add_([d[i] for i, _ in moving], [buf for _, buf in moving], alpha=mu)
            if g is not None:
                d = torch._foreach_add(g, d, alpha=mu)
            # xi a number, or the device tensor of a search replayed from a CUDA graph (cuda_graph.set_capturable)
            return [w.requires_grad_() for w in torch._foreach_sub(weights, torch._foreach_mul(d, xi))]

    def hessian_vector_product(self, weights, alphas, v, train_loss: Loss) -> list[torch.Tensor]:
        """grad^2_{alpha,w} L_train . v by central differences (DARTS Eq. 8), weights restored after. eps stays
        a device tensor: reading it on the host would wait for the GPU (and cannot be captured in a graph)."""
        eps = self.epsilon / torch.cat([x.flatten() for x in v]).norm()
        _shift(weights, v, eps)
        g_plus = _grad(train_loss(), alphas)
        _shift(weights, v, -2 * eps)
        g_minus = _grad(train_loss(), alphas)
        _shift(weights, v, eps)
        return [(p - m) / (2 * eps) for p, m in zip(g_plus, g_minus)]


@ARCH_GRADS.register("implicit")
class Implicit:
    """iDARTS (Zhang et al., ICML 2021, Eq. 6-9): the hypergradient by the implicit function theorem at
    the current weights, the inverse Hessian approximated by a Neumann series of K terms:

        grad = grad_alpha L_val
               - eta * grad^2_{alpha,w} L_train . sum_{k=0}^{K} (I - eta grad^2_w L_train)^k grad_w L_val

    Hessian-vector products are exact (double backward; grouped convolutions differentiated twice by
    grouped kernels, ``ops.second_derivatives``). ``eta`` defaults to the weight learning rate.
    """

    def __init__(self, k: int = 1, eta: float | None = None):
        self.k, self.eta = k, eta

    def __call__(self, model, train_loss, val_loss, w_optimizer):
        weights, alphas = model.weight_parameters(), model.arch_parameters()
        eta = self.eta if self.eta is not None else w_optimizer.param_groups[0]["lr"]
        loss = val_loss()
        grads = _grad(loss, [*alphas, *weights])
        dalpha, v = grads[: len(alphas)], [g.detach() for g in grads[len(alphas):]]

        with second_derivatives():  # grouped convolutions whose backward is differentiated by grouped kernels
            dw_train = torch.autograd.grad(train_loss(), weights, create_graph=True, allow_unused=True,
                                           materialize_grads=True)
        term, series = v, list(v)
        for _ in range(self.k):
            hv = torch.autograd.grad(dw_train, weights, grad_outputs=term, retain_graph=True, allow_unused=True,
                                     materialize_grads=True)
            term = [t - eta * h for t, h in zip(term, hv)]
            series = [s + t for s, t in zip(series, term)]
        mixed = torch.autograd.grad(dw_train, alphas, grad_outputs=series, allow_unused=True, materialize_grads=True)
        for a, g, m in zip(alphas, dalpha, mixed):
            a.grad = g - eta * m
        return loss.detach()


def _clipped(grads, max_norm: float | None):
    """The gradients scaled to total norm ``max_norm`` when above it (as clip_grad_norm_ does), on the device."""
    if max_norm is None:
        return grads
    scale = (max_norm / (torch.cat([g.flatten() for g in grads]).norm() + 1e-6)).clamp(max=1.0)
    return tuple(torch._foreach_mul(list(grads), scale))


def _grad(loss: torch.Tensor, inputs) -> tuple[torch.Tensor, ...]:
    """Gradients, zeros for inputs the loss does not use (e.g. a cell type absent from a tiny supernet)."""
    return torch.autograd.grad(loss, list(inputs), allow_unused=True, materialize_grads=True)


@torch.no_grad()
def _shift(weights, direction, scale: torch.Tensor) -> None:
    """w += scale * d for every weight, ``scale`` a scalar tensor."""
    torch._foreach_add_(list(weights), torch._foreach_mul(list(direction), scale))
