"""Schedules over the epochs of a search: the shape every annealed value of the parts follows."""
from __future__ import annotations

import math

SHAPES = ("linear", "cosine", "exponential")


def interpolate(start: float, end: float, epoch: int, epochs: int, shape: str = "linear") -> float:
    """The value at ``epoch`` (0-based) of a schedule going from ``start`` at the first epoch to ``end``
    at the last: linearly, along a half cosine, or geometrically (``exponential``, start and end > 0)."""
    t = epoch / max(epochs - 1, 1)
    if shape == "linear":
        return start + (end - start) * t
    if shape == "cosine":
        return end + (start - end) * 0.5 * (1 + math.cos(math.pi * t))
    if shape == "exponential":
        return start * (end / start) ** t
    raise ValueError(f"unknown schedule shape {shape!r}; valid: {', '.join(SHAPES)}")


def check_shape(shape: str) -> str:
    if shape not in SHAPES:
        raise ValueError(f"unknown schedule shape {shape!r}; valid: {', '.join(SHAPES)}")
    return shape
