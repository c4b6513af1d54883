"""Perturbations of the op weights for the weight step (SDARTS, Chen & Hsieh, ICML 2020).

SDARTS trains the weights to do well in a neighbourhood of the architecture rather than at it alone,
which smooths the validation loss landscape in alpha (a smaller Hessian eigenvalue) and so avoids the
DARTS collapse. As in its code, the perturbation acts on the op weights (the softmax of alpha), not on
alpha: w' = clamp(w + delta, 0, 1), each edge renormalised to sum 1. A perturbation is called as
``perturbation(model, train_loss)`` before the weight step and returns one delta per entry of
``model.alphas``; the step runs with ``model.weight_delta`` set to them. The radius epsilon ramps
linearly from 0.03 to its maximum over the search, for both variants (SDARTS code: 0.03 + (eps_max -
0.03) * epoch / epochs, eps_max = 0.3).
"""
from __future__ import annotations

import torch

from .registry import Registry
from .schedule import check_shape, interpolate

PERTURBATIONS = Registry("perturbation")


def perturbed(weights: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """SDARTS's perturbed op weights: clamp(w + delta, 0, 1), renormalised over each edge's ops."""
    w = (weights + delta).clamp(0.0, 1.0)
    return w / w.sum(-1, keepdim=True).clamp_min(1e-12)


class EpsilonSchedule:
    """The perturbation radius epsilon, fixed or ramped from ``epsilon[0]`` to ``epsilon[1]``."""

    def __init__(self, epsilon, shape: str = "linear"):
        self.epsilon_range = (epsilon, epsilon) if isinstance(epsilon, (int, float)) else tuple(epsilon)
        self.shape = check_shape(shape)
        self.epsilon = self.epsilon_range[0]

    def on_epoch_start(self, epoch, epochs):
        # SDARTS's 0.03 + (eps_max - 0.03) * epoch / epochs: reaches the maximum one epoch after the last
        self.epsilon = interpolate(*self.epsilon_range, epoch, epochs + 1, self.shape)
        return {"perturbation_epsilon": self.epsilon}


@PERTURBATIONS.register("random_smoothing")
class RandomSmoothing(EpsilonSchedule):
    """SDARTS-RS (Eq. 5): delta ~ Uniform[-epsilon, epsilon] on every op weight."""

    def __init__(self, epsilon=(0.03, 0.3), shape="linear"):
        super().__init__(epsilon, shape)

    def __call__(self, model, train_loss) -> dict[str, torch.Tensor]:
        return {t: torch.empty_like(a).uniform_(-self.epsilon, self.epsilon) for t, a in model.alphas.items()}


@PERTURBATIONS.register("adversarial")
class Adversarial(EpsilonSchedule):
    """SDARTS-ADV (Eq. 6): the delta that maximises the training loss within the L_inf ball of radius
    epsilon, by ``steps`` of projected sign-gradient ascent of step 2 epsilon / steps from a random start,
    with the supernet in evaluation mode (its BatchNorm statistics untouched), as the SDARTS code does; as
    it does too, no perturbation where the attack ended below the unperturbed loss (chosen on the device)."""

    def __init__(self, epsilon=(0.03, 0.3), steps: int = 7, shape="linear"):
        super().__init__(epsilon, shape)
        self.steps = steps

    def __call__(self, model, train_loss):
        eps = self.epsilon
        deltas = {t: torch.empty_like(a).uniform_(-eps, eps) for t, a in model.alphas.items()}
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                before = train_loss()
            for _ in range(self.steps):
                for d in deltas.values():
                    d.requires_grad_(True)
                model.weight_delta = deltas
                grads = torch.autograd.grad(train_loss(), list(deltas.values()))
                deltas = {t: (d + 2 * eps / self.steps * g.sign()).clamp(-eps, eps).detach()
                          for (t, d), g in zip(deltas.items(), grads)}
            model.weight_delta = deltas
            with torch.no_grad():
                raised = (train_loss() > before).to(before.dtype)
            deltas = {t: d * raised for t, d in deltas.items()}
        finally:
            model.weight_delta = None
            model.train(was_training)
        return deltas
