"""Methods: a published method is a recipe that picks one of each part, plus the settings its paper uses.

Recipes are small TOML files (``src/dnas/recipes/<name>.toml``); a user's own file has the same form:

    name = "my-darts"
    paper = "..."
    year = 2024
    changes = "what it changes with respect to DARTS"
    [parts]                      # each a registered name, or a table {name = "...", **kwargs}
    space = "darts"
    relaxation = "softmax"
    arch_grad = "first_order"
    selection = {name = "top_k", k = 2}    # optional: the space's own by default
    [config]                     # settings of SearchConfig that the paper changes
    batch_size = 64
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

PART_KINDS = ("space", "relaxation", "arch_grad", "selection")
# a part a recipe leaves out; selection None means the space's own (DARTS cell: top-2 edges per node)
DEFAULT_PARTS = {"space": "darts", "relaxation": "softmax", "arch_grad": "first_order", "selection": None}


@dataclass(frozen=True)
class Method:
    name: str
    paper: str = ""
    year: int | None = None
    changes: str = ""
    parts: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    def part(self, kind: str) -> Any:
        return self.parts.get(kind, DEFAULT_PARTS[kind])

    def build(self, kind: str, **extra) -> Any:
        """Build this method's part of a kind from its registry (None where the recipe leaves it to the space)."""
        if self.part(kind) is None:
            return None
        from .arch_grad import ARCH_GRADS
        from .relax import RELAXATIONS
        from .selection import SELECTIONS

        registry = {"relaxation": RELAXATIONS, "arch_grad": ARCH_GRADS, "selection": SELECTIONS}[kind]
        return registry.build(self.part(kind), **extra)

    @classmethod
    def from_toml(cls, text: str, origin: str) -> "Method":
        try:
            d = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"recipe {origin} is not valid TOML: {e}") from None
        unknown = set(d) - {"name", "paper", "year", "changes", "parts", "config"}
        bad_parts = set(d.get("parts", {})) - set(PART_KINDS)
        if unknown or bad_parts:
            raise ValueError(
                f"recipe {origin}: unknown keys {sorted(unknown | bad_parts)}; a recipe has name, paper, year, "
                f"changes, [parts] ({', '.join(PART_KINDS)}) and [config]"
            )
        if "name" not in d:
            raise ValueError(f"recipe {origin} has no name")
        return cls(**d)


def builtin_methods() -> dict[str, Method]:
    """Every recipe shipped with dnas, by name."""
    found = {}
    for entry in sorted(resources.files("dnas.recipes").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            method = Method.from_toml(entry.read_text(), entry.name)
            found[method.name] = method
    return found


def get_method(name_or_path: str) -> Method:
    """A built-in recipe by name, or a user's recipe file by path."""
    if name_or_path.endswith(".toml") or os.sep in name_or_path:
        if not os.path.isfile(name_or_path):
            raise FileNotFoundError(f"recipe file {name_or_path} does not exist")
        with open(name_or_path) as f:
            return Method.from_toml(f.read(), name_or_path)
    methods = builtin_methods()
    if name_or_path not in methods:
        from .registry import UnknownNameError

        raise UnknownNameError(
            f"unknown method {name_or_path!r}; valid methods: {', '.join(methods)} (or the path of a recipe .toml file)"
        )
    return methods[name_or_path]
