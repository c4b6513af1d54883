"""Selection: how the discrete architecture is read off the relaxed one.

A selection takes, for one node, the strengths of its incoming edges (a matrix: inputs x ops, from the
relaxation's ``strengths``) and the op names, and returns the kept edges as ``(op, input)`` pairs.
"""
from __future__ import annotations

import torch

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
