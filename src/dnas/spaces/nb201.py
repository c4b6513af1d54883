"""The NAS-Bench-201 cell space (Dong & Yang, ICLR 2020, arXiv:2001.00326, Sec. 2.1 and Fig. 1).

The network is a stem (3x3 conv to C channels, BN), three stages of N cells at C, 2C and 4C channels joined
by two residual reduction blocks, then BN-ReLU, global average pooling and a linear classifier. A cell maps
its input (node 0) through ``nodes - 1`` further nodes, node i the sum of a mixed edge from every node
j < i; the cell's output is its last node. All cells share one alpha (edges x ops), ``alphas["cell"]``.

As in the benchmark's search setting, BatchNorm inside the ops has ``affine=False`` and tracks running
statistics, and pooling is bare (no BatchNorm after it, unlike the DARTS supernet). Each op keeps the
benchmark's semantics: ``none`` is zero, ``skip_connect`` the identity, ``avg_pool_3x3`` a 3x3 stride-1
average excluding padding, ``nor_conv_kxk`` ReLU-Conv-BN. A genotype is read off the benchmark's way,
the strongest op of every edge, ``none`` included, and written as the benchmark's arch string.
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from ..bench import nb201
from ..perturb import perturbed
from ..bench.nb201 import NB201_OPS, NB201Genotype, cell_edges
from ..edges import WeightedSum
from ..ops import OPS, AvgPool2d, ReLUConvBN, check_ops, global_average
from ..relax import Softmax, is_hard
from ..selection import TopK
from ..settings import warn
from . import SPACES
from .base import Supernet, node_softmax
from .fused import Topology, cell_plan, on_host, run_plan, sampled_ops


def candidate_ops(ops: tuple[str, ...], C: int, stride: int) -> dict[str, nn.Module]:
    """The candidates of one supernet edge, BatchNorm without affine parameters (the search setting)."""
    return {name: OPS.get(name)(C, stride, False) for name in ops}


class ResidualBlock(nn.Module):
    """The reduction between stages, a ResNet basic block: ReLU-Conv3x3(stride 2)-BN, ReLU-Conv3x3-BN, plus a
    shortcut of 2x2 average pooling and a 1x1 conv to the new width (NAS-Bench-201, Sec. 2.1)."""

    def __init__(self, C_in: int, C_out: int):
        super().__init__()
        self.conv_a = ReLUConvBN(C_in, C_out, 3, 2, 1)
        self.conv_b = ReLUConvBN(C_out, C_out, 3, 1, 1)
        self.shortcut = nn.Sequential(AvgPool2d(2, 2), nn.Conv2d(C_in, C_out, 1, bias=False))

    def forward(self, x):
        return self.shortcut(x) + self.conv_b(self.conv_a(x))


class SearchCell(nn.Module):
    """One supernet cell: node i = sum over j < i of edge (j, i) applied to node j; the output is the last node.

    With edge normalisation (PC-DARTS, Eq. 4) each edge's output is scaled by its edge weight."""

    def __init__(self, C: int, nodes: int, ops: tuple[str, ...], edge):
        super().__init__()
        self.nodes = nodes
        self.edges = nn.ModuleList(edge(C, 1, partial(candidate_ops, ops)) for _ in cell_edges(nodes))

    def forward(self, x, weights, active=None, edge_weights=None):
        states, e = [x], 0
        for _ in range(1, self.nodes):
            node = 0
            for h in states:
                out = self.edges[e](h, weights[e], None if active is None else active[e])
                node = node + (out if edge_weights is None else edge_weights[e] * out)
                e += 1
            states.append(node)
        return states[-1]

    def forward_fused(self, x, weights, active=None, edge_weights=None):
        """``forward`` by the fast path (fused.py): the same result from fewer, larger kernels."""
        plan = cell_plan(self, Topology(1, self.nodes - 1), active, x.device)
        if plan is None:
            return self(x, weights, on_host(active), edge_weights)
        return run_plan(self, plan, [x], weights, edge_weights, active)[-1]


@SPACES.register("nb201")
class NB201Supernet(Supernet):
    """The NAS-Bench-201 search network. Defaults are the benchmark's: 16 channels, 5 cells per stage,
    4 nodes, its 5 ops; ``ops`` may name any registered ops (the ground truth then covers only cells of
    NB201_OPS). ``fused=True`` runs the cells by the fast path of fused.py: the same computation (up to
    float rounding) and parameters, fewer and larger kernels."""

    depth_option = "N"  # the option that sets the network's depth (the CLI's --layers): cells per stage

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        C: int = 16,
        N: int = 5,
        nodes: int = nb201.NODES,
        ops: tuple[str, ...] = NB201_OPS,
        edge_normalization: bool = False,
        relaxation=None,
        edge=None,
        fused: bool = False,
    ):
        super().__init__()
        self.ops = check_ops(ops)
        if C < 1 or N < 1 or nodes < 2:
            raise ValueError(f"C and N must be positive and nodes at least 2, got C={C}, N={N}, nodes={nodes}")
        outside = [f"{nodes} nodes"] if nodes != nb201.NODES else []
        outside += [f"ops {', '.join(o for o in ops if o not in NB201_OPS)}"] if set(ops) - set(NB201_OPS) else []
        if outside:
            warn(f"cells of {' and '.join(outside)} are outside NAS-Bench-201 ({nb201.NODES} nodes, ops "
                 f"{', '.join(NB201_OPS)}): their true accuracies cannot be looked up")
        self.nodes = nodes
        self.fused = fused  # the fast path of the cell (fused.py): same parameters, same computation
        self.relaxation = relaxation or Softmax()
        edge = edge or WeightedSum()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))
        self.cells = nn.ModuleList()
        for stage, width in enumerate((C, 2 * C, 4 * C)):
            if stage:
                self.cells.append(ResidualBlock(width // 2, width))
            self.cells.extend(SearchCell(width, nodes, self.ops, edge) for _ in range(N))
        self.lastact = nn.Sequential(nn.BatchNorm2d(4 * C), nn.ReLU())
        self.classifier = nn.Linear(4 * C, num_classes)
        num_edges = len(cell_edges(nodes))
        self.alphas = nn.ParameterDict({"cell": nn.Parameter(1e-3 * torch.randn(num_edges, len(ops)))})
        # PC-DARTS edge normalisation: one beta per edge, softmax-normalised over the edges into a node
        self.betas = nn.ParameterDict({"cell": nn.Parameter(1e-3 * torch.randn(num_edges))}
                                      if edge_normalization else {})
        self.weight_delta: dict[str, torch.Tensor] | None = None  # set by a perturbation for the weight step

    def forward(self, x):
        relax = self.relaxation.weights if self.training else self.relaxation.strengths
        weights = relax(self.alphas["cell"])
        if self.weight_delta is not None:  # SDARTS
            weights = perturbed(weights, self.weight_delta["cell"])
        # a hard relaxation is one-hot in value: each edge runs its chosen op only
        active = sampled_ops(weights, on_device=self.fused) if self.training and is_hard(self.relaxation) else None
        edge_weights = self.edge_weights() if self.betas else None
        x = self.stem(x)
        for layer in self.cells:
            if isinstance(layer, SearchCell):
                x = (layer.forward_fused if self.fused else layer)(x, weights, active, edge_weights)
            else:
                x = layer(x)
        return self.classifier(global_average(self.lastact(x)))

    def edge_weights(self) -> torch.Tensor:
        """PC-DARTS Eq. 4: softmax of the betas over the incoming edges of each node."""
        return node_softmax(self.betas["cell"], list(range(1, self.nodes)))

    def strengths(self) -> dict[str, torch.Tensor]:
        """Op strengths (edges x ops), as selection and reports read them; with edge normalisation each
        edge's row is scaled by its edge weight (PC-DARTS Sec. 3.3)."""
        with torch.no_grad():
            s = self.relaxation.strengths(self.alphas["cell"])
            return {"cell": s * self.edge_weights()[:, None] if self.betas else s}

    def derive(self, selection=None) -> NB201Genotype:
        """The discrete cell. The space's default selection is the benchmark's: every edge keeps its strongest
        op, ``none`` included (top-k keeping every input, excluding no op). A selection that keeps fewer
        edges of a node (DARTS's top-2) leaves the others ``none``."""
        selection = selection or TopK(k=self.nodes - 1, exclude=())
        s = self.strengths()["cell"]
        ops, start = [], 0
        for i in range(1, self.nodes):
            kept = {j: op for op, j in selection(s[start : start + i], list(self.ops))}
            ops += [kept.get(j, "none") for j in range(i)]
            start += i
        return NB201Genotype(tuple(ops))

    @staticmethod
    def genotype_metrics(genotype: NB201Genotype) -> dict[str, float]:
        """The derived cell's true test accuracies from the benchmark (``nb201_cifar10``, ...; none for a cell
        outside it), and its skip connections, the sign of the DARTS collapse (all-skip: 54.30 on CIFAR-10).
        The cell is the network's only searched one, a normal cell: the key is the DARTS space's."""
        try:
            truth = {f"nb201_{d}": a for d, a in nb201.lookup(genotype).items() if d != "index"}
        except nb201.NotInBenchmarkError:
            truth = {}
        return {**truth, "skip_connect_normal": genotype.ops.count("skip_connect")}
