"""Search spaces: one module each, registered by name. ``SPACES.get(name)`` is the supernet class."""
from ..registry import Registry

SPACES = Registry("search space")

from . import darts  # noqa: E402,F401  (registers "darts")
from . import nb201  # noqa: E402,F401  (registers "nb201")
from . import darts_rnn  # noqa: E402,F401  (registers "darts-rnn")

__all__ = ["SPACES"]
