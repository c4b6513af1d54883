"""Train a genotype's network (DARTS_V2 by default) on real data, reduced to a few CPU minutes, and record
accuracy and time.

A real-data check of the evaluation pipeline (network, training loop, test): the DARTS CIFAR training
settings (auxiliary head, cutout 16, drop-path, cosine lr, SGD) on a smaller network, fewer images and
epochs. Writes the run directory and a JSON report to benchmarks/out/ and a row per data set to RESULTS.md.

    python benchmarks/train_eval.py                                    # Fashion-MNIST and CIFAR-10
    python benchmarks/train_eval.py --datasets fashion-mnist --epochs 5
    python benchmarks/train_eval.py --cifar10 DIR                      # DIR holds cifar-10-batches-py/
    python benchmarks/train_eval.py --genotype runs/<search-run>       # a searched cell (any --genotype form)

The CIFAR-10 copy is the one the tests convert into .cache/cifar10 (python3 ../shared/tools/cifar10_from_jpeg.py
.cache/cifar10); its images went through JPEG, so accuracies are close to, not equal to, the official set's.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import dnas
from dnas.search import resolve_device
import results
from search_step import device_name

HERE = Path(__file__).resolve().parent
SECTION = "## Training a genotype (benchmarks/train_eval.py): reduced networks on real data, the paper's CIFAR settings"
COLUMNS = ["date", "device", "torch", "commit", "genotype", "dataset", "cells x channels", "params", "train images",
           "epochs", "test images", "test acc (last epoch)", "minutes", "command"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--genotype", default="DARTS_V2", help="a zoo name, a genotype file, a search run directory")
    p.add_argument("--datasets", default="fashion-mnist,cifar10")
    p.add_argument("--cifar10", default=str(HERE.parent / ".cache" / "cifar10"),
                   help="folder holding cifar-10-batches-py/ (default .cache/cifar10, where the tests convert it)")
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--init-channels", type=int, default=12)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--subset", type=int, default=4000, help="training images (a fixed random sample)")
    p.add_argument("--test-subset", type=int, default=2000, help="test images (a fixed random sample)")
    p.add_argument("--batch-size", type=int, default=96)
    p.add_argument("--device", default="auto")
    p.add_argument("--channels-last", action="store_true",
                   help="network and images in NHWC (dnas train --channels-last)")
    p.add_argument("--no-results", action="store_true", help="do not append to RESULTS.md")
    args = p.parse_args()
    device = device_name(resolve_device(args.device))
    commit = results.commit()
    command = " ".join(["python benchmarks/train_eval.py", *sys.argv[1:]])
    stamp = time.strftime("%Y%m%d-%H%M%S")

    for dataset in args.datasets.split(","):
        t0 = time.time()
        result = dnas.train(args.genotype, dataset, data=args.cifar10 if dataset == "cifar10" else None,
                            run_dir=results.OUT / f"train_eval-{dataset}-{stamp}", C=args.init_channels,
                            layers=args.layers, epochs=args.epochs, subset=args.subset, test_subset=args.test_subset,
                            batch_size=args.batch_size, device=args.device, channels_last=args.channels_last)
        minutes = (time.time() - t0) / 60
        report = {
            "benchmark": "train_eval", "genotype": args.genotype, "dataset": dataset, "device": device,
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "commit": commit, "command": command,
            "layers": args.layers, "init_channels": args.init_channels, "channels_last": args.channels_last,
            "params": result.cost.params,
            "mult_adds": result.cost.mult_adds, "epochs": args.epochs, "train_images": args.subset,
            "test_images": args.test_subset, "test_acc": result.test_acc, "minutes": round(minutes, 2),
            "run_dir": str(result.run_dir), "metrics": result.metrics,
        }
        results.write_json(f"train_eval-{dataset}", report)
        print(json.dumps({k: v for k, v in report.items() if k != "metrics"}, indent=1), flush=True)
        if not args.no_results:
            results.append_rows(SECTION, COLUMNS, [
                f"| {report['date']} | {device} | torch {torch.__version__} | {commit} | {Path(args.genotype).name} | "
                f"{dataset} | {args.layers} x {args.init_channels} | {result.cost.params / 1e6:.3f}M | {args.subset} | "
                f"{args.epochs} | {args.test_subset} | {result.test_acc:.4f} | {minutes:.1f} | `{command}` |"])


if __name__ == "__main__":
    main()
