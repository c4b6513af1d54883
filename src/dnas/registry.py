"""One registry per kind of part (ops, spaces, relaxations, ...): name -> factory, with clear errors."""
from __future__ import annotations

import inspect
from typing import Any, Callable, Iterator


class Registry:
    """A named table of factories. ``REG.register("name")`` decorates; ``REG.get("name")`` looks up.

    An unknown name raises ``KeyError`` whose message lists every valid name, so a typo on the command
    line or in a recipe tells the user what they could have written.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._table: dict[str, Any] = {}

    def register(self, name: str, obj: Any = None) -> Callable:
        """Register ``obj`` (or, as a decorator, what it decorates) as ``name``. A name is registered once; the
        same definition again (its module re-imported or reloaded, a notebook cell run again) replaces it."""
        def add(o):
            if name in self._table and _defined_at(self._table[name]) != _defined_at(o):
                raise ValueError(f"{self.kind} {name!r} is registered twice (by {'.'.join(_defined_at(o))} and "
                                 f"{'.'.join(_defined_at(self._table[name]))}): give one of them another name")
            self._table[name] = o
            return o

        return add if obj is None else add(obj)

    def get(self, name: str) -> Any:
        try:
            return self._table[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; valid {self.kind}s: {', '.join(sorted(self._table))}"
            ) from None

    def build(self, spec: str | dict, **extra) -> Any:
        """Build a part from a recipe spec: ``"name"`` or ``{"name": "name", **kwargs}``."""
        if isinstance(spec, str):
            return self.get(spec)(**extra)
        if not isinstance(spec, dict) or "name" not in spec:
            raise ValueError(f"a {self.kind} is given as a name or a table with a 'name' key, not {spec!r}")
        kwargs = {k: v for k, v in spec.items() if k != "name"}
        part = self.get(spec["name"])
        try:
            inspect.signature(part).bind(**kwargs, **extra)
        except TypeError as e:
            options = [p for p in inspect.signature(part).parameters if p not in extra]
            raise ValueError(f"{self.kind} {spec['name']!r}: {e}; its options: {', '.join(options) or 'none'}"
                             ) from None
        return part(**kwargs, **extra)

    def names(self) -> list[str]:
        return sorted(self._table)

    def __contains__(self, name: str) -> bool:
        return name in self._table

    def __iter__(self) -> Iterator[str]:
        return iter(self._table)


def _defined_at(obj: Any) -> tuple[str, str]:
    """Where ``obj`` is defined: its module and qualified name."""
    return getattr(obj, "__module__", None) or "?", getattr(obj, "__qualname__", None) or type(obj).__qualname__


class UnknownNameError(KeyError, ValueError):
    """An unknown part name. A KeyError for lookups, a ValueError for argument checking."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0])
