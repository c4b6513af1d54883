"""DARTS-PT: perturbation-based architecture selection (Wang, Cheng, Chen, Tang, Hsieh, "Rethinking
Architecture Selection in Differentiable NAS", ICLR 2021, arXiv:2108.04392).

The size of an op's alpha need not say how much the op contributes to the supernet (Sec. 3), so DARTS-PT
reads the architecture off the trained supernet by taking choices out and measuring the damage (Sec. 4,
Algorithm 1), one decision at a time, normal and reduction cell in turn:

1. operation selection, edges in random order: the supernet's validation accuracy with each op of the
   edge removed; the op whose removal hurts most is kept, and the edge is discretised to it;
2. topology selection, nodes with more than 2 inputs in random order: the accuracy with each incoming
   edge removed; the 2 edges whose removal hurts most are kept, the others dropped;
3. after each decision the supernet is fine-tuned, weights and alphas as in the search, so that it
   recovers before the next decision.

The numbers are the paper's code (github.com/ruocwang/darts-pt: sota/cnn/projection.py, train_search.py,
exp_scripts/darts-proj-sota.sh): 5 tuning epochs between decisions, one more after the last (81 for the
DARTS cell), weights by a fresh SGD at a tenth of the search's learning rate, cosine-annealed over all tuning
epochs to the search's minimum, alphas by the search's Adam going on; removal measured by accuracy on the
whole search-validation half, in training mode (BatchNorm on batch statistics). As there, removing an op
sets its weight to 0 and leaves the other weights as they are; a decision is applied with the space's op
mask (the kept op weighs 1, a dropped edge 0). Where the paper's code rescans a node after each dropped
edge with the earlier ones still in place, here each edge is scored once, which ranks them the same; equal
accuracies go to the higher loss (the code: to the earlier op), which matters only on a few batches.
"""
from __future__ import annotations

import json
import time
from functools import partial
from itertools import islice
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .genotype import Genotype
from .cuda_graph import GraphedStep
from .search import copies, copy_into, format_seconds, read_jsonl, weight_sgd, write_jsonl
from .selection import SELECTIONS, TopK
from .settings import bars_off, say
from .spaces.darts import CELL_TYPES

CRITERIA = ("accuracy", "loss")
EDGES_PER_NODE = 2  # the DARTS cell: each node keeps 2 inputs


@SELECTIONS.register("perturbation")
class Perturbation:
    """DARTS-PT's selection (module docstring), run after the search by ``after_search``.

    ``tune_epochs`` between two decisions (the paper's code: 5); ``lr_scale`` times the search's weight
    learning rate for the tuning (0.1); ``criterion`` ``accuracy`` (the paper's) or ``loss``: the op or edge
    whose removal lowers the accuracy most (raises the loss most) is kept. For quick runs:
    ``eval_batches`` validation batches per measurement (None: all, the paper's), ``tune_steps`` steps per
    tuning epoch (None: a whole epoch). Until the projection, and for the genotypes it logs, the cell is
    read off by magnitude (DARTS's top-2); projected edges read as decided.
    """

    spaces = ("darts",)  # it masks ops of the DARTS supernet's two cell types (op_mask)

    def __init__(self, tune_epochs: int = 5, lr_scale: float = 0.1, criterion: str = "accuracy",
                 eval_batches: int | None = None, tune_steps: int | None = None,
                 exclude: tuple[str, ...] = ("none",)):
        for name, value, least in (("tune_epochs", tune_epochs, 0), ("eval_batches", eval_batches, 1),
                                   ("tune_steps", tune_steps, 1)):
            if value is not None and (not isinstance(value, int) or value < least):
                raise ValueError(f"perturbation selection: {name} must be an integer >= {least}"
                                 f"{'' if name == 'tune_epochs' else ' or None (all)'}, not {value!r}")
        if not lr_scale > 0:
            raise ValueError(f"perturbation selection: lr_scale must be > 0, not {lr_scale!r}")
        if criterion not in CRITERIA:
            raise ValueError(f"perturbation selection: unknown criterion {criterion!r}; valid: {', '.join(CRITERIA)}")
        self.tune_epochs, self.lr_scale, self.criterion = tune_epochs, lr_scale, criterion
        self.eval_batches, self.tune_steps, self.exclude = eval_batches, tune_steps, tuple(exclude)
        self.magnitude = TopK(EDGES_PER_NODE, self.exclude)
        # progress, saved in the search's checkpoint: decision steps done, tuning epochs done, the decisions
        self.step, self.tune_epoch, self.decisions = 0, 0, []
        self.optimizer = self.scheduler = self.generator = None
        self._loaded: dict[str, Any] | None = None
        self._clock = (time.time(), 0)  # when this process's projection started, and at which tuning epoch

    def __call__(self, strengths: torch.Tensor, op_names: list[str]) -> list[tuple[str, int]]:
        return self.magnitude(strengths, op_names)

    # -- state ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        tuning = None if self.optimizer is None else {
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state()}
        return {"step": self.step, "tune_epoch": self.tune_epoch, "decisions": self.decisions, "tuning": tuning}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.tune_epoch, self.decisions = state["step"], state["tune_epoch"], state["decisions"]
        self._loaded = state["tuning"]

    # -- the projection -------------------------------------------------------------------------------
    def schedule(self, model) -> list[str]:
        """The decision steps: an op for each edge, then the inputs of each node with more than 2."""
        return ["op"] * len(model.op_mask["normal"]) + ["topology"] * (model.nodes - 1)

    def tuning_epochs(self, steps: int) -> int:
        """Tuning epochs in all: ``tune_epochs`` after each decision step, one after the last (the code's)."""
        return self.tune_epochs * (steps - 1) + 1 if self.tune_epochs else 0

    def after_search(self, search, progress: bool = True) -> Genotype:
        """Project the trained supernet of ``search`` to a cell, resuming where a checkpoint left off.
        Writes projection.jsonl (a line per decision) and tuning.jsonl (a line per tuning epoch)."""
        model, config = search.model, search.config
        if not hasattr(model, "op_mask"):
            raise ValueError(f"the perturbation selection needs a space with an op mask per cell type (darts); "
                             f"{type(model).__name__} has none")
        steps = self.schedule(model)
        total = self.tuning_epochs(len(steps))
        self.optimizer = weight_sgd(model.weight_parameters(), config, config.lr * self.lr_scale)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, max(total, 1),
                                                                    eta_min=config.lr_min)
        self.generator = torch.Generator().manual_seed(config.seed)
        if self._loaded is not None:
            self.optimizer.load_state_dict(self._loaded["optimizer"])
            self.scheduler.load_state_dict(self._loaded["scheduler"])
            self.generator.set_state(self._loaded["generator"].cpu())
        # lines written after the last checkpoint belong to work that runs again
        _keep_lines(search.run_dir / "projection.jsonl", len(self.decisions))
        _keep_lines(search.run_dir / "tuning.jsonl", self.tune_epoch)

        self._clock = (time.time(), self.tune_epoch)
        while self.step < len(steps) or self.tune_epoch < total:
            if self.step < len(steps) and self.tune_epoch >= self.step * self.tune_epochs:
                self._decide(search, steps[self.step], len(steps), progress)
            else:
                self._tune(search, total, progress)
        return model.derive(self.magnitude)

    def _decide(self, search, kind: str, steps: int, progress: bool) -> None:
        """One decision step: the next edge's op (or node's inputs) in each cell type, a checkpoint each."""
        decided = {d["cell"] for d in self.decisions if d["step"] == self.step + 1}  # before an interruption
        for cell in CELL_TYPES:
            if cell in decided:
                continue
            record = (self.decide_op if kind == "op" else self.decide_topology)(search, cell, progress)
            if record is None:
                continue  # nothing left to decide in this cell
            record = {"step": self.step + 1, "tune_epoch": self.tune_epoch, "cell": cell, **record}
            self.decisions.append(record)
            with open(search.run_dir / "projection.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            choice = record["choice"]
            say(f"decision {self.step + 1}/{steps}  {cell} node {record['node']}: "
                + (f"edge from {record['input']} -> {choice}" if kind == "op" else f"inputs {choice}")
                + f"  (supernet val_acc {record['supernet']['val_acc']:.4f})")
            search.save_checkpoint()
        self.step += 1
        search.save_checkpoint()

    def decide_op(self, search, cell: str, progress: bool = False) -> dict[str, Any] | None:
        """Operation selection on a random open edge of ``cell`` (``search``: its ``model`` and
        ``val_loader``): discretise it to the op whose removal hurts most; the decision's record, None
        when every edge is decided."""
        model = search.model
        mask = model.op_mask[cell]
        open_edges = [e for e in range(len(mask)) if mask[e].sum() > 1]
        if not open_edges:
            return None
        e = open_edges[self._draw(len(open_edges))]
        ops = [o for o in mask[e].nonzero().flatten().tolist() if model.ops[o] not in self.exclude]
        if not ops:
            raise ValueError(f"edge {e} of the {cell} cell has no op left outside {self.exclude}")
        base, scores = self._measure(search, cell, [(e, [o]) for o in ops], f"{cell} edge {e}", progress)
        best = self._most_important(scores, 1)[0]
        mask[e] = False
        mask[e, ops[best]] = True
        node, j = _edge_ends(model.nodes)[e]
        return {"kind": "op", "node": node, "input": j, "edge": e, "supernet": base,
                "candidates": [{"op": model.ops[o], **s} for o, s in zip(ops, scores)],
                "choice": model.ops[ops[best]]}

    def decide_topology(self, search, cell: str, progress: bool = False) -> dict[str, Any] | None:
        """Topology selection on a random node of ``cell`` with more than 2 inputs: keep the 2 whose
        removal hurts most, drop the others; the decision's record, None when no such node is left."""
        model = search.model
        mask = model.op_mask[cell]
        ends = _edge_ends(model.nodes)
        live = {}
        for e, (node, j) in enumerate(ends):
            if mask[e].any():
                live.setdefault(node, []).append(e)
        open_nodes = [node for node, edges in live.items() if len(edges) > EDGES_PER_NODE]
        if not open_nodes:
            return None
        node = open_nodes[self._draw(len(open_nodes))]
        edges = live[node]
        base, scores = self._measure(search, cell, [(e, mask[e].nonzero().flatten().tolist()) for e in edges],
                                     f"{cell} node {node}", progress)
        kept = sorted(self._most_important(scores, EDGES_PER_NODE))
        for i, e in enumerate(edges):
            if i not in kept:
                mask[e] = False
        return {"kind": "topology", "node": node, "edges": edges, "supernet": base,
                "candidates": [{"input": ends[e][1], **s} for e, s in zip(edges, scores)],
                "choice": [ends[edges[i]][1] for i in kept]}

    def _measure(self, search, cell, removals, what, progress):
        """The supernet's validation accuracy and loss as it is, then with each removal (edge, ops); every
        measurement sees the same batches."""
        loader = search.val_loader
        start = loader.generator.get_state()
        results = []
        for removal in tqdm([None, *removals], desc=f"project {what}", unit="eval", leave=False,
                            disable=bars_off(progress), dynamic_ncols=True):
            loader.generator.set_state(start)
            results.append(evaluate(search.model, loader, self.eval_batches,
                                    None if removal is None else (cell, *removal)))
        return results[0], results[1:]

    def _most_important(self, scores: list[dict[str, float]], k: int) -> list[int]:
        """The k candidates whose removal hurts most: lowest accuracy, equal accuracies by the higher loss
        (the paper's code takes the earlier; on a few batches accuracies tie often); or highest loss."""
        key = (lambda i: (scores[i]["val_acc"], -scores[i]["val_loss"], i)) if self.criterion == "accuracy" else \
            (lambda i: (-scores[i]["val_loss"], i))
        return sorted(range(len(scores)), key=key)[:k]

    def _draw(self, n: int) -> int:
        return int(torch.randint(n, (1,), generator=self.generator))

    def _tune(self, search, total: int, progress: bool) -> None:
        """One tuning epoch: the search's bilevel step with the tuning's weight optimiser."""
        t0, lr = time.time(), self.scheduler.get_last_lr()[0]
        steps = len(search.train_loader) if self.tune_steps is None else min(self.tune_steps, len(search.train_loader))
        bar = tqdm(islice(zip(search.train_loader, search.val_loader), steps), total=steps, unit="step",
                   desc=f"tune {self.tune_epoch + 1}/{total}", leave=False, disable=bars_off(progress),
                   dynamic_ncols=True)
        step = partial(search.bilevel, self.optimizer, True)
        if search.graph is not None:  # captured afresh each tuning epoch: the mask and the lr change between them
            step = GraphedStep(step)
        loss_sum = correct = seen = 0
        for train_batch, val_batch in bar:
            loss, right = step(*train_batch, *val_batch)
            n = len(train_batch[1])
            loss_sum, correct, seen = loss_sum + loss * n, correct + right, seen + n
        self.scheduler.step()
        self.tune_epoch += 1
        genotype = search.model.derive(self.magnitude)
        record = {"tune_epoch": self.tune_epoch, "after_step": self.step, "lr": lr,
                  "train_loss": float(loss_sum) / seen, "train_acc": float(correct) / seen,
                  "genotype": str(genotype), **search.model.genotype_metrics(genotype),
                  "seconds": round(time.time() - t0, 3)}
        with open(search.run_dir / "tuning.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        search.save_checkpoint()
        started, first = self._clock  # the eta counts decisions in the time of the epochs
        eta = (time.time() - started) / (self.tune_epoch - first) * (total - self.tune_epoch)
        say(f"tune epoch {self.tune_epoch}/{total}  lr {lr:.4g}  train_acc {record['train_acc']:.4f}  "
            f"{record['seconds']:.1f}s  eta {format_seconds(eta)}")


@torch.no_grad()
def evaluate(model, loader, batches: int | None = None, removed: tuple[str, int, list[int]] | None = None,
             ) -> dict[str, float]:
    """Validation accuracy and loss of the supernet on ``batches`` batches of ``loader`` (None: all), with
    the ops ``removed`` = (cell type, edge, op indices) at weight 0 and every other weight as it is. In
    training mode, as the paper's code: BatchNorm normalises with each batch's statistics; its running
    statistics are left as they were."""
    buffers = copies(model.buffers())
    if removed is not None:
        cell, edge, ops = removed
        model.op_scale = {t: torch.ones(m.shape, device=m.device) for t, m in model.op_mask.items()}
        model.op_scale[cell][edge, ops] = 0.0
    model.train()
    loss_sum = correct = seen = 0
    try:
        for x, y in islice(loader, batches):
            logits = model(x)
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
    finally:
        model.op_scale = None
        copy_into(model.buffers(), buffers)
    return {"val_acc": float(correct) / seen, "val_loss": float(loss_sum) / seen}


def _edge_ends(nodes: int) -> list[tuple[int, int]]:
    """(node, input) of each edge of the DARTS cell, in the supernet's edge order; nodes count from 2."""
    return [(2 + i, j) for i in range(nodes) for j in range(2 + i)]


def _keep_lines(path, n: int) -> None:
    """On resume: the first ``n`` records, those of the checkpoint (and a last line cut short dropped)."""
    if path.exists():
        write_jsonl(path, read_jsonl(path, partial_last=True)[:n])
