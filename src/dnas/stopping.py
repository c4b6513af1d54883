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
    validation batches, and stop (DARTS-ES) when it grows: when its mean over the last ``window`` epochs,
    lambda(t), and its mean over the ``window`` epochs that end ``lag`` epochs earlier, lambda(t - lag), give
    lambda(t - lag) / lambda(t) < ``threshold``, returning the genotype of epoch t - lag.

    The paper's rule: window = lag = 5, threshold 0.75. Its code's (EVLocalAvg in automl/RobustDARTS):
    window 5, lag 4 (``delta``), threshold 1 / 1.3 (``factor``), no decision before its epoch
    es_start_epoch + lag + window // 2 (``start_epoch`` 17, counting from 1), and its means are centred, so
    it returns the genotype of epoch t - lag - window // 2 (``centred``)."""

    def __init__(self, window: int = 5, threshold: float = 0.75, lag: int | None = None, start_epoch: int = 1,
                 centred: bool = False, batches: int = 2, iterations: int = 20, stop: bool = True):
        lag = window if lag is None else lag
        counts = {"window": window, "lag": lag, "batches": batches, "iterations": iterations}
        wrong = [f"{name} must be >= 1, not {v}" for name, v in counts.items() if v < 1]
        if not 0 < threshold < 1:
            wrong.append(f"threshold is the ratio of the earlier mean to the later one that stops, between 0 and 1, "
                         f"not {threshold}")
        if wrong:
            raise ValueError("hessian_eigenvalue: " + "; ".join(wrong))
        self.window, self.threshold, self.lag, self.start_epoch = window, threshold, lag, start_epoch
        self.centred, self.batches, self.iterations, self.stop = centred, batches, iterations, stop
        self.history: list[float] = []

    def __call__(self, search, record):
        value = dominant_eigenvalue(search, self.batches, self.iterations)
        record["hessian_eigenvalue"] = value
        self.history.append(value)
        h, k, lag = self.history, self.window, self.lag
        if not self.stop or len(h) < k + lag or record["epoch"] < self.start_epoch:
            return None
        mean = lambda end: sum(h[end - k:end]) / k  # over the k epochs before index end
        now, before = mean(len(h)), mean(len(h) - lag)
        if now > 0 and before / now < self.threshold:
            return Stop(f"the Hessian eigenvalue grew from {before:.4g} to {now:.4g} (ratio < {self.threshold})",
                        record["epoch"] - lag - (k // 2 if self.centred else 0))
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
