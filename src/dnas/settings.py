"""Process-wide settings changed for a while: the one way dnas sets a flag and puts it back."""
from __future__ import annotations

import contextlib
import logging
import sys
import warnings


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


def bars_off(progress: bool) -> bool | None:
    """tqdm's ``disable`` for a run's ``progress``: off when not asked for, and where the output is no terminal
    (None: tqdm's own test), as in a log file each redraw of a bar would be kept."""
    return None if progress else True


@contextlib.contextmanager
def own_torch_state():
    """A run's own process-wide torch state, the caller's put back after: the random generators (a run seeds
    them with its seed; CUDA's where the caller has used CUDA), grad mode (on: a search differentiates, even
    called under ``torch.no_grad()``) and the default dtype (float32: the networks' and the images'). Used as
    a decorator of ``dnas.search`` and ``dnas.train``."""
    import torch

    dtype = torch.get_default_dtype()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices), torch.enable_grad():
        torch.set_default_dtype(torch.float32)
        try:
            yield
        finally:
            torch.set_default_dtype(dtype)


def warn(message: str) -> None:
    """A UserWarning attributed to the caller's own line: the first frame outside dnas (and the context managers
    it runs in), so that a script's or notebook's warning filters by module and line apply to it."""
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_globals.get("__name__", "").partition(".")[0] in ("dnas", "contextlib"):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, UserWarning, stacklevel=level)


#: A run's lines (what it reads and runs, each epoch's measures), to standard output; a process that wants
#: them elsewhere or not at all says so to the logger, ``logging.getLogger("dnas").setLevel(logging.WARNING)``.
LOG = logging.getLogger("dnas")


class _ToStdout(logging.Handler):
    """Each line to the ``sys.stdout`` of the moment (a redirected or captured one too), flushed."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stdout, flush=True)


if not LOG.handlers:
    LOG.addHandler(_ToStdout())
    LOG.setLevel(logging.INFO)
    LOG.propagate = False


def say(line: str) -> None:
    """One of a run's lines, through ``LOG``."""
    LOG.info(line)
