"""Candidate operations of the DARTS cell space, with the exact semantics of the DARTS paper's code.

Liu, Simonyan, Yang. "DARTS: Differentiable Architecture Search", ICLR 2019, Sec. 3.1 and App. A.1:
3x3 and 5x5 separable convolutions (ReLU-Conv-BN applied twice), 3x3 and 5x5 dilated separable
convolutions (dilation 2), 3x3 max and average pooling, identity (skip), and zero (none). Every op maps
C channels to C channels; a stride-2 op halves the spatial size.

``OPS.get(name)(C, stride, affine)`` builds an op. BatchNorm inside the supernet has ``affine=False``
(the paper's search setting); derived networks use ``affine=True``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import Registry

OPS = Registry("op")


class ReLUConvBN(nn.Sequential):
    """ReLU -> Conv -> BN: the unit every parametric DARTS op is made of."""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True):
        super().__init__(
            nn.ReLU(inplace=False),
            Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )


class DilConv(nn.Sequential):
    """ReLU -> depthwise conv (dilated) -> pointwise conv -> BN."""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, dilation, affine=True):
        super().__init__(
            nn.ReLU(inplace=False),
            Conv2d(C_in, C_in, kernel_size, stride, padding, dilation=dilation, groups=C_in, bias=False),
            Conv2d(C_in, C_out, 1, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )


class SepConv(nn.Sequential):
    """Separable convolution applied twice, the first with the stride (DARTS App. A.1)."""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True):
        super().__init__(
            DilConv(C_in, C_in, kernel_size, stride, padding, 1, affine),
            DilConv(C_in, C_out, kernel_size, 1, padding, 1, affine),
        )


class Zero(nn.Module):
    """The ``none`` op: a zero tensor of the output's shape (strided when the edge reduces)."""

    def __init__(self, stride):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
    """Halve the spatial size with two stride-2 1x1 convs, the second shifted by one pixel, concatenated."""

    def __init__(self, C_in, C_out, affine=True):
        super().__init__()
        if C_out % 2:
            raise ValueError(f"FactorizedReduce needs an even number of output channels, got {C_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
        self.conv_2 = Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def forward(self, x):
        x = self.relu(x)
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(pixels(x, start=1))], dim=1))


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (zero padding) computed by ``conv2d``: the same parameters, the same result."""

    def _conv_forward(self, x, weight, bias):
        return conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)


def conv2d(x, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1,
           sampled: bool = False) -> torch.Tensor:
    """``F.conv2d`` (pairs of ints). A convolution of stride s > 1 whose taps all fall on every s-th pixel
    (``reads_every``) runs on those pixels alone, with stride 1:
    y[i] = sum_a w[a] x[s i + d a - p] = sum_a w[a] x_s[i + (d/s) a - p/s], x_s = x[::s]. The same products
    and sums; on the CPU (oneDNN) 1.2-7x faster forward and backward than the strided kernels. ``sampled``:
    ``x`` is x_s already (the fused cell takes those pixels before it copies a source to its edges)."""
    s = reads_every(stride, padding, dilation, weight.shape[-2:])
    if s == 1:
        if sampled:
            raise ValueError(f"sampled: this convolution (stride {stride}, padding {padding}, dilation {dilation}) "
                             f"reads other pixels too")
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    if not sampled:
        x = pixels(x, step=s)
    if channels_innermost(x):  # copied NHWC here: the convolution takes a view of odd sizes for NCHW
        x = x.contiguous(memory_format=torch.channels_last)
    return F.conv2d(x, weight, bias, 1, tuple(p // s for p in padding),
                    tuple(d // s if n > 1 else 1 for d, n in zip(dilation, weight.shape[-2:])), groups)


def reads_every(stride, padding, dilation, kernel) -> int:
    """s where a convolution of stride s > 1 reads every s-th pixel only, else 1: a 1x1 convolution without
    padding (FactorizedReduce's), or one whose dilation and padding are multiples of s (a dilated op's on
    a reducing edge)."""
    s = stride[0]
    if s == 1 or stride[1] != s or any(p % s or (n > 1 and d % s) for p, d, n in zip(padding, dilation, kernel)):
        return 1
    return s


def pixels(x: torch.Tensor, start: int = 0, step: int = 1) -> torch.Tensor:
    """``x[:, :, start::step, start::step]`` in the layout of ``x``: sliced on (N, H, W, C) where ``x`` is
    channels_last, so that the slice's backward fills an NHWC gradient (the backward of a slice of the 4-d
    tensor fills a fresh NCHW one, and the gradients before it follow)."""
    if channels_innermost(x):
        return x.permute(0, 2, 3, 1)[:, start::step, start::step].permute(0, 3, 1, 2)
    return x[:, :, start::step, start::step]


def channels_innermost(t: torch.Tensor) -> bool:
    """Whether ``t`` (N, C, H, W) is laid out channels_last (NHWC), if not densely: a channel slice of it."""
    return t.stride(1) == 1 and t.shape[-2:].numel() > 1


class Conv7x1x1x7(nn.Sequential):
    """ReLU -> 1x7 conv -> 7x1 conv -> BN, an op of the NASNet and AmoebaNet cells."""

    def __init__(self, C, stride, affine=True):
        super().__init__(
            nn.ReLU(inplace=False),
            Conv2d(C, C, (1, 7), stride=(1, stride), padding=(0, 3), bias=False),
            Conv2d(C, C, (7, 1), stride=(stride, 1), padding=(3, 0), bias=False),
            nn.BatchNorm2d(C, affine=affine),
        )


OPS.register("none", lambda C, stride, affine: Zero(stride))
OPS.register("avg_pool_3x3", lambda C, stride, affine: nn.AvgPool2d(3, stride, 1, count_include_pad=False))
OPS.register("max_pool_3x3", lambda C, stride, affine: nn.MaxPool2d(3, stride, 1))
OPS.register(
    "skip_connect",
    lambda C, stride, affine: nn.Identity() if stride == 1 else FactorizedReduce(C, C, affine),
)
OPS.register("sep_conv_3x3", lambda C, stride, affine: SepConv(C, C, 3, stride, 1, affine))
OPS.register("sep_conv_5x5", lambda C, stride, affine: SepConv(C, C, 5, stride, 2, affine))
OPS.register("sep_conv_7x7", lambda C, stride, affine: SepConv(C, C, 7, stride, 3, affine))
OPS.register("dil_conv_3x3", lambda C, stride, affine: DilConv(C, C, 3, stride, 2, 2, affine))
OPS.register("dil_conv_5x5", lambda C, stride, affine: DilConv(C, C, 5, stride, 4, 2, affine))
OPS.register("conv_7x1_1x7", lambda C, stride, affine: Conv7x1x1x7(C, stride, affine))

#: The 8 candidate ops of the DARTS search space (DARTS Sec. 3.1), in the original code's order.
DARTS_OPS = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)

#: Ops without parameters, whose share in a derived cell signals the DARTS collapse.
PARAMETER_FREE_OPS = frozenset({"none", "avg_pool_3x3", "max_pool_3x3", "skip_connect"})

# NAS-Bench-201's convolutions (Dong & Yang, ICLR 2020, Sec. 2.1): a plain ReLU -> Conv -> BN, not separable
OPS.register("nor_conv_1x1", lambda C, stride, affine: ReLUConvBN(C, C, 1, stride, 0, affine))
OPS.register("nor_conv_3x3", lambda C, stride, affine: ReLUConvBN(C, C, 3, stride, 1, affine))
