"""The search loop: alternating weight and architecture steps on two halves of the training set.

DARTS Algorithm 1 (Liu, Simonyan, Yang, ICLR 2019): for each step, (1) update alpha by descending the
architecture gradient of L_val, (2) update the weights w by descending grad_w L_train(w, alpha). The
parts (space, relaxation, architecture gradient, selection) come from the method's recipe; the loop is
the same for every method. Each run writes a directory a person can read without dnas:

    config.json      the resolved settings and the method's recipe
    metrics.jsonl    one line per epoch: lr, losses, accuracies, time, derived genotype and the space's
                     measures of it (DARTS: its skip connections and parameter-free ops)
    alphas.jsonl     one line per epoch: the architecture parameters and the op strengths of every edge
    genotype.txt     the final genotype in the DARTS text form; genotype.json the same as JSON
    checkpoint.pt    everything needed to resume exactly, written atomically after each epoch

A selection with ``after_search(search, progress)`` returns the genotype after the loop, working on the
trained supernet (DARTS-PT's projection, projection.py); it keeps its progress in the checkpoint.
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import difflib
import inspect
import json
import os
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.func import functional_call
from tqdm.auto import tqdm

from . import checkpoint
from .arch_grad import Implicit
from .cuda_graph import GraphedStep, GraphPool, set_capturable
from .data import BatchLoader, load_dataset, memory_format, split_indices
from .genotype import Genotype
from .methods import Method, Parts, get_method
from .relax import is_hard
from .settings import bars_off, own_torch_state, say, temporarily, warn
from .spaces import SPACES, fused

CHECKPOINT_FORMAT = "dnas-search-checkpoint-v1"


FUSED_WAYS = ("merge_kernel_sizes", "side_streams", "dense_samples")  # the settings of the fused cells' ways


@dataclass
class SearchConfig:
    """Settings of a search. The defaults are the DARTS paper's CIFAR-10 search (Sec. 3.1.1, App. A.1.1):
    weights by SGD (lr 0.025 annealed by cosine to 0.001, momentum 0.9, weight decay 3e-4, gradient clip 5),
    alphas by Adam (lr 3e-4, betas (0.5, 0.999), weight decay 1e-3), batch 64, 50 epochs, the training set
    split in halves for search-train and search-val. A recipe's ``[config]`` overrides these, and the
    user's settings override the recipe.
    """

    method: str = "darts-v1"
    dataset: str = "cifar10"
    data: str | None = None
    space: str | None = None  # None: the method's
    space_options: dict[str, Any] = field(default_factory=dict)  # C, layers, nodes, ops, ...
    epochs: int = 50
    batch_size: int = 64
    lr: float = 0.025
    lr_min: float = 0.001
    momentum: float = 0.9
    nesterov: bool = False  # Nesterov momentum for the weights (GDAS's and NAS-Bench-201's code); DARTS: plain
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    arch_lr: float = 3e-4
    arch_betas: tuple[float, float] = (0.5, 0.999)
    arch_weight_decay: float = 1e-3
    arch_grad_clip: float | None = None  # the norm the alphas' gradient is clipped to (P-DARTS's code: 5); None: none
    weight_step_first: bool = False  # each step's weight step before its architecture step (GDAS's code); DARTS's
    # Algorithm 1 takes the architecture step first
    step_unused_weights: bool = False  # the weights of ops a step does not run (GDAS's unsampled ops) still take the
    # weight optimiser's weight decay and momentum once they have had a gradient: PyTorch 1.x's zero_grad, which the
    # methods' code ran, left them zero gradients (GDAS's code); False: they stay as they are (no gradient)
    train_portion: float = 0.5
    arch_warmup_epochs: int = 0  # epochs of weight steps only before alpha moves (PC-DARTS, P-DARTS)
    cutout: int = 0  # cutout length; 0 = off (the DARTS search uses none)
    subset: int | None = None  # use only the first N training images (quick runs)
    seed: int = 2
    device: str = "auto"
    tensorboard: bool = False  # also log each epoch to TensorBoard in the run directory (pip install tensorboard)
    cuda_graph: bool = False  # on a GPU, replay each step from a CUDA graph (cuda_graph.py); no effect on the CPU
    precision: str = "fp32"  # IEEE float32; "tf32": convolutions and matrix products in TF32; "bf16": the steps
    # under bf16 autocast (the rest fp32); ``precision`` below
    channels_last: bool = False  # supernet and images in NHWC layout: on the CPU the readable cell's step ~2x faster
    eval_batch_size: int | None = None  # of each epoch's evaluation (None: batch_size): a speed setting, the search
    # is the same at any (its evaluation draws from its own generator); --fast makes it 256 on a GPU
    eval_channels_last: bool = False  # each epoch's evaluation in NHWC, also where the steps run NCHW: a speed
    # setting (the cells follow their input's layout, the search is the same)
    eval_every: int = 1  # evaluate the supernet every this many epochs and after the last (DARTS's code: every
    # epoch): the search is the same, the epochs between have no val_loss / val_acc
    merge_kernel_sizes: bool = False  # the fused cells' 3x3 and 5x5 ops run as one (spaces.fused.merge_kernel_sizes)
    side_streams: int = 0  # on a GPU, the fused cells' independent ops on this many side streams (spaces.fused.
    # side_streams); no effect on the CPU
    dense_samples: bool = False  # a hard relaxation's fused cells compute every op, the unsampled weighed by zero,
    # so that GDAS's step can be replayed from a CUDA graph (spaces.fused.dense_samples); not yet measured on a GPU

    def __post_init__(self):
        check_minimums(vars(self), epochs=1, batch_size=1, subset=1, cutout=0, eval_batch_size=1, eval_every=1,
                       side_streams=0, arch_warmup_epochs=0, lr_min=0, momentum=0, weight_decay=0, arch_weight_decay=0)
        check_positive(vars(self), "lr", "arch_lr", "grad_clip", "arch_grad_clip")
        if not 0 < self.train_portion < 1:
            raise ValueError(f"train_portion is the share of the training images the weights train on, the rest "
                             f"the alphas', between 0 and 1; not {self.train_portion}")
        ways = [name for name in FUSED_WAYS if getattr(self, name)]
        if ways and not self.space_options.get("fused"):
            raise ValueError(f"{' and '.join(ways)}: ways of running the fused cells, and this search runs the "
                             f"readable ones: add fused=True (--fused)")

    @classmethod
    def fields(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}


def progress_every(steps: int) -> int:
    """How often a progress bar of ``steps`` shows the running loss: reading it waits for the device, so not
    at every step of a long epoch, but at least 10 times an epoch."""
    return max(1, min(10, steps // 10))


def check_minimums(settings: dict[str, Any], **minimums: int) -> None:
    """A ValueError naming each of ``settings`` below its minimum (None: not set, allowed)."""
    low = [f"{name} must be >= {m}, not {settings[name]}" for name, m in minimums.items()
           if settings[name] is not None and settings[name] < m]
    if low:
        raise ValueError("; ".join(low))


def check_positive(settings: dict[str, Any], *names: str) -> None:
    """A ValueError naming each of ``settings``' ``names`` that is not above 0 (None: not set, allowed)."""
    low = [f"{name} must be > 0, not {settings[name]}" for name in names
           if settings[name] is not None and settings[name] <= 0]
    if low:
        raise ValueError("; ".join(low))


def check_subset(n: int | None, total: int, what: str, option: str = "subset") -> None:
    """A ValueError where a subset of ``n`` images (the setting ``option``) is asked of ``total`` ``what``."""
    if n is not None and n > total:
        raise ValueError(f"{option} {n} is more than the {total:,} {what}; give at most {total} (or none: all)")


@dataclass
class SearchResult:
    genotype: Genotype
    run_dir: Path
    metrics: list[dict[str, Any]]


class Search:
    """One search run: data, supernet, optimisers and the loop, resumable from its run directory."""

    def __init__(self, config: SearchConfig, run_dir: str | os.PathLike, method: Method | None = None):
        self.config = config
        self.run_dir = Path(run_dir).expanduser()
        self.method = method or get_method(config.method)
        self.device = resolve_device(config.device)
        if config.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {config.precision!r}; valid: {', '.join(PRECISIONS)}")
        torch.manual_seed(config.seed)
        if self.device.type == "cpu":
            reuse_large_blocks()
        self.setup()
        gpu_only = [name for name in ("cuda_graph", "side_streams") if getattr(config, name)]
        if gpu_only and self.device.type != "cuda":  # after setup, which refuses them where they do not apply
            warn(f"{' and '.join(gpu_only)}: ways of running on a GPU, with no effect on {self.device}")
        if config.dense_samples and not is_hard(self.parts.relaxation):
            warn(f"dense_samples: a way of running a hard relaxation (GDAS), whose steps run only the sampled ops; "
                 f"{self.method.name}'s relaxation is soft and runs every op already")
        elif config.dense_samples and not config.step_unused_weights:
            warn("dense_samples gives the weights of the ops not sampled zero gradients, so the weight optimiser's "
                 "decay and momentum move them as with step_unused_weights, which this search has off")
        self.graph = self.eval_graph = None  # the step and the evaluation replayed from CUDA graphs (on a GPU)
        if config.cuda_graph and self.device.type == "cuda":
            for optimizer in (self.a_optimizer, self.w_optimizer):
                set_capturable(optimizer)
            pool = GraphPool()  # one memory for both steps' graphs, which never run at once
            self.graph, self.eval_graph = (GraphedStep(self._bilevel_step, pool=pool),
                                           GraphedStep(self._eval_batch, pool=pool))
        self.graphed_for = None  # what the graphs were captured for (``renew_graphs``)
        self.epoch = 0  # epochs completed
        self.stopped: dict[str, Any] | None = None  # {"reason", "genotype_epoch"} once a stopper ended the run

    def setup(self) -> None:
        """Data, parts, supernet, optimisers and schedule (a space with its own data overrides this)."""
        config = self.config
        data = load_dataset(config.dataset, config.data)
        if not (self.run_dir / "checkpoint.pt").exists():  # a resumed run keeps the settings it started with
            check_subset(config.subset, len(data.train_y), f"training images of {config.dataset}")
        x, y = data.train_x[: config.subset], data.train_y[: config.subset]
        train_idx, val_idx = split_indices(len(y), config.train_portion)
        layout = memory_format(config.channels_last)
        loader = partial(BatchLoader, batch_size=config.batch_size, mean=data.mean, std=data.std,
                         augment=True, cutout=config.cutout, shuffle=True, device=self.device, memory_format=layout)
        # DARTS draws both halves from the augmented training set
        self.train_loader = loader(x[train_idx], y[train_idx], generator=torch.Generator().manual_seed(config.seed))
        self.val_loader = loader(x[val_idx], y[val_idx], generator=torch.Generator().manual_seed(config.seed + 1))
        # the evaluation's own batches, at its own batch size, drawn from its own generator (seeded each epoch)
        self.eval_loader = loader(self.val_loader.x, self.val_loader.y, shuffle=False, generator=torch.Generator(),
                                  batch_size=config.eval_batch_size or config.batch_size,
                                  memory_format=memory_format(config.channels_last or config.eval_channels_last))
        if len(self.train_loader) == 0 or len(self.val_loader) == 0:
            raise ValueError(f"{len(y)} training images are too few to split into search-train and search-val")

        self.parts = self.method.build_parts()
        self.model = build_supernet(config.space or self.method.part("space"), config.space_options,
                                    num_classes=data.num_classes, in_channels=data.channels,
                                    relaxation=self.parts.relaxation, edge=self.parts.edge
                                    ).to(self.device, memory_format=layout)
        self.model.check_image_size(data.image_size)
        self.data = {"images": len(y), "num_classes": data.num_classes, "channels": data.channels,
                     "image_size": list(data.image_size), "classes": data.classes}  # what was read, for config.json
        self.w_optimizer, self.a_optimizer = optimizers(self.model, config)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.w_optimizer, config.epochs,
                                                                    eta_min=config.lr_min)

    def generators(self) -> dict[str, torch.Generator]:
        """The random generators of the data, saved and restored with the checkpoint."""
        return {"train": self.train_loader.generator, "val": self.val_loader.generator}

    # -- one step -------------------------------------------------------------------------------------
    def step(self, train_batch, val_batch) -> tuple[torch.Tensor, torch.Tensor]:
        if self.graph is not None:
            return self.graph(*train_batch, *val_batch)
        return self._bilevel_step(*train_batch, *val_batch)

    def _bilevel_step(self, x, y, val_x, val_y) -> tuple[torch.Tensor, torch.Tensor]:
        return self.bilevel(self.w_optimizer, self.epoch >= self.config.arch_warmup_epochs, x, y, val_x, val_y)

    def bilevel(self, w_optimizer, update_arch: bool, x, y, val_x, val_y) -> tuple[torch.Tensor, torch.Tensor]:
        """``bilevel_step`` on this search's supernet and parts at its precision, with ``w_optimizer``
        (DARTS-PT tunes with one of its own)."""
        timed = torch.backends.cudnn.benchmark and len(y) == len(val_y) == self.config.batch_size
        with precision(self.device.type, self.config.precision), cudnn_benchmark(timed):
            return bilevel_step(self.model, self.parts, self.a_optimizer, w_optimizer, (x, y), (val_x, val_y),
                                self.config.grad_clip, update_arch, self.config.arch_grad_clip,
                                self.config.weight_step_first, self.config.step_unused_weights)

    # -- epochs ---------------------------------------------------------------------------------------
    def train_epoch(self, progress: bool) -> dict[str, float]:
        loss_sum = correct = seen = 0
        bar = tqdm(zip(self.train_loader, self.val_loader), total=len(self.train_loader), disable=bars_off(progress),
                   desc=f"epoch {self.epoch + 1}/{self.config.epochs}", unit="step", leave=False, dynamic_ncols=True)
        postfix_every = progress_every(len(self.train_loader))
        for i, (train_batch, val_batch) in enumerate(bar):
            loss, right = self.step(train_batch, val_batch)
            n = len(train_batch[1])
            loss_sum, correct, seen = loss_sum + loss * n, correct + right, seen + n
            if i % postfix_every == 0:
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{correct.item() / seen:.3f}")
        return {"train_loss": float(loss_sum) / seen, "train_acc": float(correct) / seen}

    @torch.no_grad()
    def evaluate(self, progress: bool = False) -> dict[str, float]:
        """Loss and accuracy of the supernet (evaluation mode) on the search-val half, augmented as DARTS's
        code evaluates it. Its random crops and flips come from a generator seeded by the seed and the epoch,
        not from the search's streams: the search is the same at any evaluation batch size (the measures are
        over other random crops), and a resumed run evaluates as an uninterrupted one."""
        self.model.eval()
        self.eval_loader.generator.manual_seed(self.config.seed + 1_000_003 * (self.epoch + 1))
        loss_sum = correct = seen = 0
        for x, y in tqdm(self.eval_loader, disable=bars_off(progress), desc="evaluating", unit="batch", leave=False,
                         dynamic_ncols=True):
            loss, right = (self.eval_graph or self._eval_batch)(x, y)
            loss_sum, correct, seen = loss_sum + loss, correct + right, seen + len(y)
        return {"val_loss": float(loss_sum) / seen, "val_acc": float(correct) / seen}

    def renew_graphs(self) -> None:
        """Before an epoch: drop the captured graphs where its steps differ from those they were captured for.
        A part with a schedule (``on_epoch_start``: a temperature, a regulariser's weight, DARTS-'s beta) has
        its numbers baked into them, so they are captured afresh each epoch; otherwise once, and again at the
        first epoch whose steps move the alphas. The learning rate is a device tensor (``set_capturable``)."""
        scheduled = any(hasattr(part, "on_epoch_start") for part in self.parts)
        now = (self.epoch if scheduled else None, self.epoch >= self.config.arch_warmup_epochs)
        if self.graph is not None and now != self.graphed_for:
            self.graph.reset()
            self.eval_graph.reset()
        self.graphed_for = now

    def _eval_batch(self, x, y) -> tuple[torch.Tensor, torch.Tensor]:
        with cudnn_benchmark(torch.backends.cudnn.benchmark and len(y) == self.eval_loader.batch_size):
            logits = self.model(x)
        return F.cross_entropy(logits, y, reduction="sum"), (logits.argmax(1) == y).sum()

    @checkpoint.guarded_run("search")
    def run(self, progress: bool = True) -> SearchResult:
        # all but the steps, which set their own precision; cuDNN times its algorithms for each new shape of
        # a full batch (fixed shapes, as DARTS does), not for an epoch's last, smaller ones; the fused cells
        # run as the search's settings say throughout (steps, evaluation, DARTS-PT's measures)
        c = self.config
        with precision(self.device.type, self.eval_precision), cudnn_benchmark(True), \
                fused.merge_kernel_sizes(c.merge_kernel_sizes), fused.side_streams(c.side_streams), \
                fused.dense_samples(c.dense_samples):
            return self._run(progress)

    def describe(self) -> str:
        """The line a run starts with: the method, the data (what was read of it), the epochs, the device and
        how the steps run there (what ``--fast`` chose), and the run directory."""
        c, gpu = self.config, self.device.type == "cuda"
        ways = [way for way, on in (("fused cells", c.space_options.get("fused")), ("NHWC", c.channels_last),
                                    ("CUDA graph", c.cuda_graph and gpu),
                                    ("3x3 and 5x5 ops merged", c.merge_kernel_sizes),
                                    (f"{c.side_streams} side streams", c.side_streams and gpu),
                                    ("every op, sampled on the device", c.dense_samples),
                                    ("evaluation NHWC", c.eval_channels_last and not c.channels_last)) if on]
        resumed = f" resumed after epoch {self.epoch} of {c.epochs}," if self.epoch else ""
        return (f"{self.method.name} on {c.dataset} ({self.data_line}), {c.epochs} epoch{'s' * (c.epochs != 1)},"
                f"{resumed} on {self.device} ({', '.join([*ways, c.precision])}): {self.run_dir}")

    @property
    def data_line(self) -> str:
        """What the search read, as its first line says it."""
        d, (h, w) = self.data, self.data["image_size"]
        return f"{d['images']:,} training images of {d['num_classes']} classes, {d['channels']}x{h}x{w}"

    @property
    def eval_precision(self) -> str:
        """The precision of all but the steps (evaluation, stoppers, DARTS-PT's measures): the steps' but bf16's,
        which is fp32."""
        return "fp32" if self.config.precision == "bf16" else self.config.precision

    def _run(self, progress: bool) -> SearchResult:
        log = None
        if self.config.tensorboard:  # first, so that a missing tensorboard package fails before any work
            from .report import TensorBoardLog, images_of
            log = TensorBoardLog(self.run_dir, images_of(self.config.dataset, self.data), purge_step=self.epoch + 1)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._write_json("config.json", {"config": dataclasses.asdict(self.config),
                                         "method": dataclasses.asdict(self.method), "data": self.data,
                                         "environment": checkpoint.environment(self.device)})
        say(self.describe())
        started = time.time()
        first_epoch = self.epoch
        while self.epoch < self.config.epochs and self.stopped is None:
            t0 = time.time()
            lr = float(self.scheduler.get_last_lr()[0])  # a device tensor where the steps are replayed
            record = {"epoch": self.epoch + 1, "lr": lr, **self.parts.on_epoch_start(self.epoch, self.config.epochs)}
            self.renew_graphs()
            record.update(**self.train_epoch(progress))
            if (self.epoch + 1) % self.config.eval_every == 0 or self.epoch + 1 == self.config.epochs:
                record.update(**self.evaluate(progress))
            self.scheduler.step()
            self.epoch += 1
            genotype = self.model.derive(self.parts.selection)
            genotype_metrics = self.model.genotype_metrics(genotype)
            record.update(genotype=str(genotype), **genotype_metrics)
            for stopper in self.parts.stopping:
                stop = stopper(self, record)
                if stop is not None and self.stopped is None:
                    self.stopped = {"reason": stop.reason, "genotype_epoch": stop.genotype_epoch}
                    record["stopped"] = self.stopped
            record["seconds"] = round(time.time() - t0, 3)
            self._append_jsonl("metrics.jsonl", record)
            alphas = {
                "epoch": self.epoch, "ops": list(self.model.ops),
                "alphas": {t: a.detach().cpu().tolist() for t, a in self.model.alphas.items()},
                "strengths": {t: s.cpu().tolist() for t, s in self.model.strengths().items()},
            }
            self._append_jsonl("alphas.jsonl", alphas)
            if log is not None:
                log.write(record, alphas)
            self.save_checkpoint()
            done = self.epoch - first_epoch
            eta = (time.time() - started) / done * (self.config.epochs - self.epoch)
            say(f"epoch {self.epoch}/{self.config.epochs}  lr {lr:.4g}  {self.epoch_summary(record)}"
                + "".join(f"{k} {v:.4g}  " for k, v in genotype_metrics.items())
                + f"{record['seconds']:.1f}s  eta {format_seconds(eta)}")
        if log is not None:
            log.close()
        for graph in (self.graph, self.eval_graph):  # their memory, for what comes after the epochs (DARTS-PT)
            if graph is not None:
                graph.reset()
        metrics = read_jsonl(self.run_dir / "metrics.jsonl")
        genotype = self.model.derive(self.parts.selection)
        if self.stopped is not None:
            say(f"stopped early after epoch {self.epoch}: {self.stopped['reason']}; "
                f"the genotype is the one derived at epoch {self.stopped['genotype_epoch']}")
            genotype = type(genotype).parse(metrics[self.stopped["genotype_epoch"] - 1]["genotype"])
        if hasattr(self.parts.selection, "after_search"):  # a selection that works on the trained supernet (DARTS-PT)
            genotype = self.parts.selection.after_search(self, progress)
        genotype.save(self.run_dir / "genotype.txt")
        genotype.save(self.run_dir / "genotype.json")
        defect = genotype.defect()
        if defect:
            warn(f"the searched genotype {genotype}: {defect}")
        return SearchResult(genotype, self.run_dir, metrics)

    SUMMARY = {"train_acc": ".4f", "val_acc": ".4f"}  # the measures of an epoch's console line, where it has them

    @classmethod
    def epoch_summary(cls, record: dict[str, Any]) -> str:
        """The measures of an epoch's console line."""
        return "".join(f"{k} {record[k]:{form}}  " for k, form in cls.SUMMARY.items() if k in record)

    # -- checkpoints ----------------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        checkpoint.atomic_save({
            "format": CHECKPOINT_FORMAT,
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "w_optimizer": self.w_optimizer.state_dict(),
            "a_optimizer": self.a_optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "parts": self.parts.state_dict(),
            "stopped": self.stopped,
            "rng": checkpoint.rng_state(self.generators()),
        }, self.run_dir / "checkpoint.pt")

    def load_checkpoint(self) -> None:
        def restore(state):
            self.model.load_state_dict(state["model"])
            self.w_optimizer.load_state_dict(state["w_optimizer"])
            self.a_optimizer.load_state_dict(state["a_optimizer"])
            for optimizer in (self.a_optimizer, self.w_optimizer):  # the saved settings may be others
                set_capturable(optimizer, self.graph is not None)
            self.scheduler.load_state_dict(state["scheduler"])
            self.parts.load_state_dict(state["parts"])
            checkpoint.set_rng_state(state["rng"], self.generators())

        state = checkpoint.load(self.run_dir / "checkpoint.pt", CHECKPOINT_FORMAT, self.device, "search", restore)
        self.epoch, self.stopped = state["epoch"], state["stopped"]
        for name in ("metrics.jsonl", "alphas.jsonl"):
            drop_lines_after(self.run_dir / name, self.epoch)

    # -- files ----------------------------------------------------------------------------------------
    def _write_json(self, name: str, obj: Any) -> None:
        (self.run_dir / name).write_text(json.dumps(obj, indent=1) + "\n")

    def _append_jsonl(self, name: str, obj: Any) -> None:
        with open(self.run_dir / name, "a") as f:
            f.write(json.dumps(obj) + "\n")


PRECISIONS = ("fp32", "tf32", "bf16")


def cudnn_benchmark(on: bool):
    """Whether cuDNN times its algorithms for each new convolution shape within (``cudnn.benchmark``), the
    flag put back after. A search has it on for its full batches, whose shapes repeat every step, and off
    for the last, smaller batch of an epoch (its step and its evaluation): a step of the fused cells has
    ~130 convolution shapes, each timed forward and backward, and that batch runs once an epoch."""
    return temporarily(torch.backends.cudnn, "benchmark", on)


@contextlib.contextmanager
def precision(device_type: str, name: str):
    """The arithmetic of what runs within: one of ``PRECISIONS``.

    fp32: IEEE float32, as the papers' GPUs computed. On a GPU PyTorch runs float32 convolutions in TF32 by
    default (cuDNN, a 10-bit mantissa), and a DARTS supernet's alpha gradients amplify the rounding of
    their terms, which sums cancel to near zero: the first step's alpha gradients of two TF32 runs of the
    same step in other kernels differed by ~1x their largest on an H100, two fp32 ones on the CPU by 1e-3
    (docs/speed.md). tf32: float32 convolutions and matrix products in TF32. bf16: under bf16 autocast
    (convolutions and matrix products in bf16; reductions, softmax and the loss fp32, as torch.autocast
    decides), no cache of cast weights: second-order DARTS moves the weights in place within one step."""
    tf32 = name == "tf32"
    with temporarily(torch.backends.cudnn, "allow_tf32", tf32), \
            temporarily(torch.backends.cuda.matmul, "allow_tf32", tf32), \
            torch.autocast(device_type, torch.bfloat16, enabled=name == "bf16", cache_enabled=False):
        yield


def build_supernet(name: str, options: dict[str, Any], **given):
    """The space ``name`` built from ``given`` (what the data and the method decide) and the user's
    ``options``, which must be among the space's other arguments."""
    space = SPACES.get(name)
    valid = set(inspect.signature(space).parameters) - set(given)
    unknown = set(options) - valid
    if unknown:
        raise ValueError(f"unknown options {sorted(unknown)} of the {name} space; valid: {', '.join(sorted(valid))}")
    return space(**given, **options)


def optimizers(model, config: SearchConfig) -> tuple[torch.optim.SGD, torch.optim.Adam]:
    """The weight optimiser (SGD with momentum and weight decay) and the architecture optimiser (Adam)."""
    w_optimizer = weight_sgd(model.weight_parameters(), config, config.lr)
    a_optimizer = torch.optim.Adam(model.arch_parameters(), config.arch_lr, betas=tuple(config.arch_betas),
                                   weight_decay=config.arch_weight_decay)
    return w_optimizer, a_optimizer


def weight_sgd(params, config: SearchConfig, lr) -> torch.optim.SGD:
    """SGD of the weights at ``lr`` with the search's momentum (Nesterov where set; without momentum plain SGD,
    which torch refuses to be asked for by that name) and weight decay: the search's, DARTS-PT's tuning."""
    return torch.optim.SGD(params, lr, momentum=config.momentum, weight_decay=config.weight_decay,
                           nesterov=config.nesterov and config.momentum > 0)


def bilevel_step(model, parts: Parts, a_optimizer, w_optimizer, train_batch, val_batch, grad_clip: float,
                 update_arch: bool = True, arch_grad_clip: float | None = None, weight_step_first: bool = False,
                 step_unused_weights: bool = False):
    """One step of DARTS Algorithm 1: an architecture step on the validation batch (the method's
    architecture gradient of L_val plus its regularisers, clipped to ``arch_grad_clip`` if given), then a
    weight step on the training batch (clipped to ``grad_clip``, at perturbed op weights if the method
    perturbs): of the weights ``w_optimizer`` steps. ``weight_step_first``: the weight step first, then the
    architecture step at the new weights (GDAS's code). ``step_unused_weights``: the weights the weight step
    leaves without a gradient (ops not run) keep a zero one once they have had one, so the optimiser's weight
    decay and momentum still move them (``SearchConfig.step_unused_weights``). Returns the training loss and the
    number of correct predictions of the weight step.

    A model not in training mode is put in it; one in it is taken as it is (setting the mode walks all of
    the paper's search network's ~5,000 modules: 17 ms on the CPU, a step's host time that an eager GPU step,
    GDAS's, waits for)."""
    if not model.training:
        model.train()
    train_loss = partial(batch_loss, model, train_batch)

    def arch_step():
        def val_loss(params=None):
            return batch_loss(model, val_batch, params) + sum(r(model) for r in parts.regularizers)

        a_optimizer.zero_grad(set_to_none=True)
        parts.arch_grad(model, train_loss, val_loss, w_optimizer)
        if arch_grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.arch_parameters(), arch_grad_clip)
        a_optimizer.step()

    if update_arch and not weight_step_first:
        arch_step()
    model.weight_delta = parts.perturbation(model, train_loss) if parts.perturbation is not None else None
    weights = [p for group in w_optimizer.param_groups for p in group["params"]]
    w_optimizer.zero_grad(set_to_none=not step_unused_weights)
    logits = model(train_batch[0])
    loss = F.cross_entropy(logits, train_batch[1])
    loss.backward(inputs=weights)
    model.weight_delta = None
    torch.nn.utils.clip_grad_norm_(weights, grad_clip)
    w_optimizer.step()
    if update_arch and weight_step_first:
        arch_step()
    return loss.detach(), (logits.argmax(1) == train_batch[1]).sum()


def batch_loss(model, batch, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Cross-entropy on a batch, with the model's weights or with ``params`` in their place."""
    x, y = batch
    return F.cross_entropy(model(x) if params is None else trial_forward(model, params, x), y)


def trial_forward(model, params: dict[str, torch.Tensor], *args):
    """``model(*args)`` with ``params`` in place of its weights (a trial, such as the unrolled model of
    second-order DARTS), which must not move the real BatchNorm statistics: those buffers are copies here.
    The other buffers (the op mask) stay the model's own, so that what it caches of them stays valid."""
    buffers = {f"{name}.{b}": t for name, m in model.named_modules()
               if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for b, t in m.named_buffers(recurse=False)}
    return functional_call(model, {**params, **dict(zip(buffers, copies(buffers.values())))}, args)


def copies(tensors) -> list[torch.Tensor]:
    """Copies of ``tensors`` (``copy_into`` fresh ones): the supernet's BatchNorm buffers are thousands of
    small tensors, which one clone each would copy by as many kernels."""
    tensors = list(tensors)
    out = [torch.empty_like(t) for t in tensors]
    copy_into(out, tensors)
    return out


def copy_into(targets, sources) -> None:
    """``targets[i].copy_(sources[i])`` for every i, by one multi-tensor copy per dtype (a few kernels on a
    GPU), not one per tensor."""
    targets, sources = list(targets), list(sources)
    for dtype in dict.fromkeys(t.dtype for t in targets):  # a multi-tensor kernel takes one dtype
        pairs = [(t, s) for t, s in zip(targets, sources) if t.dtype == dtype]
        torch._foreach_copy_([t for t, _ in pairs], [s for _, s in pairs])


FAST_EVAL_BATCH = 256  # the evaluation's batch under --fast on a GPU: a forward of the search network at
# batch 64 is a few thousand small kernels, too small to fill a GPU (on the CPU larger batches run no faster)
FAST_SIDE_STREAMS = 5  # the side streams of a replayed fused cell under --fast (spaces.fused.side_streams): a
# DARTS source batch has 4 convolution ops besides the poolings and the skip, each then on its own stream


def fast_settings(device: torch.device, method: Method, space: str | None = None,
                  dense_samples: bool = False) -> dict[str, Any]:
    """What ``--fast`` turns on for ``method`` on ``space`` (None: the method's), the fastest measured on each
    kind of device (docs/speed.md). On a GPU: the fused cells (a space option of darts and nb201), each step
    replayed from a CUDA graph but for a hard relaxation (GDAS decides on the host which op of each edge runs,
    so its steps cannot be captured; ``dense_samples``, asked for, keeps the sample on the device, and they
    are), a replayed DARTS cell's independent ops on
    ``FAST_SIDE_STREAMS`` side streams (an H100 replayed a darts-v1 step in 86.6 ms against 114.9 on one
    stream, darts-v2 221.8 against 296.8), and the evaluation at batch ``FAST_EVAL_BATCH`` (larger kernels: on
    an H100 an epoch 4% shorter than at 64), in NCHW (NHWC with side streams 95.9 ms; docs/speed.md,
    channels_last) but for each epoch's evaluation in the DARTS space, which runs NHWC (``eval_channels_last``: an
    H200 evaluated a batch of 256 in 41.1 ms against 54.3 in NCHW). On a CPU: the NHWC layout, with the fused
    cells unless the relaxation is hard (GDAS: one sampled op per edge leaves little to batch, and there the
    readable cell in NHWC is the fastest CPU path); but NCHW on
    NAS-Bench-201 for partial channels (PC-DARTS: its ops see C/K = 4 channels in the first stage, too few for NHWC
    kernels, a BatchNorm of them 0.62 ms against 0.12 at batch 16, the step 311 ms against 396) and for
    the implicit gradient (iDARTS: the BatchNorms' double backward, a chain of elementwise ops and sums over
    N, H and W, runs slower in NHWC, the step 3.6 s against 3.0 at batch 16); the DARTS space's separable
    convolutions gain more from NHWC than they lose. A space without a fused cell (the recurrent one) has no
    fast path."""
    space = space or method.part("space")
    fusable = [name for name in SPACES.names() if "fused" in inspect.signature(SPACES.get(name)).parameters]
    if space not in fusable:
        raise ValueError(f"--fast (fused cells, CUDA graphs, NHWC) is for the image spaces {' and '.join(fusable)}; "
                         f"the {space} space has no fast path, leave it off")
    cpu = device.type == "cpu"
    hard = is_hard(method.build("relaxation"))
    nchw = space == "nb201" and (getattr(method.build("edge"), "k", 1) > 1  # partial channels, 1/K of them
                                 or isinstance(method.build("arch_grad"), Implicit))
    graph = device.type == "cuda" and (not hard or dense_samples)
    settings = {"fused": not (cpu and hard) or dense_samples, "cuda_graph": graph, "channels_last": cpu and not nchw}
    lanes = graph and space == "darts"  # measured there; the NAS-Bench-201 cell's on a GPU not yet
    gpu = {"eval_batch_size": FAST_EVAL_BATCH} | (
        {"side_streams": FAST_SIDE_STREAMS, "eval_channels_last": True} if lanes else {})
    return settings | (gpu if device.type == "cuda" else {})


# glibc's mallopt parameters (malloc.h) and the bounds reuse_large_blocks sets
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
HEAP_BLOCK_MAX, HEAP_FREE_KEPT = 256 << 20, 512 << 20


def reuse_large_blocks() -> bool:
    """Let glibc serve blocks of up to 256 MB from its heap and keep up to 512 MB freed at the heap's top
    (``mallopt``; process-wide; False where there is no glibc). By default glibc maps every block of more
    than 32 MB afresh and unmaps it when freed, so a CPU step whose tensors are that large (the fused cells'
    grouped ones at batch 64) faulted its pages in again at every step: ~650k faults, ~2 s of system
    time, in a darts-v1 step of 10-12 s (7.5 s without them, docs/speed.md). A freed block on the heap is
    reused by the next ones, as blocks under 32 MB always are; larger blocks are still mapped and returned
    when freed (keeping blocks of every size on the heap, untrimmed, grew one benchmark process past 24 GB)."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, HEAP_BLOCK_MAX)) and bool(mallopt(M_TRIM_THRESHOLD, HEAP_FREE_KEPT))


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; valid: auto, cpu, cuda, cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for, but torch sees no CUDA device; use --device cpu")
    return resolved


def read_jsonl(path: Path, partial_last: bool = False) -> list[dict[str, Any]]:
    """The records of a run's JSON-lines file ([] if there is none). A line that is not JSON is an error
    naming the file and the line; with ``partial_last``, a last line cut short (the run stopped while
    appending it, before the checkpoint of its epoch) is left out."""
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        try:
            if line.strip():
                records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if partial_last and number == len(lines):
                break
            raise ValueError(f"{path}, line {number}: not JSON ({e}): the file is damaged; mend or delete that "
                             f"line (the run's other files are untouched)") from None
    return records


def write_jsonl(path: Path, lines: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def drop_lines_after(path: Path, epoch: int) -> None:
    """On resume: lines written after the checkpoint (a crash between the two) belong to an epoch that will
    rerun. A file that lacks some of the checkpoint's epochs (deleted, edited) goes on without them, with a
    warning."""
    kept = [r for r in read_jsonl(path, partial_last=True) if r["epoch"] <= epoch]
    if len(kept) < epoch:
        warn(f"{path} holds {len(kept)} of the {epoch} epochs done before the checkpoint (deleted or "
             f"edited?): the resumed run appends epoch {epoch + 1} on, and the missing ones stay missing")
    write_jsonl(path, kept)


def format_seconds(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def new_run_dir(root: str | os.PathLike, *names: str) -> Path:
    """A new folder under ``root`` named by the time and ``names`` (method, space, data set), with ``-2``,
    ``-3``, ... where one of that name exists."""
    stem = Path(root).expanduser() / "-".join([time.strftime('%Y%m%d-%H%M%S'), *names])
    path, n = stem, 1
    while path.exists():
        n += 1
        path = stem.with_name(f"{stem.name}-{n}")
    return path


@own_torch_state()
def search(
    space: str | None = None,
    method: str | Method = "darts-v1",
    dataset: str | None = None,
    *,
    run_dir: str | os.PathLike | None = None,
    runs_root: str | os.PathLike = "runs",
    resume: str | os.PathLike | None = None,
    progress: bool = True,
    fast: bool = False,
    **settings: Any,
) -> SearchResult:
    """Run an architecture search and return its genotype, run directory and per-epoch metrics.

    ``settings`` are fields of ``SearchConfig`` (epochs, batch_size, data, seed, ...); keys it does not
    know go to the search space (C, layers, nodes, ops). ``fast`` turns on what ``fast_settings`` measured
    fastest on the device (``dnas search --fast``: the fused cells, CUDA graphs, NHWC; docs/speed.md); the
    settings given override it. ``resume`` continues the run in that directory from its last checkpoint, with
    its saved settings (only ``device``, ``data`` (where the data is now) and ``tensorboard`` may be given).
    ``dataset`` defaults to the space's (cifar10; ptb for the recurrent space ``darts-rnn``, whose settings are
    ``RNNSearchConfig``). ``progress``: the progress bars (where the output is a terminal); the run's lines
    (its data, each epoch's measures) go to standard output through the logger ``dnas`` either way
    (``logging.getLogger("dnas").setLevel(logging.WARNING)`` silences them). The caller's torch random state,
    grad mode and default dtype are put back after (``settings.own_torch_state``); on the CPU a search has
    glibc keep large freed blocks for reuse, for the rest of the process (``reuse_large_blocks``: up to 512 MB
    more held, 20-30% faster steps at batch 64).

        dnas.search(space="darts", method="darts-v2", dataset="cifar10", data="~/data", epochs=50, fast=True)
    """
    if resume is not None:
        if fast:
            raise ValueError("fast: a resumed run keeps the settings it was started with; leave it off with resume")
        return _resume(Path(resume).expanduser(), progress, **settings)
    recipe = get_method(method)
    method = recipe.name if isinstance(method, Method) else os.fspath(method)  # a Method made in Python: its name
    if isinstance(settings.get("ops"), str):  # "sep_conv_3x3,skip_connect", as --ops takes them
        settings["ops"] = tuple(op.strip() for op in settings["ops"].split(","))
    recipe.check(space or recipe.part("space"))
    if fast:
        settings = fast_settings(resolve_device(settings.get("device") or "auto"), recipe, space,
                                 bool(settings.get("dense_samples"))) | settings
    config_cls, search_cls = search_classes(space or recipe.part("space"), recipe)
    dataset = dataset or config_cls.dataset
    config_fields = config_cls.fields()
    _check_settings(settings, config_fields, space or recipe.part("space"))
    known = {k: v for k, v in settings.items() if k in config_fields}
    space_options = {**recipe.space_options(space), **known.pop("space_options", {}),
                     **{k: v for k, v in settings.items() if k not in config_fields}}
    unknown_recipe = sorted(set(recipe.config) - config_fields)
    if unknown_recipe:
        near = lambda k: f" (did you mean {m[0]}?)" if (m := difflib.get_close_matches(k, config_fields, 1)) else ""
        raise ValueError(f"recipe {recipe.name}: unknown settings in its [config]: "
                         f"{', '.join(k + near(k) for k in unknown_recipe)}; valid: {', '.join(sorted(config_fields))}")
    if recipe.part("schedule") is not None and "layers" in space_options:  # P-DARTS
        raise ValueError(f"{recipe.name} sets the cells of each stage (its schedule's layers, "
                         f"{list(recipe.build('schedule').layers)}), so layers (--layers) does not apply; a recipe of "
                         f"your own can set the schedule's layers")
    config = config_cls(**{**recipe_settings(recipe, config_cls), **known, "method": method, "dataset": dataset,
                           "space": space, "space_options": space_options})
    if config.arch_warmup_epochs >= config.epochs:
        warn(f"{recipe.name}: the alphas move only after {config.arch_warmup_epochs} warm-up epochs of "
             f"weight steps, and the search has {config.epochs}: they never move, and the genotype is the "
             f"initial alphas' (set fewer warm-up epochs, --arch-warmup-epochs)")
    if config.data is not None:
        config.data = checkpoint.absolute(config.data)
    if run_dir is None:
        other_space = [space] if space and space != recipe.part("space") else []  # e.g. darts-v1-nb201-cifar10
        run_dir = new_run_dir(runs_root, Path(method).stem, *other_space, dataset)  # a recipe file by its stem
    else:
        checkpoint.check_new_run_dir(run_dir, "search")
    return search_cls(config, run_dir, recipe).run(progress)


SET_BY_THE_SEARCH = {"method", "dataset", "space", "num_classes", "in_channels", "vocab_size", "relaxation", "edge"}


def _check_settings(settings: dict[str, Any], config_fields: set[str], space: str) -> None:
    """A ValueError for each setting that is neither a search setting nor an option of the space, with the
    name it most resembles."""
    space_cls = SPACES.get(space)
    valid = sorted((config_fields | set(inspect.signature(space_cls).parameters)) - SET_BY_THE_SEARCH)
    unknown = [k for k in settings if k not in valid]
    cli_names = {"init_channels": "C", "layers": getattr(space_cls, "depth_option", None)}  # --init-channels ...

    def hint(name: str) -> str:
        near = [cli_names[name]] if cli_names.get(name) in valid else difflib.get_close_matches(name, valid, 1)
        return f"{name} (did you mean {near[0]}?)" if near else name

    if unknown:
        raise ValueError(f"unknown settings {', '.join(map(hint, unknown))}: neither search settings nor options "
                         f"of the {space} space; valid: {', '.join(valid)}")


def recipe_settings(recipe: Method, config_cls: type[SearchConfig]) -> dict[str, Any]:
    """A recipe's [config] for a search of ``config_cls``: all of it for the image search, whose settings the
    recipes' papers give; a space with settings of its own (the recurrent search's, DARTS's PTB search: 50
    epochs, lr 20, weight decay 5e-7, ...) keeps those its settings class declares, and takes the rest (the
    order of the steps, warm-up epochs, Nesterov momentum)."""
    own = {name for cls in config_cls.__mro__ if cls is not SearchConfig and issubclass(cls, SearchConfig)
           for name in vars(cls).get("__annotations__", {})}
    return {k: v for k, v in recipe.config.items() if k not in own}


def search_classes(space: str, method: Method) -> tuple[type[SearchConfig], type[Search]]:
    """The settings and search classes of a space: its own (``search_classes()``) or the image search's;
    a method with a schedule part runs its stages of searches (P-DARTS, progressive.py)."""
    config_cls, search_cls = getattr(SPACES.get(space), "search_classes", lambda: (SearchConfig, Search))()
    if method.part("schedule") is not None:
        from .progressive import ProgressiveSearch
        return config_cls, ProgressiveSearch
    return config_cls, search_cls


def _resume(run_dir: Path, progress: bool, **settings: Any) -> SearchResult:
    config_file = run_dir / "config.json"
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir} {'is not a directory' if run_dir.exists() else 'does not exist'}: "
                                f"--resume takes the directory of a search run")
    if not config_file.exists():
        raise FileNotFoundError(f"{run_dir} is not a dnas search run (no config.json in it)")
    checkpoint.check_resume_settings(settings, ("device", "data", "tensorboard"))
    saved = checkpoint.read_config(config_file)
    if "method" not in saved or "config" not in saved:
        kind = "a training run's (dnas train --resume)" if "genotype" in saved else "not a search run's"
        raise FileNotFoundError(f"{run_dir} is not a dnas search run: its config.json is {kind}")
    method = Method(**saved["method"])
    config_cls, search_cls = search_classes(saved["config"]["space"] or method.part("space"), method)
    config = config_cls(**{**saved["config"], **settings})
    searcher = search_cls(config, run_dir, method)
    return checkpoint.resume(searcher, progress)
