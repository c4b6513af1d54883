"""Looking at a search: the report (HTML, Markdown) of real tiny searches on Fashion-MNIST, the cells at an epoch,
the animation, TensorBoard events, a comparison of runs, a headless browser opening the report, bad input."""
import base64
import html
import io
import json
import re
import shutil
import subprocess
import sys

import pytest
from PIL import Image

import dnas
from dnas import report
from dnas.bench import nb201
from dnas.bench.nb201 import NB201Genotype
from dnas.cli import main
from dnas.cost import cost
from dnas.ops import OPS
from dnas.spaces.darts_network import NetworkCIFAR

TINY = dict(dataset="fashion-mnist", epochs=2, subset=128, batch_size=32, progress=False)
IMAGE = re.compile(r'<img src="data:image/png;base64,([^"]+)" alt="([^"]+)">')


@pytest.fixture(scope="module")
def darts_run(fashion_mnist_root, tmp_path_factory):
    """A real DARTS search logged to TensorBoard as it runs, and its report written by `dnas report`."""
    run = tmp_path_factory.mktemp("darts") / "run"
    dnas.search(method="darts-v1", run_dir=run, layers=3, C=4, nodes=2, tensorboard=True, **TINY)
    assert main(["report", str(run), "-q"]) == 0
    return run


@pytest.fixture(scope="module")
def nb201_run(fashion_mnist_root, tmp_path_factory):
    run = tmp_path_factory.mktemp("nb201") / "run"
    dnas.search(space="nb201", method="darts-v1", run_dir=run, C=4, N=1, **TINY)
    return run


def images(page: str) -> dict[str, Image.Image]:
    """The report's inlined figures by name, decoded."""
    return {name: Image.open(io.BytesIO(base64.b64decode(data))) for data, name in IMAGE.findall(page)}


def genotypes(page: str) -> list[str]:
    return [html.unescape(g) for g in re.findall(r'<pre class="genotype">(.*?)</pre>', page, re.S)]


def assert_drawn(image: Image.Image) -> None:
    """A real picture: not tiny, and not of one colour."""
    assert image.width > 100 and image.height > 100
    low, high = image.convert("L").getextrema()
    assert low < high


def test_report_of_a_search_holds_its_settings_genotype_curves_heat_maps_and_cost(darts_run):
    page = (darts_run / "report.html").read_text()
    figures = images(page)
    assert sorted(figures) == ["alphas-0-normal", "alphas-0-reduce", "cells-0", "cost", "curves", "derived-cell"]
    for image in figures.values():
        assert_drawn(image)
    genotype = dnas.Genotype.load(darts_run / "genotype.txt")
    assert [dnas.Genotype.parse(g) for g in genotypes(page)] == [genotype]
    for setting in ("<td>fashion-mnist</td>", "<td>darts-v1</td>", "<td>first_order</td>", "<td>2 of 2</td>",
                    "<td>finished</td>", "<td>space_options.C</td>"):
        assert setting in page
    # the cost is that of the evaluation network of the genotype, counted on real weights here
    c = cost(NetworkCIFAR(genotype, num_classes=10, in_channels=1, auxiliary=False), (1, 28, 28))
    assert f"({c.params:,})" in page and f"({c.mult_adds:,})" in page
    # the Markdown report links the same figures, written beside it
    md = (darts_run / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\((report_files/[\w-]+\.png)\)", md)
    assert sorted(links) == sorted(f"report_files/{name}.png" for name in figures)
    for data, name in IMAGE.findall(page):
        assert (darts_run / "report_files" / f"{name}.png").read_bytes() == base64.b64decode(data)
    assert f"```\n{genotype}\n```" in md


def test_nb201_report_has_the_true_accuracy_of_the_derived_cell(nb201_run, tmp_path):
    path = report.write_report([nb201_run], tmp_path / "nb.html", progress=False)
    page = path.read_text()
    genotype = NB201Genotype.load(nb201_run / "genotype.txt")
    assert [NB201Genotype.parse(g) for g in genotypes(page)] == [genotype]
    truth = nb201.lookup(genotype)
    row = "<tr><td>run</td>" + "".join(f"<td>{html.escape(str(truth[d]))}</td>" for d in nb201.DATASETS)
    assert row.replace("<td>run</td>", f"<td>{nb201_run.name}</td>") in page
    figures = images(page)
    assert sorted(figures) == ["alphas-0-cell", "cells-0", "curves", "derived-cell", "nb201"]
    for image in figures.values():
        assert_drawn(image)
    assert "Cost of the derived network" not in page  # the DARTS evaluation network is not this space's
    metrics = [json.loads(line) for line in (nb201_run / "metrics.jsonl").read_text().splitlines()]
    assert all(m["nb201_cifar10"] == nb201.lookup(m["genotype"])["cifar10"] for m in metrics)


def test_show_draws_the_cells_of_an_epoch(darts_run, nb201_run, tmp_path, capsys):
    def edge_labels(svg: str) -> list[str]:
        return sorted(t for t in re.findall(r"<text[^>]*>([^<]+)</text>", svg) if t in OPS)

    lines = [json.loads(line) for line in (darts_run / "metrics.jsonl").read_text().splitlines()]
    for m in lines:
        out = tmp_path / f"e{m['epoch']}.svg"
        assert main(["show", str(darts_run), "--epoch", str(m["epoch"]), "-o", str(out)]) == 0
        g = dnas.Genotype.parse(m["genotype"])
        assert edge_labels(out.read_text()) == sorted(op for op, _ in g.normal + g.reduce)
    assert capsys.readouterr().out == "".join(f"{darts_run.name}-epoch{i}: {tmp_path}/e{i}.svg\n" for i in (1, 2))
    assert main(["show", str(nb201_run), "-o", str(tmp_path / "nb.svg")]) == 0  # the run's result
    genotype = NB201Genotype.load(nb201_run / "genotype.txt")
    assert edge_labels((tmp_path / "nb.svg").read_text()) == sorted(op for op in genotype.ops if op != "none")


@pytest.mark.parametrize("argv, message", [
    (["show", "{run}", "--epoch", "3"], "has epochs 1..2; there is no epoch 3"),
    (["show", "{run}", "--epoch", "0"], "has epochs 1..2; there is no epoch 0"),
    (["show", "DARTS_V2", "--epoch", "1"], "--epoch picks an epoch of a search run; DARTS_V2 is not"),
    (["report", "{tmp}"], "is not a dnas search run: a search run directory holds config.json and metrics.jsonl"),
    (["report", "{tmp}/nowhere"], "nowhere is not a directory"),
    (["report", "{train}"], "is a training run (dnas train), not a search run"),
    (["report", "{empty}"], "has not completed an epoch yet"),
    (["show", "{empty}"], "has not completed an epoch yet"),
    (["report", "{run}", "-o", "{tmp}/r.pdf"], "the report is HTML; give a path ending in .html"),
    (["animate", "{tmp}"], "is not a dnas search run"),
    (["animate", "{run}", "-o", "{tmp}/c.png"], "the animation is a GIF; give a path ending in .gif"),
])
def test_bad_input_says_what_is_wrong(darts_run, tmp_path, capsys, argv, message):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "config.json").write_text(json.dumps({"config": {}, "genotype": {"space": "darts"}}))
    (tmp_path / "empty").mkdir()
    shutil.copy(darts_run / "config.json", tmp_path / "empty" / "config.json")
    paths = {"run": darts_run, "tmp": tmp_path, "train": tmp_path / "train", "empty": tmp_path / "empty"}
    assert main([a.format(**paths) for a in argv]) == 2
    assert message in capsys.readouterr().err


def test_animation_has_one_frame_per_epoch(darts_run, nb201_run, tmp_path, capsys):
    assert main(["animate", str(darts_run), "-o", str(tmp_path / "cells.gif"), "--frame-ms", "300", "-q"]) == 0
    assert capsys.readouterr().out == f"animation: {tmp_path / 'cells.gif'}\n"
    for gif in (tmp_path / "cells.gif", report.animate(nb201_run, progress=False)):
        image = Image.open(gif)
        assert image.format == "GIF" and image.n_frames == 2
        frames = []
        for i in range(image.n_frames):
            image.seek(i)
            frames.append(image.convert("RGB"))
            assert_drawn(frames[-1])
        assert frames[0].tobytes() != frames[1].tobytes()  # each frame is titled with its epoch
    assert gif == nb201_run / "cells.gif"


def test_tensorboard_events_hold_the_scalars_and_images_of_every_epoch(darts_run, nb201_run):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    metrics = [json.loads(line) for line in (darts_run / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(darts_run), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    for tag, key in [("loss/train", "train_loss"), ("loss/val", "val_loss"), ("accuracy/train", "train_acc"),
                     ("accuracy/val", "val_acc"), ("search/lr", "lr"),
                     ("search/skip_connect_normal", "skip_connect_normal"),
                     ("search/parameter_free_normal", "parameter_free_normal")]:
        logged = [(e.step, e.value) for e in events.Scalars(tag)]
        assert logged == [(m["epoch"], pytest.approx(m[key])) for m in metrics]
    assert report.load_run(darts_run).images == (1, 28, 28, 10)  # what the search read, from its config.json
    params = report.derived_cost(metrics[-1]["genotype"], (1, 28, 28, 10)).params
    assert events.Scalars("cost/params_M")[-1].value == pytest.approx(params / 1e6)
    for tag in ("alphas", "cells"):
        logged = events.Images(tag)
        assert [e.step for e in logged] == [1, 2]
        assert_drawn(Image.open(io.BytesIO(logged[-1].encoded_image_string)))

    # a run searched without --tensorboard is logged after the fact
    assert not list(nb201_run.glob("events.out.tfevents.*"))
    assert main(["report", str(nb201_run), "--tensorboard", "-q"]) == 0
    events = EventAccumulator(str(nb201_run), size_guidance={"scalars": 0})
    events.Reload()
    nb201_metrics = [json.loads(line) for line in (nb201_run / "metrics.jsonl").read_text().splitlines()]
    assert [(e.step, e.value) for e in events.Scalars("nb201/cifar10")] == [
        (m["epoch"], pytest.approx(m["nb201_cifar10"])) for m in nb201_metrics]


def test_a_missing_tensorboard_says_how_to_install_it_before_any_work(fashion_mnist_root, tmp_path, monkeypatch,
                                                                      capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    run = tmp_path / "run"
    argv = ["search", "--dataset", "fashion-mnist", "--subset", "64", "--epochs", "1", "--layers", "3",
            "--init-channels", "4", "--nodes", "2", "--run-dir", str(run), "--tensorboard", "-q"]
    assert main(argv) == 2
    assert "pip install tensorboard" in capsys.readouterr().err
    assert not run.exists()


def test_several_runs_compared_in_one_report(darts_run, nb201_run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["report", str(darts_run), str(nb201_run), "-q"]) == 0
    assert capsys.readouterr().out == "report: report.html (and report.md)\n"
    page = (tmp_path / "report.html").read_text()
    assert genotypes(page) == [(darts_run / "genotype.txt").read_text().strip(),
                               (nb201_run / "genotype.txt").read_text().strip()]
    differ = page[page.index("Settings that differ"):page.index("All settings")]
    assert "<td>space_options.nodes</td>" in differ and "<td>parts.space</td>" not in page
    assert "<tr><td>space</td><td>darts</td><td>nb201</td></tr>" in differ  # the space run, not the setting None
    names = [f"{p.parent.name}/{p.name}" for p in (darts_run, nb201_run)]  # both directories are named run
    assert f"<th>setting</th><th>{names[0]}</th><th>{names[1]}</th>" in page
    figures = images(page)
    assert {"cells-0", "cells-1", "curves", "alphas-0-normal", "alphas-1-cell", "nb201", "cost"} <= set(figures)
    assert (tmp_path / "report.md").is_file() and (tmp_path / "report_files" / "cells-1.png").is_file()


def test_a_run_given_twice_is_reported_once(darts_run):
    with pytest.warns(UserWarning, match=r"1 run\(s\) given more than once; each is reported once"):
        path = report.write_report([darts_run, darts_run / ".." / darts_run.name], progress=False)
    assert path == darts_run / "report.html"  # one run's report, where one run's goes
    assert len(genotypes(path.read_text())) == 1


# -- a real browser ----------------------------------------------------------------------------------------------
# Injected at the top of <head>: records every script error and every resource that fails to load (images, in the
# capture phase), then, once the page has loaded, the images that did not decode, into an attribute of <html> that
# --dump-dom prints.
PROBE = """<script>(() => {
  const errors = [];
  window.addEventListener("error",
    e => errors.push(e.message || "failed to load " + (e.target.src || "").slice(0, 80)), true);
  window.addEventListener("load", () => {
    const images = [...document.images];
    const broken = images.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt);
    document.documentElement.setAttribute("data-probe", JSON.stringify({errors, images: images.length, broken}));
  });
})();</script>"""


def open_in_chromium(page: str, tmp_path) -> tuple[dict, list[str]]:
    """Load a page in headless Chromium: what the probe saw, and the console lines Chromium logged."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Chromium not found; apt-get install -y chromium (make system-packages installs it)")
    path = tmp_path / "probed.html"
    path.write_text(page.replace("<head>", "<head>" + PROBE, 1))
    done = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                           "--v=0", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000",
                           "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=120)
    probe = re.search(r'data-probe="([^"]*)"', done.stdout)
    assert probe, f"Chromium did not load the page: {done.stderr[-2000:]}"
    return json.loads(html.unescape(probe.group(1))), [line for line in done.stderr.splitlines() if ":CONSOLE" in line]


def test_the_report_renders_in_a_browser_without_errors(darts_run, tmp_path):
    page = (darts_run / "report.html").read_text()
    probe, console = open_in_chromium(page, tmp_path)
    assert probe == {"errors": [], "images": len(IMAGE.findall(page)), "broken": []} and console == []

    # the check catches what it is there for: a script error and an image that does not decode
    data, name = IMAGE.findall(page)[0]
    broken = page.replace(data, data[:40], 1).replace("</body>", "<script>undefinedFunction()</script></body>")
    probe, console = open_in_chromium(broken, tmp_path)
    assert probe["broken"] == [name] and len(probe["errors"]) == 2
    assert any("undefinedFunction is not defined" in e for e in probe["errors"])
    assert any("undefinedFunction" in line for line in console)


def test_a_report_of_an_unfinished_run_says_so(darts_run, tmp_path):
    unfinished = tmp_path / "unfinished"
    shutil.copytree(darts_run, unfinished, ignore=shutil.ignore_patterns("genotype.*", "report*", "events.*"))
    for name in ("metrics.jsonl", "alphas.jsonl"):  # as if interrupted in the second epoch
        lines = (unfinished / name).read_text().splitlines()
        (unfinished / name).write_text(lines[0] + "\n")
    run = report.load_run(unfinished)
    assert run.epochs == 1 and not run.finished
    assert run.genotype() == run.genotype(1) == dnas.Genotype.parse(run.metrics[0]["genotype"])
    page = report.write_report([run], progress=False).read_text()
    assert "unfinished (no genotype.txt yet)" in page and "<td>1 of 2</td>" in page
    assert genotypes(page) == [run.metrics[0]["genotype"]]
    # as a genotype to train or size, too: the cells of its last completed epoch, named so
    assert dnas.load_genotype(unfinished) == (run.genotype(1), "unfinished-epoch1")
