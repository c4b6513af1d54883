"""What a network costs: parameters and multiply-adds per image, counted as the NAS papers report them.

Parameters exclude the auxiliary head, which is dropped after training (DARTS Table 1 and its code's
``count_parameters_in_MB``). Multiply-adds are those of the convolutions and linear layers in one
inference forward pass of a single image (the "mult-adds" / "FLOPs" of DARTS Table 2 and the mobile
setting of NASNet, Zoph et al. 2018: at most 600M on 224x224 ImageNet); BatchNorm, pooling, activations
and additions are not counted, as there.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Cost:
    params: int  # without the auxiliary head
    mult_adds: int  # per image, inference

    def __str__(self) -> str:
        return f"{self.params / 1e6:.3f}M params, {self.mult_adds / 1e6:.1f}M mult-adds"


def count_params(model: nn.Module) -> int:
    """Trainable parameters, leaving out those of the auxiliary head (``auxiliary_head.*``)."""
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith("auxiliary_head."))


@torch.no_grad()
def count_mult_adds(model: nn.Module, input_size: tuple[int, int, int]) -> int:
    """Multiply-adds of the Conv2d and Linear layers for one image of ``input_size`` (C, H, W), in eval mode.

    A conv producing an output of H' x W' x C_out does H' W' C_out (C_in / groups) k_h k_w of them (so a
    depthwise conv counts k_h k_w per output value); a linear layer in x out per row.
    """
    total = 0

    def conv(m: nn.Conv2d, inputs, out):
        nonlocal total
        total += out[0].numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear(m: nn.Linear, inputs, out):
        nonlocal total
        total += out[0].numel() * m.in_features

    hooks = [m.register_forward_hook(conv if isinstance(m, nn.Conv2d) else linear)
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters())
        model(torch.zeros(1, *input_size, device=p.device, dtype=p.dtype))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return total


def cost(model: nn.Module, input_size: tuple[int, int, int]) -> Cost:
    """Parameters (auxiliary head excluded) and multiply-adds per image of ``input_size`` (C, H, W)."""
    return Cost(count_params(model), count_mult_adds(model, input_size))
