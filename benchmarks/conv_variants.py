"""The convolutions and BatchNorms of a fused DARTS cell in other forms: which is fastest, forward+backward,
on the GPU.

On a GPU the replayed search step is bound by its kernels (docs/speed.md), most of them the convolutions
of the fused cell: depthwise k x k over the edges of a source batch stacked (groups = edges x C), and the
pointwise 1x1 convolutions with groups = edges. This times each, at the shapes of the paper's search network
(batch 64; 8 edges out of a cell's two inputs, or the 3 out of its first node; C = 16, 32, 64 at 32, 16, 8
pixels), in the forms a faster fused cell could take:

* layout and precision: NCHW fp32, channels_last fp32 and TF32 (``dnas.search.precision``: a search's
  default fp32 turns TF32 off, which PyTorch leaves on for cuDNN's convolutions), channels_last bf16
  (PyTorch hands depthwise convolutions to cuDNN only in channels_last or half precision);
* pointwise: the grouped convolution, or batched matrix products per edge (in either layout, no copy in
  NCHW);
* sep_conv_3x3 and sep_conv_5x5 of the same edges: two depthwise convolutions, or one 5x5 over both with
  the 3x3 kernels zero-padded (more arithmetic, one kernel);
* "by ops.conv2d": what dnas runs, the forms ``ops.conv2d`` takes on the device (on a GPU: depthwise NHWC,
  copied in and out of an NCHW input, dilated ones by their phases; grouped pointwise as matrix products,
  in NHWC one dense product with the block-diagonal matrix of the edges' weights);
* depthwise "by Triton": dnas's own kernels (``dnas.kernels.depthwise_conv2d``, ``ops.TRITON_DEPTHWISE_DEVICES``)
  on an NCHW input as it is, any dilation (an NHWC one runs PyTorch's); "of copies": of the cell's sources
  (2 of the 8 edges, 1 of the 3) each copied to its edges, by ``ops.conv2d`` (the copies made) or by
  Triton's kernels reading each source in place (``copies``), as the fused cell runs its first ones;
* BatchNorm in training over the edges' channels, the op weights its affine weight (the fused cell's Eq. 2):
  as the fused cell runs it, without a bias, which PyTorch computes with its own kernels, or with a zero
  bias, which PyTorch hands to cuDNN (only where both weight and bias are given), or by PyTorch's kernels
  over parts of the batch (``ops.batch_norm_by_parts``: in NCHW, k x C thread blocks rather than C), or by
  dnas's Triton kernels (``dnas.kernels``: C x chunks programs); and, as in the middle of a separable op,
  without a weight and with the ReLU after it written NHWC (``ops.relu_nhwc``; by Triton's in its kernels).

Each variant's forward and backward (gradients of input and weight) is captured in a CUDA graph and
replayed, as in the search (on the CPU: eager, for a smoke run). Writes JSON to benchmarks/out/ and prints
microseconds per forward+backward, and the milliseconds of each variant's first call (cuDNN's algorithm
search, with ``cudnn.benchmark`` on as a search has it: a one-off cost per shape).

    python benchmarks/conv_variants.py                        # on a GPU
    python benchmarks/conv_variants.py --only pointwise       # the grouped 1x1 convolutions' forms alone
    python benchmarks/conv_variants.py --only batchnorm       # PyTorch's BatchNorm kernels against cuDNN's
    python benchmarks/conv_variants.py --forward-only --batch-size 256 --only depthwise   # as evaluation runs
    python benchmarks/conv_variants.py --device cpu --batch-size 2 --repeats 2
"""
from __future__ import annotations

import argparse
import functools
import importlib
import time
from functools import partial

import torch
import torch.nn.functional as F

from dnas import ops
from dnas.search import precision, resolve_device
from dnas.settings import temporarily
from results import write_json
from search_step import device_name

SHAPES = [(8, 16, 32), (3, 16, 32), (8, 32, 16), (8, 64, 8)]  # (edges, C, H)
#: column: (layout, dtype, the search's precision it runs in, ``dnas.search.precision``): fp32 is IEEE float32
#: (TF32 off), tf32 runs float32 convolutions and matrix products in TF32 (cuDNN's convolutions by PyTorch's
#: default); bf16 tensors are bf16 already.
LAYOUTS = {"nchw-fp32": (torch.contiguous_format, torch.float32, "fp32"),
           "nhwc-fp32": (torch.channels_last, torch.float32, "fp32"),
           "nhwc-tf32": (torch.channels_last, torch.float32, "tf32"),
           "nhwc-bf16": (torch.channels_last, torch.bfloat16, "fp32")}


def depthwise(x, w, dilation=1, conv=F.conv2d):
    k = w.shape[-1]
    return conv(x, w, None, (1, 1), (dilation * (k - 1) // 2,) * 2, (dilation, dilation), x.shape[1])


def pointwise_conv(x, w, edges):
    return F.conv2d(x, w, groups=edges)


def pointwise_matmul(x, w, edges):
    """The grouped 1x1 convolution as one matrix product per edge and image, batched, on ``x`` as it lies: NCHW
    x (N, E*C, H, W) is (N, E, C, H*W), each edge's C_out x C matrix times its block, batched over N and E
    with no copy, the product (N, E, C_out, H*W) NCHW already; channels_last x is (N*H*W, E, C) in memory,
    one product per edge over all pixels. w (E*C_out, C, 1, 1) is E matrices C_out x C."""
    n, _, h, wd = x.shape
    m = w.view(edges, w.shape[0] // edges, -1)  # (E, C_out, C)
    if x.is_contiguous():
        return torch.matmul(m, x.view(n, edges, -1, h * wd)).view(n, -1, h, wd)
    rows = x.permute(0, 2, 3, 1).reshape(n * h * wd, edges, -1).transpose(0, 1)  # (E, NHW, C)
    y = torch.bmm(rows, m.transpose(1, 2))  # (E, NHW, C_out)
    return y.transpose(0, 1).reshape(n, h, wd, -1).permute(0, 3, 1, 2)


@functools.cache
def _zeros(shape: tuple, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Zeros made once, outside what is timed: the batch statistics' buffers, the zero bias."""
    return torch.zeros(shape, device=device, dtype=dtype)


def batch_norm(x, w=None, kernels: str | None = None, relu_nhwc: bool = False):
    """The fused cell's BatchNorm in training (``fused._batch_norm``): the batch's statistics written into
    buffers (momentum 1), ``w`` its affine weight, no bias; by the kernels ``kernels`` names as
    ``fused.BATCH_NORM_KERNELS`` does: "cudnn" (handed a zero bias), "parts" (PyTorch's over parts of the
    batch, ``ops.batch_norm_by_parts``, CUDA only) or "triton" (``dnas.kernels``); None, PyTorch's own. With
    ``relu_nhwc`` the ReLU after it written NHWC (``ops.relu_nhwc``; by Triton's, in its kernels), as in the
    middle of a separable op (which has no weight)."""
    mean, var = _zeros((2, x.shape[1]), x.device, x.dtype)
    bias = _zeros((x.shape[1],), x.device, x.dtype) if kernels == "cudnn" else None
    if kernels == "triton":
        return importlib.import_module("dnas.kernels").batch_norm(x, mean, var, w, bias, 1e-5, relu_nhwc)
    if kernels == "parts":
        y = ops.batch_norm_by_parts(x, mean, var, w, bias, 1e-5)
    else:
        y = F.batch_norm(x, mean, var, w, bias, True, 1.0, 1e-5)
    return ops.relu_nhwc(y) if relu_nhwc else y


def triton_depthwise(x, w, bias, stride, padding, dilation, groups):
    """``F.conv2d``'s depthwise convolution by ``dnas.kernels``."""
    return importlib.import_module("dnas.kernels").depthwise_conv2d(x, w, stride, padding, dilation)


def depthwise_of_copies(x, w, dilation, sources: int, triton: bool):
    """The depthwise convolution of ``x``'s ``sources`` blocks each copied to its edges (``ops.copied_blocks``),
    by ``ops.conv2d`` (which makes the copies) or by ``dnas.kernels`` (which reads them in place)."""
    k, copies = w.shape[-1], w.shape[0] // x.shape[1]
    padding, dilation = (dilation * (k - 1) // 2,) * 2, (dilation, dilation)
    if triton:
        kernels = importlib.import_module("dnas.kernels")
        return kernels.depthwise_conv2d(x, w, 1, padding, dilation, False, copies, sources)
    return ops.conv2d(x, w, None, (1, 1), padding, dilation, w.shape[0], copies=copies, blocks=sources)


def sep_pair_apart(x, w3, w5):
    return depthwise(x, w3), depthwise(x, w5)


def sep_pair_merged(x, w3, w5):
    """Both depthwise convolutions of the edges as one 5x5: the 3x3 kernels zero-padded to 5x5."""
    w = torch.cat([F.pad(w3, (1, 1, 1, 1)), w5])
    y = F.conv2d(torch.cat([x, x], 1), w, padding=2, groups=2 * x.shape[1])
    return y.chunk(2, 1)


def cases(batch: int):
    """(name, function, tensor shapes: the input first, then the weights)."""
    for e, c, h in SHAPES:
        x = (batch, e * c, h, h)
        tag = f"E={e} C={c} {h}x{h}"
        for k, d in ((3, 1), (5, 1), (3, 2), (5, 2)):
            yield f"depthwise {k}x{k} dil {d}, {tag}", lambda x, w, d=d: depthwise(x, w, d), [x, (e * c, 1, k, k)]
            yield (f"depthwise {k}x{k} dil {d} by ops.conv2d, {tag}",
                   lambda x, w, d=d: depthwise(x, w, d, ops.conv2d), [x, (e * c, 1, k, k)])
            yield (f"depthwise {k}x{k} dil {d} by Triton, {tag}",
                   lambda x, w, d=d: depthwise(x, w, d, triton_depthwise), [x, (e * c, 1, k, k)])
        sources = 2 if e % 2 == 0 else 1
        for k, d in ((3, 1), (5, 2)):
            for triton, form in ((False, "by ops.conv2d"), (True, "in place by Triton")):
                yield (f"depthwise of copies {k}x{k} dil {d} {form}, {tag}",
                       partial(depthwise_of_copies, dilation=d, sources=sources, triton=triton),
                       [(batch, sources * c, h, h), (e * c, 1, k, k)])
        yield f"pointwise conv, {tag}", lambda x, w, e=e: pointwise_conv(x, w, e), [x, (e * c, c, 1, 1)]
        yield f"pointwise matmul, {tag}", lambda x, w, e=e: pointwise_matmul(x, w, e), [x, (e * c, c, 1, 1)]
        yield f"pointwise by ops.conv2d, {tag}", lambda x, w, e=e: ops.conv2d(x, w, groups=e), [x, (e * c, c, 1, 1)]
        yield f"sep 3x3 + 5x5 apart, {tag}", sep_pair_apart, [x, (e * c, 1, 3, 3), (e * c, 1, 5, 5)]
        yield f"sep 3x3 + 5x5 merged, {tag}", sep_pair_merged, [x, (e * c, 1, 3, 3), (e * c, 1, 5, 5)]
        yield f"batchnorm, weight only, {tag}", batch_norm, [x, (e * c,)]
        yield f"batchnorm, zero bias (cuDNN), {tag}", partial(batch_norm, kernels="cudnn"), [x, (e * c,)]
        yield f"batchnorm by parts, {tag}", partial(batch_norm, kernels="parts"), [x, (e * c,)]
        yield f"batchnorm by Triton, {tag}", partial(batch_norm, kernels="triton"), [x, (e * c,)]
        yield f"batchnorm, ReLU NHWC, {tag}", partial(batch_norm, relu_nhwc=True), [x]
        yield f"batchnorm, ReLU NHWC by Triton, {tag}", partial(batch_norm, kernels="triton", relu_nhwc=True), [x]


def check_variants(device: torch.device) -> None:
    """Each alternative form computes what the form it replaces computes (float64, channels_last input)."""
    g = torch.Generator().manual_seed(0)
    t = lambda *shape: torch.randn(shape, generator=g, dtype=torch.float64).to(device)
    x = t(2, 3 * 4, 5, 5).contiguous(memory_format=torch.channels_last)
    w, w3, w5 = t(3 * 4, 4, 1, 1), t(3 * 4, 1, 3, 3), t(3 * 4, 1, 5, 5)
    for layout in (x, x.contiguous()):
        torch.testing.assert_close(pointwise_matmul(layout, w, 3), pointwise_conv(layout, w, 3))
    for merged, apart in zip(sep_pair_merged(x, w3, w5), sep_pair_apart(x, w3, w5)):
        torch.testing.assert_close(merged, apart)
    scale = t(3 * 4)
    torch.testing.assert_close(batch_norm(x, scale, kernels="cudnn"), batch_norm(x, scale))
    if device.type == "cuda":  # SyncBatchNorm's kernels and Triton's compiled: CUDA only; in 2 parts, 2 chunks
        for d in (1, 2):
            torch.testing.assert_close(depthwise(x.contiguous(), w5, d, triton_depthwise), depthwise(x, w5, d))
            torch.testing.assert_close(depthwise_of_copies(x[:, :6].contiguous(), w5, d, 2, True),
                                       depthwise_of_copies(x[:, :6], w5, d, 2, False))
        with temporarily(ops, "PART_VALUES", 2), temporarily(importlib.import_module("dnas.kernels"), "BLOCK", 16):
            for kernels in ("parts", "triton"):
                torch.testing.assert_close(batch_norm(x.contiguous(), scale, kernels), batch_norm(x, scale))
            torch.testing.assert_close(batch_norm(x.contiguous(), None, "triton", relu_nhwc=True),
                                       batch_norm(x, relu_nhwc=True))


def forward_backward(fn, tensors):
    """One forward and the gradients of every input: a function of no arguments."""
    def run():
        out = fn(*tensors)
        outs = out if isinstance(out, tuple) else (out,)
        return torch.autograd.grad(outs, tensors, [torch.ones_like(o) for o in outs])
    return run


def forward_only(fn, tensors):
    """One forward without gradients, as a search's evaluation runs: a function of no arguments."""
    @torch.no_grad()
    def run():
        return fn(*tensors)
    return run


def time_it(run, device: torch.device, repeats: int) -> tuple[float, float]:
    """Microseconds per call, replayed from a CUDA graph on a GPU (eager on the CPU), and milliseconds of the
    first call: with ``cudnn.benchmark`` cuDNN times its algorithms (building some) for each new shape."""
    if device.type == "cuda":
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            t0 = time.perf_counter()
            run()
            torch.cuda.synchronize()
            first = 1000 * (time.perf_counter() - t0)
            for _ in range(2):
                run()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            run()
        graph.replay()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        return 1000 * start.elapsed_time(end) / repeats, first
    t0 = time.perf_counter()
    run()
    first = 1000 * (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(repeats):
        run()
    return 1e6 * (time.perf_counter() - t0) / repeats, first


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--only", default="", help="the cases whose name holds one of these texts, comma-separated "
                                              "(pointwise, dil 2, E=8 C=64, ...)")
    p.add_argument("--forward-only", action="store_true",
                   help="time the forward alone, without gradients (as each epoch's evaluation runs)")
    args = p.parse_args()
    what = "forward" if args.forward_only else "forward+backward"
    device = resolve_device(args.device)
    torch.backends.cudnn.benchmark = True
    check_variants(device)
    print(f"{f'us per {what}, batch {args.batch_size}':45}" + "".join(f"{k:>14}" for k in LAYOUTS))
    results = []
    chosen = lambda name: any(text in name for text in args.only.split(","))
    for name, fn, shapes in (case for case in cases(args.batch_size) if chosen(case[0])):
        row = {"case": name}
        for layout, (memory_format, dtype, arithmetic) in LAYOUTS.items():
            tensors = [torch.randn(s, device=device, dtype=dtype)
                       .contiguous(memory_format=memory_format if len(s) == 4 else torch.contiguous_format)
                       .requires_grad_(not args.forward_only) for s in shapes]
            try:
                with precision(device.type, arithmetic):
                    us, first = time_it((forward_only if args.forward_only else forward_backward)(fn, tensors),
                                        device, args.repeats)
                row[layout], row[f"{layout} first call ms"] = round(us, 1), round(first, 1)
            except Exception as e:  # a variant a backend does not run is reported, the others timed
                row[layout] = f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"
        results.append(row)
        print(f"{name:45}" + "".join(f"{str(row.get(k, '-')):>14}" for k in LAYOUTS)
              + "   first call ms: " + " ".join(str(row.get(f"{k} first call ms", "-")) for k in LAYOUTS), flush=True)
    report = {"benchmark": "conv_variants", "device": device_name(device), "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d"), "batch_size": args.batch_size, "unit": f"us per {what}",
              "columns": list(LAYOUTS), "results": results}
    write_json(f"conv_variants-{device.type}{'-forward' * args.forward_only}", report)


if __name__ == "__main__":
    main()
