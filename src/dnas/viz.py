"""Pictures of cells, drawn by Graphviz's ``dot`` program as the DARTS paper (Fig. 4-6) and code draw them:
the cell inputs c_{k-2} and c_{k-1}, the intermediate nodes 0..n-1, the output c_{k}, one arrow per
genotype edge labelled with its op, and an arrow into c_{k} from every node the cell concatenates.

``draw(genotype, "cells.png")`` writes both cells into one picture (any output format ``dot`` knows, by the
file's suffix: png, svg, pdf, ...). Only the ``dot`` binary is needed (Debian package ``graphviz``).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from .bench.nb201 import NB201Genotype, cell_edges
from .genotype import Genotype
from .rnn.genotype import RecurrentGenotype


class GraphvizNotFound(FileNotFoundError):
    """The ``dot`` program is not installed."""


CELL_TITLES = {"normal": "normal cell", "reduce": "reduction cell"}
STYLE = ('node [style="rounded,filled", shape=rect, align=center, fontsize=20, height=0.5, width=0.5, '
         'penwidth=2, fontname=times];', "edge [fontsize=20, fontname=times];")


def cell_dot(edges: tuple[tuple[str, int, int], ...], concat: tuple[int, ...], name: str = "normal") -> str:
    """The DOT statements of one cell (``edges`` as ``Genotype.edges`` gives them), as a cluster whose node
    ids start with ``name``."""
    label = {0: "c_{k-2}", 1: "c_{k-1}"} | {node: str(node - 2) for *_, node in edges}
    lines = [f'subgraph "cluster_{name}" {{', f'label="{CELL_TITLES.get(name, name)}"; fontsize=20;']
    for i, text in label.items():
        color = "darkseagreen2" if i < 2 else "lightblue"
        lines.append(f'"{name}{i}" [label="{text}", fillcolor={color}];')
    lines.append(f'"{name}_out" [label="c_{{k}}", fillcolor=palegoldenrod];')
    for op, j, node in edges:
        lines.append(f'"{name}{j}" -> "{name}{node}" [label="{op}", fillcolor=gray];')
    for i in concat:
        lines.append(f'"{name}{i}" -> "{name}_out" [fillcolor=gray];')
    return "\n".join(lines + ["}"])


def genotype_dot(genotype: Genotype) -> str:
    """A DOT graph of the normal cell above the reduction cell, each drawn left to right."""
    # with rankdir=LR, dot stacks the clusters bottom-up: the reduction cell comes first to land below
    cells = [cell_dot(genotype.edges(c), getattr(genotype, c + "_concat"), c) for c in ("reduce", "normal")]
    return "\n".join([
        "digraph genotype {",
        "rankdir=LR; newrank=true;",
        *STYLE,
        *cells,
        "}",
    ])


def nb201_dot(genotype: NB201Genotype) -> str:
    """A DOT graph of a NAS-Bench-201 cell, left to right: node 0 is the cell's input, the last node its
    output, one arrow per edge labelled with its op; ``none`` edges are left out, as they carry nothing."""
    last = genotype.nodes - 1
    color = {0: "darkseagreen2", last: "palegoldenrod"}
    nodes = [f'"n{i}" [label="{i}", fillcolor={color.get(i, "lightblue")}];' for i in range(genotype.nodes)]
    edges = [f'"n{j}" -> "n{i}" [label="{op}"];' for op, (j, i) in zip(genotype.ops, cell_edges(genotype.nodes))
             if op != "none"]
    return "\n".join(["digraph nb201 {", 'rankdir=LR; label="NAS-Bench-201 cell"; fontsize=20;', *STYLE,
                      *nodes, *edges, "}"])


def recurrent_dot(genotype: RecurrentGenotype) -> str:
    """A DOT graph of a DARTS recurrent cell as the original code draws it: x_{t} and h_{t-1} into node 0,
    one arrow per node from its input labelled with its activation, h_{t} the average of the concat nodes."""
    lines = ["digraph recurrent {", 'rankdir=LR; label="recurrent cell"; fontsize=20;', *STYLE,
             '"x" [label="x_{t}", fillcolor=darkseagreen2];', '"h_prev" [label="h_{t-1}", fillcolor=darkseagreen2];',
             '"out" [label="h_{t}", fillcolor=palegoldenrod];', '"n0" [label="0", fillcolor=lightblue];',
             '"x" -> "n0" [fillcolor=gray];', '"h_prev" -> "n0" [fillcolor=gray];']
    for i, (op, j) in enumerate(genotype.recurrent, start=1):
        lines += [f'"n{i}" [label="{i}", fillcolor=lightblue];', f'"n{j}" -> "n{i}" [label="{op}", fillcolor=gray];']
    lines += [f'"n{i}" -> "out" [fillcolor=gray];' for i in genotype.concat]
    return "\n".join(lines + ["}"])


def render(dot_source: str, path: str | os.PathLike) -> Path:
    """Run ``dot`` on ``dot_source``, writing ``path`` in the format its suffix names."""
    path = Path(path).expanduser()
    fmt = path.suffix.lstrip(".").lower()
    if not fmt:
        raise ValueError(f"{path}: give the picture a suffix naming its format, e.g. .png or .svg")
    dot = shutil.which("dot")
    if dot is None:
        raise GraphvizNotFound("the `dot` program of Graphviz is not installed; install it with "
                               "`apt-get install graphviz` (or your system's graphviz package)")
    path.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([dot, f"-T{fmt}", "-o", str(path)], input=dot_source, capture_output=True, text=True)
    if done.returncode != 0:
        raise ValueError(f"dot could not write {path}: {done.stderr.strip()}")
    return path


DOTS = {Genotype: genotype_dot, NB201Genotype: nb201_dot, RecurrentGenotype: recurrent_dot}


def draw(genotype: Genotype | NB201Genotype | RecurrentGenotype, path: str | os.PathLike) -> Path:
    """Write a picture of the genotype's cells (DARTS: normal and reduction; NAS-Bench-201 and recurrent: its
    one cell) to ``path`` (.png, .svg, .pdf, ...)."""
    return render(DOTS[type(genotype)](genotype), path)
