"""Checkpoints of long runs (search, training): written atomically, read back with a clear error; and the
run directories they live in: which a new run may take, one process at a time, what to do after Ctrl-C.

A checkpoint is a dict with a ``format`` tag, so that a file of another kind or version is refused, and an
``rng`` entry (torch, CUDA and the run's own generators), so that a resumed run continues exactly.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .settings import warn

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read: corrupted, or not of the run's kind."""


LOCK = ".lock"  # a run directory's lock file, locked while a process runs there
BEFORE_FIRST_CHECKPOINT = ("config.json", "genotype.json", "genotype.txt", LOCK, "events.out.tfevents.")
# what a run writes before its first checkpoint (training: the genotype; --tensorboard: its event file)


def check_new_run_dir(run_dir: str | os.PathLike, command: str) -> None:
    """A new run may write into ``run_dir`` when it is missing or empty, or holds only what a run writes
    before its first checkpoint (``BEFORE_FIRST_CHECKPOINT``; P-DARTS's stages too): such a run nothing can
    resume. Otherwise FileExistsError: continue the run there (``dnas {command} --resume``) or choose
    another directory."""
    run_dir = Path(run_dir).expanduser()
    if run_dir.exists() and any(p.is_file() and not p.name.startswith(BEFORE_FIRST_CHECKPOINT)
                                for p in run_dir.rglob("*")):
        raise FileExistsError(f"run directory {run_dir} is not empty; continue it with resume={str(run_dir)!r} "
                              f"(dnas {command} --resume {run_dir}) or choose another")


_running = [0]  # runs within runs (P-DARTS's stages): only the outermost says where to resume


def guarded_run(command: str) -> Callable:
    """Decorates a run's ``run`` method: one process at a time in its directory (``locked``), and on Ctrl-C
    (KeyboardInterrupt, raised on) a word on whether the run can be resumed from its directory (its
    ``resumable()``, else: a checkpoint.pt there) and how."""
    def decorate(run: Callable) -> Callable:
        @functools.wraps(run)
        def wrapped(self, *args, **kwargs):
            _running[0] += 1
            try:
                with locked(self.run_dir):
                    return run(self, *args, **kwargs)
            except KeyboardInterrupt:
                if _running[0] == 1:
                    done = (self.resumable() if hasattr(self, "resumable")
                            else (self.run_dir / "checkpoint.pt").is_file())
                    print(f"\n{self.run_dir}: " + (
                        f"the last completed epoch is checkpointed: continue with `dnas {command} --resume "
                        f"{self.run_dir}`" if done else "no epoch completed, nothing to resume: start it again "
                        "(in the same directory if you like)"), file=sys.stderr, flush=True)
                raise
            finally:
                _running[0] -= 1
        return wrapped
    return decorate


_held: dict[Path, int] = {}  # the run directories this process holds the lock of -> the thread that holds it


@contextlib.contextmanager
def locked(run_dir: Path):
    """Holds ``run_dir``/.lock, an advisory lock the system drops when the process ends, however it ends: a
    second process on the same run directory (a --resume while the run goes on) is refused before it
    touches a file, rather than appending epochs beside the first's. Re-entrant within a thread (``resume``
    locks before it reads the checkpoint, then runs); another thread of the process is refused as another
    process is. Without ``fcntl`` (Windows) there is no lock. A
    directory it made and the run left with nothing in it but the lock file (a run that failed before any
    work) is removed again."""
    run_dir = Path(run_dir).expanduser()
    key = run_dir.resolve()
    if _held.get(key) == threading.get_ident():
        yield
        return
    if key in _held:
        raise FileExistsError(f"{run_dir} is in use by another run of this process (another thread); let it finish "
                              f"or stop it first")
    made = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        if fcntl is None:
            yield
        else:
            with _lock_file(run_dir):
                _held[key] = threading.get_ident()
                try:
                    yield
                finally:
                    del _held[key]
    finally:
        if made and {p.name for p in run_dir.iterdir()} <= {LOCK}:
            shutil.rmtree(run_dir)


@contextlib.contextmanager
def _lock_file(run_dir: Path):
    """``run_dir``/.lock locked, with its owner's pid in it for the message of a refused second process."""
    path = run_dir / LOCK
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise FileExistsError(f"{run_dir} is in use by another dnas process ({f.read().strip() or 'running'}); "
                                  f"let it finish or stop it first") from None
        f.truncate(0)
        f.write(f"pid {os.getpid()}")
        f.flush()
        yield  # the file stays: removed, a process that opened it just before could lock the removed file


def check_resume_settings(settings: dict[str, Any], allowed: tuple[str, ...] = ("device", "data")) -> None:
    """A resumed run keeps its saved settings: ``settings`` (those given to the resume) may name only the
    ``allowed`` ones, which do not change what the run computes (``data``: where its data is now), and
    ``data`` is made absolute, as a new run's is."""
    changed = set(settings) - set(allowed)
    if changed:
        raise ValueError(f"a resumed run keeps its settings; only {', '.join(allowed)} may change, "
                         f"not {sorted(changed)}")
    if settings.get("data") is not None:
        settings["data"] = absolute(settings["data"])


def absolute(path: str | os.PathLike) -> str:
    """``path`` absolute, ``~`` expanded: a data folder as a run records it, so that it resumes (and is
    tested) from any working folder."""
    return os.path.abspath(os.path.expanduser(os.fspath(path)))


def resume(runner, progress: bool):
    """``runner.run(progress)`` after ``runner.load_checkpoint()``, both under its directory's lock: loading
    trims the metrics to the checkpoint's epoch, which a second process must not do to a live run. Warns where
    the process differs from the one that ran before (``environment``)."""
    with locked(runner.run_dir):
        config = runner.run_dir / "config.json"
        before = read_config(config).get("environment", {}) if config.is_file() else {}
        now = environment(getattr(runner, "device", None))  # (P-DARTS's stages have their own)
        changed = [f"{k} {before[k]} -> {now[k]}" for k in now if k in before and before[k] != now[k]]
        if changed:
            warn(f"{runner.run_dir} goes on in another environment ({', '.join(changed)}): its float "
                 f"sums round otherwise, so it may not end exactly as an uninterrupted run")
        runner.load_checkpoint()
        return runner.run(progress)


def environment(device=None) -> dict[str, Any]:
    """What a run's float results depend on beside its settings and seed, recorded in its config.json: the
    versions of dnas and torch, the device (where given) and the CPU threads (each splits sums its own way)."""
    from . import __version__

    device = {} if device is None else {"device": str(device)}
    return {"dnas": __version__, "torch": torch.__version__, **device, "threads": torch.get_num_threads()}


def read_config(path: Path) -> dict[str, Any]:
    """A run's config.json, or a ValueError naming the file when it is not JSON."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); fix or restore it, the run's other files are "
                         f"untouched") from None


def config_of_run(genotype: Any) -> dict[str, Any]:
    """The config.json of a run directory given where a genotype is taken ({} for a zoo name, a genotype file
    or the text form): the data a search ran on, a training run's network. A broken one is a ValueError."""
    if not isinstance(genotype, (str, os.PathLike)):
        return {}
    path = Path(genotype).expanduser() / "config.json"
    try:
        if not path.is_file():
            return {}
    except OSError:  # the text form of a genotype, too long a name for a path
        return {}
    saved = read_config(path)
    return saved if isinstance(saved, dict) and isinstance(saved.get("config"), dict) else {}


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


def _reason(error: Exception) -> str:
    """The first line of what ``error`` says, not the advice torch's unpickler gives around it."""
    text = str(error).split("WeightsUnpickler error:")[-1]
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def load(path: Path, fmt: str, device: torch.device, kind: str, restore: Callable[[dict[str, Any]], None]) -> dict:
    """Read the checkpoint at ``path`` and ``restore`` the run from it; any failure is a CheckpointError
    naming the file (the run's other files are left as they are)."""
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: the run has not completed an epoch; start it anew, in "
                                f"{path.parent} if you like (a run without a checkpoint can be started over there)")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        if state.get("format") != fmt:
            raise ValueError(f"format {state.get('format')!r}, expected {fmt!r}")
        restore(state)
    except Exception as e:
        raise CheckpointError(f"{path} is corrupted or not a dnas {kind} checkpoint ({type(e).__name__}: "
                              f"{_reason(e)}); the run's other files are untouched") from None
    return state


def load_weights(model: torch.nn.Module, path: Path, what: str) -> None:
    """``model``'s weights from ``path``, a file of its state_dict; a CheckpointError in one line where it is
    not one (a run's checkpoint, another network's weights, not a PyTorch file), naming what differs."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path} is not a file of weights ({type(e).__name__}: {_reason(e)})") from None
    if isinstance(state, dict) and "format" in state and "model" in state:
        raise CheckpointError(f"{path} is a run's checkpoint (its state to resume from), not {what}'s weights: "
                              f"give --weights last or best (the run's last.pt, best.pt), or a file of a state_dict")
    expected = model.state_dict()
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not {what}'s weights (a state_dict)")
    missing, unexpected = expected.keys() - state.keys(), state.keys() - expected.keys()
    shapes = [k for k in expected.keys() & state.keys()
              if isinstance(state[k], torch.Tensor) and state[k].shape != expected[k].shape]
    if missing or unexpected or shapes:
        differences = [f"{n} {kind}, e.g. {sorted(keys)[0]!r}" for n, kind, keys in (
            (len(missing), "of its tensors missing", missing), (len(unexpected), "not its own", unexpected),
            (len(shapes), "of other shapes", shapes)) if keys]
        raise CheckpointError(f"{path} is not {what}'s weights ({'; '.join(differences)})")
    model.load_state_dict(state)
