"""Search NAS-Bench-201 with several methods and seeds, look the found cells up, and write the standard table.

Each method searches the NB201 cell space (dnas.spaces.nb201) on CIFAR-10 once per seed; the derived cell's
test accuracy after 200 epochs on CIFAR-10, CIFAR-100 and ImageNet16-120 is read from the benchmark
(dnas.bench.nb201). The table has the published form (NAS-Bench-201, Dong & Yang, ICLR 2020, Table 5):
method, the three accuracies as mean +- std over seeds (population std), search time, with the published
numbers beside ours. It goes to benchmarks/out/nb201_compare-*.json (every run, the protocol) and is
appended, as Markdown, to benchmarks/RESULTS.md.

The protocol is the benchmark's own search setting (its code: configs/nas-benchmark/algos/DARTS.config,
GDAS.config, scripts-search/algos/*.sh): the CIFAR-10 training set split in halves (search-train and
search-val), random crop and flip, C = 16, N = 5 cells per stage, batch 64, SGD lr 0.025 cosine-annealed to
0.001, Nesterov momentum 0.9, weight decay 5e-4, alphas by Adam 3e-4, betas (0.5, 0.999), weight decay 1e-3;
50 epochs (DARTS), 240 for GDAS. Everything else is the method's recipe (GDAS's: each step's weight step
first). Two differences remain: the shared CIFAR-10 copy went through JPEG (../shared/data/README.md), and
the benchmark's DARTS-V2 code unrolls its second-order step with plain momentum, dnas the Nesterov step.

    python benchmarks/nb201_compare.py --methods darts-v1,darts-v2,gdas --seeds 0,1,2    # the protocol (a GPU)
    python benchmarks/nb201_compare.py --methods darts-v1 --seeds 0,1 --reduced          # CPU, minutes

--reduced is a protocol a 2-core CPU finishes in minutes: 10 epochs for every method on the first 2,000
training images (1,000 search-train, 1,000 search-val), C = 8, N = 1; batch, optimisers and everything
else as above. --epochs, --subset, --C, --N override either protocol. Its numbers show that the pipeline
works end to end; they are not comparable with the published ones, which the table says in each row.

CIFAR-10 is read from --data (a folder holding cifar-10-batches-py/), by default the shared JPEG copy
converted once into .cache/cifar10, as tests/conftest.py does (DNAS_SHARED_DATA moves the shared folder).
Methods are recipe names (`dnas methods`) or recipe files.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import dnas
from dnas.bench import nb201
from dnas.search import resolve_device
import results
from search_step import device_name

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED_DATA = Path(os.environ.get("DNAS_SHARED_DATA", REPO.parent / "shared" / "data"))

PROTOCOL = {"C": 16, "N": 5, "batch_size": 64, "weight_decay": 5e-4, "nesterov": True}  # the rest: SearchConfig's
EPOCHS = {"gdas": 240}  # the benchmark's GDAS.config; 50 (DARTS.config) for every other method
REDUCED = {"epochs": 10, "subset": 2000, "C": 8, "N": 1}

NB201_TABLE_5 = "NAS-Bench-201 (Dong & Yang, ICLR 2020), Table 5"
COMPILED = "compiled in GENIUS (Zheng et al., arXiv:2304.10970), Table 1, from the method's paper"
#: Published test accuracies (%, mean +- std) of the cells found by searching on CIFAR-10.
PUBLISHED = {
    "darts-v1": ("DARTS-V1", [(54.30, 0.00), (15.61, 0.00), (16.32, 0.00)], NB201_TABLE_5),
    "darts-v2": ("DARTS-V2", [(54.30, 0.00), (15.61, 0.00), (16.32, 0.00)], NB201_TABLE_5),
    "gdas": ("GDAS", [(93.61, 0.09), (70.70, 0.30), (41.71, 0.98)], NB201_TABLE_5),
    "snas": ("SNAS", [(92.77, 0.83), (69.34, 1.98), (43.16, 2.64)], COMPILED),
    "pc-darts": ("PC-DARTS", [(93.41, 0.30), (67.48, 0.89), (41.31, 0.22)], COMPILED),
    "idarts": ("iDARTS", [(93.58, 0.32), (70.83, 0.48), (40.89, 0.68)], COMPILED),
    "drnas": ("DrNAS", [(94.36, 0.00), (73.51, 0.00), (46.34, 0.00)], COMPILED),
    "beta-darts": ("beta-DARTS", [(94.36, 0.00), (73.51, 0.00), (46.34, 0.00)], COMPILED),
}


def cifar10_folder() -> Path:
    """CIFAR-10 in the official layout, converted once from the shared JPEG copy into .cache/cifar10."""
    out = REPO / ".cache" / "cifar10"
    if (out / "cifar-10-batches-py" / "test_batch").is_file():
        return out
    tool = SHARED_DATA.parent / "tools" / "cifar10_from_jpeg.py"
    if not tool.is_file():
        sys.exit(f"CIFAR-10 not found: no {tool}; give --data DIR (the folder holding cifar-10-batches-py/)")
    out.parent.mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="cifar10-", dir=out.parent))  # moved in whole: no half-written cache
    try:
        subprocess.run([sys.executable, str(tool), str(tmp)], check=True, stdout=subprocess.DEVNULL)
        shutil.rmtree(out, ignore_errors=True)
        tmp.replace(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def search_once(method: str, seed: int, settings: dict, run_dir: Path) -> dict:
    t0 = time.time()
    result = dnas.search(space="nb201", method=method, dataset="cifar10", seed=seed, run_dir=run_dir,
                         progress=False, **settings)
    seconds = time.time() - t0
    truth = nb201.lookup(result.genotype)
    return {"method": method, "seed": seed, "arch": str(result.genotype), **truth,
            "search_seconds": round(seconds, 1), "run_dir": str(run_dir)}


def mean_std(values: list[float]) -> str:
    return f"{statistics.fmean(values):.2f} ± {statistics.pstdev(values):.2f}"


def table(runs: list[dict], methods: list[str], protocol: str) -> str:
    lines = ["| method | source | CIFAR-10 | CIFAR-100 | ImageNet16-120 | search time (per run) |",
             "|---|---|---|---|---|---|"]
    for method in methods:
        mine = [r for r in runs if r["method"] == method]
        minutes = [r["search_seconds"] / 60 for r in mine]
        lines.append(f"| {method} | dnas, {protocol}, {len(mine)} seed{'s' * (len(mine) != 1)} | "
                     + " | ".join(mean_std([r[d] for r in mine]) for d in nb201.DATASETS)
                     + f" | {statistics.fmean(minutes):.1f} min |")
        if Path(method).stem in PUBLISHED:
            name, accuracies, source = PUBLISHED[Path(method).stem]
            lines.append(f"| {name} | published: {source} | "
                         + " | ".join(f"{m:.2f} ± {s:.2f}" for m, s in accuracies) + " | |")
    best = [nb201.lookup(nb201.best(d))[d] for d in nb201.DATASETS]
    lines.append("| optimal | the benchmark's best cell per data set | "
                 + " | ".join(f"{a:.2f}" for a in best) + " | |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="darts-v1,darts-v2,gdas", help="comma-separated method names or recipe files")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--reduced", action="store_true", help="the CPU protocol (see above)")
    p.add_argument("--epochs", type=int, help="search epochs for every method")
    p.add_argument("--subset", type=int, help="use only the first N CIFAR-10 training images")
    p.add_argument("--C", type=int, help="initial channels")
    p.add_argument("--N", type=int, help="cells per stage")
    p.add_argument("--data", help="folder holding cifar-10-batches-py/ (default: the shared copy, converted)")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-results", action="store_true", help="do not append to RESULTS.md")
    args = p.parse_args()
    methods, seeds = args.methods.split(","), [int(s) for s in args.seeds.split(",")]
    for method in methods:
        dnas.get_method(method)  # an unknown method fails now, not after the first searches
    overrides = {k: v for k, v in {"epochs": args.epochs, "subset": args.subset, "C": args.C, "N": args.N}.items()
                 if v is not None}
    reduced = args.reduced or bool(overrides)
    settings = {**PROTOCOL, **(REDUCED if args.reduced else {}), **overrides,
                "data": args.data or str(cifar10_folder()), "device": args.device}
    fixed_epochs = settings.pop("epochs", None)
    epochs = {m: fixed_epochs or EPOCHS.get(Path(m).stem, 50) for m in methods}
    protocol = (("reduced protocol: " if reduced else "the benchmark's protocol: ")
                + ", ".join(f"{m} {e} epochs" for m, e in epochs.items())
                + "".join(f", {k}={settings[k]}" for k in ("subset", "C", "N", "batch_size", "weight_decay", "nesterov")
                          if k in settings))

    stamp = time.strftime("%Y%m%d-%H%M%S")
    runs = []
    for method in methods:
        for seed in seeds:
            run_dir = results.OUT / f"nb201-{stamp}" / f"{Path(method).stem}-seed{seed}"
            run = search_once(method, seed, {**settings, "epochs": epochs[method]}, run_dir)
            print(f"{method} seed {seed}: {run['arch']}  cifar10 {run['cifar10']:.2f}  cifar100 {run['cifar100']:.2f}  "
                  f"ImageNet16-120 {run['ImageNet16-120']:.2f}  {run['search_seconds']:.0f}s", flush=True)
            runs.append(run)

    markdown = table(runs, methods, "reduced protocol" if reduced else "the benchmark's protocol")
    device = resolve_device(args.device)
    commit = results.commit()
    command = " ".join(["python benchmarks/nb201_compare.py", *sys.argv[1:]])
    report = {"benchmark": "nb201_compare", "date": time.strftime("%Y-%m-%d"), "device": device_name(device),
              "torch": torch.__version__, "commit": commit, "command": command, "protocol": protocol,
              "settings": settings, "epochs": epochs, "runs": runs, "table": markdown}
    path = results.write_json("nb201_compare", report)
    print(f"\n{markdown}\n\nwrote {path}")
    if not args.no_results:
        with open(results.RESULTS, "a") as f:
            f.write(f"\n## NAS-Bench-201 (benchmarks/nb201_compare.py): {report['date']}, {report['device']}, "
                    f"torch {report['torch']}, commit {commit}\n"
                    f"CIFAR-10 search, {protocol}; test accuracy (%) after 200 epochs of the found cell, from the "
                    f"benchmark; mean ± std over seeds {args.seeds}. `{command}`\n\n{markdown}\n")


if __name__ == "__main__":
    main()
