"""The DARTS convolutional cell space (Liu, Simonyan, Yang, ICLR 2019, Sec. 2.1, 3.1 and App. A.1).

The supernet is a stem, ``layers`` cells (the ones at 1/3 and 2/3 of the depth are reduction cells that
halve the resolution and double the channels), global average pooling and a linear classifier. A cell
has two inputs (the outputs of the two previous cells, reduced to C channels by ReLU-Conv-BN, or by a
FactorizedReduce when the previous cell halved the resolution), ``nodes`` intermediate nodes, each the sum
of mixed edges from all earlier nodes, and outputs the concatenation of its intermediate nodes. All
normal cells share one alpha (edges x ops), all reduction cells another.

An op mask per cell type (edges x ops, all True by default) takes ops out of the space: a masked op weighs
0, is not computed, and the relaxation renormalises over the others. P-DARTS prunes the op space between
its stages with it, DARTS-PT discretises edges with it; an edge with every op masked is dropped.
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from ..edges import WeightedSum
from ..genotype import Genotype
from ..ops import (DARTS_OPS, OPS, PARAMETER_FREE_OPS, FactorizedReduce, ReLUConvBN, cat_dense_gradients, check_ops,
                   global_average)
from ..perturb import perturbed
from ..relax import Softmax, is_hard
from ..selection import TopK
from . import SPACES
from .base import Supernet, node_softmax
from .fused import Topology, cell_plan, on_host, run_plan, sampled_ops, side_by_side

CELL_TYPES = ("normal", "reduce")


def candidate_ops(ops: tuple[str, ...], C: int, stride: int) -> dict[str, nn.Module]:
    """The candidates of one supernet edge; pooling is followed by a non-affine BatchNorm as in DARTS."""
    candidates = {}
    for name in ops:
        op = OPS.get(name)(C, stride, False)
        candidates[name] = nn.Sequential(op, nn.BatchNorm2d(C, affine=False)) if "pool" in name else op
    return candidates


class SearchCell(nn.Module):
    """One supernet cell: 2 inputs, ``nodes`` intermediate nodes, mixed edges from every earlier node.

    A node is the sum of its incoming edges, each weighted by its edge weight when the space normalises
    edges (PC-DARTS, Eq. 4)."""

    def __init__(self, nodes, C_pp, C_p, C, reduction, reduction_prev, ops, edge):
        super().__init__()
        self.reduction = reduction
        self.nodes = nodes
        self.preprocess0 = (FactorizedReduce(C_pp, C, affine=False) if reduction_prev
                            else ReLUConvBN(C_pp, C, 1, 1, 0, False))
        self.preprocess1 = ReLUConvBN(C_p, C, 1, 1, 0, affine=False)
        self.edges = nn.ModuleList(
            edge(C, 2 if reduction and j < 2 else 1, partial(candidate_ops, ops))
            for i in range(nodes) for j in range(2 + i)
        )

    def forward(self, s0, s1, weights, active=None, edge_weights=None):
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        offset = 0
        for _ in range(self.nodes):
            node = 0
            for j, h in enumerate(states):
                e = offset + j
                if active is not None and not active[e]:
                    continue  # an edge with every op masked out
                out = self.edges[e](h, weights[e], None if active is None else active[e])
                node = node + (out if edge_weights is None else edge_weights[e] * out)
            states.append(node)
            offset += len(states) - 1
        return torch.cat(states[2:], dim=1)

    def forward_fused(self, s0, s1, weights, active=None, edge_weights=None):
        """``forward`` by the fast path (fused.py): the same result from fewer, larger kernels."""
        plan = cell_plan(self, Topology(2, self.nodes, 2 if self.reduction else 1), active, s1.device)
        if plan is None:
            return self(s0, s1, weights, on_host(active), edge_weights)
        states = side_by_side(s1.device, lambda: self.preprocess0(s0), lambda: self.preprocess1(s1))
        return cat_dense_gradients(run_plan(self, plan, states, weights, edge_weights, active))


@SPACES.register("darts")
class DartsSupernet(Supernet):
    """The DARTS search network. Defaults are the paper's search setting: 8 cells, 16 initial channels,
    4 intermediate nodes, the 8 DARTS ops, stem of 3 x C channels (App. A.1.1). ``fused=True`` runs the
    cells by the fast path of fused.py: the same computation (up to float rounding) and parameters, fewer
    and larger kernels."""

    depth_option = "layers"  # the option that sets the network's depth (the CLI's --layers)

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        C: int = 16,
        layers: int = 8,
        nodes: int = 4,
        ops: tuple[str, ...] = DARTS_OPS,
        stem_multiplier: int = 3,
        edge_normalization: bool = False,
        op_mask: dict[str, list[list[bool]]] | None = None,
        relaxation=None,
        edge=None,
        fused: bool = False,
    ):
        super().__init__()
        self.ops = check_ops(ops)
        if layers < 1 or nodes < 1 or C < 1:
            raise ValueError(f"layers, nodes and C must be positive, got layers={layers}, nodes={nodes}, C={C}")
        if layers < 3:  # cells layers // 3 and 2 layers // 3 reduce: with fewer than 3 no cell is a normal one
            raise ValueError(f"layers must be at least 3 to search a normal cell (the cells at 1/3 and 2/3 of the "
                             f"depth are reduction cells), got layers={layers}")
        self.nodes = nodes
        self.relaxation = relaxation or Softmax()
        self.fused = fused  # the fast path of the cell (fused.py): same parameters, same computation
        edge = edge or WeightedSum()
        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr))
        C_pp, C_p, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                C_curr *= 2
            self.cells.append(SearchCell(nodes, C_pp, C_p, C_curr, reduction, reduction_prev, self.ops, edge))
            reduction_prev = reduction
            C_pp, C_p = C_p, nodes * C_curr
        self.classifier = nn.Linear(C_p, num_classes)
        num_edges = sum(2 + i for i in range(nodes))
        self.alphas = nn.ParameterDict({t: nn.Parameter(1e-3 * torch.randn(num_edges, len(ops))) for t in CELL_TYPES})
        # PC-DARTS edge normalisation: one beta per edge, softmax-normalised over the edges into a node
        self.betas = nn.ParameterDict(
            {t: nn.Parameter(1e-3 * torch.randn(num_edges)) for t in CELL_TYPES} if edge_normalization else {})
        for t in CELL_TYPES:
            mask = torch.ones(num_edges, len(ops), dtype=torch.bool) if op_mask is None else torch.tensor(op_mask[t])
            if mask.shape != (num_edges, len(ops)):
                raise ValueError(f"op_mask[{t!r}] must be {num_edges} edges x {len(ops)} ops, got {tuple(mask.shape)}")
            self.register_buffer(f"op_mask_{t}", mask)
        self.weight_delta: dict[str, torch.Tensor] | None = None  # set by a perturbation for the weight step
        self.op_scale: dict[str, torch.Tensor] | None = None  # factors on the op weights, not renormalised
        self._live: dict[str, tuple] = {}  # per cell type: (mask identity, its live ops), see live_ops

    @property
    def op_mask(self) -> dict[str, torch.Tensor]:
        """Per cell type, which ops of each edge are in the space (edges x ops, bool); edit it in place."""
        return {t: getattr(self, f"op_mask_{t}") for t in CELL_TYPES}

    def live_ops(self, cell_type: str) -> list[list[int]] | None:
        """The unmasked ops of each edge (None: all of every edge), from a host copy of the mask that is
        refreshed only when the mask changes, so that a forward pass on a GPU does not wait on it."""
        mask = self.op_mask[cell_type]
        key = (mask.data_ptr(), mask._version)
        if self._live.get(cell_type, (None,))[0] != key:
            host = mask.cpu()
            self._live[cell_type] = key, None if host.all() else [r.nonzero().flatten().tolist() for r in host]
        return self._live[cell_type][1]

    def op_weights(self, relax) -> dict[str, torch.Tensor]:
        """``relax`` (the relaxation's ``weights`` or ``strengths``) of each cell type's alphas, with the
        masked ops at -inf (weight 0), the edges without a live op at weight 0, and SDARTS's perturbation
        ``weight_delta`` (while the weight step sets one) on the live ops; then ``op_scale`` (edges x ops
        factors, while set) multiplies them as they are: DARTS-PT removes an op by a factor 0 (projection.py)."""
        out = {}
        for t, alpha in self.alphas.items():
            mask = self.op_mask[t]
            if self.live_ops(t) is None:
                out[t] = relax(alpha)
            else:
                live = mask.any(-1, keepdim=True)
                out[t] = relax(alpha.masked_fill(~mask, float("-inf")).masked_fill(~live, 0.0)) * live
            if self.weight_delta is not None:
                out[t] = perturbed(out[t], self.weight_delta[t] * mask)
            if self.op_scale is not None:
                out[t] = out[t] * self.op_scale[t]
        return out

    def forward(self, x):
        weights = self.op_weights(self.relaxation.weights if self.training else self.relaxation.strengths)
        active = {t: self.live_ops(t) for t in CELL_TYPES}
        if self.training and is_hard(self.relaxation):  # one-hot in value: each edge runs its chosen op only
            active = {t: sampled_ops(weights[t], live, on_device=self.fused) for t, live in active.items()}
        edge_weights = {t: self.edge_weights(t) for t in CELL_TYPES} if self.betas else {t: None for t in weights}
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            t = "reduce" if cell.reduction else "normal"
            run = cell.forward_fused if self.fused else cell
            s0, s1 = s1, run(s0, s1, weights[t], active[t], edge_weights[t])
        return self.classifier(global_average(s1))

    def edge_weights(self, cell_type: str) -> torch.Tensor:
        """PC-DARTS Eq. 4: softmax of the betas over the incoming edges of each node."""
        return node_softmax(self.betas[cell_type], [2 + i for i in range(self.nodes)])

    def strengths(self) -> dict[str, torch.Tensor]:
        """Op strengths per cell type (edges x ops), as selection and reports read them; with edge
        normalisation, each edge's row is scaled by its edge weight (PC-DARTS Sec. 3.3)."""
        with torch.no_grad():
            s = self.op_weights(self.relaxation.strengths)
            return {t: w * self.edge_weights(t)[:, None] for t, w in s.items()} if self.betas else s

    def derive(self, selection=None) -> Genotype:
        """The discrete cell read off the alphas; the space's default selection is DARTS's top-2 edges per
        node. With a selection that keeps fewer (FairDARTS's threshold), a node without edges is dropped,
        and so are edges from it; a cell where no edge passes keeps the strongest edge into its first node,
        so that every epoch's cell can be built."""
        selection = selection or TopK(k=2)
        ops = list(self.ops)
        cells = {}
        for t, s in self.strengths().items():
            kept, start, present = [], 0, {0, 1}
            for node in range(2, 2 + self.nodes):
                chosen = selection(s[start : start + node], ops)
                for op, j in chosen:
                    if op not in ops or op == "none" or not isinstance(j, int) or not 0 <= j < node:
                        raise ValueError(f"selection {type(selection).__name__} chose {(op, j)} for node {node}: a "
                                         f"selection returns (op, input) pairs of the space's ops but none and of "
                                         f"the node's inputs, 0 to {node - 1}")
                edges = [(op, j) for op, j in chosen if j in present]
                present |= {node} if edges else set()
                kept.append(edges)
                start += node
            if not any(kept):
                kept[0] = TopK(k=1)(s[:2], ops)
            if all(len(edges) == 2 for edges in kept):
                cells[t] = [e for edges in kept for e in edges]
            else:
                cells[t] = [(op, node, j) for node, edges in enumerate(kept, start=2) for op, j in edges]
        concat = list(range(2, 2 + self.nodes))
        return Genotype(normal=cells["normal"], normal_concat=concat, reduce=cells["reduce"], reduce_concat=concat)

    @staticmethod
    def genotype_metrics(genotype: Genotype) -> dict[str, int]:
        """What a search reports of each derived genotype: skip connections and parameter-free ops in
        the normal cell, the usual signs of the DARTS collapse (Zela et al., ICLR 2020; Chen & Hsieh 2020)."""
        ops = [op for op, *_ in genotype.edges("normal")]
        return {"skip_connect_normal": ops.count("skip_connect"),
                "parameter_free_normal": sum(op in PARAMETER_FREE_OPS for op in ops)}
