"""The recurrent cell search on a text corpus (DARTS, Liu, Simonyan, Yang, ICLR 2019, Sec. 3.1.2, App. A.1.2).

``dnas search --space darts-rnn`` runs here: the loop, run directory, checkpoints, exact resume and reports
are ``Search``'s; this class brings the corpus, the language-model supernet and the step. As in the DARTS
code (rnn/train_search.py), the weights step on the training split and the architecture on the validation
split, each cut into ``batch_size`` streams whose hidden states carry over from one window to the next
within an epoch; a training window is 35 tokens (17 with probability 0.05) and scales the learning rate by
its length / 35. The weight loss adds temporal activation regularisation (1e-3) to the cross-entropy; the
gradient is clipped to 0.25, and so are the weight gradients of the second-order unrolled step. Each epoch
reports the perplexity on the validation split (10 streams).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..data import batchify, get_batch, load_corpus
from ..search import FUSED_WAYS, Search, SearchConfig, build_supernet, optimizers, trial_forward
from ..settings import bars_off
from .model import activation_regularization, bptt_length, evaluate_lm, lm_loss, perplexity


@dataclass
class RNNSearchConfig(SearchConfig):
    """Settings of a recurrent search; the defaults are the DARTS paper's PTB search (App. A.1.2): weights by
    SGD with lr 20 (constant) and weight decay 5e-7, batch 256, BPTT 35, gradient clip 0.25; alphas by Adam
    with lr 3e-3, betas (0.9, 0.999), weight decay 1e-3; 50 epochs. ``tar`` / ``ar``: the temporal and plain
    activation regularisation of the DARTS code (1e-3 and 0). ``subset``: the first N tokens of the training
    and of the validation split. Sizes and dropouts are space options (``DartsRnnSupernet``: 300 / 300, dropouts
    0.75, 0.25, 0.75, 0.2). ``lr_min``, ``train_portion`` and ``cutout`` do not apply."""

    dataset: str = "ptb"
    epochs: int = 50
    batch_size: int = 256
    lr: float = 20.0
    momentum: float = 0.0
    weight_decay: float = 5e-7
    grad_clip: float = 0.25
    arch_lr: float = 3e-3
    arch_betas: tuple[float, float] = (0.9, 0.999)
    arch_weight_decay: float = 1e-3
    bptt: int = 35
    eval_batch_size: int = 10
    tar: float = 1e-3
    ar: float = 0.0

    def __post_init__(self):
        ways = [name for name in FUSED_WAYS if getattr(self, name)]
        if ways:
            raise ValueError(f"{', '.join(ways)}: ways of running the image spaces' fused cells; the recurrent "
                             f"search has none, leave them off")
        super().__post_init__()


class RNNSearch(Search):
    """A search of the recurrent cell on a text corpus (``dnas.data.text``)."""

    config: RNNSearchConfig

    def setup(self) -> None:
        c = self.config
        if c.cuda_graph:
            raise ValueError("cuda_graph does not apply to the recurrent search: its windows vary in length "
                             "(variable BPTT), and a CUDA graph replays one shape; leave it off")
        if c.channels_last:
            raise ValueError("channels_last is a layout of images (NHWC); the recurrent search has none, leave it off")
        if c.precision != "fp32":
            raise ValueError(f"precision {c.precision!r}: the recurrent search runs in fp32 only")
        given = [name for name in ("lr_min", "train_portion", "cutout", "eval_channels_last")
                 if getattr(c, name) != getattr(SearchConfig, name)]
        if given:
            raise ValueError(f"{', '.join(given)}: settings of the image search; the recurrent search keeps its lr "
                             f"constant, takes the corpus's own splits and has no images; leave them off")
        corpus = load_corpus(c.dataset, c.data)
        train, valid = corpus.train[: c.subset], corpus.valid[: c.subset]
        self.data = {"tokens": len(train), "vocab_size": corpus.vocab_size}  # what was read, for config.json
        self.train_data = batchify(train, c.batch_size).to(self.device)
        self.search_data = batchify(valid, c.batch_size).to(self.device)  # the architecture's steps
        self.val_data = batchify(valid, c.eval_batch_size).to(self.device)  # each epoch's report
        self.lengths = torch.Generator().manual_seed(c.seed)  # the BPTT window lengths

        self.parts = self.method.build_parts()
        if hasattr(self.parts.arch_grad, "clip"):  # second order: clip the unrolled step as the weight step
            self.parts.arch_grad.clip = c.grad_clip
        self.model = build_supernet(c.space or self.method.part("space"), c.space_options, vocab_size=corpus.vocab_size,
                                    relaxation=self.parts.relaxation, edge=self.parts.edge).to(self.device)
        self.w_optimizer, self.a_optimizer = optimizers(self.model, c)
        self.scheduler = torch.optim.lr_scheduler.ConstantLR(self.w_optimizer, factor=1.0, total_iters=0)

    @property
    def data_line(self) -> str:
        return f"{self.data['tokens']:,} training tokens, a vocabulary of {self.data['vocab_size']:,}"

    def generators(self) -> dict[str, torch.Generator]:
        return {"lengths": self.lengths}

    def forward(self, words, hidden, params=None):
        """The supernet's forward, or with ``params`` in place of its weights (a trial, e.g. the unrolled model
        of second order, which must not move the real BatchNorm statistics)."""
        if params is None:
            return self.model(words, hidden)
        return trial_forward(self.model, params, words, hidden)

    def step(self, train, val, lr_scale: float = 1.0, update_arch: bool = True):
        """DARTS Algorithm 1 on one window: an architecture step on the validation window, then a weight step
        on the training window with the learning rate scaled by ``lr_scale`` (``weight_step_first``: the other
        way round). ``train`` and ``val`` are (words, targets, hidden); returns the training loss and both
        streams' next hidden states."""
        (x, y, hidden), (vx, vy, hidden_val) = train, val
        c, model, group = self.config, self.model, self.w_optimizer.param_groups[0]
        lr = group["lr"]
        group["lr"] = lr * lr_scale
        model.train()

        def train_loss(params=None):
            return lm_loss(self.forward(x, hidden, params)[0], y)

        def arch_step():
            carried = {}

            def val_loss(params=None):
                logits, carried["hidden"], _ = self.forward(vx, hidden_val, params)
                return lm_loss(logits, vy) + sum(r(model) for r in self.parts.regularizers)

            self.a_optimizer.zero_grad(set_to_none=True)
            self.parts.arch_grad(model, train_loss, val_loss, self.w_optimizer)
            self.a_optimizer.step()
            return carried["hidden"].detach()

        if update_arch and not c.weight_step_first:
            hidden_val = arch_step()
        model.weight_delta = self.parts.perturbation(model, train_loss) if self.parts.perturbation is not None else None
        weights = model.weight_parameters()
        self.w_optimizer.zero_grad(set_to_none=not c.step_unused_weights)
        logits, hidden, raw = model(x, hidden)
        loss = lm_loss(logits, y)
        (loss + activation_regularization(raw, c.tar, c.ar)).backward(inputs=weights)
        model.weight_delta = None
        torch.nn.utils.clip_grad_norm_(weights, c.grad_clip)
        self.w_optimizer.step()
        if update_arch and c.weight_step_first:
            hidden_val = arch_step()
        group["lr"] = lr
        return loss.item(), hidden.detach(), hidden_val

    def train_epoch(self, progress: bool) -> dict[str, float]:
        c = self.config
        hidden, hidden_val = self.model.init_hidden(c.batch_size), self.model.init_hidden(c.batch_size)
        rows = len(self.train_data)
        bar = tqdm(total=rows - 2, disable=bars_off(progress), desc=f"epoch {self.epoch + 1}/{c.epochs}", unit="tok",
                   leave=False, dynamic_ncols=True)
        loss_sum, seen, i = 0.0, 0, 0
        update_arch = self.epoch >= c.arch_warmup_epochs
        while i < rows - 2:
            seq_len = bptt_length(c.bptt, self.lengths, jitter=False)
            x, y = get_batch(self.train_data, i, seq_len)
            vx, vy = get_batch(self.search_data, i % (len(self.search_data) - 1), c.bptt)
            loss, hidden, hidden_val = self.step((x, y, hidden), (vx, vy, hidden_val), seq_len / c.bptt, update_arch)
            loss_sum, seen, i = loss_sum + loss * len(x), seen + len(x), i + seq_len
            bar.update(min(seq_len, rows - 2 - bar.n))
            bar.set_postfix(ppl=f"{perplexity(loss_sum / seen):.1f}")
        bar.close()
        return {"train_loss": loss_sum / seen, "train_ppl": perplexity(loss_sum / seen)}

    def evaluate(self, progress: bool = False) -> dict[str, float]:
        with tqdm(total=len(self.val_data) - 1, disable=bars_off(progress), desc="evaluating", unit="tok",
                  leave=False, dynamic_ncols=True) as bar:
            loss = evaluate_lm(self.model, self.val_data, self.config.bptt, bar)
        return {"val_loss": loss, "val_ppl": perplexity(loss)}

    SUMMARY = {"train_ppl": ".2f", "val_ppl": ".2f"}
