"""The evaluation networks of the DARTS cell space: a genotype's cells stacked into the network that is
trained from scratch (Liu, Simonyan, Yang, "DARTS", ICLR 2019, Sec. 3 and App. A.2, which follows
NASNet, Zoph et al., CVPR 2018).

A cell has two inputs (the outputs of the two previous cells, brought to C channels by a 1x1 ReLU-Conv-BN,
or a FactorizedReduce when the previous cell halved the resolution) and one node per pair of genotype
edges: each edge applies its op (``OPS``, ``affine=True``) to its input, the node is the sum of the pair.
The cell outputs the concatenation of the ``*_concat`` nodes, so NASNet and AmoebaNet cells, whose concat
is not all nodes, build as published. The cells at 1/3 and 2/3 of the depth reduce: their edges from the
cell inputs have stride 2, and they double the channels.

    NetworkCIFAR      App. A.2.1: stem 3x3 conv to 3C, 20 cells, C = 36, auxiliary head at 2/3 depth
    NetworkImageNet   Sec. 3.4, mobile setting: two stride-2 stems (224 -> 28), 14 cells, C = 48

Both return logits from ``forward``; the training loop calls ``forward_with_aux`` for the auxiliary head's
logits too. ``drop_path_prob`` (set per epoch by the trainer) drops the output of every non-identity op
per sample while training, as the DARTS code does.
"""
from __future__ import annotations

import copy
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ..genotype import Genotype
from ..ops import OPS, AvgPool2d, FactorizedReduce, ReLUConvBN, cat_dense_gradients
from ..registry import Registry

#: The evaluation networks by name; each class has ``image_size``, the input side its paper trains on.
NETWORKS = Registry("network")


def drop_path(x: torch.Tensor, p: float) -> torch.Tensor:
    """Zero each sample's ``x`` with probability ``p`` and scale the kept ones by 1 / (1 - p)
    (drop-path, Larsson et al. 2017, FractalNet; NASNet's ScheduledDropPath and DARTS App. A.2 use it on
    cell edges)."""
    keep = torch.empty(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(1 - p)
    return x * keep / (1 - p)


class EvalCell(nn.Module):
    """One cell of a genotype: ``edges`` as ``(op, input, node)`` (``Genotype.edges``), each node the sum of
    its edges, output the concatenation of ``concat``."""

    def __init__(self, edges: tuple[tuple[str, int, int], ...], concat: tuple[int, ...], C_pp: int, C_p: int,
                 C: int, reduction: bool, reduction_prev: bool):
        super().__init__()
        self.reduction = reduction
        self.preprocess0 = FactorizedReduce(C_pp, C) if reduction_prev else ReLUConvBN(C_pp, C, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(C_p, C, 1, 1, 0)
        self.ops = nn.ModuleList(OPS.get(op)(C, 2 if reduction and j < 2 else 1, True) for op, j, _ in edges)
        self.links = [(j, node) for _, j, node in edges]
        self.concat = list(concat)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float = 0.0) -> torch.Tensor:
        states = {0: self.preprocess0(s0), 1: self.preprocess1(s1)}
        for op, (j, node) in zip(self.ops, self.links):
            h = op(states[j])
            if self.training and drop_prob > 0 and not isinstance(op, nn.Identity):
                h = drop_path(h, drop_prob)
            states[node] = states[node] + h if node in states else h
        return cat_dense_gradients([states[i] for i in self.concat])


class AuxiliaryHead(nn.Module):
    """The auxiliary classifier on the output of the cell at 2/3 depth (Szegedy et al. 2015; DARTS App. A.2):
    ReLU, 5x5 average pooling down to 2x2, 1x1 conv to 128, BN, ReLU, 2x2 conv to 768, BN, ReLU, linear.

    The pooling stride is 3 on CIFAR's 8x8 maps and 2 on ImageNet's 7x7 ones, as in the DARTS code; pooling
    in ceil mode gives 2x2 on a 7x7 map with stride 3 too (28x28 inputs), and is the same window otherwise.
    ``final_bn=False`` is the DARTS ImageNet head, which lacks the BN after the 2x2 conv (kept so there, its
    code says, for consistency with the paper's experiments).
    """

    def __init__(self, C: int, num_classes: int, stride: int = 3, final_bn: bool = True):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(),
            AvgPool2d(5, stride=stride, count_include_pad=False, ceil_mode=True),
            nn.Conv2d(C, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(),
            nn.Conv2d(128, 768, 2, bias=False),
            *([nn.BatchNorm2d(768)] if final_bn else []),
            nn.ReLU(),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # 1x1 after the 2x2 conv on the paper's input sizes; the pooling makes larger inputs work too
        return self.classifier(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


class DartsNetwork(nn.Module):
    """Stem, ``layers`` cells of ``genotype`` (reductions at 1/3 and 2/3 of the depth), global average
    pooling and a linear classifier, with an optional auxiliary head after the cell at 2/3 depth.

    ``stem`` maps the image to the two inputs of the first cell, with ``C_stem`` = (channels of s0, of s1);
    ``reduction_prev`` says whether s0 has twice the resolution of s1.
    """

    def __init__(self, genotype: Genotype, stem: nn.Module, C_stem: tuple[int, int], C: int, layers: int,
                 num_classes: int, reduction_prev: bool, auxiliary_head=None):
        super().__init__()
        if layers < 1 or C < 1:
            raise ValueError(f"layers and C must be positive, got layers={layers}, C={C}")
        self.stem = stem
        self.drop_path_prob = 0.0
        self.aux_index = 2 * layers // 3
        C_pp, C_p = C_stem
        self.cells = nn.ModuleList()
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            C = 2 * C if reduction else C
            kind = "reduce" if reduction else "normal"
            edges, concat = genotype.edges(kind), getattr(genotype, kind + "_concat")
            self.cells.append(EvalCell(edges, concat, C_pp, C_p, C, reduction, reduction_prev))
            reduction_prev = reduction
            C_pp, C_p = C_p, len(concat) * C
            if i == self.aux_index:
                C_aux = C_p
        self.auxiliary_head = auxiliary_head(C_aux, num_classes) if auxiliary_head else None
        self.classifier = nn.Linear(C_p, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x, aux=False)[0]

    def forward_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits, and the auxiliary head's logits while training with one (else None)."""
        return self._run(x, aux=self.training and self.auxiliary_head is not None)

    def _run(self, x: torch.Tensor, aux: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        s0, s1 = self.stem(x)
        aux_logits = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if aux and i == self.aux_index:
                aux_logits = self.auxiliary_head(s1)
        return self.classifier(F.adaptive_avg_pool2d(s1, 1).flatten(1)), aux_logits


def check_fits(model: DartsNetwork, in_channels: int, size: tuple[int, int]) -> None:
    """A ValueError unless ``model`` takes images of ``in_channels`` x ``size``: a training forward with its
    auxiliary head, on the meta device (shapes only). Each reduction needs an even side (FactorizedReduce
    halves it at two offsets) and the auxiliary head a side of 5 or more where it is attached; the ImageNet
    network's stems halve the side three times first."""
    probe = copy.deepcopy(model).to("meta").train()
    try:
        with torch.no_grad():
            probe.forward_with_aux(torch.empty(2, in_channels, *size, device="meta"))
    except RuntimeError as e:
        name = next((n for n in NETWORKS.names() if NETWORKS.get(n) is type(model)), type(model).__name__)
        raise ValueError(f"the {name} network does not take {in_channels}x{size[0]}x{size[1]} images "
                         f"({str(e).splitlines()[0]}): each reduction needs an even side and the auxiliary head "
                         f"one of 5 or more; the cifar network is made for 32x32 images, the imagenet one for "
                         f"224x224") from None


class CIFARStem(nn.Sequential):
    """3x3 conv to ``C_out`` channels and BN; both inputs of the first cell are its output."""

    def __init__(self, in_channels: int, C_out: int):
        super().__init__(nn.Conv2d(in_channels, C_out, 3, padding=1, bias=False), nn.BatchNorm2d(C_out))

    def forward(self, x):
        s = super().forward(x)
        return s, s


class ImageNetStem(nn.Module):
    """The mobile-setting stems of NASNet/DARTS: stem0 (conv3x3 s2 to C/2, BN, ReLU, conv3x3 s2 to C, BN)
    gives s0 at 1/4 resolution, stem1 (ReLU, conv3x3 s2, BN) on it gives s1 at 1/8 (224 -> 56 -> 28)."""

    def __init__(self, in_channels: int, C: int):
        super().__init__()
        self.stem0 = nn.Sequential(
            nn.Conv2d(in_channels, C // 2, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C // 2),
            nn.ReLU(),
            nn.Conv2d(C // 2, C, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C),
        )
        self.stem1 = nn.Sequential(nn.ReLU(), nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(C))

    def forward(self, x):
        s0 = self.stem0(x)
        return s0, self.stem1(s0)


@NETWORKS.register("cifar")
class NetworkCIFAR(DartsNetwork):
    """The CIFAR evaluation network (DARTS App. A.2.1): 20 cells, 36 initial channels, stem of 3C channels,
    auxiliary head (weighted 0.4 by the trainer) after the cell at 2/3 depth."""

    image_size = 32

    def __init__(self, genotype: Genotype, num_classes: int = 10, in_channels: int = 3, C: int = 36,
                 layers: int = 20, auxiliary: bool = True, stem_multiplier: int = 3):
        head = partial(AuxiliaryHead, stride=3) if auxiliary else None
        super().__init__(genotype, CIFARStem(in_channels, stem_multiplier * C), (stem_multiplier * C,) * 2, C,
                         layers, num_classes, reduction_prev=False, auxiliary_head=head)


@NETWORKS.register("imagenet")
class NetworkImageNet(DartsNetwork):
    """The ImageNet network in the mobile setting (DARTS Sec. 3.4, App. A.2): 224x224 inputs, two stems,
    14 cells, 48 initial channels, auxiliary head after the cell at 2/3 depth."""

    image_size = 224

    def __init__(self, genotype: Genotype, num_classes: int = 1000, in_channels: int = 3, C: int = 48,
                 layers: int = 14, auxiliary: bool = True):
        head = partial(AuxiliaryHead, stride=2, final_bn=False) if auxiliary else None
        super().__init__(genotype, ImageNetStem(in_channels, C), (C, C), C, layers, num_classes,
                         reduction_prev=True, auxiliary_head=head)


def create_network(genotype, network: str = "cifar", **options) -> DartsNetwork:
    """A genotype's evaluation network, as timm's ``create_model`` makes a model by name. ``genotype``: a
    ``Genotype``, a published one's name (``"DARTS_V2"``, ``dnas zoo``), a genotype file, a search run's
    directory or the text form; ``network``: ``cifar`` (DARTS App. A.2.1: 20 cells, 36 channels, auxiliary
    head) or ``imagenet`` (Sec. 3.4: 14 cells, 48 channels); ``options``: its num_classes, in_channels, C,
    layers, auxiliary. Untrained: ``dnas.train`` trains one, ``dnas.load_run`` gives a trained run's."""
    from ..zoo import convolutional, load_genotype

    genotype, name = load_genotype(genotype)
    if not isinstance(genotype, Genotype):
        raise ValueError(f"{name} is not a convolutional cell, which the {network} network is built of "
                         f"(a recurrent cell trains a language model: dnas.train, docs/recurrent.md)")
    return NETWORKS.build({"name": network, **options}, genotype=convolutional(genotype, name))
