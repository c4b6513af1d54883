"""The recurrent language model of DARTS (Liu, Simonyan, Yang, ICLR 2019, Sec. 3.1.2, 3.3, App. A.1.2, A.2.2).

A word embedding feeds one recurrent cell unrolled over time; its outputs go through a decoder whose weight
is the embedding's (tied). Regularisation is AWD-LSTM's (Merity et al., ICLR 2018): variational (locked)
dropout with one mask per sequence on the embedded words (``dropouti``), on the cell's input x_t
(``dropoutx``), on the hidden state entering each node (``dropouth``) and on the outputs (``dropout``), and
embedding dropout of whole words (``dropoute``). All weights start uniform in [-0.04, 0.04] (the DARTS code).

The cell (Sec. 3.1.2; ENAS's cell with highway bypasses):

    node 0:  [c0, h0] = [x_t, h_{t-1}] W_0,   s_0 = h_{t-1} + sigmoid(c0) * (tanh(h0) - h_{t-1})
    node i:  [c, h]  = s_j W_i,               s_i = s_j + sigmoid(c) * (f_i(h) - s_j)
    h_t = mean of the nodes in ``concat`` (nodes 1..8)

``GenotypeCell`` is the cell of a genotype (j and f_i fixed); ``SearchCell`` mixes every earlier node and
every activation with the op weights of the relaxation, one ``MixedEdge`` per node, and batch-normalises
(without affine parameters) every node, as DARTS does during search only.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..edges import MixedEdge
from .genotype import RecurrentGenotype

INIT_RANGE = 0.04

ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid, "identity": lambda h: h}
#: The candidate ops of a search cell's node: the original's PRIMITIVES, ``none`` (zero) first.
RNN_OPS = ("none", "tanh", "relu", "sigmoid", "identity")


def highway(s: torch.Tensor, c: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """s + c * (h - s): the highway bypass of a node (c the gate, already squashed)."""
    return s + c * (h - s)


def variational_mask(shape: tuple[int, ...], p: float, like: torch.Tensor) -> torch.Tensor:
    """A dropout mask drawn once (Bernoulli(1 - p) / (1 - p)), to be reused along a whole sequence."""
    return like.new_empty(shape).bernoulli_(1 - p) / (1 - p)


def locked_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Variational dropout of a (T, B, H) sequence: one mask per sequence and unit, shared over time."""
    if not training or p == 0:
        return x
    return x * variational_mask((1, *x.shape[1:]), p, x)


def embedding_dropout(embedding: nn.Embedding, words: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Embedding dropout (Gal & Ghahramani 2016; AWD-LSTM): drop whole words of the vocabulary, scaling the rest."""
    weight = embedding.weight
    if training and p > 0:
        weight = weight * variational_mask((weight.shape[0], 1), p, weight)
    return F.embedding(words, weight)


class RecurrentCell(nn.Module):
    """What both cells share: the weights W_0 (x and h to node 0) and W_1..W_n (one a node, each producing a
    gate and a candidate), node 0, and the unrolling over time with variational masks on x_t and on the
    states entering the nodes. Subclasses define ``step``."""

    def __init__(self, ninp: int, nhid: int, nodes: int, dropouth: float, dropoutx: float):
        super().__init__()
        self.nhid, self.dropouth, self.dropoutx = nhid, dropouth, dropoutx
        self.W0 = nn.Parameter(torch.empty(ninp + nhid, 2 * nhid).uniform_(-INIT_RANGE, INIT_RANGE))
        self.Ws = nn.ParameterList(
            nn.Parameter(torch.empty(nhid, 2 * nhid).uniform_(-INIT_RANGE, INIT_RANGE)) for _ in range(nodes))

    def forward(self, inputs: torch.Tensor, hidden: torch.Tensor, *args) -> torch.Tensor:
        """Outputs (T, B, nhid) for inputs (T, B, ninp) from the state ``hidden`` (B, nhid)."""
        x_mask = h_mask = None
        if self.training:
            x_mask = variational_mask(inputs.shape[1:], self.dropoutx, inputs)
            h_mask = variational_mask(hidden.shape, self.dropouth, hidden)
        outputs = []
        for x in inputs:
            hidden = self.step(x, hidden, x_mask, h_mask, *args)
            outputs.append(hidden)
        return torch.stack(outputs)

    def node0(self, x, h_prev, x_mask, h_mask) -> torch.Tensor:
        if x_mask is not None:
            x, h_prev_in = x * x_mask, h_prev * h_mask
        else:
            h_prev_in = h_prev
        c, h = (torch.cat([x, h_prev_in], dim=-1) @ self.W0).chunk(2, dim=-1)
        return highway(h_prev, c.sigmoid(), torch.tanh(h))

    def gate_and_candidate(self, i: int, s: torch.Tensor, h_mask) -> tuple[torch.Tensor, torch.Tensor]:
        """sigmoid(c) and h of node i from the state(s) ``s`` entering it (masked in training)."""
        c, h = ((s if h_mask is None else s * h_mask) @ self.Ws[i]).chunk(2, dim=-1)
        return c.sigmoid(), h

    def step(self, x, h_prev, x_mask, h_mask, *args) -> torch.Tensor:
        raise NotImplementedError


class GenotypeCell(RecurrentCell):
    """The recurrent cell of a genotype (no batch normalisation: DARTS disables it for evaluation)."""

    def __init__(self, genotype: RecurrentGenotype, ninp: int, nhid: int, dropouth: float = 0.25,
                 dropoutx: float = 0.75):
        super().__init__(ninp, nhid, genotype.nodes, dropouth, dropoutx)
        self.genotype = genotype
        self.activations = [ACTIVATIONS[name] for name, _ in genotype.recurrent]

    def step(self, x, h_prev, x_mask, h_mask):
        states = [self.node0(x, h_prev, x_mask, h_mask)]
        for i, (_, j) in enumerate(self.genotype.recurrent):
            c, h = self.gate_and_candidate(i, states[j], h_mask)
            states.append(highway(states[j], c, self.activations[i](h)))
        return torch.stack([states[i] for i in self.genotype.concat]).mean(0)


class HighwayOp(nn.Module):
    """One candidate of a node's mixed edge: the highway node through activation ``name`` from the states
    (s, gate, candidate), each (inputs, B, nhid); ``none`` is zero."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name
        self.fn = None if name == "none" else ACTIVATIONS[name]

    def forward(self, x):
        s, c, h = x
        return s.new_zeros(()) if self.fn is None else highway(s, c, self.fn(h))

    def extra_repr(self) -> str:
        return self.name


class SearchCell(RecurrentCell):
    """The DARTS recurrent search cell: node i mixes, over every earlier node j and every op o, the highway
    node from j through o, weighted by the op weight w[(j, i), o] (Eq. 2 applied per node); every node is
    batch-normalised (one BatchNorm without affine parameters, as in the original)."""

    def __init__(self, ninp: int, nhid: int, nodes: int = 8, ops: tuple[str, ...] = RNN_OPS,
                 dropouth: float = 0.25, dropoutx: float = 0.75):
        super().__init__(ninp, nhid, nodes, dropouth, dropoutx)
        unknown = [o for o in ops if o != "none" and o not in ACTIVATIONS]
        if unknown or not ops:
            raise ValueError(f"unknown recurrent ops {unknown}; valid: none, {', '.join(ACTIVATIONS)}")
        self.nodes = nodes
        self.mixed = nn.ModuleList(MixedEdge({o: HighwayOp(o) for o in ops}) for _ in range(nodes))
        self.bn = nn.BatchNorm1d(nhid, affine=False)

    def step(self, x, h_prev, x_mask, h_mask, weights):
        """``weights``: op weights (edges x ops), the edges of node 1 first, then node 2's, ...."""
        states = self.bn(self.node0(x, h_prev, x_mask, h_mask)).unsqueeze(0)
        offset = 0
        for i in range(self.nodes):
            c, h = self.gate_and_candidate(i, states, h_mask)
            w = weights[offset : offset + i + 1].t()[:, :, None, None]  # ops x inputs x 1 x 1
            s = self.mixed[i]((states, c, h), w).sum(0)
            states = torch.cat([states, self.bn(s).unsqueeze(0)])
            offset += i + 1
        return states[1:].mean(0)


def search_edges(nodes: int) -> int:
    """Edges of the search cell: node i has i incoming (36 for 8 nodes)."""
    return nodes * (nodes + 1) // 2


class LanguageModel(nn.Module):
    """Embedding, one recurrent cell, tied decoder; variational and embedding dropout (module docstring).

    ``forward(words (T, B), hidden (B, nhid), *cell_args)`` returns logits (T, B, vocab), the last hidden
    state and the cell's raw outputs (for temporal activation regularisation)."""

    def __init__(self, cell: RecurrentCell, vocab_size: int, ninp: int, dropout: float = 0.75,
                 dropouti: float = 0.2, dropoute: float = 0.0):
        super().__init__()
        if cell.nhid != ninp:
            raise ValueError(f"the decoder is tied to the embedding, so the hidden size must equal the embedding "
                             f"size; got {cell.nhid} and {ninp}")
        for name, p in {"dropout": dropout, "dropouti": dropouti, "dropoute": dropoute,
                        "dropouth": cell.dropouth, "dropoutx": cell.dropoutx}.items():
            if not 0 <= p < 1:
                raise ValueError(f"{name} is a probability in [0, 1), got {p}")
        self.dropout, self.dropouti, self.dropoute = dropout, dropouti, dropoute
        self.encoder = nn.Embedding(vocab_size, ninp)
        nn.init.uniform_(self.encoder.weight, -INIT_RANGE, INIT_RANGE)
        self.cell = cell
        self.decoder = nn.Linear(ninp, vocab_size)
        self.decoder.weight = self.encoder.weight
        nn.init.zeros_(self.decoder.bias)

    @property
    def vocab_size(self) -> int:
        return self.encoder.num_embeddings

    def init_hidden(self, batch_size: int) -> torch.Tensor:
        return self.encoder.weight.new_zeros(batch_size, self.cell.nhid)

    def forward(self, words, hidden, *cell_args):
        emb = locked_dropout(embedding_dropout(self.encoder, words, self.dropoute, self.training),
                             self.dropouti, self.training)
        raw = self.cell(emb, hidden, *cell_args)
        logits = self.decoder(locked_dropout(raw, self.dropout, self.training))
        return logits, raw[-1], raw


def perplexity(loss: float) -> float:
    """exp(loss), infinite where that overflows a float (a diverged run)."""
    return math.exp(loss) if loss < 709 else math.inf


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy per token (its exp is the perplexity)."""
    return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))


def activation_regularization(raw: torch.Tensor, tar: float, ar: float = 0.0) -> torch.Tensor:
    """AWD-LSTM's temporal activation regularisation tar * mean (h_t - h_{t-1})^2 (DARTS: beta = 1e-3) plus
    activation regularisation ar * mean h_t^2 (DARTS: alpha = 0)."""
    loss = raw.new_zeros(())
    if tar:
        loss = loss + tar * (raw[1:] - raw[:-1]).pow(2).mean()
    if ar:
        loss = loss + ar * raw.pow(2).mean()
    return loss


def bptt_length(bptt: int, generator: torch.Generator, jitter: bool, max_delta: int = 20) -> int:
    """The length of the next training window (AWD-LSTM): ``bptt``, or ``bptt / 2`` with probability 0.05;
    with ``jitter`` then drawn from N(that, 5), at least 5 and at most bptt + max_delta (the DARTS search
    uses no jitter, its evaluation does)."""
    base = bptt if torch.rand((), generator=generator).item() < 0.95 else bptt / 2
    if not jitter:
        return int(base)
    drawn = int(base + 5 * torch.randn((), generator=generator).item())
    return min(max(5, drawn), bptt + max_delta)


@torch.no_grad()
def evaluate_lm(model: nn.Module, data: torch.Tensor, bptt: int, progress=None) -> float:
    """Mean cross-entropy per token of ``model`` (a LanguageModel or the recurrent supernet) over batchified
    ``data`` (T, B), in windows of ``bptt`` with the hidden state carried across them (exp: the perplexity)."""
    model.eval()
    hidden = model.init_hidden(data.shape[1])
    total, count = 0.0, 0
    for i in range(0, len(data) - 1, bptt):
        n = min(bptt, len(data) - 1 - i)
        logits, hidden, _ = model(data[i : i + n], hidden)
        total += float(lm_loss(logits, data[i + 1 : i + 1 + n])) * n * data.shape[1]
        count += n * data.shape[1]
        if progress is not None:
            progress.update(n)
    return total / count
