"""Relaxations: how an edge turns its architecture parameters alpha into weights over candidate ops.

A relaxation maps alpha of shape (edges, ops) to op weights of the same shape. ``weights`` is what the
supernet multiplies the ops by during search; ``strengths`` is the deterministic view that selection
and reports read (for softmax the two coincide).
"""
from __future__ import annotations

import torch

from .registry import Registry

RELAXATIONS = Registry("relaxation")


@RELAXATIONS.register("softmax")
class Softmax:
    """DARTS continuous relaxation, Eq. 1 of Liu et al. (ICLR 2019): w_o = exp(alpha_o) / sum_o' exp(alpha_o')."""

    def weights(self, alpha: torch.Tensor) -> torch.Tensor:
        return torch.softmax(alpha, dim=-1)

    def strengths(self, alpha: torch.Tensor) -> torch.Tensor:
        return self.weights(alpha)
