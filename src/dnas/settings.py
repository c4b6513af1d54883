"""Process-wide settings changed for a while: the one way dnas sets a flag and puts it back."""
from __future__ import annotations

import contextlib


@contextlib.contextmanager
def temporarily(holder, name: str, value):
    """``holder.name`` set to ``value`` within, put back after (also when what runs within raises): PyTorch's
    flags a search sets while it runs, and dnas's own module settings (``ops.second_derivatives``,
    ``spaces.fused.side_streams``)."""
    saved = getattr(holder, name)
    setattr(holder, name, value)
    try:
        yield
    finally:
        setattr(holder, name, saved)
