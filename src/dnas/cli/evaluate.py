"""``dnas info``, ``train``, ``test``, ``export``, ``show`` and ``zoo``: from a genotype to a trained,
measured and exported network."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..checkpoint import config_of_run
from ..cost import cost, count_params
from ..data import CORPORA, DATASETS, IMAGE_SHAPES
from ..export import FORMATS, export_run
from ..report import images_of, load_run
from ..spaces.darts_network import NETWORKS, check_fits
from ..train import SCHEDULES, TrainConfig, evaluate_run, train
from ..viz import GraphvizNotFound, draw
from ..rnn.train import LMTrainConfig, LMTrainResult, build_lm, evaluate_lm_run, is_lm_run
from ..rnn.genotype import RecurrentGenotype
from ..zoo import ALIASES, ZOO, convolutional, load_genotype, lookup

GENOTYPE_HELP = "a zoo name (see `dnas zoo`), a genotype .json/.txt file, a run directory, or the text form"


def run_info(args: argparse.Namespace) -> None:
    genotype, name = load_genotype(args.genotype)
    saved = config_of_run(args.genotype)
    trained = saved if "genotype" in saved and "config" in saved else {}  # a training run: its network's sizes
    if isinstance(genotype, RecurrentGenotype):
        return info_recurrent(args, genotype, name, trained)
    genotype = convolutional(genotype, name)
    unused = [flag for flag, value in (("--vocab-size", args.vocab_size), ("--hidden-size", args.hidden_size))
              if value is not None]
    if unused:
        raise ValueError(f"{', '.join(unused)}: for recurrent cells; {name} is a convolutional one, sized by "
                         f"--dataset, or --num-classes, --in-channels and --image-size")
    if args.dataset is not None and args.dataset not in IMAGE_SHAPES:
        raise ValueError(f"--dataset {args.dataset}: the image shapes known are those of {', '.join(IMAGE_SHAPES)}; "
                         f"for other images give --in-channels, --image-size and --num-classes")
    # a training run's network, as it trained it, unless told otherwise
    config = trained.get("config", {}) if args.network in (None, trained.get("config", {}).get("network")) else {}
    network_name = args.network or config.get("network", "cifar")
    network = NETWORKS.get(network_name)
    # the images of --dataset, else a training run's, else, for the CIFAR network, those a run directory's
    # genotype was searched on (a cell moved to ImageNet keeps that network's 224 x 224 images)
    if saved and not args.dataset and (bool(config) if trained else network_name == "cifar"):  # the run's images
        in_channels, *size, classes = images_of(saved["config"]["dataset"], saved.get("data"))
    else:
        in_channels, side, classes = IMAGE_SHAPES.get(args.dataset, (3, None, None))
        size = [side or network.image_size] * 2
    in_channels = args.in_channels or in_channels
    size = (args.image_size,) * 2 if args.image_size else size
    options = {"C": args.init_channels or config.get("C"), "layers": args.layers or config.get("layers"),
               "num_classes": args.num_classes or classes}
    options = {k: v for k, v in options.items() if v is not None}
    model = network(genotype, in_channels=in_channels, **options)
    check_fits(model, in_channels, size)
    entry = ZOO.get(name)
    published = entry is not None and entry.genotype == genotype
    print(f"genotype: {name}" + (f"  ({entry.paper}, arXiv {entry.arxiv})" if published else ""))
    print(genotype)
    print(f"network: {network_name}, {len(model.cells)} cells, {model.classifier.out_features} classes, "
          f"input {in_channels}x{size[0]}x{size[1]}")
    c = cost(model, (in_channels, *size))
    print(f"params: {c.params / 1e6:.3f}M ({c.params:,}; auxiliary head excluded)")
    print(f"mult-adds: {c.mult_adds / 1e6:.1f}M per image ({c.mult_adds:,})")
    print_cells(genotype, name, args.output)


def print_cells(genotype, name: str, output: str | None) -> None:
    """Draw the cells to ``output`` (default <name>-cells.png) and say where, or why not."""
    try:
        print(f"cells: {draw(genotype, output or f'{name}-cells.png')}")
    except GraphvizNotFound as e:
        print(f"cells: not drawn ({e})")


def info_recurrent(args: argparse.Namespace, genotype: RecurrentGenotype, name: str, trained: dict) -> None:
    """The language model of a recurrent cell: its size at the paper's 850 (or --hidden-size, or a training
    run's) on the vocabulary of --dataset (ptb: 10,000 words), --vocab-size or a training run's."""
    unused = [flag for flag, value in (("--network", args.network), ("--init-channels", args.init_channels),
                                       ("--layers", args.layers), ("--num-classes", args.num_classes),
                                       ("--in-channels", args.in_channels), ("--image-size", args.image_size))
              if value is not None]
    if unused:
        raise ValueError(f"{', '.join(unused)}: for convolutional cells; {name} is a recurrent one, sized by "
                         f"--hidden-size and --dataset or --vocab-size")
    vocab = args.vocab_size or (trained.get("vocab_size") if not args.dataset else None) \
        or CORPORA.get(args.dataset or "ptb").vocab_size
    if vocab is None:
        raise ValueError(f"the size of a {args.dataset!r} vocabulary is that of its files; give --vocab-size")
    size = args.hidden_size or trained.get("config", {}).get("hidden_size") or LMTrainConfig.hidden_size
    model = build_lm(LMTrainConfig(emb_size=size, hidden_size=size), genotype, vocab)
    entry = ZOO.get(name)
    print(f"genotype: {name}" + (f"  ({entry.paper}, arXiv {entry.arxiv})" if entry else ""))
    print(genotype)
    print(f"language model: embedding = hidden = {size}, vocabulary {vocab:,}, tied decoder")
    params = count_params(model)
    print(f"params: {params / 1e6:.3f}M ({params:,})")
    if args.output:  # drawn where asked (dnas show draws it too)
        print_cells(genotype, name, args.output)


def run_train(args: argparse.Namespace) -> None:
    if args.resume:
        changes = {k: v for k, v in {"device": args.device, "data": args.data}.items() if v}
        result = train(resume=args.resume, progress=not args.quiet, **changes)
    else:
        if not args.genotype:
            raise ValueError("give --genotype (" + GENOTYPE_HELP + "), or --resume RUN_DIR")
        check_train_options(args, *load_genotype(args.genotype))
        settings = {k: v for k, v in {
            "data": args.data, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
            "C": args.init_channels, "layers": args.layers, "auxiliary": args.auxiliary, "cutout": args.cutout,
            "drop_path": args.drop_path, "subset": args.subset, "test_subset": args.test_subset, "seed": args.seed,
            "device": args.device, "emb_size": args.hidden_size, "hidden_size": args.hidden_size,
            "channels_last": args.channels_last or None, "lr_schedule": args.lr_schedule, "momentum": args.momentum,
            "weight_decay": args.weight_decay, "grad_clip": args.grad_clip, "label_smoothing": args.label_smoothing,
            "auxiliary_weight": args.auxiliary_weight,
        }.items() if v is not None}
        result = train(args.genotype, args.dataset, network=args.network or "cifar", run_dir=args.run_dir,
                       runs_root=args.runs, progress=not args.quiet, **settings)
    if isinstance(result, LMTrainResult):
        print(f"validation perplexity: {result.metrics[-1]['val_ppl']:.2f} after the last epoch "
              f"(best epoch: {result.best_val_ppl:.2f}); `dnas test {result.run_dir}` for the test perplexity")
        print(f"run directory: {result.run_dir}")
        return
    best = max(m["test_acc"] for m in result.metrics)
    print(f"test accuracy: {result.test_acc:.4f} after the last epoch (best epoch: {best:.4f})")
    print(f"run directory: {result.run_dir}")


def check_train_options(args: argparse.Namespace, genotype, name: str) -> None:
    """A ValueError naming the options of ``dnas train`` that do not apply to ``genotype``'s kind of network."""
    recurrent = isinstance(genotype, RecurrentGenotype)
    image = {"--network": args.network, "--layers": args.layers, "--init-channels": args.init_channels,
             "--auxiliary": args.auxiliary, "--cutout": args.cutout, "--drop-path": args.drop_path,
             "--test-subset": args.test_subset, "--channels-last": args.channels_last or None,
             "--lr-schedule": args.lr_schedule, "--momentum": args.momentum, "--label-smoothing": args.label_smoothing,
             "--auxiliary-weight": args.auxiliary_weight}
    unused = [flag for flag, value in image.items() if value is not None] if recurrent else \
        (["--hidden-size"] if args.hidden_size is not None else [])
    if unused:
        kind = ("a recurrent one, trained as a language model on a text corpus (docs/recurrent.md)" if recurrent
                else "a convolutional one, trained on images")
        raise ValueError(f"{', '.join(unused)}: not for {name}, {kind}")


def run_test(args: argparse.Namespace) -> None:
    if is_lm_run(args.run):
        lm = evaluate_lm_run(args.run, dataset=args.dataset, data=args.data, weights=args.weights or "best",
                             device=args.device or "auto", batch_size=args.batch_size, subset=args.subset,
                             progress=not args.quiet)
        print(f"valid perplexity: {lm.valid_ppl:.2f}  test perplexity: {lm.test_ppl:.2f}")
        print(f"written: {lm.file}")
        return
    report = evaluate_run(args.run, dataset=args.dataset, data=args.data, weights=args.weights or "last",
                          device=args.device or "auto", batch_size=args.batch_size, subset=args.subset,
                          progress=not args.quiet)
    print(f"test accuracy: {report.accuracy:.4f}  top-5: {report.top5:.4f}  loss: {report.loss:.4f}")
    width = max(len(c) for c in report.classes)
    print("confusion matrix (rows: true class, columns: predicted, in the same order):")
    for name, row in zip(report.classes, report.confusion.tolist()):
        print(f"  {name:>{width}}  " + " ".join(f"{v:5d}" for v in row))
    print(f"written: {report.files[0]}, {report.files[1]}")


def run_export(args: argparse.Namespace) -> None:
    print(f"exported: {export_run(args.run, args.format, weights=args.weights, path=args.output)}")


def run_show(args: argparse.Namespace) -> None:
    if args.epoch is not None:  # the cells derived after an epoch of a search run
        if not Path(args.genotype).expanduser().is_dir():
            raise ValueError(f"--epoch picks an epoch of a search run; {args.genotype} is not a search run directory")
        run = load_run(args.genotype)
        genotype, name = run.genotype(args.epoch), f"{run.name}-epoch{args.epoch}"
    else:  # a search run's result (its last completed epoch's while it runs), a training run's, a file, a name
        genotype, name = load_genotype(args.genotype)
    print(f"{name}: {draw(genotype, args.output or f'{name}-cells.png')}")


def run_zoo(args: argparse.Namespace) -> None:
    if args.name:  # one entry, with its cells
        e = lookup(args.name)
        print(f"{e.name}  {e.paper}  arXiv {e.arxiv}\ntranscribed from {e.source}\n{e.genotype}")
        return
    for e in ZOO.values():
        print(f"{e.name:<15} {e.paper}  arXiv {e.arxiv}\n{'':<15} transcribed from {e.source}")
    print("aliases: " + ", ".join(f"{a} = {n}" for a, n in ALIASES.items()))


def positive(text: str) -> int:
    """An argparse type: an int of 1 or more."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def register(sub) -> None:
    defaults = TrainConfig()

    i = sub.add_parser("info", help="parameters, mult-adds and a picture of a genotype's network")
    i.add_argument("--genotype", required=True, help=GENOTYPE_HELP)
    i.add_argument("--network", help=f"one of {', '.join(NETWORKS.names())} (default cifar, or the one a training "
                                     f"run trained)")
    i.add_argument("--init-channels", type=positive,
                   help="initial channels (default: a training run's, or the network's, 36 or 48)")
    i.add_argument("--layers", type=positive, help="cells (default: a training run's, or the network's, 20 or 14)")
    i.add_argument("--num-classes", type=positive, help="classes (default 10 or 1000)")
    i.add_argument("--dataset", help=f"the images whose channels, size and classes size the network: "
                                     f"{', '.join(IMAGE_SHAPES)} (default: the network's, or for the cifar network "
                                     f"a run directory's); recurrent cells: the corpus whose vocabulary sizes the "
                                     f"model, one of {', '.join(CORPORA.names())} (default ptb: 10,000 words)")
    i.add_argument("--vocab-size", type=positive, help="recurrent cells: vocabulary size (default: the corpus's)")
    i.add_argument("--hidden-size", type=positive, help="recurrent cells: embedding = hidden size (default 850)")
    i.add_argument("--in-channels", type=positive, help="image channels (default 3)")
    i.add_argument("--image-size", type=positive, help="image side for mult-adds (default 32 or 224)")
    i.add_argument("-o", "--output", help="cell picture, .png or .svg (default <genotype>-cells.png)")
    i.set_defaults(func=run_info)

    t = sub.add_parser("train", help="train a genotype's network from scratch",
                       description="Train a genotype's network. Defaults are the DARTS paper's CIFAR-10 evaluation; "
                                   "--network imagenet takes its ImageNet settings.")
    t.add_argument("--genotype", help=GENOTYPE_HELP)
    t.add_argument("--dataset", help=f"one of {', '.join(DATASETS.names())} (default cifar10); for a recurrent "
                                     f"genotype a corpus: {', '.join(CORPORA.names())} (default ptb)")
    t.add_argument("--hidden-size", type=int, help="recurrent genotype: embedding = hidden size (default 850)")
    t.add_argument("--data", help="data folder (Fashion-MNIST defaults to /usr/share/datasets/fashion-mnist)")
    t.add_argument("--network", help=f"one of {', '.join(NETWORKS.names())} (default cifar)")
    t.add_argument("--epochs", type=int, help=f"default {defaults.epochs} (imagenet 250)")
    t.add_argument("--batch-size", type=int, help=f"default {defaults.batch_size} (imagenet 128)")
    t.add_argument("--lr", type=float, help=f"initial learning rate (default {defaults.lr}; imagenet 0.1)")
    t.add_argument("--lr-schedule", choices=list(SCHEDULES),
                   help=f"the learning rate's decay over the epochs (default {defaults.lr_schedule}; imagenet "
                        f"exponential, by 0.97 an epoch)")
    t.add_argument("--momentum", type=float, help=f"SGD momentum (default {defaults.momentum})")
    t.add_argument("--weight-decay", type=float,
                   help=f"default {defaults.weight_decay:g} (imagenet 3e-05; recurrent 8e-07)")
    t.add_argument("--grad-clip", type=float, help=f"the norm the gradient is clipped to (default "
                                                   f"{defaults.grad_clip:g}; recurrent 0.25)")
    t.add_argument("--label-smoothing", type=float, help=f"default {defaults.label_smoothing:g} (imagenet 0.1)")
    t.add_argument("--layers", type=int, help=f"cells (default {defaults.layers}; imagenet 14)")
    t.add_argument("--init-channels", type=int, help=f"initial channels C (default {defaults.C}; imagenet 48)")
    t.add_argument("--auxiliary", action=argparse.BooleanOptionalAction,
                   help="auxiliary head, its loss weighted by --auxiliary-weight (default on)")
    t.add_argument("--auxiliary-weight", type=float,
                   help=f"the auxiliary head's share of the loss (default {defaults.auxiliary_weight})")
    t.add_argument("--cutout", type=int, nargs="?", const=16,
                   help=f"cutout length; --cutout alone is 16, 0 is off (default {defaults.cutout}; imagenet 0)")
    t.add_argument("--drop-path", type=float,
                   help=f"drop-path probability reached at the last epoch (default {defaults.drop_path}; imagenet 0)")
    t.add_argument("--subset", type=int, help="train on N training images only (quick runs; a fixed random sample)")
    t.add_argument("--test-subset", type=int, help="test on N test images only (a fixed random sample)")
    t.add_argument("--channels-last", action="store_true",
                   help="network and images in the NHWC memory layout (same results up to rounding; on a CPU "
                        "a training step of the paper's CIFAR network ~1.35x faster, of a small one ~5%%; "
                        "docs/speed.md)")
    t.add_argument("--seed", type=int, help=f"random seed (default {defaults.seed})")
    t.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when present, else cpu)")
    t.add_argument("--runs", default="runs", help="folder for new run directories (default runs/)")
    t.add_argument("--run-dir", help="run directory (default runs/<time>-train-<genotype>-<dataset>)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=run_train)

    s = sub.add_parser("test", help="test accuracy and confusion matrix of a trained run")
    s.add_argument("run", help="a training run directory")
    s.add_argument("--dataset", help="data set (default: the run's)")
    s.add_argument("--data", help="data folder (default: the run's)")
    s.add_argument("--weights", help="last (default; language models: best), best, or a .pt file of the weights")
    s.add_argument("--batch-size", type=int, help="default: the run's")
    s.add_argument("--subset", type=int, help="test on N test images only (quick checks; a fixed random sample; "
                                              "default: all, where the run's epochs may have tested a sample); "
                                              "a language model: the first N tokens of the valid and test text")
    s.add_argument("--device", help="default: cuda when present, else cpu")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=run_test)

    e = sub.add_parser("export", help="export a trained run's network to ONNX, torch.export (pt2) or TorchScript")
    e.add_argument("run", help="a training run directory")
    e.add_argument("--format", required=True, choices=list(FORMATS),
                   help=f"{' or '.join(FORMATS)}: the inference network (no auxiliary head), images in, logits out")
    e.add_argument("--weights", default="last", help="last (default), best, or a .pt file of the network's weights")
    e.add_argument("-o", "--output", help="output file (default RUN/model.onnx, model.pt2 or model.pt)")
    e.set_defaults(func=run_export)

    w = sub.add_parser("show", help="draw a genotype's normal and reduction cells")
    w.add_argument("genotype", help=GENOTYPE_HELP)
    w.add_argument("--epoch", type=int, help="of a search run: the cells derived after this epoch (default: the "
                                             "run's result)")
    w.add_argument("-o", "--output", help="picture, .png, .svg or .pdf (default <genotype>-cells.png)")
    w.set_defaults(func=run_show)

    z = sub.add_parser("zoo", help="list the published genotypes with their papers")
    z.add_argument("name", nargs="?", help="one of them (or an alias): its paper, source and genotype")
    z.set_defaults(func=run_zoo)
