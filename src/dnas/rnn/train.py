"""Training the language model of a recurrent genotype from scratch, and testing it (DARTS App. A.2.2).

``dnas train --genotype DARTS_RNN_V2 --dataset ptb`` runs here (``dnas.train`` routes a recurrent genotype).
The defaults are the paper's PTB evaluation: embedding and hidden size 850, batch 64, BPTT 35 (AWD-LSTM's
variable length: N(35, 5), halved with probability 0.05, between 5 and 55, the learning rate scaled by
length / 35), SGD with lr 20 and weight decay 8e-7, switched to averaged SGD (ASGD, Polyak & Juditsky 1992)
once the validation loss is not monotone: worse than the best of all but the last 5 epochs (AWD-LSTM's
NT-ASGD, ``nonmono`` 5); dropouts 0.75 (output), 0.25 (hidden), 0.75 (cell input), 0.2 (embedded words),
embedding dropout 0.1; temporal activation regularisation 1e-3; gradient clip 0.25; 8000 epochs at most
(the DARTS code's limit: the paper trains "until convergence"). The run directory holds:

    config.json     settings, genotype, vocabulary size, parameters ("kind": "language-model")
    genotype.json   the trained genotype (and genotype.txt, the DARTS text form)
    metrics.jsonl   one line per epoch: lr, optimizer (sgd / asgd), train_loss, train_ppl, val_loss, val_ppl, seconds
    checkpoint.pt   everything needed to resume exactly, written atomically after each epoch
    last.pt         the weights the last epoch was validated with (under ASGD: the averaged ones)
    best.pt         those of the epoch with the lowest validation loss: the model the paper tests
    test-<weights>.json   written by ``evaluate_lm_run`` (``dnas test``): valid and test perplexity
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .. import checkpoint
from ..cost import count_params
from ..data import CORPORA, batchify, get_batch, is_corpus, load_corpus
from ..search import (check_minimums, check_positive, drop_lines_after, format_seconds, new_run_dir, read_jsonl,
                      resolve_device)
from ..settings import bars_off, say
from ..zoo import load_genotype
from .genotype import RecurrentGenotype
from .model import (GenotypeCell, LanguageModel, activation_regularization, bptt_length, evaluate_lm, lm_loss,
                    perplexity)

CHECKPOINT_FORMAT = "dnas-lm-checkpoint-v1"
KIND = "language-model"


@dataclass
class LMTrainConfig:
    """Settings of a language-model training run; the defaults are DARTS's PTB evaluation (App. A.2.2, and its
    code rnn/train.py). ``subset`` / ``valid_subset``: the first N tokens of the training / validation split."""

    dataset: str = "ptb"
    data: str | None = None
    emb_size: int = 850
    hidden_size: int = 850
    epochs: int = 8000
    batch_size: int = 64
    eval_batch_size: int = 10
    test_batch_size: int = 1
    lr: float = 20.0
    weight_decay: float = 8e-7
    grad_clip: float = 0.25
    bptt: int = 35
    max_seq_len_delta: int = 20
    dropout: float = 0.75
    dropouth: float = 0.25
    dropoutx: float = 0.75
    dropouti: float = 0.2
    dropoute: float = 0.1
    tar: float = 1e-3
    ar: float = 0.0
    nonmono: int = 5
    subset: int | None = None
    valid_subset: int | None = None
    seed: int = 1267
    device: str = "auto"

    def __post_init__(self):
        if not is_corpus(self.dataset):
            raise ValueError(f"a recurrent genotype trains a language model on a text corpus, not {self.dataset!r}; "
                             f"valid: {', '.join(CORPORA.names())}")
        check_minimums(vars(self), epochs=1, batch_size=1, bptt=1, weight_decay=0)
        check_positive(vars(self), "lr", "grad_clip")

    @classmethod
    def fields(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}


@dataclass
class LMTrainResult:
    run_dir: Path
    genotype: RecurrentGenotype
    metrics: list[dict[str, Any]]
    params: int

    @property
    def best_val_ppl(self) -> float:
        return min(m["val_ppl"] for m in self.metrics)


def build_lm(config: LMTrainConfig, genotype: RecurrentGenotype, vocab_size: int) -> LanguageModel:
    cell = GenotypeCell(genotype, config.emb_size, config.hidden_size, config.dropouth, config.dropoutx)
    return LanguageModel(cell, vocab_size, config.emb_size, config.dropout, config.dropouti, config.dropoute)


def asgd(params, config: LMTrainConfig) -> torch.optim.ASGD:
    """Averaged SGD as AWD-LSTM and DARTS use it: the average from the switch on (t0 = 0), no lr decay."""
    return torch.optim.ASGD(params, lr=config.lr, t0=0, lambd=0.0, weight_decay=config.weight_decay)


class LMTrainer:
    """One language-model training run, resumable from its run directory."""

    def __init__(self, config: LMTrainConfig, genotype: RecurrentGenotype, run_dir: str | os.PathLike):
        self.config, self.genotype, self.run_dir = config, genotype, Path(run_dir).expanduser()
        self.device = resolve_device(config.device)
        torch.manual_seed(config.seed)
        corpus = load_corpus(config.dataset, config.data)
        self.vocab_size = corpus.vocab_size
        self.train_data = batchify(corpus.train[: config.subset], config.batch_size).to(self.device)
        self.val_data = batchify(corpus.valid[: config.valid_subset], config.eval_batch_size).to(self.device)
        self.model = build_lm(config, genotype, corpus.vocab_size).to(self.device)
        self.params = count_params(self.model)
        self.optimizer: torch.optim.Optimizer = torch.optim.SGD(self.model.parameters(), config.lr,
                                                                weight_decay=config.weight_decay)
        self.lengths = torch.Generator().manual_seed(config.seed)
        self.epoch = 0
        self.history: list[float] = []  # validation losses under SGD, for the switch to ASGD
        self.best_loss = math.inf

    @property
    def averaging(self) -> bool:
        return isinstance(self.optimizer, torch.optim.ASGD)

    def train_epoch(self, progress: bool) -> dict[str, float]:
        c, model = self.config, self.model
        model.train()
        hidden = model.init_hidden(c.batch_size)
        rows, group = len(self.train_data), self.optimizer.param_groups[0]
        bar = tqdm(total=rows - 2, disable=bars_off(progress), desc=f"epoch {self.epoch + 1}/{c.epochs}", unit="tok",
                   leave=False, dynamic_ncols=True)
        loss_sum, seen, i = 0.0, 0, 0
        while i < rows - 2:
            seq_len = bptt_length(c.bptt, self.lengths, jitter=True, max_delta=c.max_seq_len_delta)
            x, y = get_batch(self.train_data, i, seq_len)
            group["lr"] = c.lr * seq_len / c.bptt
            self.optimizer.zero_grad(set_to_none=True)
            logits, hidden, raw = model(x, hidden)
            loss = lm_loss(logits, y)
            (loss + activation_regularization(raw, c.tar, c.ar)).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip)
            self.optimizer.step()
            hidden = hidden.detach()
            loss_sum, seen, i = loss_sum + loss.item() * len(x), seen + len(x), i + seq_len
            bar.update(min(seq_len, rows - 2 - bar.n))
            bar.set_postfix(ppl=f"{perplexity(loss_sum / seen):.1f}")
        bar.close()
        group["lr"] = c.lr
        return {"train_loss": loss_sum / seen, "train_ppl": perplexity(loss_sum / seen)}

    @contextlib.contextmanager
    def averaged(self):
        """Under ASGD, the model holds the averaged weights inside this block (ASGD's ``ax``)."""
        if not self.averaging:
            yield
            return
        saved = [p.detach().clone() for p in self.model.parameters()]
        with torch.no_grad():
            for p in self.model.parameters():
                p.copy_(self.optimizer.state[p]["ax"])
        try:
            yield
        finally:
            with torch.no_grad():
                for p, w in zip(self.model.parameters(), saved):
                    p.copy_(w)

    @checkpoint.guarded_run("train")
    def run(self, progress: bool = True) -> LMTrainResult:
        c = self.config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.json").write_text(json.dumps({
            "kind": KIND, "config": dataclasses.asdict(c), "genotype": self.genotype.to_dict(),
            "vocab_size": self.vocab_size, "params": self.params,
            "environment": checkpoint.environment(self.device)}, indent=1) + "\n")
        self.genotype.save(self.run_dir / "genotype.json")
        self.genotype.save(self.run_dir / "genotype.txt")
        say(f"language model: {c.emb_size}/{c.hidden_size}, vocabulary {self.vocab_size}: "
            f"{self.params / 1e6:.3f}M params")
        started, first_epoch = time.time(), self.epoch
        while self.epoch < c.epochs:
            t0 = time.time()
            record = {"epoch": self.epoch + 1, "lr": c.lr, "optimizer": "asgd" if self.averaging else "sgd",
                      **self.train_epoch(progress)}
            with self.averaged():
                val_loss = evaluate_lm(self.model, self.val_data, c.bptt)
                weights = {k: v.clone() for k, v in self.model.state_dict().items()}
            record.update(val_loss=val_loss, val_ppl=perplexity(val_loss), seconds=round(time.time() - t0, 3))
            if val_loss < self.best_loss:
                self.best_loss = val_loss
                checkpoint.atomic_save(weights, self.run_dir / "best.pt")
            checkpoint.atomic_save(weights, self.run_dir / "last.pt")
            if not self.averaging:
                if len(self.history) > c.nonmono and val_loss > min(self.history[: -c.nonmono]):
                    self.optimizer = asgd(self.model.parameters(), c)
                    record["switched_to_asgd"] = True
                self.history.append(val_loss)
            self.epoch += 1
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            self.save_checkpoint()
            eta = (time.time() - started) / (self.epoch - first_epoch) * (c.epochs - self.epoch)
            say(f"epoch {self.epoch}/{c.epochs}  {record['optimizer']}  train_ppl {record['train_ppl']:.2f}  "
                f"val_ppl {record['val_ppl']:.2f}  {record['seconds']:.1f}s  eta {format_seconds(eta)}"
                + ("  (switching to ASGD)" if record.get("switched_to_asgd") else ""))
        return LMTrainResult(self.run_dir, self.genotype, read_jsonl(self.run_dir / "metrics.jsonl"), self.params)

    def save_checkpoint(self) -> None:
        checkpoint.atomic_save({
            "format": CHECKPOINT_FORMAT, "epoch": self.epoch, "history": self.history, "best_loss": self.best_loss,
            "model": self.model.state_dict(), "averaging": self.averaging, "optimizer": self.optimizer.state_dict(),
            "rng": checkpoint.rng_state({"lengths": self.lengths}),
        }, self.run_dir / "checkpoint.pt")

    def load_checkpoint(self) -> None:
        def restore(state):
            self.model.load_state_dict(state["model"])
            if state["averaging"]:
                self.optimizer = asgd(self.model.parameters(), self.config)
            self.optimizer.load_state_dict(state["optimizer"])
            checkpoint.set_rng_state(state["rng"], {"lengths": self.lengths})

        state = checkpoint.load(self.run_dir / "checkpoint.pt", CHECKPOINT_FORMAT, self.device, "language-model",
                                restore)
        self.epoch, self.history, self.best_loss = state["epoch"], list(state["history"]), state["best_loss"]
        drop_lines_after(self.run_dir / "metrics.jsonl", self.epoch)


def is_lm_job(genotype, resume) -> bool:
    """Whether ``dnas.train`` is asked to train (or resume) a language model."""
    if resume is not None:
        return is_lm_run(resume)
    return genotype is not None and isinstance(load_genotype(genotype)[0], RecurrentGenotype)


def is_lm_run(run_dir: str | os.PathLike) -> bool:
    config = Path(run_dir).expanduser() / "config.json"
    return config.is_file() and checkpoint.read_config(config).get("kind") == KIND


def train_lm(genotype=None, dataset: str | None = None, *, run_dir=None, runs_root="runs", resume=None,
             progress: bool = True, **settings: Any) -> LMTrainResult:
    """Train the language model of a recurrent genotype (a zoo name such as DARTS_RNN_V2, a file, a search run
    or the text form) on a text corpus; ``settings`` are fields of ``LMTrainConfig``. ``resume`` continues
    the run in that directory from its last checkpoint (only ``device`` may change)."""
    if resume is not None:
        run_dir = Path(resume).expanduser()
        if not is_lm_run(run_dir):
            raise FileNotFoundError(f"{run_dir} is not a dnas language-model run (no config.json of one in it)")
        checkpoint.check_resume_settings(settings)
        saved = checkpoint.read_config(run_dir / "config.json")
        trainer = LMTrainer(LMTrainConfig(**{**saved["config"], **settings}),
                            RecurrentGenotype.from_dict(saved["genotype"]), run_dir)
        return checkpoint.resume(trainer, progress)
    unknown = set(settings) - LMTrainConfig.fields()
    if unknown:
        raise ValueError(f"unknown settings {sorted(unknown)} for a language model; valid: "
                         f"{', '.join(sorted(LMTrainConfig.fields()))}")
    config = LMTrainConfig(**{**settings, "dataset": dataset or LMTrainConfig.dataset})
    if config.data is not None:
        config.data = checkpoint.absolute(config.data)
    genotype, name = load_genotype(genotype)
    if not isinstance(genotype, RecurrentGenotype):
        raise ValueError(f"{name} is a convolutional genotype; a language model needs a recurrent one")
    if run_dir is None:
        run_dir = new_run_dir(runs_root, f"train-{name}", config.dataset)
    else:
        checkpoint.check_new_run_dir(run_dir, "train")
    return LMTrainer(config, genotype, run_dir).run(progress)


@dataclass
class LMReport:
    valid_loss: float
    test_loss: float
    file: Path

    @property
    def valid_ppl(self) -> float:
        return perplexity(self.valid_loss)

    @property
    def test_ppl(self) -> float:
        return perplexity(self.test_loss)


def evaluate_lm_run(run_dir: str | os.PathLike, dataset: str | None = None, data=None, weights: str = "best",
                    device: str = "auto", batch_size: int | None = None, subset: int | None = None,
                    progress: bool = True) -> LMReport:
    """Validation and test perplexity of a trained language model (``weights``: best, last or a .pt file),
    validation with ``eval_batch_size`` streams and test with ``batch_size`` (the run's test_batch_size, 1, by
    default), as the DARTS code measures them; ``subset``: the first N tokens of each. Written to
    ``test-<weights>.json`` in the run, ``-subset<N>`` and ``-batch<B>`` added for a part of the corpus or
    another test batch (a whole test at the run's batch is not overwritten by them). Another ``dataset`` is
    read from ``data`` (or its own default place), not from the run's files."""
    run_dir = Path(run_dir).expanduser()
    if not is_lm_run(run_dir):
        raise FileNotFoundError(f"{run_dir} is not a dnas language-model run (no config.json of one in it)")
    saved = checkpoint.read_config(run_dir / "config.json")
    config = LMTrainConfig(**{**saved["config"], "device": device})
    check_minimums({"batch_size": batch_size, "subset": subset}, batch_size=1, subset=1)
    own = dataset in (None, config.dataset)
    corpus = load_corpus(dataset or config.dataset,
                         data if data else config.data if own else None)  # (load_corpus expands ~)
    if corpus.vocab_size != saved["vocab_size"]:
        raise ValueError(f"{corpus.name} has {corpus.vocab_size} words; the run was trained on a vocabulary of "
                         f"{saved['vocab_size']} ({config.dataset})")
    model = build_lm(config, RecurrentGenotype.from_dict(saved["genotype"]), corpus.vocab_size)
    path = run_dir / f"{weights}.pt" if weights in ("last", "best") else Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; weights are last, best (the last.pt and best.pt a run "
                                f"writes after its first epoch) or a .pt file of the model's state_dict")
    checkpoint.load_weights(model, path, "this run's model")
    dev = resolve_device(device)
    model.to(dev)
    test_batch = batch_size or config.test_batch_size
    valid = batchify(corpus.valid[:subset], config.eval_batch_size).to(dev)
    test = batchify(corpus.test[:subset], test_batch).to(dev)
    with tqdm(total=len(valid) + len(test), disable=bars_off(progress), desc="valid + test", unit="tok",
              leave=False) as bar:
        valid_loss = evaluate_lm(model, valid, config.bptt, bar)
        test_loss = evaluate_lm(model, test, config.bptt, bar)
    label = ((weights if weights in ("last", "best") else Path(weights).stem) + (f"-subset{subset}" if subset else "")
             + (f"-batch{test_batch}" if test_batch != config.test_batch_size else ""))
    report = LMReport(valid_loss, test_loss, run_dir / f"test-{label}.json")
    report.file.write_text(json.dumps({
        "dataset": corpus.name, "weights": label, "test_batch_size": test_batch, "valid_tokens": valid.numel(),
        "test_tokens": test.numel(), "valid_loss": valid_loss, "valid_ppl": report.valid_ppl, "test_loss": test_loss,
        "test_ppl": report.test_ppl}, indent=1) + "\n")
    return report
