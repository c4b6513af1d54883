"""``dnas report`` and ``dnas animate``: a search run looked at, as a report, a GIF of its cells, TensorBoard."""
from __future__ import annotations

import argparse

from ..report import animate, write_report, write_tensorboard


def run_report(args: argparse.Namespace) -> None:
    if args.tensorboard:
        for run in args.runs:
            print(f"tensorboard: {write_tensorboard(run, progress=not args.quiet)}")
    path = write_report(args.runs, args.output, progress=not args.quiet)
    print(f"report: {path} (and {path.with_suffix('.md')})")


def run_animate(args: argparse.Namespace) -> None:
    print(f"animation: {animate(args.run, args.output, frame_ms=args.frame_ms, progress=not args.quiet)}")


def register(sub) -> None:
    r = sub.add_parser("report", help="an HTML (and Markdown) report of one search run, or several compared",
                       description="Write a self-contained HTML report of a search run: settings, final genotype "
                                   "and cells, curves, alpha heat maps per edge, skip connections per epoch, cost, "
                                   "NAS-Bench-201 ground truth. Several runs: one report comparing them.")
    r.add_argument("runs", nargs="+", metavar="RUN", help="search run directories")
    r.add_argument("-o", "--output", help="report .html (default RUN/report.html for one run, ./report.html for "
                                          "several); report.md and its figures go beside it")
    r.add_argument("--tensorboard", action="store_true",
                   help="also write TensorBoard events into each run directory (for runs searched without "
                        "--tensorboard); needs `pip install tensorboard`")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=run_report)

    a = sub.add_parser("animate", help="a GIF of a search run's cells, one frame per epoch")
    a.add_argument("run", help="a search run directory")
    a.add_argument("-o", "--output", help="GIF file (default RUN/cells.gif)")
    a.add_argument("--frame-ms", type=int, default=500, help="milliseconds per frame (default 500; the last "
                                                             "frame shows four times as long)")
    a.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    a.set_defaults(func=run_animate)
