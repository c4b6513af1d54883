"""The fast path of the DARTS supernet cell: what ``SearchCell.forward`` computes, in fewer, larger kernels.

The readable cell (``spaces/darts.py``) runs every op of every edge as its own modules, some 40 small
kernels per edge and 14 edges per cell, so that a search step on a GPU is bound by launching ~13k tiny
kernels rather than by arithmetic. Here the edges that leave one state are computed together, and the 2 x
``nodes`` edges that leave the two cell inputs all at once:

* a ReLU or pooling that begins an op runs once per source state, not once per edge;
* one op on several edges is one convolution: the depthwise convolutions of the edges stacked
  (groups = edges x C), the pointwise ones as one convolution with groups = edges;
* BatchNorms reached at the same depth by the ops are one ``batch_norm`` over the concatenated channels.
  BatchNorm without affine parameters normalises each channel by its own batch statistics, so this is
  exactly equivalent; the running statistics are the readable modules' own buffers, concatenated and
  written back, so a step leaves the same state behind;
* the zero op, and ops whose weight is structurally zero (not sampled by a hard relaxation, masked out
  of the space), are not computed; skip is the identity;
* the weighted sum of DARTS Eq. 2 is one ``index_add`` per op, and the sums into the nodes one add per
  source state.

Weights and buffers are read from the readable modules at call time, so a fused supernet has the same
``state_dict``, works under ``torch.func.functional_call`` (the unrolled model of second-order DARTS) and
derives the same genotype. Every relaxation runs fused (the weights are one tensor per cell type; a hard
one gives the edges' active ops, and the straight-through term of ``MixedEdge`` is added per edge), and so
do the edge computations of the method zoo: ``sum``, ``partial_channel`` (the op on the first C/K
channels, the bypass max-pooled on a reducing edge, the channel shuffle; PC-DARTS edge normalisation),
``auxiliary_skip`` (beta * skip as one more op), ``noisy_skip`` and ``skip_dropout`` (the noise and the
dropout masks drawn in the readable path's order, so that a seeded step is the same). What it cannot batch falls back to the readable modules: an op
module of a kind not listed in ``_flatten`` runs per edge, and a cell with edges of another class runs
``SearchCell.forward`` whole.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..edges import AuxiliarySkipEdge, GaussianNoise, MixedEdge, PartialChannelEdge, ScheduledDropout
from ..ops import FactorizedReduce, Zero

Leaf = tuple[str, nn.Module]  # (kind, module): one step of an op, batched across edges by its kind


def _flatten(module: nn.Module) -> list[Leaf] | None:
    """An op as a sequence of leaves that batch across edges; None for the zero op (never computed).

    The kinds: relu, conv (``nn.Conv2d``), bn (``nn.BatchNorm2d`` with running statistics and a momentum),
    pool, fr (the two shifted convolutions of a ``FactorizedReduce``), noise (``GaussianNoise``), dropout
    (``ScheduledDropout``). Any other module is one ``opaque`` leaf: it runs per edge, as in the readable
    path, though in source-batch order (an opaque module that draws random numbers would draw them in
    another order than the readable cell).
    """
    if isinstance(module, Zero):
        return None
    if isinstance(module, nn.Identity):
        return []
    if isinstance(module, nn.Sequential):
        leaves = []
        for child in module:
            sub = _flatten(child)
            if sub is None:
                return [("opaque", module)]
            leaves += sub
        return leaves
    if isinstance(module, FactorizedReduce):
        return [("relu", module.relu), ("fr", module), *_flatten(module.bn)]
    if isinstance(module, GaussianNoise):
        inner = _flatten(module.module)
        return None if inner is None else [*inner, ("noise", module)]
    if isinstance(module, ScheduledDropout):
        return [("dropout", module)]
    if isinstance(module, nn.ReLU):
        return [("relu", module)]
    if isinstance(module, nn.Conv2d) and module.padding_mode == "zeros":
        return [("conv", module)]
    if isinstance(module, nn.BatchNorm2d) and module.track_running_stats and module.momentum is not None:
        return [("bn", module)]
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        return [("pool", module)]
    return [("opaque", module)]


def _signature(leaf: Leaf) -> tuple:
    """What must agree for two edges' leaves to run as one batched kernel."""
    kind, m = leaf
    if kind == "conv":
        return kind, m.weight.shape, m.stride, m.padding, m.dilation, m.groups, m.bias is None
    if kind == "fr":
        return kind, m.conv_1.weight.shape, m.conv_2.weight.shape
    if kind == "bn":
        return kind, m.num_features, m.eps, m.momentum, m.affine
    if kind == "pool":
        return kind, repr(m)
    if kind == "noise":
        return kind, m.factor, m.mean
    if kind == "opaque":
        return kind, id(m)  # never batched with another edge's
    return (kind,)


@dataclass
class _Group:
    """One op (or the auxiliary skip) on the edges of a source batch that compute it, one slot per edge."""

    op: int | None  # column of the op weights; None: the auxiliary skip of DARTS-, weighted by its beta
    leaves: list[tuple[str, list[nn.Module]]]  # per leaf, its module on every slot
    src: torch.Tensor  # per slot, the source state (index into the batch's sources)
    pos: torch.Tensor  # per slot, the edge (index into the batch's edges)
    edges: torch.Tensor  # per slot, the edge (index into the cell's edges), to read its op weight
    edge_ids: list[int]
    beta_of: object = None  # the AuxiliarySkip schedule whose beta weighs this group


@dataclass
class _Batch:
    """The edges leaving some source states, computed together."""

    sources: list[int]
    edges: list[int]  # cell edge indices, ordered by source then by node
    edge_index: torch.Tensor
    groups: list[_Group]
    partial_channels: int | None  # PC-DARTS K; None for a whole-channel edge
    stride: int
    keep: torch.Tensor | None  # 0/1 per edge when some edge has every op masked out (dropped)


@dataclass
class _Plan:
    batches: list[_Batch]
    straight_through: torch.Tensor | None  # (edges, ops) 0/1 of the ops run, when not all of them
    random: list[tuple[int, Leaf]]  # (edge, its noise or dropout leaf), in the order the readable cell draws


_PLANS: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def fused_cell_forward(cell, s0, s1, weights, active=None, edge_weights=None):
    """``cell(s0, s1, weights, active, edge_weights)`` of a ``SearchCell``, computed by source batches.

    A node is the sum of its incoming edges (DARTS Sec. 2.1); the edges out of the two inputs are summed
    into partial nodes at once, then each new node's outgoing edges are added as soon as it is complete.
    """
    plan = _plan(cell, active, s1.device)
    if plan is None:
        return cell(s0, s1, weights, active, edge_weights)
    states = [cell.preprocess0(s0), cell.preprocess1(s1)]
    noise = _draw_random(cell, plan, states[1]) if plan.random and cell.training else {}
    st = None
    if plan.straight_through is not None:  # MixedEdge: sum_{o not run} w_o, zero in value
        st = weights.sum(-1) - (weights * plan.straight_through).sum(-1)
    partial = None
    for batch in plan.batches:
        y = _edge_outputs(batch, [states[j] for j in batch.sources], weights, st, edge_weights, noise)
        if partial is None:  # the two cell inputs: sum their edges into each node
            partial = y[:, : cell.nodes] + y[:, cell.nodes :]
        else:
            partial = partial[:, 1:] + y
        states.append(partial[:, 0])
    return torch.cat(states[2:], dim=1)


def _plan(cell, active, device) -> _Plan | None:
    """The cell's source batches for one pattern of active ops, built once and cached."""
    key = (device, None if active is None else tuple(map(tuple, active)))
    plans = _PLANS.setdefault(cell, {})
    if key not in plans:
        if len(plans) > 64:  # hard relaxations sample a new pattern each step
            plans.clear()
        plans[key] = _build_plan(cell, active, device)
    return plans[key]


def _build_plan(cell, active, device) -> _Plan | None:
    if not all(type(e) in (MixedEdge, PartialChannelEdge, AuxiliarySkipEdge) for e in cell.edges):
        return None
    if any(type(e) is AuxiliarySkipEdge and type(e.mixed) is not MixedEdge for e in cell.edges):
        return None
    n = cell.nodes
    offset = [2 * i + i * (i - 1) // 2 for i in range(n)]  # first edge into node i
    tensor = lambda xs: torch.tensor(xs, dtype=torch.long, device=device)
    sources = [[0, 1]] + [[j] for j in range(2, n + 1)]
    batches, random = [], {}
    for srcs in sources:
        pairs = [(j, offset[i] + j) for j in srcs for i in range(max(0, j - 1), n)]  # (source, edge)
        edges = [e for _, e in pairs]
        slots: dict[tuple, list] = {}  # group key -> [(source, position, edge, leaves)]
        for pos, (j, e) in enumerate(pairs):
            edge = cell.edges[e]
            mixed = edge.mixed if isinstance(edge, AuxiliarySkipEdge) else edge
            run = range(len(mixed.ops)) if active is None else active[e]
            ops = [(o, mixed.ops[o]) for o in sorted(run)]
            if isinstance(edge, AuxiliarySkipEdge) and (active is None or active[e]):
                ops.append((None, edge.skip))
            for o, module in ops:
                leaves = _flatten(module)
                if leaves is None:
                    continue
                random.update((e, leaf) for leaf in leaves if leaf[0] in ("noise", "dropout"))
                key = (o, tuple(map(_signature, leaves)))
                slots.setdefault(key, []).append((srcs.index(j), pos, e, leaves))
        groups = []
        for (o, _), members in sorted(slots.items(), key=lambda kv: (kv[0][0] is None, kv[0][0] or 0)):
            groups.append(_Group(
                op=o,
                leaves=[(leaves[0], [m[3][k][1] for m in members]) for k, leaves in enumerate(members[0][3])],
                src=tensor([m[0] for m in members]), pos=tensor([m[1] for m in members]),
                edges=tensor([m[2] for m in members]), edge_ids=[m[2] for m in members],
                beta_of=None if o is not None else cell.edges[members[0][2]].schedule))
        first = cell.edges[edges[0]]
        dropped = active is not None and not all(active[e] for e in edges)
        batches.append(_Batch(
            sources=srcs, edges=edges, edge_index=tensor(edges), groups=groups,
            partial_channels=first.k if isinstance(first, PartialChannelEdge) else None,
            stride=2 if cell.reduction and srcs[0] < 2 else 1,
            keep=torch.tensor([float(bool(active[e])) for e in edges], device=device) if dropped else None))
    straight_through = None
    if active is not None:
        first = cell.edges[0].mixed if isinstance(cell.edges[0], AuxiliarySkipEdge) else cell.edges[0]
        straight_through = torch.tensor([[float(o in run) for o in range(len(first.ops))] for run in active],
                                        device=device)
    return _Plan(batches, straight_through, sorted(random.items(), key=lambda kv: kv[0]))


def _draw_random(cell, plan: _Plan, s1: torch.Tensor) -> dict[int, torch.Tensor]:
    """The NoisyDARTS noise and the P-DARTS skip dropout masks of the cell's edges, drawn edge by edge in
    the order the readable cell draws them, so that a seeded step gives the same result."""
    n, c, h, w = s1.shape
    if cell.reduction:
        h, w = (h + 1) // 2, (w + 1) // 2
    out = {}
    for e, (kind, module) in plan.random:
        edge = cell.edges[e]
        shape = (n, c // edge.k if isinstance(edge, PartialChannelEdge) else c, h, w)
        if kind == "noise":
            out[e] = torch.randn(shape, dtype=s1.dtype, device=s1.device)
        else:  # the dropout of a tensor of ones is its mask, scaled by 1 / (1 - rate)
            out[e] = F.dropout(s1.new_ones(shape), module.owner.rate, module.training)
    return out


def _edge_outputs(batch: _Batch, hs, weights, st, edge_weights, noise):
    """The outputs of the batch's edges, (N, edges, C, H, W), each weighted by its edge weight."""
    x = torch.stack(hs, 1)  # (N, sources, C, H, W)
    k = batch.partial_channels
    if k is not None:
        c = x.shape[2] // k
        x, rest = x[:, :, :c], x[:, :, c:]
    heads: dict[tuple, torch.Tensor] = {}  # a ReLU or pooling that begins ops, once per source
    outs = []
    for g in batch.groups:
        start = x
        if _has_head(g):
            head = g.leaves[0]
            sig = _signature((head[0], head[1][0]))
            if sig not in heads:
                heads[sig] = _run_leaf(head, x.flatten(1, 2), len(hs), noise, None).unflatten(1, (len(hs), -1))
            start = heads[sig]
        slot_input = start.index_select(1, g.src) if len(hs) > 1 or len(g.edge_ids) > 1 else start
        outs.append(slot_input.flatten(1, 2))
    outs = _run_groups(batch.groups, outs, [int(_has_head(g)) for g in batch.groups], noise)
    n = x.shape[0]
    y = None
    batch_weights = weights.index_select(0, batch.edge_index)
    for g, z in zip(batch.groups, outs):
        z = z.unflatten(1, (len(g.edge_ids), -1))
        every_edge = g.edge_ids == batch.edges  # the op on every edge of the batch, in their order
        if g.op is None:
            w = g.beta_of.beta
        else:
            w = (batch_weights[:, g.op] if every_edge else weights[g.edges, g.op]).view(1, -1, 1, 1, 1)
        if every_edge:
            y = z * w if y is None else y + z * w
            continue
        if y is None:
            y = z.new_zeros(n, len(batch.edges), *z.shape[2:])
        y = y.index_add(1, g.pos, z * w)
    if y is None:  # every edge of the batch runs the zero op only
        h, w_ = x.shape[-2:]
        y = x.new_zeros(n, len(batch.edges), x.shape[2], (h + batch.stride - 1) // batch.stride,
                        (w_ + batch.stride - 1) // batch.stride)
    if st is not None:
        y = y + st[batch.edge_index].view(1, -1, 1, 1, 1)
    if k is not None:  # PC-DARTS: the bypassed channels, then the channel shuffle of each edge
        if batch.stride == 2:
            rest = F.max_pool2d(rest.flatten(1, 2), 2, 2).unflatten(1, (len(hs), -1))
        per_source = len(batch.edges) // len(hs)
        y = torch.cat([y, rest.repeat_interleave(per_source, dim=1)], dim=2)
        n_, e_, ch, h, w_ = y.shape
        y = y.view(n_, e_, k, ch // k, h, w_).transpose(2, 3).reshape(n_, e_, ch, h, w_)
    if edge_weights is not None:
        y = y * edge_weights[batch.edge_index].view(1, -1, 1, 1, 1)
    if batch.keep is not None:
        y = y * batch.keep.to(y.dtype).view(1, -1, 1, 1, 1)
    return y


def _has_head(g: _Group) -> bool:
    """Whether the group's op begins with a ReLU or pooling, run once per source state."""
    return bool(g.leaves) and g.leaves[0][0] in ("relu", "pool")


def _run_groups(groups: list[_Group], xs: list[torch.Tensor], starts: list[int], noise) -> list[torch.Tensor]:
    """Run every group's leaves on its slot input, one BatchNorm for all the groups waiting at one.

    The groups advance together: each runs its leaves up to its next BatchNorm, then the BatchNorms of
    every group that reached one (with the same settings and spatial size) run as one over the
    concatenated channels."""
    ptr = list(starts)
    while True:
        for i, g in enumerate(groups):
            while ptr[i] < len(g.leaves) and g.leaves[ptr[i]][0] != "bn":
                xs[i] = _run_leaf(g.leaves[ptr[i]], xs[i], len(g.edge_ids), noise, g.edge_ids)
                ptr[i] += 1
        waiting: dict[tuple, list[int]] = {}
        for i, g in enumerate(groups):
            if ptr[i] < len(g.leaves):
                bn = g.leaves[ptr[i]][1][0]
                waiting.setdefault((_signature(("bn", bn))[2:], xs[i].shape[2:], bn.training), []).append(i)
        if not waiting:
            return xs
        for members in waiting.values():
            mods = [m for i in members for m in groups[i].leaves[ptr[i]][1]]
            y = _batch_norm(torch.cat([xs[i] for i in members], 1) if len(members) > 1 else xs[members[0]], mods)
            for i, part in zip(members, y.split([xs[i].shape[1] for i in members], 1)):
                xs[i] = part
                ptr[i] += 1


def _batch_norm(x: torch.Tensor, mods: list[nn.BatchNorm2d]) -> torch.Tensor:
    """The BatchNorms ``mods`` over their concatenated channels, with their running statistics updated."""
    m = mods[0]
    cat = (lambda ts: torch.cat(ts)) if len(mods) > 1 else (lambda ts: ts[0])
    mean, var = cat([b.running_mean for b in mods]), cat([b.running_var for b in mods])
    weight = cat([b.weight for b in mods]) if m.affine else None
    bias = cat([b.bias for b in mods]) if m.affine else None
    y = F.batch_norm(x, mean, var, weight, bias, m.training, m.momentum, m.eps)
    if m.training and len(mods) > 1:
        with torch.no_grad():
            sizes = [b.num_features for b in mods]
            torch._foreach_copy_([b.running_mean for b in mods], list(mean.split(sizes)))
            torch._foreach_copy_([b.running_var for b in mods], list(var.split(sizes)))
    if m.training:
        with torch.no_grad():
            torch._foreach_add_([b.num_batches_tracked for b in mods], 1)
    return y


def _run_leaf(leaf, x: torch.Tensor, slots: int, noise, edge_ids) -> torch.Tensor:
    """One leaf on ``slots`` edges at once; ``x`` holds the slots' channels one after another."""
    kind, mods = leaf
    m = mods[0]
    if kind == "relu":
        return F.relu(x)
    if kind == "pool":
        return m(x)
    if kind == "conv":
        return _conv(x, mods, slots)
    if kind == "fr":
        a = _conv(x, [f.conv_1 for f in mods], slots)
        b = _conv(x[:, :, 1:, 1:], [f.conv_2 for f in mods], slots)
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


def _conv(x, convs: list[nn.Conv2d], slots: int) -> torch.Tensor:
    """The same convolution of ``slots`` edges as one, its groups repeated per edge, weights stacked."""
    c = convs[0]
    weight = torch.cat([k.weight for k in convs]) if len(convs) > 1 else c.weight
    bias = None if c.bias is None else torch.cat([k.bias for k in convs])
    return F.conv2d(x, weight, bias, c.stride, c.padding, c.dilation, c.groups * slots)
