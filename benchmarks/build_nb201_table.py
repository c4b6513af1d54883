"""Rebuild src/dnas/bench/nb201.npz, the NAS-Bench-201 ground truth shipped with dnas, from the benchmark's table.

    python benchmarks/build_nb201_table.py            # $DNAS_SHARED_DATA (default ../shared/data)/nas-bench-201/...
    python benchmarks/build_nb201_table.py path/to/test_accuracy_200ep.csv

The CSV has one row per cell in the benchmark's order: index, arch, cifar10_test, cifar100_test,
imagenet16_120_test (test accuracy in % after 200 epochs, mean over seeds, 4 decimals). The script checks
that it holds each of the 15,625 cells once and that float32 keeps every figure, then writes the arrays that
dnas.bench.nb201 reads (see its docstring for the layout).
"""
from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path

import numpy as np

from dnas.bench import nb201

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DNAS_SHARED_DATA", REPO.parent / "shared" / "data"))
COLUMNS = ("cifar10_test", "cifar100_test", "imagenet16_120_test")  # in the order of nb201.DATASETS


def build(csv_path: Path) -> dict[str, np.ndarray]:
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    size = len(nb201.NB201_OPS) ** len(nb201.cell_edges(nb201.NODES))
    accuracy = np.full((size, len(COLUMNS)), np.nan, dtype=np.float32)
    index = np.full(size, -1, dtype=np.int16)
    for row in rows:
        code = nb201.encode(row["arch"])
        if index[code] != -1:
            raise ValueError(f"{csv_path}: {row['arch']} appears twice (rows {index[code]} and {row['index']})")
        index[code] = int(row["index"])
        accuracy[code] = [float(row[c]) for c in COLUMNS]
        if [f"{a:.4f}" for a in accuracy[code]] != [f"{float(row[c]):.4f}" for c in COLUMNS]:
            raise ValueError(f"{csv_path}: row {row['index']} does not survive float32: {row}")
    if (index == -1).any():
        raise ValueError(f"{csv_path}: {int((index == -1).sum())} of the {size} cells are missing")
    return {"accuracy": accuracy, "index": index, "ops": np.array(nb201.NB201_OPS),
            "datasets": np.array(nb201.DATASETS)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("csv", nargs="?", type=Path, default=SHARED_DATA / "nas-bench-201" / "test_accuracy_200ep.csv")
    p.add_argument("--out", type=Path, default=REPO / "src" / "dnas" / "bench" / nb201.TABLE_FILE)
    args = p.parse_args()
    np.savez_compressed(args.out, **build(args.csv))
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes) from {args.csv}")


if __name__ == "__main__":
    main()
