"""Genotypes of the DARTS recurrent cell: the discrete architecture of a recurrent search.

Node 0 of the cell is computed from x_t and h_{t-1}; each further node i = 1..n takes exactly one earlier
node j < i through one activation (Liu et al., DARTS, ICLR 2019, Sec. 3.1.2). The genotype lists the
``(activation, j)`` pair of every node and the nodes whose average is the cell's output, in the text form of
the original DARTS code (``rnn/genotypes.py``), parsed with ``ast``, never ``eval``:

    Genotype(recurrent=[('sigmoid', 0), ('relu', 1), ...], concat=range(1, 9))

JSON (``to_dict`` / ``from_dict``) carries ``"space": "darts-rnn"`` beside the same two fields.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..genotype import GenotypeError, GenotypeFile

#: The activations a node can apply (the original's PRIMITIVES without ``none``, which a genotype never holds).
ACTIVATION_NAMES = ("tanh", "relu", "sigmoid", "identity")
FIELDS = ("recurrent", "concat")
TEXT_FORM = "Genotype(recurrent=[('activation', input), ...], concat=range(1, 9))"


@dataclass(frozen=True)
class RecurrentGenotype(GenotypeFile):
    """A recurrent cell: ``recurrent[i - 1] = (activation, j)`` for node i, ``concat`` the averaged nodes."""

    KIND, FIELDS = "recurrent genotype", FIELDS
    TEXT_FORM = TEXT_FORM

    recurrent: tuple[tuple[str, int], ...]
    concat: tuple[int, ...]

    def __post_init__(self):
        if not isinstance(self.recurrent, (list, tuple)) or not self.recurrent:
            raise GenotypeError(f"recurrent must be a non-empty list of (activation, input) pairs, got "
                                f"{self.recurrent!r}")
        edges = []
        for i, e in enumerate(self.recurrent, start=1):
            if not (isinstance(e, (list, tuple)) and len(e) == 2 and isinstance(e[0], str) and isinstance(e[1], int)):
                raise GenotypeError(f"recurrent: each node is an (activation, input) pair like ('tanh', 0), got {e!r}")
            op, j = e
            if op not in ACTIVATION_NAMES:
                raise GenotypeError(f"recurrent: unknown activation {op!r}; valid: {', '.join(ACTIVATION_NAMES)}")
            if not 0 <= j < i:
                raise GenotypeError(f"recurrent: node {i} takes input {j}, but only nodes 0..{i - 1} exist before it")
            edges.append((op, j))
        try:
            concat = tuple(int(i) for i in self.concat)
        except (TypeError, ValueError):
            raise GenotypeError(f"concat must be a list of node numbers, got {self.concat!r}") from None
        if not concat or any(not 0 <= i <= len(edges) for i in concat):
            raise GenotypeError(f"concat must name nodes in 0..{len(edges)}, got {list(concat)}")
        object.__setattr__(self, "recurrent", tuple(edges))
        object.__setattr__(self, "concat", concat)

    @property
    def nodes(self) -> int:
        """Intermediate nodes after node 0 (8 in DARTS)."""
        return len(self.recurrent)

    def __str__(self) -> str:
        c = self.concat
        contiguous = len(c) > 1 and c == tuple(range(c[0], c[-1] + 1))
        concat = f"range({c[0]}, {c[-1] + 1})" if contiguous else str(list(c))
        return f"Genotype(recurrent={list(self.recurrent)}, concat={concat})"

    __repr__ = __str__

    def to_dict(self) -> dict[str, Any]:
        return {"space": "darts-rnn", "recurrent": [list(e) for e in self.recurrent], "concat": list(self.concat)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RecurrentGenotype":
        missing = [f for f in FIELDS if f not in d]
        if missing:
            raise GenotypeError(f"recurrent genotype JSON lacks {', '.join(missing)}; "
                                f"expected keys {', '.join(FIELDS)}")
        return cls(tuple(tuple(e) if isinstance(e, list) else e for e in d["recurrent"]), d["concat"])

    @classmethod
    def parse(cls, text: str) -> "RecurrentGenotype":
        """Read the text form (see the module docstring); ``concat`` may be a list or ``range(a, b)``."""
        values = cls.parse_fields(text)
        return cls(values["recurrent"], values["concat"])

    @staticmethod
    def matches(text: str) -> bool:
        """Whether a genotype's text or JSON is a recurrent one (it names the ``recurrent`` field)."""
        return "recurrent" in text
