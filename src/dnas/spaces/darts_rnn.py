"""The DARTS recurrent cell space (Liu, Simonyan, Yang, ICLR 2019, Sec. 3.1.2 and App. A.1.2).

The supernet is the language model of ``dnas.rnn.model`` with a ``SearchCell``: node 0 from x_t and h_{t-1}
(linear map, tanh, highway gate), then ``nodes`` (8) nodes, node i mixing every earlier node through every
op of ``ops`` (none, tanh, relu, sigmoid, identity), each with its highway gate, batch-normalised; the
output is the average of nodes 1..8. One alpha (36 edges x 5 ops), ``alphas["recurrent"]``, turned into op
weights by the recipe's relaxation, so softmax, Gumbel, sigmoid and Dirichlet recipes all search here.

A genotype is read off with k = 1 (Sec. 2.4): each node keeps its strongest incoming edge, an edge's strength
being its largest non-zero op weight, with that op.

Defaults are the paper's search sizes (App. A.1.2): embedding and hidden size 300, variational dropout 0.2
on the embeddings, 0.75 on the cell input, 0.25 on the hidden nodes and 0.75 on the output; no embedding
dropout (the DARTS search code).
"""
from __future__ import annotations


import torch
from torch import nn

from ..edges import WeightedSum
from ..rnn.model import RNN_OPS, LanguageModel, SearchCell, search_edges
from ..perturb import perturbed
from ..relax import Softmax
from ..rnn.genotype import RecurrentGenotype
from ..selection import TopK
from . import SPACES
from .base import Supernet


@SPACES.register("darts-rnn")
class DartsRnnSupernet(Supernet):
    """The DARTS recurrent search network: ``forward(words (T, B), hidden (B, H))`` -> (logits, hidden, raw
    outputs), the op weights drawn from the relaxation on each call."""

    def __init__(self, vocab_size: int = 10000, emb_size: int = 300, hidden_size: int = 300, nodes: int = 8,
                 ops: tuple[str, ...] = RNN_OPS, dropout: float = 0.75, dropouth: float = 0.25,
                 dropoutx: float = 0.75, dropouti: float = 0.2, dropoute: float = 0.0, relaxation=None, edge=None):
        super().__init__()
        if edge is not None and type(edge) is not WeightedSum:
            raise ValueError(f"the darts-rnn space mixes ops by the weighted sum (edge 'sum'); the edge computation "
                             f"{type(edge).__name__} is defined for convolutional cells only")
        if nodes < 1 or emb_size < 1 or vocab_size < 1:
            raise ValueError(f"nodes, emb_size and vocab_size must be positive, got {nodes}, {emb_size}, {vocab_size}")
        self.ops = tuple(ops)
        self.nodes = nodes
        self.relaxation = relaxation or Softmax()
        cell = SearchCell(emb_size, hidden_size, nodes, self.ops, dropouth, dropoutx)
        self.lm = LanguageModel(cell, vocab_size, emb_size, dropout, dropouti, dropoute)
        self.alphas = nn.ParameterDict(
            {"recurrent": nn.Parameter(1e-3 * torch.randn(search_edges(nodes), len(self.ops)))})
        self.weight_delta: dict[str, torch.Tensor] | None = None  # set by a perturbation for the weight step

    @staticmethod
    def search_classes():
        """The search of this space is the language-model search of ``dnas.rnn.search``."""
        from ..rnn.search import RNNSearch, RNNSearchConfig

        return RNNSearchConfig, RNNSearch

    def forward(self, words, hidden):
        relax = self.relaxation.weights if self.training else self.relaxation.strengths
        weights = relax(self.alphas["recurrent"])
        if self.weight_delta is not None:  # SDARTS
            weights = perturbed(weights, self.weight_delta["recurrent"])
        return self.lm(words, hidden, weights)

    def init_hidden(self, batch_size: int) -> torch.Tensor:
        return self.lm.init_hidden(batch_size)

    def strengths(self) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return {"recurrent": self.relaxation.strengths(self.alphas["recurrent"])}

    def derive(self, selection=None) -> RecurrentGenotype:
        """The discrete cell; the space's selection is top-k with k = 1, ``none`` never chosen."""
        selection = selection or TopK(k=1)
        s, edges, start = self.strengths()["recurrent"], [], 0
        for i in range(1, self.nodes + 1):
            kept = selection(s[start : start + i], list(self.ops))
            if len(kept) != 1:
                raise ValueError(f"a recurrent node keeps exactly one incoming edge; the selection kept {len(kept)} "
                                 f"for node {i} (use top_k with k = 1)")
            edges += kept
            start += i
        return RecurrentGenotype(tuple(edges), tuple(range(1, self.nodes + 1)))

    @staticmethod
    def genotype_metrics(genotype: RecurrentGenotype) -> dict[str, int]:
        """Identity nodes (the recurrent cell's parameter-free shortcut) and the depth of the cell (nodes on
        the longest path from node 0)."""
        depth = [0]
        for _, j in genotype.recurrent:
            depth.append(depth[j] + 1)
        return {"identity_recurrent": sum(op == "identity" for op, _ in genotype.recurrent),
                "depth_recurrent": max(depth)}
