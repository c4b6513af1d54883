"""A real search on CIFAR-10 with the readable and the fused DARTS cell: wall time and genotypes.

The whole loop of ``dnas.search`` (data on the device, augmentation, bilevel steps, evaluation, derive,
checkpoints), small enough for the CPU: a subset of the training images, a few epochs, a smaller network.
Both paths start from the same seed. They compute the same thing, but in float32 the grouped convolutions
round differently from the per-edge ones, so the alphas drift apart by rounding over the steps; the row
reports the largest difference of the final alphas, and whether the derived genotypes agree (early in a
search the alphas are near ties, which rounding can flip). Writes JSON to benchmarks/out/ and a row per path
to RESULTS.md.

    python benchmarks/search_e2e.py                       # darts-v1, 2 epochs, 512 images, C=8, 5 cells
    python benchmarks/search_e2e.py --method darts-v2 --epochs 1 --cifar10 DIR
    python benchmarks/search_e2e.py --paths readable,fast --subset 0 --layers 8 --init-channels 16 \
        --batch-size 64 --epochs 2                        # on a GPU: the paper's search, 2 of its 50 epochs
    python benchmarks/search_e2e.py --space nb201 --layers 2 --paths readable,fast   # NAS-Bench-201 network,
                                                          # 2 cells per stage

Paths: readable (SearchCell), fused (spaces/fused.py), fast (``--fast`` of the CLI: fused, and on a GPU
each step replayed from a CUDA graph with the cells' ops on side streams, on a CPU in channels_last); a
suffix -tf32 or -bf16 sets the precision (``--precision``), -cl runs in channels_last (``--channels-last``),
-lanes the fused cells' independent ops on side streams (``side_streams``, ``--side-streams``), -merged
their 3x3 and 5x5 ops as one (``merge_kernel_sizes``, ``--merge-kernel-sizes``). Each row also gives the
seconds of the last epoch and what 50 epochs on all 50,000 training images would take: the last epoch, plus
the steps and evaluation batches a full epoch has beyond the subset's at their steady rate (``EpochParts``),
so that an epoch's fixed costs (a CUDA graph's eager warm-up and capture, deriving the genotype) count once
per epoch, not once per subset's worth of steps; and, once, what the first epoch took beyond the last (a
search's one-off costs: cuDNN timing its algorithms for each new shape, the fused cells' plans). An epoch's
seconds, as metrics.jsonl records them, end before its checkpoint is written: the estimate adds the last
checkpoint's seconds to each epoch (a run writes one after every epoch).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

import dnas
from dnas.genotype import Genotype
from dnas.methods import get_method
from dnas.search import FAST_SIDE_STREAMS, Search, fast_settings, resolve_device
from results import append_rows, commit, interrupt_on_sigterm, write_json
from search_step import DEPTH, device_name, fused_settings, path_options, row_method

HERE = Path(__file__).resolve().parent
SECTION = "## End-to-end search (benchmarks/search_e2e.py): CIFAR-10 search, readable vs fused cell"
COLUMNS = ["date", "device", "torch", "commit", "method", "path", "images", "epochs", "cells x channels", "batch",
           "minutes", "last epoch s (50 full epochs, min; ms per step / eval batch)", "speed-up",
           "max alpha diff to readable (max alpha)", "same genotype", "load", "command"]


class EpochParts:
    """The steady rates of a search's steps and evaluation batches: while active, ``Search.train_epoch`` and
    ``Search.evaluate`` iterate their loaders through ``_Timed``, which marks the time (the device
    synchronised) once the first ``skip`` batches are done: on a GPU those are the CUDA graph's eager warm-up
    steps and its capture. Keeps the last epoch's seconds per step and per evaluation batch after them, and
    the seconds of the last checkpoint written (``Search.save_checkpoint``, after each epoch's seconds end)."""

    def __init__(self, skip: int = 3):
        self.skip = skip
        self.rate, self.batches = {}, {}  # per loader: seconds per batch, and (batch size, batches an epoch)
        self.checkpoint_seconds = 0.0

    def __enter__(self):
        self.saved = Search.train_epoch, Search.evaluate, Search.save_checkpoint
        parts = self

        def train_epoch(search, progress):
            with _Timed(search, "train_loader", parts):
                return parts.saved[0](search, progress)

        def evaluate(search, progress=False):
            with _Timed(search, "eval_loader", parts):
                return parts.saved[1](search, progress)

        def save_checkpoint(search):
            start = _now(search.device)
            parts.saved[2](search)
            parts.checkpoint_seconds = _now(search.device) - start

        Search.train_epoch, Search.evaluate, Search.save_checkpoint = train_epoch, evaluate, save_checkpoint
        return self

    def __exit__(self, *exc):
        Search.train_epoch, Search.evaluate, Search.save_checkpoint = self.saved

    def full_epoch_seconds(self, epoch_seconds: float) -> float:
        """An epoch on all 50,000 CIFAR-10 training images (25,000 per half), from the last epoch's seconds:
        plus, at the steady rates, the steps and evaluation batches it lacks, and its checkpoint."""
        lacking = sum(self.full_seconds(name) - rate * self.batches[name][1] for name, rate in self.rate.items())
        return epoch_seconds + lacking + self.checkpoint_seconds

    def full_seconds(self, name: str) -> float:
        """All 25,000 images of a half through loader ``name`` at its steady rate (0 where it did not run): for
        the evaluation, what a search evaluated after its last epoch only (``--eval-every``) saves in each other."""
        rate = self.rate.get(name)
        return 0.0 if rate is None else rate * math.ceil(25000 / self.batches[name][0])


class _Timed:
    """A loader attribute of a search swapped, while in the ``with``, for one that times the full batches after
    the first ``skip``, as ``parts.rate[name]`` in seconds per batch (all of them, warm-up included, where there
    are no more than ``skip``: an overestimate rather than none). The clock stops before an epoch's last,
    smaller batch: on a GPU it runs eagerly (a CUDA graph has the full batch's shapes), ~0.6 s on an H100, once
    an epoch of any size, so its time belongs to the epoch's seconds, not to the rate the estimate multiplies
    (counted in the rate, it added ~9 ms to each of the 60 timed steps of an 8,000-image epoch)."""

    def __init__(self, search, name: str, parts: EpochParts):
        self.search, self.name, self.parts = search, name, parts
        self.loader, self.count = getattr(search, name), 0

    def __enter__(self):
        setattr(self.search, self.name, self)

    def __exit__(self, *exc):  # interrupted too: the rate of the batches done (search_e2e's report of a timeout)
        setattr(self.search, self.name, self.loader)
        full, end = (self.full, self.end) if self.end is not None else (self.count, _now(self.search.device))
        if full:
            steady = full > self.parts.skip
            start, timed = (self.start, full - self.parts.skip) if steady else (self.first, full)
            self.parts.rate[self.name] = (end - start) / timed
            self.parts.batches[self.name] = self.loader.batch_size, self.count

    def __len__(self):
        return len(self.loader)

    def __getattr__(self, name):  # the generator, the batch size: the loader's
        return getattr(self.loader, name)

    def __iter__(self):
        self.count, self.end, self.first = 0, None, _now(self.search.device)
        for batch in self.loader:
            if self.count == self.parts.skip:
                self.start = _now(self.search.device)
                print(f"{self.name}: first {self.count} batches in {self.start - self.first:.1f} s", file=sys.stderr,
                      flush=True)
            if len(batch[-1]) < self.loader.batch_size and self.end is None:  # the last, smaller one
                self.full, self.end = self.count, _now(self.search.device)
            self.count += 1
            yield batch


def _now(device: torch.device) -> float:
    """The time once the device has done what it was given."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="darts-v1")
    p.add_argument("--cifar10", default=str(HERE.parent / ".cache" / "cifar10"),
                   help="folder holding cifar-10-batches-py/ (default .cache/cifar10, where the tests convert it)")
    p.add_argument("--subset", type=int, default=512, help="training images, halved into search-train/val; 0: all")
    p.add_argument("--paths", default="readable,fused",
                   help="comma-separated, of readable, fused, fast, each optionally followed by -tf32 or -bf16 (the "
                        "precision; default fp32), -cl (channels_last), -lanes (side streams) and -merged (3x3 and "
                        "5x5 ops as one): fast-bf16, fast-cl-lanes, ...")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--space", default="darts", choices=sorted(DEPTH), help="the search space (default darts)")
    p.add_argument("--layers", type=int, default=5, help="cells (default 5); with --space nb201 cells per stage")
    p.add_argument("--init-channels", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--eval-batch-size", type=int,
                   help="batch of each epoch's evaluation on every path (default: the path's: fast on a GPU 256, "
                        "else --batch-size)")
    p.add_argument("--eval-channels-last", action="store_true",
                   help="each epoch's evaluation in NHWC on every path (``eval_channels_last``)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=2, help="of every path's search (default 2)")
    p.add_argument("--no-results", action="store_true", help="do not append to RESULTS.md")
    args = p.parse_args()
    try:
        paths = {path: path_options(path, ("readable", "fused", "fast")) for path in args.paths.split(",")}
    except ValueError as e:
        p.error(str(e))
    device = resolve_device(args.device)
    interrupt_on_sigterm()

    runs, failed = {}, {}  # a path that raises is reported, the others measured; one interrupted ends the runs
    for path, (base, arithmetic, channels_last, lanes, merged, dense, triton_depthwise, batch_norm) in paths.items():
        if base == "fast":
            settings = fast_settings(device, get_method(args.method), args.space, dense)
        else:
            settings = {"fused": base == "fused"}
        if channels_last:
            settings["channels_last"] = True
        if lanes:
            settings["side_streams"] = FAST_SIDE_STREAMS
        if merged:
            settings["merge_kernel_sizes"] = True
        if dense:
            settings["dense_samples"] = True
        if args.eval_batch_size:
            settings["eval_batch_size"] = args.eval_batch_size
        if args.eval_channels_last:
            settings["eval_channels_last"] = True
        cell_settings = fused_settings(False, False, False, triton_depthwise, batch_norm)
        with tempfile.TemporaryDirectory() as tmp, EpochParts() as parts, cell_settings:
            t0 = time.perf_counter()
            try:
                result = dnas.search(space=args.space, method=args.method, dataset="cifar10", data=args.cifar10,
                                     run_dir=Path(tmp) / path, progress=False, epochs=args.epochs,
                                     subset=args.subset or None, batch_size=args.batch_size, device=str(device),
                                     seed=args.seed, C=args.init_channels, **{DEPTH[args.space][0]: args.layers},
                                     precision=arithmetic, **settings)
            except Exception as e:
                failed[path] = f"{type(e).__name__}: {e}"
                continue
            except KeyboardInterrupt:  # Ctrl-C, or `timeout`: the paths done are reported, and this one's rates
                failed[path] = f"interrupted after {time.perf_counter() - t0:.0f} s" + "".join(
                    f"; {name} {parts.batches[name][1]} batches, {1000 * rate:.1f} ms each"
                    for name, rate in parts.rate.items())
                break
            alphas = json.loads((Path(tmp) / path / "alphas.jsonl").read_text().splitlines()[-1])["alphas"]
            epoch_seconds = result.metrics[-1]["seconds"]
            once = max(result.metrics[0]["seconds"] - epoch_seconds, 0.0)  # the first epoch's one-off costs
            full = parts.full_epoch_seconds(epoch_seconds)
            runs[path] = {"seconds": round(time.perf_counter() - t0, 1), "epoch_seconds": epoch_seconds,
                          "ms_per_step": round(1000 * parts.rate.get("train_loader", math.nan), 1),
                          "ms_per_eval_batch": round(1000 * parts.rate.get("eval_loader", math.nan), 1),
                          "first_epoch_extra_seconds": round(once, 1),
                          "checkpoint_seconds": round(parts.checkpoint_seconds, 2),
                          "minutes_for_50_full_epochs": round((once + 50 * full) / 60, 1),
                          "minutes_evaluated_after_the_last_only": round(
                              (once + 50 * full - 49 * parts.full_seconds("eval_loader")) / 60, 1),
                          "genotype": str(result.genotype),
                          "final_val_acc": result.metrics[-1]["val_acc"],
                          "alphas": torch.tensor([alphas[t] for t in sorted(alphas)])}
            print(f"{path}: {runs[path]['seconds']} s, last epoch {epoch_seconds} s{_rates(runs[path])} per step / "
                  f"eval batch; 50 full epochs {runs[path]['minutes_for_50_full_epochs']} min (evaluated after the "
                  f"last only {runs[path]['minutes_evaluated_after_the_last_only']} min)", file=sys.stderr,
                  flush=True)
    if not runs:
        raise SystemExit(f"every path failed: {failed}")
    base = runs.get("readable", next(iter(runs.values())))  # the reference: readable, else the first path
    reference = base["alphas"]
    for r in runs.values():
        r["speedup_over_readable"] = round(base["seconds"] / r["seconds"], 2)
        r["same_genotype_as_readable"] = r["genotype"] == base["genotype"]
        r["edges_alike_readable"] = edges_alike(r["genotype"], base["genotype"])
        r["max_alpha_diff_to_readable"] = float((r.pop("alphas") - reference).abs().max())
        r["max_abs_alpha"] = float(reference.abs().max())
    report = {"benchmark": "search_e2e", "device": device_name(device), "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d"), "load_average": os.getloadavg(), "settings": vars(args),
              "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "runs": runs, "failed": failed}
    write_json(f"search_e2e-{device.type}", report)
    print(json.dumps(report, indent=1))
    if not args.no_results:
        append_rows(SECTION, COLUMNS, table_rows(report, commit()))


def table_rows(report: dict, measured: str) -> list[str]:
    """The RESULTS.md rows of a report (of this run, or a JSON brought back from a GPU machine)."""
    a = report["settings"]
    method = row_method(a["method"], a.get("space", "darts"))  # reports from before --space have none
    return [f"| {report['date']} | {report['device']} | torch {report['torch']} | {measured} | {method} | "
            f"{path} | {a['subset']} | {a['epochs']} | {a['layers']} x {a['init_channels']} | {a['batch_size']} | "
            f"{r['seconds'] / 60:.2f} | {r['epoch_seconds']:.1f} ({r['minutes_for_50_full_epochs']}{_rates(r)}) | "
            f"{r['speedup_over_readable']} | "
            f"{r['max_alpha_diff_to_readable']:.1e} ({r['max_abs_alpha']:.1e}) | "
            f"{r['same_genotype_as_readable']}{_alike(r)} | "
            f"{report['load_average'][0]:.1f} | `python benchmarks/{report['command']}` |"
            for path, r in report["runs"].items()]


def edges_alike(genotype: str, reference: str) -> str:
    """How many of the chosen edges (op, input, node; both cell types) of ``genotype`` the ``reference``
    genotype chose too, as "k/n"."""
    mine, theirs = Genotype.parse(genotype), Genotype.parse(reference)
    cells = ("normal", "reduce")
    alike = sum(len(set(mine.edges(c)) & set(theirs.edges(c))) for c in cells)
    return f"{alike}/{sum(len(mine.edges(c)) for c in cells)}"


def _alike(run: dict) -> str:
    """The edges alike, where reported (not by reports from before 2026-11-27)."""
    return f" ({run['edges_alike_readable']} edges)" if "edges_alike_readable" in run else ""


def _rates(run: dict) -> str:
    """The steady rates behind the 50-epoch estimate (reports from before ``EpochParts`` have none)."""
    return f"; {run['ms_per_step']} / {run['ms_per_eval_batch']} ms" if "ms_per_step" in run else ""


if __name__ == "__main__":
    main()
