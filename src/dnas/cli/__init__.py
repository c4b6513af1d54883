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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dnas", description="Differentiable neural architecture search.")
    parser.add_argument("--version", action="version", version=f"dnas {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        print("\ninterrupted; the last completed epoch is checkpointed: continue with `--resume RUN_DIR`",
              file=sys.stderr)
        return 130
    except (UnknownNameError, DataError, GenotypeError, CheckpointError, FileNotFoundError, FileExistsError,
            ValueError, TensorBoardNotFound) as e:
        print(f"dnas: error: {e}", file=sys.stderr)
        return 2
    return 0
