"""GPU kernels of dnas's own (Triton), for what PyTorch's kernels run far below a GPU's bandwidth.

A training BatchNorm (Ioffe & Szegedy, ICML 2015, Alg. 1) of an NCHW input: PyTorch's CUDA kernels reduce
each channel in one thread block, C blocks for the statistics and C again backward, which leaves most of a GPU
idle where C is small and a channel large (the DARTS search network's fused cells: 16-256 channels of
64 x 32 x 32 values at batch 64; its BatchNorms took 28% of an eager step's device time on an H200,
docs/speed.md). Here each channel's values are cut into chunks, one program each (``PROGRAMS`` in all):

* forward, one kernel sums each chunk's values and squares (shifted by the channel's first value, so that
  the variance does not cancel), the next merges a channel's sums into its mean and variance and normalises
  its chunk (the program of a channel's first chunk writes the batch statistics);
* backward, one kernel sums each chunk's dy and dy (x - mean), the next merges them and writes
  dx = w / std (dy - mean(dy) - x^ mean(dy x^)), and the first chunk's program the weight's and bias's gradients;
* with ``relu_nhwc``, the ReLU after it on the way, written NHWC (what a separable convolution's second
  depthwise convolution reads on a GPU, ``ops.relu_nhwc``): the output relu(y), and backward
  dy = dz (z > 0) from the NHWC gradient dz and output z, each one kernel fewer.

A depthwise convolution of an NCHW input (``depthwise_conv2d``): PyTorch computes an fp32 one by cuDNN only
in NHWC, and its own NCHW kernels were 3-3.2x slower on an H100, so a GPU step copies the NCHW cell's
tensors to NHWC and back around each (and dilated ones to their phases: ``ops.conv2d``). Here one kernel
reads NCHW for any kernel size, stride and dilation, forward and for each gradient, cut like the
BatchNorm: each channel's values in chunks, one program each; a ReLU before it (a separable convolution's
second) computed on the way in, its gradient on the way out; the weight's gradient summed over the programs by
atomic adds, into a buffer the forward zeroed (a sum of its own was one more kernel per convolution, 378 of a
darts-v1 step's).

The module is imported only when chosen (``fused.BATCH_NORM_KERNELS``, ``ops.TRITON_DEPTHWISE_DEVICES``):
Triton comes with PyTorch's CUDA builds. Without a GPU its interpreter (``TRITON_INTERPRET=1`` before this
module is imported) runs the same kernels on CPU tensors, which is how the tests check them on the CPU.
"""
import os

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from . import ops

#: Whether Triton's interpreter runs the kernels, on any device's tensors, one program after another
#: (``TRITON_INTERPRET``, read as Triton reads it when the kernels below are defined).
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0").upper() in ("1", "TRUE", "YES", "ON")

#: About how many programs a BatchNorm's kernels run, how many values of a channel each reads at once, and of
#: how many channels (``NHWC_CHANNELS`` where it also reads or writes NHWC, whose channels are then its
#: contiguous bytes; it reads about as many values in all): on a GPU a few programs for each of an H100's 132
#: multiprocessors; under the interpreter few programs of many channels.
PROGRAMS, BLOCK, CHANNELS, NHWC_CHANNELS = (8, 1024, 64, 64) if INTERPRETED else (2048, 1024, 1, 32)

#: How many products a depthwise convolution's program takes at once: of each of its taps (a power of two of
#: them, the kernel's padded) with as many values of each of its ``CHANNELS`` channels.
TILE = 2 ** 20 if INTERPRETED else 4096


def _on_cuda(x: torch.Tensor) -> None:
    """Refuses a tensor the kernels cannot run on."""
    if x.device.type != "cuda" and not INTERPRETED:
        raise ValueError(f"dnas.kernels runs on CUDA tensors, not {x.device.type} ones (on any device's only under "
                         f"Triton's interpreter: TRITON_INTERPRET=1 before dnas.kernels is imported)")


def batch_norm(x, mean, var, weight=None, bias=None, eps: float = 1e-5, relu_nhwc: bool = False) -> torch.Tensor:
    """``F.batch_norm(x, mean, var, weight, bias, True, 1.0, eps)``: ``x`` normalised by its batch's
    statistics, which are written into ``mean`` and ``var`` (the unbiased variance), by this module's kernels;
    with ``relu_nhwc``, ``ops.relu_nhwc`` of that in the same kernels. Where ``x`` is not dense NCHW, its dtype
    not the statistics' (bf16 under autocast), a channel holds one value, or the call is traced or compiled,
    PyTorch's kernels run it."""
    _on_cuda(x)
    values = x.numel() // x.shape[1]
    if not x.is_contiguous() or x.dtype != mean.dtype or values < 2 or x.numel() >= 2 ** 31 or ops.exporting():
        y = F.batch_norm(x, mean, var, weight, bias, True, 1.0, eps)
        return ops.relu_nhwc(y) if relu_nhwc else y
    return _BatchNorm.apply(x, weight, bias, eps, (mean, var), relu_nhwc)


class _BatchNorm(torch.autograd.Function):
    """``batch_norm``. A double backward (iDARTS's) runs PyTorch's own backward, which autograd
    differentiates again, from the statistics this forward saved."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, statistics, relu_nhwc):
        grid = _Grid(x, relu_nhwc)
        partials = x.new_empty((2, grid.channels, grid.chunks), dtype=grid.accumulate)
        saved = x.new_empty((2, grid.channels), dtype=grid.accumulate)  # mean, 1 / std
        y = torch.empty_like(x, memory_format=torch.channels_last if relu_nhwc else torch.contiguous_format)
        _chunk_sums[grid.programs](x, x, x, x, partials, *grid.args, SHIFT=True, **grid.meta)
        _normalise[grid.programs](x, y, partials, _or(weight, x), _or(bias, x), *statistics, saved, eps,
                                  *grid.args, HAS_WEIGHT=weight is not None,
                                  HAS_BIAS=bias is not None, **grid.meta)
        ctx.save_for_backward(x, weight, saved, y if relu_nhwc else None)
        ctx.eps, ctx.relu_nhwc, ctx.grid = eps, relu_nhwc, grid
        return y

    @staticmethod
    def backward(ctx, dz):
        x, weight, saved, z = ctx.saved_tensors
        wanted = ctx.needs_input_grad[:3]
        if torch.is_grad_enabled():  # create_graph
            dy = torch.ops.aten.threshold_backward(dz, z, 0).contiguous() if ctx.relu_nhwc else dz
            grads = torch.ops.aten.native_batch_norm_backward(dy, x, weight, None, None, saved[0], saved[1], True,
                                                              ctx.eps, list(wanted))
            return *(g if want else None for g, want in zip(grads, wanted)), None, None, None
        grid = ctx.grid
        dz = dz.contiguous(memory_format=torch.channels_last if ctx.relu_nhwc else torch.contiguous_format)
        partials = x.new_empty((2, grid.channels, grid.chunks), dtype=grid.accumulate)
        _chunk_sums[grid.programs](dz, _or(z, x), x, saved, partials, *grid.args, SHIFT=False, **grid.meta)
        dw = torch.empty_like(weight) if wanted[1] else None
        db = x.new_empty(grid.channels) if wanted[2] else None
        dx = torch.empty_like(x)
        _grad_input[grid.programs](dz, _or(z, x), x, dx, partials, saved, _or(weight, x), _or(dw, x), _or(db, x),
                                   *grid.args, HAS_WEIGHT=weight is not None,
                                   WANT_WEIGHT=dw is not None, WANT_BIAS=db is not None, **grid.meta)
        return dx if wanted[0] else None, dw, db, None, None, None


def _or(t, placeholder):
    """A pointer for a kernel's optional tensor: ``t``, or any tensor where the kernel will not read it."""
    return placeholder if t is None else t


class _Grid:
    """How a BatchNorm's kernels cut an (N, C, H, W) input: programs of ``CHANNELS`` channels (``NHWC_CHANNELS``
    with ``relu_nhwc``) by ``chunks`` chunks of ``chunk`` consecutive values of each (a multiple of ``block``;
    value m of channel c at (m // L) C L + c L + m % L for L = H W, in NHWC at m C + c); sums in float64 for
    a float64 input, else float32."""

    def __init__(self, x: torch.Tensor, relu_nhwc: bool = False):
        c = x.shape[1]
        length, values = x[0, 0].numel(), x.numel() // c
        channels = NHWC_CHANNELS if relu_nhwc else CHANNELS
        block = min(max(BLOCK * CHANNELS // channels, 1), triton.next_power_of_2(values))
        self.chunks, chunk = _chunks(triton.cdiv(c, channels), values, block)
        self.channels = c
        self.programs = (triton.cdiv(c, channels), self.chunks)
        self.args = (c, length, values, chunk)
        self.meta = dict(RELU_NHWC=relu_nhwc, CHANNELS=channels, BLOCK=block,
                         ACC=tl.float64 if x.dtype == torch.float64 else tl.float32)
        self.accumulate = torch.float64 if x.dtype == torch.float64 else torch.float32


def _chunks(rows: int, values: int, block: int) -> tuple[int, int]:
    """How many chunks of how many values (a multiple of ``block``) cut each of ``rows`` rows of ``values``
    values, for about ``PROGRAMS`` programs in all."""
    chunks = max(1, min(PROGRAMS // rows, triton.cdiv(values, block)))
    chunk = triton.cdiv(triton.cdiv(values, chunks), block) * block
    return triton.cdiv(values, chunk), chunk


@triton.jit
def _tile(C, L: tl.constexpr, M, start, CHANNELS: tl.constexpr, BLOCK: tl.constexpr, cb):
    """Program cb's tile of values from ``start``: its offsets in NCHW and in NHWC (channels x values), and
    which of them are inside the input."""
    c = cb * CHANNELS + tl.arange(0, CHANNELS)
    m = start + tl.arange(0, BLOCK)
    at = (c * L)[:, None] + ((m // L) * (C * L) + m % L)[None, :]
    return at, c[:, None] + (m * C)[None, :], (c < C)[:, None] & (m < M)[None, :]


@triton.jit
def _gradient(dz, z, at, nhwc, inside, RELU_NHWC: tl.constexpr, ACC: tl.constexpr):
    """The tile of dy: dz, or with RELU_NHWC the ReLU's backward dz (z > 0), both NHWC."""
    if RELU_NHWC:
        g = tl.load(dz + nhwc, mask=inside, other=0).to(ACC)
        return tl.where(tl.load(z + nhwc, mask=inside, other=0) > 0, g, 0)
    return tl.load(dz + at, mask=inside, other=0).to(ACC)


@triton.jit
def _chunk_sums(a, z, x, mean, partials, C, L: tl.constexpr, M, CHUNK, SHIFT: tl.constexpr, RELU_NHWC: tl.constexpr,
                CHANNELS: tl.constexpr, BLOCK: tl.constexpr, ACC: tl.constexpr):
    """Program (cb, s): over chunk s of each of its channels c, with SHIFT the sums of x - x0 and (x - x0)^2
    (x0 channel c's first value), else of dy and dy (x - mean) (dy from ``a`` and ``z``: ``_gradient``; the
    mean channel c's, mean[c]); into partials[0, c, s] and partials[1, c, s]."""
    cb, s = tl.program_id(0), tl.program_id(1)
    c = cb * CHANNELS + tl.arange(0, CHANNELS)
    real = c < C
    if SHIFT:
        centre = tl.load(x + c * L, mask=real, other=0).to(ACC)
    else:
        centre = tl.load(mean + c, mask=real, other=0).to(ACC)
    sum_a, sum_ax = tl.zeros([CHANNELS, BLOCK], ACC), tl.zeros([CHANNELS, BLOCK], ACC)
    for start in range(s * CHUNK, (s + 1) * CHUNK, BLOCK):
        at, nhwc, inside = _tile(C, L, M, start, CHANNELS, BLOCK, cb)
        xc = tl.where(inside, tl.load(x + at, mask=inside, other=0).to(ACC) - centre[:, None], 0)
        if SHIFT:
            sum_a += xc
            sum_ax += xc * xc
        else:
            g = _gradient(a, z, at, nhwc, inside, RELU_NHWC, ACC)
            sum_a += g
            sum_ax += g * xc
    chunks = tl.num_programs(1)
    tl.store(partials + c * chunks + s, tl.sum(sum_a, 1), mask=real)
    tl.store(partials + (C + c) * chunks + s, tl.sum(sum_ax, 1), mask=real)


@triton.jit
def _merged(partials, c, C, CHANNELS: tl.constexpr, ACC: tl.constexpr):
    """Channels c's two sums over their chunks, 64 chunks at a time (a fixed block, so that the number of
    chunks is no constant to compile a kernel for)."""
    chunks = tl.num_programs(1)
    first, second = tl.zeros([CHANNELS], ACC), tl.zeros([CHANNELS], ACC)
    for start in range(0, chunks, 64):
        s = start + tl.arange(0, 64)
        wanted = (c < C)[:, None] & (s < chunks)[None, :]
        at = (c * chunks)[:, None] + s[None, :]
        first += tl.sum(tl.load(partials + at, mask=wanted, other=0), 1)
        second += tl.sum(tl.load(partials + C * chunks + at, mask=wanted, other=0), 1)
    return first, second


@triton.jit
def _normalise(x, y, partials, weight, bias, mean_out, var_out, saved, eps, C, L: tl.constexpr, M, CHUNK,
               HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, RELU_NHWC: tl.constexpr,
               CHANNELS: tl.constexpr, BLOCK: tl.constexpr, ACC: tl.constexpr):
    """Program (cb, s): its channels' means and variances from their chunks' shifted sums; chunk s of
    y = (x - mean) / sqrt(var + eps) * weight + bias (with RELU_NHWC relu(y), written NHWC), x - mean as
    (x - x0) - (mean - x0), which keeps float32's precision far from zero. The first chunk's program writes
    the mean and the unbiased variance into mean_out and var_out, and the mean and 1 / std into saved (for
    the backward)."""
    cb, s = tl.program_id(0), tl.program_id(1)
    c = cb * CHANNELS + tl.arange(0, CHANNELS)
    real = c < C
    sum_x, sum_xx = _merged(partials, c, C, CHANNELS, ACC)
    shifted = sum_x / M
    x0 = tl.load(x + c * L, mask=real, other=0).to(ACC)
    var = tl.maximum(sum_xx / M - shifted * shifted, 0)
    invstd = 1 / tl.sqrt(var + eps)
    if s == 0:
        tl.store(mean_out + c, (x0 + shifted).to(mean_out.dtype.element_ty), mask=real)
        tl.store(var_out + c, (var * M / (M - 1)).to(var_out.dtype.element_ty), mask=real)
        tl.store(saved + c, x0 + shifted, mask=real)
        tl.store(saved + C + c, invstd, mask=real)
    scale = invstd
    if HAS_WEIGHT:
        scale = scale * tl.load(weight + c, mask=real, other=0).to(ACC)
    offset = tl.zeros([CHANNELS], ACC)
    if HAS_BIAS:
        offset += tl.load(bias + c, mask=real, other=0).to(ACC)
    for start in range(s * CHUNK, (s + 1) * CHUNK, BLOCK):
        at, nhwc, inside = _tile(C, L, M, start, CHANNELS, BLOCK, cb)
        xc = tl.load(x + at, mask=inside, other=0).to(ACC) - x0[:, None] - shifted[:, None]
        out = xc * scale[:, None] + offset[:, None]
        if RELU_NHWC:
            tl.store(y + nhwc, tl.maximum(out, 0).to(y.dtype.element_ty), mask=inside)
        else:
            tl.store(y + at, out.to(y.dtype.element_ty), mask=inside)


@triton.jit
def _grad_input(dz, z, x, dx, partials, saved, weight, dw, db, C, L: tl.constexpr, M, CHUNK,
                HAS_WEIGHT: tl.constexpr, WANT_WEIGHT: tl.constexpr, WANT_BIAS: tl.constexpr,
                RELU_NHWC: tl.constexpr, CHANNELS: tl.constexpr, BLOCK: tl.constexpr, ACC: tl.constexpr):
    """Program (cb, s): chunk s of dx = w / std (dy - mean(dy) - x^ mean(dy x^)) for its channels, x^ = (x -
    mean) / std, dy from ``dz`` and ``z`` (``_gradient``), from their chunks' sums of dy and dy (x - mean);
    the first chunk's program writes dw = sum(dy x^) and db = sum(dy)."""
    cb, s = tl.program_id(0), tl.program_id(1)
    c = cb * CHANNELS + tl.arange(0, CHANNELS)
    real = c < C
    sum_dy, sum_dy_xc = _merged(partials, c, C, CHANNELS, ACC)
    mean = tl.load(saved + c, mask=real, other=0)
    invstd = tl.load(saved + C + c, mask=real, other=0)
    if s == 0:
        if WANT_WEIGHT:
            tl.store(dw + c, (sum_dy_xc * invstd).to(dw.dtype.element_ty), mask=real)
        if WANT_BIAS:
            tl.store(db + c, sum_dy.to(db.dtype.element_ty), mask=real)
    scale = invstd
    if HAS_WEIGHT:
        scale = scale * tl.load(weight + c, mask=real, other=0).to(ACC)
    mean_dy, slope = sum_dy / M, sum_dy_xc * invstd * invstd / M
    for start in range(s * CHUNK, (s + 1) * CHUNK, BLOCK):
        at, nhwc, inside = _tile(C, L, M, start, CHANNELS, BLOCK, cb)
        g = _gradient(dz, z, at, nhwc, inside, RELU_NHWC, ACC)
        xc = tl.load(x + at, mask=inside, other=0).to(ACC) - mean[:, None]
        g = (g - mean_dy[:, None] - xc * slope[:, None]) * scale[:, None]
        tl.store(dx + at, g.to(dx.dtype.element_ty), mask=inside)


def depthwise_conv2d(x, weight, stride=(1, 1), padding=(0, 0), dilation=(1, 1), relu_input: bool = False,
                     copies: int = 1, blocks: int = 1) -> torch.Tensor:
    """``F.conv2d(x, weight, None, stride, padding, dilation, groups=C)`` of an NCHW ``x`` (N, C, H, W) and a
    ``weight`` (C, 1, KH, KW), and its gradients, by this module's kernels: y[n, c, i, j] = sum_{a, b}
    w[c, a, b] x[n, c, s i + d a - p, s j + d b - p] (zero outside the image); with ``relu_input`` the
    convolution of relu(x), the ReLU on the way in (and its gradient, dx (x > 0), on the way out: a separable
    convolution's ReLU before its second depthwise one, without a kernel of its own). With ``copies`` k > 1, the
    convolution of ``ops.copied_blocks(x, blocks, k)`` (each of the ``blocks`` blocks of channels of ``x`` k
    times, a weight (k C, 1, KH, KW)) without the copies: each channel of the output reads its channel of
    ``x``, and the input's gradient sums its k copies' (a source's ops on all its edges, in a fused cell).
    Where ``x`` is not dense NCHW, not of the weight's dtype, under autocast (which casts a convolution's
    operands), the call is traced or compiled, or deterministic algorithms are asked for
    (``torch.use_deterministic_algorithms``: the weight's gradient sums its parts in no fixed order, as cuDNN's
    may), PyTorch's kernels run it (on the copies); a double backward (iDARTS's) runs ATen's convolution
    backward (``ops._GroupedConvBackward``), which autograd differentiates again."""
    _on_cuda(x)
    pair = torch.nn.modules.utils._pair
    args = pair(stride), pair(padding), pair(dilation)
    if (not x.is_contiguous() or x.dtype != weight.dtype or torch.is_autocast_enabled(x.device.type)
            or max(x.numel() * copies, weight.numel()) >= 2 ** 31 or ops.exporting()
            or torch.are_deterministic_algorithms_enabled()):
        x = ops.copied_blocks(F.relu(x) if relu_input else x, blocks, copies)
        return ops._conv2d(x, weight, None, *args, x.shape[1])
    conv = _Convolution(x.shape, weight.shape, *args, relu_input, (copies, x.shape[1] // blocks))
    return _Depthwise.apply(x, weight.contiguous(), conv)


class _Depthwise(torch.autograd.Function):
    """``depthwise_conv2d``: forward one kernel, which also zeroes the buffer of the weight's gradient; backward
    one that adds each program's sums per tap into it and also writes the input's gradient where the input and
    output are of one size (else one more)."""

    @staticmethod
    def forward(ctx, x, weight, conv):
        y = x.new_empty(conv.output)
        programs, args, meta = conv.cut(conv.output, x.dtype)
        ctx.weight_grad = _weight_grad(x, conv) if ctx.needs_input_grad[1] else None
        _depthwise[programs](x, weight, y, x, _or(ctx.weight_grad, x), *args, GRAD_INPUT=False,
                             ZERO=ctx.weight_grad is not None, **meta)
        ctx.save_for_backward(x, weight)
        ctx.conv = conv
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        conv = ctx.conv
        wanted = ctx.needs_input_grad[:2]
        if torch.is_grad_enabled():  # create_graph: relu(x) again, and its copies, on the graph
            k, width = conv.copies
            read = ops.copied_blocks(F.relu(x) if conv.relu else x, x.shape[1] // width, k)
            dx, dw = ops._GroupedConvBackward.apply(read, weight, dy, *conv.stride_padding_dilation, read.shape[1])
            dx = dx.unflatten(1, (-1, k, width)).sum(2).flatten(1, 2) if k > 1 else dx
            dx = dx * (x > 0) if conv.relu else dx
            return dx if wanted[0] else None, dw if wanted[1] else None, None
        dy, dw = dy.contiguous(), None
        dx = torch.empty_like(x) if wanted[0] else None
        together = wanted[0] and wanted[1] and conv.output == x.shape  # one cut of the values for both
        if wanted[0] and not together:
            programs, args, meta = conv.cut(x.shape, x.dtype)
            _depthwise[programs](dy, weight, dx, x, x, *args, GRAD_INPUT=True, ZERO=False, **meta)
        if wanted[1]:
            # zeroed by the forward; a second backward through it (retain_graph) sums into a buffer of its own
            dw = ctx.weight_grad if ctx.weight_grad is not None else _weight_grad(x, conv).zero_()
            ctx.weight_grad = None
            programs, args, meta = conv.cut(conv.output, x.dtype)
            _depthwise_weight_sums[programs](x, dy, dw, weight, dx if together else x, *args,
                                             GRAD_INPUT=together, **meta)
            dw = dw.to(weight.dtype).view(weight.shape)
        return dx, dw, None


def _weight_grad(x: torch.Tensor, conv: "_Convolution") -> torch.Tensor:
    """A buffer for the weight's gradient, (output channels, taps), float64 for a float64 input, else float32."""
    return x.new_empty((conv.output[1], conv.taps), dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)


class _Convolution:
    """A depthwise convolution's geometry and how its kernels cut the values of its output (or, for the input's
    gradient, of its input): programs of ``CHANNELS`` channels by chunks of whole blocks, ``TILE`` products of
    a block's values with each of the kernel's taps (padded to a power of two) at once. ``copies`` (k, width):
    each block of ``width`` channels of the input read by k blocks of the output, one after another."""

    def __init__(self, shape, kernel, stride, padding, dilation, relu: bool = False, copies=(1, 1)):
        n, c, h, w = shape
        self.relu, self.copies = relu, copies
        (kh, kw), self.stride_padding_dilation = kernel[-2:], (stride, padding, dilation)
        out = [(size + 2 * p - d * (k - 1) - 1) // s + 1
               for size, k, s, p, d in zip((h, w), (kh, kw), stride, padding, dilation)]
        self.output = (n, c * copies[0], *out)
        self.taps = kh * kw
        self.geometry = dict(H=h, W=w, HO=out[0], WO=out[1], KH=kh, KW=kw, SH=stride[0], SW=stride[1],
                             PH=padding[0], PW=padding[1], DH=dilation[0], DW=dilation[1])

    def cut(self, shape, dtype: torch.dtype) -> tuple[tuple[int, int], tuple, dict]:
        """A launch over the values of ``shape`` (the output's, or the input's): its programs (of channels,
        chunks), the kernels' C, K, WIDTH (``copies``), M (values per channel) and CHUNK, and their constants."""
        values, rows = shape[0] * shape[2] * shape[3], triton.cdiv(shape[1], CHANNELS)
        taps = triton.next_power_of_2(self.taps)
        block = min(max(TILE // (taps * CHANNELS), 1), triton.next_power_of_2(values))
        chunks, chunk = _chunks(rows, values, block)
        return (rows, chunks), (shape[1], *self.copies, values, chunk), dict(
            self.geometry, RELU=self.relu, TAPS=taps, CHANNELS=CHANNELS, BLOCK=block,
            ACC=tl.float64 if dtype == torch.float64 else tl.float32)


@triton.jit
def _taps(c, read, CR, m, C, M, H: tl.constexpr, W: tl.constexpr, HO: tl.constexpr, WO: tl.constexpr,
          KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr,
          PW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr, TAPS: tl.constexpr, TO_INPUT: tl.constexpr):
    """For channels c (of C) and values m of the output (of the input, with TO_INPUT), the offsets of what each
    tap (a, b) joins them to in channels ``read`` of the input (the output), of CR channels, (channels, TAPS,
    values), and which are inside it: output (i, j) reads input (s i + d a - p, s j + d b - p)."""
    t = tl.arange(0, TAPS)
    a, b = (t // KW)[None, :, None], (t % KW)[None, :, None]
    channel, m = read[:, None, None], m[None, None, :]
    if TO_INPUT:
        n, o = m // (H * W), m % (H * W)
        i = o // W + PH - DH * a  # s times the output's row, where a whole one
        j = o % W + PW - DW * b
        inside = (i >= 0) & (j >= 0) & (i % SH == 0) & (j % SW == 0) & (i < SH * HO) & (j < SW * WO)
        at = (n * CR + channel) * (HO * WO) + (i // SH) * WO + j // SW
    else:
        n, o = m // (HO * WO), m % (HO * WO)
        i = SH * (o // WO) + DH * a - PH
        j = SW * (o % WO) + DW * b - PW
        inside = (i >= 0) & (j >= 0) & (i < H) & (j < W)
        at = (n * CR + channel) * (H * W) + i * W + j
    return at, inside & (t < KH * KW)[None, :, None] & (c < C)[:, None, None] & (m < M)


@triton.jit
def _copy_read(c, K, WIDTH):
    """The input channel that output channel c reads where each block of WIDTH input channels is read by K
    output blocks, one after another."""
    return c // (K * WIDTH) * WIDTH + c % WIDTH


@triton.jit
def _tap_rows(c, C, KH: tl.constexpr, KW: tl.constexpr, TAPS: tl.constexpr):
    """Where channels c's taps are in a (C, KH KW) tensor (channels, TAPS), and which of them are real."""
    t = tl.arange(0, TAPS)
    return (c * (KH * KW))[:, None] + t[None, :], (c < C)[:, None] & (t < KH * KW)[None, :]


@triton.jit
def _tap_weights(weight, c, C, KH: tl.constexpr, KW: tl.constexpr, TAPS: tl.constexpr, ACC: tl.constexpr):
    """Channels c's weights, (channels, TAPS), zero for the taps past KH KW."""
    at, taps = _tap_rows(c, C, KH, KW, TAPS)
    return tl.load(weight + at, mask=taps, other=0).to(ACC)


@triton.jit
def _depthwise(x, weight, y, z, zeroed, C, K, WIDTH, M, CHUNK, H: tl.constexpr, W: tl.constexpr, HO: tl.constexpr,
               WO: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
               PH: tl.constexpr, PW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr, GRAD_INPUT: tl.constexpr,
               ZERO: tl.constexpr, RELU: tl.constexpr, TAPS: tl.constexpr, CHANNELS: tl.constexpr,
               BLOCK: tl.constexpr, ACC: tl.constexpr):
    """Program (cb, s): chunk s of its channels c of y = conv(x, w) (with RELU, of relu(x)); with GRAD_INPUT,
    of the input's gradient y = dx[n, c, h, w] = sum_{a, b} w[c, a, b] dy[n, c, (h + p - d a) / s, ...] from
    x = dy, over the taps whose output pixel is whole and inside (with RELU, times z > 0, z the input). Each
    block of WIDTH channels of the input read by K blocks of the output (``_copy_read``): the input's gradient
    sums theirs. With ZERO, the first chunk's program zeroes its channels' rows of ``zeroed`` (C, KH KW), the
    buffer of the weight's gradient."""
    cb, s = tl.program_id(0), tl.program_id(1)
    c = cb * CHANNELS + tl.arange(0, CHANNELS)
    if ZERO:
        if s == 0:
            at, taps = _tap_rows(c, C, KH, KW, TAPS)
            tl.store(zeroed + at, tl.zeros([CHANNELS, TAPS], zeroed.dtype.element_ty), mask=taps)
    if GRAD_INPUT:
        size: tl.constexpr = H * W
    else:
        size: tl.constexpr = HO * WO
        w = _tap_weights(weight, c, C, KH, KW, TAPS, ACC)
    for start in range(s * CHUNK, (s + 1) * CHUNK, BLOCK):
        m = start + tl.arange(0, BLOCK)
        if GRAD_INPUT:  # summed over the output channels that read channels c, c // WIDTH * K WIDTH + k WIDTH +
            # c % WIDTH: the taps' offsets in channel 0 once, each channel's added
            at, inside = _taps(c, c * 0, C * K, m, C, M, H, W, HO, WO, KH, KW, SH, SW, PH, PW, DH, DW, TAPS, True)
            out = tl.zeros([CHANNELS, BLOCK], ACC)
            for k in range(K):
                read = c // WIDTH * (K * WIDTH) + k * WIDTH + c % WIDTH
                w = _tap_weights(weight, read, C * K, KH, KW, TAPS, ACC)
                xs = tl.load(x + at + (read * (HO * WO))[:, None, None], mask=inside, other=0).to(ACC)
                out += tl.sum(xs * w[:, :, None], 1)
        else:
            at, inside = _taps(c, _copy_read(c, K, WIDTH), C // K, m, C, M, H, W, HO, WO, KH, KW, SH, SW, PH, PW,
                               DH, DW, TAPS, False)
            xs = tl.load(x + at, mask=inside, other=0).to(ACC)
            if RELU:
                xs = tl.maximum(xs, 0)
            out = tl.sum(xs * w[:, :, None], 1)
        into, _, real = _tile(C, size, M, start, CHANNELS, BLOCK, cb)
        if RELU and GRAD_INPUT:
            out = tl.where(tl.load(z + into, mask=real, other=0) > 0, out, 0)
        tl.store(y + into, out.to(y.dtype.element_ty), mask=real)


@triton.jit
def _depthwise_weight_sums(x, dy, dw, weight, dx, C, K, WIDTH, M, CHUNK, H: tl.constexpr, W: tl.constexpr,
                           HO: tl.constexpr, WO: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
                           SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
                           DH: tl.constexpr, DW: tl.constexpr, GRAD_INPUT: tl.constexpr, RELU: tl.constexpr,
                           TAPS: tl.constexpr, CHANNELS: tl.constexpr, BLOCK: tl.constexpr, ACC: tl.constexpr):
    """Program (cb, s): over chunk s of its channels c of the output, each tap's sum of dy[n, c, i, j]
    x[n, c', s i + d a - p, s j + d b - p] (c' the channel c reads: ``_copy_read``; with RELU, of relu(x)),
    added atomically into dw[c, tap] (the weight's gradient, zeroed before); with GRAD_INPUT (the input of the
    output's size, K = 1) the same chunk of the input's gradient dx, as ``_depthwise`` writes it."""
    cb, s = tl.program_id(0), tl.program_id(1)
    c = cb * CHANNELS + tl.arange(0, CHANNELS)
    if GRAD_INPUT:
        w = _tap_weights(weight, c, C, KH, KW, TAPS, ACC)
    sums = tl.zeros([CHANNELS, TAPS, BLOCK], ACC)
    for start in range(s * CHUNK, (s + 1) * CHUNK, BLOCK):
        m = start + tl.arange(0, BLOCK)
        at, inside = _taps(c, _copy_read(c, K, WIDTH), C // K, m, C, M, H, W, HO, WO, KH, KW, SH, SW, PH, PW, DH,
                           DW, TAPS, False)
        into, _, real = _tile(C, HO * WO, M, start, CHANNELS, BLOCK, cb)
        g = tl.load(dy + into, mask=real, other=0).to(ACC)
        xs = tl.load(x + at, mask=inside, other=0).to(ACC)
        if RELU:
            xs = tl.maximum(xs, 0)
        sums += xs * g[:, None, :]
        if GRAD_INPUT:
            at, inside = _taps(c, c, C, m, C, M, H, W, HO, WO, KH, KW, SH, SW, PH, PW, DH, DW, TAPS, True)
            g = tl.sum(tl.load(dy + at, mask=inside, other=0).to(ACC) * w[:, :, None], 1)
            if RELU:
                g = tl.where(tl.load(x + into, mask=real, other=0) > 0, g, 0)
            tl.store(dx + into, g.to(dx.dtype.element_ty), mask=real)
    at, taps = _tap_rows(c, C, KH, KW, TAPS)
    tl.atomic_add(dw + at, tl.sum(sums, 2), mask=taps)
