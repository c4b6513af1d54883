"""``dnas``: the command line, a thin layer over the Python API. Each module here adds its commands."""
from __future__ import annotations

import argparse
import signal
import sys
import threading

from .. import __version__
from ..data import DataError
from ..genotype import GenotypeError
from ..registry import UnknownNameError
from ..report import TensorBoardNotFound
from ..checkpoint import CheckpointError
from . import bench, evaluate, report, search

COMMAND_MODULES = (search, evaluate, bench, report)


RESUME_KEEPS = {"command", "func", "resume", "device", "tensorboard", "quiet"}  # what --resume may be given with


class Parser(argparse.ArgumentParser):
    """An argument parser that takes options only as spelt out: abbreviated, ``--data`` would be read as
    ``--dataset`` by a command that has no ``--data``. Its subcommands' parsers are of this class too."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="dnas", description="Differentiable neural architecture search.")
    parser.add_argument("--version", action="version", version=f"dnas {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    parser.commands = sub.choices  # command name -> its parser
    return parser


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
    args = parser.parse_args(argv)
    main_thread = threading.current_thread() is threading.main_thread()  # where Python takes signals
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        if {"run_dir", "runs"} <= set(given_options(parser, args, argv)):
            raise ValueError("--run-dir names the run's own directory; --runs, the folder of new run directories, "
                             "does not apply with it")
        if getattr(args, "resume", None):  # a resumed run keeps its settings: refuse others, not drop them
            given = [f"--{dest.replace('_', '-')}" for dest in given_options(parser, args, argv)
                     if dest not in RESUME_KEEPS]
            if given:
                also = ", --tensorboard" if hasattr(args, "tensorboard") else ""
                raise ValueError(f"a resumed run keeps its settings: drop {', '.join(given)} (only --device{also} "
                                 f"and -q go with --resume)")
        args.func(args)
    except KeyboardInterrupt as e:  # the run has said what it checkpointed (Search.run, Trainer.run)
        print("\nterminated" if isinstance(e, Terminated) else "\ninterrupted", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    except (UnknownNameError, DataError, GenotypeError, CheckpointError, OSError, ValueError,
            TensorBoardNotFound) as e:  # OSError: a file not found, already there, a directory, not writable
        print(f"dnas: error: {e}", file=sys.stderr)
        return 2
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    return 0
