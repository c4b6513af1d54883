"""Every recipe of the method zoo searched on real CIFAR-10, reduced to what a 2-core CPU finishes.

Per recipe: the derived genotype, the skip connections in its normal cell, the last search-val accuracy
and the search time, as JSON in benchmarks/out/ and as rows appended to benchmarks/RESULTS.md. The reduced
protocol (2 epochs, the first 640 training images, C = 4, 5 cells, batch 32, warm-up cut to 1 epoch)
keeps each recipe's own parts and settings otherwise (P-DARTS runs its three stages of 5, 11, 17 cells at
one epoch each; DARTS-PT projects with benchmarks/darts-pt-quick.toml); its numbers show that each
method runs end to end on real data, not how good its cells are. On a GPU, `--full` runs each recipe's
own protocol (50 epochs of the whole training set, its paper's batch size).

    python benchmarks/recipes_cifar.py                                  # every recipe, reduced (CPU)
    python benchmarks/recipes_cifar.py --methods darts-v1,pc-darts --full   # a GPU
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import dnas
from dnas.methods import builtin_methods
from dnas.search import resolve_device
import results
from nb201_compare import cifar10_folder
from search_step import device_name

HERE = Path(__file__).resolve().parent
REDUCED = {"epochs": 2, "subset": 640, "C": 4, "layers": 5, "batch_size": 32, "arch_warmup_epochs": 1}
QUICK = {"darts-pt": str(HERE / "darts-pt-quick.toml")}  # reduced: DARTS-PT with its projection shortened


def search_once(method: str, settings: dict, data: Path, run_dir: Path) -> dict:
    if method == "p-darts" and "epochs" in settings:  # reduced: its three stages at one epoch each
        settings = {**settings, "epochs": 1, "arch_warmup_epochs": 0}
    recipe = QUICK.get(method, method) if "subset" in settings else method
    t0 = time.time()
    result = dnas.search(method=recipe, dataset="cifar10", data=str(data), run_dir=run_dir, progress=False,
                         **settings)
    last = result.metrics[-1]
    return {"method": method, "genotype": str(result.genotype), "skip_connect_normal": last["skip_connect_normal"],
            "val_acc": round(last["val_acc"], 4), "epochs_run": len(result.metrics),
            "search_seconds": round(time.time() - t0, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default=",".join(sorted(builtin_methods())))
    p.add_argument("--full", action="store_true", help="each recipe's own protocol (a GPU)")
    p.add_argument("--data", type=Path, help="folder holding cifar-10-batches-py/ (default: the shared copy)")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-results", action="store_true", help="do not append to RESULTS.md")
    args = p.parse_args()
    device = resolve_device(args.device)
    settings = {"device": args.device, **({} if args.full else REDUCED)}
    data = args.data or cifar10_folder()
    rows = []
    with tempfile.TemporaryDirectory() as runs:
        for method in args.methods.split(","):
            rows.append(search_once(method, settings, data, Path(runs) / method))
            print(json.dumps(rows[-1]), flush=True)
    report = {"benchmark": "recipes_cifar", "device": device_name(device), "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d"), "protocol": "full" if args.full else REDUCED, "results": rows}
    results.write_json("recipes_cifar", report)
    if not args.no_results:
        commit = results.commit()
        protocol = "each recipe's own" if args.full else ", ".join(f"{k}={v}" for k, v in REDUCED.items())
        with open(results.RESULTS, "a") as f:
            f.write(f"\n## Method zoo on CIFAR-10 (benchmarks/recipes_cifar.py): {report['date']}, {report['device']}, "
                    f"torch {report['torch']}, commit {commit}\nProtocol: {protocol}. "
                    f"`python benchmarks/recipes_cifar.py{' --full' if args.full else ''}`\n\n"
                    "| recipe | skips (normal) | search-val acc | epochs | search time (s) | genotype |\n"
                    "|---|---|---|---|---|---|\n")
            for r in rows:
                f.write(f"| {r['method']} | {r['skip_connect_normal']} | {r['val_acc']} | {r['epochs_run']} | "
                        f"{r['search_seconds']} | `{r['genotype']}` |\n")


if __name__ == "__main__":
    main()
