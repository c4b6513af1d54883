"""The fast path of the supernet cells (spaces/fused.py) computes what the readable cells compute.

Every built-in recipe takes one search step (architecture step of its order, then weight step) on a
readable and a fused supernet from the same seed, of the DARTS space and of the NAS-Bench-201 space, in
float64 so that the tolerance can be tight: the losses, the gradients of every weight and alpha, the
parameters after the optimisers' steps, the BatchNorm running statistics and the evaluation-mode outputs
(which read those statistics) must agree.
"""
from __future__ import annotations

import contextlib
import copy
from collections import Counter
from functools import partial
from types import SimpleNamespace
from unittest.mock import patch

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from dnas import arch_grad, ops
from dnas.edges import EDGES, GaussianNoise, MixedEdge
from dnas.ops import OPS, FactorizedReduce, channels_innermost
from dnas.methods import builtin_methods
from dnas.relax import GumbelSoftmax
from dnas.search import SearchConfig, bilevel_step, optimizers
from dnas.spaces.darts import DartsSupernet
from dnas.spaces.nb201 import NB201Supernet
from dnas.spaces import fused as fused_module
from dnas.spaces.fused import _PLANS, Topology, _build_plan, dense_samples, merge_kernel_sizes

from conftest import BATCH_NORM_AND_CONVOLUTION, CountOps, KernelInputs, nchw, recipe_parts, strided

RECIPES = sorted(builtin_methods())
#: the recipes whose step takes longest to compare (iDARTS's double backward, SDARTS-ADV's attack steps): in the
#: slow set (make test-slow), which CI runs too
SLOWEST = ("idarts", "sdarts-adv")


def slowest_marked(cases: list) -> list:
    """``cases`` for ``parametrize`` (recipe names, or tuples that begin with one), those of the ``SLOWEST``
    recipes marked slow."""
    values = lambda case: case if isinstance(case, tuple) else (case,)
    return [pytest.param(*values(case), marks=pytest.mark.slow) if values(case)[0] in SLOWEST else case
            for case in cases]


def supernet(fused, relaxation=None, edge=None, dtype=torch.float64, space="darts", C=None, **options):
    torch.manual_seed(0)
    if space == "nb201":
        return NB201Supernet(10, 3, C=C or 4, N=2, relaxation=relaxation, edge=edge, fused=fused, **options).to(dtype)
    return DartsSupernet(10, 3, C=C or 8, layers=5, relaxation=relaxation, edge=edge, fused=fused, **options).to(dtype)


def random_mask(model, keep: int, seed: int = 3) -> None:
    """Keep ``keep`` random ops per edge, and drop one edge of each cell type entirely (P-DARTS, DARTS-PT)."""
    g = torch.Generator().manual_seed(seed)
    for mask in model.op_mask.values():
        mask.zero_()
        for row in mask:
            row[torch.randperm(len(row), generator=g)[:keep]] = True
        mask[3] = False


def search_step(name: str, fused: bool, device="cpu", dtype=torch.float64, layout=torch.contiguous_format,
                space="darts", C=None, **config):
    """One bilevel step of a recipe on a small supernet of ``space`` (``C`` channels; None: 8, NAS-Bench-201
    4), its weights and images in ``layout``, its optimisers as ``config`` (``SearchConfig``) has them; what it
    leaves behind."""
    method, parts = recipe_parts(name)
    model = supernet(fused, parts.relaxation, parts.edge, dtype, space, C, **method.space_options(space))
    model = model.to(device, memory_format=layout)
    if method.part("schedule") is not None and space == "darts":  # P-DARTS, second stage: 3 ops left per edge
        random_mask(model, keep=3)
    w_opt, a_opt = optimizers(model, SearchConfig(**config))
    g = torch.Generator().manual_seed(1)
    batch = lambda: (torch.randn(4, 3, 16, 16, generator=g, dtype=dtype).to(device, memory_format=layout),
                     torch.randint(0, 10, (4,), generator=g).to(device))
    train, val = batch(), batch()
    torch.manual_seed(2)
    loss, _ = bilevel_step(model, parts, a_opt, w_opt, train, val, 5.0)
    if fused:  # every cell ran fused, none fell back to the readable cell
        cells = [cell for cell in model.cells if hasattr(cell, "forward_fused")]
        assert all(_PLANS[cell] and None not in _PLANS[cell].values() for cell in cells)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    state = {n: t.clone() for n, t in model.state_dict().items()}
    model.eval()
    with torch.no_grad():  # as the search evaluates
        logits = model(val[0])
    return loss, grads, state, logits


def assert_close(a, b, what, rtol=1e-9):
    # relative to the tensor's size, as sums differ in order only; a gradient that is zero but for rounding
    # (a bias before a training-mode BatchNorm) is held to 1e-15
    scale = max(a.abs().max().item(), 1e-6)
    torch.testing.assert_close(a, b, rtol=0, atol=rtol * scale, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("name", slowest_marked(RECIPES))
def test_step_equals_readable(name, monkeypatch):
    """iDARTS's readable step differentiates its weights' gradient by PyTorch's own double backward, its fused
    one within ``ops.second_derivatives`` (grouped convolutions' backward differentiated by grouped kernels)."""
    with monkeypatch.context() as patched:
        patched.setattr(arch_grad, "second_derivatives", contextlib.nullcontext)
        readable = search_step(name, fused=False)
    assert_same_step(readable, search_step(name, fused=True))


@pytest.mark.parametrize("name", RECIPES)
def test_nb201_step_equals_readable(name):
    """The NAS-Bench-201 cell (one input, three nodes, bare poolings) runs by the same fused path."""
    assert_same_step(search_step(name, fused=False, space="nb201"), search_step(name, fused=True, space="nb201"))


@pytest.mark.parametrize("name, space, fused", [
    *((name, space, fused) for name, space in [("darts-v1", "darts"), ("pc-darts", "darts"), ("gdas", "darts"),
                                               ("darts-minus", "darts"), ("noisy-darts", "darts"), ("p-darts", "darts"),
                                               ("darts-v1", "nb201"), ("pc-darts", "nb201"), ("gdas", "nb201")]
      for fused in (False, True)),
    ("darts-v2", "darts", True)])  # second order's unrolled model: the fused cells under functional_call
def test_channels_last_step_equals_the_default_layout(name, space, fused):
    """``channels_last`` (NHWC weights and images) changes the kernels, not what they compute: a seeded step
    draws the same NoisyDARTS noise and P-DARTS skip dropout masks in either layout."""
    assert_same_step(search_step(name, fused, space=space),
                     search_step(name, fused, layout=torch.channels_last, space=space))


@pytest.mark.parametrize("name, space, layout", slowest_marked([
    ("darts-v1", "darts", torch.contiguous_format), ("darts-v1", "darts", torch.channels_last),
    ("pc-darts", "darts", torch.contiguous_format), ("idarts", "darts", torch.contiguous_format),
    ("gdas", "darts", torch.contiguous_format), ("darts-v1", "nb201", torch.contiguous_format)]))
def test_the_gpu_convolution_forms_compute_the_same_step(name, space, layout, monkeypatch):
    """The forms a GPU runs its convolutions in (ops.FORM_DEVICES: depthwise NHWC and by phases, grouped
    pointwise by matrix products), here on the CPU, leave a step of both cells as the plain convolutions do
    (iDARTS, the slowest step, on the fused cell only, against its own plain step: its second derivatives
    too; test_step_equals_readable holds that plain step to the readable one)."""
    paths = (True,) if name == "idarts" else (False, True)
    reference = search_step(name, fused=paths[0], layout=layout, space=space)
    monkeypatch.setattr(ops, "FORM_DEVICES", ("cpu",))
    for fused in paths:
        assert_same_step(reference, search_step(name, fused, layout=layout, space=space))


@pytest.mark.parametrize("name, layout, forms", [("darts-v1", torch.contiguous_format, False),
                                                 ("darts-v1", torch.contiguous_format, True),
                                                 ("darts-v1", torch.channels_last, True),
                                                 ("pc-darts", torch.channels_last, False),
                                                 ("gdas", torch.contiguous_format, False),
                                                 ("p-darts", torch.contiguous_format, False)])
def test_merged_kernel_sizes_compute_the_same_step(name, layout, forms, monkeypatch):
    """The 3x3 and 5x5 variants of an op run as one (``merge_kernel_sizes``): on every edge (darts-v1, in
    NCHW, and in NHWC on the phases of the dilated ones, in the GPU's convolution forms), on a part of the
    channels (PC-DARTS), on the edges where both are sampled (GDAS) or kept (P-DARTS's masked ops); the step
    is the readable one's."""
    plans = []  # those built
    monkeypatch.setattr(fused_module, "_build_plan", lambda *a, build=fused_module._build_plan:
                        plans.append(plan := build(*a)) or plan)
    reference = search_step(name, fused=False, layout=layout)
    if forms:
        monkeypatch.setattr(ops, "FORM_DEVICES", ("cpu",))
    with merge_kernel_sizes():
        assert_same_step(reference, search_step(name, fused=True, layout=layout))
    sizes = lambda g: {m.kernel_size for kind, mods in g.leaves if kind == "conv" for m in mods}
    assert any(len(sizes(g)) > 1 for plan in plans for b in plan.batches for g in b.groups)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device: the step a GPU replays"))])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("space", ["darts", "nb201"])
def test_dense_samples_compute_the_sampled_step(space, layout, device):
    """Within ``dense_samples`` GDAS's fused cells run every op, weighed by its sample, by one plan for every
    sample: the step is the readable cell's, which runs the sampled ops only. The ops not sampled get zero
    gradients (the readable cell none; without weight decay the weight optimiser then leaves them as they
    are), and their BatchNorms' running statistics and counters stay."""
    plans = []
    step = partial(search_step, "gdas", layout=layout, space=space, device=device, weight_decay=0)
    reference = step(fused=False)
    with dense_samples(), patch.object(fused_module, "_build_plan", lambda *a, build=fused_module._build_plan:
                                       plans.append(plan := build(*a)) or plan):
        loss, grads, state, logits = step(fused=True)
    assert plans and all(plan.straight_through is None for plan in plans)  # every op, whatever the sample
    unsampled = set(grads) - set(reference[1])
    assert unsampled and all(not grads[n].any() for n in unsampled)
    assert_same_step(reference, (loss, {n: g for n, g in grads.items() if n not in unsampled}, state, logits))


def test_dense_samples_run_the_sampled_ops_of_cells_with_other_modules(monkeypatch):
    """An op the fused path does not batch (a GELU) runs as its own module, whose BatchNorm would move with any
    sample: such a cell reads its sample on the host and runs the sampled ops fused, as without
    ``dense_samples``."""
    monkeypatch.setitem(OPS._table, "gelu_conv_1x1", OTHER_MODULES["gelu_conv_1x1"])
    ops = ("none", "gelu_conv_1x1", "skip_connect", "sep_conv_3x3")
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    states = []
    for fused, dense in [(False, False), (True, True)]:
        model = supernet(fused, GumbelSoftmax(hard=True), ops=ops)
        torch.manual_seed(6)
        with dense_samples(dense):
            model(x).sum().backward()
        states.append(model.state_dict())
    for name, value in states[0].items():
        assert_close(value.double(), states[1][name].double(), name)
    assert all(any(plan.straight_through is not None for plan in _PLANS[cell].values())  # a sampled ops' plan
               for cell in model.cells)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device: cuDNN's BatchNorm kernels"))])
def test_batch_norms_handed_a_weight_and_a_bias_compute_the_same_step(device, monkeypatch):
    """Where ``BATCH_NORM_KERNELS`` names cuDNN's, every BatchNorm of the fused cell gets a weight and a bias,
    ones and zeros where it has none (on a GPU cuDNN's kernels then run it): the step is the same."""
    reference = search_step("darts-v1", fused=True, device=device)
    handed = []

    def batch_norm(x, mean, var, weight, bias, *rest):
        handed.append(weight is not None and bias is not None)
        return F.batch_norm(x, mean, var, weight, bias, *rest)

    monkeypatch.setattr(fused_module, "F", SimpleNamespace(**{**vars(F), "batch_norm": batch_norm}))
    monkeypatch.setattr(fused_module, "BATCH_NORM_KERNELS", {device: "cudnn"})
    assert_same_step(reference, search_step("darts-v1", fused=True, device=device))
    assert handed and all(handed)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device: SyncBatchNorm's kernels themselves"))])
def test_batch_norms_by_parts_compute_the_same_step(device, batch_norm_by_parts_anywhere, monkeypatch):
    """Where ``BATCH_NORM_KERNELS`` names "parts", the fused cell's training BatchNorms run by
    ``ops.batch_norm_by_parts``: the same step (its second derivatives, which iDARTS takes, are
    test_ops.py's)."""
    reference = search_step("darts-v1", fused=True, device=device)
    parts = []
    apply = ops._BatchNormByParts.apply
    monkeypatch.setattr(ops._BatchNormByParts, "apply", lambda *args: parts.append(args[4]) or apply(*args))
    monkeypatch.setattr(fused_module, "BATCH_NORM_KERNELS", {device: "parts"})
    assert_same_step(reference, search_step("darts-v1", fused=True, device=device))
    assert parts and all(k > 1 for k in parts)


def test_unknown_batch_norm_kernels_are_named_with_the_valid_ones(monkeypatch):
    monkeypatch.setattr(fused_module, "BATCH_NORM_KERNELS", {"cpu": "cudnn "})
    with pytest.raises(ValueError, match=r"BATCH_NORM_KERNELS\['cpu'\] is 'cudnn '; valid: 'cudnn', 'parts', 'triton'"):
        search_step("darts-v1", fused=True)


def assert_same_step(reference, other, rtol=1e-9):
    """Two ``search_step`` results: loss, gradients, state after the step and evaluation logits."""
    loss_r, grads_r, state_r, logits_r = reference
    loss_f, grads_f, state_f, logits_f = other
    close = lambda a, b, what: assert_close(a, b, what, rtol)
    close(loss_r, loss_f, "training loss")
    assert grads_r.keys() == grads_f.keys()
    assert any(n.startswith("alphas.") for n in grads_r) and any(n.startswith("cells.") for n in grads_r)
    for n in grads_r:
        close(grads_r[n], grads_f[n], f"gradient of {n}")
    assert state_r.keys() == state_f.keys()  # a fused supernet is a drop-in: same state_dict
    for n in state_r:
        if "num_batches_tracked" in n:
            assert torch.equal(state_r[n], state_f[n]), n
        else:
            close(state_r[n].double(), state_f[n].double(), n)
    close(logits_r, logits_f, "evaluation-mode logits")


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("space", ["darts", "nb201"])
def test_partial_channels_without_edge_normalisation(space, layout):
    """PC-DARTS's partial channels alone, without edge weights (the recipe has them): the fused cell adds the
    bypassed channels of a node's edges unweighted, and shuffles the node's channels once."""
    out = []
    for fused in (False, True):
        model = supernet(fused, edge=EDGES.build({"name": "partial_channel"}), space=space).to(memory_format=layout)
        x = torch.randn(2, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
        logits = model(x.contiguous(memory_format=layout))
        out.append((logits, torch.autograd.grad(logits.square().sum(), list(model.parameters()))))
    (logits_r, grads_r), (logits_f, grads_f) = out
    assert_close(logits_r, logits_f, "logits")
    for (n, _), a, b in zip(model.named_parameters(), grads_r, grads_f):
        assert_close(a, b, f"gradient of {n}")


@pytest.mark.parametrize("edge", ["sum", "partial_channel", "auxiliary_skip"])
@pytest.mark.parametrize("hard", [False, True])
def test_op_mask_forward_and_gradients(hard, edge):
    """Masked ops are not computed and dropped edges add nothing, soft or hard (GDAS's one op per edge),
    also beside the bypass and edge weights of PC-DARTS and the auxiliary skip of DARTS-."""
    out = []
    for fused in (False, True):
        model = supernet(fused, GumbelSoftmax(hard=hard, tau=(1.0, 1.0)), EDGES.build({"name": edge}),
                         edge_normalization=edge == "partial_channel")
        random_mask(model, keep=4)
        x = torch.randn(2, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
        torch.manual_seed(6)
        logits = model(x)
        grads = torch.autograd.grad(logits.square().sum(), list(model.parameters()), allow_unused=True,
                                    materialize_grads=True)
        out.append((logits, grads))
    assert_close(out[0][0], out[1][0], "logits")
    for i, (a, b) in enumerate(zip(out[0][1], out[1][1])):
        assert_close(a, b, f"gradient {i}")


@pytest.mark.parametrize("ops, merged", [
    (("none", "skip_connect", "nor_conv_3x3", "conv_7x1_1x7", "sep_conv_7x7", "avg_pool_3x3"), False),
    (("skip_connect", "sep_conv_3x3", "sep_conv_5x5", "sep_conv_7x7", "dil_conv_3x3", "dil_conv_5x5"), True)],
    ids=["other-ops", "three-sizes-merged"])
def test_other_ops_run_fused_with_equal_results(ops, merged):
    """Ops beyond the DARTS eight (plain ReLU-Conv-BN, 7x1-1x7, 7x7 separable) batch the same way; within
    ``merge_kernel_sizes``, the 3x3, 5x5 and 7x7 separable convolutions run as one op of 7x7 kernels."""
    out = []
    for fused in (False, True):
        with merge_kernel_sizes(merged):
            model = supernet(fused, ops=ops)
            x = torch.randn(2, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
            loss = model(x).logsumexp(1).sum()
        out.append((loss, torch.autograd.grad(loss, list(model.parameters()))))
    assert_close(out[0][0], out[1][0], "loss")
    for a, b in zip(out[0][1], out[1][1]):
        assert_close(a, b, "gradient")
    if merged:
        plan = next(iter(_PLANS[model.cells[0]].values()))
        sizes = lambda g: {m.kernel_size for kind, mods in g.leaves if kind == "conv" for m in mods}
        assert any({(3, 3), (5, 5), (7, 7)} <= sizes(g) for b in plan.batches for g in b.groups)


def forward_backward(fused: bool, ops: tuple[str, ...]):
    """A supernet of ``ops``: its training loss and gradients, then its state and its evaluation output, as
    ``assert_same_step`` compares them."""
    model = supernet(fused, ops=ops)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    loss = model(x).logsumexp(1).sum()
    names, params = zip(*model.named_parameters())
    grads = dict(zip(names, torch.autograd.grad(loss, params)))
    model.eval()
    return loss, grads, model.state_dict(), model(x)


class ResidualConv(nn.Sequential):
    """A Sequential whose forward adds its input: not the sequence of its children."""

    def __init__(self, C, stride, affine):
        super().__init__(nn.ReLU(), nn.Conv2d(C, C, 3, stride, 1, bias=False), nn.BatchNorm2d(C, affine=affine))
        self.stride = stride

    def forward(self, x):
        y = super().forward(x)
        return y if self.stride > 1 else x + y


class CentredConv(nn.Conv2d):
    """A convolution of its weights less their mean (weight standardisation's centring)."""

    def forward(self, x):
        return self._conv_forward(x, self.weight - self.weight.mean((1, 2, 3), keepdim=True), None)


OTHER_MODULES = {
    "residual_conv_3x3": ResidualConv,
    "centred_conv_3x3": lambda C, stride, affine: nn.Sequential(
        nn.ReLU(), CentredConv(C, C, 3, stride, 1, bias=False), nn.BatchNorm2d(C, affine=affine)),
    "gelu_conv_1x1": lambda C, stride, affine: nn.Sequential(nn.GELU(), nn.Conv2d(C, C, 1, stride, bias=False),
                                                             nn.BatchNorm2d(C, affine=affine)),
    "avg_pool_3x3_with_pad": lambda C, stride, affine: nn.AvgPool2d(3, stride, 1, count_include_pad=True),
    "conv_3x3_same": lambda C, stride, affine: nn.Sequential(
        nn.ReLU(), nn.Conv2d(C, C, 3, stride, "same" if stride == 1 else 1, bias=False),
        nn.BatchNorm2d(C, affine=affine)),
}


@pytest.mark.parametrize("ops", [("none", "gelu_conv_1x1", "skip_connect"),
                                 ("none", "avg_pool_3x3", "avg_pool_3x3_with_pad", "skip_connect"),
                                 ("none", "conv_3x3_same", "sep_conv_3x3"),
                                 ("residual_conv_3x3", "centred_conv_3x3", "sep_conv_3x3", "skip_connect")],
                         ids=["module-per-edge", "poolings-differing-in-padding", "padding-same", "subclasses"])
def test_ops_of_other_modules_equal_the_readable_cell(ops, monkeypatch):
    """A user's ops: a module the fused path does not batch (GELU) runs per edge, and the edges' sums still
    come out per node; two poolings that differ only in a setting their repr leaves out are two heads, not
    one; a convolution padded "same" runs as its own module; subclasses of a Sequential and of a
    convolution that change what they compute run as themselves. Loss, gradients and evaluation output are
    the readable cell's."""
    for name, factory in OTHER_MODULES.items():
        monkeypatch.setitem(OPS._table, name, factory)
    assert_same_step(forward_backward(False, ops), forward_backward(True, ops))


def test_an_edge_that_draws_twice_runs_the_readable_cell(monkeypatch):
    """NoisyDARTS's noise on the skip and a user's op that draws noise too: the fused cell keeps one draw per
    edge, so such a cell runs its own forward, and a seeded step is the readable one's."""
    monkeypatch.setitem(OPS._table, "noisy_avg_pool", lambda C, stride, affine: GaussianNoise(
        nn.AvgPool2d(3, stride, 1, count_include_pad=False), 0.2))
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    outputs = []
    for fused in (False, True):
        model = supernet(fused, edge=EDGES.build({"name": "noisy_skip"}), ops=("skip_connect", "noisy_avg_pool"))
        torch.manual_seed(6)
        outputs.append(model(x))
    assert_close(*outputs, "logits")
    assert all(plan is None for cell in model.cells for plan in _PLANS[cell].values())


def test_an_op_replaced_after_a_forward_is_the_one_that_runs():
    """The fused path caches how a cell runs; setting a module inside a cell (here each edge's sep_conv_3x3
    replaced by a copy of its dil_conv_3x3) makes the next forward build it afresh from the modules the
    cell holds then. A module made elsewhere leaves the plans as they are (a CUDA graph reads them)."""
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    readable, fused = supernet(False), supernet(True)
    readable(x), fused(x)
    plans = [_PLANS[cell] for cell in fused.cells]
    supernet(True)  # another network: thousands of modules set
    assert all(_PLANS[cell] is kept for cell, kept in zip(fused.cells, plans))
    for model in (readable, fused):
        for cell in model.cells:
            for edge in cell.edges:
                edge.ops[4] = copy.deepcopy(edge.ops[6])
    assert all(cell not in _PLANS for cell in fused.cells)
    assert_close(readable(x), fused(x), "logits")


def test_a_module_inserted_deleted_or_set_in_a_shared_op_is_the_one_that_runs():
    """What no registration hook reports, a module inserted into an op's ``nn.Sequential`` or deleted from
    it, makes the next forward plan the cell afresh too (its containers' lengths are checked); and a module
    set inside an op that two cells share forgets both cells' plans."""
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    models = []
    for fused in (False, True):
        torch.manual_seed(0)
        models.append(DartsSupernet(10, 3, C=4, layers=6, fused=fused).to(torch.float64))  # cells 0, 1: normal, C 4
    changes = [lambda m: m.cells[0].edges[0].ops[4][0].insert(1, nn.Tanh()),  # sep_conv_3x3: tanh after its ReLU
               lambda m: m.cells[2].edges[2].ops[6].__delitem__(0),  # a dil_conv_3x3 without its ReLU
               lambda m: setattr(m.cells[0].edges[1].ops, "7", m.cells[1].edges[1].ops[7]),  # one op, two cells
               lambda m: m.cells[1].edges[1].ops[7].__setitem__(3, nn.Identity())]  # its BatchNorm: none
    for change in changes:
        assert_close(*(m(x) for m in models), "logits")
        for model in models:
            change(model)
    assert_close(*(m(x) for m in models), "logits")


def test_ops_the_same_on_every_edge_equal_the_readable_cell():
    """Poolings with their BatchNorms and the skip compute the same on every edge leaving a state, so the
    fused cell runs them once per source; in a space of only such ops every source batch runs so. The loss,
    gradients, every edge's BatchNorm running statistics and the evaluation-mode output are the readable
    cell's."""
    ops = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect")
    assert_same_step(forward_backward(False, ops), forward_backward(True, ops))


def test_unknown_edge_class_falls_back_to_the_readable_cell():
    class Doubled(MixedEdge):
        def forward(self, x, weights, active=None):
            return 2 * super().forward(x, weights, active)

    edge = lambda C, stride, candidates: Doubled(candidates(C, stride))
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    readable, fused = supernet(False, edge=edge), supernet(True, edge=edge)
    with pytest.warns(UserWarning, match="fused cells: edges of Doubled are not of a class the fused path batches "
                                         r"\(MixedEdge, PartialChannelEdge, AuxiliarySkipEdge\), so their cells run"):
        assert_close(readable(x), fused(x), "logits")
    assert all(plan is None for cell in fused.cells for plan in _PLANS[cell].values())
    # and a sample kept on the device (dense_samples) reaches the readable cell read back as its ops
    hard = [supernet(f, GumbelSoftmax(hard=True), edge=edge) for f in (False, True)]
    outputs = []
    with pytest.warns(UserWarning, match="fused cells: edges of Doubled"):
        for model, dense in zip(hard, (False, True)):
            torch.manual_seed(6)
            with dense_samples(dense):
                outputs.append(model(x))
    assert_close(*outputs, "logits")


def test_a_training_batch_norm_in_a_cell_in_evaluation_mode_is_refused():
    """A fused cell reads its mode from the cell: a BatchNorm left training in a cell set to evaluation (a
    mode set module by module) would move running statistics the cell did not make room for."""
    model = supernet(True).eval()
    model.cells[0].edges[0].ops[4][0][3].train()  # sep_conv_3x3's first BatchNorm
    with pytest.raises(RuntimeError, match=r"model\.train\(\) or model\.eval\(\)"):
        model(torch.randn(2, 3, 16, 16, dtype=torch.float64))


def kernels(model, x) -> Counter:
    with CountOps() as ops:
        F.cross_entropy(model(x), torch.zeros(len(x), dtype=torch.long)).backward()
    return ops.counts


@pytest.mark.parametrize("merged", [False, True])
def test_fused_forward_launches_fewer_kernels(merged):
    """The point of the fast path: per cell, one convolution and one BatchNorm per op, depth and source
    batch instead of one per op, depth and edge (``merged``: one for the 3x3 and 5x5 variants of an op), and
    the op weights applied by those BatchNorms and one matmul instead of one multiply per op and edge."""
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    readable = kernels(supernet(False), x)
    with merge_kernel_sizes(merged):
        fused = kernels(supernet(True), x)
    cells, batches, reductions = 5, 4, 2  # source batches: the two inputs together, then nodes 0, 1, 2
    # stem; per cell 2 preprocessing convs and 12 per edge; the skip's FactorizedReduce on the 8 reducing
    # edges (2 convs); FactorizedReduce preprocessing after a reduction (1 conv more)
    assert readable["convolution"] == 1 + cells * (2 + 14 * 12) + reductions * 8 * 2 + reductions
    # per batch 4 for each separable op and 2 for each dilated one, or for both sizes of each
    convolutions = 6 if merged else 12
    assert fused["convolution"] == 1 + cells * (2 + batches * convolutions) + reductions * 2 + reductions
    assert readable["native_batch_norm"] == 1 + cells * (2 + 14 * 8) + reductions * 8
    # per batch the BatchNorms of the convolution ops (2 in each separable one, 1 in each dilated one, or in
    # both sizes of each), the FactorizedReduce skip's on the reducing edges; the poolings' BatchNorms run
    # once per source, where several edges leave it (one for both in all but the last batch, one each in the
    # last)
    norms = 3 if merged else 6
    assert fused["native_batch_norm"] == 1 + cells * (2 + batches * norms) + reductions + cells * (batches - 1 + 2)
    # DARTS Eq. 2: the op weights are the affine weights of the ops' last BatchNorms, and the ops that
    # compute the same on every edge of a source (poolings, skip) are summed by one batched matmul (two
    # backward); only the last batch's skip (one edge per source) multiplies by its weight. The op weights
    # of a cell are gathered by one index_select (an index_add backward), no other indexing
    assert fused["bmm"] == cells * (batches - 1) * 3
    assert fused["mul"] == cells * 3
    assert fused["index_select"] == fused["index_add"] == cells
    # stacks: the per-source sums' weights and outputs only; a head copied to its edges takes none, forward
    # or backward (a copy of stacked heads did, backward, by its unbind: the whole copy's gradient again)
    assert fused["stack"] == cells * (batches - 1) * 2
    assert sum(fused.values()) < sum(readable.values()) / 4


def test_fused_nb201_cells_launch_fewer_kernels():
    """NAS-Bench-201 cells: per cell, each convolution op and its BatchNorm run once per source batch (the
    input, then nodes 1 and 2) instead of once per edge, and the average pooling runs once per source."""
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    readable, fused = (kernels(supernet(f, space="nb201"), x) for f in (False, True))
    cells, edges, batches = 6, 6, 3
    other_convs, other_bns, other_pools = 1 + 2 * 3, 1 + 2 * 2 + 1, 2  # stem, residual blocks, last BN
    assert readable["convolution"] == other_convs + cells * edges * 2
    assert fused["convolution"] == other_convs + cells * batches * 2
    assert readable["native_batch_norm"] == other_bns + cells * edges * 2
    assert fused["native_batch_norm"] == other_bns + cells * batches * 2
    assert readable["avg_pool2d"] == other_pools + cells * edges
    assert fused["avg_pool2d"] == other_pools + cells * batches
    assert sum(fused.values()) < sum(readable.values()) / 2


@pytest.mark.parametrize("space", ["darts", "nb201"])
def test_dense_first_convolutions_read_each_source_once(space, monkeypatch):
    """An op whose first step after its ReLU is a dense convolution (NAS-Bench-201's nor_conv, the
    FactorizedReduce skip of a reducing DARTS edge) reads each source once, by one convolution with groups =
    sources computing all its edges, not from a copy of the source per edge: NAS-Bench-201's cells copy
    nothing to their edges."""
    copied, convs = [], []
    monkeypatch.setattr(fused_module, "_copy_to_edges", lambda begun, wanted, *a, copy=fused_module._copy_to_edges:
                        copied.extend(wanted) or copy(begun, wanted, *a))
    monkeypatch.setattr(fused_module, "_conv", lambda x, mods, blocks, *a, conv=fused_module._conv, **k:
                        convs.append((mods, blocks)) or conv(x, mods, blocks, *a, **k))
    model = supernet(True, space=space)
    kernels(model, torch.randn(2, 3, 16, 16, dtype=torch.float64))
    reduce = {id(c) for m in model.modules() if isinstance(m, FactorizedReduce) for c in (m.conv_1, m.conv_2)}
    dense = [(len(mods), blocks) for mods, blocks in convs if len(mods) > 1 and mods[0].groups == 1
             and (space == "nb201" or id(mods[0]) in reduce)]
    sources, edges = (1, {3, 2}) if space == "nb201" else (2, {8})  # the edges out of a batch's sources
    assert dense and {n for n, _ in dense} == edges and {blocks for _, blocks in dense} == {sources}
    assert copied if space == "darts" else not copied  # DARTS's separable convolutions begin depthwise


def test_an_nchw_cell_hands_its_gpus_depthwise_convolutions_nhwc_inputs(monkeypatch):
    """In an NCHW cell, with the GPU's forms (ops.FORM_DEVICES: depthwise convolutions NHWC), what a depthwise
    convolution reads is written NHWC by what makes it, the copy its form would otherwise make: a source copied
    to the edges of ops that begin depthwise (separable, dilated), the ReLU inside a separable op, and the
    ReLU that begins a source's ops where each of them reads it so (``ops.relu_nhwc``); their gradients come
    back NCHW (test_the_gpu_convolution_forms_compute_the_same_step: the same step). The tests' supernet: 380
    copies a step, against 503 with the ReLUs' own copies and 580 with the edges' copies NCHW too (pinned).
    Without those forms the copies stay NCHW."""
    copies, original = [], fused_module._copy_to_edges
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    counts = {}
    ways = ((False, True, True), (True, False, False), (True, True, False), (True, True, True))
    for forms, nhwc_copies, relu in ways:
        monkeypatch.setattr(ops, "FORM_DEVICES", ("cpu",) if forms else ("cuda",))
        monkeypatch.setattr(fused_module, "_copy_to_edges", lambda begun, wanted, to_nhwc, on=nhwc_copies:
                            copies.append(out := original(begun, wanted, to_nhwc if on else set())) or out)
        monkeypatch.setattr(fused_module, "relu_nhwc", ops.relu_nhwc if relu else F.relu)  # NCHW: copied in
        copies.clear()
        counts[forms, nhwc_copies, relu] = kernels(supernet(True), x)["clone"]
        assert {t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
                for out in copies for t in out.values()} == {forms and nhwc_copies}
    assert [counts[True, *ways] for ways in ((False, False), (True, False), (True, True))] == [580, 503, 380]


def test_a_dilated_convolution_whose_phases_do_not_fit_keeps_its_nchw_input(monkeypatch):
    """28 x 28 images leave 7 x 7 maps, whose 2 x 2 phases do not fit: there a dilated depthwise convolution
    runs as it is, in the layout of its input, so its source is not copied NHWC for it (which would hand it
    to cuDNN's slower NHWC dilated kernel, copy in and out); the step is the readable one's."""
    seen = []  # (dilation, input NHWC) of each plain depthwise convolution at 7 x 7
    monkeypatch.setattr(ops, "_conv2d", lambda x, w, b, stride, padding, dilation, groups, f=ops._conv2d:
                        (seen.append((dilation, channels_innermost(x))) if groups == x.shape[1] > 1
                         and x.shape[-1] == 7 else None) or f(x, w, b, stride, padding, dilation, groups))
    monkeypatch.setattr(ops, "FORM_DEVICES", ("cpu",))
    kernels(supernet(True), torch.randn(2, 3, 28, 28, dtype=torch.float64))
    dilated = [nhwc for dilation, nhwc in seen if dilation not in (1, (1, 1))]  # (the phases' are undilated)
    assert dilated and not any(dilated)


def test_dilated_convolutions_run_on_phases_taken_once_per_source_batch(monkeypatch):
    """In NHWC a fused cell computes its dilated convolution ops whole on the phases of their input
    (``ops.to_phases``): taken once for both dilated ops of a source batch, their outputs added on the
    phases and put back once, where each convolution took its input's phases and put its output back."""
    calls = Counter()
    for name in ("to_phases", "from_phases"):
        monkeypatch.setattr(fused_module, name, lambda *a, f=getattr(ops, name), name=name, **k:
                            calls.update([name]) or f(*a, **k))
    monkeypatch.setattr(ops, "depthwise_nhwc", lambda *a, f=ops.depthwise_nhwc: calls.update([a[-1]]) or f(*a))
    model = supernet(True, dtype=torch.float32).to(memory_format=torch.channels_last)
    kernels(model, torch.randn(2, 3, 16, 16).contiguous(memory_format=torch.channels_last))
    # the source batches of stride 1: 4 in each of the 3 normal cells, 3 in each of the 2 reduction cells
    assert calls == {"to_phases": 3 * 4 + 2 * 3, "from_phases": 3 * 4 + 2 * 3}  # no dilated depthwise_nhwc


def test_one_channel_edges_read_their_sources_phases():
    """PC-DARTS on 4 channels leaves each edge's ops one channel: a dilated convolution is then a dense one,
    which reads each source once for all its edges (``from_sources``), here on the sources' phases."""
    assert_same_step(search_step("pc-darts", False, C=4),
                     search_step("pc-darts", True, layout=torch.channels_last, C=4))


LAYOUT_BOUND = {"convolution", "convolution_backward", "native_batch_norm", "native_batch_norm_backward", "relu",
                "clamp_min", "threshold_backward", "avg_pool2d", "avg_pool2d_backward", "max_pool2d_with_indices",
                "max_pool2d_with_indices_backward"}


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_fused_batch_norms_get_dense_gradients(layout):
    """The DARTS cell concatenates its nodes, and the concatenation's backward hands each node a slice of its
    gradient, which in the fused cell goes straight to the BatchNorms that end the ops (Eq. 2's weights are
    their affine weights: no multiply in between); a cell's two inputs are concatenated likewise. The fused
    cell hands its BatchNorm and convolution kernels such slices no more often than the readable cell does
    (the CPU's BatchNorm backward ran up to 25x slower on them: ``ops.cat_dense_gradients``)."""
    seen = {}
    for fused in (False, True):
        model = supernet(fused, dtype=torch.float32).to(memory_format=layout)
        x = torch.randn(2, 3, 16, 16).contiguous(memory_format=layout)
        model(x)
        with KernelInputs(BATCH_NORM_AND_CONVOLUTION, strided) as seen[fused]:
            F.cross_entropy(model(x), torch.zeros(2, dtype=torch.long)).backward()
    assert seen[True].counts <= seen[False].counts, seen[True].counts - seen[False].counts
    assert seen[True].counts["native_batch_norm_backward"] == 0


@pytest.mark.parametrize("name, space", [("darts-v1", "darts"), ("pc-darts", "darts"), ("darts-minus", "darts"),
                                         ("darts-v1", "nb201"), ("pc-darts", "nb201")])
def test_channels_last_stays_nhwc_through_the_fused_cell(name, space):
    """In channels_last the fused cell hands its convolutions, BatchNorms, poolings and ReLUs NHWC tensors,
    forward and backward, wherever the readable cell does: a step that returned NCHW would make the kernels
    after it copy their input back, and its gradient, NCHW too, would run every kernel before it in NCHW.
    The global pooling returns the last cell's gradient NHWC too (``ops.global_average``); what NCHW kernels
    the readable cells run themselves (PC-DARTS's) the fused ones may run too."""
    method, parts = recipe_parts(name)
    seen = {}
    for fused in (False, True):
        model = supernet(fused, parts.relaxation, parts.edge, torch.float32, space,
                         **method.space_options(space)).to(memory_format=torch.channels_last)
        x = torch.randn(2, 3, 16, 16).contiguous(memory_format=torch.channels_last)
        model(x)  # the plans, built once
        with KernelInputs(LAYOUT_BOUND, nchw) as seen[fused]:
            F.cross_entropy(model(x), torch.zeros(2, dtype=torch.long)).backward()
    assert seen[True].counts <= seen[False].counts, seen[True].counts - seen[False].counts
    if space == "darts":
        assert seen[True].counts == {}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: the fast path on the GPU")
@pytest.mark.parametrize("name, space", [("darts-v1", "darts"), ("darts-v2", "darts"), ("gdas", "darts"),
                                         ("pc-darts", "darts"), ("idarts", "darts"), ("darts-v1", "nb201"),
                                         ("gdas", "nb201")])
def test_cuda_step_equals_readable(name, space):
    """On the GPU too the paths compute the same, checked in float64: in float32, cuDNN's convolutions run
    in TF32 (10 bits of mantissa) by default, and on an H200 single gradient elements then differed by
    2e-3 of their tensor's largest, the two paths summing in different orders. iDARTS: its fused step
    differentiates its grouped convolutions' backward by grouped kernels (``ops.second_derivatives``)."""
    assert_same_step(search_step(name, fused=False, device="cuda", space=space),
                     search_step(name, fused=True, device="cuda", space=space))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: cuDNN's NHWC kernels")
@pytest.mark.parametrize("name, space, merged", [("darts-v1", "darts", False), ("darts-v1", "darts", True),
                                                 ("pc-darts", "darts", False), ("darts-v1", "nb201", False)])
def test_cuda_channels_last_step_equals_readable(name, space, merged, no_tf32):
    """channels_last on the GPU (cuDNN's NHWC kernels, ops.conv2d's NHWC forms) against the readable NCHW
    step, in float32 without TF32: PyTorch runs a float64 convolution NCHW in any layout. On the CPU the
    same comparison differs by 3e-5 of a tensor's largest; a wrong gradient would by its own size.
    ``merged``: the fused cell's 3x3 and 5x5 ops as one (``merge_kernel_sizes``)."""
    reference = search_step(name, fused=False, device="cuda", dtype=torch.float32, space=space)
    for fused in (False, True):
        with merge_kernel_sizes(merged):
            assert_same_step(reference, search_step(name, fused, device="cuda", dtype=torch.float32,
                                                    layout=torch.channels_last, space=space), rtol=1e-3)


def test_a_plan_moves_to_the_device_in_one_copy_per_dtype():
    """A sampled plan (GDAS builds one every step) is built on the host and moved at once: every index
    tensor arrives with its shape and dtype (the meta device stands in for a GPU)."""
    cell = supernet(True).cells[2]
    active = [[o % 8] if e % 5 else [] for e, o in enumerate(range(3, 3 + len(cell.edges)))]
    plan = lambda device: _build_plan(cell, Topology(2, cell.nodes), active, torch.device(device))
    host, meta = plan("cpu"), plan("meta")

    def tensors(plan):
        holders = [plan, *plan.batches, *(g for b in plan.batches for g in b.groups)]
        return [(name, v) for h in holders for name, v in vars(h).items() if isinstance(v, torch.Tensor)]

    pairs = list(zip(tensors(host), tensors(meta)))
    assert len(pairs) > 10 and {t.dtype for (_, t), _ in pairs} == {torch.long, torch.float32}
    for (name, h), (_, m) in pairs:
        assert m.device.type == "meta" and m.shape == h.shape and m.dtype == h.dtype, name


class FakeStream:
    """Stands in for a CUDA stream on the CPU: its ops counted, and how far it has waited for each other."""

    device = torch.device("cpu")

    def __init__(self, name: str):
        self.name, self.clock, self.seen = name, 0, {}

    def wait_stream(self, other: "FakeStream") -> None:
        for s, clock in [*other.seen.items(), (other, other.clock)]:
            self.seen[s] = max(self.seen.get(s, 0), clock)


class Races(TorchDispatchMode):
    """Each op on the fake stream current when it runs: every byte range it reads or writes must have been
    last written on the same stream, or on one this stream has waited for since the write."""

    def __init__(self, current: list):
        super().__init__()
        self.current, self.writes, self.races, self.ops = current, {}, [], Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.is_view:  # touches no data
            return func(*args, **(kwargs or {}))
        stream = self.current[0]
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        for t in inputs:
            for start, end, s, clock in self.writes.get(_storage(t), []):
                lo, hi = _extent(t)
                if s is not stream and lo < end and start < hi and stream.seen.get(s, 0) < clock:
                    self.races.append(f"{func} on {stream.name} reads what {s.name} wrote")
        out = func(*args, **(kwargs or {}))
        stream.clock += 1
        self.ops[stream.name] += 1
        held = {_storage(t) for t in inputs}
        mutated = [a for a, spec in zip(args, func._schema.arguments)
                   if isinstance(a, torch.Tensor) and spec.alias_info is not None and spec.alias_info.is_write]
        for t in [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)] + mutated:
            if _storage(t) not in held:  # a fresh tensor: what was written at its address before is gone
                self.writes[_storage(t)] = []
            self.writes.setdefault(_storage(t), []).append((*_extent(t), stream, stream.clock))
        return out


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def _extent(t: torch.Tensor) -> tuple[int, int]:
    """The byte range of its storage that ``t`` spans."""
    last = sum((n - 1) * s for n, s in zip(t.shape, t.stride())) if t.numel() else -1
    return t.storage_offset() * t.element_size(), (t.storage_offset() + last + 1) * t.element_size()


@pytest.mark.parametrize("name, layout, merged", [("darts-v1", torch.channels_last, False),
                                                  ("darts-v1", torch.contiguous_format, False),
                                                  ("pc-darts", torch.channels_last, False),
                                                  ("darts-minus", torch.contiguous_format, False),
                                                  ("darts-v1", torch.channels_last, True)])
def test_side_streams_read_only_what_they_waited_for(name, layout, merged, monkeypatch):
    """The lanes of ``fused.side_streams``, with fake streams on the CPU: in a fused training forward every
    op reads and writes only what was written on its own stream or on one it has waited for since (a lane
    forks from the current stream after its inputs are made, the current stream joins the lanes before it
    reads their outputs; the BatchNorms' statistics buffer, which every lane writes slices of, is zeroed
    before any lane forks); and the source batches' ops do run on several lanes. ``merged``: the 3x3 and 5x5
    ops as one (``merge_kernel_sizes``)."""
    main, lanes = FakeStream("main"), [FakeStream(f"lane {i}") for i in range(4)]
    current = [main]

    @contextlib.contextmanager
    def stream(s):
        before, current[0] = current[0], s
        try:
            yield
        finally:
            current[0] = before

    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: current[0])
    monkeypatch.setattr(torch.cuda, "stream", stream)
    monkeypatch.setattr(fused_module, "_side_streams", lambda device: lanes)
    method, parts = recipe_parts(name)
    model = supernet(True, parts.relaxation, parts.edge, **method.space_options("darts")).to(memory_format=layout)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64).contiguous(memory_format=layout)
    with Races(current) as seen, merge_kernel_sizes(merged):
        model(x)
    assert seen.races == []
    assert all(seen.ops[s.name] > 50 for s in lanes), seen.ops
