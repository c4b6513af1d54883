"""Where one search step spends its time: the top operators of a profiled step, by device time.

The step of a recipe on the paper's search network (16 channels, 8 cells) on random CIFAR-shaped data, on a
path of search_step.py (``--path``: readable, fused or graph, the fused step replayed from a CUDA graph, with
its suffixes: -bf16, -cl, -lanes, -tritonbn, ...), after warm-up steps (a graph is captured at the third).
On a GPU the table is sorted by the kernels' time (a replayed step's kernels too: with side streams they
overlap, so their sum passes the step's wall time, also reported), on the CPU by CPU time. Writes JSON to
benchmarks/out/ and prints the table: what to make faster next; and how many kernels (on the CPU, ops) took
how long, up to 5, 10, 20, ... us: a step bound by the count of its kernels rather than by their bytes
spends its time in short ones.

    python benchmarks/profile_step.py                         # darts-v1, fused, batch 64 on a GPU (16 on a CPU)
    python benchmarks/profile_step.py --path graph-lanes      # the step --fast replays on a GPU
    python benchmarks/profile_step.py --method darts-v2 --path readable --rows 25
    python benchmarks/profile_step.py --space nb201 --method gdas --path fused-cl
    python benchmarks/profile_step.py --path fused-tritonbn   # the fused cells' BatchNorms by dnas.kernels (or
                                                              # -partsbn, -cudnnbn: fused.BATCH_NORM_KERNELS)
"""
from __future__ import annotations

import argparse
import time

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from dnas.cuda_graph import GraphedStep
from dnas.data import memory_format
from dnas.methods import get_method
from dnas.search import reuse_large_blocks, resolve_device
from results import write_json
from search_step import DEPTH, PATHS, device_name, path_options, path_step, supernet


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="darts-v1")
    p.add_argument("--path", default="fused", help=f"a path of search_step.py: one of {', '.join(PATHS)} (graph: "
                   "GPU only) with its suffixes (-tf32, -bf16, -cl, -lanes, -merged, -dense, -tritondw, -cudnnbn, "
                   "-partsbn, -tritonbn)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--init-channels", type=int, default=16)
    p.add_argument("--layers", type=int, help="cells (default 8); with --space nb201 cells per stage (default 5)")
    p.add_argument("--space", default="darts", choices=sorted(DEPTH), help="the search space (default darts)")
    p.add_argument("--warmup", type=int, default=3, help="steps before the profiled one (a graph captures at the "
                   "third)")
    p.add_argument("--rows", type=int, default=15)
    args = p.parse_args()
    try:
        base, arithmetic, channels_last, *ways = path_options(args.path, PATHS)
    except ValueError as e:
        p.error(str(e))
    device = resolve_device(args.device)
    if base == "graph" and device.type != "cuda":
        p.error("a graph path replays a CUDA graph: it needs a GPU (--device cuda)")
    torch.backends.cudnn.benchmark = True  # as dnas.search sets it on a GPU (and the original DARTS code)
    if device.type == "cpu":
        reuse_large_blocks()  # as dnas.search does on the CPU
    batch_size = args.batch_size or (64 if device.type == "cuda" else 16)

    layout = memory_format(channels_last)
    model, parts, w_opt, a_opt = supernet(get_method(args.method), base != "readable", layout,
                                          args.init_channels, args.layers, device, args.space)
    batch = lambda: (torch.randn(batch_size, 3, 32, 32, device=device).contiguous(memory_format=layout),
                     torch.randint(0, 10, (batch_size,), device=device))
    step = path_step(model, parts, a_opt, w_opt, base, arithmetic, ways)
    inputs = (*batch(), *batch())

    def timed_step() -> float:
        """The step's wall time, ms."""
        sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
        sync()
        start = time.perf_counter()
        step(*inputs)
        sync()
        return 1000 * (time.perf_counter() - start)

    for _ in range(args.warmup):
        timed_step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        wall_ms = timed_step()
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    # on a GPU the kernels alone (an ATen op's device time is its kernels': counting both counts it twice)
    events = sorted((e for e in prof.key_averages() if device.type != "cuda" or e.device_type == DeviceType.CUDA),
                    key=lambda e: getattr(e, key), reverse=True)
    total = sum(getattr(e, key) for e in events)
    rows = [{"name": e.key, "calls": e.count, "self_ms": round(getattr(e, key) / 1000, 2),
             "share": round(getattr(e, key) / total, 3)} for e in events[: args.rows]]
    replayed = isinstance(step, GraphedStep) and step.replays > 0
    report = {"benchmark": "profile_step", "device": device_name(device), "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d"), "space": args.space, "method": args.method, "path": args.path,
              "replayed": replayed, "batch_size": batch_size, "sorted_by": key, "total_ms": round(total / 1000, 1),
              "wall_ms": round(wall_ms, 1),
              "by_duration": by_duration([getattr(e, key) for e in prof.events()
                                          if device.type != "cuda" or e.device_type == DeviceType.CUDA]),
              "top": rows}
    write_json(f"profile_step-{device.type}", report)
    print(f"{report['device']}, {args.method} {args.path}{' (replayed)' * replayed}, batch {batch_size}: "
          f"{report['total_ms']} ms of {key} in one step of {report['wall_ms']} ms")
    print("each " + ("kernel" if device.type == "cuda" else "op") + "'s own time: " + ", ".join(
        f"{b['count']} up to {b['up_to_us']} us ({b['ms']} ms)" for b in report["by_duration"]))
    for r in rows:
        print(f"{r['self_ms']:9.2f} ms {100 * r['share']:5.1f}% {r['calls']:6d}x  {r['name'][:90]}")


def by_duration(times_us: list[float], bounds=(5, 10, 20, 50, 100, 1000, float("inf"))) -> list[dict]:
    """How many of the kernels (on the CPU, ops) took up to each bound of microseconds, and their time: a step
    of many kernels too short to fill the GPU spends its time in the short ones."""
    rows, low = [], 0.0
    for high in bounds:
        inside = [t for t in times_us if low < t <= high]
        rows.append({"up_to_us": high, "count": len(inside), "ms": round(sum(inside) / 1000, 2)})
        low = high
    return rows


if __name__ == "__main__":
    main()
