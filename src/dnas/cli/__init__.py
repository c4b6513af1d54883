"""``dnas``: the command line, a thin layer over the Python API. Each module here adds its commands."""
from __future__ import annotations

import argparse
import sys

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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "resume", None):  # a resumed run keeps its settings: refuse others, not drop them
            command = parser.commands[args.command]
            given = [f"--{dest.replace('_', '-')}" for dest, value in vars(args).items()
                     if dest not in RESUME_KEEPS and value != command.get_default(dest)]
            if given:
                also = ", --tensorboard" if hasattr(args, "tensorboard") else ""
                raise ValueError(f"a resumed run keeps its settings: drop {', '.join(given)} (only --device{also} "
                                 f"and -q go with --resume)")
        args.func(args)
    except KeyboardInterrupt:  # the run has said what it checkpointed (Search.run, Trainer.run)
        print("\ninterrupted", file=sys.stderr)
        return 130
    except (UnknownNameError, DataError, GenotypeError, CheckpointError, FileNotFoundError, FileExistsError,
            ValueError, TensorBoardNotFound) as e:
        print(f"dnas: error: {e}", file=sys.stderr)
        return 2
    return 0
