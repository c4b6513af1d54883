"""The fast path of a supernet cell: what its readable ``forward`` computes, in fewer, larger kernels.

The readable cells (``SearchCell`` of ``spaces/darts.py`` and ``spaces/nb201.py``) run every op of every
edge as its own modules: the DARTS cell some 40 small kernels per edge and 14 edges per cell, so that a
search step on a GPU is bound by launching ~13k tiny kernels rather than by arithmetic. Here, for any cell
whose nodes each sum an edge from every earlier state (``Topology``: DARTS's 2 inputs and 4 nodes,
NAS-Bench-201's 1 input and 3 nodes), the edges that leave one state are computed together, and the edges
that leave the cell's inputs all at once:

* a ReLU or pooling that begins an op runs once per source state, not once per edge, and what the ops on
  every edge begin with is copied to the edges at once, but for ops whose first step is then a dense
  convolution (FactorizedReduce's two, NAS-Bench-201's ``nor_conv``): one convolution with groups = sources
  reads each source once and computes all its edges' outputs; an op that computes the same on every edge of a
  source (a pooling and its BatchNorm, which normalises by the batch and holds no parameters; the skip)
  is not copied at all: it runs once per source, each edge's BatchNorm running statistics updated as its
  own forward would, and its share of DARTS Eq. 2 is one batched matmul with the edges' op weights;
* one op on several edges is one convolution: the depthwise convolutions of the edges stacked
  (groups = edges x C), the pointwise ones as one convolution with groups = edges; a cell's convolution
  weights are concatenated once per bank (input channels per group, kernel) and split per convolution;
* each BatchNorm of an op is one ``batch_norm`` over the channels of all its edges, the grouped
  convolution's output as it comes: BatchNorm normalises each channel by its own batch statistics, so this
  is exactly equivalent; each call writes its batch's statistics into a slice of one buffer, and the
  readable modules' own running statistics move towards them when the cell is done (one ``lerp`` per
  momentum), so a step leaves the same state behind. (The BatchNorms of several ops at one depth run as
  one only for the poolings run once per source: elsewhere the concatenation of their outputs and its
  backward moved more bytes than the kernels saved);
* the zero op, and ops whose weight is structurally zero (not sampled by a hard relaxation, masked out
  of the space), are not computed; skip is the identity;
* the op weights of DARTS Eq. 2 (gathered for the whole cell by one precomputed index) are the affine
  weights of each op's last BatchNorm, w BN(x) being BN(x) with weight w: no multiply runs, and the
  BatchNorm's backward gives their gradient; only ops that end otherwise (skip) multiply. The ops'
  outputs are summed by one add per op, and over the cell's inputs straight into the nodes by one
  reduction; where the ops differ between edges (masked, or sampled by a hard relaxation), one
  ``index_add_`` per op instead. The sums into the nodes are one add per source batch;
* the states concatenated as a batch's sources (and the nodes, by the DARTS cell) get dense gradients
  (``ops.cat_dense_gradients``), not the slices a concatenation's backward hands out: with no multiply
  after the ops' last BatchNorms, those would reach their backward, up to 25x slower on the CPU;
* within ``merge_kernel_sizes()``, ops that differ only in the kernel sizes of their depthwise
  convolutions (sep_conv_3x3 and 5x5, dil_conv_3x3 and 5x5) are one op, the smaller kernels zero-padded to
  the larger with the padding widened to match (``_signature``, ``_bank``, ``_widened``);
* on a GPU, within ``side_streams(n)``, the independent ops of a batch (and a DARTS cell's two
  preprocessings, ``side_by_side``) run on side streams, forward and backward, so that their small kernels
  run side by side (``_Lanes``).

Weights and buffers are read from the readable modules at call time, so a fused supernet has the same
``state_dict``, works under ``torch.func.functional_call`` (the unrolled model of second-order DARTS) and
derives the same genotype. Every relaxation runs fused (the weights are one tensor per cell type; a hard
one gives the edges' active ops, and the straight-through term of ``MixedEdge`` is added per edge, or within
``dense_samples`` every op runs, weighed by the sample kept on the device), and so
do the edge computations of the method zoo: ``sum``, ``partial_channel`` (the op on the first C/K
channels, the bypass max-pooled on a reducing edge, the channel shuffle; PC-DARTS edge normalisation),
``auxiliary_skip`` (beta * skip as one more op, beta one more weight), ``noisy_skip`` and ``skip_dropout``
(the noise and the dropout masks drawn in the readable path's order, so that a seeded step is the same).
What it cannot batch falls back to the readable modules: an op module of a kind not listed in
``_flatten`` (or a convolution padded by a string, "same") runs per edge, and a cell with edges of another
class, or with an edge that draws random numbers twice, runs its own forward whole (``cell_plan`` gives
None). A cell runs fused by ``run_plan(cell, cell_plan(cell, topology, ...), ...)``: each space's
``SearchCell.forward_fused``. Plans are cached per cell and forgotten when a module is set inside it (an op
replaced on an edge), so that they never name modules the cell no longer holds; ``del`` and ``insert`` on a
cell's module lists set none (make the supernet afresh after those), and a module shared by cells is known
to the last that planned with it.
"""
from __future__ import annotations

import contextlib
import functools
import sys
import weakref
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..device import on_device
from ..edges import AuxiliarySkipEdge, GaussianNoise, MixedEdge, PartialChannelEdge, ScheduledDropout
from ..ops import (AvgPool2d, Conv2d, FactorizedReduce, Zero, cat_dense_gradients, channels_innermost, conv2d,
                   dense_gradient, depthwise_by_triton, depthwise_runs_nhwc, filled, from_phases, phases_fit,
                   pixels, reads_every, relu_nhwc, to_phases)
from ..settings import temporarily, warn

Leaf = tuple[str, nn.Module]  # (kind, module): one step of an op, batched across edges by its kind


def _flatten(module: nn.Module) -> list[Leaf] | None:
    """An op as a sequence of leaves that batch across edges; None for the zero op (never computed).

    The kinds: relu, conv (``nn.Conv2d``), bn (``nn.BatchNorm2d`` with running statistics and a momentum),
    pool, fr (the two shifted convolutions of a ``FactorizedReduce``), noise (``GaussianNoise``), dropout
    (``ScheduledDropout``). Any other module is one ``opaque`` leaf: it runs per edge, as in the readable
    path, though in source-batch order (an opaque module that draws random numbers would draw them in
    another order than the readable cell); so is one whose class changes what its base computes (``_plain``:
    a residual ``nn.Sequential``, a weight-standardised ``nn.Conv2d``).
    """
    if isinstance(module, Zero):
        return None
    if _plain(module, nn.Identity):
        return []
    if _plain(module, nn.Sequential):
        leaves = []
        for child in module:
            sub = _flatten(child)
            if sub is None:
                return [("opaque", module)]
            leaves += sub
        return leaves
    if _plain(module, FactorizedReduce) and _plain(module.relu, nn.ReLU) and \
            all(_plain(c, nn.Conv2d, Conv2d) for c in (module.conv_1, module.conv_2)):
        return [("relu", module.relu), ("fr", module), *_flatten(module.bn)]
    if _plain(module, GaussianNoise):
        inner = _flatten(module.module)
        return None if inner is None else [*inner, ("noise", module)]
    if _plain(module, ScheduledDropout):
        return [("dropout", module)]
    if _plain(module, nn.ReLU):
        return [("relu", module)]
    if _plain(module, nn.Conv2d, Conv2d) and module.padding_mode == "zeros" and not isinstance(module.padding, str):
        return [("conv", module)]
    if _plain(module, nn.BatchNorm2d) and module.track_running_stats and module.momentum is not None:
        return [("bn", module)]
    if _plain(module, nn.MaxPool2d) or _plain(module, nn.AvgPool2d, AvgPool2d):
        return [("pool", module)]
    return [("opaque", module)]


def _plain(module: nn.Module, base: type, *alike: type) -> bool:
    """Whether ``module`` is a ``base`` that computes what ``base`` computes: its class takes ``forward`` (and a
    convolution's ``_conv_forward``) from ``base`` or from one of ``alike``, dnas's subclasses that compute
    the same in other forms. The fused path computes a known module by its own kernels, not by calling it,
    so a subclass that changes its computation must run as itself."""
    methods = {name: {getattr(c, name, None) for c in (base, *alike)} for name in ("forward", "_conv_forward")}
    return isinstance(module, base) and all(getattr(type(module), name, None) in allowed
                                            for name, allowed in methods.items())


def _signature(leaf: Leaf) -> tuple:
    """What must agree for two edges' leaves to run as one batched kernel. Depthwise convolutions of odd
    kernels agree whatever their size (``_widened``): that of padding p, dilation d and size k computes
    what one of size K > k computes with the k x k weights in the middle of K x K zeros and padding
    p + d (K - k) / 2; what must agree is where the kernel's centre falls, p - d (k - 1) / 2."""
    kind, m = leaf
    if kind == "conv" and _depthwise(m) and all(k % 2 for k in m.kernel_size):
        centre = tuple(p - d * (k - 1) // 2 for p, d, k in zip(m.padding, m.dilation, m.kernel_size))
        return kind, m.out_channels, centre, m.stride, m.dilation, m.groups, m.bias is None
    if kind == "conv":
        return kind, m.weight.shape, m.stride, m.padding, m.dilation, m.groups, m.bias is None
    if kind == "fr":
        return kind, m.conv_1.weight.shape, m.conv_2.weight.shape
    if kind == "bn":
        return kind, m.num_features, m.eps, m.momentum, m.affine
    if kind == "pool":  # its type and every setting (a repr leaves out AvgPool2d's count_include_pad)
        return kind, type(m), tuple(getattr(m, name) for name in m.__constants__)
    if kind == "noise":
        return kind, m.factor, m.mean
    if kind == "opaque":
        return kind, id(m)  # never batched with another edge's
    return (kind,)


def _depthwise(m: nn.Conv2d) -> bool:
    return m.groups == m.in_channels == m.out_channels


@dataclass
class _Group:
    """One op (or the auxiliary skip) on the edges of a source batch that compute it, one slot per edge; or
    ops alike but for the kernel sizes of their depthwise convolutions (``_signature``: sep_conv_3x3 and
    sep_conv_5x5), one slot per edge and op: one kernel for each of their steps, not one per op."""

    leaves: list[tuple[str, list[nn.Module]]]  # per leaf, its module on every slot
    src: torch.Tensor  # per slot, the source state (index into the batch's sources)
    edge_ids: tuple[int, ...]  # per slot, the edge (index into the cell's edges)
    every_edge: bool  # ``repeats`` slots per edge of the batch, in their order (each edge's ops together)
    repeats: int  # where every_edge, the ops of the group
    head: tuple | None  # the signature of the ReLU or pooling that begins the op, run once per source, and
    # (the op's first convolution reads every step-th pixel only) the step: the head on those pixels alone
    step: int  # 1, or that step: the first convolution then runs on the pixels it reads, with stride 1
    from_sources: int  # 0, or the batch's sources where the op's first step after its head is a dense
    # convolution on every edge: it reads the sources themselves, one convolution with groups = sources
    # computing each source's edges' outputs, instead of a copy of the source for each edge
    convs: list[tuple[tuple[int, int], ...]] | None = None  # per leaf, its convolutions' (bank, piece)

    @property
    def start(self) -> int:
        """The first leaf after the head (which runs once per source): where the group's own steps begin."""
        return int(self.head is not None)


class _Slot(NamedTuple):
    """An op on an edge, while a plan groups them."""

    source: int  # index into its batch's sources
    position: int  # of its edge among the batch's edges
    edge: int  # index into the cell's edges
    op: int | None  # None: DARTS-'s auxiliary skip
    leaves: list[Leaf]
    signature: tuple  # of each leaf


@dataclass
class _Batch:
    """The edges leaving some source states, computed together."""

    sources: list[int]
    edges: list[int]  # cell edge indices, ordered by source then by node
    groups: list[_Group]
    slots: int  # of all its groups, one after another; their op weights: the batch's part of weight_index
    pos: torch.Tensor | None  # per slot, its edge (index into ``edges``); None: every group on every edge
    node_pos: torch.Tensor | None  # per slot, the node its edge enters (index into the batch's nodes)
    partial_channels: int | None  # PC-DARTS K; None for a whole-channel edge
    stride: int
    keep: torch.Tensor | None  # PC-DARTS: 0/1 per edge when some edge has every op masked out (dropped):
    # its bypass adds nothing (elsewhere a dropped edge has no slot and no straight-through term)


@dataclass
class _Plan:
    """How a cell runs fused for one pattern of active ops; index tensors built once, moved to the device."""

    batches: list[_Batch]
    weight_index: torch.Tensor  # per slot of every batch: its weight in weights.flatten(), then the betas
    schedules: list  # the AuxiliarySkip schedules whose betas weigh the auxiliary skips (DARTS-)
    edge_order: torch.Tensor  # the cell's edges in batch order, to split a value per edge by batch
    straight_through: torch.Tensor | None  # (edges, ops): 1 for an op not run on a kept edge; None: all run
    random: list[tuple[int, Leaf]]  # (edge, its noise or dropout leaf), in the order the readable cell draws
    banks: list[tuple[list[nn.Conv2d], list[int]]]  # per bank (``_add_to_bank``): the convolutions, per call
    # how many
    stride: int  # of the edges out of the inputs: the nodes' size is the inputs' over it
    batch_norm_channels: int  # of all its BatchNorms: what a training forward normalises at most
    slot_of: dict  # each BatchNorm module of the ops -> its op weight's index in weights.flatten() (then the betas)
    weighs_every_op: bool  # whether each op acts only through its weight, no op an opaque module or a random
    # draw: then an op weighed zero changes nothing but by its BatchNorms' statistics (``dense_samples``)
    sample_index: dict = field(default_factory=dict)  # ``dense_samples``: per momentum, the slot of each running
    # statistic's channels and each counter's, in the order a forward hands them to ``_Run.write_back``


@dataclass
class _Run:
    """What the batches of one fused cell forward share: per bank, the convolution weights concatenated once
    and split per convolution call; the noise and dropout masks; the batch statistics of its training
    BatchNorms, towards which their running statistics move when the cell is done."""

    weights: list[tuple[torch.Tensor, ...]]
    noise: dict[int, torch.Tensor]
    nhwc: bool  # the cell's layout: its states channels_last
    nhwc_forms: bool  # an NCHW cell on a device whose depthwise convolutions run NHWC (``ops.FORM_DEVICES``)
    streams: list | None  # the side streams a source batch's independent ops run on (``_Lanes``); None: none
    statistics: torch.Tensor | None  # training: (2, channels of all the cell's BatchNorms) zeros, made before
    # any lane forks; each call writes into a slice of it
    taken: int = 0  # for each call (channels handed out so far), where it writes its batch's statistics
    moving: dict[float, tuple[list, list, list]] = field(default_factory=dict)  # momentum -> per module, its
    # running statistics, its batch's, and the module of each
    counters: list[nn.BatchNorm2d] = field(default_factory=list)  # each training BatchNorm, to count its batch

    def batch_statistics(self, mods: list[nn.BatchNorm2d], channels: int, per: int = 1):
        """(mean, variance) of ``channels`` for a BatchNorm call at momentum 1 to write its batch's mean and
        unbiased variance into; the running statistics of ``mods`` (``per`` modules to each block of the
        channels) move towards them at ``write_back``. Slices of one buffer zeroed once per cell: no kernel
        per call, where concatenating the modules' own statistics for each call took one."""
        if self.statistics is None:
            raise RuntimeError("a BatchNorm of the cell is in training mode, the cell in evaluation mode: set "
                               "the mode of the whole model (model.train() or model.eval())")
        mean, var = self.statistics[:, self.taken:self.taken + channels]
        self.taken += channels
        means, variances = (t.view(-1, mods[0].num_features).unbind() for t in (mean, var))  # a view per module:
        old, new, owners = self.moving.setdefault(mods[0].momentum, ([], [], []))  # one call, not one each
        old += [b.running_mean for b in mods] + [b.running_var for b in mods]
        new += [means[k // per] for k in range(len(mods))] + [variances[k // per] for k in range(len(mods))]
        owners += mods + mods
        self.counters += mods
        return mean, var

    def write_back(self, plan: _Plan, sampled=None):
        """Each running statistic moved towards its batch's by its momentum, (1 - m) old + m batch, as the
        BatchNorm's own forward moves it: one kernel per momentum for the whole cell. With a ``sampled`` one-hot
        (``dense_samples``) each by its momentum times its op's sample, so that an op not sampled keeps them."""
        flat = None if sampled is None else _flat_sample(plan, sampled)
        with torch.no_grad():
            for momentum, (old, new, owners) in self.moving.items():
                rate = momentum
                if flat is not None:  # the sample of each statistic's channels, in pieces shaped as they are
                    index = _sample_index(plan, momentum, owners, flat.device)
                    rate = list((momentum * flat).to(old[0].dtype)[index].split([t.numel() for t in old]))
                torch._foreach_lerp_(old, new, rate)
            if self.counters:
                count = 1 if flat is None else list(
                    flat.long()[_sample_index(plan, None, self.counters, flat.device)].unbind())
                torch._foreach_add_([b.num_batches_tracked for b in self.counters], count)


def _flat_sample(plan: _Plan, sampled: torch.Tensor) -> torch.Tensor:
    """A one-hot sample (edges x ops) flat, then 1 for each beta (DARTS-'s auxiliary skip always runs)."""
    flat = sampled.reshape(-1)
    return torch.cat([flat, flat.new_ones(len(plan.schedules))]) if plan.schedules else flat


def _sample_index(plan: _Plan, momentum: float | None, owners: list[nn.BatchNorm2d], device) -> torch.Tensor:
    """The op weight's index of each channel of the running statistics of ``owners`` (momentum None: of each
    module, for its counter), made once per plan (a forward hands them over in the same order each time): a
    copy from the host in every step would keep it from being captured in a CUDA graph."""
    key = momentum, len(owners)
    if key not in plan.sample_index:
        per = (lambda m: m.num_features) if momentum is not None else (lambda m: 1)
        slots = [plan.slot_of[m] for m in owners for _ in range(per(m))]
        plan.sample_index[key] = on_device(torch.tensor(slots, dtype=torch.long), device)
    return plan.sample_index[key]


_merge = False  # within ``merge_kernel_sizes``


def merge_kernel_sizes(on: bool = True):
    """Within it, a fused cell's ops that differ only in the kernel sizes of their depthwise convolutions
    (sep_conv_3x3 and sep_conv_5x5, dil_conv_3x3 and dil_conv_5x5) run as one op, the smaller kernels in the
    middle of zeros (``_Group``): a darts-v1 step launches 23% fewer kernels (in NHWC on a GPU, counted by
    ``benchmarks/kernel_census.py``), moves 6% more bytes (the sources copied to twice the slots) and
    computes 2.8x the 3x3 depthwise convolutions' products. On the CPU 6-8% slower; on a GPU unmeasured
    (docs/speed.md). The same results but for float rounding; a plan is made for each setting. A search runs
    within it where its setting ``merge_kernel_sizes`` is on."""
    return temporarily(sys.modules[__name__], "_merge", on)


_side = 0  # the side streams of ``side_streams``


def side_streams(n: int):
    """Within it, a fused cell on a GPU runs the independent ops of each source batch on ``n`` side streams
    (``_Lanes``), 0: all on the current stream. What it computes is the same; whether it is faster depends on
    how far the ops' kernels fill the GPU (docs/speed.md). A CUDA graph records the streams its capture ran
    on: the setting of the warm-up and capture steps holds for the replays. A search runs within it with its
    setting ``side_streams``."""
    return temporarily(sys.modules[__name__], "_side", n)


def _side_streams(device: torch.device) -> list | None:
    """The side streams of ``device`` (``side_streams``), made once and reused, so that a capture runs on the
    streams its warm-up steps ran on; None on other devices, or with none set."""
    if not _side or device.type != "cuda":
        return None
    pool = _STREAMS.setdefault(device, [])
    pool += [torch.cuda.Stream(device) for _ in range(_side - len(pool))]
    return pool[:_side]


_STREAMS: dict[torch.device, list] = {}

_dense = False  # within ``dense_samples``


def dense_samples(on: bool = True):
    """Within it, a fused supernet under a hard relaxation (GDAS) computes every op of every edge, each weighed by
    its sampled weight times the sample's one-hot, rather than only the sampled ops (``sampled_ops``): which op an
    edge runs is then decided on the device, not read on the host, so that the step can be replayed from a CUDA
    graph (GDAS's eager step on a GPU waits on its host: 145 ms on an H200, against darts-v1's 75 ms replayed,
    which computes every op). The same result: an op not sampled adds w * 0 = 0, its weights get zero gradients,
    the alphas the straight-through term, and its BatchNorms' running statistics stay (each moves by its momentum
    times the sample). What differs is the weight optimiser's view before an op is first sampled: a zero gradient,
    not none, so its weight decay and momentum move the op's weights from the first step, where GDAS's code
    (``step_unused_weights``, set by its recipe) moves them from the op's first sample. Cells with ops of other
    modules, or that draw random numbers, run the sampled ops only. On the CPU, where the arithmetic of the ops
    not sampled costs more than the host's reads, slower. A search runs within it with its setting
    ``dense_samples`` (``--dense-samples``; with ``--fast`` on a GPU its steps are then replayed)."""
    return temporarily(sys.modules[__name__], "_dense", on)


def sampled_ops(weights: torch.Tensor, live=None, on_device: bool = False):
    """The ops each edge runs under a hard relaxation, whose ``weights`` (edges x ops) are one-hot in value: per
    edge its sampled op (none on an edge that ``live``, the supernet's op mask, leaves without ops), read on the
    host; or, for fused cells (``on_device``) within ``dense_samples`` with no op masked, the one-hot itself,
    kept on the device for ``run_plan``."""
    if on_device and _dense and live is None:
        return torch.zeros_like(weights).scatter_(-1, weights.detach().argmax(-1, keepdim=True), 1.0)
    return [[i] if live is None or live[e] else [] for e, i in enumerate(weights.argmax(-1).tolist())]


def on_host(active):
    """``active`` as per-edge lists of the ops to run (or None: all): a sample kept on the device read back."""
    return [row.nonzero().flatten().tolist() for row in active] if torch.is_tensor(active) else active


class _Lanes:
    """The independent ops of a source batch (each group's leaves, the per-source sum), each on a side stream
    forked from the current one, so that on a GPU their kernels, most too small to fill it, run side by
    side; a CUDA graph records them as parallel branches. Autograd runs each op's backward on the stream of
    its forward, so the backward branches overlap too. Each ``lanes()`` is the context of the next stream in
    turn (the current stream where there are none: the CPU), ``join()`` makes the current stream wait for
    the lanes. What a lane reads is made on the current stream before the lane forks, and what it makes is read
    there only after the join; so no stream reads what another has not finished writing, and the caching
    allocator, which hands a freed block to the next tensor of the stream it was made on, never gives a
    block one stream still reads to another (tests/test_fused.py checks the forward with fake streams)."""

    def __init__(self, streams: list | None):
        self.streams, self.forked, self.taken = streams, [], 0

    def __call__(self):
        if not self.streams:
            return contextlib.nullcontext()
        stream = self.streams[self.taken % len(self.streams)]
        self.taken += 1
        if stream not in self.forked:
            stream.wait_stream(torch.cuda.current_stream(stream.device))
            self.forked.append(stream)
        return torch.cuda.stream(stream)

    def join(self) -> None:
        for stream in self.forked:
            torch.cuda.current_stream(stream.device).wait_stream(stream)
        self.forked = []


def side_by_side(device: torch.device, *steps) -> list:
    """The results of the independent ``steps`` (functions of no arguments), each run on a lane of its own
    (``_Lanes``; one after another where there are no side streams): a DARTS cell's two preprocessings."""
    lanes = _Lanes(_side_streams(device))
    results = []
    for step in steps:
        with lanes():
            results.append(step())
    lanes.join()
    return results


_PLANS: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()  # cell -> key -> plan
_OPS: "weakref.WeakKeyDictionary[nn.Module, list]" = weakref.WeakKeyDictionary()  # cell -> its edges' ops
_CELLS_OF: "weakref.WeakKeyDictionary[nn.Module, weakref.WeakSet]" = weakref.WeakKeyDictionary()  # module -> the
# cells that hold it (one module may be in several)
_LENGTHS: "weakref.WeakKeyDictionary[nn.Module, list]" = weakref.WeakKeyDictionary()  # cell -> (container, its
# length) of each Sequential, ModuleList and ModuleDict in it when it was planned


def _forget_plans(module, name, submodule) -> None:
    """A module set inside a cell that has run fused (an op replaced on an edge, a BatchNorm swapped for
    another kind): the cell's plans and op table name the modules it held, so they are built afresh when
    next needed. Modules made or set elsewhere leave every plan as it is (a CUDA graph captured with a plan
    reads its index tensors)."""
    for cell in list(_CELLS_OF.get(module, ())):
        _forget(cell)


def _forget(cell) -> None:
    for cache in (_PLANS, _OPS, _LENGTHS):
        cache.pop(cell, None)


torch.nn.modules.module.register_module_module_registration_hook(_forget_plans)


@dataclass(frozen=True)
class Topology:
    """A cell's graph as the fused path reads it: ``inputs`` input states, then ``nodes`` nodes, each the sum
    of an edge from every earlier state; the edges numbered node by node, by source within a node; the
    edges out of the inputs of stride ``stride``. DARTS: 2 inputs, 4 nodes (stride 2 in a reduction
    cell); NAS-Bench-201: 1 input, 3 nodes."""

    inputs: int
    nodes: int
    stride: int = 1


def cell_plan(cell, topology: Topology, active, device) -> _Plan | None:
    """How ``cell`` (its ``edges``, laid out as ``topology``) runs fused for one pattern of ``active`` ops
    (None: every op; a sample kept on the device, ``sampled_ops``: every op, weighed by it in ``run_plan``,
    but the sampled ones only, read on the host, where an op acts otherwise than through its weight: an op
    of another module, a random draw), built once and cached; None when an edge is of a class the fused path
    does not know, and the cell must run its own forward (with ``on_host(active)``)."""
    if torch.is_tensor(active):
        plan = cell_plan(cell, topology, None, device)
        return plan if plan is None or plan.weighs_every_op else cell_plan(cell, topology, on_host(active), device)
    key = (device, _merge, None if active is None else tuple(map(tuple, active)))
    if any(len(m._modules) != n for m, n in _LENGTHS.get(cell, ())):  # a module inserted into a container of
        _forget(cell)  # the cell or deleted from one (Sequential.insert, del), which no hook reports
    if cell not in _PLANS:  # its first plan, or the first since a module was set in it (``_forget_plans``)
        _LENGTHS[cell] = []
        for module in cell.modules():
            _CELLS_OF.setdefault(module, weakref.WeakSet()).add(cell)
            if isinstance(module, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
                _LENGTHS[cell].append((module, len(module._modules)))
    plans = _PLANS.setdefault(cell, {})
    plan = plans.get(key, False)
    if plan is False:
        if len(plans) > 64:  # hard relaxations sample a new pattern each step
            plans.clear()
        plan = plans[key] = _build_plan(cell, topology, active, device)
    return plan


def run_plan(cell, plan: _Plan, states: list[torch.Tensor], weights, edge_weights=None,
             active=None) -> list[torch.Tensor]:
    """The nodes of ``cell`` from its input ``states``, by ``plan``, computed by source batches: what the
    cell's readable forward computes from the same inputs, ``weights`` (edges x ops), ``edge_weights`` and
    ``active`` (the plan's; where it is a sample kept on the device, ``sampled_ops``, every op runs, weighed by
    its weight times the sample: ``dense_samples``).

    A node is the sum of its incoming edges (DARTS Sec. 2.1); the edges out of the inputs are summed into
    partial nodes at once, then each new node's outgoing edges are added as soon as it is complete.
    """
    states = list(states)
    inputs = len(states)
    not_run = plan.straight_through  # (edges, ops): 1 for an op not run on a kept edge; None: all run
    weighed = weights  # what each op's output is weighed by
    sampled = active if torch.is_tensor(active) else None
    if sampled is not None:  # every op runs, weighed by zero where not sampled
        not_run, weighed = 1 - sampled, weights * sampled
    noise = _draw_random(cell, plan, states[-1]) if plan.random and cell.training else {}
    banks = [_bank(convs, sizes) for convs, sizes in plan.banks]
    statistics = weights.new_zeros(2, plan.batch_norm_channels) if cell.training else None
    nhwc = channels_innermost(states[0])
    run = _Run(banks, noise, nhwc, not nhwc and states[0].device.type in ops.FORM_DEVICES,
               _side_streams(states[0].device), statistics)
    flat = weighed.reshape(-1)  # the op weight of every slot, all gathered at once
    if plan.schedules:
        flat = torch.cat([flat, *(flat.new_full((1,), s.beta) for s in plan.schedules)])
    slot_weights = flat.index_select(0, plan.weight_index).split([b.slots for b in plan.batches])
    per_batch = lambda t: t.index_select(0, plan.edge_order).split([len(b.edges) for b in plan.batches])
    none = [None] * len(plan.batches)
    # MixedEdge's straight-through term: sum_{o not run} w_o, zero in value
    st = none if not_run is None else per_batch((weights * not_run).sum(-1))
    ew = none if edge_weights is None else per_batch(edge_weights)
    partial = None  # the sums into the nodes not complete yet
    for batch, w, st_b, ew_b in zip(plan.batches, slot_weights, st, ew):
        y = _node_inputs(batch, [states[j] for j in batch.sources], w, st_b, ew_b, run)
        partial = y if partial is None else partial + y
        node, partial = _first_node(partial)
        if batch.partial_channels:  # PC-DARTS's channel shuffle of the node's edges, once for the node
            node = F.channel_shuffle(node, batch.partial_channels)
        states.append(node)
    run.write_back(plan, sampled)
    return states[inputs:]


def _first_node(partial: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The sums into the nodes not complete yet, (N, nodes, C, H, W): the first node (N, C, H, W), complete
    now, and the rest (None if none). A split, one kernel backward where indexing takes one per part; on
    (N, H, W, nodes, C) where ``partial`` is channels_last, so that its backward, a concatenation, is NHWC
    too (a 5-d concatenation along the nodes would be NCHW, and so every gradient before it)."""
    if partial.shape[1] == 1:
        return partial.squeeze(1), None
    view, k = _blocks(partial)
    node, rest = (_unblocked(t, k) for t in view.split([1, partial.shape[1] - 1], k))
    return node.squeeze(1), rest


def _build_plan(cell, topology: Topology, active, device) -> _Plan | None:
    known = (MixedEdge, PartialChannelEdge, AuxiliarySkipEdge)
    other = {type(e) for e in cell.edges} - set(known)
    other |= {type(e.mixed) for e in cell.edges  # DARTS-'s beta edge around an edge of another class
              if type(e) is AuxiliarySkipEdge and type(e.mixed) is not MixedEdge}
    if other:  # (a warning is shown once for each message)
        warn(f"fused cells: edges of {', '.join(sorted(c.__name__ for c in other))} are not of a class the "
             f"fused path batches ({', '.join(c.__name__ for c in known)}), so their cells run their "
             f"readable forward: the same result, without the speed")
        return None
    inputs, n = topology.inputs, topology.nodes
    offset = [inputs * i + i * (i - 1) // 2 for i in range(n)]  # first edge into node i
    tensor = lambda xs: torch.tensor(xs, dtype=torch.long)  # on the host; _to_device moves them all at once
    edge0 = cell.edges[0]
    num_ops = len((edge0.mixed if isinstance(edge0, AuxiliarySkipEdge) else edge0).ops)
    schedules = list({id(e.schedule): e.schedule for e in cell.edges
                      if isinstance(e, AuxiliarySkipEdge)}.values())
    slot_weight = lambda e, o: (e * num_ops + o if o is not None  # in weights.flatten(), then the betas
                                else len(cell.edges) * num_ops + schedules.index(cell.edges[e].schedule))
    sources = [list(range(inputs))] + [[j] for j in range(inputs, inputs + n - 1)]  # the batches' states
    ops = _edge_ops(cell)
    if ops is None:
        return None
    batches, weight_index, random, slot_of = [], [], {}, {}
    for srcs in sources:
        pairs = [(j, offset[i] + j) for j in srcs for i in range(max(0, j - inputs + 1), n)]  # (source, edge)
        edges = [e for _, e in pairs]
        slots: dict[tuple, list[_Slot]] = {}  # group key -> its slots
        for pos, (j, e) in enumerate(pairs):
            table = ops[e]
            to_run = (sorted(o for o in table if o is not None) if active is None
                      else sorted(set(active[e]) & table.keys()))
            if None in table and (active is None or active[e]):  # DARTS-'s auxiliary skip, after the ops
                to_run.append(None)
            for o in to_run:
                leaves, signature = table[o]
                slot_of.update((m, slot_weight(e, o)) for kind, m in leaves if kind == "bn")
                random.update((e, leaf) for leaf in leaves if leaf[0] in ("noise", "dropout"))
                key = signature if _merges(leaves) else (o, signature)
                slots.setdefault(key, []).append(_Slot(srcs.index(j), pos, e, o, leaves, signature))
        groups, positions = [], []
        first_op = lambda members: min((m.op is None, m.op or 0) for m in members)
        for members in sorted(slots.values(), key=first_op):
            edge_ids = tuple(m.edge for m in members)
            signature = members[0].signature
            leaves = [(kind, [m.leaves[k][1] for m in members]) for k, (kind, _) in enumerate(members[0].leaves)]
            head = signature[0] if signature and signature[0][0] in ("relu", "pool") else None
            step = _first_conv_step(leaves) if head is not None else 1
            repeats = len(edge_ids) // len(edges)
            every_edge = list(edge_ids) == [e for e in edges for _ in range(repeats)]
            dense = _first_step_is_dense_conv(leaves[int(head is not None):])
            groups.append(_Group(
                leaves=leaves, src=tensor([m.source for m in members]), edge_ids=edge_ids, every_edge=every_edge,
                repeats=repeats, head=head if step == 1 else (head, step), step=step,
                from_sources=len(srcs) if every_edge and dense and len(edges) > len(srcs) else 0))
            positions += [m.position for m in members]
            weight_index += [slot_weight(m.edge, m.op) for m in members]
        first = cell.edges[edges[0]]
        k = first.k if isinstance(first, PartialChannelEdge) else None
        dropped = active is not None and not all(active[e] for e in edges)
        summed = bool(groups) and all(g.every_edge for g in groups)
        batches.append(_Batch(
            sources=srcs, edges=edges, groups=groups, slots=len(positions),
            pos=None if summed else tensor(positions),
            node_pos=None if summed else tensor([p % (len(edges) // len(srcs)) for p in positions]),
            partial_channels=k, stride=topology.stride if srcs[0] < inputs else 1,
            keep=torch.tensor([float(bool(active[e])) for e in edges]) if dropped and k else None))
    straight_through = None
    if active is not None:
        straight_through = torch.tensor([float(bool(run) and o not in run) for run in active  # flat: a nested
                                         for o in range(num_ops)]).view(len(active), num_ops)  # list is slower
    banks: dict[tuple, tuple[list, list]] = {}  # weight shape but the first -> (convolutions, per call)
    for g in (g for b in batches for g in b.groups):
        g.convs = []
        for kind, mods in g.leaves:
            calls = [mods] if kind == "conv" else []
            if kind == "fr":
                calls = [[f.conv_1 for f in mods], [f.conv_2 for f in mods]]
            g.convs.append(tuple(_add_to_bank(banks, convs) for convs in calls))
    batch_norm_channels = sum(len(mods) * mods[0].num_features for b in batches for g in b.groups
                              for kind, mods in g.leaves if kind == "bn")
    plan = _Plan(batches, tensor(weight_index), schedules, tensor([e for b in batches for e in b.edges]),
                 straight_through, sorted(random.items(), key=lambda kv: kv[0]), list(banks.values()),
                 topology.stride, batch_norm_channels, slot_of,
                 weighs_every_op=not random and all(kind != "opaque" for b in batches for g in b.groups
                                                    for kind, _ in g.leaves))
    _to_device(plan, device)
    return plan


def _merges(leaves: list[Leaf]) -> bool:
    """Whether an op shares a group with the ops whose leaves have its signatures (``_Group``), within
    ``merge_kernel_sizes``: one with a convolution and otherwise ReLUs, poolings and BatchNorms only, none
    that draws random numbers per edge."""
    kinds = {kind for kind, _ in leaves}
    return _merge and "conv" in kinds and kinds <= {"relu", "conv", "bn", "pool"}


def _first_step_is_dense_conv(leaves) -> bool:
    """Whether ``leaves`` (an op after its head) begin with a convolution of one group (FactorizedReduce's
    two, NAS-Bench-201's ``nor_conv``), which can read a source once for all the edges that leave it."""
    if not leaves or leaves[0][0] not in ("conv", "fr"):
        return False
    m = leaves[0][1][0]
    return all(c.groups == 1 for c in ((m.conv_1, m.conv_2) if leaves[0][0] == "fr" else (m,)))


def _first_conv_step(leaves) -> int:
    """s where the leaf after the head is a convolution that reads every s-th pixel only (a dilated op on a
    reducing edge, ``ops.reads_every``), else 1."""
    if len(leaves) < 2 or leaves[1][0] != "conv":
        return 1
    c = leaves[1][1][0]
    return reads_every(c.stride, c.padding, c.dilation, c.kernel_size)


def _edge_ops(cell) -> list[dict] | None:
    """Per edge: op index (None: DARTS-'s auxiliary skip) -> (its leaves, their signatures), the zero op
    left out; None where an edge draws random numbers twice (the draws are kept one per edge), and the cell
    runs its own forward. Flattened once per cell, since a hard relaxation builds a plan every step."""
    if cell not in _OPS:
        table = []
        for edge in cell.edges:
            mixed = edge.mixed if isinstance(edge, AuxiliarySkipEdge) else edge
            ops = [*enumerate(mixed.ops), *([(None, edge.skip)] if isinstance(edge, AuxiliarySkipEdge) else [])]
            flat = ((o, _flatten(module)) for o, module in ops)
            table.append({o: (leaves, tuple(map(_signature, leaves))) for o, leaves in flat if leaves is not None})
        draws = [sum(kind in ("noise", "dropout") for leaves, _ in ops.values() for kind, _ in leaves) for ops in table]
        _OPS[cell] = None if max(draws) > 1 else table
    return _OPS[cell]


def _to_device(plan: _Plan, device: torch.device) -> None:
    """The plan's index tensors, built on the host, moved to ``device`` in one copy per dtype, from pinned
    memory without waiting: a hard relaxation samples a new plan every step, and a copy per tensor from
    pageable memory would make the host wait for the GPU each time."""
    if device.type == "cpu":
        return
    holders = [plan, *plan.batches, *(g for b in plan.batches for g in b.groups)]
    fields = [(h, name) for h in holders for name, value in vars(h).items() if isinstance(value, torch.Tensor)]
    for dtype in {getattr(h, name).dtype for h, name in fields}:
        mine = [(h, name) for h, name in fields if getattr(h, name).dtype == dtype]
        host = torch.cat([getattr(h, name).flatten() for h, name in mine])
        moved = on_device(host, device)
        for (h, name), t in zip(mine, moved.split([getattr(h, name).numel() for h, name in mine])):
            setattr(h, name, t.view(getattr(h, name).shape))


def _add_to_bank(banks: dict, convs: list[nn.Conv2d]) -> tuple[int, int]:
    """The weights of one batched convolution, put in the bank of their input channels per group and kernel
    (the widest, where merged 3x3 and 5x5 ones share a bank): (bank, piece) to find them.

    A cell's weights of one bank are concatenated once per forward and split per call, one kernel where
    a concatenation per call takes one each; backward, the split is one kernel too."""
    c = convs[0]  # (its settings, not its weight: a parameter's lookup costs a hard relaxation's plan, built
    key = (c.in_channels // c.groups, *_widest(convs))  # each step, ~20% of its time) inputs per group, kernel
    if key not in banks:
        banks[key] = ([], [])
    mods, sizes = banks[key]
    mods += convs
    sizes.append(sum(c.out_channels for c in convs))
    return list(banks).index(key), len(sizes) - 1


def _bank(convs: list[nn.Conv2d], sizes: list[int]) -> tuple[torch.Tensor, ...]:
    """The weights of a bank's convolutions concatenated, split per call (``sizes``), each call's weights of
    the bank's kernel size: smaller kernels in the middle of zeros (``_widened``), padded once per size."""
    if len(convs) == 1:
        return (convs[0].weight,)
    kernel = _widest(convs)
    weights = [c.weight for c in convs]
    for size in {c.kernel_size for c in convs} - {kernel}:
        mine = [i for i, c in enumerate(convs) if c.kernel_size == size]
        rows, cols = ((k - own) // 2 for k, own in zip(kernel, size))
        padded = F.pad(_cat([weights[i] for i in mine], 0), (cols, cols, rows, rows))
        for i, w in zip(mine, padded.split([weights[i].shape[0] for i in mine])):
            weights[i] = w
    return torch.cat(weights).split(sizes)


def _widest(convs: list[nn.Conv2d]) -> tuple[int, int]:
    """The kernel of a bank: the largest height and width of its convolutions' (``_signature``)."""
    return tuple(max(sides) for sides in zip(*(c.kernel_size for c in convs)))


def _draw_random(cell, plan: _Plan, x: torch.Tensor) -> dict[int, torch.Tensor]:
    """The NoisyDARTS noise and the P-DARTS skip dropout masks of the cell's edges, drawn edge by edge in
    the order the readable cell draws them, so that a seeded step gives the same result."""
    n, c, h, w = x.shape
    h, w = (h + plan.stride - 1) // plan.stride, (w + plan.stride - 1) // plan.stride
    out = {}
    for e, (kind, module) in plan.random:
        edge = cell.edges[e]
        shape = (n, c // edge.k if isinstance(edge, PartialChannelEdge) else c, h, w)
        out[e] = module.draw(shape, x) if kind == "noise" else module.mask(shape, x)
    return out


def _node_inputs(batch: _Batch, hs, w, st, edge_weights, run: _Run):
    """What the batch's edges add to the nodes they enter, (N, nodes, C, H, W).

    ``w`` holds the op weight of every slot of the groups; ``st`` (the straight-through term) and
    ``edge_weights`` a value per edge."""
    x = cat_dense_gradients(hs).unflatten(1, (len(hs), -1))  # (N, sources, C, H, W), in the states' layout
    k = batch.partial_channels
    if k is not None:  # PC-DARTS: the ops see the first C/K channels, the rest bypass them
        x, rest = _split_channels(x, x.shape[2] // k)
    n, sources = x.shape[:2]
    per = len(batch.edges) // sources  # edges per source
    # the ops that compute the same on every edge of a source run once per source (where every op covers
    # every edge, so that the order of the groups' blocks does not matter to _sum_slots); the rest per edge
    shared = [batch.pos is None and per > 1 and _same_on_every_edge(g) for g in batch.groups]
    groups = [g for g, same in zip(batch.groups, shared) if not same]
    # what the groups begin with, once per source (the shared ops' in their lane), by key: None, the sources
    # themselves; a head's signature, its output; (signature, step), that on every step-th pixel (``_begin``);
    # (a head's key, edge ids), the input of a group not copied to its edges, gathered from it (below)
    begun = {None: x}
    nhwc_heads = _nhwc_heads(batch.groups, x) if run.nhwc_forms else set()
    for g in groups:
        _begin(begun, g, x, nhwc_heads)
    copied = lambda g: g.every_edge and per * g.repeats > 1 and not g.from_sources
    # those whose convolution reads the copies of its head in place (``_reads_copies``): their head itself
    in_place = {id(g) for g in groups if copied(g) and _reads_copies(g, begun[g.head])}
    readers = [g for g in groups if copied(g) and id(g) not in in_place]
    wanted = [(g.head, per * g.repeats) for g in readers]
    to_nhwc = set()  # an NCHW cell's copies that every group reading them begins with a depthwise convolution that
    # runs NHWC on this device and input (ops.depthwise_runs_nhwc): its copy in is this copy (its output goes
    # back to NCHW)
    if run.nhwc_forms:
        to_nhwc = set(wanted) - {key for key, g in zip(wanted, readers) if not _reads_nhwc(g, begun[g.head][:, 0])}
    copies = _copy_to_edges(begun, wanted, to_nhwc)
    outs, dense = [], {}  # dense: the heads read in place, each made dense once (the pixels a head took)
    for g in groups:  # its input: its slots' sources one after another, (N, slots x C, H, W), or the sources
        if id(g) in in_place:
            if g.head not in dense:
                dense[g.head] = _flatten_sources(begun[g.head]).contiguous()
            outs.append(dense[g.head])
        elif copied(g):
            outs.append(copies[g.head, per * g.repeats])
        else:  # one tensor for the groups of one head and slots: the dilated ones take its phases once
            if (g.head, g.edge_ids) not in begun:
                whole = g.every_edge or len(g.edge_ids) == sources == 1
                begun[g.head, g.edge_ids] = (_flatten_sources(begun[g.head]) if whole
                                             else _index_select(begun[g.head], g.src).flatten(1, 2))
            outs.append(begun[g.head, g.edge_ids])
    slot_weights = w.split([len(g.edge_ids) for g in batch.groups])
    w_groups = [v for v, same in zip(slot_weights, shared) if not same]
    w_groups = w if len(w_groups) == len(slot_weights) else _cat(w_groups, dim=0) if w_groups else w[:0]
    per_channel = w_groups.repeat_interleave(x.shape[2]).split([len(g.edge_ids) * x.shape[2] for g in groups])
    lanes = _Lanes(run.streams)
    reads = [per * g.repeats if id(g) in in_place else 1 for g in groups]
    blocks = _run_groups(groups, outs, reads, per_channel, run, lanes, summed=batch.pos is None)
    if any(shared):
        once = [i for i, same in enumerate(shared) if same]
        groups_once, weights_once = [batch.groups[i] for i in once], [slot_weights[i] for i in once]
        with lanes():
            for g in groups_once:
                _begin(begun, g, x)
            blocks.append(_per_source_sum(groups_once, weights_once, begun, per, run))
    lanes.join()
    h, w_ = ((d + batch.stride - 1) // batch.stride for d in x.shape[-2:])
    shape = (n, len(batch.edges), x.shape[2], h, w_)  # of the edges' outputs
    scale = edge_weights  # a weight per edge: PC-DARTS's edge normalisation, and 0 for an edge with no op left
    if batch.keep is not None:
        keep = batch.keep.to(w.dtype)
        scale = keep if scale is None else scale * keep
    if st is None and scale is None:  # no term per edge: sum straight into the nodes
        y = _sum_slots(batch, blocks, w, None, shape, by_node=True)
    else:
        y = _sum_slots(batch, blocks, w, st, shape, by_node=False)
        if scale is not None:
            y = y * scale.view(1, -1, 1, 1, 1)
        y = _sum_blocks(y.flatten(1, 2), sources).unflatten(1, (-1, y.shape[2])) if sources > 1 else y
    if k is not None:  # PC-DARTS: beside the ops' channels, the bypassed ones (the shuffle is the node's)
        if batch.stride == 2:
            rest = F.max_pool2d(_flatten_sources(rest), 2, 2).unflatten(1, (sources, -1))
        y = _with_bypass(y, rest, scale)
    return y


def _begin(begun: dict, g: _Group, x: torch.Tensor, nhwc=frozenset()) -> None:
    """What ``g`` begins with, once per source of ``x`` (N, sources, C, H, W), into ``begun`` (head -> it) if
    not there yet: the sources, or a ReLU or pooling of them (on every step-th pixel only, where the op's
    first convolution reads no others); a ReLU of ``nhwc`` written NHWC (``ops.relu_nhwc``)."""
    head = g.head if g.step == 1 else g.head[0]
    sources = x.shape[1]
    if head not in begun:
        leaf = relu_nhwc if head in nhwc else functools.partial(_run_leaf, g.leaves[0], slots=sources)
        begun[head] = leaf(_flatten_sources(x)).unflatten(1, (sources, -1))
    if g.head not in begun:
        begun[g.head] = pixels(_flatten_sources(begun[head]), step=g.step).unflatten(1, (sources, -1))


def _nhwc_heads(groups: list[_Group], x: torch.Tensor) -> set:
    """In an NCHW cell on a GPU: the ReLU heads whose every group begins with a depthwise convolution that runs
    NHWC (``_reads_nhwc``). Written NHWC by the ReLU itself (``ops.relu_nhwc``, its gradient NCHW in the same
    kernel), they spare each group's convolution the copy in, or the copy to the edges (``_copy_to_edges``) its
    gradient's copy back."""
    readers: dict = {}
    for g in groups:
        head = g.head if g.step == 1 else g.head[0]
        if head is not None and head[0] == "relu":
            readers.setdefault(head, []).append(g)
    one = x[:, 0]  # a source, as each group's head sees it
    return {head for head, gs in readers.items()
            if all(_reads_nhwc(g, one if g.step == 1 else pixels(one, step=g.step)) for g in gs)}


def _split_channels(x: torch.Tensor, c: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` (N, K, C, H, W) split into its first ``c`` channels and the rest, by one split (its backward
    one concatenation, where two slices take a zero fill and a copy each), on (N, H, W, K, C) where ``x``
    is channels_last, so that the backward stays NHWC (a slice's backward fills a fresh NCHW tensor)."""
    view, k = _blocks(x)
    return tuple(_unblocked(t, k) for t in view.split([c, x.shape[2] - c], k + 1))


def _flatten_sources(x: torch.Tensor) -> torch.Tensor:
    """``x`` (N, K, C, H, W) as (N, K x C, H, W), in its layout: a view where ``x`` is dense, else a copy
    (PC-DARTS's channel slice), NHWC where ``x`` is channels_last."""
    if channels_innermost(x[:, 0]):
        n, k, c, h, w = x.shape
        return x.permute(_NHWC).reshape(n, h, w, k * c).permute(0, 3, 1, 2)
    return x.flatten(1, 2)


def _with_bypass(y: torch.Tensor, rest: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """PC-DARTS (Xu et al., ICLR 2020, Eq. 2) summed per node, before its channel shuffle: beside what the ops
    of a node's edges add, ``y`` (N, nodes, C/K, H, W), the bypassed channels of their sources, ``rest``
    (N, sources, C - C/K, H, W), each edge's times its weight in ``scale`` (sources x nodes; None: 1). The
    shuffle is a fixed permutation of the channels, so the shuffle of this sum is the sum of the edges'
    shuffled outputs: ``run_plan`` shuffles each node once, not each edge. In the layout of ``y``."""
    nodes = y.shape[1]
    y, k = _blocks(y)
    rest = _unblocked(rest, k)  # into the view of y (whatever its own layout): _NHWC is its own inverse
    per_node = [nodes if d == k else 1 for d in range(5)]
    if scale is None:
        rest = rest.sum(k, keepdim=True).expand([-1 if n == 1 else n for n in per_node])
    else:
        rest = sum(rest.narrow(k, s, 1) * weights.view(per_node) for s, weights in enumerate(scale.view(-1, nodes)))
    return _unblocked(torch.cat([y, rest], dim=k + 1), k)


def _same_on_every_edge(g: _Group) -> bool:
    """Whether the op computes the same on every edge that leaves a source: what follows its head (a
    pooling, a ReLU, or nothing: the skip) is only BatchNorms that normalise by the batch (training, not
    affine), which hold no parameters, only running statistics."""
    rest = g.leaves[g.start:]
    return all(kind == "bn" and mods[0].training and not mods[0].affine for kind, mods in rest)


def _per_source_sum(groups: list[_Group], weights: list, begun: dict, per: int, run: _Run) -> torch.Tensor:
    """The weighted outputs of ops that compute the same on every edge of a source (pooling and its
    BatchNorm, the skip), (N, edges x C, H, W) as a block of ``_sum_slots``: each op runs once per source,
    not copied to the edges, and DARTS Eq. 2 over these ops is one batched matmul of their outputs with
    their weights ``weights`` (per op, one per edge), giving every edge its own sum."""
    xs = [_flatten_sources(begun[g.head]) for g in groups]  # (N, sources x C, H, W)
    ptr = [g.start for g in groups]
    while any(p < len(g.leaves) for p, g in zip(ptr, groups)):  # BatchNorms: one for those alike
        waiting: dict[tuple, list[int]] = {}
        for i, g in enumerate(groups):
            if ptr[i] < len(g.leaves):
                bn = g.leaves[ptr[i]][1][0]
                waiting.setdefault((_signature(("bn", bn))[1:], xs[i].shape[2:]), []).append(i)
        for members in waiting.values():
            x = _cat([xs[i] for i in members])
            mods = [m for i in members for m in groups[i].leaves[ptr[i]][1]]
            parts = _batch_norm(x, mods, run, per=per).split([xs[i].shape[1] for i in members], 1)
            for i, part in zip(members, parts):
                xs[i] = part
                ptr[i] += 1
    n, _, height, width = xs[0].shape
    sources = len(weights[0]) // per
    w = torch.stack(weights).view(len(groups), sources, per).permute(1, 2, 0)  # (sources, per, ops)
    if channels_innermost(xs[0]):  # (ops, N, H, W, sources, C) -> (N, H, W, sources, per, C): NHWC, by one
        # matrix product per source over (N H W C), not one per pixel
        z = torch.stack([x.permute(0, 2, 3, 1).unflatten(3, (sources, -1)) for x in xs])
        return torch.einsum("spo,onhwsc->nhwspc", w, z).flatten(3).permute(0, 3, 1, 2)
    z = torch.stack([x.reshape(n, sources, -1) for x in xs], 2)  # (N, sources, ops, C H W)
    return torch.matmul(w, z).view(n, -1, height, width)  # (N, sources, per, C H W): per edge


def _copy_to_edges(begun: dict, wanted: list[tuple], to_nhwc=frozenset()) -> dict:
    """Each (head, per) ``wanted``: the head of each source copied to its ``per`` slots (its edges, times the
    ops of a group of several), (N, sources x per x C, H, W), in its layout (channels_last stays NHWC, which
    the convolutions take, and would otherwise copy them again), or NHWC for those ``to_nhwc`` (the gradient
    of the head still in its layout): one copy each, whose backward is the sum over the slots (the heads
    stacked into one copy would add a stack forward and, backward, the unbind's stack of the whole gradient)."""
    copies = {}
    for head, per in dict.fromkeys(wanted):
        h = begun[head]
        nhwc = channels_innermost(h[:, 0])
        if nhwc or (head, per) in to_nhwc:  # copied on (N, H, W, sources, C), dense, and back: the backward's
            # sum over the copies then stays NHWC too
            h = h if nhwc else dense_gradient(h)
            copied = h.permute(_NHWC).unsqueeze(4).expand(-1, -1, -1, -1, per, -1).contiguous()
            copied = copied.permute(0, 3, 4, 5, 1, 2)  # (N, sources, per, C, H, W)
        else:
            copied = h.unsqueeze(2).expand(-1, -1, per, -1, -1, -1).contiguous()
        copies[head, per] = copied.flatten(1, 3)
    return copies


def _sum_slots(batch: _Batch, blocks, w, st, shape, by_node: bool) -> torch.Tensor:
    """DARTS Eq. 2 for every edge of the batch at once: the groups' outputs, already weighed by their op
    weights, one block per group in the order of the groups, summed per edge (``shape``, plus the
    straight-through term ``st``), or with ``by_node`` summed over the sources too, per node. ``w``, the
    slots' weights, gives the dtype of an empty sum.

    When every group covers every edge in order the sum is one add per block, otherwise one ``index_add_``
    per block of its slots at their edges."""
    sources = len(batch.sources)
    if by_node:
        shape = (shape[0], shape[1] // sources, *shape[2:])
    if not blocks:  # every edge of the batch runs the zero op only
        return w.new_zeros(shape) if st is None else st.view(1, -1, 1, 1, 1).expand(shape)
    if batch.pos is None:  # each block one op's outputs, (N, sources x edges per source x C, H, W)
        y = blocks[0]
        for b in blocks[1:]:
            y = y + b
        if by_node and sources > 1:
            y = _sum_blocks(y, sources)
        y = y.unflatten(1, (-1, shape[2]))
        return y if st is None else y + st.view(1, -1, 1, 1, 1)
    index = (batch.node_pos if by_node else batch.pos).split([b.shape[1] // shape[2] for b in blocks])
    return _index_add(shape[1], [(i, b.unflatten(1, (-1, shape[2]))) for i, b in zip(index, blocks)], st)


_NHWC = (0, 3, 4, 1, 2)  # (N, K, C, H, W) <-> (N, H, W, K, C), its own inverse


def _blocks(t: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``t`` (N, K, C, H, W) as a view with K and C in memory order, and the dimension of K (C is the next):
    ``t`` itself (K at 1), or (N, H, W, K, C) (K at 3) where ``t`` is channels_last. Gathering, splitting
    or concatenating along K or C on this view keeps the layout of ``t``, forward and backward: on the 5-d
    tensor itself their results, and their gradients, come out NCHW, which the convolutions after them
    would copy back. ``_unblocked`` turns a result of the view back into (N, K', C', H, W)."""
    return (t.permute(_NHWC), 3) if channels_innermost(t[:, 0]) else (t, 1)


def _unblocked(view: torch.Tensor, k: int) -> torch.Tensor:
    """A result of a ``_blocks`` view, K at ``k``, as (N, K, C, H, W)."""
    return view.permute(_NHWC) if k == 3 else view


def _index_select(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``t`` (N, K, C, H, W) at ``index`` along K, in the layout of ``t`` (``_blocks``)."""
    view, k = _blocks(t)
    return _unblocked(view.index_select(k, index), k)


def _index_add(blocks: int, parts: list[tuple[torch.Tensor, torch.Tensor]], st=None) -> torch.Tensor:
    """Zeros of (N, ``blocks``, C, H, W), or ``st`` per block, with each ``z`` (N, slots, C, H, W) of ``parts``
    added at its ``index`` along the blocks, in the layout of ``z`` (as ``_index_select``), one ``index_add_``
    each: the gradient of each ``z`` is then a dense tensor of its own (of one concatenation of them, the
    slices: on the CPU a BatchNorm backward handed such a strided slice ran ~5x slower); in the dtype that
    adding them would give (under bf16 autocast: bf16 ops, fp32 ``st``, as ``w * op(x)`` sums in the
    readable cell)."""
    z = parts[0][1]
    dtype = z.dtype if st is None else torch.promote_types(z.dtype, st.dtype)
    view, k = _blocks(z)
    size = [*view.shape[:k], blocks, *view.shape[k + 1:]]
    y = (view.new_zeros(size, dtype=dtype) if st is None
         else st.to(dtype).view([-1 if d == k else 1 for d in range(5)]).expand(size).clone())
    for index, z in parts:
        y = y.index_add_(k, index, _blocks(z.to(dtype))[0])
    return _unblocked(y, k)


def _cat(tensors: list[torch.Tensor], dim: int = 1) -> torch.Tensor:
    """The tensors concatenated (along the channels by default); one alone as it is, not copied."""
    return torch.cat(tensors, dim) if len(tensors) > 1 else tensors[0]


def _sum_blocks(t: torch.Tensor, blocks: int, width: int | None = None) -> torch.Tensor:
    """``t`` (N, M x blocks x width, H, W) summed over its blocks, (N, M x width, H, W) (``width`` None: M = 1),
    in the layout of ``t``: a sum over a dimension of a channels_last tensor would return NCHW, and every
    convolution after it would copy its input back to NHWC."""
    split = (-1, blocks, width or t.shape[1] // blocks)
    if channels_innermost(t):
        return t.permute(0, 2, 3, 1).unflatten(3, split).sum(4).flatten(3).permute(0, 3, 1, 2)
    return t.unflatten(1, split).sum(2).flatten(1, 2)


def _run_groups(groups: list[_Group], xs: list[torch.Tensor], reads: list[int], weights, run: _Run, lanes: _Lanes,
                summed: bool):
    """Run every group's leaves after its head on its slot input (or, ``reads`` k > 1, on its sources, which its
    first convolution reads as k copies of each: ``_reads_copies``), each BatchNorm over the group's slots at
    once, and weigh each group's output by its op weights per output channel ``weights`` (DARTS Eq. 2): the
    outputs, one block per group in the order of the groups (but for those summed on phases, below); each
    group on a lane of its own.

    Where a BatchNorm is a group's last leaf the weights are its affine weight, w BN(x) being BN(x) with
    weight w: no multiply forward, and the BatchNorm's backward gives the weights' gradient in the pass it
    makes anyway. Groups that end otherwise (skip) are multiplied.

    A group that begins with a dilated depthwise convolution (``_phase_dilation``: the DARTS dilated
    convolutions) on an NHWC input runs it on the input's phases (``ops.to_phases``), the groups on the phases of
    one input in one lane, which takes the phases once. In an NHWC cell, where the group goes on pixelwise, it
    runs whole on the phases and the lane puts the outputs back; where the blocks are only summed (``summed``)
    it adds them on the phases and puts them back once, one block (after the others): two copies forward and
    two backward fewer per source batch than per convolution. In an NCHW cell (a GPU's NHWC copy of a source,
    ``_copy_to_edges``) each group puts its convolution's output back NCHW at once."""
    units: dict = {}  # what runs in one lane: a group, or the groups on the phases of one input
    for i, (g, x) in enumerate(zip(groups, xs)):
        d = _phase_dilation(g.leaves[g.start:], x, whole=run.nhwc)
        units.setdefault((id(x), d) if d > 1 else i, (x, d, []))[2].append(i)
    blocks, merged = [None] * len(groups), []
    for x, d, members in units.values():
        with lanes():
            if d == 1:
                i = members[0]
                blocks[i] = _run_group(groups[i], x, 1, weights[i], run, summed, reads[i])
                continue
            phases = to_phases(x, d)
            ys = [_run_group(groups[i], phases, d, weights[i], run, summed) for i in members]
            if not run.nhwc:  # each put back by its group
                for i, y in zip(members, ys):
                    blocks[i] = y
            elif summed:
                merged.append(from_phases(functools.reduce(torch.add, ys), d, nhwc=True))
            else:
                for i, y in zip(members, ys):
                    blocks[i] = from_phases(y, d, nhwc=True)
    return [b for b in blocks if b is not None] + merged


def _run_group(g: _Group, x: torch.Tensor, d: int, w: torch.Tensor, run: _Run, summed: bool,
               reads: int = 1) -> torch.Tensor:
    """The leaves of ``g`` after its head on ``x`` (its input's d x d phases where d > 1: in an NCHW cell the
    first only, whose output is put back NCHW; ``reads`` k > 1: its sources, read by the first convolution as
    k copies of each), weighed by ``w``; where the batch's blocks are only summed (``summed``), the outputs of
    a group of several ops summed per edge."""
    start, relu_done, relu_in = g.start, False, False  # the head ran once per source
    for j in range(start, len(g.leaves)):
        leaf = g.leaves[j]
        if relu_done:  # by the BatchNorm before it
            relu_done = False
        elif leaf[0] == "bn":
            relu_done = _relu_writes_nhwc(g, j + 1, x, run)
            x = _batch_norm(x, leaf[1], run, w if j == len(g.leaves) - 1 else None, nhwc_relu=relu_done)
        elif _relu_writes_nhwc(g, j, x, run):
            x = relu_nhwc(x)  # the ReLU writes what the depthwise convolution reads: no copy in
        elif _relu_before(g, j) and depthwise_by_triton(x, g.leaves[j + 1][1][0]):
            relu_in = True  # computed by the convolution after it, on the way in
        else:
            convs = [run.weights[bank][piece] for bank, piece in g.convs[j]]
            if d > 1 and j == start:  # undilated on the phases
                x = _conv(x, leaf[1], g.from_sources or len(g.edge_ids), convs[0], phases=d)
                x = x if run.nhwc else from_phases(x, d, nhwc=False)
                continue
            sampled = g.step > 1 and j == start  # its head took the pixels the convolution reads
            x = _run_leaf(leaf, x, len(g.edge_ids), convs, run.noise, g.edge_ids, sampled,
                          g.from_sources if j == start else 0, relu_in, reads if j == start else 1)
            relu_in = False
            if not run.nhwc and channels_innermost(x):  # a depthwise convolution on an NHWC copy (``_copy_to_
                x = x.contiguous()  # edges``) or ReLU: back to the cell's layout
    x = x if g.leaves and g.leaves[-1][0] == "bn" else x * w.view(1, -1, 1, 1)
    return _sum_blocks(x, g.repeats, x.shape[1] // len(g.edge_ids)) if summed and g.repeats > 1 else x


def _relu_writes_nhwc(g: _Group, j: int, x: torch.Tensor, run: _Run) -> bool:
    """Whether leaf j of ``g`` is a ReLU of ``x`` whose output a depthwise convolution that runs NHWC reads
    (``ops.depthwise_runs_nhwc``), so that it writes it NHWC (``ops.relu_nhwc``): no copy in."""
    return run.nhwc_forms and _relu_before(g, j) and depthwise_runs_nhwc(x, g.leaves[j + 1][1][0])


def _relu_before(g: _Group, j: int) -> bool:
    """Whether leaf j of ``g`` is a ReLU that a convolution follows."""
    return j + 1 < len(g.leaves) and g.leaves[j][0] == "relu" and g.leaves[j + 1][0] == "conv"


def _reads_copies(g: _Group, head: torch.Tensor) -> bool:
    """Whether the first of the group's own steps is a depthwise convolution that reads its copies of ``head``
    (N, sources, C, H, W) in place (``ops.depthwise_by_triton``: dnas's kernels), so that the head is not
    copied to the group's edges (``_copy_to_edges``)."""
    own = g.leaves[g.start:]
    return bool(own) and own[0][0] == "conv" and depthwise_by_triton(_flatten_sources(head), own[0][1][0])


def _reads_nhwc(g: _Group, x: torch.Tensor) -> bool:
    """Whether the first of the group's own steps (after its head) is a depthwise convolution that runs
    NHWC on ``x``, its head's output for one source (``ops.depthwise_runs_nhwc``)."""
    own = g.leaves[g.start:]
    return bool(own) and own[0][0] == "conv" and depthwise_runs_nhwc(x, own[0][1][0], sampled=g.step > 1)


def _phase_dilation(leaves, x: torch.Tensor, whole: bool) -> int:
    """d where ``leaves`` begin with a depthwise convolution of dilation d > 1 whose phases fit ``x`` (NHWC;
    ``ops.phases_fit``), so that it runs undilated on them, and (``whole``) go on with pixelwise steps only
    (1x1 convolutions of stride 1, BatchNorms, ReLUs), which compute the same on the phases; else 1."""
    if not leaves or leaves[0][0] != "conv" or not channels_innermost(x):
        return 1
    c = leaves[0][1][0]
    pixelwise = all(kind in ("bn", "relu") or kind == "conv" and mods[0].kernel_size == (1, 1)
                    and mods[0].stride == (1, 1) and mods[0].padding == (0, 0) for kind, mods in leaves[1:])
    if c.dilation == (1, 1) or not (_depthwise(c) and (pixelwise or not whole)
                                    and phases_fit(x, c.stride, c.padding, c.dilation)):
        return 1
    return c.dilation[0]


def _batch_norm(x: torch.Tensor, mods: list[nn.BatchNorm2d], run: _Run, scale=None, per: int = 1,
                nhwc_relu: bool = False) -> torch.Tensor:
    """The BatchNorms ``mods`` over their concatenated channels, their outputs times ``scale`` per channel
    if given, and with ``nhwc_relu`` the ReLU after them written NHWC (``ops.relu_nhwc``; in training with
    ``BATCH_NORM_KERNELS`` "triton", in the BatchNorm's own kernels). In training their running statistics
    move towards the batch's when the cell is done (``_Run.batch_statistics``); in evaluation they normalise
    by them. ``per`` > 1 (training, not affine): each block of channels of ``x`` is what ``per`` modules, on
    the edges of one source, see alike, so it is normalised once and each of them moves by the same batch
    statistics."""
    m = mods[0]
    weight, bias = (_cat([b.weight for b in mods], 0), _cat([b.bias for b in mods], 0)) if m.affine else (None, None)
    if scale is not None:  # s (g x^ + b) = (s g) x^ + s b
        weight = scale if weight is None else weight * scale
        bias = None if bias is None else bias * scale
    kernels = BATCH_NORM_KERNELS.get(x.device.type)
    if kernels not in (None, "cudnn", "parts", "triton"):
        raise ValueError(f"fused.BATCH_NORM_KERNELS[{x.device.type!r}] is {kernels!r}; valid: 'cudnn', 'parts', "
                         f"'triton' (or no entry: PyTorch's own kernels)")
    if kernels == "cudnn":  # 1 x^ + 0 where there is no weight or bias
        dtype = torch.promote_types(x.dtype, torch.float32) if weight is None else weight.dtype
        weight = filled(1.0, x.shape[1], dtype, x.device) if weight is None else weight
        bias = filled(0.0, x.shape[1], dtype, x.device) if bias is None else bias
    if m.training:
        mean, var = run.batch_statistics(mods, x.shape[1], per)
        if kernels == "triton":
            return ops.triton_kernels("fused.BATCH_NORM_KERNELS").batch_norm(x, mean, var, weight, bias, m.eps,
                                                                             nhwc_relu)
        if kernels == "parts":
            y = ops.batch_norm_by_parts(x, mean, var, weight, bias, m.eps)
        else:
            y = F.batch_norm(x, mean, var, weight, bias, True, 1.0, m.eps)
    else:
        mean, var = ((m.running_mean, m.running_var) if len(mods) == 1 else  # one concatenation for both
                     torch.cat([b.running_mean for b in mods] + [b.running_var for b in mods]).split(x.shape[1]))
        y = F.batch_norm(x, mean, var, weight, bias, False, 0.0, m.eps)
    return relu_nhwc(y) if nhwc_relu else y


#: Per device type, the kernels the fused cell's BatchNorms run by there: "cudnn", cuDNN's (PyTorch hands a
#: BatchNorm to them only with both an affine weight and a bias: the cell gives it ones and zeros where it
#: has none); in training "parts", PyTorch's over parts of the batch (``ops.batch_norm_by_parts``, CUDA only),
#: or "triton", dnas's own (``dnas.kernels.batch_norm``); else PyTorch's own. The cell's BatchNorms have a
#: weight (the op weights of Eq. 2) or neither, so they all run PyTorch's kernels, 28% of an eager darts-v1
#: step's device time on an H200 (docs/speed.md), which reduce each channel of an NCHW input in one thread
#: block. None chosen until measured faster (``benchmarks/conv_variants.py --only batchnorm``, and the step by
#: search_step.py's ``-cudnnbn``, ``-partsbn`` and ``-tritonbn`` paths).
BATCH_NORM_KERNELS: dict[str, str] = {}


def _run_leaf(leaf, x: torch.Tensor, slots: int, weights=(), noise=None, edge_ids=None, sampled=False,
              sources: int = 0, relu_input: bool = False, reads: int = 1) -> torch.Tensor:
    """One leaf on ``slots`` edges at once; ``x`` holds the slots' channels one after another (``sources``:
    the channels of that many sources, each read by its edges' dense convolutions at once; ``reads`` k > 1:
    of the sources, each read by k slots of a depthwise convolution), ``weights`` the stacked weights of its
    convolutions; ``sampled``: a convolution's input is the pixels it reads (``ops.conv2d``); ``relu_input``:
    a convolution's input is relu(x) (``ops.depthwise_by_triton``)."""
    kind, mods = leaf
    m = mods[0]
    blocks = sources or slots  # of the input: a convolution's groups repeat once per block
    if kind == "relu":
        return F.relu(x)
    if kind == "pool":
        return m(x)
    if kind == "conv":
        return _conv(x, mods, blocks, weights[0], sampled, relu_input=relu_input, reads=reads)
    if kind == "fr":
        a = _conv(x, [f.conv_1 for f in mods], blocks, weights[0])
        b = _conv(pixels(x, start=1), [f.conv_2 for f in mods], blocks, weights[1])
        if channels_innermost(x):  # each edge's two halves side by side, in NHWC
            per_slot = lambda t: t.permute(0, 2, 3, 1).unflatten(3, (slots, -1))
            return torch.cat([per_slot(a), per_slot(b)], 4).flatten(3).permute(0, 3, 1, 2)
        return torch.cat([a.unflatten(1, (slots, -1)), b.unflatten(1, (slots, -1))], 2).flatten(1, 2)
    if kind == "noise":
        if not m.training:
            return x
        eps = torch.stack([noise[e] for e in edge_ids], 1)
        y = x.unflatten(1, (slots, -1))
        std = y.detach().transpose(0, 1).reshape(slots, -1).std(1)  # each edge's own std(y)
        return (y + m.mean + (m.factor * std).view(1, -1, 1, 1, 1) * eps).flatten(1, 2)
    if kind == "dropout":
        if not m.training:
            return x
        return (x.unflatten(1, (slots, -1)) * torch.stack([noise[e] for e in edge_ids], 1)).flatten(1, 2)
    xs = x.unflatten(1, (slots, -1))  # opaque: each edge's own module, as in the readable path
    return torch.cat([mod(xs[:, i]) for i, mod in enumerate(mods)], 1)


def _conv(x, convs: list[nn.Conv2d], blocks: int, weight: torch.Tensor, sampled: bool = False,
          phases: int = 1, relu_input: bool = False, reads: int = 1) -> torch.Tensor:
    """One convolution for the edges of ``convs`` on ``x`` of ``blocks`` blocks of channels (one per edge,
    or one per source, whose edges then follow each other in the output), its groups repeated per block;
    ``weight``: the edges', stacked. ``phases``: d, ``x`` holds the d x d phases of the convolution's input
    (dilation d), which it computes undilated; ``relu_input``: of relu(x); ``reads`` k > 1: ``x`` holds
    ``blocks`` / k sources, each read as k blocks (``ops.conv2d``'s ``copies``)."""
    c = convs[0]
    bias = None if c.bias is None else torch.cat([k.bias for k in convs])
    padding = _widened(c, weight.shape[-2:])
    padding, dilation = (tuple(v // phases for v in values) for values in (padding, c.dilation))
    return conv2d(x, weight, bias, c.stride, padding, dilation, c.groups * blocks, sampled, relu_input,
                  copies=reads, blocks=blocks // reads)


def _widened(c: nn.Conv2d, kernel) -> tuple[int, int]:
    """The padding of ``c`` for a ``kernel`` (its weights zero-padded around: a bank's, ``_bank``) that
    computes what ``c`` computes: one more pixel of padding for each ring of zeros, times the dilation."""
    return tuple(p + d * (k - own) // 2 for p, d, k, own in zip(c.padding, c.dilation, kernel, c.kernel_size))
