"""P-DARTS: the progressive search (Chen, Xie, Wu, Tian, ICCV 2019, arXiv:1904.12760).

The search runs in stages of growing depth (5, 11, 17 cells on CIFAR-10, Sec. 3.2), each an ordinary
search of the recipe's ``epochs`` (25, of which the first 10 train the weights only). Between stages, every
edge's op space is cut to its strongest ops, 8 -> 5 -> 3 ("search space approximation", Sec. 3.2), so that
the deeper supernet fits in memory; the space's op mask does the cutting, and a masked op is not computed.
Dropout after every skip connection, decayed within a stage, keeps the skip from winning on its fast early
gradients (Sec. 3.3; initial rates 0.1, 0.4, 0.7). After the last stage, each edge keeps its best non-zero
op, each node its 2 strongest edges, and the normal cell at most M = 2 skip connections: while it holds more,
the weakest skip's edge is dropped and the node takes its next strongest ("search space regularization").

A progressive run directory holds one search run per stage (``stage-1/``, ...), each resumable on its own;
at its top, the config, the stages' metrics and alphas lines (with a ``stage`` field, epochs counted across
stages), ``stages.json`` (each stage's op mask) and the final genotype.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from . import checkpoint
from .genotype import Genotype
from .ops import DARTS_OPS, check_ops
from .registry import Registry
from .search import Search, SearchConfig, SearchResult, read_jsonl, write_jsonl
from .selection import TopK
from .settings import say
from .spaces.darts import CELL_TYPES

SCHEDULES = Registry("schedule")


@SCHEDULES.register("progressive")
class Progressive:
    """The stages of a P-DARTS search: cells, ops kept per edge after the stage, skip dropout rate."""

    spaces = ("darts",)  # it deepens the DARTS supernet (layers) and masks its ops (op_mask) between stages

    def __init__(self, layers=(5, 11, 17), keep=(5, 3, 1), skip_dropout=(0.1, 0.4, 0.7), max_skips: int = 2):
        if not len(layers) == len(keep) == len(skip_dropout) or not layers:
            raise ValueError(f"progressive: layers, keep and skip_dropout need one entry per stage, got "
                             f"{list(layers)}, {list(keep)}, {list(skip_dropout)}")
        if list(keep) != sorted(keep, reverse=True) or keep[-1] != 1:
            raise ValueError(f"progressive: keep must shrink to 1 op per edge after the last stage, got {list(keep)}")
        if min(layers) < 3:
            raise ValueError(f"progressive: each stage's supernet needs at least 3 cells (one normal, two "
                             f"reductions), got layers {list(layers)}")
        self.layers, self.keep, self.skip_dropout = tuple(layers), tuple(keep), tuple(skip_dropout)
        self.max_skips = max_skips

    @staticmethod
    def prune(strengths: torch.Tensor, mask: torch.Tensor, keep: int, ops: list[str], last: bool) -> torch.Tensor:
        """The ``keep`` strongest live ops of every edge; after the last stage the zero op never stays."""
        s = strengths.masked_fill(~mask, float("-inf"))
        if last and "none" in ops:
            s[:, ops.index("none")] = float("-inf")
        kept = torch.zeros_like(mask).scatter_(1, s.topk(keep, dim=-1).indices, True)
        return kept & mask

    def final_cell(self, strengths: torch.Tensor, ops: list[str], nodes: int, limit_skips: bool) -> list:
        """Top-2 edges per node by their strongest op of those the last stage searched (none left out); with
        ``limit_skips``, while more than ``max_skips`` skips are chosen, the weakest chosen skip is struck and
        its edge competes with its next op, as the P-DARTS code does (chenxin061/pdarts train_search.py)."""
        s = strengths.clone()
        while True:
            edges, chosen, start = [], [], 0
            for node in range(2, 2 + nodes):
                for op, j in TopK(k=2)(s[start : start + node], ops):
                    edges.append((op, j))
                    chosen.append(start + j)
                start += node
            skips = [e for (op, _), e in zip(edges, chosen) if op == "skip_connect"]
            if not limit_skips or len(skips) <= self.max_skips:
                return edges
            weakest = min(skips, key=lambda e: s[e, ops.index("skip_connect")].item())
            s[weakest, ops.index("skip_connect")] = 0.0


class ProgressiveSearch:
    """A search run as P-DARTS stages; the same interface as ``Search`` (``load_checkpoint``, ``run``)."""

    def __init__(self, config: SearchConfig, run_dir, method):
        if method.part("edge") != "sum":
            raise ValueError(f"the progressive schedule adds skip dropout to the plain DARTS edge ('sum'); "
                             f"recipe {method.name} sets edge {method.part('edge')!r}")
        self.config, self.run_dir, self.method = config, Path(run_dir).expanduser(), method
        self.schedule = method.build("schedule")
        self.ops = list(check_ops(config.space_options.get("ops", DARTS_OPS)))  # before the run's files are made

    def load_checkpoint(self) -> None:
        """Nothing to load here: each stage resumes from its own checkpoint when ``run`` reaches it."""
        if not (self.run_dir / "stage-1").is_dir():
            raise FileNotFoundError(f"{self.run_dir} has no stage-1/: the run has not started, start it anew")

    def resumable(self) -> bool:
        return (self.run_dir / "stage-1" / "checkpoint.pt").is_file()

    @checkpoint.guarded_run("search")
    def run(self, progress: bool = True) -> SearchResult:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.json").write_text(json.dumps(
            {"config": dataclasses.asdict(self.config), "method": dataclasses.asdict(self.method)}, indent=1) + "\n")
        schedule, stages = self.schedule, len(self.schedule.layers)
        mask, masks, metrics, alphas = None, [], [], []
        for k in range(stages):
            say(f"P-DARTS stage {k + 1}/{stages}: {schedule.layers[k]} cells, "
                f"skip dropout {schedule.skip_dropout[k]}")
            stage_dir = self.run_dir / f"stage-{k + 1}"
            self._run_stage(stage_dir, k, mask, progress)
            lines = read_jsonl(stage_dir / "alphas.jsonl")
            offset = len(metrics)
            metrics += [{**m, "stage": k + 1, "stage_epoch": m["epoch"], "epoch": offset + m["epoch"]}
                        for m in read_jsonl(stage_dir / "metrics.jsonl")]
            alphas += [{**a, "stage": k + 1, "epoch": offset + a["epoch"]} for a in lines]
            strengths = {t: torch.tensor(s) for t, s in lines[-1]["strengths"].items()}
            current = {t: torch.ones_like(s, dtype=torch.bool) if mask is None else torch.tensor(mask[t])
                       for t, s in strengths.items()}
            mask = {t: schedule.prune(strengths[t], current[t], schedule.keep[k], self.ops, k == stages - 1).tolist()
                    for t in CELL_TYPES}
            masks.append({"stage": k + 1, "cells": schedule.layers[k], "ops_kept_after": schedule.keep[k],
                          "op_mask": mask})
        nodes = self.config.space_options.get("nodes", 4)
        searched = {t: strengths[t] * current[t] for t in CELL_TYPES}  # the last stage's ops, none left out
        if "none" in self.ops:
            for s in searched.values():
                s[:, self.ops.index("none")] = 0.0
        cells = {t: schedule.final_cell(searched[t], self.ops, nodes, t == "normal") for t in CELL_TYPES}
        concat = list(range(2, 2 + nodes))
        genotype = Genotype(normal=cells["normal"], normal_concat=concat, reduce=cells["reduce"], reduce_concat=concat)
        write_jsonl(self.run_dir / "metrics.jsonl", metrics)
        write_jsonl(self.run_dir / "alphas.jsonl", alphas)
        (self.run_dir / "stages.json").write_text(json.dumps(masks) + "\n")
        genotype.save(self.run_dir / "genotype.txt")
        genotype.save(self.run_dir / "genotype.json")
        return SearchResult(genotype, self.run_dir, metrics)

    def _run_stage(self, stage_dir: Path, k: int, mask: dict[str, Any] | None, progress: bool) -> None:
        """Run (or finish, or skip if done) stage ``k`` as an ordinary search in ``stage_dir``."""
        if (stage_dir / "genotype.json").exists():
            return
        schedule = self.schedule
        method = dataclasses.replace(self.method, parts={
            **self.method.parts, "schedule": None,
            "edge": {"name": "skip_dropout", "rate": schedule.skip_dropout[k],
                     "warmup": self.config.arch_warmup_epochs}})
        options = {**self.config.space_options, "layers": schedule.layers[k], **({"op_mask": mask} if mask else {})}
        search = Search(dataclasses.replace(self.config, space_options=options), stage_dir, method)
        if (stage_dir / "checkpoint.pt").exists():
            search.load_checkpoint()
        else:
            shutil.rmtree(stage_dir, ignore_errors=True)  # a stage stopped before its first checkpoint
        search.run(progress)
