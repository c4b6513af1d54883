"""Training a genotype's network from scratch, and testing it: the evaluation of DARTS (App. A.2).

The defaults are the DARTS CIFAR-10 evaluation (App. A.2.1): NetworkCIFAR with 20 cells and 36 initial
channels, 600 epochs, batch 96, SGD with momentum 0.9, lr 0.025 annealed by cosine to 0, weight decay 3e-4,
gradient norm clipped at 5, auxiliary head weighted 0.4, drop-path probability growing linearly from 0 to
0.2 over the epochs, cutout 16. ``network="imagenet"`` takes the DARTS ImageNet settings instead
(``IMAGENET``: Sec. 3.4 and App. A.2). Each run writes a directory readable without dnas:

    config.json     settings, genotype, the data's classes / channels / image size / mean / std, the
                    network's parameters and mult-adds
    genotype.json   the trained genotype (and genotype.txt, the DARTS text form)
    metrics.jsonl   one line per epoch: lr, drop_path, train_loss, train_acc, test_loss, test_acc,
                    test_top5, seconds
    checkpoint.pt   everything needed to resume exactly, written atomically after each epoch
    last.pt         the weights after the last completed epoch (a state_dict)
    best.pt         the weights of the epoch with the highest test accuracy. As in the DARTS code, the
                    test set is the one measured each epoch, so report last.pt's accuracy, not best.pt's.
    test-<weights>.json, confusion-<weights>.csv    written by ``evaluate_run`` (``dnas test``)
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .cost import Cost, cost
from .data import BatchLoader, DataError, load_dataset, memory_format
from .genotype import Genotype
from . import checkpoint
from .search import (check_minimums, check_positive, check_subset, drop_lines_after, format_seconds, new_run_dir,
                     progress_every, read_jsonl, resolve_device)
from .spaces.darts_network import NETWORKS, DartsNetwork, check_fits
from .settings import bars_off, own_torch_state, say, warn
from .zoo import convolutional, load_genotype

CHECKPOINT_FORMAT = "dnas-train-checkpoint-v1"

#: Learning-rate schedules by name: cosine annealing to 0 over the run (DARTS CIFAR), or a decay by
#: ``lr_gamma`` after every epoch (DARTS ImageNet: 0.97).
SCHEDULES = {
    "cosine": lambda optimizer, c: torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, c.epochs, eta_min=0.0),
    "exponential": lambda optimizer, c: torch.optim.lr_scheduler.ExponentialLR(optimizer, c.lr_gamma),
}


@dataclass
class TrainConfig:
    """Settings of a training run; the defaults are DARTS's CIFAR-10 evaluation (App. A.2.1)."""

    network: str = "cifar"  # "cifar" or "imagenet" (NETWORKS)
    dataset: str = "cifar10"
    data: str | None = None
    C: int = 36  # initial channels
    layers: int = 20  # cells
    epochs: int = 600
    batch_size: int = 96
    lr: float = 0.025
    lr_schedule: str = "cosine"
    lr_gamma: float = 0.97  # per-epoch decay of the exponential schedule
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    auxiliary: bool = True
    auxiliary_weight: float = 0.4
    drop_path: float = 0.2  # reached at the last epoch, from 0 at the first
    cutout: int = 16  # cutout length; 0 = off
    label_smoothing: float = 0.0
    subset: int | None = None  # train on N training images only (quick runs; a fixed random sample)
    test_subset: int | None = None  # test on N test images only (a fixed random sample)
    seed: int = 0
    device: str = "auto"
    # network and images in NHWC layout (CPU: the paper's network ~1.35x faster; docs/speed.md)
    channels_last: bool = False

    def __post_init__(self):
        NETWORKS.get(self.network)  # an unknown network fails here, listing the valid ones
        if self.lr_schedule not in SCHEDULES:
            raise ValueError(f"unknown lr_schedule {self.lr_schedule!r}; valid: {', '.join(SCHEDULES)}")
        check_minimums(vars(self), C=1, layers=1, epochs=1, batch_size=1, subset=1, test_subset=1, cutout=0,
                       momentum=0, weight_decay=0, auxiliary_weight=0)
        check_positive(vars(self), "lr", "grad_clip", "lr_gamma")
        for name in ("drop_path", "label_smoothing"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} is a probability in [0, 1), got {getattr(self, name)}")

    @classmethod
    def fields(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}


#: The DARTS ImageNet evaluation (Sec. 3.4, App. A.2, and its code): 14 cells, 48 channels, 250 epochs,
#: batch 128, lr 0.1 decayed by 0.97 per epoch, weight decay 3e-5, label smoothing 0.1, auxiliary weight
#: 0.4, no drop-path, no cutout. Applied by ``network="imagenet"`` under the user's own settings.
IMAGENET = dict(C=48, layers=14, epochs=250, batch_size=128, lr=0.1, lr_schedule="exponential", lr_gamma=0.97,
                weight_decay=3e-5, label_smoothing=0.1, drop_path=0.0, cutout=0)
NETWORK_DEFAULTS = {"cifar": {}, "imagenet": IMAGENET}


@dataclass
class TrainResult:
    run_dir: Path
    genotype: Genotype
    metrics: list[dict[str, Any]]
    cost: Cost

    @property
    def test_acc(self) -> float:
        """Test accuracy after the last epoch (what the papers report)."""
        return self.metrics[-1]["test_acc"]


@dataclass
class Evaluation:
    loss: float
    acc: float
    top5: float
    confusion: torch.Tensor  # classes x classes, rows: true class, columns: predicted


def sample(total: int, n: int | None) -> slice | torch.Tensor:
    """Indices of a fixed random sample of ``n`` of ``total`` images, in file order (all when ``n`` is None):
    quick runs see every class even where a data set's files are sorted by class."""
    if n is None or n >= total:
        return slice(None)
    return torch.randperm(total, generator=torch.Generator().manual_seed(0))[:n].sort().values


def build_network(config: TrainConfig, genotype: Genotype, num_classes: int, in_channels: int) -> DartsNetwork:
    return NETWORKS.get(config.network)(genotype, num_classes=num_classes, in_channels=in_channels, C=config.C,
                                        layers=config.layers, auxiliary=config.auxiliary)


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: BatchLoader, num_classes: int, progress: bool = False) -> Evaluation:
    """Cross-entropy, top-1 and top-5 accuracy and the confusion matrix of ``model`` on ``loader``, summed on
    its device (read once at the end: a read per batch would make the host wait for the GPU at each)."""
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=loader.device)
    top5 = torch.zeros((), dtype=torch.int64, device=loader.device)
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=loader.device)
    seen = 0
    for x, y in tqdm(loader, disable=bars_off(progress), desc="test", unit="batch", leave=False, dynamic_ncols=True):
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        top5 += (logits.topk(min(5, num_classes), 1).indices == y[:, None]).any(1).sum()
        cell = y * num_classes + logits.argmax(1)  # a scatter, not bincount: CUDA's reads the largest on the host
        confusion.scatter_add_(0, cell, torch.ones_like(cell))
        seen += len(y)
    confusion = confusion.view(num_classes, num_classes).cpu()
    return Evaluation(float(loss_sum) / seen, float(confusion.trace()) / seen, int(top5) / seen, confusion)


class Trainer:
    """One training run: data, network, optimiser, schedule and the loop, resumable from its run directory."""

    def __init__(self, config: TrainConfig, genotype: Genotype, run_dir: str | os.PathLike):
        self.config, self.genotype, self.run_dir = config, genotype, Path(run_dir).expanduser()
        self.device = resolve_device(config.device)
        torch.manual_seed(config.seed)

        self.data = data = load_dataset(config.dataset, config.data)
        if data.test_x is None:
            raise DataError(f"{config.dataset}: no test images, and training measures test accuracy every epoch; "
                            f"for an image folder put them in DIR/val/<class>/ (or DIR/test/<class>/)")
        layout = memory_format(config.channels_last)
        loader = partial(BatchLoader, batch_size=config.batch_size, mean=data.mean, std=data.std, device=self.device,
                         memory_format=layout)
        if not (self.run_dir / "checkpoint.pt").exists():  # a resumed run keeps the settings it started with
            check_subset(config.subset, len(data.train_y), f"training images of {config.dataset}")
            check_subset(config.test_subset, len(data.test_y), f"test images of {config.dataset}", "test_subset")
        train, test = sample(len(data.train_y), config.subset), sample(len(data.test_y), config.test_subset)
        self.train_loader = loader(data.train_x[train], data.train_y[train], augment=True, cutout=config.cutout,
                                   shuffle=True, generator=torch.Generator().manual_seed(config.seed))
        self.test_loader = loader(data.test_x[test], data.test_y[test])
        self.model = build_network(config, genotype, data.num_classes, data.channels)
        check_fits(self.model, data.channels, data.image_size)
        self.model = self.model.to(self.device, memory_format=layout)
        self.cost = cost(self.model, (data.channels, *data.image_size))
        self.optimizer = torch.optim.SGD(self.model.parameters(), config.lr, momentum=config.momentum,
                                         weight_decay=config.weight_decay)
        self.scheduler = SCHEDULES[config.lr_schedule](self.optimizer, config)
        self.epoch = 0  # epochs completed
        self.best_acc = -1.0

    # -- epochs ---------------------------------------------------------------------------------------
    def train_epoch(self, progress: bool) -> dict[str, float]:
        c, model = self.config, self.model
        model.train()
        loss_sum = correct = seen = 0
        bar = tqdm(self.train_loader, disable=bars_off(progress), desc=f"epoch {self.epoch + 1}/{c.epochs}",
                   unit="step", leave=False, dynamic_ncols=True)
        postfix_every = progress_every(len(self.train_loader))
        for i, (x, y) in enumerate(bar):
            self.optimizer.zero_grad(set_to_none=True)
            logits, aux_logits = model.forward_with_aux(x)
            loss = F.cross_entropy(logits, y, label_smoothing=c.label_smoothing)
            if aux_logits is not None:
                loss = loss + c.auxiliary_weight * F.cross_entropy(aux_logits, y, label_smoothing=c.label_smoothing)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip)
            self.optimizer.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
            if i % postfix_every == 0:
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{correct.item() / seen:.3f}")
        return {"train_loss": float(loss_sum) / seen, "train_acc": float(correct) / seen}

    @checkpoint.guarded_run("train")
    def run(self, progress: bool = True) -> TrainResult:
        c = self.config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        data = self.data
        self._write("config.json", json.dumps({
            "config": dataclasses.asdict(c), "genotype": self.genotype.to_dict(),
            "data": {"num_classes": data.num_classes, "channels": data.channels, "image_size": list(data.image_size),
                     "classes": data.classes, "mean": list(data.mean), "std": list(data.std)},
            "cost": dataclasses.asdict(self.cost), "environment": checkpoint.environment(self.device)},
            indent=1) + "\n")
        self.genotype.save(self.run_dir / "genotype.json")
        self.genotype.save(self.run_dir / "genotype.txt")
        say(f"network: {c.network}, {c.layers} cells, {c.C} channels: {self.cost}")
        started, first_epoch = time.time(), self.epoch
        while self.epoch < c.epochs:
            t0 = time.time()
            lr = self.scheduler.get_last_lr()[0]
            # the DARTS code's schedule: epoch e (from 0) drops paths with probability drop_path * e / epochs
            self.model.drop_path_prob = c.drop_path * self.epoch / c.epochs
            record = {"epoch": self.epoch + 1, "lr": lr, "drop_path": self.model.drop_path_prob,
                      **self.train_epoch(progress)}
            test = evaluate(self.model, self.test_loader, data.num_classes)
            record.update(test_loss=test.loss, test_acc=test.acc, test_top5=test.top5,
                          seconds=round(time.time() - t0, 3))
            self.scheduler.step()
            self.epoch += 1
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            if test.acc > self.best_acc:
                self.best_acc = test.acc
                checkpoint.atomic_save(self.model.state_dict(), self.run_dir / "best.pt")
            checkpoint.atomic_save(self.model.state_dict(), self.run_dir / "last.pt")
            self.save_checkpoint()
            eta = (time.time() - started) / (self.epoch - first_epoch) * (c.epochs - self.epoch)
            say(f"epoch {self.epoch}/{c.epochs}  lr {lr:.4g}  train_acc {record['train_acc']:.4f}  "
                f"test_acc {test.acc:.4f}  {record['seconds']:.1f}s  eta {format_seconds(eta)}")
        return TrainResult(self.run_dir, self.genotype, read_jsonl(self.run_dir / "metrics.jsonl"), self.cost)

    # -- checkpoints ----------------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        checkpoint.atomic_save({
            "format": CHECKPOINT_FORMAT,
            "epoch": self.epoch,
            "best_acc": self.best_acc,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": checkpoint.rng_state({"train": self.train_loader.generator}),
        }, self.run_dir / "checkpoint.pt")

    def load_checkpoint(self) -> None:
        def restore(state):
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            checkpoint.set_rng_state(state["rng"], {"train": self.train_loader.generator})

        state = checkpoint.load(self.run_dir / "checkpoint.pt", CHECKPOINT_FORMAT, self.device, "training", restore)
        self.epoch, self.best_acc = state["epoch"], state["best_acc"]
        drop_lines_after(self.run_dir / "metrics.jsonl", self.epoch)

    def _write(self, name: str, text: str) -> None:
        (self.run_dir / name).write_text(text)


@own_torch_state()
def train(
    genotype: str | os.PathLike | Genotype | None = None,
    dataset: str | None = None,
    *,
    network: str = "cifar",
    run_dir: str | os.PathLike | None = None,
    runs_root: str | os.PathLike = "runs",
    resume: str | os.PathLike | None = None,
    progress: bool = True,
    **settings: Any,
) -> TrainResult:
    """Train the network of ``genotype`` from scratch; return its run directory, metrics and cost.

    ``genotype`` is a Genotype, a zoo name (``dnas zoo``), a genotype file, a search run directory (whose data
    set and folder are the default ``dataset`` and ``data``) or the DARTS text form. ``settings`` are fields of
    ``TrainConfig`` (epochs, batch_size, data, cutout, ...);
    ``network="imagenet"`` starts from the DARTS ImageNet settings. ``resume`` continues the run in that
    directory from its last checkpoint, with its saved settings (only ``device`` may change). A recurrent
    genotype (DARTS_RNN_V2, ...) trains a language model on a text corpus instead (``dnas.rnn.train``).

        dnas.train("DARTS_V2", dataset="cifar10", data="~/data/cifar10")
    """
    from .rnn.train import is_lm_job, train_lm

    if is_lm_job(genotype, resume):
        return train_lm(genotype, dataset, run_dir=run_dir, runs_root=runs_root, resume=resume, progress=progress,
                        **settings)
    if resume is not None:
        return _resume(Path(resume).expanduser(), progress, **settings)
    saved = {} if dataset is not None else checkpoint.config_of_run(genotype)
    searched = {k: saved["config"].get(k) for k in ("dataset", "data")} if "method" in saved else {}  # a search run's
    dataset = dataset or searched.get("dataset") or TrainConfig.dataset
    if searched.get("data") and settings.get("data") is None:
        settings["data"] = searched["data"]
    if genotype is None:
        raise ValueError("give the genotype to train (a zoo name, a genotype file, a run directory or the "
                         "text form), or resume= a training run directory")
    unknown = set(settings) - TrainConfig.fields()
    if unknown:
        raise ValueError(f"unknown settings {sorted(unknown)}; valid: {', '.join(sorted(TrainConfig.fields()))}")
    NETWORKS.get(network)
    config = TrainConfig(**{**NETWORK_DEFAULTS[network], **settings, "network": network, "dataset": dataset})
    if config.data is not None:
        config.data = checkpoint.absolute(config.data)
    genotype, name = load_genotype(genotype)
    genotype = convolutional(genotype, name)
    if run_dir is None:
        run_dir = new_run_dir(runs_root, f"train-{name}", dataset)
    else:
        checkpoint.check_new_run_dir(run_dir, "train")
    return Trainer(config, genotype, run_dir).run(progress)


def _read_run(run_dir: Path) -> dict[str, Any]:
    """A training run's config.json; a FileNotFoundError that says what ``run_dir`` is where it is not one."""
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir} does not exist or is not a directory: give the directory of a "
                                f"training run (dnas train)")
    saved = checkpoint.read_config(run_dir / "config.json") if (run_dir / "config.json").is_file() else {}
    if "method" in saved:
        raise FileNotFoundError(f"{run_dir} is a search run (dnas search), not a training run: train its genotype "
                                f"with dnas train --genotype {run_dir}")
    if "genotype" not in saved or "data" not in saved:
        raise FileNotFoundError(f"{run_dir} is not a dnas training run (no config.json with a genotype in it)")
    return saved


def _resume(run_dir: Path, progress: bool, **settings: Any) -> TrainResult:
    saved = _read_run(run_dir)
    checkpoint.check_resume_settings(settings)
    trainer = Trainer(TrainConfig(**{**saved["config"], **settings}), Genotype.from_dict(saved["genotype"]), run_dir)
    return checkpoint.resume(trainer, progress)


def load_run(run_dir: str | os.PathLike, weights: str = "last", device: str = "cpu") -> tuple[DartsNetwork, dict]:
    """The trained network of a run directory in eval mode, with ``weights`` "last", "best" or a .pt file of
    its state_dict, and the run's saved config.json."""
    run_dir = Path(run_dir).expanduser()
    saved = _read_run(run_dir)
    config = TrainConfig(**saved["config"])
    model = build_network(config, Genotype.from_dict(saved["genotype"]), saved["data"]["num_classes"],
                          saved["data"]["channels"])
    path = run_dir / f"{weights}.pt" if weights in ("last", "best") else Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; weights are last, best (the last.pt and best.pt a run "
                                f"writes after its first epoch) or a .pt file of the network's state_dict")
    checkpoint.load_weights(model, path, "this run's network")
    return model.to(resolve_device(device)).eval(), saved


@dataclass
class RunReport:
    accuracy: float
    top5: float
    loss: float
    confusion: torch.Tensor  # rows: true class, columns: predicted
    classes: list[str]
    files: tuple[Path, Path]  # the JSON report and the confusion matrix as CSV


def evaluate_run(run_dir: str | os.PathLike, dataset: str | None = None, data: str | os.PathLike | None = None,
                 weights: str = "last", device: str = "auto", batch_size: int | None = None,
                 subset: int | None = None, progress: bool = True) -> RunReport:
    """Test accuracy and confusion matrix of a trained run on its data set's test split (or on ``dataset`` /
    ``data`` given here; ``subset``: a fixed random sample of N of them), written to ``test-<weights>.json`` and
    ``confusion-<weights>.csv`` in the run (``-subset<N>`` added to the names for a sample)."""
    run_dir = Path(run_dir).expanduser()
    check_minimums({"batch_size": batch_size, "subset": subset}, batch_size=1, subset=1)
    model, saved = load_run(run_dir, weights, device)
    c = saved["config"]
    own = dataset in (None, c["dataset"])  # another data set is read from ``data`` or its own place, not the run's
    dataset = dataset or c["dataset"]
    folder = checkpoint.absolute(data) if data is not None else c["data"] if own else None
    d = load_dataset(dataset, folder)
    if d.test_x is None:
        raise DataError(f"{dataset}: no test images to test on")
    if d.num_classes != saved["data"]["num_classes"]:
        raise ValueError(f"{dataset} has {d.num_classes} classes; the run was trained on "
                         f"{saved['data']['num_classes']} ({c['dataset']})")
    if d.channels != saved["data"].get("channels", d.channels):
        raise ValueError(f"{dataset}'s images have {d.channels} channels; the run was trained on images of "
                         f"{saved['data']['channels']} ({c['dataset']})")
    trained_on = saved["data"].get("classes")
    if trained_on is not None and d.classes != trained_on:
        raise ValueError(f"{dataset}'s classes are {', '.join(d.classes)}; the run's network outputs "
                         f"{', '.join(trained_on)}, in that order: test it on images of those classes")
    check_fits(model, d.channels, d.image_size)
    size = tuple(saved["data"].get("image_size", d.image_size))
    if tuple(d.image_size) != size:
        warn(f"{dataset}'s images are {d.image_size[0]}x{d.image_size[1]}; the run trained on {size[0]}x"
             f"{size[1]} ones")
    check_subset(subset, len(d.test_y), f"test images of {dataset}")
    images = sample(len(d.test_y), subset)
    loader = BatchLoader(d.test_x[images], d.test_y[images], batch_size or c["batch_size"], saved["data"]["mean"],
                         saved["data"]["std"], device=next(model.parameters()).device)
    ev = evaluate(model, loader, d.num_classes, progress)
    label = (weights if weights in ("last", "best") else Path(weights).stem) + (f"-subset{subset}" if subset else "")
    report, table = run_dir / f"test-{label}.json", run_dir / f"confusion-{label}.csv"
    report.write_text(json.dumps({
        "dataset": dataset, "data": folder, "weights": label, "images": len(loader.y), "accuracy": ev.acc,
        "top5": ev.top5, "loss": ev.loss, "classes": d.classes, "confusion": ev.confusion.tolist()}, indent=1) + "\n")
    with open(table, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted", *d.classes])
        writer.writerows([name, *row] for name, row in zip(d.classes, ev.confusion.tolist()))
    return RunReport(ev.acc, ev.top5, ev.loss, ev.confusion, d.classes, (report, table))
