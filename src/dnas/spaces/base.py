"""What every supernet shares: its architecture parameters (``alphas``, and PC-DARTS's edge ``betas`` where
the space has them) kept apart from the weights, which alone the weight optimiser sees."""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

ARCH_DICTS = ("alphas", "betas")


class Supernet(nn.Module):
    """A search space's network; subclasses define ``alphas`` (and optionally ``betas``) ParameterDicts."""

    fused = False  # whether its cells run by the fast path of fused.py (a space option where there is one)
    reductions = 2  # how often it halves the images' sides (a FactorizedReduce or a pooled shortcut: of an even side)

    def check_image_size(self, size: tuple[int, int]) -> None:
        """A ValueError unless the network takes images of ``size`` (height, width): each reduction halves an
        even side."""
        m = 2 ** self.reductions
        if size[0] % m or size[1] % m:
            raise ValueError(f"the {type(self).__name__} halves the images' sides {self.reductions} times, each an "
                             f"even side: {size[0]}x{size[1]} images do not fit; crop or resize them to sides that "
                             f"are multiples of {m}")

    def arch_parameters(self) -> list[nn.Parameter]:
        """The alphas (and betas), in the order of ``named_parameters``, from their dicts alone: an architecture
        step reads them each time, and finding them among all parameters walks the ~5,000 modules of the
        paper's search network (8 ms on the CPU)."""
        return [p for name, params in self.named_children() if name in ARCH_DICTS for p in params.parameters()]

    def named_weight_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        return ((n, p) for n, p in self.named_parameters() if n.split(".", 1)[0] not in ARCH_DICTS)

    def weight_parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_weight_parameters()]


def node_softmax(beta: torch.Tensor, inputs_per_node: list[int]) -> torch.Tensor:
    """PC-DARTS edge normalisation (Xu et al., ICLR 2020, Eq. 4): softmax of the edge betas over the incoming
    edges of each node, edges listed node by node."""
    return torch.cat([torch.softmax(b, dim=0) for b in torch.split(beta, inputs_per_node)])
