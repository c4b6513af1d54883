"""Published cells of the DARTS space, as data, each with its paper and where it was transcribed from; and
the DARTS recurrent cells (``DARTS_RNN_V1``, ``DARTS_RNN_V2``, ``dnas.rnn.genotype``).

Every genotype is copied edge for edge from the authors' own repository (the file named in ``source``);
where several copies circulate, the authors' is the one kept. Edges are listed per node, in pairs, in
the DARTS text form (``dnas.genotype``). Names are matched ignoring case, with ``-`` and ``_`` alike
(``pc-darts`` finds ``PC_DARTS``); ``ALIASES`` name the variant a method's code uses by default.

``load_genotype`` resolves what ``--genotype`` accepts: a zoo name, a genotype file (.json or the text
form), a run directory holding ``genotype.json``, or the text form itself.

Not here: FairDARTS (Chu et al., ECCV 2020, arXiv 1911.12126) keeps a variable number of edges per node,
which the two-edges-per-node genotype cannot hold; beta-DARTS (Ye et al., CVPR 2022, arXiv 2203.01665)
has no cell labelled as the paper's in its repository; SDARTS-RS (Chen & Hsieh, ICML 2020) is not
labelled either, and the repository's random-smoothing DARTS-space cell has 3.61M parameters where the
paper reports 3.4M.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .bench.nb201 import EXAMPLE, NB201Genotype
from .genotype import Genotype, GenotypeError
from .registry import UnknownNameError
from .rnn.genotype import RecurrentGenotype


@dataclass(frozen=True)
class ZooEntry:
    name: str
    genotype: Genotype | RecurrentGenotype
    paper: str
    arxiv: str
    source: str  # repository and file the genotype was transcribed from


_ENTRIES = [
    ZooEntry(
        "NASNet",
        Genotype(
            normal=[('sep_conv_5x5', 1), ('sep_conv_3x3', 0), ('sep_conv_5x5', 0), ('sep_conv_3x3', 0),
                    ('avg_pool_3x3', 1), ('skip_connect', 0), ('avg_pool_3x3', 0), ('avg_pool_3x3', 0),
                    ('sep_conv_3x3', 1), ('skip_connect', 1)],
            normal_concat=[2, 3, 4, 5, 6],
            reduce=[('sep_conv_5x5', 1), ('sep_conv_7x7', 0), ('max_pool_3x3', 1), ('sep_conv_7x7', 0),
                    ('avg_pool_3x3', 1), ('sep_conv_5x5', 0), ('skip_connect', 3), ('avg_pool_3x3', 2),
                    ('sep_conv_3x3', 2), ('max_pool_3x3', 1)],
            reduce_concat=[4, 5, 6],
        ),
        "NASNet-A: Zoph, Vasudevan, Shlens, Le. Learning Transferable Architectures for Scalable Image "
        "Recognition. CVPR 2018", "1707.07012", "quark0/darts cnn/genotypes.py (NASNet)"),
    ZooEntry(
        "AmoebaNet",
        Genotype(
            normal=[('avg_pool_3x3', 0), ('max_pool_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_5x5', 2),
                    ('sep_conv_3x3', 0), ('avg_pool_3x3', 3), ('sep_conv_3x3', 1), ('skip_connect', 1),
                    ('skip_connect', 0), ('avg_pool_3x3', 1)],
            normal_concat=[4, 5, 6],
            reduce=[('avg_pool_3x3', 0), ('sep_conv_3x3', 1), ('max_pool_3x3', 0), ('sep_conv_7x7', 2),
                    ('sep_conv_7x7', 0), ('avg_pool_3x3', 1), ('max_pool_3x3', 0), ('max_pool_3x3', 1),
                    ('conv_7x1_1x7', 0), ('sep_conv_3x3', 5)],
            reduce_concat=[3, 4, 6],
        ),
        "AmoebaNet-A: Real, Aggarwal, Huang, Le. Regularized Evolution for Image Classifier Architecture "
        "Search. AAAI 2019", "1802.01548", "quark0/darts cnn/genotypes.py (AmoebaNet)"),
    ZooEntry(
        "DARTS_V1",
        Genotype(
            normal=[('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 0), ('sep_conv_3x3', 1),
                    ('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 2)],
            normal_concat=[2, 3, 4, 5],
            reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 0),
                    ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('avg_pool_3x3', 0)],
            reduce_concat=[2, 3, 4, 5],
        ),
        "DARTS (first order): Liu, Simonyan, Yang. DARTS: Differentiable Architecture Search. ICLR 2019",
        "1806.09055", "quark0/darts cnn/genotypes.py (DARTS_V1)"),
    ZooEntry(
        "DARTS_V2",
        Genotype(
            normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1),
                    ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)],
            normal_concat=[2, 3, 4, 5],
            reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1),
                    ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)],
            reduce_concat=[2, 3, 4, 5],
        ),
        "DARTS (second order): Liu, Simonyan, Yang. DARTS: Differentiable Architecture Search. ICLR 2019",
        "1806.09055", "quark0/darts cnn/genotypes.py (DARTS_V2)"),
    ZooEntry(
        "SNAS_mild",
        Genotype(
            normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('skip_connect', 0), ('dil_conv_3x3', 1),
                    ('skip_connect', 1), ('skip_connect', 0), ('skip_connect', 0), ('sep_conv_3x3', 1)],
            normal_concat=[2, 3, 4, 5],
            reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('max_pool_3x3', 1), ('skip_connect', 2),
                    ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), ('dil_conv_5x5', 2)],
            reduce_concat=[2, 3, 4, 5],
        ),
        "SNAS, mild constraint: Xie, Zheng, Liu, Lin. SNAS: Stochastic Neural Architecture Search. ICLR 2019",
        "1812.09926",
        "xiaomi-automl/FairDARTS fairdarts/genotypes.py (SNAS), read off the paper's figure (SNAS released no "
        "code); 2.66M parameters in the DARTS CIFAR network, where the paper reports 2.9M"),
    ZooEntry(
        "PDARTS",
        Genotype(
            normal=[('skip_connect', 0), ('dil_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 1),
                    ('sep_conv_3x3', 1), ('sep_conv_3x3', 3), ('sep_conv_3x3', 0), ('dil_conv_5x5', 4)],
            normal_concat=[2, 3, 4, 5],
            reduce=[('avg_pool_3x3', 0), ('sep_conv_5x5', 1), ('sep_conv_3x3', 0), ('dil_conv_5x5', 2),
                    ('max_pool_3x3', 0), ('dil_conv_3x3', 1), ('dil_conv_3x3', 1), ('dil_conv_5x5', 3)],
            reduce_concat=[2, 3, 4, 5],
        ),
        "P-DARTS: Chen, Xie, Wu, Tian. Progressive Differentiable Architecture Search: Bridging the Depth Gap "
        "between Search and Evaluation. ICCV 2019", "1904.12760", "chenxin061/pdarts genotypes.py (PDARTS)"),
    ZooEntry(
        "PC_DARTS_cifar",
        Genotype(
            normal=[('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 0), ('dil_conv_3x3', 1),
                    ('sep_conv_5x5', 0), ('sep_conv_3x3', 1), ('avg_pool_3x3', 0), ('dil_conv_3x3', 1)],
            normal_concat=[2, 3, 4, 5],
            reduce=[('sep_conv_5x5', 1), ('max_pool_3x3', 0), ('sep_conv_5x5', 1), ('sep_conv_5x5', 2),
                    ('sep_conv_3x3', 0), ('sep_conv_3x3', 3), ('sep_conv_3x3', 1), ('sep_conv_3x3', 2)],
            reduce_concat=[2, 3, 4, 5],
        ),
        "PC-DARTS, searched on CIFAR-10: Xu, Xie, Zhang, Chen, Qi, Tian, Xiong. PC-DARTS: Partial Channel "
        "Connections for Memory-Efficient Architecture Search. ICLR 2020", "1907.05737",
        "yuhuixu1993/PC-DARTS genotypes.py (PC_DARTS_cifar)"),
    ZooEntry(
        "PC_DARTS_image",
        Genotype(
            normal=[('skip_connect', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 0), ('skip_connect', 1),
                    ('sep_conv_3x3', 1), ('sep_conv_3x3', 3), ('sep_conv_3x3', 1), ('dil_conv_5x5', 4)],
            normal_concat=[2, 3, 4, 5],
            reduce=[('sep_conv_3x3', 0), ('skip_connect', 1), ('dil_conv_5x5', 2), ('max_pool_3x3', 1),
                    ('sep_conv_3x3', 2), ('sep_conv_3x3', 1), ('sep_conv_5x5', 0), ('sep_conv_3x3', 3)],
            reduce_concat=[2, 3, 4, 5],
        ),
        "PC-DARTS, searched on ImageNet: Xu, Xie, Zhang, Chen, Qi, Tian, Xiong. PC-DARTS: Partial Channel "
        "Connections for Memory-Efficient Architecture Search. ICLR 2020", "1907.05737",
        "yuhuixu1993/PC-DARTS genotypes.py (PC_DARTS_image)"),
    ZooEntry(
        "GDAS",
        Genotype(
            normal=[('skip_connect', 0), ('skip_connect', 1), ('skip_connect', 0), ('sep_conv_5x5', 2),
                    ('sep_conv_3x3', 3), ('skip_connect', 0), ('sep_conv_5x5', 4), ('sep_conv_3x3', 3)],
            normal_concat=[2, 3, 4, 5],
            reduce=[('sep_conv_5x5', 0), ('sep_conv_3x3', 1), ('sep_conv_5x5', 2), ('sep_conv_5x5', 1),
                    ('dil_conv_5x5', 2), ('sep_conv_3x3', 1), ('sep_conv_5x5', 0), ('sep_conv_5x5', 1)],
            reduce_concat=[2, 3, 4, 5],
        ),
        "GDAS (searched normal and reduction cells): Dong, Yang. Searching for A Robust Neural Architecture "
        "in Four GPU Hours. CVPR 2019", "1910.04465",
        "D-X-Y/AutoDL-Projects lib/nas_infer_model/DXYs/genotypes.py (GDAS_V1)"),
    ZooEntry(
        "SDARTS_ADV",
        Genotype(
            normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('skip_connect', 0),
                    ('sep_conv_5x5', 0), ('dil_conv_3x3', 3), ('dil_conv_3x3', 4), ('skip_connect', 0)],
            normal_concat=[2, 3, 4, 5],
            reduce=[('max_pool_3x3', 0), ('sep_conv_5x5', 1), ('skip_connect', 2), ('max_pool_3x3', 0),
                    ('skip_connect', 3), ('skip_connect', 2), ('skip_connect', 2), ('sep_conv_5x5', 4)],
            reduce_concat=[2, 3, 4, 5],
        ),
        "SDARTS-ADV (adversarial): Chen, Hsieh. Stabilizing Differentiable Architecture Search via "
        "Perturbation-based Regularization. ICML 2020", "2002.05283",
        "xiangning-chen/SmoothDARTS sota/cnn/genotypes.py (c10_s5_pgd; s5 is the DARTS space)"),
    ZooEntry(
        "DrNAS_cifar10",
        Genotype(
            normal=[('sep_conv_3x3', 0), ('sep_conv_5x5', 1), ('sep_conv_3x3', 1), ('sep_conv_3x3', 2),
                    ('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 2), ('dil_conv_5x5', 3)],
            normal_concat=[2, 3, 4, 5],
            reduce=[('max_pool_3x3', 0), ('sep_conv_5x5', 1), ('dil_conv_5x5', 2), ('sep_conv_5x5', 1),
                    ('sep_conv_5x5', 1), ('dil_conv_5x5', 3), ('skip_connect', 4), ('sep_conv_5x5', 1)],
            reduce_concat=[2, 3, 4, 5],
        ),
        "DrNAS, searched on CIFAR-10: Chen, Wang, Cheng, Tang, Hsieh. DrNAS: Dirichlet Neural Architecture "
        "Search. ICLR 2021", "2006.10355", "xiangning-chen/DrNAS DARTS-space/genotypes.py (DrNAS_cifar10)"),
    ZooEntry(
        "DrNAS_imagenet",
        Genotype(
            normal=[('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1),
                    ('sep_conv_3x3', 0), ('dil_conv_3x3', 3), ('skip_connect', 0), ('sep_conv_3x3', 1)],
            normal_concat=[2, 3, 4, 5],
            reduce=[('max_pool_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 2),
                    ('sep_conv_3x3', 0), ('sep_conv_3x3', 2), ('sep_conv_3x3', 3), ('sep_conv_3x3', 1)],
            reduce_concat=[2, 3, 4, 5],
        ),
        "DrNAS, searched on ImageNet: Chen, Wang, Cheng, Tang, Hsieh. DrNAS: Dirichlet Neural Architecture "
        "Search. ICLR 2021", "2006.10355", "xiangning-chen/DrNAS DARTS-space/genotypes.py (DrNAS_imagenet)"),
    # recurrent cells (dnas.rnn.genotype), searched on Penn Treebank
    ZooEntry(
        "DARTS_RNN_V1",
        RecurrentGenotype(
            recurrent=[('relu', 0), ('relu', 1), ('tanh', 2), ('relu', 3), ('relu', 4), ('identity', 1),
                       ('relu', 5), ('relu', 1)],
            concat=range(1, 9),
        ),
        "DARTS (first order) recurrent cell, PTB: Liu, Simonyan, Yang. DARTS: Differentiable Architecture Search. "
        "ICLR 2019", "1806.09055", "quark0/darts rnn/genotypes.py (DARTS_V1)"),
    ZooEntry(
        "DARTS_RNN_V2",
        RecurrentGenotype(
            recurrent=[('sigmoid', 0), ('relu', 1), ('relu', 1), ('identity', 1), ('tanh', 2), ('sigmoid', 5),
                       ('tanh', 3), ('relu', 5)],
            concat=range(1, 9),
        ),
        "DARTS (second order) recurrent cell, PTB (test perplexity 55.7, 23M params): Liu, Simonyan, Yang. "
        "DARTS: Differentiable Architecture Search. ICLR 2019", "1806.09055",
        "quark0/darts rnn/genotypes.py (DARTS_V2)"),
]

#: The published genotypes by name.
ZOO: dict[str, ZooEntry] = {e.name: e for e in _ENTRIES}

#: Short names for the variant each method's own code uses by default.
ALIASES = {"DARTS": "DARTS_V2", "DARTS_RNN": "DARTS_RNN_V2", "PC_DARTS": "PC_DARTS_cifar", "DrNAS": "DrNAS_cifar10",
           "SNAS": "SNAS_mild", "NASNet_A": "NASNet", "AmoebaNet_A": "AmoebaNet", "P_DARTS": "PDARTS"}


def _key(name: str) -> str:
    return name.upper().replace("-", "_")


_LOOKUP = {_key(n): n for n in ZOO} | {_key(a): n for a, n in ALIASES.items()}


def lookup(name: str) -> ZooEntry:
    """The zoo entry named ``name`` (case and ``-``/``_`` ignored; aliases accepted)."""
    try:
        return ZOO[_LOOKUP[_key(name)]]
    except KeyError:
        raise UnknownNameError(f"unknown published genotype {name!r}; valid: {', '.join(ZOO)} "
                               f"(aliases: {', '.join(ALIASES)})") from None


def published(name: str) -> Genotype:
    """The published genotype named ``name``: ``dnas.published("DARTS_V2")``."""
    return lookup(name).genotype


def load_genotype(spec: str | Path | Genotype) -> tuple[Genotype, str]:
    """A genotype and a short name for it, from a zoo name, a genotype file (.json or the text form), a run
    directory holding ``genotype.json`` (a search run still running: the cells derived after its last
    completed epoch, named ``<run>-epoch<k>``), or the text form itself (DARTS's, or NAS-Bench-201's arch
    string)."""
    if isinstance(spec, (Genotype, RecurrentGenotype, NB201Genotype)):
        return spec, "genotype"
    text = str(spec).strip()
    if text.startswith(("Genotype(", "|")):
        return genotype_class(text).parse(text), "genotype"
    if _key(text) in _LOOKUP:
        entry = lookup(text)
        return entry.genotype, entry.name
    path = Path(text).expanduser()
    if path.is_dir():
        if (path / "genotype.json").is_file():
            return _load(path / "genotype.json"), path.name
        if (path / "config.json").is_file():  # a search run not yet finished, as dnas show and report read it
            from .report import load_run  # report reads genotypes by this module
            run = load_run(path)  # an error that says what the directory is, where it has no completed epoch
            return run.genotype(), f"{run.name}-epoch{run.epochs}"
        raise GenotypeError(f"{path} is a directory without genotype.json; give a search run directory, "
                            f"a genotype file or a zoo name")
    if path.is_file():
        return _load(path), path.stem
    raise GenotypeError(f"{text!r} is not a published genotype ({', '.join(ZOO)}), an existing file or run "
                        f"directory, or a genotype in the text form Genotype(normal=[...], ...), "
                        f"Genotype(recurrent=[...], concat=...) or a NAS-Bench-201 arch string {EXAMPLE}")


def genotype_class(text: str) -> type:
    """The genotype class the text or JSON names: a NAS-Bench-201 cell (its arch string, or JSON with its
    ``"space": "nb201"``), the DARTS recurrent cell or the convolutional one."""
    if text.lstrip().startswith("|") or '"nb201"' in text:
        return NB201Genotype
    return RecurrentGenotype if RecurrentGenotype.matches(text) else Genotype


def convolutional(genotype, name: str) -> Genotype:
    """``genotype`` if it is a DARTS convolutional cell, which the evaluation networks are built of; else an
    error that says what to do with a NAS-Bench-201 cell."""
    if isinstance(genotype, NB201Genotype):
        raise ValueError(f"{name} is a NAS-Bench-201 cell, whose trained accuracy the benchmark holds: "
                         f"dnas bench nb201 --arch '{genotype}' (its cells are drawn by dnas show)")
    return genotype


def _load(path: Path) -> Genotype | RecurrentGenotype:
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise GenotypeError(f"{path} is not a genotype file: it is not text (a genotype is a .json file or the "
                            f"text form Genotype(normal=[...], ...))") from None
    return genotype_class(text).load(path)
