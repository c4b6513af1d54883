"""dnas.kernels: the Triton BatchNorm and depthwise convolution against PyTorch's, on a GPU by their compiled
kernels and on the CPU by Triton's interpreter (conftest.py sets TRITON_INTERPRET=1 where no GPU is)."""
import os
import subprocess
import sys
from functools import partial

import pytest
import torch
import torch.nn.functional as F

import dnas
from conftest import batch_norm_derivatives
from dnas import ops
from dnas.spaces import fused as fused_module
from test_fused import assert_same_step, search_step

kernels = pytest.importorskip("dnas.kernels", reason="Triton is not installed (make install brings it)")

INTERPRETER_OFF = "Triton runs CPU tensors only by its interpreter, which is off where a GPU is (conftest.py)"
DEVICES = [pytest.param("cpu", marks=pytest.mark.skipif(not kernels.INTERPRETED, reason=INTERPRETER_OFF)),
           pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                         reason="needs a CUDA device: the kernels compiled"))]


@pytest.fixture(params=[1, 4], ids=["1 channel", "4 channels"])
def small_chunks(request, monkeypatch):
    """Programs of 1 channel (as on a GPU) or of 4 (as the interpreter runs them, the last program of 6
    channels ragged), in blocks of 16 values (those that also read or write NHWC: of 2 or 8 channels, in blocks
    of 8 values). Few blocks in all: Triton's interpreter takes ~30 ms for each."""
    monkeypatch.setattr(kernels, "CHANNELS", request.param)
    monkeypatch.setattr(kernels, "NHWC_CHANNELS", 2 * request.param)
    monkeypatch.setattr(kernels, "BLOCK", 16)
    monkeypatch.setattr(kernels, "PROGRAMS", 2 * -(-6 // request.param))
    return request.param


def whole(x, mean, var, weight, bias, eps):
    return F.batch_norm(x, mean, var, weight, bias, True, 1.0, eps)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("affine, relu_nhwc", [  # the cell's: an op's last, its middle one; and any
    ("weight", False), ("neither", False), ("weight and bias", True), ("neither", True)])
def test_batch_norm_computes_what_batch_norm_computes(device, affine, relu_nhwc, small_chunks):
    """The same output (with ``relu_nhwc``, ``ops.relu_nhwc``'s of it, NHWC), batch statistics (the mean and
    the unbiased variance, as F.batch_norm writes them at momentum 1), gradients of the input, weight and
    bias, and second derivatives (by PyTorch's own backward, which autograd differentiates again), in float64."""
    g = torch.Generator().manual_seed(0)
    t = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64).to(device)
    x = (3 * t(2, 6, 5, 5) + 1).requires_grad_()
    weight = t(6).requires_grad_() if affine != "neither" else None
    bias = t(6).requires_grad_() if affine == "weight and bias" else None
    dy = t(2, 6, 5, 5)
    grid = kernels._Grid(x, relu_nhwc)  # several chunks of 2 blocks, the last chunk ragged
    chunk, block = grid.args[3], grid.meta["BLOCK"]
    assert grid.meta["CHANNELS"] == (2 * small_chunks if relu_nhwc else small_chunks)
    assert grid.chunks > 1 and chunk // block == 2 and 50 % chunk
    reference = lambda *args: ops.relu_nhwc(whole(*args)) if relu_nhwc else whole(*args)
    ours, theirs = (batch_norm_derivatives(f, x, weight, bias, dy)
                    for f in (partial(kernels.batch_norm, relu_nhwc=relu_nhwc), reference))
    assert type(ours[0].grad_fn).__name__ == "_BatchNormBackward"
    layout = torch.channels_last if relu_nhwc else torch.contiguous_format
    assert ours[0].is_contiguous(memory_format=layout) and ours[2].is_contiguous()  # the output, x's gradient
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.slow  # 65 programs, ~10 s by the interpreter
@pytest.mark.parametrize("device", DEVICES)
def test_more_than_64_chunks_merge(device, monkeypatch):
    """A channel in 65 chunks: their sums merged 64 at a time (``_merged``), the last block ragged."""
    for name, value in zip(("PROGRAMS", "BLOCK", "CHANNELS"), (100, 1, 1)):
        monkeypatch.setattr(kernels, name, value)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 1, 5, 13, generator=g, dtype=torch.float64).to(device).requires_grad_()
    weight, dy = torch.randn(1, dtype=torch.float64).to(device).requires_grad_(), torch.randn_like(x)
    assert kernels._Grid(x).programs == (1, 65)
    ours, theirs = (batch_norm_derivatives(f, x, weight, None, dy)[:4] for f in (kernels.batch_norm, whole))
    for a, b in zip(ours, theirs):  # the output, the statistics, the gradients
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_a_float32_batch_norm_far_from_zero_keeps_its_precision(device, small_chunks):
    """Values of mean 1000 and standard deviation 1 in float32: the sums are of x minus the channel's first
    value, and x - mean is (x - x0) - (mean - x0), so the statistics are float32's rounding of the exact ones
    and the output is as close to the exact one as PyTorch's own (which rounds the mean first)."""
    x = (torch.randn(8, 4, 3, 3, generator=torch.Generator().manual_seed(0)) + 1000).to(device)
    exact_statistics = torch.zeros(2, 4, dtype=torch.float64, device=device)
    exact = whole(x.double(), *exact_statistics, None, None, 1e-5)
    statistics, pytorchs = torch.zeros(2, 4, device=device), torch.zeros(2, 4, device=device)
    error = lambda y: (y.double() - exact).abs().max()
    assert error(kernels.batch_norm(x, *statistics)) <= error(whole(x, *pytorchs, None, None, 1e-5))
    torch.testing.assert_close(statistics.double(), exact_statistics, rtol=1e-6, atol=0)


def test_the_grid_of_the_darts_search_network(monkeypatch):
    """On a GPU, at batch 64, about ``PROGRAMS`` programs of one channel (of 32 where they also write NHWC)
    for any channels (fewer where a channel has fewer values), each chunk whole blocks, the chunks covering
    the channel."""
    for name, value in zip(("PROGRAMS", "BLOCK", "CHANNELS", "NHWC_CHANNELS"), (2048, 1024, 1, 32)):
        monkeypatch.setattr(kernels, name, value)
    shapes = [(16, 32), (128, 32), (256, 16), (512, 8), (1, 2)]
    grids = [kernels._Grid(torch.empty(64, c, h, h, device="meta")) for c, h in shapes]
    assert [g.programs for g in grids] == [(16, 64), (128, 16), (256, 8), (512, 4), (1, 1)]
    assert [g.args[3] for g in grids] == [1024, 4096, 2048, 1024, 256]
    nhwc = kernels._Grid(torch.empty(64, 128, 32, 32, device="meta"), relu_nhwc=True)  # tiles of 32 x 32
    assert nhwc.programs == (4, 512) and nhwc.meta["BLOCK"] == 32 and nhwc.args[3] == 128


@pytest.mark.parametrize("device", DEVICES)
def test_other_inputs_run_pytorchs_batch_norm(device):
    """An input not dense NCHW, of another dtype than its statistics (bf16 under autocast) or of one value per
    channel: ``F.batch_norm``."""
    x, statistics = torch.randn(4, 16, 8, 8, device=device), torch.zeros(2, 16, device=device)
    for other in (x.contiguous(memory_format=torch.channels_last), x.bfloat16()):
        y = kernels.batch_norm(other.requires_grad_(), *statistics)
        assert type(y.grad_fn).__name__ == "NativeBatchNormBackward0"
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        kernels.batch_norm(x[:1, :, :1, :1], *statistics)


def test_a_cpu_tensor_is_refused_outside_the_interpreter():
    """Without Triton's interpreter (a process of its own where this one has it) a CPU tensor is refused,
    saying what would run it."""
    script = ("import torch; from dnas import kernels\n"
              "try: kernels.batch_norm(torch.randn(4, 2, 3, 3), *torch.zeros(2, 2))\n"
              "except ValueError as e: print(e)")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert "runs on CUDA tensors, not cpu ones" in done.stdout and "TRITON_INTERPRET=1" in done.stdout, done.stderr


@pytest.mark.slow  # by the interpreter, ~45 s on the CPU
@pytest.mark.parametrize("device", DEVICES)
def test_triton_batch_norms_compute_the_same_step(device, monkeypatch):
    """Where ``BATCH_NORM_KERNELS`` names "triton", the fused cell's training BatchNorms run by
    ``kernels.batch_norm``, in the GPU's convolution forms (``ops.FORM_DEVICES``, on the CPU too) those
    inside the separable convolutions with the ReLU after them: the same step."""
    monkeypatch.setattr(ops, "FORM_DEVICES", ("cpu", "cuda"))
    reference = search_step("darts-v1", fused=True, device=device)
    calls = []
    apply = kernels._BatchNorm.apply
    monkeypatch.setattr(kernels._BatchNorm, "apply", lambda *args: calls.append(args[-1]) or apply(*args))
    monkeypatch.setattr(fused_module, "BATCH_NORM_KERNELS", {device: "triton"})
    assert_same_step(reference, search_step("darts-v1", fused=True, device=device))
    assert len(calls) > 100 and 0 < sum(calls) < len(calls)  # some with the ReLU, some without


@pytest.mark.parametrize("module, setting, value", [(fused_module, "BATCH_NORM_KERNELS", {"cpu": "triton"}),
                                                    (ops, "TRITON_DEPTHWISE_DEVICES", ("cpu",))])
def test_triton_kernels_without_triton_say_what_they_need(module, setting, value, monkeypatch):
    ops.check_ops(ops.DARTS_OPS)  # checked once per process (functools.cache): not by the kernels refused below
    monkeypatch.setitem(sys.modules, "triton", None)
    monkeypatch.delitem(sys.modules, "dnas.kernels")
    monkeypatch.delattr(dnas, "kernels")
    monkeypatch.setattr(module, setting, value)
    with pytest.raises(RuntimeError, match=f"{setting} names Triton's kernels, which need the triton package"):
        search_step("darts-v1", fused=True)


@pytest.fixture(params=[1, 4], ids=["1 channel", "4 channels"])
def small_tiles(request, monkeypatch):
    """Depthwise convolutions' programs of 1 channel (as on a GPU) or of 4 (as the interpreter runs them, the
    last program of 6 channels ragged), in blocks of 16 values of each tap (8 for 5 x 5 kernels), several
    chunks of each channel."""
    monkeypatch.setattr(kernels, "CHANNELS", request.param)
    monkeypatch.setattr(kernels, "TILE", 16 * 16 * request.param)
    monkeypatch.setattr(kernels, "PROGRAMS", 2 * -(-6 // request.param))
    return request.param


def assert_same_derivatives(ours, theirs, inputs, dy):
    """``ours`` and ``theirs``, their gradients with respect to ``inputs`` for ``dy``, and the second derivatives
    (of the gradients' squares' sum) the same in float64."""
    def derivatives(y):
        first = torch.autograd.grad(y, inputs, dy, retain_graph=True)
        with_graph = torch.autograd.grad(y, inputs, dy, create_graph=True)
        second = torch.autograd.grad(sum((t ** 2).sum() for t in with_graph), inputs)
        return y, *first, *with_graph, *second
    for a, b in zip(derivatives(ours), derivatives(theirs)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kernel, stride, padding, dilation, size, relu", [  # the DARTS ops' (a reducing
    (3, 1, 1, 1, (7, 6), False), (5, 1, 2, 1, (7, 6), True),              # edge's taken whole; with the
    (3, 2, 1, 1, (8, 7), True), (3, 1, 2, 2, (8, 8), False),              # ReLU before, the second of a
    (5, 1, 4, 2, (6, 7), True), (5, 2, 4, 2, (8, 8), False),              # separable op), a merged
    (5, 1, 2, 1, (3, 3), False), ((3, 1), (2, 1), (0, 1), (1, 2), (17, 9), True)],  # bank's 3x3, and any
    ids=["3x3", "5x5 of relu(x)", "3x3 stride 2 of relu(x)", "3x3 dilation 2", "5x5 dilation 2 of relu(x)",
         "5x5 dilation and stride 2", "5x5 on 3x3", "3x1 mixed of relu(x)"])
def test_depthwise_conv2d_computes_what_conv2d_computes(device, kernel, stride, padding, dilation, size, relu,
                                                        small_tiles):
    """The same output, gradients of the input and weight, and second derivatives (by ATen's convolution
    backward, which autograd differentiates again), in float64; with ``relu_input``, those of the
    convolution of relu(x) (x of either sign: the gradient is x's)."""
    g = torch.Generator().manual_seed(0)
    kernel = kernel if isinstance(kernel, tuple) else (kernel, kernel)
    x = torch.randn(2, 6, *size, generator=g, dtype=torch.float64).to(device).requires_grad_()
    weight = torch.randn(6, 1, *kernel, generator=g, dtype=torch.float64).to(device).requires_grad_()
    args = stride, padding, dilation
    ours = kernels.depthwise_conv2d(x, weight, *args, relu_input=relu)
    theirs = F.conv2d(F.relu(x) if relu else x, weight, None, *args, 6)
    assert type(ours.grad_fn).__name__ == "_DepthwiseBackward"
    conv = kernels._Convolution(x.shape, weight.shape, *(ops.nn.modules.utils._pair(a) for a in args))
    chunks = [conv.cut(shape, x.dtype)[0][1] for shape in (conv.output, x.shape)]
    assert conv.output == theirs.shape and min(chunks) > 1
    dy = torch.randn(theirs.shape, generator=g, dtype=torch.float64).to(device)

    assert_same_derivatives(ours, theirs, (x, weight), dy)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_conv2d_gradients_of_either_alone(device, stride):
    """The input's gradient without the weight's (by its own kernel), and the weight's without the input's (the
    kernel that writes both where they are of one size, the input's left out)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 6, 6, generator=g, dtype=torch.float64).to(device)
    weight = torch.randn(3, 1, 3, 3, generator=g, dtype=torch.float64).to(device)
    for wanted in (x, weight):
        wanted.requires_grad_()
        ours, theirs = kernels.depthwise_conv2d(x, weight, stride, 1), F.conv2d(x, weight, None, stride, 1, 1, 3)
        dy = torch.randn(theirs.shape, generator=g, dtype=torch.float64).to(device)
        torch.testing.assert_close(torch.autograd.grad(ours, wanted, dy), torch.autograd.grad(theirs, wanted, dy),
                                   rtol=1e-12, atol=1e-12)
        wanted.requires_grad_(False)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kernel, stride, padding, dilation, relu", [(3, 1, 1, 1, True), (5, 2, 4, 2, False)],
                         ids=["3x3 of relu(x)", "5x5 dilation and stride 2"])
def test_depthwise_conv2d_of_copies(device, kernel, stride, padding, dilation, relu, small_tiles):
    """With ``copies``, the convolution of each block of channels copied (a source's ops on all its edges),
    without the copies: the same output, gradients and second derivatives as of the copies themselves."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 7, 6, generator=g, dtype=torch.float64).to(device).requires_grad_()  # 2 blocks of 2
    weight = torch.randn(12, 1, kernel, kernel, generator=g, dtype=torch.float64).to(device).requires_grad_()
    args = stride, padding, dilation
    ours = kernels.depthwise_conv2d(x, weight, *args, relu_input=relu, copies=3, blocks=2)
    copied = x.unflatten(1, (2, 1, 2)).expand(-1, -1, 3, -1, -1, -1).flatten(1, 3)
    theirs = F.conv2d(F.relu(copied) if relu else copied, weight, None, *args, 12)
    assert type(ours.grad_fn).__name__ == "_DepthwiseBackward"
    dy = torch.randn(theirs.shape, generator=g, dtype=torch.float64).to(device)

    assert_same_derivatives(ours, theirs, (x, weight), dy)
    pairs = [(a, a) for a in args]  # elsewhere (a CPU tensor where no interpreter runs): copied
    torch.testing.assert_close(ops.conv2d(x.detach().cpu(), weight.detach().cpu(), None, *pairs, 12, copies=3,
                                          blocks=2), F.conv2d(copied.detach().cpu(), weight.detach().cpu(), None,
                                                              *args, 12))


@pytest.mark.parametrize("device", DEVICES)
def test_depthwise_weight_gradient_of_a_second_backward(device):
    """The weight's gradient is summed into a buffer the forward zeroed: a second backward through the same
    forward (retain_graph) sums into one of its own, and gives the same gradient."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 6, 6, generator=g, dtype=torch.float64).to(device)
    weight = torch.randn(3, 1, 3, 3, generator=g, dtype=torch.float64).to(device).requires_grad_()
    y = kernels.depthwise_conv2d(x, weight, 1, 1)
    dy = torch.randn(y.shape, generator=g, dtype=torch.float64).to(device)
    first, = torch.autograd.grad(y, weight, dy, retain_graph=True)
    second, = torch.autograd.grad(y, weight, dy)
    theirs, = torch.autograd.grad(F.conv2d(x, weight, None, 1, 1, 1, 3), weight, dy)
    torch.testing.assert_close(first, theirs, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(second, theirs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_other_inputs_run_pytorchs_convolution(device):
    """An input not dense NCHW, deterministic algorithms asked for (the weight's gradient sums in no fixed
    order), or under autocast (its operands in fp32 or, from an op before, bf16): ``F.conv2d``, which autocast
    casts to bf16."""
    x, weight = torch.randn(2, 4, 6, 6, device=device), torch.randn(4, 1, 3, 3, device=device)
    y = kernels.depthwise_conv2d(x.contiguous(memory_format=torch.channels_last).requires_grad_(), weight, 1, 1)
    assert type(y.grad_fn).__name__ == "ConvolutionBackward0"
    torch.testing.assert_close(y, F.conv2d(x, weight, None, 1, 1, 1, 4))
    torch.use_deterministic_algorithms(True)
    try:
        y = kernels.depthwise_conv2d(x.requires_grad_(), weight, 1, 1)
    finally:
        torch.use_deterministic_algorithms(False)
    assert type(y.grad_fn).__name__ == "ConvolutionBackward0"
    for other in (x, x.bfloat16()):
        with torch.autocast(device, torch.bfloat16):
            y = kernels.depthwise_conv2d(other.requires_grad_(), weight, 1, 1)
            assert y.dtype == torch.bfloat16 and type(y.grad_fn).__name__ == "ConvolutionBackward0"


@pytest.mark.slow  # by the interpreter, ~90 s on the CPU
@pytest.mark.parametrize("device", DEVICES)
def test_triton_depthwise_convolutions_compute_the_same_step(device, monkeypatch):
    """Where ``ops.TRITON_DEPTHWISE_DEVICES`` names the device, every depthwise convolution of a fused NCHW step
    in the GPU's forms runs by ``kernels.depthwise_conv2d`` on the tensor the cell makes (no copy to NHWC,
    no phases, no copy of a source to its edges: the first ones read each source for all its edges), a
    separable op's second one of relu(x); with Triton's BatchNorms, which then write no ReLU NHWC: the same
    step."""
    monkeypatch.setattr(ops, "FORM_DEVICES", ("cpu", "cuda"))
    reference = search_step("darts-v1", fused=True, device=device)
    convolutions, batch_norms, others = [], [], []
    for cls, calls in ((kernels._Depthwise, convolutions), (kernels._BatchNorm, batch_norms)):
        monkeypatch.setattr(cls, "apply", lambda *args, apply=cls.apply, calls=calls: calls.append(args[-1])
                            or apply(*args))
    conv2d = ops._conv2d
    monkeypatch.setattr(ops, "_conv2d", lambda x, w, *args: (w.shape[1] == 1 and others.append(x.shape))
                        or conv2d(x, w, *args))
    for module in (ops, fused_module):
        for name in ("to_phases", "relu_nhwc"):
            monkeypatch.setattr(module, name, lambda *args, name=name: pytest.fail(f"ops.{name} ran"))
    copy_to_edges = fused_module._copy_to_edges  # but in evaluation a pooling's output, for its BatchNorm per edge
    monkeypatch.setattr(fused_module, "_copy_to_edges", lambda begun, wanted, *args: pytest.fail("copied")
                        if any(head[0] == "relu" for head, _ in wanted) else copy_to_edges(begun, wanted, *args))
    monkeypatch.setattr(ops, "TRITON_DEPTHWISE_DEVICES", (device,))
    monkeypatch.setattr(fused_module, "BATCH_NORM_KERNELS", {device: "triton"})
    assert_same_step(reference, search_step("darts-v1", fused=True, device=device))
    assert len(convolutions) > 100 and not others
    assert 0 < sum(conv.relu for conv in convolutions) < len(convolutions)  # the separable ops' second ReLUs
    assert 0 < sum(conv.copies[0] > 1 for conv in convolutions) < len(convolutions)  # and their first
    assert len(batch_norms) > 100 and not any(batch_norms)  # none with the ReLU NHWC


COMPILE_FOR_HOPPER = r"""
import os, re, subprocess, tempfile
import torch, triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from dnas import kernels

assert not kernels.INTERPRETED
INTS, FLOATS = {"C", "K", "WIDTH", "M", "CHUNK"}, {"eps"}
unvectorised = []
def compile(kernel, dtype, **constexprs):
    # as a launch specialises them: pointers, channels and the values' counts divisible by 16
    constexprs["ACC"] = tl.float64 if dtype == "fp64" else tl.float32
    kind = lambda n: ("constexpr" if n in constexprs else "i32" if n in INTS else "fp32" if n in FLOATS
                      else "*" + dtype)
    signature = {n: kind(n) for n in kernel.arg_names}
    aligned = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(kernel.arg_names)
               if signature[n].startswith("*") or n in ("C", "M", "CHUNK")}
    return triton.compile(ASTSource(kernel, signature, constexprs, aligned), target=GPUTarget("cuda", 90, 32))
def vectorised(kernel, dtype, **constexprs):
    if not re.search(r"st\.global\.v\d", compile(kernel, dtype, **constexprs).asm["ptx"]):
        unvectorised.append((kernel.fn.__name__, dtype, constexprs))
spilled = []
def unspilled(kernel, dtype, **constexprs):
    ptx = tempfile.mktemp(suffix=".ptx")
    with open(ptx, "w") as f:
        f.write(compile(kernel, dtype, **constexprs).asm["ptx"])
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    done = subprocess.run([ptxas, "-v", "--gpu-name", "sm_90a", ptx, "-o", os.devnull], capture_output=True,
                          text=True, check=True)
    if " 0 bytes spill stores" not in done.stderr:
        spilled.append((kernel.fn.__name__, dtype, constexprs))
for dtype, channels, block, length, relu in (("fp32", 1, 1024, 1024, False), ("fp32", 1, 1024, 64, False),
                                            ("fp64", 1, 256, 256, False), ("fp32", 32, 32, 1024, True)):
    tile = dict(L=length, CHANNELS=channels, BLOCK=block, RELU_NHWC=relu)
    for shift in (True, False):
        compile(kernels._chunk_sums, dtype, SHIFT=shift, **tile)
    for weight, bias in ((True, False), (False, False), (True, True)):
        vectorised(kernels._normalise, dtype, HAS_WEIGHT=weight, HAS_BIAS=bias, **tile)
    for weight, want_weight, want_bias in ((True, True, False), (True, True, True), (False, False, False)):
        vectorised(kernels._grad_input, dtype, HAS_WEIGHT=weight, WANT_WEIGHT=want_weight,
                   WANT_BIAS=want_bias, **tile)
# the DARTS ops' depthwise convolutions (a reducing edge's separable ones taken whole; a separable op's second
# of relu(x)) at 32 x 32 and 8 x 8, batch 64, 128 channels (8 edges' 16)
for dtype, size, k, stride, padding, dilation, relu in (
        ("fp32", 32, 3, 1, 1, 1, False), ("fp32", 32, 3, 1, 1, 1, True), ("fp32", 32, 5, 1, 2, 1, True),
        ("fp32", 32, 3, 1, 2, 2, False), ("fp32", 32, 5, 1, 4, 2, False), ("fp32", 32, 3, 2, 1, 1, False),
        ("fp32", 32, 5, 2, 2, 1, False), ("fp32", 8, 3, 1, 1, 1, True), ("fp64", 8, 5, 1, 4, 2, False)):
    x = (64, 128, size, size)
    conv = kernels._Convolution(x, (128, 1, k, k), (stride,) * 2, (padding,) * 2, (dilation,) * 2, relu)
    for kernel, shape, flags in ((kernels._depthwise, conv.output, dict(GRAD_INPUT=False, ZERO=True)),
                                 (kernels._depthwise, x, dict(GRAD_INPUT=True, ZERO=False)),
                                 (kernels._depthwise_weight_sums, conv.output, dict(GRAD_INPUT=False)),
                                 (kernels._depthwise_weight_sums, conv.output, dict(GRAD_INPUT=conv.output == x))):
        meta = conv.cut(shape, torch.float64 if dtype == "fp64" else torch.float32)[2]
        unspilled(kernel, dtype, **flags, **meta)
print("unvectorised:", unvectorised)
print("spilled:", spilled)
"""


@pytest.mark.slow  # 68 compilations, ~45 s
def test_the_kernels_compile_for_hopper():
    """Each kernel, as the fused cell launches it, compiles for an H100 / H200 (sm_90) by Triton's compiler
    and the ptxas it brings, which need no GPU: what the interpreter cannot tell (a construct Triton's GPU
    backend refuses) fails here, not in a GPU session's minutes; the BatchNorm's tiles are stored by vector
    stores (16 bytes a thread at once), and no depthwise convolution's registers spill to memory."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", COMPILE_FOR_HOPPER], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "unvectorised: []" in done.stdout and "spilled: []" in done.stdout, done.stdout
