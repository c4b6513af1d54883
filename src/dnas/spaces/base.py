"""What every supernet shares: its architecture parameters (``alphas``, and PC-DARTS's edge ``betas`` where
the space has them) kept apart from the weights, which alone the weight optimiser sees."""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

ARCH_PREFIXES = ("alphas.", "betas.")


class Supernet(nn.Module):
    """A search space's network; subclasses define ``alphas`` (and optionally ``betas``) ParameterDicts."""

    fused = False  # whether its cells run by the fast path of fused.py (a space option where there is one)

    def arch_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if n.startswith(ARCH_PREFIXES)]

    def named_weight_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        return ((n, p) for n, p in self.named_parameters() if not n.startswith(ARCH_PREFIXES))

    def weight_parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_weight_parameters()]

    def runs_fused(self, x: torch.Tensor) -> bool:
        """Whether a forward of ``x`` takes the fused cells (fused.py): where ``fused`` is set, but for a
        forward without autograd on the CPU (the evaluation, DARTS-PT's projection), where the readable
        cells, which compute the same, ran 1.3-1.6x faster at batch 64 (PC-DARTS's at 256 the exception):
        the fused path's large concatenated tensors miss the caches there, where a training step keeps every
        tensor for its backward anyway (docs/speed.md)."""
        return self.fused and (torch.is_grad_enabled() or x.device.type != "cpu")


def node_softmax(beta: torch.Tensor, inputs_per_node: list[int]) -> torch.Tensor:
    """PC-DARTS edge normalisation (Xu et al., ICLR 2020, Eq. 4): softmax of the edge betas over the incoming
    edges of each node, edges listed node by node."""
    return torch.cat([torch.softmax(b, dim=0) for b in torch.split(beta, inputs_per_node)])
