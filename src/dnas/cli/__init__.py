"""``dnas``: the command line, a thin layer over the Python API. Each module here adds its commands."""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import signal
import sys
import threading
import warnings
from pathlib import Path

from .. import __version__
from ..data import DataError
from ..genotype import GenotypeError
from ..registry import UnknownNameError
from ..report import TensorBoardNotFound
from ..checkpoint import CheckpointError
from . import bench, evaluate, report, search

COMMAND_MODULES = (search, evaluate, bench, report)


RESUME_KEEPS = {"command", "func", "resume", "device", "data", "tensorboard", "quiet", "imports"}  # what --resume
# may be given with
IMPORT_HELP = ("import a module of your own first, by name (from this folder or the Python path) or as a .py "
               "file: the ops, parts or spaces it registers (docs/adding-a-method.md); repeatable")


class Parser(argparse.ArgumentParser):
    """An argument parser that takes options only as spelt out: abbreviated, ``--data`` would be read as
    ``--dataset`` by a command that has no ``--data``. Its subcommands' parsers are of this class too."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="dnas", description="Differentiable neural architecture search.")
    parser.add_argument("--version", action="version", version=f"dnas {__version__}")
    parser.add_argument("--import", dest="imports_first", action="append", default=[], metavar="MODULE",
                        help=IMPORT_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    for command in sub.choices.values():  # after the command too: dnas search --import myparts ...
        command.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                             help=IMPORT_HELP)
    parser.commands = sub.choices  # command name -> its parser
    return parser


def import_modules(names: list[str]) -> None:
    """Import each of ``names``: a .py file, or a module importable from the working folder or the Python
    path. Its registrations (``OPS.register``, ``RELAXATIONS.register``, ...) are then known to the command."""
    for name in names:
        if name.endswith(".py"):
            path = Path(name).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"--import {name}: no such file")
            spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[path.stem] = module
            spec.loader.exec_module(module)
            continue
        if os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name.split(".")[0]:
                raise  # the module was found, and it imports one that is not
            raise ValueError(f"--import {name}: no module {name!r} in {os.getcwd()} or on the Python path; give a "
                             f"module name or a .py file") from None


def given_options(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str] | None) -> list[str]:
    """The options of ``args``' command that ``argv`` gave, whatever their values (a default typed out too):
    ``argv`` parsed again with the command's defaults suppressed."""
    options = [a for a in parser.commands[args.command]._actions if a.option_strings and a.dest in vars(args)]
    defaults = [a.default for a in options]
    for a in options:
        a.default = argparse.SUPPRESS  # on the action, not by set_defaults: argparse would convert that string
    try:
        return [dest for dest in vars(parser.parse_args(argv)) if dest in {a.dest for a in options}]
    finally:
        for a, default in zip(options, defaults):
            a.default = default


class Terminated(KeyboardInterrupt):
    """SIGTERM (``timeout``, a job scheduler's notice) as a Ctrl-C: the run checkpointed says how to resume."""


def _terminate(signum, frame):
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # said by the command's parser, whose usage lists its options
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    main_thread = threading.current_thread() is threading.main_thread()  # where Python takes signals
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    formatwarning, warnings.formatwarning = warnings.formatwarning, _format_warning
    try:
        args.imports = args.imports_first + args.imports
        del args.imports_first
        import_modules(args.imports)
        if {"run_dir", "runs"} <= set(given_options(parser, args, argv)):
            raise ValueError("--run-dir names the run's own directory; --runs, the folder of new run directories, "
                             "does not apply with it")
        if getattr(args, "resume", None):  # a resumed run keeps its settings: refuse others, not drop them
            given = [f"--{dest.replace('_', '-')}" for dest in given_options(parser, args, argv)
                     if dest not in RESUME_KEEPS]
            if given:
                also = ", --tensorboard" if hasattr(args, "tensorboard") else ""
                raise ValueError(f"a resumed run keeps its settings: drop {', '.join(given)} (only --device, --data "
                                 f"(where the data is now){also} and -q go with --resume)")
        args.func(args)
    except KeyboardInterrupt as e:  # the run has said what it checkpointed (Search.run, Trainer.run)
        print("\nterminated" if isinstance(e, Terminated) else "\ninterrupted", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    except (UnknownNameError, DataError, GenotypeError, CheckpointError, OSError, ValueError,
            TensorBoardNotFound) as e:  # OSError: a file not found, already there, a directory, not writable
        own = isinstance(e, UnknownNameError) or isinstance(e, GenotypeError) and "unknown op" in str(e)
        hint = " (one of your own? import the module that registers it: --import MODULE)" if own else ""
        print(f"dnas: error: {e}{hint}", file=sys.stderr)
        return 2
    finally:
        warnings.formatwarning = formatwarning
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    return 0


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """A warning as the command's own line, as its errors are (Python's names the file and line that warned)."""
    return f"dnas: warning: {message}\n"
