"""``dnas search`` and ``dnas methods``."""
from __future__ import annotations

import argparse
import inspect

from ..data import CORPORA, DATASETS
from ..methods import builtin_methods, get_method
from ..search import PRECISIONS, search
from ..spaces import SPACES


#: The optimisers' settings ``dnas search`` takes, with their defaults and what they set.
OPTIMISATION = {
    "lr": ("0.025 [20]", "the weights' SGD learning rate, cosine-annealed to --lr-min [constant]"),
    "lr_min": ("0.001", "the weights' learning rate at the last epoch"),
    "momentum": ("0.9 [0]", "the weights' SGD momentum"),
    "weight_decay": ("3e-4 [5e-7]", "the weights' weight decay"),
    "grad_clip": ("5 [0.25]", "the norm the weights' gradient is clipped to"),
    "arch_lr": ("3e-4 [3e-3]", "the alphas' Adam learning rate"),
    "arch_weight_decay": ("1e-3", "the alphas' weight decay"),
    "arch_grad_clip": ("none; P-DARTS 5", "the norm the alphas' gradient is clipped to"),
    "train_portion": ("0.5", "the share of the training images the weights train on; the alphas' is the rest"),
}


def run_search(args: argparse.Namespace) -> None:
    if args.resume:
        changes = {k: v for k, v in {"device": args.device, "data": args.data,
                                     "tensorboard": args.tensorboard or None}.items() if v}
        result = search(resume=args.resume, progress=not args.quiet, **changes)
    else:
        method = get_method(args.method)
        space = SPACES.get(args.space or method.part("space"))
        depth = getattr(space, "depth_option", "layers")  # --layers: NAS-Bench-201's cells per stage
        if args.hidden_size is not None and "hidden_size" not in inspect.signature(space).parameters:
            raise ValueError(f"--hidden-size is the recurrent space's (--space darts-rnn); the "
                             f"{args.space or method.part('space')} space's width is --init-channels")
        settings = {k: v for k, v in {
            "data": args.data, "epochs": args.epochs, "batch_size": args.batch_size, "seed": args.seed,
            "device": args.device, "subset": args.subset, "cutout": args.cutout,
            "arch_warmup_epochs": args.arch_warmup_epochs,
            "tensorboard": args.tensorboard or None,
            "C": args.init_channels, depth: args.layers, "nodes": args.nodes,
            "ops": tuple(args.ops.split(",")) if args.ops else None,
            "emb_size": args.hidden_size, "hidden_size": args.hidden_size,
            "precision": args.precision, "channels_last": args.channels_last or None,
            "eval_batch_size": args.eval_batch_size,
            "eval_channels_last": args.eval_channels_last or None, "eval_every": args.eval_every,
            "fused": args.fused or None,
            "merge_kernel_sizes": args.merge_kernel_sizes or None, "side_streams": args.side_streams,
            "dense_samples": args.dense_samples or None,
            **{name: getattr(args, name) for name in OPTIMISATION},
        }.items() if v is not None}
        result = search(space=args.space, method=args.method, dataset=args.dataset, run_dir=args.run_dir,
                        runs_root=args.runs, progress=not args.quiet, fast=args.fast, **settings)
    print(f"genotype: {result.genotype}")
    print(f"run directory: {result.run_dir}")


def run_methods(args: argparse.Namespace) -> None:
    for m in builtin_methods().values():
        print(f"{m.name:<12} {m.year or '':<5} {m.changes}\n{'':<18} {m.paper}")


def register(sub) -> None:
    s = sub.add_parser("search", help="search a cell on a data set",
                       description="Search an architecture. Defaults are the DARTS paper's CIFAR-10 search.")
    s.add_argument("--method", default="darts-v1", help="built-in method (see `dnas methods`) or a recipe .toml")
    s.add_argument("--dataset", help=f"one of {', '.join(DATASETS.names())} (default cifar10); for --space darts-rnn "
                                     f"a text corpus: {', '.join(CORPORA.names())} (default ptb)")
    s.add_argument("--data", help="data folder (Fashion-MNIST defaults to /usr/share/datasets/fashion-mnist)")
    s.add_argument("--space", help="search space (default: the method's): darts, nb201, darts-rnn (recurrent, "
                                   "on a corpus)")
    s.add_argument("--epochs", type=int, help="default 50")
    s.add_argument("--batch-size", type=int, help="default 64")
    s.add_argument("--arch-warmup-epochs", type=int, metavar="N",
                   help="epochs of weight steps only before the alphas move (default: the method's; PC-DARTS 15, "
                        "P-DARTS 10 per stage, others 0)")
    s.add_argument("--layers", type=int, help="cells in the supernet (default 8, at least 3; P-DARTS: its "
                                              "stages' own); --space nb201: cells per stage (default 5)")
    s.add_argument("--init-channels", type=int, help="initial channels C (default 16)")
    s.add_argument("--nodes", type=int, help="intermediate nodes per cell (default 4; darts-rnn 8)")
    s.add_argument("--hidden-size", type=int, help="darts-rnn: embedding = hidden size (default 300)")
    s.add_argument("--ops", help="comma-separated candidate ops (default: the 8 DARTS ops)")
    s.add_argument("--subset", type=int, help="use only the first N training images (quick runs)")
    s.add_argument("--cutout", type=int, help="cutout length (default 0: off)")
    optimisation = s.add_argument_group("optimisation (default: the method's; the DARTS paper's CIFAR-10 search "
                                        "below, darts-rnn's PTB search in brackets)")
    for name, (default, what) in OPTIMISATION.items():
        optimisation.add_argument("--" + name.replace("_", "-"), type=float, metavar="X", help=f"{what} ({default})")
    s.add_argument("--fast", action="store_true",
                   help="the fast path: the cells fused (DARTS and NAS-Bench-201 spaces: the same computation up to "
                        "float32 rounding, which near-tied alphas can turn into another genotype; fewer and "
                        "larger kernels) and, on a GPU, each step replayed from a CUDA graph; on a CPU the NHWC "
                        "layout (--channels-last), fused but for GDAS; docs/speed.md")
    s.add_argument("--fused", action="store_true",
                   help="the cells by their fused path alone (DARTS and NAS-Bench-201 spaces; part of --fast)")
    s.add_argument("--merge-kernel-sizes", action="store_true",
                   help="with fused cells: their 3x3 and 5x5 ops as one op of 5x5 kernels (23%% fewer kernels, 6%% "
                        "more bytes; slower on a CPU; docs/speed.md)")
    s.add_argument("--side-streams", type=int, metavar="N",
                   help="with fused cells on a GPU: their independent ops on N side streams (docs/speed.md)")
    s.add_argument("--dense-samples", action="store_true",
                   help="with fused cells and a hard relaxation (GDAS): every op computed, the unsampled weighed by "
                        "zero, so that the step can be replayed from a CUDA graph (with --fast on a GPU; "
                        "docs/speed.md)")
    s.add_argument("--precision", choices=PRECISIONS,
                   help="fp32 (default: IEEE float32, as the papers computed; on a GPU PyTorch's default would run "
                        "convolutions in TF32), tf32 (convolutions and matrix products in TF32), or bf16 (the search "
                        "steps under bf16 autocast); docs/speed.md")
    s.add_argument("--channels-last", action="store_true",
                   help="supernet and images in the NHWC memory layout: on a CPU the search step runs 1.4-2x "
                        "faster (same results up to rounding; part of --fast there; docs/speed.md)")
    s.add_argument("--eval-batch-size", type=int,
                   help="batch of each epoch's evaluation (default: --batch-size; darts-rnn 10); the search is the "
                        "same at any, only faster (--fast makes it 256 on a GPU)")
    s.add_argument("--eval-channels-last", action="store_true",
                   help="each epoch's evaluation in NHWC, also where the steps run NCHW; the search is the same, only "
                        "its speed differs (docs/speed.md)")
    s.add_argument("--eval-every", type=int, metavar="N",
                   help="evaluate the supernet on the search-val half every N epochs and after the last (default 1, "
                        "as DARTS's code); the search is the same, only its time differs")
    s.add_argument("--seed", type=int, help="random seed (default 2); same seed, same result on the CPU")
    s.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when present, else cpu)")
    s.add_argument("--runs", default="runs", help="folder for new run directories (default runs/)")
    s.add_argument("--run-dir", help="run directory (default runs/<time>-<method>-<dataset>, with the space before "
                                     "the data set where it is not the method's own)")
    s.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    s.add_argument("--tensorboard", action="store_true",
                   help="log scalars, alpha heat maps and cell pictures to TensorBoard in the run directory "
                        "(needs `pip install tensorboard`; view with `tensorboard --logdir runs/`)")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=run_search)

    m = sub.add_parser("methods", help="list the built-in methods with their papers")
    m.set_defaults(func=run_methods)
