"""NAS-Bench-201 (Dong & Yang, ICLR 2020, arXiv:2001.00326): its cells as arch strings, and their ground truth.

A cell has 4 nodes; node i is the sum of one op on each earlier node j < i (6 edges), the op one of
``NB201_OPS``, so the benchmark holds 5^6 = 15,625 cells, every one trained from scratch for 200 epochs on
CIFAR-10, CIFAR-100 and ImageNet16-120. A cell is written in the benchmark's own form, node by node, each
incoming edge as ``op~input``:

    |nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|skip_connect~1|skip_connect~2|

``lookup(arch)`` returns the cell's test accuracies after 200 epochs (mean over the benchmark's seeds, as
its API reports them) and its index in the benchmark. They are read from ``nb201.npz`` beside this module,
built by benchmarks/build_nb201_table.py from the benchmark's table: float32 accuracies (cells x datasets)
and the benchmark's int16 index, both in the order of ``encode``: the base-5 number whose digits are the
ops of the 6 edges in the order of the string (first edge most significant), ops numbered as in NB201_OPS.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np

from ..genotype import GenotypeError, GenotypeFile
from ..ops import OPS

#: The benchmark's candidate ops, in its own order (the digits of ``encode``).
NB201_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
DATASETS = ("cifar10", "cifar100", "ImageNet16-120")
NODES = 4
TABLE_FILE = "nb201.npz"
EXAMPLE = "|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|skip_connect~1|skip_connect~2|"


class NotInBenchmarkError(ValueError):
    """A well-formed cell that NAS-Bench-201 does not hold (another op, another number of nodes)."""


def cell_edges(nodes: int) -> list[tuple[int, int]]:
    """The edges (j, i) of a cell, j < i, in the order of the arch string: by target node, then input."""
    return [(j, i) for i in range(1, nodes) for j in range(i)]


@dataclass(frozen=True)
class NB201Genotype(GenotypeFile):
    """A cell of the NAS-Bench-201 form: ``ops[e]`` is the op of edge e of ``cell_edges(nodes)``."""

    ops: tuple[str, ...]

    def __post_init__(self):
        ops = tuple(self.ops)
        object.__setattr__(self, "ops", ops)
        if not ops or len(cell_edges(self.nodes)) != len(ops):
            raise GenotypeError(f"a cell of n nodes has n(n-1)/2 edges (6 for NAS-Bench-201), got {len(ops)} ops")
        for op in ops:
            if op not in OPS:
                raise GenotypeError(f"unknown op {op!r}; valid ops: {', '.join(OPS.names())}")

    @property
    def nodes(self) -> int:
        """n, from the n(n-1)/2 edges."""
        return (1 + math.isqrt(1 + 8 * len(self.ops))) // 2

    def defect(self) -> str | None:
        """A cell none of whose paths from input to output avoids ``none`` outputs zeros: its network ignores
        every cell (NAS-Bench-201 lists such cells at 10.0% on CIFAR-10, chance)."""
        reached = {0}
        for op, (j, i) in zip(self.ops, cell_edges(self.nodes)):
            if op != "none" and j in reached:
                reached.add(i)
        if self.nodes - 1 in reached:
            return None
        return ("every path from the cell's input to its output has a none op: the cell outputs zeros and the "
                "network ignores it (NAS-Bench-201: 10% on CIFAR-10)")

    def __str__(self) -> str:
        nodes = [[] for _ in range(self.nodes)]
        for op, (j, i) in zip(self.ops, cell_edges(self.nodes)):
            nodes[i].append(f"{op}~{j}")
        return "+".join("|" + "|".join(node) + "|" for node in nodes[1:])

    def __repr__(self) -> str:
        return f"NB201Genotype({str(self)!r})"

    @classmethod
    def parse(cls, text: str) -> "NB201Genotype":
        """Read the benchmark's arch string (see the module docstring)."""
        text = text.strip()
        malformed = GenotypeError(f"malformed NAS-Bench-201 arch string {text[:100]!r}; expected nodes joined by "
                                  f"'+', each listing its edges as |op~input|, e.g. {EXAMPLE}")
        ops = []
        for i, node in enumerate(text.split("+"), start=1):
            if len(node) < 3 or node[0] != "|" or node[-1] != "|":
                raise malformed
            inputs = []
            for entry in node[1:-1].split("|"):
                op, tilde, j = entry.partition("~")
                if not (op and tilde and j.isdigit()):
                    raise malformed
                ops.append(op)
                inputs.append(int(j))
            if inputs != list(range(i)):
                raise GenotypeError(f"node {i} of {text[:100]!r} takes inputs {inputs}; node {i} takes one edge "
                                    f"from each earlier node, in order: {list(range(i))}")
        return cls(tuple(ops))

    def to_dict(self) -> dict[str, Any]:
        return {"space": "nb201", "arch": str(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "NB201Genotype":
        if d.get("space", "nb201") != "nb201" or "arch" not in d:
            raise GenotypeError(f'a NAS-Bench-201 genotype in JSON is {{"space": "nb201", "arch": "{EXAMPLE}"}}, '
                                f"got keys {sorted(d)}")
        return cls.parse(d["arch"])


def as_genotype(arch: str | NB201Genotype) -> NB201Genotype:
    """An arch string parsed, a genotype as it is."""
    return arch if isinstance(arch, NB201Genotype) else NB201Genotype.parse(arch)


def encode(arch: str | NB201Genotype) -> int:
    """The cell's position in the shipped table: its edge ops as base-5 digits, first edge most significant."""
    g = as_genotype(arch)
    if g.nodes != NODES:
        raise NotInBenchmarkError(f"{g} has {g.nodes} nodes; NAS-Bench-201 cells have {NODES}")
    code = 0
    for op in g.ops:
        if op not in NB201_OPS:
            raise NotInBenchmarkError(f"{g} is not a NAS-Bench-201 cell: {op!r} is not one of its ops "
                                      f"({', '.join(NB201_OPS)})")
        code = code * len(NB201_OPS) + NB201_OPS.index(op)
    return code


def decode(code: int) -> NB201Genotype:
    size = len(NB201_OPS) ** len(cell_edges(NODES))
    if not 0 <= code < size:
        raise ValueError(f"a NAS-Bench-201 cell code is in 0..{size - 1}, got {code}")
    ops = []
    for _ in cell_edges(NODES):
        code, digit = divmod(code, len(NB201_OPS))
        ops.append(NB201_OPS[digit])
    return NB201Genotype(tuple(reversed(ops)))


@functools.cache
def table() -> dict[str, np.ndarray]:
    """The shipped table: ``accuracy`` (15625 x 3, float32, in %), ``index`` (int16), ``ops``, ``datasets``."""
    with resources.files(__package__).joinpath(TABLE_FILE).open("rb") as f, np.load(f) as data:
        return {name: data[name] for name in data.files}


def lookup(arch: str | NB201Genotype) -> dict[str, float | int]:
    """Test accuracy (%) after 200 epochs on each data set, and the benchmark's index, of a cell.

        lookup("|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|")
        # {'cifar10': 54.2967, 'cifar100': 15.6067, 'ImageNet16-120': 16.3222, 'index': 1835}
    """
    code = encode(arch)
    t = table()
    # float32 holds every 4-decimal value of the table to better than 1e-5; rounding gives the table's figure
    accuracies = {d: round(float(a), 4) for d, a in zip(DATASETS, t["accuracy"][code])}
    return {**accuracies, "index": int(t["index"][code])}


def best(dataset: str = "cifar10") -> NB201Genotype:
    """The cell of highest test accuracy on a data set (the benchmark's 'optimal'); of tied cells (two on
    CIFAR-10, at 94.3733), the one first in the benchmark's order."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown NAS-Bench-201 data set {dataset!r}; valid: {', '.join(DATASETS)}")
    accuracy, index = table()["accuracy"][:, DATASETS.index(dataset)], table()["index"]
    top = np.flatnonzero(accuracy == accuracy.max())
    return decode(int(top[np.argmin(index[top])]))
