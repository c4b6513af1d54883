"""Candidate operations of the DARTS cell space, with the exact semantics of the DARTS paper's code.

Liu, Simonyan, Yang. "DARTS: Differentiable Architecture Search", ICLR 2019, Sec. 3.1 and App. A.1:
3x3 and 5x5 separable convolutions (ReLU-Conv-BN applied twice), 3x3 and 5x5 dilated separable
convolutions (dilation 2), 3x3 max and average pooling, identity (skip), and zero (none). Every op maps
C channels to C channels; a stride-2 op halves the spatial size.

``OPS.get(name)(C, stride, affine)`` builds an op. BatchNorm inside the supernet has ``affine=False``
(the paper's search setting); derived networks use ``affine=True``.
"""
from __future__ import annotations

import functools
import sys

import torch
import torch.nn.functional as F
from torch import nn

from .registry import Registry
from .settings import temporarily

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


NCHW_POOLING_DEVICES = ("cuda",)  # where ``AvgPool2d`` pools a channels_last input that takes a gradient NCHW


class AvgPool2d(nn.AvgPool2d):
    """``nn.AvgPool2d``, its gradient right in channels_last on a GPU too. On an H100 with PyTorch 2.11 (CUDA
    13), ``avg_pool2d``'s backward of a channels_last input came out wrong by the gradient's own size (3x3 and
    strides 1 and 2, with count_include_pad either way; its forward right, the NCHW kernels right, max pooling
    right), so every NHWC search there got wrong gradients: a CUDA input laid out channels_last that takes a
    gradient is pooled NCHW (a copy in, one out, and the gradient's back to NHWC; benchmarks/RESULTS.md,
    2026-11-27)."""

    def forward(self, x):
        if x.device.type in NCHW_POOLING_DEVICES and x.requires_grad and channels_innermost(x) and not exporting():
            return super().forward(dense_gradient(x).contiguous()).contiguous(memory_format=torch.channels_last)
        return super().forward(x)


def conv2d(x, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1,
           sampled: bool = False, relu_input: bool = False, copies: int = 1, blocks: int = 1) -> torch.Tensor:
    """``F.conv2d`` (pairs of ints), computed in the form measured fastest on the tensor's device.

    A convolution of stride s > 1 whose taps all fall on every s-th pixel (``reads_every``) runs on those
    pixels alone, with stride 1: y[i] = sum_a w[a] x[s i + d a - p] = sum_a w[a] x_s[i + (d/s) a - p/s],
    x_s = x[::s]. The same products and sums; on the CPU (oneDNN) 1.2-7x faster forward and backward than
    the strided kernels. ``sampled``: ``x`` is x_s already (the fused cell takes those pixels before it
    copies a source to its edges). A dilated depthwise convolution then runs as the undilated one of its
    phases (``depthwise_nhwc``; on the CPU 1.5-5x faster forward and backward, in either layout), and on a
    GPU (``FORM_DEVICES``) every depthwise convolution runs NHWC so, and a grouped pointwise one as
    matrix products (``pointwise_matmul``). On ``TRITON_DEPTHWISE_DEVICES`` a depthwise one of an NCHW input
    (without bias) runs by dnas's own kernels instead (``dnas.kernels.depthwise_conv2d``), any stride and
    dilation on the input as it is; ``relu_input``: of relu(x), there in the same kernels (``depthwise_by_triton``);
    ``copies``: of ``copied_blocks(x, blocks, copies)``, which those kernels read without the copies.
    A trace, export or compilation (TorchScript, ONNX, ``torch.export``, ``torch.compile``) records the
    convolution itself, for any batch and size (of ``x`` whole; a ``sampled`` one takes its form)."""
    if exporting() and not sampled:
        x = copied_blocks(F.relu(x) if relu_input else x, blocks, copies)
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    depthwise = weight.shape[1] == 1 and groups == x.shape[1] * copies == weight.shape[0]
    if depthwise and bias is None and _triton_depthwise(x):
        if sampled:
            x, stride, padding, dilation = _on_pixels_read(x, stride, padding, dilation, weight.shape[-2:], True)
        return triton_kernels("ops.TRITON_DEPTHWISE_DEVICES").depthwise_conv2d(x, weight, stride, padding, dilation,
                                                                               relu_input, copies, blocks)
    x = copied_blocks(F.relu(x) if relu_input else x, blocks, copies)
    given = tuple(stride)
    x, stride, padding, dilation = _on_pixels_read(x, stride, padding, dilation, weight.shape[-2:], sampled)
    if stride != given and channels_innermost(x):  # on the pixels it reads, copied NHWC here: the
        x = x.contiguous(memory_format=torch.channels_last)  # convolution takes a view of odd sizes for NCHW
    d = _nhwc_dilation(x, stride, padding, dilation) if depthwise else None
    if d is not None:
        return depthwise_nhwc(x, weight, bias, stride, padding, d)
    if x.device.type in FORM_DEVICES:
        grouped_pointwise = (groups > 1 and weight.shape[-2:] == (1, 1) and stride == (1, 1) and padding == (0, 0)
                             and bias is None)
        if grouped_pointwise and (x.is_contiguous() or x.shape[1] <= BLOCK_DIAGONAL_CHANNELS
                                  and x.is_contiguous(memory_format=torch.channels_last)):
            return pointwise_matmul(x, weight, groups)
    return _conv2d(x, weight, bias, stride, padding, dilation, groups)


def copied_blocks(x: torch.Tensor, blocks: int, copies: int) -> torch.Tensor:
    """``x`` (N, B C, H, W) with each of its ``blocks`` B blocks of channels ``copies`` k times, the copies of a
    block one after another: (N, B k C, H, W), NCHW (``x`` itself where k = 1)."""
    if copies == 1:
        return x
    n, _, h, w = x.shape
    return x.unflatten(1, (blocks, 1, -1)).expand(n, blocks, copies, -1, h, w).flatten(1, 3)


def _on_pixels_read(x, stride, padding, dilation, kernel, sampled: bool):
    """``x``, stride, padding and dilation of a convolution as ``conv2d`` computes it: one of stride s whose
    taps all fall on every s-th pixel (``reads_every``) on those pixels (``x`` already, where ``sampled``)."""
    s = reads_every(stride, padding, dilation, kernel)
    if s > 1:
        return (x if sampled else pixels(x, step=s), (1, 1), tuple(p // s for p in padding),
                tuple(d // s if n > 1 else 1 for d, n in zip(dilation, kernel)))
    if sampled:
        raise ValueError(f"sampled: this convolution (stride {stride}, padding {padding}, dilation {dilation}) "
                         f"reads other pixels too")
    return x, stride, padding, dilation


def _nhwc_dilation(x, stride, padding, dilation) -> int | None:
    """The d of ``depthwise_nhwc`` for a depthwise convolution on ``x`` (as ``_on_pixels_read`` gives it), None
    where it runs in the layout of ``x``: a dilated one by its phases where they fit, on every device; an
    undilated one on a GPU (``FORM_DEVICES``); none by Triton's kernels (``_triton_depthwise``)."""
    if _triton_depthwise(x):
        return None
    if dilation != (1, 1):
        return dilation[0] if phases_fit(x, stride, padding, dilation) else None
    return 1 if x.device.type in FORM_DEVICES else None


def depthwise_runs_nhwc(x, conv: nn.Conv2d, sampled: bool = False) -> bool:
    """Whether ``conv2d`` computes ``conv`` on ``x`` as a depthwise convolution in NHWC (``depthwise_nhwc``):
    what a fused cell writes NHWC for it, where it would copy its input in."""
    if not conv.groups == conv.in_channels == conv.out_channels:
        return False
    return _nhwc_dilation(*_on_pixels_read(x, conv.stride, conv.padding, conv.dilation, conv.kernel_size,
                                           sampled)) is not None


def depthwise_by_triton(x, conv: nn.Conv2d) -> bool:
    """Whether ``conv2d`` computes ``conv`` on ``x`` as a depthwise convolution by dnas's kernels
    (``_triton_depthwise``), which take a ReLU before it (``relu_input``) and copies of ``x``'s channels
    (``copies``, on ``x`` itself made dense) without kernels or copies of their own."""
    return conv.groups == conv.in_channels == conv.out_channels and conv.bias is None and _triton_depthwise(x)


def _triton_depthwise(x: torch.Tensor) -> bool:
    """Whether a depthwise convolution of ``x`` runs by dnas's own kernels: an NCHW input on a device of
    ``TRITON_DEPTHWISE_DEVICES``."""
    return x.device.type in TRITON_DEPTHWISE_DEVICES and not channels_innermost(x)


def triton_kernels(setting: str):
    """``dnas.kernels``, imported at its first use (by what ``setting`` chose): it needs Triton, which
    PyTorch's CUDA builds bring."""
    try:
        from dnas import kernels
    except ModuleNotFoundError as e:
        if e.name != "triton":
            raise
        raise RuntimeError(f"{setting} names Triton's kernels, which need the triton package (it comes with "
                           f"PyTorch's CUDA builds; else pip install triton)") from e
    return kernels


_second_order = False  # within ``second_derivatives``


def second_derivatives():
    """Within it, each grouped convolution records a backward that is differentiated again by grouped
    convolution kernels (``_GroupedConv``), for the Hessian-vector products of a network's loss (iDARTS).
    PyTorch's own double backward of a grouped convolution runs a convolution per group for a weight
    gradient's term: ~80k calls in an iDARTS step of the paper's search network, on the CPU 1.8x its time."""
    return temporarily(sys.modules[__name__], "_second_order", True)


def _conv2d(x, weight, bias, stride, padding, dilation, groups: int) -> torch.Tensor:
    """``F.conv2d``; a grouped one without bias by ``_GroupedConv`` within ``second_derivatives``."""
    if _second_order and groups > 1 and bias is None and torch.is_grad_enabled():
        pair = nn.modules.utils._pair
        return _GroupedConv.apply(x, weight, pair(stride), pair(padding), pair(dilation), groups)
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)


class _GroupedConv(torch.autograd.Function):
    """``F.conv2d`` whose backward (``_GroupedConvBackward``) is differentiable by grouped kernels."""

    @staticmethod
    def forward(ctx, x, weight, stride, padding, dilation, groups):
        ctx.save_for_backward(x, weight)
        ctx.args = stride, padding, dilation, groups
        return F.conv2d(x, weight, None, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad):  # x and w in the dtype autocast ran the convolution in, a cast on the graph
        x, weight = (t.to(grad.dtype) for t in ctx.saved_tensors)
        return *_GroupedConvBackward.apply(x, weight, grad, *ctx.args), None, None, None, None


class _GroupedConvBackward(torch.autograd.Function):
    """The gradients (gx, gw) of y = conv(x, w) for the output's gradient gy, by ATen's kernels; backward,
    for the gradients ggx, ggw of what used them, each term one grouped kernel:
    d/dgy = conv(ggx, w) + conv(x, ggw), d/dw = the weight gradient of conv(ggx, w) for gy, d/dx = the input
    gradient of conv(x, ggw) for gy (gx and gw are linear in gy, gx in w and gw in x)."""

    @staticmethod
    def forward(ctx, x, weight, grad, stride, padding, dilation, groups):
        ctx.save_for_backward(x, weight, grad)
        ctx.args = stride, padding, dilation, groups
        return _conv_backward(grad, x, weight, ctx.args, (True, True))

    @staticmethod
    def backward(ctx, ggx, ggw):  # either may be None: not used by what followed
        x, weight, grad = ctx.saved_tensors
        conv = lambda a, b: F.conv2d(a, b, None, *ctx.args)
        dx = dweight = dgrad = None
        if ggx is not None:
            ggx = ggx.to(x.dtype)
            dgrad = conv(ggx, weight)
            dweight = _conv_backward(grad, ggx, weight, ctx.args, (False, True))[1]
        if ggw is not None:
            ggw = ggw.to(x.dtype)
            dgrad = conv(x, ggw) if dgrad is None else dgrad + conv(x, ggw)
            dx = _conv_backward(grad, x, ggw, ctx.args, (True, False))[0]
        return dx, dweight, dgrad, None, None, None, None


def _conv_backward(grad, x, weight, args, mask: tuple[bool, bool]):
    """ATen's convolution backward: the gradients of x and of the weight asked for by ``mask``."""
    stride, padding, dilation, groups = args
    gx, gw, _ = torch.ops.aten.convolution_backward(grad, x, weight, None, stride, padding, dilation, False,
                                                    (0, 0), groups, (*mask, False))
    return gx, gw


def exporting() -> bool:
    """Whether the call is being traced or compiled (TorchScript, ONNX, ``torch.compile``): the export then
    records the plain operation rather than the form an eager call computes by."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


#: The device types whose undilated depthwise and grouped pointwise convolutions take the forms ``conv2d``
#: names. Measured on an H100 (2026-11-26, ``benchmarks/conv_variants.py``, forward+backward at the fused
#: cell's shapes, batch 64, fp32): PyTorch runs an NCHW depthwise convolution by its own kernels and an NHWC
#: one by cuDNN's, 3-3.2x faster undilated but 3.5-4x slower dilated; a grouped 1x1 convolution took 1.5-2x
#: less as batched matrix products than as cuDNN's. On the CPU neither form gains (oneDNN).
FORM_DEVICES = ("cuda",)

#: The device types whose depthwise convolutions of NCHW inputs run by dnas's own Triton kernels
#: (``dnas.kernels.depthwise_conv2d``): on the input as it is, in place of the NHWC form and the phases, and
#: so without the copies the fused cell's NCHW step makes for them (629 of a darts-v1 step's 1,207 copies,
#: ``benchmarks/kernel_census.py --gpu-forms --triton-depthwise``).
#: None until measured faster than cuDNN's NHWC kernels with those copies (``benchmarks/conv_variants.py``,
#: search_step.py's ``-tritondw`` paths).
TRITON_DEPTHWISE_DEVICES: tuple[str, ...] = ()

#: The most channels of an NHWC input whose grouped 1x1 convolution runs as one block-diagonal product
#: there. Measured on an H100 (2026-11-26, ``benchmarks/conv_variants.py``, forward+backward, fp32, us, the
#: product against cuDNN's grouped convolution): 48 channels 79 / 145, 128 channels 210 / 250, 256
#: channels 176 / 113, 512 channels 177 / 48: the groups-fold arithmetic (fp32, without TF32) outweighs the
#: copies it saves from 256 channels (the paper's search network's last two stages) on.
BLOCK_DIAGONAL_CHANNELS = 128


def phases_fit(x, stride, padding, dilation) -> bool:
    """Whether ``depthwise_nhwc`` computes this dilated convolution: of one dilation d, stride 1, padding a
    multiple of d and sides divisible by d."""
    d = dilation[0]
    return (dilation[1] == d and stride == (1, 1) and not padding[0] % d and not padding[1] % d
            and not x.shape[2] % d and not x.shape[3] % d)


def depthwise_nhwc(x, weight, bias, stride, padding, d: int) -> torch.Tensor:
    """A depthwise convolution of dilation ``d`` (padding a multiple of d) computed NHWC as one undilated
    convolution of x's d x d phases stacked in the batch (``to_phases``), the "space to batch" of DeepLab's
    atrous convolution (Chen et al., TPAMI 2017): with i = d m + r,
    y[i] = sum_a w[a] x[i + d a - p] = sum_a w[a] x_r[m + a - p/d], x_r[j] = x[d j + r], the same products
    and sums. Returned in the layout of ``x`` (an NCHW one is copied in and out), and so is the gradient of
    ``x``."""
    y = _conv2d(to_phases(x, d), weight, bias, stride, (padding[0] // d, padding[1] // d), 1, x.shape[1])
    return from_phases(y, d, channels_innermost(x))


def to_phases(x: torch.Tensor, d: int) -> torch.Tensor:
    """x (N, C, H, W) as its d x d phases x_r[j] = x[d j + r] stacked in the batch, (d d N, C, H/d, W/d) NHWC
    (a copy; of an NHWC x at d = 1, x itself); the gradient of x dense in the layout of x. Whatever treats
    pixels alike (a 1x1 convolution, a BatchNorm, a ReLU) computes on the phases what it computes on x."""
    if d == 1:
        return dense_gradient(x).contiguous(memory_format=torch.channels_last)
    return _PhaseCopy.apply(x, d, True, True)


def from_phases(y: torch.Tensor, d: int, nhwc: bool) -> torch.Tensor:
    """The image whose d x d phases ``y`` holds (``to_phases``), NHWC where ``nhwc``, else NCHW."""
    if d == 1:
        return y if nhwc else y.contiguous()
    return _PhaseCopy.apply(y, d, False, nhwc)


class _PhaseCopy(torch.autograd.Function):
    """Between an image and its d x d phases (d > 1), one strided copy forward and one backward, the gradient
    in the layout of the input: as views and a ``reshape`` the phases took up to two copies each way."""

    @staticmethod
    def forward(ctx, t, d: int, into_phases: bool, nhwc: bool):
        ctx.args = d, not into_phases, channels_innermost(t)
        return _phase_copy(t, d, into_phases, nhwc)

    @staticmethod
    def backward(ctx, grad):  # by the Function again: a backward differentiated again (create_graph) records it
        return _PhaseCopy.apply(grad, *ctx.args), None, None, None


def _phase_copy(t: torch.Tensor, d: int, into_phases: bool, nhwc: bool) -> torch.Tensor:
    """The elements of ``t`` (an image, or phases) as the phases (NHWC), or as the image (NHWC where ``nhwc``,
    else NCHW): one copy, of t's (d, d, N, H, W, C) view put in the memory order of the result."""
    six = _phase_view(t, d, phases=not into_phases)  # (r1, r2, N, H, W, C): pixel (d h + r1, d w + r2)
    _, _, n, h, w, c = six.shape
    if into_phases:
        return six.contiguous().view(d * d * n, h, w, c).permute(0, 3, 1, 2)
    if nhwc:  # (N, H, r1, W, r2, C)
        return six.permute(2, 3, 0, 4, 1, 5).contiguous().view(n, h * d, w * d, c).permute(0, 3, 1, 2)
    return six.permute(2, 5, 3, 0, 4, 1).contiguous().view(n, c, h * d, w * d)  # (N, C, H, r1, W, r2)


def _phase_view(t: torch.Tensor, d: int, phases: bool) -> torch.Tensor:
    """The elements of phases (d d N, C, H, W) or of an image (N, C, d H, d W), as (d, d, N, H, W, C): a view."""
    if phases:
        return t.permute(0, 2, 3, 1).unflatten(0, (d, d, -1))
    return t.unflatten(3, (-1, d)).unflatten(2, (-1, d)).permute(3, 5, 0, 2, 4, 1)


def relu_nhwc(x: torch.Tensor) -> torch.Tensor:
    """relu(x) of an NCHW ``x``, written NHWC, and its gradient NCHW: one kernel each way, where a ReLU and a
    copy to the NHWC form of a depthwise convolution take two (a backward differentiated again, create_graph,
    takes a few more)."""
    if exporting():
        return F.relu(x).contiguous(memory_format=torch.channels_last)
    return _ReluNHWC.apply(x)


class _ReluNHWC(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        out = torch.clamp_min(x, 0, out=torch.empty_like(x, memory_format=torch.channels_last))
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        out, = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: by an op autograd differentiates again
            return torch.ops.aten.threshold_backward(grad, out, 0).contiguous()
        gx = torch.empty_like(out, memory_format=torch.contiguous_format)
        return torch.ops.aten.threshold_backward.grad_input(grad, out, 0, grad_input=gx)


def dense_gradient(x: torch.Tensor) -> torch.Tensor:
    """x itself; backward, its gradient dense in the layout of x. The gradient would otherwise keep the
    layout of a copy made from x (NHWC for an NCHW x, and every kernel before it in the backward pass with
    it), or come as a strided view of a larger one (a concatenation's backward hands each input a slice of
    its gradient), on which a CPU BatchNorm backward ran up to 25x slower than on a dense one."""
    return _DenseGradient.apply(x) if x.requires_grad and not exporting() else x


def cat_dense_gradients(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The tensors concatenated along the channels (one alone as it is), each getting a dense gradient
    (``dense_gradient``) rather than the slice of the concatenation's gradient its backward hands out: where
    a BatchNorm's output reaches the concatenation with nothing in between that makes a fresh tensor (the
    fused cell's ops, whose last BatchNorms apply Eq. 2's weights; a genotype's ops without drop path)."""
    return torch.cat([dense_gradient(t) for t in tensors], 1) if len(tensors) > 1 else tensors[0]


class _DenseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.layout = torch.channels_last if channels_innermost(x) else torch.contiguous_format
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous(memory_format=ctx.layout)


def global_average(x: torch.Tensor) -> torch.Tensor:
    """(N, C): the mean of each channel of ``x`` over its pixels, with the gradient of ``x`` in the layout of
    x. The pooling's own backward gives NCHW for any layout (it divides an expanded (N, C) gradient), so in
    channels_last every BatchNorm and convolution backward of the last cell would take an NCHW gradient."""
    return F.adaptive_avg_pool2d(dense_gradient(x), 1).flatten(1)


def pointwise_matmul(x, weight, groups: int) -> torch.Tensor:
    """A grouped 1x1 convolution of a dense ``x`` as matrix products, without a copy of ``x``. NCHW:
    x (N, G*C, H, W) is (N, G, C, H*W), and each group's C_out x C weight multiplies its block, batched.
    NHWC: x is (N*H*W, G*C) rows, multiplied by one dense matrix, the block-diagonal one of the groups'
    weights: G times the arithmetic, in one large product. On an H100 (forward+backward, fp32) the NCHW
    form took 0.5-0.65x cuDNN's grouped convolution, the NHWC one per group over the rows' strided blocks
    9x (so not that), the block-diagonal one 0.55-0.85x up to 128 channels, 1.6-3.7x wider
    (``BLOCK_DIAGONAL_CHANNELS``)."""
    n, c, h, w = x.shape
    m = weight.view(groups, weight.shape[0] // groups, -1)  # (G, C_out, C)
    if x.is_contiguous():
        return torch.matmul(m, x.view(n, groups, -1, h * w)).view(n, -1, h, w)
    dense = _BlockDiagonal.apply(m)  # (G*C_out, G*C)
    return (x.permute(0, 2, 3, 1).reshape(-1, c) @ dense.t()).view(n, h, w, -1).permute(0, 3, 1, 2)


class _BlockDiagonal(torch.autograd.Function):
    """(G, C_out, C) weights -> the (G*C_out, G*C) block-diagonal matrix of them, by a multiply with a mask
    made once; backward, the gradient's diagonal blocks, a view (a masked product's own backward would
    multiply and sum: two kernels for each of ~190 products a step)."""

    @staticmethod
    def forward(ctx, m):
        ctx.shape = m.shape
        return (m.unsqueeze(2) * _block_mask(m.shape[0], m.dtype, m.device)).flatten(2).flatten(0, 1)

    @staticmethod
    def backward(ctx, grad):
        g, c_out, c = ctx.shape
        return grad.reshape(g, c_out, g, c).diagonal(0, 0, 2).permute(2, 0, 1)


@functools.cache
def _block_mask(groups: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(G, 1, G, 1): 1 where a group meets itself. Made once: an identity made per call is one more kernel
    for each of ~190 products a step."""
    return torch.eye(groups, dtype=dtype, device=device).view(groups, 1, groups, 1)


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


def batch_norm_by_parts(x, mean, var, weight=None, bias=None, eps: float = 1e-5) -> torch.Tensor:
    """``F.batch_norm(x, mean, var, weight, bias, True, 1.0, eps)``: ``x`` normalised by its batch's statistics
    (Ioffe & Szegedy, ICML 2015, Alg. 1), which are written into ``mean`` and ``var`` (the unbiased variance),
    with the batch cut into parts for PyTorch's CUDA kernels. Those reduce each channel of an NCHW input in one
    thread block, C blocks for the statistics and C again backward, which leaves most of a GPU idle where C
    is small and a channel large (in the DARTS search network 16-256 channels of 64 x 32 x 32 values; its
    BatchNorms took 28% of an eager step's device time on an H200, docs/speed.md). Here k parts of the batch
    are k x C channels of one view, reduced by ``SyncBatchNorm``'s kernels in k x C blocks, and the parts'
    statistics merged as it merges its devices' (Chan, Golub & LeVeque's pairwise mean and variance): the
    same numbers, forward in PyTorch's 3 kernels, backward in 5 (6 with a weight's gradient) against its 1,
    all but 2 of them on k x C values or fewer. Where one part is all (``batch_parts``), the input is not dense
    NCHW or its dtype not the statistics' (bf16 under autocast), ``F.batch_norm`` runs it. CUDA only."""
    n, c = x.shape[:2]
    k = batch_parts(n, c, x[0, 0].numel())
    if k == 1 or not x.is_contiguous() or x.dtype != mean.dtype or exporting():
        return F.batch_norm(x, mean, var, weight, bias, True, 1.0, eps)
    return _BatchNormByParts.apply(x, weight, bias, eps, k, (mean, var))


#: ``batch_norm_by_parts``: the most channels its parts make together (a few thread blocks for each of an
#: H100's 132 multiprocessors), and the fewest values of a channel in one part (work enough for a block).
PART_CHANNELS, PART_VALUES = 1024, 4096


def batch_parts(n: int, channels: int, pixels: int) -> int:
    """k for ``batch_norm_by_parts`` of a batch of ``n`` inputs: the most parts (a power of 2 that divides n)
    whose channels are at most ``PART_CHANNELS`` and each of which holds ``PART_VALUES`` values of a channel at
    least. At batch 64: 16 parts for 16 channels of 32 x 32, 8 for 128, 4 for 256 channels of 16 x 16, one
    (no parts) for any channels of 8 x 8."""
    k = 1
    while n % (2 * k) == 0 and 2 * k * channels <= PART_CHANNELS and n // (2 * k) * pixels >= PART_VALUES:
        k *= 2
    return k


class _BatchNormByParts(torch.autograd.Function):
    """``batch_norm_by_parts``: part b's channel c is channel b C + c of the (N / k, k C, H W) view of ``x``
    (dense NCHW), so the parts' statistics are (k, C) as they come. Backward, each part's sums of the gradient
    and of the gradient times x - mean (the batch's mean) are added over the parts."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, k, statistics):
        n, c = x.shape[:2]
        parts = x.view(n // k, k * c, -1)
        means, invstds = torch.batch_norm_stats(parts, eps)
        per_part = filled(parts.shape[0] * parts.shape[2], k, x.dtype, x.device)
        mean, invstd = torch.batch_norm_gather_stats_with_counts(
            parts, means.view(k, c), invstds.view(k, c), *statistics, 1.0, eps, per_part)
        ctx.save_for_backward(x, weight, mean, invstd, invstds)
        ctx.k, ctx.eps = k, eps
        return torch.batch_norm_elemt(x, weight, bias, mean, invstd, eps)

    @staticmethod
    def backward(ctx, grad):
        x, weight, mean, invstd, invstds = ctx.saved_tensors
        wanted = ctx.needs_input_grad[:3]
        if torch.is_grad_enabled():  # create_graph: by PyTorch's backward, which autograd differentiates again
            grads = torch.ops.aten.native_batch_norm_backward(grad, x, weight, None, None, mean, invstd, True,
                                                              ctx.eps, list(wanted))
            return *(g if want else None for g, want in zip(grads, wanted)), None, None, None
        n, c = x.shape[:2]
        k, grad = ctx.k, grad.contiguous()
        parts = lambda t: t.view(n // k, k * c, -1)
        # each part's sums about the batch's mean (the parts' own 1 / std, which the sums do not use: no copy)
        sums = torch.batch_norm_backward_reduce(parts(grad), parts(x), mean.repeat(k), invstds, None, True, False,
                                                False)[:2]
        sum_dy, sum_dy_xmu = torch.stack(sums).view(2, k, c).sum(1)
        gx = gw = gb = None
        if wanted[0]:
            gx = torch.batch_norm_backward_elemt(grad, x, mean, invstd, weight, sum_dy, sum_dy_xmu,
                                                 filled(x.numel() // c, 1, torch.int32, x.device))
        if wanted[1]:
            gw = sum_dy_xmu * invstd
        if wanted[2]:
            gb = sum_dy
        return gx, gw, gb, None, None, None


@functools.cache
def filled(value: float, size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A constant vector, made once for each value, size, dtype and device: a fill per call would be one more
    kernel (a BatchNorm's ones and zeros, the counts of its parts)."""
    return torch.full((size,), value, dtype=dtype, device=device)


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
OPS.register("avg_pool_3x3", lambda C, stride, affine: AvgPool2d(3, stride, 1, count_include_pad=False))
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


def check_ops(ops) -> tuple[str, ...]:
    """A space's candidate ops as a tuple, each registered (an unknown one fails listing the valid ones) and
    of the shapes an op must give (``check_op_shapes``), distinct, and one at least besides ``none`` (which a
    derived cell never takes)."""
    for name in ops:
        check_op_shapes(name, OPS.get(name))
    if len(set(ops)) < len(ops) or set(ops) <= {"none"}:
        raise ValueError(f"ops must be distinct and include one besides 'none', got {', '.join(ops) or 'no ops'}")
    return tuple(ops)


@functools.cache
def check_op_shapes(name: str, factory) -> None:
    """An op takes C channels to C and at stride 2 halves the sides: a ValueError naming the op where it does
    not (a user's op, checked once on a small input), rather than a size mismatch deep in a cell's sum."""
    x = torch.zeros(2, 4, 16, 16)
    for stride in (1, 2):
        want = (2, 4, 16 // stride, 16 // stride)
        try:  # the random numbers its weights draw are given back: a search's seed gives the same weights
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                y = factory(4, stride, False).eval()(x)
        except Exception as e:
            raise ValueError(f"op {name!r} (C=4, stride {stride}) fails on a (2, 4, 16, 16) input: "
                             f"{type(e).__name__}: {e}") from e
        if tuple(y.shape) != want:
            raise ValueError(f"op {name!r} (C=4, stride {stride}) takes a (2, 4, 16, 16) input to {tuple(y.shape)}, "
                             f"not {want}: an op keeps its C channels and at stride 2 halves the height and width")


#: Ops without parameters, whose share in a derived cell signals the DARTS collapse.
PARAMETER_FREE_OPS = frozenset({"none", "avg_pool_3x3", "max_pool_3x3", "skip_connect"})

# NAS-Bench-201's convolutions (Dong & Yang, ICLR 2020, Sec. 2.1): a plain ReLU -> Conv -> BN, not separable
OPS.register("nor_conv_1x1", lambda C, stride, affine: ReLUConvBN(C, C, 1, stride, 0, affine))
OPS.register("nor_conv_3x3", lambda C, stride, affine: ReLUConvBN(C, C, 3, stride, 1, affine))
