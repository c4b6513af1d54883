"""Mixed edges: the one primitive every search space is made of.

A mixed edge holds a set of candidate modules and computes its output from the op weights that the
space's relaxation produced from the architecture parameters. The DARTS cell, and any user model with a
few choice points, are built from it, so every relaxation and regulariser applies to all of them.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn


class MixedEdge(nn.Module):
    """A choice among candidate modules, computed as the weighted sum of all of them.

    DARTS Eq. 2 (Liu et al., ICLR 2019): o_bar(x) = sum_o w_o * o(x), with w = relaxation(alpha).
    """

    def __init__(self, candidates: Mapping[str, nn.Module]):
        super().__init__()
        if not candidates:
            raise ValueError("a mixed edge needs at least one candidate op")
        self.names = list(candidates)
        self.ops = nn.ModuleList(candidates.values())

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return sum(w * op(x) for w, op in zip(weights, self.ops))

    def extra_repr(self) -> str:
        return f"candidates={self.names}"
