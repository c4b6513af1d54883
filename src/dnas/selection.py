"""Selection: how the discrete architecture is read off the relaxed one.

A selection takes, for one node, the strengths of its incoming edges (a matrix: inputs x ops, from the
relaxation's ``strengths``) and the op names, and returns the kept edges as ``(op, input)`` pairs. A
selection may keep fewer edges than others (FairDARTS's threshold): the space then drops nodes left
without edges and writes the genotype in the ``(op, node, input)`` form.
"""
from __future__ import annotations

import torch

from .edges import CONVOLUTIONAL
from .registry import Registry

SELECTIONS = Registry("selection")


@SELECTIONS.register("top_k")
class TopK:
    """DARTS selection (Liu et al., ICLR 2019, Sec. 2.4): each node keeps its k strongest incoming edges,
    an edge's strength being its largest non-zero op weight, and each kept edge its strongest non-zero op.

    ``k=2`` for the convolutional cell, ``k=1`` for the recurrent cell. Ops in ``exclude`` (the zero op)
    never win.
    """

    def __init__(self, k: int = 2, exclude: tuple[str, ...] = ("none",)):
        self.k = k
        self.exclude = tuple(exclude)

    def __call__(self, strengths: torch.Tensor, op_names: list[str]) -> list[tuple[str, int]]:
        allowed = torch.tensor([name not in self.exclude for name in op_names], device=strengths.device)
        if not allowed.any():
            raise ValueError(f"selection excludes every op of {op_names}")
        masked = strengths.detach().masked_fill(~allowed, float("-inf"))
        best, best_op = masked.max(dim=-1)
        # strongest first; a stable sort lets the earlier input win a tie, as in the original code
        order = sorted(range(len(best)), key=lambda j: -best[j].item())[: self.k]
        return [(op_names[best_op[j]], j) for j in order]


@SELECTIONS.register("threshold")
class Threshold:
    """FairDARTS selection (Chu et al., ECCV 2020, Sec. 4.2): an edge is kept when the weight of its
    strongest op (sigmoid(alpha), independent per op) reaches ``threshold`` = 0.85; of those, each node
    keeps at most its ``k`` = 2 strongest, as in the FairDARTS code (``k=None``: no limit). A node may so
    keep one edge or none: not a recurrent cell, whose every node keeps exactly one edge."""

    spaces = CONVOLUTIONAL  # an edge not kept is a node's fewer inputs there, or ``none``

    def __init__(self, threshold: float = 0.85, k: int | None = 2, exclude: tuple[str, ...] = ("none",)):
        self.threshold, self.k = threshold, k
        self.strongest = TopK(k, exclude)

    def __call__(self, strengths, op_names):
        return [(op, j) for op, j in self.strongest(strengths, op_names)
                if strengths[j, op_names.index(op)] >= self.threshold]
