"""benchmarks/RESULTS.md, as the scripts here write it: each appends its rows to its own table, and names
the commit it measured; and the JSON record of each run, in benchmarks/out/. ``DNAS_BENCHMARK_RESULTS`` and
``DNAS_BENCHMARK_OUT`` put them elsewhere (the tests run the scripts so)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = Path(os.environ.get("DNAS_BENCHMARK_RESULTS", HERE / "RESULTS.md"))  # where the rows go
OUT = Path(os.environ.get("DNAS_BENCHMARK_OUT", HERE / "out"))  # the runs' JSON (and run directories)


def write_json(name: str, report: dict) -> Path:
    """``report`` as ``OUT/<name>-<date>-<time>.json`` (``DNAS_BENCHMARK_OUT`` sets another folder than
    benchmarks/out): the whole record of a run, of which RESULTS.md gets the rows."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    return path


def commit() -> str:
    """The short hash of the checked-out commit."""
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=HERE).stdout.strip()


def append_rows(heading: str, columns: list[str], rows: list[str]) -> None:
    """Add ``rows`` at the end of the first table of the section whose heading line starts with ``heading``;
    a missing section is added at the end of the file, its table headed by ``columns``."""
    lines = RESULTS.read_text().splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(heading)), None)
    if start is None:
        start = len(lines) + 1
        lines += ["", heading, "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("|"))
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    lines[end:end] = rows
    RESULTS.write_text("\n".join(lines) + "\n")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised by ``interrupt_on_sigterm``; Ctrl-C's SIGINT raises a plain KeyboardInterrupt."""


def interrupt_on_sigterm() -> None:
    """Make SIGTERM (what ``timeout`` sends) a KeyboardInterrupt, which the scripts catch to report what they
    measured before it: on a lent GPU a stage that runs out of time still brings its rows back."""
    def interrupt(signum, frame):
        raise Terminated
    signal.signal(signal.SIGTERM, interrupt)
