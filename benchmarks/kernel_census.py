"""Count the kernels of one search step and the bytes they move, on the CPU, as a GPU would run them.

Every ATen op that moves data launches (at least) one kernel on a GPU: this script records each op of one
step of the paper's search network (16 channels, 8 cells, batch 64), forward and backward, with the bytes
of the tensors it reads and writes (views, and ops whose outputs only alias their inputs, move nothing).
``--gpu-forms`` computes the convolutions in the forms a GPU runs (``ops.FORM_DEVICES``), and the optimisers
run as a search replayed on a GPU runs them (SGD fused, Adam's multi-tensor kernels). What it tells, without
a GPU: how many kernels a step launches, how many of them are small (latency-bound on a GPU: under ``--small`` bytes),
where they come from (the dnas function for the forward, the autograd node for the backward), and the
floor that the bytes set on a GPU's step time (bytes over its memory bandwidth, ``--bandwidth``). A replayed
step that takes much more than that floor is bound by its kernels' count and efficiency, not its bytes.
Writes JSON to benchmarks/out/ and appends a row to benchmarks/RESULTS.md.

    python benchmarks/kernel_census.py --gpu-forms --channels-last     # the fused NHWC step a GPU replays
    python benchmarks/kernel_census.py --gpu-forms --path readable     # the readable cell's, NCHW
    python benchmarks/kernel_census.py --gpu-forms --channels-last --merged   # its 3x3 and 5x5 ops as one
    python benchmarks/kernel_census.py --gpu-forms --method gdas --dense      # GDAS, every op (dense_samples)
    python benchmarks/kernel_census.py --method darts-v2 --batch-size 16 --rows 30
    python benchmarks/kernel_census.py --gpu-forms --evaluation             # an evaluation batch's forward
    TRITON_INTERPRET=1 python benchmarks/kernel_census.py --gpu-forms --triton-batch-norm   # the BatchNorms by
                                  # dnas.kernels (fused.BATCH_NORM_KERNELS), by Triton's interpreter (minutes)
    TRITON_INTERPRET=1 python benchmarks/kernel_census.py --gpu-forms --triton-depthwise   # the depthwise
                                  # convolutions by dnas.kernels (ops.TRITON_DEPTHWISE_DEVICES), likewise
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils._pytree import tree_flatten

from dnas import ops
from dnas.cuda_graph import set_capturable
from dnas.data import memory_format
from dnas.methods import get_method
from dnas.search import bilevel_step, reuse_large_blocks
from dnas.settings import temporarily
from dnas.spaces import fused
from dnas.spaces.fused import dense_samples, merge_kernel_sizes
from results import append_rows, commit, write_json
from search_step import DEPTH, row_method, supernet

PACKAGE = str(Path(ops.__file__).resolve().parent)
SECTION = "## Kernel census (benchmarks/kernel_census.py)"
COLUMNS = ["date", "commit", "method", "path", "layout", "convolutions", "batch", "kernels", "GB moved",
           "small kernels (GB)", "GB at bandwidth (ms)", "command"]


OVERWRITE = ("copy_", "_foreach_copy_")  # in-place ops that write their first argument without reading it


class Census(TorchDispatchMode):
    """Each ATen op that moves data: (name, bytes read and written, origin)."""

    def __init__(self):
        super().__init__()
        self.ops: list[tuple[str, int, str]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if func.is_view or name in ("empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided"):
            return out  # no data moves
        # what it writes: the arguments its schema marks as written (in place, out=, grad_input=), else its outputs
        schema = func._schema.arguments
        marked = [a.name for a in schema if a.alias_info is not None and a.alias_info.is_write]
        bound = dict(zip([a.name for a in schema], args)) | (kwargs or {})
        written = _tensors([bound[n] for n in marked if n in bound])
        out_only = {a.name for a in schema if a.name in marked and (a.kwarg_only or name in OVERWRITE)}  # out=, a
        # copy's destination: written, not read
        reads = _tensors([v for n, v in bound.items() if n not in out_only])
        held = {t.untyped_storage().data_ptr() for t in reads + written}  # outputs that alias these move nothing
        written += [t for t in _tensors(out) if t.untyped_storage().data_ptr() not in held]
        if written:
            self.ops.append((name, sum(map(_bytes, reads)) + sum(map(_bytes, written)), _origin()))
        return out


@contextlib.contextmanager
def triton_kernels(census: Census, batch_norm: bool, depthwise: bool):
    """The fused cells' training BatchNorms (``batch_norm``) and the depthwise convolutions (``depthwise``) by
    ``dnas.kernels`` (Triton's, run on the CPU by its interpreter: TRITON_INTERPRET=1 before anything imports
    triton), each launch of its kernels one kernel of ``census``, moving the bytes of the distinct tensors it
    is handed (each read or written once; an argument it does not read is one it is handed again), outside the
    census (the interpreter's own copies are not a GPU's)."""
    if not (batch_norm or depthwise):
        yield
        return
    kernels = importlib.import_module("dnas.kernels")
    if not kernels.INTERPRETED:
        raise SystemExit("--triton-* runs dnas.kernels by Triton's interpreter: set TRITON_INTERPRET=1")

    def counted(kernel):
        run = kernel.run

        def launch(*args, **kwargs):
            distinct = {t.data_ptr(): t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)}
            census.ops.append((f"triton {kernel.fn.__name__}", sum(map(_bytes, distinct.values())), _origin()))
            with _disable_current_modes():
                return run(*args, **kwargs)
        return launch

    with contextlib.ExitStack() as stack:
        if batch_norm:
            stack.enter_context(temporarily(fused, "BATCH_NORM_KERNELS", {"cpu": "triton"}))
        if depthwise:
            stack.enter_context(temporarily(ops, "TRITON_DEPTHWISE_DEVICES", ("cpu",)))
        for kernel in (kernels._chunk_sums, kernels._normalise, kernels._grad_input, kernels._depthwise,
                       kernels._depthwise_weight_sums):
            stack.enter_context(temporarily(kernel, "run", counted(kernel)))
        yield


def _tensors(tree) -> list[torch.Tensor]:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor) and t.numel()]


def _bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _origin() -> str:
    """The autograd node whose backward runs, or the innermost dnas function on the stack."""
    node = torch._C._current_autograd_node()
    if node is not None:
        return f"backward {node.name()}"
    for frame in reversed(traceback.extract_stack()):
        if frame.filename.startswith(PACKAGE):
            return f"{Path(frame.filename).name}:{frame.name}"
    return "outside dnas"


def census(args) -> dict:
    torch.manual_seed(0)
    if args.gpu_forms:
        ops.FORM_DEVICES = ("cpu",)
    layout = memory_format(args.channels_last)
    model, parts, w_opt, a_opt = supernet(get_method(args.method), args.path == "fused", layout, args.init_channels,
                                          args.layers, torch.device("cpu"), args.space)
    set_capturable(w_opt)  # fused, as a search replayed from a CUDA graph has it
    for group in a_opt.param_groups:  # its multi-tensor kernels, the default on a GPU
        group["foreach"] = True
    batch = lambda: (torch.randn(args.batch_size, 3, 32, 32).contiguous(memory_format=layout),
                     torch.randint(0, 10, (args.batch_size,)))
    train, val = batch(), batch()
    if args.evaluation:  # one forward as each epoch's evaluation runs it: evaluation mode, no gradients
        model.eval()
        step = torch.no_grad()(lambda: model(val[0]))
    else:
        step = lambda: bilevel_step(model, parts, a_opt, w_opt, train, val, 5.0)
    seen = Census()
    with merge_kernel_sizes(args.merged), dense_samples(args.dense), \
            triton_kernels(seen, args.triton_batch_norm, args.triton_depthwise):
        step()  # the optimisers' state, the plans
        seen.ops.clear()
        with seen:
            step()
    total = sum(b for _, b, _ in seen.ops)
    small = [b for _, b, _ in seen.ops if b < args.small]
    by_op, by_origin = Counter(), Counter()
    bytes_op, bytes_origin = Counter(), Counter()
    for name, b, origin in seen.ops:
        by_op[name] += 1
        bytes_op[name] += b
        by_origin[origin] += 1
        bytes_origin[origin] += b
    top = lambda counts, moved: [{"what": k, "kernels": n, "gb": round(moved[k] / 1e9, 3)}
                                 for k, n in sorted(counts.items(), key=lambda kv: -moved[kv[0]])[:args.rows]]
    return {
        "benchmark": "kernel_census", "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
        "method": row_method(args.method, args.space),
        "path": args.path + (" merged" if args.merged else "") + (" dense samples" if args.dense else "")
        + (" Triton BatchNorms" if args.triton_batch_norm else "")
        + (" Triton depthwise" if args.triton_depthwise else "") + (" evaluation forward" if args.evaluation else ""),
        "layout": "NHWC" if args.channels_last else "NCHW", "convolutions": "GPU forms" if args.gpu_forms else "CPU",
        "batch_size": args.batch_size, "kernels": len(seen.ops), "gb": round(total / 1e9, 2),
        "small_kernels": len(small), "small_gb": round(sum(small) / 1e9, 3), "small_bytes_below": args.small,
        "bandwidth_tb_s": args.bandwidth, "ms_at_bandwidth": round(total / (args.bandwidth * 1e12) * 1e3, 1),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "by_op": top(by_op, bytes_op), "by_origin": top(by_origin, bytes_origin),
    }


def table_rows(report: dict, measured: str) -> list[str]:
    r = report
    return [f"| {r['date']} | {measured} | {r['method']} | {r['path']} | {r['layout']} | {r['convolutions']} | "
            f"{r['batch_size']} | {r['kernels']} | {r['gb']} | {r['small_kernels']} ({r['small_gb']}) | "
            f"{r['ms_at_bandwidth']} at {r['bandwidth_tb_s']} TB/s | `python benchmarks/{r['command']}` |"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="darts-v1")
    p.add_argument("--path", default="fused", choices=["readable", "fused"])
    p.add_argument("--channels-last", action="store_true", help="model and data in channels_last layout")
    p.add_argument("--gpu-forms", action="store_true", help="the convolutions in the forms a GPU runs them in")
    p.add_argument("--merged", action="store_true", help="the fused cell's 3x3 and 5x5 ops as one "
                   "(dnas.spaces.fused.merge_kernel_sizes)")
    p.add_argument("--dense", action="store_true", help="a hard relaxation's fused cells run every op, the sample "
                   "kept on the device (dnas.spaces.fused.dense_samples)")
    p.add_argument("--triton-batch-norm", action="store_true", help="the fused cells' training BatchNorms by "
                   "dnas.kernels (fused.BATCH_NORM_KERNELS), run by Triton's interpreter")
    p.add_argument("--triton-depthwise", action="store_true", help="the depthwise convolutions of NCHW inputs by "
                   "dnas.kernels (ops.TRITON_DEPTHWISE_DEVICES), run by Triton's interpreter")
    p.add_argument("--evaluation", action="store_true",
                   help="count one forward of each epoch's evaluation (evaluation mode, no gradients), not a step")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--init-channels", type=int, default=16)
    p.add_argument("--layers", type=int, help="cells (default 8); with --space nb201 cells per stage (default 5)")
    p.add_argument("--space", default="darts", choices=sorted(DEPTH), help="the search space (default darts)")
    p.add_argument("--small", type=float, default=1e6, help="bytes under which a kernel counts as small")
    p.add_argument("--bandwidth", type=float, default=3.35, help="memory bandwidth in TB/s (H100 SXM: 3.35)")
    p.add_argument("--rows", type=int, default=15, help="rows of each table printed")
    p.add_argument("--no-results", action="store_true", help="do not append to RESULTS.md")
    args = p.parse_args()
    if (args.merged or args.dense or args.triton_batch_norm) and args.path != "fused":
        p.error("--merged, --dense and --triton-batch-norm are the fused cell's ways (--path fused)")
    reuse_large_blocks()
    report = census(args)
    write_json("kernel_census", report)
    print(f"{report['method']} {report['path']} {report['layout']}, {report['convolutions']} convolutions, batch "
          f"{report['batch_size']}: {report['kernels']} kernels moving {report['gb']} GB "
          f"({report['ms_at_bandwidth']} ms at {args.bandwidth} TB/s); {report['small_kernels']} under "
          f"{args.small / 1e6:g} MB ({report['small_gb']} GB)")
    for title in ("by_op", "by_origin"):
        print(f"\n{'kernels':>8} {'GB':>7}  {title[3:]}")
        for row in report[title]:
            print(f"{row['kernels']:8d} {row['gb']:7.2f}  {row['what']}")
    if not args.no_results:
        append_rows(SECTION, COLUMNS, table_rows(report, commit()))


if __name__ == "__main__":
    main()
