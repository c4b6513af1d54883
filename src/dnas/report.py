"""Inspecting a search: a run directory read into plain data, and what is drawn from it, the report (HTML and
Markdown), the animation of the derived cells over the epochs, and the TensorBoard log.

    run = load_run("runs/<run>")                 # settings, metrics and alphas per epoch, genotypes
    write_report(["runs/<run>"])                 # runs/<run>/report.html and report.md
    write_report(["runs/a", "runs/b"], "cmp.html")   # several runs: curves overlaid, cells side by side
    animate("runs/<run>")                        # runs/<run>/cells.gif, one frame per epoch

The HTML report holds everything in one file (figures inlined as PNG data, no script, no server); the Markdown
report links the same figures, written to ``<report>_files/`` beside it. Curves and heat maps are drawn by
matplotlib (without pyplot, so no global backend is touched), cells by Graphviz's ``dot`` through ``viz``.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from tqdm.auto import tqdm

from .bench.nb201 import DATASETS as NB201_DATASETS
from .cost import Cost, cost
from .data import IMAGE_SHAPES
from .genotype import Genotype
from .search import format_seconds, read_jsonl
from .settings import bars_off, say, warn
from .spaces.darts_network import NetworkCIFAR
from .viz import DOTS, GraphvizNotFound, draw
from .zoo import genotype_class


class RunError(ValueError):
    """A path that is not a search run directory, or an epoch the run does not have."""


class TensorBoardNotFound(ModuleNotFoundError):
    """The optional tensorboard package is not installed."""


# -- a run directory as data ------------------------------------------------------------------------------
def parse_genotype(text: str):
    """A genotype from its text form: a NAS-Bench-201 arch string (``|op~0|+...``), the DARTS recurrent cell's
    ``Genotype(recurrent=...)`` or the DARTS convolutional cell's ``Genotype(normal=...)``."""
    return genotype_class(text).parse(text.strip())


@dataclass
class SearchRun:
    """What ``dnas search`` wrote to a run directory: ``config`` (the SearchConfig fields), ``method`` (the
    recipe), and one ``metrics`` and one ``alphas`` line per completed epoch."""

    path: Path
    config: dict[str, Any]
    method: dict[str, Any]
    metrics: list[dict[str, Any]]
    alphas: list[dict[str, Any]]
    data: dict[str, Any] | None = None  # what the search read of its data (config.json's "data"; older runs none)

    @property
    def images(self) -> tuple[int, int, int, int]:
        """(channels, height, width, classes) of the images the run searched on."""
        return images_of(self.config["dataset"], self.data)

    @property
    def name(self) -> str:
        return self.path.resolve().name

    @property
    def space(self) -> str:
        return self.config.get("space") or self.method.get("parts", {}).get("space", "darts")

    @property
    def epochs(self) -> int:
        """Epochs completed."""
        return len(self.metrics)

    @property
    def planned_epochs(self) -> int:
        """Epochs the search was set to run: a progressive (P-DARTS) search runs ``epochs`` per stage."""
        from .methods import Method

        schedule = Method(**self.method).build("schedule")
        return self.config["epochs"] * (len(schedule.layers) if schedule is not None else 1)

    @property
    def finished(self) -> bool:
        return (self.path / "genotype.txt").is_file()

    @property
    def stopped(self) -> dict[str, Any] | None:
        """``{"reason", "genotype_epoch"}`` where a stopping rule ended the run early."""
        return next((m["stopped"] for m in self.metrics if "stopped" in m), None)

    def genotype(self, epoch: int | None = None):
        """The genotype derived at ``epoch`` (1-based); None: the run's result (genotype.txt, or the last
        epoch's while the run is unfinished)."""
        if epoch is None:
            if self.finished:
                return parse_genotype((self.path / "genotype.txt").read_text())
            epoch = self.epochs
        if not 1 <= epoch <= self.epochs:
            raise RunError(f"{self.path} has epochs 1..{self.epochs}; there is no epoch {epoch}")
        return parse_genotype(self.metrics[epoch - 1]["genotype"])

    def rows(self, progress: bool = False) -> list[dict[str, Any]]:
        """The metrics lines, each with the cost of its derived network (``params_M``, ``mult_adds_M``) added
        where the space has one."""
        genotypes = sorted({m["genotype"] for m in self.metrics})
        for g in tqdm(genotypes, desc=f"cost of the derived networks of {self.name}", unit="genotype",
                      disable=bars_off(progress), leave=False):
            derived_cost(g, self.images)
        return [{**m, **cost_fields(derived_cost(m["genotype"], self.images))} for m in self.metrics]


def load_run(path: str | os.PathLike) -> SearchRun:
    """Read a search run directory (config.json, metrics.jsonl, alphas.jsonl), checking that it is one."""
    path = Path(path).expanduser()
    expected = "a search run directory holds config.json and metrics.jsonl, as `dnas search` writes them"
    if not path.is_dir():
        raise RunError(f"{path} is not a directory; {expected}")
    try:
        saved = json.loads((path / "config.json").read_text()) if (path / "config.json").is_file() else {}
    except json.JSONDecodeError as e:
        raise RunError(f"{path / 'config.json'} is not valid JSON ({e})") from None
    if "genotype" in saved:
        raise RunError(f"{path} is a training run (dnas train), not a search run; {expected}")
    if not {"config", "method"} <= set(saved):
        raise RunError(f"{path} is not a dnas search run: {expected}")
    metrics = read_jsonl(path / "metrics.jsonl")
    if not metrics:
        raise RunError(f"{path} has not completed an epoch yet (metrics.jsonl is missing or empty)")
    return SearchRun(path, saved["config"], saved["method"], metrics, read_jsonl(path / "alphas.jsonl"),
                     saved.get("data"))


# -- the cost of a derived network -------------------------------------------------------------------------
#: (channels, image side, classes) of the data sets the derived network is measured on; others: CIFAR-10's
COST_NETWORK = "the DARTS CIFAR network (20 cells, 36 channels, no auxiliary head)"


def images_of(dataset: str, data: dict[str, Any] | None) -> tuple[int, int, int, int]:
    """(channels, height, width, classes) of a run's images: what it recorded of its data, else those of a
    data set of known shape, else CIFAR-10's."""
    if data and "image_size" in data:
        return data["channels"], *data["image_size"], data["num_classes"]
    channels, side, classes = IMAGE_SHAPES.get(dataset, IMAGE_SHAPES["cifar10"])
    return channels, side, side, classes


@cache
def derived_cost(genotype: str, images: tuple[int, int, int, int]) -> Cost | None:
    """Params and mult-adds of the network a DARTS genotype (text form) is evaluated as, on ``images``
    (channels, height, width, classes: ``images_of``); None for a genotype of another space. The network is
    built on the meta device: shapes only, no weights initialised and no arithmetic done, so counting costs a
    fraction of a second."""
    g = parse_genotype(genotype)
    if not isinstance(g, Genotype):
        return None
    channels, height, width, classes = images
    with torch.device("meta"):
        network = NetworkCIFAR(g, num_classes=classes, in_channels=channels, auxiliary=False)
    return cost(network, (channels, height, width))


def cost_fields(c: Cost | None) -> dict[str, float]:
    return {} if c is None else {"params_M": c.params / 1e6, "mult_adds_M": c.mult_adds / 1e6}


# -- figures -----------------------------------------------------------------------------------------------
def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


#: the line figures: name -> panels, each (title, [(metrics key, series label)])
LINE_FIGURES = {
    "curves": [("loss", [("train_loss", "train"), ("val_loss", "val")]),
               ("accuracy", [("train_acc", "train"), ("val_acc", "val")]),
               ("perplexity", [("train_ppl", "train"), ("val_ppl", "val")]),
               ("learning rate", [("lr", "lr")])],
    "derived-cell": [("skip connections, normal cell", [("skip_connect_normal", "skip")]),
                     ("parameter-free ops, normal cell", [("parameter_free_normal", "parameter-free")])],
    "nb201": [(f"NAS-Bench-201 {d} test accuracy (%)", [(f"nb201_{d}", d)]) for d in NB201_DATASETS],
    "cost": [("params (M)", [("params_M", "params")]), ("mult-adds per image (M)", [("mult_adds_M", "mult-adds")])],
}


def line_figure(runs: list[tuple[str, list[dict[str, Any]]]], panels) -> bytes | None:
    """One panel per entry of ``panels`` that some run has data for, value over epochs, runs overlaid (one
    colour per run, one line style per series); None when no run has any."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    panels = [p for p in panels if any(key in r for _, rows in runs for r in rows for key, _ in p[1])]
    if not panels:
        return None
    fig = Figure(figsize=(4.5 * len(panels), 3.4), layout="constrained")
    for ax, (title, series) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        counts = True
        for color, (name, rows) in enumerate(runs):
            for style, (key, label) in zip(("-", "--", ":"), series):
                points = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
                counts = counts and all(isinstance(v, int) for _, v in points)
                if points:
                    ax.plot(*zip(*points), style, color=f"C{color}", marker="o" if len(points) <= 30 else None,
                            markersize=3, label=f"{name} {label}" if len(runs) > 1 else label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if counts:  # skip connections and the like: whole numbers, from none
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylim(bottom=-0.1)
        ax.grid(alpha=0.3)
        if len(runs) > 1 or len(series) > 1:
            ax.legend(fontsize=7)
    return _png(fig)


def edge_layout(group: str, edges: int) -> list[tuple[int, int, str]]:
    """Where each edge of a group of alphas goes in a grid (row, column) and its name: DARTS cells ("normal",
    "reduce") a row per node, a column per input; the NAS-Bench-201 and recurrent cells (every node takes every
    earlier node) likewise; other groups in reading order."""
    darts_nodes = (math.isqrt(9 + 8 * edges) - 3) // 2  # n(n+3)/2 edges
    nb201_nodes = (1 + math.isqrt(1 + 8 * edges)) // 2  # n(n-1)/2 edges
    if group in ("normal", "reduce") and darts_nodes * (darts_nodes + 3) // 2 == edges:
        source = ["c_{k-2}", "c_{k-1}"] + [f"node {j}" for j in range(darts_nodes)]
        return [(i, j, f"{source[j]} -> node {i}") for i in range(darts_nodes) for j in range(2 + i)]
    if group in ("cell", "recurrent") and nb201_nodes * (nb201_nodes - 1) // 2 == edges:
        return [(i - 1, j, f"node {j} -> node {i}") for i in range(1, nb201_nodes) for j in range(i)]
    cols = math.ceil(math.sqrt(edges))
    return [(e // cols, e % cols, f"edge {e}") for e in range(edges)]


def strength_figure(run: SearchRun, group: str, label: str) -> bytes:
    """Heat maps of the op strengths (the softmax weights, for DARTS) of every edge of one group over the
    epochs: a panel per edge, ops by epochs, laid out node by node, one colour scale from the group's least to
    its greatest strength (early in a search they all are near 1/ops)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    ops = run.alphas[0]["ops"]
    epochs = [a["epoch"] for a in run.alphas]
    s = np.array([a["strengths"][group] for a in run.alphas])  # epochs x edges x ops
    layout = edge_layout(group, s.shape[1])
    rows, cols = max(r for r, _, _ in layout) + 1, max(c for _, c, _ in layout) + 1
    fig = Figure(figsize=(1.6 + 2.3 * cols, 0.8 + (0.6 + 0.16 * len(ops)) * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True, sharey=True)
    for ax in axes.flat:
        ax.set_visible(False)
    extent = (epochs[0] - 0.5, epochs[-1] + 0.5, len(ops) - 0.5, -0.5)
    for e, (r, c, title) in enumerate(layout):
        ax = axes[r, c]
        ax.set_visible(True)
        image = ax.imshow(s[:, e].T, aspect="auto", cmap="viridis", vmin=s.min(), vmax=s.max(), extent=extent,
                          interpolation="nearest")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title, fontsize=8)
        ax.set_yticks(range(len(ops)), ops, fontsize=7)
        ax.tick_params(axis="x", labelsize=7)
    fig.colorbar(image, ax=axes, shrink=0.8, label="op strength")
    fig.suptitle(f"{label}: {group} — op strengths of every edge over the epochs", fontsize=10)
    return _png(fig)


def snapshot_figure(strengths: dict[str, list[list[float]]], ops: list[str]) -> bytes:
    """The op strengths of one epoch, a heat map (edges x ops) per group: TensorBoard's view of the alphas."""
    from matplotlib.figure import Figure

    groups = list(strengths)
    edges = max(len(s) for s in strengths.values())
    fig = Figure(figsize=(1.5 + 3.2 * len(groups), 1.2 + 0.28 * edges), layout="constrained")
    for ax, group in zip(fig.subplots(1, len(groups), squeeze=False)[0], groups):
        s = np.array(strengths[group])
        image = ax.imshow(s, cmap="viridis", vmin=s.min(), vmax=s.max(), interpolation="nearest")
        ax.set_title(group, fontsize=9)
        ax.set_xticks(range(len(ops)), ops, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(s)), [t for *_, t in edge_layout(group, len(s))], fontsize=7)
        fig.colorbar(image, ax=ax, shrink=0.8)
    return _png(fig)


def cell_picture(genotype) -> bytes | None:
    """The cells as a PNG, drawn by ``dot``; None for a genotype ``viz`` has no picture of."""
    if type(genotype) not in DOTS:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        return draw(genotype, Path(tmp) / "cells.png").read_bytes()


# -- the report as a document ------------------------------------------------------------------------------
@dataclass
class Picture:
    name: str  # file name stem, unique in the report
    png: bytes
    caption: str


@dataclass
class Block:
    """A paragraph ("text"), a preformatted genotype ("code"), a table ("table": ``content`` is (header,
    rows)), or pictures side by side ("pictures": ``content`` is a list of Picture)."""

    kind: str
    content: Any


def run_labels(runs: list[SearchRun]) -> list[str]:
    """Names telling the runs apart: their directories' names, with the parent's where two share one."""
    for label in (lambda p: p.name, lambda p: f"{p.parent.name}/{p.name}", str):
        labels = [label(run.path.resolve()) for run in runs]
        if len(set(labels)) == len(labels):
            return labels
    return labels  # the same run given twice


def _config_rows(runs: list[SearchRun], labels: list[str]) -> tuple[list[str], list[list[str]]]:
    flat = []
    for run in runs:
        c = {k: v for k, v in run.config.items() if k != "space_options"} | {"space": run.space}  # None: the method's
        c |= {f"space_options.{k}": v for k, v in run.config.get("space_options", {}).items()}
        c |= {f"parts.{k}": v for k, v in run.method.get("parts", {}).items() if k != "space"}  # the recipe's default
        flat.append({k: json.dumps(v) if isinstance(v, (dict, list)) else str(v) for k, v in c.items()})
    keys = list(dict.fromkeys(k for c in flat for k in c))
    return ["setting", *labels], [[k, *[c.get(k, "") for c in flat]] for k in keys]


def _status(run: SearchRun) -> str:
    if run.stopped:
        return (f"stopped after epoch {run.epochs} ({run.stopped['reason']}); the genotype is the one derived at "
                f"epoch {run.stopped['genotype_epoch']}")
    return "finished" if run.finished else "unfinished (no genotype.txt yet): the genotype is the last epoch's"


def build_report(runs: list[SearchRun], progress: bool = True) -> list[tuple[str, list[Block]]]:
    """The report's sections, (title, blocks), for one run or several compared."""
    many = len(runs) > 1
    labels = run_labels(runs)
    rows = [(label, run.rows(progress)) for label, run in zip(labels, runs)]
    sections = []

    header, config = _config_rows(runs, labels)
    blocks = [Block("table", (["run", "method", "space", "dataset", "epochs", "status", "search time"], [
        [label, run.method.get("name", run.config["method"]), run.space, run.config["dataset"],
         f"{run.epochs} of {run.planned_epochs}", _status(run),
         format_seconds(sum(m.get("seconds", 0) for m in run.metrics))] for label, run in zip(labels, runs)]))]
    if many:
        differ = [r for r in config if len(set(r[1:])) > 1] or [["(none)"] + [""] * len(runs)]
        blocks += [Block("text", "Settings that differ:"), Block("table", (header, differ)),
                   Block("text", "All settings:")]
    sections.append(("Runs", blocks + [Block("table", (header, config))]))

    blocks, pictures = [], []
    for i, (label, run) in enumerate(zip(labels, runs)):
        genotype = run.genotype()
        if many:
            blocks.append(Block("text", f"{label}:"))
        blocks.append(Block("code", str(genotype)))
        try:
            png = cell_picture(genotype)
        except GraphvizNotFound as e:
            blocks.append(Block("text", f"Cells not drawn: {e}"))
            continue
        if png is not None:
            pictures.append(Picture(f"cells-{i}", png, f"{label}: the final cells"))
    if pictures:
        blocks.append(Block("pictures", pictures))
    sections.append(("Final genotype", blocks))

    def lines(name, caption):
        png = line_figure(rows, LINE_FIGURES[name])
        return [Block("pictures", [Picture(name, png, caption)])] if png else []

    sections.append(("Training curves", lines("curves", "search-train and search-val loss and accuracy (or "
                                                        "perplexity), learning rate")))
    cell = lines("derived-cell", "the cell derived after each epoch: skip connections and parameter-free ops "
                                 "(a rising count is the sign of the DARTS collapse)")
    if cell:
        sections.append(("Derived cell per epoch", cell))
    if any(f"nb201_{NB201_DATASETS[0]}" in r for _, rs in rows for r in rs):
        truth = [[label, *[str(rs[-1].get(f"nb201_{d}", "")) for d in NB201_DATASETS]] for label, rs in rows]
        sections.append(("NAS-Bench-201 ground truth", [
            Block("text", "The benchmark's test accuracy (%, 200 epochs, mean over its seeds) of the cell derived "
                          "after each epoch; the table is the last epoch's."),
            Block("table", (["run", *NB201_DATASETS], truth)),
            *lines("nb201", "true test accuracy of the derived cell per epoch")]))
    costed = [(label, derived_cost(str(run.genotype()), run.images)) for label, run in zip(labels, runs)]
    if any(c for _, c in costed):
        sections.append(("Cost of the derived network", [
            Block("text", f"Measured as {COST_NETWORK}, on the images the run searched on (CIFAR-10's where its "
                          f"config.json does not say)."),
            Block("table", (["run", "params", "mult-adds per image"], [
                [label, f"{c.params / 1e6:.3f}M ({c.params:,})", f"{c.mult_adds / 1e6:.1f}M ({c.mult_adds:,})"]
                for label, c in costed if c])),
            *lines("cost", "cost of the network derived after each epoch")]))

    heat = []
    for i, (label, run) in enumerate(tqdm(list(zip(labels, runs)), desc="alpha heat maps", unit="run",
                                          disable=bars_off(progress), leave=False)):
        for group in run.alphas[0]["strengths"] if run.alphas else ():
            heat.append(Block("pictures", [Picture(f"alphas-{i}-{group}", strength_figure(run, group, label),
                                                   f"{label}: op strengths of the {group} edges per epoch")]))
    if heat:
        sections.append(("Alpha evolution", [Block("text", "Each panel is one edge: its ops (rows) over the epochs "
                                                           "(columns), coloured by the op's strength."), *heat]))
    return sections


STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1400px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0;font-size:90%}td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}
pre{background:#f6f6f6;padding:.6em;white-space:pre-wrap;word-break:break-all}
.pictures{display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start}figure{margin:0}
img{max-width:100%;border:1px solid #eee}figcaption{font-size:85%;color:#555}"""


def render_html(title: str, sections: list[tuple[str, list[Block]]]) -> str:
    """One self-contained HTML page: figures inlined as PNG data, no script."""
    e = html.escape
    out = [f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>'
           f"<style>{STYLE}</style></head><body><h1>{e(title)}</h1>"]
    for heading, blocks in sections:
        out.append(f"<h2>{e(heading)}</h2>")
        for b in blocks:
            if b.kind == "text":
                out.append(f"<p>{e(b.content)}</p>")
            elif b.kind == "code":
                out.append(f'<pre class="genotype">{e(b.content)}</pre>')
            elif b.kind == "table":
                head, rows = b.content
                out.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>"
                           + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows)
                           + "</table>")
            else:
                out.append('<div class="pictures">' + "".join(
                    f'<figure><img src="data:image/png;base64,{base64.b64encode(p.png).decode()}" alt="{e(p.name)}">'
                    f"<figcaption>{e(p.caption)}</figcaption></figure>" for p in b.content) + "</div>")
    return "\n".join(out + ["</body></html>\n"])


def render_markdown(title: str, sections: list[tuple[str, list[Block]]], figures: str) -> str:
    """The same report in Markdown, the pictures linked as ``figures/<name>.png``."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    out = [f"# {title}"]
    for heading, blocks in sections:
        out.append(f"## {heading}")
        for b in blocks:
            if b.kind == "text":
                out.append(b.content)
            elif b.kind == "code":
                out.append(f"```\n{b.content}\n```")
            elif b.kind == "table":
                head, rows = b.content
                out.append("\n".join("| " + " | ".join(map(cell, r)) + " |"
                                     for r in [head, ["---"] * len(head), *rows]))
            else:
                out.append("\n".join(f"![{p.caption}]({figures}/{p.name}.png)" for p in b.content))
    return "\n\n".join(out) + "\n"


def write_report(runs: list[str | os.PathLike | SearchRun], output: str | os.PathLike | None = None,
                 progress: bool = True) -> Path:
    """Write the report of one run (default ``<run>/report.html``) or of several compared (default
    ``./report.html``), with ``report.md`` and its figures (``report_files/``) beside; return the HTML's path.
    A run given twice is reported once."""
    runs = [r if isinstance(r, SearchRun) else load_run(r) for r in runs]
    unique: dict[Path, SearchRun] = {}
    for r in runs:
        unique.setdefault(r.path.resolve(), r)
    if len(unique) < len(runs):
        warn(f"{len(runs) - len(unique)} run(s) given more than once; each is reported once")
        runs = list(unique.values())
    if not runs:
        raise RunError("give at least one search run directory")
    default = runs[0].path / "report.html" if len(runs) == 1 else Path("report.html")
    output = Path(output).expanduser() if output else default
    if output.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"{output}: the report is HTML; give a path ending in .html (report.md goes beside it)")
    sections = build_report(runs, progress)
    title = f"dnas search: {runs[0].name}" if len(runs) == 1 else f"dnas: {len(runs)} searches compared"
    figures = output.with_name(output.stem + "_files")
    figures.mkdir(parents=True, exist_ok=True)
    for _, blocks in sections:
        for b in blocks:
            for p in b.content if b.kind == "pictures" else ():
                (figures / f"{p.name}.png").write_bytes(p.png)
    output.write_text(render_html(title, sections))
    output.with_suffix(".md").write_text(render_markdown(title, sections, figures.name))
    return output


# -- the animation -----------------------------------------------------------------------------------------
def animate(run: str | os.PathLike | SearchRun, output: str | os.PathLike | None = None, frame_ms: int = 500,
            progress: bool = True) -> Path:
    """Write a GIF of the cells derived after each epoch (default ``<run>/cells.gif``): one frame per epoch,
    ``frame_ms`` each (the last held four times as long), every edge labelled with its op."""
    run = run if isinstance(run, SearchRun) else load_run(run)
    output = Path(output).expanduser() if output else run.path / "cells.gif"
    if output.suffix.lower() != ".gif":
        raise ValueError(f"{output}: the animation is a GIF; give a path ending in .gif")
    if frame_ms < 1:
        raise ValueError(f"frame_ms is the time a frame shows, in milliseconds; give at least 1, got {frame_ms}")
    pictures: dict[str, Image.Image] = {}
    for m in tqdm(run.metrics, desc="cells per epoch", unit="epoch", disable=bars_off(progress), leave=False):
        if m["genotype"] not in pictures:  # an unchanged genotype is drawn once
            png = cell_picture(parse_genotype(m["genotype"]))
            if png is None:
                raise RunError(f"{run.path}: the cells of the {run.space} space have no picture to animate; "
                               f"the DARTS and NAS-Bench-201 cells have")
            pictures[m["genotype"]] = Image.open(io.BytesIO(png)).convert("RGB")
    band = 50  # the title above the cells
    width = max(p.width for p in pictures.values())
    height = band + max(p.height for p in pictures.values())
    font = ImageFont.load_default(size=26)
    frames = []
    for m in run.metrics:
        frame = Image.new("RGB", (width, height), "white")
        frame.paste(pictures[m["genotype"]], (0, band))
        measures = "".join(f"   {label} {m[key]}" for key, label in (("skip_connect_normal", "skip connections:"),
                                                                     ("nb201_cifar10", "NAS-Bench-201 CIFAR-10:"))
                           if key in m)
        ImageDraw.Draw(frame).text((12, 10), f"{run.name}   epoch {m['epoch']} of {run.planned_epochs}{measures}",
                                   fill="black", font=font)
        frames.append(frame)
    output.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(output, save_all=True, append_images=frames[1:], loop=0,
                   duration=[frame_ms] * (len(frames) - 1) + [4 * frame_ms])
    return output


# -- TensorBoard -------------------------------------------------------------------------------------------
def _tag(key: str) -> str:
    """TensorBoard groups tags by the part before '/': losses, accuracies, benchmark truth, cost, the rest."""
    for suffix, group in (("_loss", "loss"), ("_acc", "accuracy")):
        if key.endswith(suffix):
            return f"{group}/{key.removesuffix(suffix)}"
    if key.startswith("nb201_"):
        return f"nb201/{key.removeprefix('nb201_')}"
    return f"cost/{key}" if key in ("params_M", "mult_adds_M") else f"search/{key}"


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


class TensorBoardLog:
    """A search's epochs as TensorBoard events in its run directory, so ``tensorboard --logdir runs/`` shows
    each run: its metrics and the cost of its derived network as scalars, the op strengths as a heat map and
    the derived cells as a picture, one step per epoch. ``purge_step``: the first epoch to (re)write; TensorBoard
    hides the events an interrupted run wrote from there on."""

    def __init__(self, run_dir: str | os.PathLike, images: tuple[int, int, int, int], purge_step: int | None = None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise TensorBoardNotFound("TensorBoard logging needs the tensorboard package: pip install tensorboard "
                                      "(or pip install 'dnas[tensorboard]')") from None
        self.writer = SummaryWriter(os.fspath(run_dir), purge_step=purge_step)
        self.images = images  # the derived network's cost is measured on (``images_of``)
        self.draw_cells = True  # until dot turns out to be missing

    def write(self, metrics: dict[str, Any], alphas: dict[str, Any]) -> None:
        """Log one epoch from its metrics.jsonl and alphas.jsonl lines."""
        step = metrics["epoch"]
        row = {**metrics, **cost_fields(derived_cost(metrics["genotype"], self.images))}
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(_tag(key), value, step)
        self.writer.add_image("alphas", _pixels(snapshot_figure(alphas["strengths"], alphas["ops"])), step,
                              dataformats="HWC")
        if self.draw_cells:
            try:
                png = cell_picture(parse_genotype(metrics["genotype"]))
            except GraphvizNotFound as e:  # the search goes on without pictures
                self.draw_cells, png = False, None
                say(f"tensorboard: cells not drawn: {e}")
            if png is not None:
                self.writer.add_image("cells", _pixels(png), step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def write_tensorboard(run: str | os.PathLike | SearchRun, progress: bool = True) -> Path:
    """Log a finished (or interrupted) run to TensorBoard after the fact, replacing events it has; returns the
    run directory, TensorBoard's log directory."""
    run = run if isinstance(run, SearchRun) else load_run(run)
    log = TensorBoardLog(run.path, run.images, purge_step=1)
    for metrics, alphas in tqdm(list(zip(run.metrics, run.alphas)), desc="tensorboard", unit="epoch",
                                disable=bars_off(progress), leave=False):
        log.write(metrics, alphas)
    log.close()
    return run.path
