"""``dnas bench``: ground truth from tabular benchmarks."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..bench import nb201
from ..zoo import load_genotype


def run_nb201(args: argparse.Namespace) -> None:
    arch = args.arch
    if Path(arch).expanduser().exists():  # a genotype file, or a search run's directory
        arch, _ = load_genotype(arch)
        if not isinstance(arch, nb201.NB201Genotype):
            raise ValueError(f"{args.arch} holds a {type(arch).__name__}, not a NAS-Bench-201 cell (a search "
                             f"with --space nb201 finds one)")
    truth = nb201.lookup(arch)
    print(f"arch: {nb201.as_genotype(arch)}")
    print(f"index: {truth.pop('index')}")
    for dataset, accuracy in truth.items():
        print(f"{dataset}: {accuracy:.4f}")


def register(sub) -> None:
    b = sub.add_parser("bench", help="look up a cell's true accuracy in a tabular benchmark",
                       description="Look up a cell in a tabular benchmark.")
    benchmarks = b.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    n = benchmarks.add_parser("nb201", help="NAS-Bench-201: test accuracy after 200 epochs",
                              description="NAS-Bench-201 (Dong & Yang, ICLR 2020): a cell's test accuracy (%) after "
                                          "200 epochs on CIFAR-10, CIFAR-100 and ImageNet16-120, mean over the "
                                          "benchmark's seeds, and its index in the benchmark.")
    n.add_argument("--arch", required=True, help=f"the benchmark's arch string, e.g. '{nb201.EXAMPLE}', a "
                                                 f"genotype file of one, or the directory of a --space nb201 search")
    n.set_defaults(func=run_nb201)
