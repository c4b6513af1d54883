"""Methods: a published method is a recipe that picks one of each part, plus the settings its paper uses.

Recipes are small TOML files (``src/dnas/recipes/<name>.toml``); a user's own file has the same form:

    name = "my-darts"
    paper = "..."
    year = 2024
    changes = "what it changes with respect to DARTS"
    [parts]                      # each a registered name, or a table {name = "...", **kwargs}
    space = "darts"
    relaxation = "softmax"
    edge = "sum"
    arch_grad = "first_order"
    selection = {name = "top_k", k = 2}    # optional: the space's own by default
    regularizers = [{name = "beta_decay", weight = 0.5}]   # lists: any number of these
    perturbation = {name = "random_smoothing", epsilon = 0.03}
    stopping = ["skip_count"]
    schedule = {name = "progressive"}      # optional: stages of searches (P-DARTS)
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

from .registry import UnknownNameError

# a part a recipe leaves out; selection None means the space's own (DARTS cell: top-2 edges per node)
DEFAULT_PARTS = {"space": "darts", "relaxation": "softmax", "edge": "sum", "arch_grad": "first_order",
                 "selection": None, "perturbation": None, "regularizers": [], "stopping": [], "schedule": None}
# parts that shape the run rather than a step: the space is built by the search, a schedule runs searches
RUN_PARTS = ("space", "schedule")
LIST_PARTS = ("regularizers", "stopping")


def registries() -> dict[str, Any]:
    """The registry of every kind of part a recipe can name (imported late: the parts import torch)."""
    from .arch_grad import ARCH_GRADS
    from .edges import EDGES
    from .perturb import PERTURBATIONS
    from .progressive import SCHEDULES
    from .projection import Perturbation  # noqa: F401  (registers the "perturbation" selection)
    from .regularizers import REGULARIZERS
    from .relax import RELAXATIONS
    from .selection import SELECTIONS
    from .spaces import SPACES
    from .stopping import STOPPERS

    return {"space": SPACES, "relaxation": RELAXATIONS, "edge": EDGES, "arch_grad": ARCH_GRADS,
            "selection": SELECTIONS, "perturbation": PERTURBATIONS, "regularizers": REGULARIZERS,
            "stopping": STOPPERS, "schedule": SCHEDULES}


@dataclass
class Parts:
    """The built parts of one search. Any part may define ``on_epoch_start(epoch, epochs)`` (schedules:
    temperatures, coefficients), returning the values it set for the epoch's metrics line."""

    relaxation: Any
    edge: Any
    arch_grad: Any
    selection: Any
    perturbation: Any
    regularizers: list
    stopping: list

    def __iter__(self):
        for p in (self.relaxation, self.edge, self.arch_grad, self.selection, self.perturbation,
                  *self.regularizers, *self.stopping):
            if p is not None:
                yield p

    def state_dict(self) -> list:
        """The state of every part that keeps one (a stopper's history), for exact resume."""
        return [p.state_dict() if hasattr(p, "state_dict") else None for p in self]

    def load_state_dict(self, states: list) -> None:
        for part, state in zip(self, states):
            if state is not None:
                part.load_state_dict(state)

    def on_epoch_start(self, epoch: int, epochs: int) -> dict[str, float]:
        scheduled = {}
        for part in self:
            if hasattr(part, "on_epoch_start"):
                scheduled.update(part.on_epoch_start(epoch, epochs) or {})
        return scheduled


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
        """Build this method's part of a kind (None where the recipe leaves it to the space)."""
        spec = self.part(kind)
        if spec is None:
            return None
        registry = registries()[kind]
        if kind in LIST_PARTS:
            return [registry.build(s, **extra) for s in spec]
        return registry.build(spec, **extra)

    def build_parts(self) -> Parts:
        parts = Parts(**{kind: self.build(kind) for kind in DEFAULT_PARTS if kind not in RUN_PARTS})
        missing = [f"{name}(alpha)" for name in ("weights", "strengths")
                   if not callable(getattr(parts.relaxation, name, None))]
        if missing:
            raise ValueError(f"method {self.name}: its relaxation {type(parts.relaxation).__name__} has no "
                             f"{' and no '.join(missing)}: a relaxation gives the op weights of the training steps "
                             f"(weights) and those the selection reads and evaluation weighs by (strengths); "
                             f"docs/adding-a-method.md")
        return parts

    def space_options(self, space: str | None = None) -> dict[str, Any]:
        """The recipe's options of the search space ``space`` (None: the recipe's own): on its own space all
        of them; on another, all but its op set, which it chose from its own space's ops (FairDARTS's and
        DARTS-PT's are the DARTS ops without ``none``), so that the other space keeps its own ops."""
        options = dict(self.config.get("space_options", {}))
        if space not in (None, self.part("space")):
            options.pop("ops", None)
        return options

    def check(self, space: str | None = None) -> None:
        """Fail early, with the valid names, on a recipe that names a part that does not exist; with ``space``,
        before a search on that space starts, on a part that works on other spaces only (its ``spaces``:
        P-DARTS's stages and DARTS-PT's projection reshape the DARTS supernet)."""
        tables = registries()
        for kind, spec in self.parts.items():
            for s in spec if kind in LIST_PARTS else [spec]:
                name = s.get("name") if isinstance(s, dict) else s
                if name is None:
                    continue
                spaces = getattr(tables[kind].get(name), "spaces", None)  # the supernets have none
                if space is not None and spaces is not None and space not in spaces:
                    raise ValueError(f"method {self.name}: its {kind} part {name!r} works on the "
                                     f"{' and '.join(spaces)} space{'s' * (len(spaces) > 1)} only, not on {space}")

    @classmethod
    def from_toml(cls, text: str, origin: str) -> "Method":
        try:
            d = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"recipe {origin} is not valid TOML: {e}") from None
        unknown = set(d) - {"name", "paper", "year", "changes", "parts", "config"}
        bad_parts = set(d.get("parts", {})) - set(DEFAULT_PARTS)
        if unknown or bad_parts:
            raise ValueError(
                f"recipe {origin}: unknown keys {sorted(unknown | bad_parts)}; a recipe has name, paper, year, "
                f"changes, [parts] ({', '.join(DEFAULT_PARTS)}) and [config]"
            )
        if "name" not in d:
            raise ValueError(f"recipe {origin} has no name")
        for kind in LIST_PARTS:
            if not isinstance(d.get("parts", {}).get(kind, []), list):
                raise ValueError(f"recipe {origin}: parts.{kind} is a list, e.g. {kind} = [\"name\"]")
        method = cls(**d)
        method.check()
        return method


def builtin_methods() -> dict[str, Method]:
    """Every recipe shipped with dnas, by name."""
    found = {}
    for entry in sorted(resources.files("dnas.recipes").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            method = Method.from_toml(entry.read_text(), entry.name)
            found[method.name] = method
    return found


def get_method(name_or_path: str | Method) -> Method:
    """A built-in recipe by name, or a user's recipe file by path (or a ``Method`` made in Python, as it is)."""
    if isinstance(name_or_path, Method):
        return name_or_path
    name_or_path = os.path.expanduser(os.fspath(name_or_path))  # a pathlib.Path, ~/recipes/mine.toml
    if name_or_path.endswith(".toml") or os.sep in name_or_path:
        if not os.path.isfile(name_or_path):
            raise FileNotFoundError(f"recipe file {name_or_path} does not exist")
        with open(name_or_path) as f:
            return Method.from_toml(f.read(), name_or_path)
    methods = builtin_methods()
    if name_or_path not in methods:
        raise UnknownNameError(
            f"unknown method {name_or_path!r}; valid methods: {', '.join(methods)} (or the path of a recipe .toml file)"
        )
    return methods[name_or_path]
