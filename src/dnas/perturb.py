"""Perturbations of alpha for the weight step (SDARTS, Chen & Hsieh, ICML 2020).

SDARTS trains the weights to do well in a neighbourhood of alpha rather than at alpha alone, which
smooths the validation loss landscape in alpha (a smaller Hessian eigenvalue) and so avoids the DARTS
collapse. A perturbation is called as ``perturbation(model, train_loss)`` before the weight step and
returns one delta per architecture parameter; the step runs at alpha + delta and alpha is restored.
"""
from __future__ import annotations

import torch

from .registry import Registry
from .schedule import check_shape, interpolate

PERTURBATIONS = Registry("perturbation")


class EpsilonSchedule:
    """The perturbation radius epsilon, fixed or ramped from ``epsilon[0]`` to ``epsilon[1]``."""

    def __init__(self, epsilon, shape: str = "linear"):
        self.epsilon_range = (epsilon, epsilon) if isinstance(epsilon, (int, float)) else tuple(epsilon)
        self.shape = check_shape(shape)
        self.epsilon = self.epsilon_range[0]

    def on_epoch_start(self, epoch, epochs):
        self.epsilon = interpolate(*self.epsilon_range, epoch, epochs, self.shape)
        return {"perturbation_epsilon": self.epsilon}


@PERTURBATIONS.register("random_smoothing")
class RandomSmoothing(EpsilonSchedule):
    """SDARTS-RS (Eq. 5): delta ~ Uniform[-epsilon, epsilon] on every alpha."""

    def __init__(self, epsilon=0.03, shape="linear"):
        super().__init__(epsilon, shape)

    def __call__(self, model, train_loss) -> list[torch.Tensor]:
        return [torch.empty_like(a).uniform_(-self.epsilon, self.epsilon) for a in model.arch_parameters()]


@PERTURBATIONS.register("adversarial")
class Adversarial(EpsilonSchedule):
    """SDARTS-ADV (Eq. 6): delta maximising the training loss within the L_inf ball of radius epsilon,
    found by ``steps`` of projected gradient ascent with step size ``step_size`` (default 2.5 eps / steps)
    from a random start."""

    def __init__(self, epsilon=0.3, steps: int = 7, step_size: float | None = None, shape="linear"):
        super().__init__(epsilon, shape)
        self.steps, self.step_size = steps, step_size

    def __call__(self, model, train_loss):
        alphas = model.arch_parameters()
        eps = self.epsilon
        step = self.step_size or 2.5 * eps / self.steps
        deltas = [torch.empty_like(a).uniform_(-eps, eps) for a in alphas]
        originals = [a.detach().clone() for a in alphas]
        try:
            for _ in range(self.steps):
                with torch.no_grad():
                    for a, o, d in zip(alphas, originals, deltas):
                        a.copy_(o + d)
                grads = torch.autograd.grad(train_loss(), alphas)
                with torch.no_grad():
                    for d, g in zip(deltas, grads):
                        d.add_(step * g.sign()).clamp_(-eps, eps)
        finally:
            with torch.no_grad():
                for a, o in zip(alphas, originals):
                    a.copy_(o)
        return deltas
