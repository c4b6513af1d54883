"""Stopping: when a search ends before its last epoch, and which epoch's genotype it returns.

A stopper is called after each epoch as ``stopper(search, record)`` (``record`` is the epoch's metrics
line, which it may extend) and returns None to go on or a ``Stop``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .ops import PARAMETER_FREE_OPS
from .registry import Registry

STOPPERS = Registry("stopper")


@dataclass(frozen=True)
class Stop:
    reason: str
    genotype_epoch: int  # the epoch (1-based) whose derived genotype the search returns


@STOPPERS.register("skip_count")
class SkipCount:
    """DARTS+ (Liang et al., arXiv:1909.06035, Sec. 3.2, criterion 1): stop once the derived normal cell
    has ``max_skips`` (2) or more skip connections, returning the genotype of that epoch."""

    def __init__(self, max_skips: int = 2):
        self.max_skips = max_skips

    def __call__(self, search, record):
        skips = record.get("skip_connect_normal", 0)
        if skips >= self.max_skips:
            return Stop(f"the normal cell has {skips} skip connections (>= {self.max_skips})", record["epoch"])
        return None


@STOPPERS.register("rank_stability")
class RankStability:
    """DARTS+ criterion 2: stop once the ranking of the learnable (parametric) ops by alpha has not
    changed on any edge for ``patience`` (10) epochs."""

    def __init__(self, patience: int = 10):
        self.patience = patience
        self.last, self.stable = None, 0

    def __call__(self, search, record):
        model = search.model
        cols = [i for i, n in enumerate(model.ops) if n not in PARAMETER_FREE_OPS]
        ranking = torch.cat([a.detach()[:, cols].argsort(dim=-1) for a in model.alphas.values()])
        self.stable = self.stable + 1 if self.last is not None and torch.equal(ranking, self.last) else 0
        self.last = ranking
        if self.stable >= self.patience:
            return Stop(f"the ranking of learnable ops was stable for {self.patience} epochs", record["epoch"])
        return None

    def state_dict(self):
        return {"last": self.last, "stable": self.stable}

    def load_state_dict(self, state):
        self.last, self.stable = state["last"], state["stable"]


@STOPPERS.register("hessian_eigenvalue")
class HessianEigenvalue:
    """R-DARTS (Zela et al., ICLR 2020, Sec. 4.3 and 5): track the dominant eigenvalue of the Hessian of
    the validation loss w.r.t. alpha, by power iteration on Hessian-vector products over ``batches``
    validation batches, and stop (DARTS-ES) when its mean over the last ``window`` epochs divided by its
    mean over the ``window`` epochs before falls below ``threshold`` ... i.e. when lambda_max(t - window) /
    lambda_max(t) < threshold (0.75, k = 5), returning the genotype of epoch t - window."""

    def __init__(self, window: int = 5, threshold: float = 0.75, batches: int = 2, iterations: int = 20,
                 stop: bool = True):
        self.window, self.threshold, self.batches, self.iterations, self.stop = (window, threshold, batches,
                                                                                 iterations, stop)
        self.history: list[float] = []

    def __call__(self, search, record):
        value = dominant_eigenvalue(search, self.batches, self.iterations)
        record["hessian_eigenvalue"] = value
        self.history.append(value)
        k = self.window
        if not self.stop or len(self.history) < 2 * k:
            return None
        before, now = sum(self.history[-2 * k: -k]) / k, sum(self.history[-k:]) / k
        if now > 0 and before / now < self.threshold:
            return Stop(f"the Hessian eigenvalue grew from {before:.4g} to {now:.4g} (ratio < {self.threshold})",
                        record["epoch"] - k)
        return None

    def state_dict(self):
        return {"history": list(self.history)}

    def load_state_dict(self, state):
        self.history = list(state["history"])


def dominant_eigenvalue(search, batches: int, iterations: int) -> float:
    """Largest-magnitude eigenvalue of d^2 L_val / d alpha^2 by power iteration (Hessian-vector products
    by double backward), on the first ``batches`` batches of the search-val loader."""
    from .search import batch_loss

    model = search.model
    model.train()
    alphas = model.arch_parameters()
    loss = 0
    for i, batch in enumerate(search.val_loader):
        if i == batches:
            break
        loss = loss + batch_loss(model, batch)
    grads = torch.autograd.grad(loss, alphas, create_graph=True)
    v = [torch.randn_like(a) for a in alphas]
    value = 0.0
    for _ in range(iterations):
        norm = torch.sqrt(sum((x * x).sum() for x in v))
        v = [x / norm for x in v]
        hv = torch.autograd.grad(grads, alphas, grad_outputs=v, retain_graph=True)
        value = sum((h * x).sum() for h, x in zip(hv, v)).item()
        v = [h.detach() for h in hv]
    return value
