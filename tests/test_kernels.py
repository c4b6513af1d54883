"""dnas.kernels: the Triton BatchNorm against PyTorch's, on a GPU by its compiled kernels and on the CPU by
Triton's interpreter (conftest.py sets TRITON_INTERPRET=1 where no GPU is)."""
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


def test_triton_batch_norms_without_triton_say_what_they_need(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)
    monkeypatch.delitem(sys.modules, "dnas.kernels")
    monkeypatch.delattr(dnas, "kernels")
    monkeypatch.setattr(fused_module, "BATCH_NORM_KERNELS", {"cpu": "triton"})
    with pytest.raises(RuntimeError, match="'triton', whose kernels need the triton package"):
        search_step("darts-v1", fused=True)


COMPILE_FOR_HOPPER = r"""
import re
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from dnas import kernels

assert not kernels.INTERPRETED
INTS, FLOATS = {"C", "M", "CHUNK"}, {"eps"}
unvectorised = []
def compile(kernel, dtype, **constexprs):
    # as a launch specialises them: pointers, channels and the values' counts divisible by 16
    constexprs["ACC"] = tl.float64 if dtype == "fp64" else tl.float32
    kind = lambda n: ("constexpr" if n in constexprs else "i32" if n in INTS else "fp32" if n in FLOATS
                      else "*" + dtype)
    signature = {n: kind(n) for n in kernel.arg_names}
    aligned = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(kernel.arg_names)
               if signature[n].startswith("*") or n in ("C", "M", "CHUNK")}
    compiled = triton.compile(ASTSource(kernel, signature, constexprs, aligned),
                              target=GPUTarget("cuda", 90, 32))
    if kernel is not kernels._chunk_sums and not re.search(r"st\.global\.v\d", compiled.asm["ptx"]):
        unvectorised.append((kernel.fn.__name__, dtype, constexprs))
for dtype, channels, block, length, relu in (("fp32", 1, 1024, 1024, False), ("fp32", 1, 1024, 64, False),
                                            ("fp64", 1, 256, 256, False), ("fp32", 32, 32, 1024, True)):
    tile = dict(L=length, CHANNELS=channels, BLOCK=block, RELU_NHWC=relu)
    for shift in (True, False):
        compile(kernels._chunk_sums, dtype, SHIFT=shift, **tile)
    for weight, bias in ((True, False), (False, False), (True, True)):
        compile(kernels._normalise, dtype, HAS_WEIGHT=weight, HAS_BIAS=bias, **tile)
    for weight, want_weight, want_bias in ((True, True, False), (True, True, True), (False, False, False)):
        compile(kernels._grad_input, dtype, HAS_WEIGHT=weight, WANT_WEIGHT=want_weight,
                WANT_BIAS=want_bias, **tile)
print("unvectorised:", unvectorised)
"""


@pytest.mark.slow  # 32 compilations, ~25 s
def test_the_kernels_compile_for_hopper():
    """Each kernel, as the fused cell launches it, compiles for an H100 / H200 (sm_90) by Triton's compiler
    and the ptxas it brings, which need no GPU: what the interpreter cannot tell (a construct Triton's GPU
    backend refuses) fails here, not in a GPU session's minutes; and every tile is stored by vector stores
    (16 bytes a thread at once)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", COMPILE_FOR_HOPPER], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "unvectorised: []" in done.stdout, done.stdout
