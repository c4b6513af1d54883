"""Time one DARTS search step (architecture step + weight step) and its peak memory.

The default search network of the paper (16 channels, 8 cells, 4 nodes, 8 ops) on CIFAR-shaped batches,
with the paper's optimisers, as in ../shared/reference-figures.md. Writes JSON to benchmarks/out/ and
appends a row per recipe to benchmarks/RESULTS.md.

    python benchmarks/search_step.py                          # cuda if present, else cpu (batch 16 on cpu)
    python benchmarks/search_step.py --device cpu --batch-size 16 --methods darts-v1,darts-v2,pc-darts
    python benchmarks/search_step.py --paths readable,fused   # the fast path (docs/speed.md) beside it
    python benchmarks/search_step.py --paths readable,fused,graph,graph-tf32,graph-bf16   # on a GPU: CUDA-graph
                                                              # replay of the fused step, in fp32, TF32, bf16
    python benchmarks/search_step.py --paths fused,fused-cl,graph,graph-cl,graph-bf16-cl   # -cl:
                                                              # channels_last tensors
    python benchmarks/search_step.py --paths graph-cl,graph-cl-lanes   # -lanes: the fused cell's independent
                                                              # ops on side streams (fused.side_streams)
    python benchmarks/search_step.py --paths graph-cl,graph-cl-merged  # -merged: its 3x3 and 5x5 ops as one
                                                              # (fused.merge_kernel_sizes)
    python benchmarks/search_step.py --methods gdas --paths fused,graph-dense   # -dense: a hard relaxation's
                                                              # every op, so GDAS replays (fused.dense_samples)
    python benchmarks/search_step.py --paths graph-lanes,graph-lanes-cudnnbn,graph-lanes-partsbn,graph-lanes-tritonbn
                              # -cudnnbn, -partsbn, -tritonbn: the fused cell's BatchNorms by cuDNN's kernels,
                              # or in training by PyTorch's over parts of the batch or by dnas.kernels' (Triton)
                              # (fused.BATCH_NORM_KERNELS)
    python benchmarks/search_step.py --paths graph-lanes,graph-lanes-tritondw,graph-lanes-tritondw-tritonbn
                              # -tritondw: the depthwise convolutions of NCHW tensors by dnas.kernels' (Triton)
                              # (ops.TRITON_DEPTHWISE_DEVICES)
    python benchmarks/search_step.py --space nb201 --paths readable,fused   # the NAS-Bench-201 network
                                                              # (16 channels, 5 cells per stage)

With several paths, their steps are interleaved in one process, so that a change of machine load hits
both alike; each row reports its speed-up over the readable path, and how far its first step (its loss, the
alphas' and the weights' gradients, from the same weights and batches) is from the first path's
(``first_step_vs_<path>``, max |difference| over max |value|: float rounding, TF32, bf16). On a GPU a
path's peak memory is what it would take alone (the batches, its model and optimisers, its step's own rise
above what was allocated before it); on the CPU it is the process's peak resident set, shared by the paths.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import json
import os
import platform
import resource
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import NamedTuple

import torch

from dnas.cuda_graph import GraphedStep, set_capturable
from dnas.data import memory_format
from dnas.methods import get_method
from dnas.search import PRECISIONS, SearchConfig, bilevel_step, optimizers, precision, resolve_device
from dnas.spaces import SPACES
from results import Terminated, append_rows, commit, interrupt_on_sigterm, write_json

HERE = Path(__file__).resolve().parent


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


PATHS = ("readable", "fused", "graph")  # each optionally with -tf32 or -bf16, -cl (channels_last), -lanes, -merged,
# -dense, -tritondw, -cudnnbn, -partsbn or -tritonbn
SECTION = "## Search step (benchmarks/search_step.py)"
COLUMNS = ["date", "device", "torch", "commit", "path", "method", "batch", "ms/step (median)", "speed-up",
           "peak memory (GB)", "load", "command"]


class PathOptions(NamedTuple):
    base: str  # one of the benchmark's bases
    arithmetic: str  # a precision of ``dnas.search.precision``
    channels_last: bool
    lanes: bool  # the fused cell's independent ops on side streams (``fused.side_streams``)
    merged: bool  # the fused cell's 3x3 and 5x5 ops as one (``fused.merge_kernel_sizes``)
    dense: bool  # a hard relaxation's every op computed, the sample kept on the device (``fused.dense_samples``)
    triton_depthwise: bool  # depthwise convolutions of NCHW tensors by ``dnas.kernels``
    # (``ops.TRITON_DEPTHWISE_DEVICES``)
    batch_norm: str | None  # the kernels of the fused cell's BatchNorms (``fused.BATCH_NORM_KERNELS``): "cudnn"
    # (handed a weight and a bias), "parts" (``ops.batch_norm_by_parts``), "triton" (``dnas.kernels``); None:
    # PyTorch's own


def path_options(path: str, bases) -> PathOptions:
    """A benchmark path's name: its base (one of ``bases``), then its precision if not fp32 (-tf32, -bf16:
    ``dnas.search.precision``), -cl (channels_last), -lanes (side streams), -merged (3x3 and 5x5 ops as
    one), -dense (a hard relaxation's every op, the sample on the device), -tritondw (depthwise convolutions of
    NCHW tensors by ``dnas.kernels``' Triton ones) and -cudnnbn, -partsbn or -tritonbn (the fused cell's
    BatchNorms by cuDNN's kernels on a GPU, by PyTorch's over parts of the batch, or by ``dnas.kernels``'
    Triton ones), in that order."""
    base, *options = path.split("-")
    others = [p for p in PRECISIONS if p != "fp32"]
    arithmetic = options.pop(0) if options and options[0] in others else "fp32"
    flags = ["cl", "lanes", "merged", "dense", "tritondw"]
    kernels = {"cudnnbn": "cudnn", "partsbn": "parts", "tritonbn": "triton"}
    batch_norm = options.pop() if options and options[-1] in kernels else None
    if base not in bases or options != [f for f in flags if f in options]:
        raise ValueError(f"unknown path {path!r}; valid: {', '.join(bases)}, each optionally followed by "
                         f"{' or '.join('-' + p for p in others)}, then -cl, -lanes, -merged, -dense, -tritondw, "
                         f"-cudnnbn, -partsbn or -tritonbn ({bases[-1]}-cl, {bases[-1]}-bf16-cl-lanes, "
                         f"{bases[-1]}-cl-merged, ...)")
    return PathOptions(base, arithmetic, *(flag in options for flag in flags), kernels.get(batch_norm))


def depth(space: str) -> tuple[str, int]:
    """A space's option for its depth (``depth_option``: cells; NAS-Bench-201's cells per stage) and its default."""
    cls = SPACES.get(space)
    return cls.depth_option, inspect.signature(cls).parameters[cls.depth_option].default


DEPTH = {name: depth(name) for name in ("darts", "nb201")}


def row_method(method: str, space: str) -> str:
    """A recipe's name in a RESULTS.md row: on another space than DARTS's, with the space."""
    return method if space == "darts" else f"{method} on {space}"


def supernet(method, fused: bool, layout: torch.memory_format, C: int, layers: int | None, device: torch.device,
             space: str = "darts"):
    """A recipe's supernet of ``space`` (CIFAR-shaped, seeded; ``layers`` cells, or cells per stage in
    nb201, None: the space's default) in ``layout`` on ``device``, with its parts and its optimisers
    ``(w, alpha)``. The recipe's space options (PC-DARTS's edge normalisation, say) apply, as a search
    applies them (``Method.space_options``)."""
    torch.manual_seed(0)
    parts = method.build_parts()
    depth, default = DEPTH[space]
    model = SPACES.get(space)(num_classes=10, C=C, **{depth: layers or default}, relaxation=parts.relaxation,
                              edge=parts.edge, fused=fused, **method.space_options(space))
    model = model.to(device, memory_format=layout)
    return model, parts, *optimizers(model, SearchConfig())


def measure(method_name: str, args, device: torch.device) -> list[dict]:
    """The step of one recipe (darts-v1 is first order, darts-v2 second order) on random CIFAR-shaped data,
    on each path (readable: SearchCell; fused: spaces/fused.py; graph: the fused step replayed from a
    CUDA graph, cuda_graph.py; -tf32, -bf16: in that precision, ``dnas.search.precision``; -cl: in
    channels_last), the paths' steps interleaved."""
    method = get_method(method_name)
    batch = lambda: (torch.randn(args.batch_size, 3, 32, 32, device=device),
                     torch.randint(0, 10, (args.batch_size,), device=device))
    inputs = (*batch(), *batch())
    steps, times, rises, held, saved, models, first = {}, {}, {}, {}, {}, {}, {}
    for path in args.paths:
        base, arithmetic, channels_last, *ways = path_options(path, PATHS)
        layout = memory_format(channels_last)
        before = allocated(device)
        model, parts, w_opt, a_opt = supernet(method, base != "readable", layout, args.init_channels, args.layers,
                                              device, args.space)
        held[path] = allocated(device) - before  # its model and optimisers (CUDA; the CPU's peak RSS grows alike)
        saved[path] = saved_for_backward(model, inputs[0])
        models[path] = model
        step = path_step(model, parts, a_opt, w_opt, base, arithmetic, ways)
        steps[path] = partial(step, *(t.contiguous(memory_format=layout) if t.dim() == 4 else t for t in inputs))
        times[path] = []
    shared = allocated(device) - sum(held.values())  # the batches, and on the CPU the process itself

    def memory(path) -> tuple[int, int]:
        """Bytes: the path's peak, and what its step adds to what it holds before. On CUDA as if it ran
        alone (what the batches, its model and optimisers hold, and its step's own rise); on the CPU the
        process's peak resident set, shared by the paths (it only grows)."""
        if device.type == "cuda":
            return shared + held[path] + rises[path], rises[path]
        return peak(device), peak(device) - shared - sum(held.values())

    def timed(path):  # seconds; a step's memory is over its warm-up too, where a graph is captured (a replay
        sync(device)  # reuses the capture's memory, which no longer counts as allocated)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = allocated(device)
        t0 = time.perf_counter()
        with torch.random.fork_rng([device] if device.type == "cuda" else [], enabled=path not in first):
            if path not in first:  # every path's first step draws the same samples (GDAS, SNAS, SDARTS-RS, ...)
                torch.manual_seed(1)
            loss, _ = steps[path]()
        sync(device)
        seconds = time.perf_counter() - t0
        rises[path] = max(rises.get(path, 0), peak(device) - start)  # the step's own, whatever other paths hold
        if path not in first:  # every path's first step starts from the same weights, buffers and batches
            first[path] = first_step(models[path], loss)
        return seconds

    failed, interrupted = {}, False  # a path whose warm-up raised (a failed capture, say) is reported
    try:
        for _ in range(args.warmup):
            for path in list(steps):
                try:
                    timed(path)
                except Exception as e:
                    failed[path] = f"{type(e).__name__}: {e}"
                    del steps[path], times[path]
        for _ in range(args.steps):
            for path in steps:
                times[path].append(timed(path))
    except KeyboardInterrupt:  # Ctrl-C, or `timeout`: the paths with timed steps are reported on them
        print(f"{method_name}: interrupted after {min(map(len, times.values()), default=0)} timed steps",
              file=sys.stderr)
        failed |= {path: "interrupted before its first timed step" for path, t in times.items() if not t}
        times, interrupted = {path: t for path, t in times.items() if t}, True
    median = {path: sorted(t)[len(t) // 2] for path, t in times.items()}
    reference = next(iter(first), None)  # the first path's first step (the readable one's where it runs)
    name = row_method(method_name, args.space)
    return ([{"method": name, "path": path, "error": error, "interrupted": interrupted}
             for path, error in failed.items()]
            + [{"method": name, "path": path, "ms_per_step_median": round(1000 * median[path], 1),
                "ms_per_step_min": round(1000 * min(times[path]), 1),
                "peak_memory_gb": round(memory(path)[0] / 2**30, 2),
                "steps_timed": len(times[path]), "interrupted": interrupted,
                "step_memory_per_sample_mb": round(memory(path)[1] / args.batch_size / 2**20, 1),
                "speedup_over_readable": round(median["readable"] / median[path], 2) if "readable" in median else None,
                "saved_for_backward_mb_per_sample": round(saved[path] / args.batch_size / 2**20, 1),
                "replayed": isinstance(steps[path].func, GraphedStep) and steps[path].func.replays > 0,
                f"first_step_vs_{reference}": {k: relative_difference(v, first[reference][k])
                                               for k, v in first[path].items()}}
               for path in times])


def first_step(model, loss) -> dict[str, torch.Tensor]:
    """What a step computed: its training loss and the gradients of the alphas (the architecture step's) and
    of the weights (the weight step's, clipped; zeros for a weight it did not use, as an op GDAS did not
    sample), in float64 on the host."""
    grads = lambda params: torch.cat([torch.zeros(p.numel(), device=p.device) if p.grad is None else p.grad.flatten()
                                      for p in params]).double().cpu()
    return {"loss": loss.detach().double().cpu().view(1), "alpha_grad": grads(model.arch_parameters()),
            "weight_grad": grads(model.weight_parameters())}


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| over max |b|: how far one path's first step is from another's (float rounding, TF32, bf16)."""
    return float(f"{((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item():.2e}")


def saved_for_backward(model, x) -> int:
    """Bytes of the tensors one training forward keeps for its backward (the activations): what a step's
    memory grows with the batch, the same on any device."""
    model.train()
    model(x).sum().backward()  # the fused path builds its plans on a first call
    model.zero_grad(set_to_none=True)
    storages, kept = {}, []

    def pack(t):  # t is kept (each storage counted once, none freed and reused), not returned: returned, it
        kept.append(t)  # would tie the graph in a cycle that outlives this call, and with it the gradient
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()  # accumulators bound to this
        # stream (on which a later capture fails)

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda _: None):
        model(x)
    kept.clear()  # the graph's saved variables hold pack, so kept would tie them in a cycle too (~1.4 GB at batch 16)
    return sum(storages.values())


def path_step(model, parts, a_opt, w_opt, base: str, arithmetic: str, ways):
    """A path's step as a function of its four tensors (``four_tensor_step``): for a graph path replayed from
    a CUDA graph (``GraphedStep``), its optimisers capturable as a replayed search has them."""
    step = partial(four_tensor_step, model, parts, a_opt, w_opt, arithmetic, ways)
    if base != "graph":
        return step
    for optimizer in (a_opt, w_opt):
        set_capturable(optimizer)
    return GraphedStep(step)


def four_tensor_step(model, parts, a_opt, w_opt, arithmetic: str, ways, x, y, val_x, val_y):
    with precision(x.device.type, arithmetic), fused_settings(*ways):
        return bilevel_step(model, parts, a_opt, w_opt, (x, y), (val_x, val_y), 5.0)


def fused_settings(lanes: bool, merged: bool, dense: bool, triton_depthwise: bool,
                   batch_norm: str | None) -> contextlib.ExitStack:
    """Within it, the fused cells run on as many side streams as --fast runs where ``lanes``
    (``fused.side_streams``, ``search.FAST_SIDE_STREAMS``), with their 3x3 and 5x5 ops as one where
    ``merged`` (``fused.merge_kernel_sizes``), every op of a hard relaxation where ``dense``
    (``fused.dense_samples``), depthwise convolutions of NCHW tensors by Triton's kernels on every device
    where ``triton_depthwise`` (``ops.TRITON_DEPTHWISE_DEVICES``, CUDA only), and their BatchNorms by the
    kernels ``batch_norm`` names on every device (``fused.BATCH_NORM_KERNELS``: "cudnn", "parts" or "triton",
    the latter two CUDA only); the modules looked up only where one is asked for: gpu_check.sh's stage base
    runs this script on an older dnas, which has none."""
    stack = contextlib.ExitStack()
    if triton_depthwise:
        settings = importlib.import_module("dnas.settings")
        ops = importlib.import_module("dnas.ops")
        stack.enter_context(settings.temporarily(ops, "TRITON_DEPTHWISE_DEVICES", ("cuda", "cpu")))
    if lanes or merged or dense or batch_norm:
        fused = importlib.import_module("dnas.spaces.fused")
        streams = importlib.import_module("dnas.search").FAST_SIDE_STREAMS if lanes else 0
        stack.enter_context(fused.side_streams(streams))
        stack.enter_context(fused.merge_kernel_sizes(merged))
        stack.enter_context(fused.dense_samples(dense))
        if batch_norm:
            settings = importlib.import_module("dnas.settings")
            kernels = {"cuda": batch_norm, "cpu": batch_norm}
            stack.enter_context(settings.temporarily(fused, "BATCH_NORM_KERNELS", kernels))
    return stack


def allocated(device: torch.device) -> int:
    """Bytes held now: torch's allocation on CUDA, the process's peak resident set so far on the CPU."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak(device: torch.device) -> int:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else allocated(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--init-channels", type=int, default=16)
    p.add_argument("--layers", type=int, help="cells (default 8); with --space nb201 cells per stage (default 5)")
    p.add_argument("--space", default="darts", choices=sorted(DEPTH), help="the search space (default darts)")
    p.add_argument("--methods", default="darts-v1,darts-v2", help="recipes, comma-separated")
    p.add_argument("--paths", default="readable", help=f"comma-separated, of {', '.join(PATHS)} (graph: GPU "
                   f"only), each optionally followed by -tf32 or -bf16 (the precision; default fp32), then -cl "
                   f"(channels_last tensors), -lanes (side streams, GPU only), -merged (3x3 and 5x5 ops as one), "
                   f"-dense (a hard relaxation's every op, the sample on the device), -tritondw (depthwise "
                   f"convolutions by dnas.kernels' Triton ones), -cudnnbn, -partsbn or "
                   f"-tritonbn (the fused cell's BatchNorms by cuDNN's kernels, by PyTorch's over parts of the "
                   f"batch, or by dnas.kernels' Triton ones)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (a graph captures at the third)")
    p.add_argument("--no-results", action="store_true", help="do not append to RESULTS.md")
    p.add_argument("--rows-only", action="store_true", help=argparse.SUPPRESS)  # one recipe's rows as JSON
    args = p.parse_args()
    device = resolve_device(args.device)
    interrupt_on_sigterm()
    torch.backends.cudnn.benchmark = True  # as dnas.search sets it on a GPU (and the original DARTS code)
    if device.type == "cpu":
        # as a search does on the CPU; looked up here, not imported: gpu_check.sh's stage base runs this script
        importlib.import_module("dnas.search").reuse_large_blocks()  # on an older dnas (on a GPU)
    args.batch_size = args.batch_size or (64 if device.type == "cuda" else 16)
    args.paths = args.paths.split(",")
    try:
        bases = {path_options(path, PATHS)[0] for path in args.paths}
    except ValueError as e:
        p.error(str(e))
    if device.type != "cuda" and "graph" in bases:
        p.error("the graph paths replay CUDA graphs: they need a GPU (--device cuda)")

    if args.rows_only:
        print(json.dumps(measure(args.methods, args, device)))
        return
    # a process's peak resident set only grows: on the CPU each recipe is measured in a process of its own
    rows = []
    for name in args.methods.split(","):
        rows += measure(name, args, device) if device.type == "cuda" else measure_apart(name, args)
        if any(row.get("interrupted") for row in rows):
            break
    report = {
        "benchmark": "search_step", "device": device_name(device), "load_average": os.getloadavg(),
        "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "batch_size": args.batch_size,
        "init_channels": args.init_channels, "layers": args.layers or DEPTH[args.space][1], "space": args.space,
        "steps": args.steps,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "results": rows,
    }
    write_json(f"search_step-{device.type}", report)
    print(json.dumps(report, indent=1))
    if not args.no_results:
        append_rows(SECTION, COLUMNS, table_rows(report, commit()))


def table_rows(report: dict, measured: str) -> list[str]:
    """The RESULTS.md rows of a report (of this run, or a JSON brought back from a GPU machine)."""
    return [f"| {report['date']} | {report['device']} | torch {report['torch']} | {measured} | "
            f"{r['path']} | {r['method']} | {report['batch_size']} | {r['ms_per_step_median']} | "
            f"{r['speedup_over_readable'] or ''} | {r['peak_memory_gb']} ({r['step_memory_per_sample_mb']} MB) | "
            f"load {report['load_average'][0]:.1f} | `python benchmarks/{report['command']}` |"
            for r in report["results"] if "error" not in r]


def measure_apart(method_name: str, args) -> list[dict]:
    """``measure`` in a fresh process. Interrupted, that process is interrupted too (Ctrl-C reaches it by
    itself; SIGTERM, from ``timeout``, is passed on), and what it measured before is returned."""
    argv = [sys.executable, __file__, "--rows-only", "--device", args.device, "--methods", method_name,
            "--batch-size", str(args.batch_size), "--init-channels", str(args.init_channels), "--space",
            args.space, *(["--layers", str(args.layers)] if args.layers else []), "--paths", ",".join(args.paths),
            "--steps", str(args.steps), "--warmup", str(args.warmup)]
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        out = child.communicate()[0]
    except KeyboardInterrupt as e:
        if isinstance(e, Terminated):
            child.terminate()
        out = child.communicate()[0]
        if child.returncode:  # interrupted before it had built its supernets
            return [{"method": row_method(method_name, args.space), "path": path, "interrupted": True,
                     "error": "interrupted before its first timed step"} for path in args.paths]
    if child.returncode:
        raise subprocess.CalledProcessError(child.returncode, argv)
    return json.loads(out)


if __name__ == "__main__":
    main()
