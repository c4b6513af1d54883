"""Checkpoints of long runs (search, training): written atomically, read back with a clear error.

A checkpoint is a dict with a ``format`` tag, so that a file of another kind or version is refused, and an
``rng`` entry (torch, CUDA and the run's own generators), so that a resumed run continues exactly.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read: corrupted, or not of the run's kind."""


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file, then rename: a crash leaves the previous file intact."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def rng_state(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    """The random state of torch, of CUDA and of ``generators``, by name."""
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            **{name: g.get_state() for name, g in generators.items()}}


def set_rng_state(rng: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(rng["torch"].cpu())
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
    for name, g in generators.items():
        g.set_state(rng[name].cpu())


def load(path: Path, fmt: str, device: torch.device, kind: str, restore: Callable[[dict[str, Any]], None]) -> dict:
    """Read the checkpoint at ``path`` and ``restore`` the run from it; any failure is a CheckpointError
    naming the file (the run's other files are left as they are)."""
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: the run has not completed an epoch, start it anew")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        if state.get("format") != fmt:
            raise ValueError(f"format {state.get('format')!r}, expected {fmt!r}")
        restore(state)
    except Exception as e:
        raise CheckpointError(f"{path} is corrupted or not a dnas {kind} checkpoint ({type(e).__name__}: {e}); "
                              f"the run's other files are untouched") from None
    return state
