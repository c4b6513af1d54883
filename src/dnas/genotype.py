"""Genotypes of the DARTS cell space: the discrete architecture a search returns.

A cell genotype lists, for each intermediate node, its incoming edges as ``(op, input)`` pairs, where
input 0 is the output of cell k-2, input 1 that of cell k-1 and input i >= 2 intermediate node i-2
(Liu et al., DARTS, ICLR 2019, Sec. 2.1). The cell's output concatenates the nodes in ``*_concat``.

Two forms are read and written: the text form of the original DARTS code, so that genotypes printed by
it or pasted from papers work as they are,

    Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ...], normal_concat=[2, 3, 4, 5],
             reduce=[('max_pool_3x3', 0), ...], reduce_concat=[2, 3, 4, 5])

(``range(2, 6)`` is accepted for a concat), and JSON (``to_dict`` / ``from_dict``). The text form is parsed
with ``ast``, never ``eval``.

A cell whose nodes do not all take two edges (FairDARTS's threshold selection, Chu et al., ECCV 2020)
names each edge's node: ``(op, node, input)`` triples, as FairDARTS's code writes them. A node without
incoming edges does not exist in the network; the concat drops it. ``edges(cell)`` gives every cell in
one shape, ``(op, input, node)``, for the code that builds or draws it.
"""
from __future__ import annotations

import ast
import json
import os
from dataclasses import dataclass
from typing import Any

from .ops import OPS

CELL_FIELDS = ("normal", "normal_concat", "reduce", "reduce_concat")
TEXT_FORM = "Genotype(normal=[('op', input), ...], normal_concat=[...], reduce=[...], reduce_concat=[...])"


class GenotypeError(ValueError):
    """A genotype that cannot be read: malformed text, an unknown op, an edge from a later node."""


Edge = tuple[str, int] | tuple[str, int, int]  # (op, input), or FairDARTS's (op, node, input)


class GenotypeFile:
    """Files of a genotype class with ``to_dict`` / ``from_dict``, ``parse`` and ``str``: JSON by suffix, else
    the text form ``Genotype(...)``, whose ``KIND``, ``FIELDS`` and ``TEXT_FORM`` the class names."""

    KIND: str
    FIELDS: tuple[str, ...]
    TEXT_FORM: str

    @classmethod
    def parse_fields(cls, text: str) -> dict[str, Any]:
        """The fields of the text form, given by position or by name, each a literal or ``range(a, b)`` (the
        original code writes concats that way)."""
        kind, form = cls.KIND, cls.TEXT_FORM
        try:
            node = ast.parse(text.strip(), mode="eval").body
        except SyntaxError as e:
            raise GenotypeError(f"malformed {kind} ({e.msg}); expected {form}") from None
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Genotype"):
            raise GenotypeError(f"malformed {kind}: expected {form}, got {text.strip()[:80]!r}")
        if (len(node.args) + len(node.keywords) != len(cls.FIELDS)
                or any(k.arg not in cls.FIELDS for k in node.keywords)):
            number = ("one", "two", "three", "four")[len(cls.FIELDS) - 1]
            raise GenotypeError(f"malformed {kind}: expected the {number} fields {', '.join(cls.FIELDS)} of {form}")
        values = dict(zip(cls.FIELDS, node.args)) | {k.arg: k.value for k in node.keywords}
        return {f: _literal(v, f, kind) for f, v in values.items()}

    def defect(self) -> str | None:
        """Why a network of this genotype would not use its cells, or None: what a search warns of."""
        return None

    def save(self, path: str | os.PathLike) -> None:
        """Write JSON (``.json``) or the text form (any other suffix)."""
        path = os.path.expanduser(os.fspath(path))
        text = json.dumps(self.to_dict(), indent=1) if path.endswith(".json") else str(self)
        with open(path, "w") as f:
            f.write(text + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike):
        """Read a genotype file written by ``save`` (JSON or the text form)."""
        with open(os.path.expanduser(os.fspath(path))) as f:
            text = f.read()
        if text.lstrip().startswith("{"):
            try:
                return cls.from_dict(json.loads(text))
            except json.JSONDecodeError as e:
                raise GenotypeError(f"{path}: not valid JSON ({e})") from None
        return cls.parse(text)


@dataclass(frozen=True)
class Genotype(GenotypeFile):
    """A DARTS-space architecture: the normal and the reduction cell."""

    KIND, FIELDS = "genotype", CELL_FIELDS
    TEXT_FORM = TEXT_FORM

    normal: tuple[Edge, ...]
    normal_concat: tuple[int, ...]
    reduce: tuple[Edge, ...]
    reduce_concat: tuple[int, ...]

    def __post_init__(self):
        for cell in ("normal", "reduce"):
            edges = tuple((str(e[0]), *map(int, e[1:])) for e in _edges(getattr(self, cell), cell))
            object.__setattr__(self, cell, edges)
            triples = self.edges(cell)
            _check_cell(cell, triples)
            present = {node for *_, node in triples}
            concat = tuple(int(i) for i in getattr(self, cell + "_concat"))
            last = max(present)
            if len(edges[0]) == 3:  # nodes without edges (or past the last) are not in the network
                concat = tuple(i for i in concat if i < 2 or i in present)
            if not concat or any(not 0 <= i <= last for i in concat):
                raise GenotypeError(f"{cell}_concat must name nodes in 0..{last}, got {list(concat)}")
            object.__setattr__(self, cell + "_concat", concat)

    def edges(self, cell: str) -> tuple[tuple[str, int, int], ...]:
        """The edges of ``cell`` ("normal" or "reduce") as ``(op, input, node)``, in node order."""
        edges = getattr(self, cell)
        if edges and len(edges[0]) == 3:
            return tuple(sorted(((op, j, node) for op, node, j in edges), key=lambda e: e[2]))
        return tuple((op, j, 2 + k // 2) for k, (op, j) in enumerate(edges))

    @property
    def nodes(self) -> int:
        """Number of intermediate nodes of the normal cell (the last node's index minus the 2 inputs)."""
        return self.edges("normal")[-1][2] - 1

    def __str__(self) -> str:
        return (
            f"Genotype(normal={list(self.normal)}, normal_concat={list(self.normal_concat)}, "
            f"reduce={list(self.reduce)}, reduce_concat={list(self.reduce_concat)})"
        )

    __repr__ = __str__

    def to_dict(self) -> dict[str, Any]:
        cells = {c: [list(e) for e in getattr(self, c)] for c in ("normal", "reduce")}
        concats = {c + "_concat": list(getattr(self, c + "_concat")) for c in ("normal", "reduce")}
        return {"space": "darts", **cells, **concats}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Genotype":
        missing = [f for f in CELL_FIELDS if f not in d]
        if missing:
            raise GenotypeError(f"genotype JSON lacks {', '.join(missing)}; expected keys {', '.join(CELL_FIELDS)}")
        return cls(**{f: d[f] for f in CELL_FIELDS})

    @classmethod
    def parse(cls, text: str) -> "Genotype":
        """Read the DARTS text form (see the module docstring)."""
        return cls(**cls.parse_fields(text))


def _literal(node: ast.AST, field: str, kind: str) -> Any:
    """A literal, or ``range(a, b)``."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range":
        return list(range(*[_literal(a, field, kind) for a in node.args]))
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise GenotypeError(f"malformed {kind}: {field} must be a literal list, got {ast.unparse(node)!r}") from None


def _edges(edges, cell: str):
    """The edges as given, all (op, input) pairs or all (op, node, input) triples."""
    if not isinstance(edges, (list, tuple)) or not edges:
        raise GenotypeError(f"{cell} must be a non-empty list of (op, input) pairs or (op, node, input) triples, "
                            f"got {edges!r}")
    size = len(edges[0]) if isinstance(edges[0], (list, tuple)) else 0
    for e in edges:
        if not (isinstance(e, (list, tuple)) and len(e) == size in (2, 3) and isinstance(e[0], str)
                and all(isinstance(i, int) for i in e[1:])):
            raise GenotypeError(f"{cell}: each edge is an (op, input) pair like ('sep_conv_3x3', 0), or, in every "
                                f"edge of the cell, an (op, node, input) triple like ('sep_conv_3x3', 2, 0); got {e!r}")
    if size == 2 and len(edges) % 2:
        raise GenotypeError(f"{cell}: (op, input) pairs give 2 incoming edges per node, got {len(edges)} edges")
    return edges


def _check_cell(cell: str, edges: tuple[tuple[str, int, int], ...]) -> None:
    present = {0, 1} | {node for *_, node in edges}
    for op, j, node in edges:
        if op not in OPS:
            raise GenotypeError(f"{cell}: unknown op {op!r}; valid ops: {', '.join(OPS.names())}")
        if node < 2:
            raise GenotypeError(f"{cell}: nodes 0 and 1 are the cell's inputs; an edge goes into a node >= 2, "
                                f"got {node}")
        if not 0 <= j < node:
            raise GenotypeError(f"{cell}: node {node} takes input {j}, but only inputs 0..{node - 1} exist before it")
        if j not in present:
            raise GenotypeError(f"{cell}: node {node} takes input {j}, a node without incoming edges")
