"""Shared fixtures: where the real data sets are; a recipe's parts as the step tests take them.

The shared data folder (default ``<repo>/../shared/data``, set ``DNAS_SHARED_DATA`` to move it) holds copies
of the standard data sets, with the converter tools in ``../tools`` beside it. Tests that need data skip,
saying where they looked, when it is absent.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DNAS_SHARED_DATA", REPO.parent / "shared" / "data"))
CACHE = REPO / ".cache"
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
if not torch.cuda.is_available():  # dnas.kernels' Triton kernels run on CPU tensors, by Triton's interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")


def recipe_parts(name: str):
    """A recipe's method and parts one epoch into a 4-epoch search (schedules away from their start:
    temperature, DARTS- beta, dropout rate); P-DARTS within a stage, with its skip dropout."""
    from dnas.edges import EDGES
    from dnas.methods import get_method

    method = get_method(name)
    parts = method.build_parts()
    if method.part("schedule") is not None:
        parts.edge = EDGES.build({"name": "skip_dropout", "rate": 0.4})
    parts.on_epoch_start(1, 4)
    return method, parts


class CountOps(TorchDispatchMode):
    """Counts the ATen ops that run, forward and backward, except views: each launches a kernel."""

    def __init__(self):
        super().__init__()
        self.counts = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view and func.overloadpacket.__name__ not in NO_KERNEL:
            self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


NO_KERNEL = {"detach", "lift_fresh", "empty", "_to_copy"}  # no launch, or not part of the step itself


class KernelInputs(TorchDispatchMode):
    """Counts the ``kernels`` (ATen op names), forward and backward, handed a 4-d tensor that ``flagged``
    picks (``nchw``, ``strided``)."""

    def __init__(self, kernels: set[str], flagged):
        super().__init__()
        self.kernels, self.flagged, self.counts = kernels, flagged, Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in self.kernels and any(isinstance(t, torch.Tensor) and t.dim() == 4 and self.flagged(t) for t in args):
            self.counts[name] += 1
        return func(*args, **(kwargs or {}))


def nchw(t: torch.Tensor) -> bool:
    """Channels not innermost (an image of more than one pixel)."""
    return t.shape[-2:].numel() > 1 and t.stride(1) != 1


def strided(t: torch.Tensor) -> bool:
    """Dense in neither layout: a slice of a larger tensor."""
    return not (t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last))


BATCH_NORM_AND_CONVOLUTION = {"native_batch_norm", "native_batch_norm_backward", "convolution", "convolution_backward"}


@pytest.fixture
def no_tf32():
    """IEEE float32 on a GPU, as a search computes (``dnas.search.precision``): TF32 off for cuDNN's
    convolutions, TF32 by PyTorch's default, so that float32 results compare to float32's rounding."""
    from dnas.search import precision

    with precision("cuda", "fp32"):
        yield


def batch_norm_derivatives(batch_norm, x, weight, bias, dy) -> list[torch.Tensor]:
    """A training BatchNorm ``batch_norm(x, mean, var, weight, bias, eps)`` of ``x`` (N, C, ...), its
    statistics written at momentum 1 into zeros: its output, the statistics, the gradients of x, weight and
    bias (those given) for ``dy``, the same with a graph, and the gradients of their squares' sum (second
    derivatives, as iDARTS takes)."""
    inputs = [v for v in (x, weight, bias) if v is not None]
    statistics = torch.zeros(2, x.shape[1], dtype=x.dtype, device=x.device)
    y = batch_norm(x, *statistics, weight, bias, 1e-5)
    grads = torch.autograd.grad(y, inputs, dy, retain_graph=True)
    twice = torch.autograd.grad(y, inputs, dy, create_graph=True)
    second = torch.autograd.grad(sum((v * v).sum() for v in twice), inputs, materialize_grads=True)
    return [y, statistics, *grads, *twice, *second]


@pytest.fixture
def batch_norm_by_parts_anywhere(monkeypatch):
    """``ops.batch_norm_by_parts`` on any device and small inputs: a batch cut into parts wherever each part
    holds two values of a channel (``ops.PART_VALUES``), and on the CPU the CUDA-only kernels of
    ``SyncBatchNorm`` it calls written out as tensor arithmetic, by what each computes (as PyTorch's CUDA
    sources, Normalization.cuh, define them). So the CPU tests its use of them, the parts and their merge;
    the same tests on a GPU, the kernels themselves."""
    from dnas import ops

    monkeypatch.setattr(ops, "PART_VALUES", 2)
    kernels = {"batch_norm_stats": _stats, "batch_norm_gather_stats_with_counts": _gather_stats,
               "batch_norm_elemt": _elemt, "batch_norm_backward_reduce": _backward_reduce,
               "batch_norm_backward_elemt": _backward_elemt}
    for name, cpu in kernels.items():
        monkeypatch.setattr(torch, name, _on_cpu(getattr(torch, name), cpu))


def _on_cpu(cuda, cpu):
    return lambda x, *args: (cpu if x.device.type == "cpu" else cuda)(x, *args)


def _per_channel(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.view(1, -1, *(1,) * (like.dim() - 2))


def _stats(x, eps):
    """Each channel's mean and 1 / sqrt(biased variance + eps)."""
    var, mean = torch.var_mean(x, [0, *range(2, x.dim())], correction=0)
    return mean, (var + eps).rsqrt()


def _gather_stats(x, means, invstds, running_mean, running_var, momentum, eps, counts):
    """The statistics of parts (rows: mean, 1 / sqrt(variance + eps), of ``counts`` values each) merged: the
    mean and 1 / sqrt(variance + eps) of all; the running statistics moved by ``momentum`` towards the mean
    and the unbiased variance."""
    n = counts.sum()
    mean = (counts[:, None] * means).sum(0) / n
    squares = (counts[:, None] * (invstds ** -2 - eps + (means - mean) ** 2)).sum(0)
    if running_mean is not None:
        running_mean.mul_(1 - momentum).add_(momentum * mean)
        running_var.mul_(1 - momentum).add_(momentum * squares / (n - 1))
    return mean, (squares / n + eps).rsqrt()


def _elemt(x, weight, bias, mean, invstd, eps):
    y = (x - _per_channel(mean, x)) * _per_channel(invstd, x)
    y = y if weight is None else y * _per_channel(weight, x)
    return y if bias is None else y + _per_channel(bias, x)


def _backward_reduce(grad, x, mean, invstd, weight, input_g, weight_g, bias_g):
    """Each channel's sum of the gradient and of the gradient times x - mean; the weight's and bias's gradients."""
    dims = [0, *range(2, x.dim())]
    sum_dy, sum_dy_xmu = grad.sum(dims), (grad * (x - _per_channel(mean, x))).sum(dims)
    return (sum_dy if input_g else None, sum_dy_xmu if input_g else None,
            sum_dy_xmu * invstd if weight_g else None, sum_dy if bias_g else None)


def _backward_elemt(grad, x, mean, invstd, weight, sum_dy, sum_dy_xmu, count):
    """The input's gradient, from the sums over all ``count`` values (one count per part)."""
    n = count.sum()
    scale = invstd if weight is None else invstd * weight
    return (grad - _per_channel(sum_dy / n, x)
            - (x - _per_channel(mean, x)) * _per_channel(invstd ** 2 * sum_dy_xmu / n, x)) * _per_channel(scale, x)


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """The tests use small tensors: one intra-op thread is fastest there and avoids OpenMP contention."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@contextlib.contextmanager
def cuda_sync_debug(mode: str):
    """Within it, CUDA reports each op that makes the host wait for the GPU ("warn": a warning, "error": an
    error); the mode found is put back after."""
    before = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(mode)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(before)


@pytest.fixture(scope="session")
def cifar10_root() -> Path:
    """A folder holding ``cifar-10-batches-py/``, converted once from the shared JPEG copy and cached; under a
    file lock, as the test workers (pytest-xdist) may each ask for it at once."""
    out = CACHE / "cifar10"
    tool = SHARED_DATA.parent / "tools" / "cifar10_from_jpeg.py"
    npz = [SHARED_DATA / "cifar10-jpeg" / f"{s}.npz" for s in ("train", "test")]
    CACHE.mkdir(exist_ok=True)
    with open(CACHE / "cifar10.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out / "cifar-10-batches-py" / "test_batch").is_file():
            return out
        if not tool.is_file() or not all(p.is_file() for p in npz):
            pytest.skip(f"CIFAR-10 not found: looked for {npz[0].parent}/{{train,test}}.npz and {tool}; "
                        f"set DNAS_SHARED_DATA to the shared data folder")
        # Convert into a temporary folder and move it in whole, so an interrupted run leaves no half-written cache.
        tmp = Path(tempfile.mkdtemp(prefix="cifar10-", dir=CACHE))
        try:
            subprocess.run([sys.executable, str(tool), str(tmp)], check=True, stdout=subprocess.DEVNULL)
            shutil.rmtree(out, ignore_errors=True)  # an incomplete earlier cache
            tmp.replace(out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


@pytest.fixture(scope="session")
def fashion_mnist_root() -> Path:
    """The Debian package's Fashion-MNIST folder (four idx .gz files)."""
    if not (FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST not found in {FASHION_MNIST_DIR}; apt-get install -y dataset-fashion-mnist")
    return FASHION_MNIST_DIR
