"""End-to-end searches on real data, as a user runs them: run directory, resume, reproducibility, errors."""
import importlib
import copy
import json
import resource
import sys
import warnings
from pathlib import Path

import pytest
import numpy as np
import torch

import dnas
from dnas.checkpoint import CheckpointError
from dnas.data import DataError
from dnas.cli import main
from dnas.methods import get_method
from dnas.search import HEAP_BLOCK_MAX, Search, SearchConfig, copies, copy_into, fast_settings

# a reduced supernet that runs in seconds on 2 CPU cores; the full-size defaults are pinned in test_space.py
TINY = dict(C=4, layers=3, nodes=2, batch_size=16, subset=128, progress=False)


def test_first_order_search_on_fashion_mnist_writes_a_readable_run(fashion_mnist_root, tmp_path):
    result = dnas.search(method="darts-v1", dataset="fashion-mnist", epochs=2, run_dir=tmp_path / "run", **TINY)

    run = tmp_path / "run"
    assert result.run_dir == run
    assert sorted(p.name for p in run.iterdir()) == [  # .lock: locked by a process running there
        ".lock", "alphas.jsonl", "checkpoint.pt", "config.json", "genotype.json", "genotype.txt", "metrics.jsonl"]
    assert dnas.Genotype.load(run / "genotype.txt") == result.genotype == dnas.Genotype.load(run / "genotype.json")
    assert result.genotype.nodes == 2 and result.genotype.normal_concat == (2, 3)

    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2] and metrics == result.metrics
    assert metrics[0]["lr"] == pytest.approx(0.025)  # cosine from the paper's 0.025 ...
    assert metrics[1]["lr"] == pytest.approx(0.001 + 0.5 * (0.025 - 0.001)
                                             * (1 + torch.cos(torch.tensor(torch.pi / 2)).item()))
    for m in metrics:
        assert 0 <= m["train_acc"] <= 1 and 0 <= m["val_acc"] <= 1 and m["train_loss"] > 0
        assert dnas.Genotype.parse(m["genotype"]).nodes == 2
    assert metrics[-1]["genotype"] == str(result.genotype)

    alphas = [json.loads(line) for line in (run / "alphas.jsonl").read_text().splitlines()]
    assert len(alphas) == 2 and alphas[0]["ops"][0] == "none"
    assert torch.tensor(alphas[-1]["alphas"]["normal"]).shape == (5, 8)
    assert torch.tensor(alphas[-1]["strengths"]["reduce"]).sum(-1).allclose(torch.ones(5))
    assert alphas[0]["alphas"] != alphas[1]["alphas"]  # the architecture moved

    config = json.loads((run / "config.json").read_text())
    assert config["config"]["dataset"] == "fashion-mnist" and config["method"]["parts"]["arch_grad"] == "first_order"


def test_second_order_search_runs_and_updates_alphas_differently(fashion_mnist_root, tmp_path):
    first = dnas.search(method="darts-v1", dataset="fashion-mnist", epochs=1, run_dir=tmp_path / "v1", **TINY)
    second = dnas.search(method="darts-v2", dataset="fashion-mnist", epochs=1, run_dir=tmp_path / "v2", **TINY)
    a1 = json.loads((first.run_dir / "alphas.jsonl").read_text())["alphas"]["normal"]
    a2 = json.loads((second.run_dir / "alphas.jsonl").read_text())["alphas"]["normal"]
    assert a1 != a2  # same seed, same data: only the architecture gradient differs


def test_same_seed_same_result_on_cpu(fashion_mnist_root, tmp_path):
    runs = [dnas.search(method="darts-v1", dataset="fashion-mnist", epochs=1, run_dir=tmp_path / str(i), **TINY)
            for i in range(2)]
    lines = [(r.run_dir / "alphas.jsonl").read_text() for r in runs]
    assert lines[0] == lines[1]
    other = dnas.search(method="darts-v1", dataset="fashion-mnist", epochs=1, run_dir=tmp_path / "o", seed=3, **TINY)
    assert (other.run_dir / "alphas.jsonl").read_text() != lines[0]


def interrupted_in_epoch_2(run_dir: Path, monkeypatch, method: str) -> Path:
    """``run_dir``, a 2-epoch search of ``method`` stopped by Ctrl-C in the middle of its second epoch."""
    calls = {"n": 0}
    original = Search.train_epoch

    def interrupted(self, progress):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, progress)

    with monkeypatch.context() as patched, pytest.raises(KeyboardInterrupt):
        patched.setattr(Search, "train_epoch", interrupted)
        dnas.search(method=method, dataset="fashion-mnist", epochs=2, run_dir=run_dir, **TINY)
    return run_dir


@pytest.mark.slow
def test_resume_after_an_interruption_ends_where_an_uninterrupted_run_ends(fashion_mnist_root, tmp_path, monkeypatch,
                                                                           capsys):
    whole = dnas.search(method="darts-v2", dataset="fashion-mnist", epochs=2, run_dir=tmp_path / "whole", **TINY)
    cut = interrupted_in_epoch_2(tmp_path / "cut", monkeypatch, "darts-v2")
    assert (f"the last completed epoch is checkpointed: continue with `dnas search --resume {cut}`"
            in capsys.readouterr().err)
    assert not (tmp_path / "cut" / "genotype.txt").exists()
    assert len((tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()) == 1
    with open(cut / "metrics.jsonl", "a") as f:  # and a line cut short: the run stopped while appending it
        f.write('{"epoch": 2, "train_lo')

    resumed = dnas.search(resume=tmp_path / "cut", progress=False)
    assert "resumed after epoch 1 of 2," in capsys.readouterr().out
    assert resumed.genotype == whole.genotype
    assert (resumed.run_dir / "alphas.jsonl").read_text() == (whole.run_dir / "alphas.jsonl").read_text()
    strip = lambda ms: [{k: v for k, v in m.items() if k != "seconds"} for m in ms]
    assert strip(resumed.metrics) == strip(whole.metrics)
    a = torch.load(whole.run_dir / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(resumed.run_dir / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_keeps_its_data_folder_absolute_and_resumes_from_where_it_moved(fashion_mnist_root, tmp_path,
                                                                              monkeypatch):
    import shutil

    shutil.copytree(fashion_mnist_root, tmp_path / "data" / "fmnist")
    monkeypatch.chdir(tmp_path / "data")
    dnas.search(method="darts-v1", dataset="fashion-mnist", data="fmnist", epochs=1, run_dir=tmp_path / "r", **TINY)
    config = json.loads((tmp_path / "r" / "config.json").read_text())["config"]
    assert config["data"] == str(tmp_path / "data" / "fmnist")
    (tmp_path / "data" / "fmnist").rename(tmp_path / "moved")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        dnas.search(resume=tmp_path / "r", progress=False)
    result = dnas.search(resume=tmp_path / "r", data="moved", progress=False)  # where the data is now
    assert json.loads((tmp_path / "r" / "config.json").read_text())["config"]["data"] == str(tmp_path / "moved")
    assert len(result.metrics) == 1


def test_images_the_supernet_cannot_halve_twice_are_refused_before_any_file(tmp_path):
    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.zeros((30, 40), np.uint8)).save(tmp_path / "imgs" / c / f"{i}.png")
    with pytest.raises(ValueError, match=r"halves the images' sides 2 times, each an even side: 30x40 images do not "
                                         r"fit; crop or resize them to sides that are multiples of 4"):
        dnas.search(dataset="image-folder", data=tmp_path / "imgs", run_dir=tmp_path / "r", **{**TINY, "subset": None})
    assert not (tmp_path / "r").exists()


def test_resume_without_the_alphas_file_goes_on_and_warns(fashion_mnist_root, tmp_path, monkeypatch):
    """A deleted alphas.jsonl: the resumed run appends what it does, saying what is missing."""
    cut = interrupted_in_epoch_2(tmp_path / "cut", monkeypatch, "darts-v1")
    (cut / "alphas.jsonl").unlink()
    with pytest.warns(UserWarning, match=r"alphas.jsonl holds 0 of the 1 epochs done before the checkpoint \(deleted "
                                         r"or edited\?\): the resumed run appends epoch 2 on"):
        dnas.search(resume=cut, progress=False)
    assert [line["epoch"] for line in map(json.loads, (cut / "alphas.jsonl").read_text().splitlines())] == [2]


@pytest.mark.slow
def test_the_evaluations_batch_size_and_frequency_leave_the_search_as_it_is(fashion_mnist_root, tmp_path,
                                                                            monkeypatch, capsys):
    """The per-epoch evaluation draws its crops from a generator of its own: at another batch size (5, with a
    partial last batch) the steps, alphas and genotypes are those of the default run, and the measures those
    of the same images under other random crops; evaluated every 2 epochs, the search is the same again, and
    the epochs between have no validation measures (nor in their console line)."""
    seen = []  # the evaluation's batch sizes
    original = Search.evaluate

    def evaluate(self, progress=False):
        seen.append(self.eval_loader.batch_size)
        return original(self, progress)

    monkeypatch.setattr(Search, "evaluate", evaluate)
    variants = [{}, {"eval_batch_size": 5}, {"eval_every": 2}]
    runs = [dnas.search(method="darts-v1", dataset="fashion-mnist", epochs=3, run_dir=tmp_path / str(i), **v, **TINY)
            for i, v in enumerate(variants)]
    assert seen == [16, 16, 16, 5, 5, 5, 16, 16]  # every 2 epochs, and after the last
    for other in runs[1:]:
        assert (runs[0].run_dir / "alphas.jsonl").read_text() == (other.run_dir / "alphas.jsonl").read_text()
    for a, b in zip(*(r.metrics for r in runs[:2])):
        assert (a["train_loss"], a["train_acc"], a["genotype"]) == (b["train_loss"], b["train_acc"], b["genotype"])
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=0.2) and abs(a["val_acc"] - b["val_acc"]) < 0.2
    assert json.loads((runs[1].run_dir / "config.json").read_text())["config"]["eval_batch_size"] == 5
    assert ["val_acc" in m for m in runs[2].metrics] == [False, True, True]
    assert [m["val_acc"] for m in runs[2].metrics[1:]] == [m["val_acc"] for m in runs[0].metrics[1:]]
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")][-3:]
    assert ["val_acc" in line for line in lines] == [False, True, True] and all("train_acc" in line for line in lines)


def test_resume_refuses_changed_settings_and_foreign_folders(fashion_mnist_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a dnas search run"):
        dnas.search(resume=tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist: --resume takes the directory of a search run"):
        dnas.search(resume=tmp_path / "typo")
    run = dnas.search(method="darts-v1", dataset="fashion-mnist", epochs=1, run_dir=tmp_path / "r", **TINY).run_dir
    with pytest.raises(ValueError, match=r"only device, data, tensorboard may change, not \['epochs'\]"):
        dnas.search(resume=run, epochs=5)
    lines = (run / "metrics.jsonl").read_text()
    (run / "metrics.jsonl").write_text('{"epoch": 1, "tr\n' + lines)  # damaged, not cut short at its end
    with pytest.raises(ValueError, match=r"metrics.jsonl, line 1: not JSON \(.*\): the file is damaged; mend or "
                                         r"delete that line \(the run's other files are untouched\)"):
        dnas.search(resume=run)
    assert (run / "metrics.jsonl").read_text() == '{"epoch": 1, "tr\n' + lines


def test_resume_of_a_training_run_or_a_broken_config_says_so(fashion_mnist_root, tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "config.json").write_text(json.dumps({"config": {}, "genotype": {}, "data": {}}))
    with pytest.raises(FileNotFoundError, match="not a dnas search run: its config.json is a training run's"):
        dnas.search(resume=tmp_path / "t")
    (tmp_path / "t" / "config.json").write_text("{config: ")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        dnas.search(resume=tmp_path / "t")


def test_corrupted_checkpoint_is_a_clear_error_and_nothing_is_lost(fashion_mnist_root, tmp_path):
    run = dnas.search(method="darts-v1", dataset="fashion-mnist", epochs=1, run_dir=tmp_path / "r", **TINY).run_dir
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.name != "checkpoint.pt"}
    (run / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupted or not a dnas search checkpoint") as error:
        dnas.search(resume=run, progress=False)
    assert "weights_only" not in str(error.value)  # torch's advice to load it unsafely is not passed on
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.name != "checkpoint.pt"} == before


def test_a_run_stopped_before_its_first_epoch_is_started_anew_in_its_directory(fashion_mnist_root, tmp_path,
                                                                               monkeypatch, capsys):
    """Nothing can resume a run without a checkpoint: its directory (only its config.json) takes a new run."""
    def interrupted(self, progress):
        raise KeyboardInterrupt

    original = Search.train_epoch
    monkeypatch.setattr(Search, "train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        dnas.search(method="darts-v1", dataset="fashion-mnist", epochs=1, run_dir=tmp_path / "r", **TINY)
    monkeypatch.setattr(Search, "train_epoch", original)
    assert "no epoch completed, nothing to resume: start it again" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == [".lock", "config.json"]
    with pytest.raises(FileNotFoundError, match="has not completed an epoch; start it anew"):
        dnas.search(resume=tmp_path / "r")
    result = dnas.search(method="darts-v2", dataset="fashion-mnist", epochs=1, run_dir=tmp_path / "r", **TINY)
    assert json.loads((result.run_dir / "config.json").read_text())["config"]["method"] == "darts-v2"


def test_a_run_directory_takes_one_process_at_a_time(fashion_mnist_root, tmp_path):
    """A --resume while the run still goes on (the lock another process holds) is refused before it touches a
    file: the running search writes an epoch's metrics line before its checkpoint, and a resume trims the
    lines after the checkpoint's epoch."""
    fcntl = pytest.importorskip("fcntl")
    run = dnas.search(method="darts-v1", dataset="fashion-mnist", epochs=1, run_dir=tmp_path / "r", **TINY).run_dir
    with open(run / "metrics.jsonl", "a") as f:  # the next epoch's line, its checkpoint not yet written
        f.write(json.dumps({"epoch": 2}) + "\n")
    before = (run / "metrics.jsonl").read_text()
    with open(run / ".lock", "w") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        other.write("pid 12345")
        other.flush()
        with pytest.raises(FileExistsError, match=r"r is in use by another dnas process \(pid 12345\)"):
            dnas.search(resume=run, progress=False)
    assert (run / "metrics.jsonl").read_text() == before


def test_a_search_leaves_the_callers_torch_state_and_takes_home_paths(fashion_mnist_root, tmp_path, monkeypatch):
    """Called under torch.no_grad() with float64 as the default dtype, a search runs as ever, and the caller's
    random numbers, grad mode and dtype are theirs again after it; ~ in a path is the home folder."""
    monkeypatch.setenv("HOME", str(tmp_path))
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    default = torch.get_default_dtype()
    try:
        with torch.no_grad():
            torch.set_default_dtype(torch.float64)
            result = dnas.search(method="darts-v1", dataset="fashion-mnist", epochs=1, run_dir="~/r", **TINY)
            assert torch.get_default_dtype() == torch.float64 and not torch.is_grad_enabled()
    finally:
        torch.set_default_dtype(default)
    assert torch.equal(torch.rand(3), expected)
    assert result.run_dir == tmp_path / "r" and (tmp_path / "r" / "genotype.json").is_file()
    assert dnas.Genotype.load("~/r/genotype.json") == result.genotype


def test_a_runs_lines_go_through_the_dnas_logger(fashion_mnist_root, tmp_path, capsys):
    import logging

    dnas.search(method="darts-v1", dataset="fashion-mnist", epochs=1, run_dir=tmp_path / "a", **TINY)
    assert capsys.readouterr().out.splitlines()[1].startswith("epoch 1/1  lr 0.025  ")
    logger = logging.getLogger("dnas")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        dnas.search(method="darts-v1", dataset="fashion-mnist", epochs=1, run_dir=tmp_path / "b", **TINY)
    finally:
        logger.setLevel(level)
    assert capsys.readouterr().out == ""


def test_a_warning_names_the_callers_line(fashion_mnist_root, tmp_path):
    """Not a line of dnas: a script's warning filters by module and line apply to what dnas warns of."""
    with pytest.warns(UserWarning, match="ways of running on a GPU, with no effect on cpu") as seen:
        dnas.search(method="darts-v1", dataset="fashion-mnist", epochs=1, run_dir=tmp_path / "r", device="cpu",
                    cuda_graph=True, **TINY)
    assert seen[0].filename == __file__


def test_a_run_resumed_in_another_environment_says_so(fashion_mnist_root, tmp_path):
    """config.json records the versions, device and threads; float sums round by them, so a resume in a process
    that differs warns that the run may not end exactly as an uninterrupted one."""
    run = dnas.search(method="darts-v1", dataset="fashion-mnist", epochs=1, run_dir=tmp_path / "r", **TINY).run_dir
    saved = json.loads((run / "config.json").read_text())
    assert saved["environment"] == {"dnas": dnas.__version__, "torch": torch.__version__, "device": "cpu",
                                    "threads": torch.get_num_threads()}
    saved["environment"]["threads"] = 99
    (run / "config.json").write_text(json.dumps(saved))
    with pytest.warns(UserWarning, match=r"goes on in another environment \(threads 99 -> \d+\): its float sums"):
        dnas.search(resume=run, progress=False)


def test_a_run_directory_takes_one_thread_of_a_process_at_a_time(tmp_path):
    """Re-entrant within a thread (a resume locks, then runs); another thread is refused."""
    import threading

    from dnas.checkpoint import locked

    seen = []

    def other():
        try:
            with locked(tmp_path / "r"):
                seen.append("entered")
        except FileExistsError as e:
            seen.append(str(e))

    with locked(tmp_path / "r"), locked(tmp_path / "r"):
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
    assert seen == [f"{tmp_path / 'r'} is in use by another run of this process (another thread); let it finish or "
                    f"stop it first"]


def test_a_training_run_stopped_before_its_first_epoch_is_started_anew_in_its_directory(fashion_mnist_root,
                                                                                        tmp_path, monkeypatch):
    """A training run writes its config and genotype before its first epoch: nothing a new run must keep."""
    from dnas.train import Trainer

    def interrupted(self, progress):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "train_epoch", interrupted)
    settings = dict(dataset="fashion-mnist", epochs=1, layers=2, C=4, batch_size=16, subset=32, test_subset=32,
                    progress=False)
    with pytest.raises(KeyboardInterrupt):
        dnas.train("DARTS_V2", run_dir=tmp_path / "t", **settings)
    assert {p.name for p in (tmp_path / "t").iterdir()} >= {"config.json", "genotype.json"}
    monkeypatch.undo()
    assert dnas.train("DARTS_V2", run_dir=tmp_path / "t", **settings).metrics


def test_a_p_darts_run_stopped_before_its_first_epoch_is_reusable_too(tmp_path):
    from dnas.checkpoint import check_new_run_dir
    (tmp_path / "r" / "stage-1").mkdir(parents=True)
    for config in (tmp_path / "r" / "config.json", tmp_path / "r" / "stage-1" / "config.json"):
        config.write_text("{}")
    check_new_run_dir(tmp_path / "r", "search")
    (tmp_path / "r" / "stage-1" / "metrics.jsonl").write_text("{}")
    with pytest.raises(FileExistsError, match="not empty; continue it with"):
        check_new_run_dir(tmp_path / "r", "search")


def test_an_existing_run_directory_is_not_overwritten(fashion_mnist_root, tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="resume"):
        dnas.search(method="darts-v1", dataset="fashion-mnist", epochs=1, run_dir=tmp_path / "r", **TINY)
    assert (tmp_path / "r" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="darts-v9"), "valid methods: .*darts-v1, darts-v2, "),
    (dict(dataset="imagenet-21k"), "valid datasets: cifar10"),
    (dict(ops=("sep_conv_3x3", "conv_9x9")), "valid ops:"),
    (dict(space="nasnet"), "valid search spaces: darts"),
    (dict(dataset="cifar10", data="/no/such/folder"), "/no/such/folder"),
    (dict(widht=3), r"unknown settings widht: neither search settings nor options of the darts space; valid: C, "
                    r".*epochs, .*fused"),
    (dict(epoch=1, init_channels=4), r"unknown settings epoch \(did you mean epochs\?\), init_channels \(did you "
                                     r"mean C\?\)"),
    (dict(space="nb201", layers=3), r"unknown settings layers \(did you mean N\?\): .* of the nb201 space; valid: C, "
                                    r"N, "),
    (dict(eval_batch_size=0), "eval_batch_size must be >= 1"),
    (dict(eval_every=0), "eval_every must be >= 1, not 0"),
    (dict(merge_kernel_sizes=True), r"merge_kernel_sizes: ways of running the fused cells, .* fused=True \(--fused\)"),
    (dict(fused=True, side_streams=-1), "side_streams must be >= 0, not -1"),
    (dict(method="gdas", dense_samples=True), r"dense_samples: ways of running the fused cells, .* fused=True"),
    (dict(epochs=0), "epochs must be >= 1, not 0"),
    (dict(subset=-5), "subset must be >= 1, not -5"),
    (dict(subset=10 ** 8), "subset 100000000 is more than the 60,000 training images of fashion-mnist; give at most "
                           "60000"),
    (dict(cutout=-4), "cutout must be >= 0, not -4"),
    (dict(device="foo"), "unknown device 'foo'; valid: auto, cpu, cuda, cuda:N"),
])
def test_bad_input_is_a_clear_error(fashion_mnist_root, tmp_path, kwargs, message):
    kwargs = {"dataset": "fashion-mnist", **kwargs}
    with pytest.raises((ValueError, KeyError, FileNotFoundError, TypeError), match=message):
        dnas.search(run_dir=tmp_path / "r", **{"epochs": 1, **TINY, **kwargs})
    assert not (tmp_path / "r").exists()  # refused before it wrote anything


def test_a_step_trains_a_model_left_in_evaluation_mode_and_steps_its_optimisers_weights():
    """``bilevel_step`` puts a model in evaluation mode (the search evaluates each epoch) in training mode,
    and its weight step backpropagates into, clips and steps the weights of its weight optimiser."""
    from dnas.search import bilevel_step, optimizers
    from dnas.spaces.darts import DartsSupernet

    torch.manual_seed(0)
    model = DartsSupernet(10, 3, C=4, layers=3).eval()
    w_opt, a_opt = optimizers(model, SearchConfig())
    batch = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    before = [p.detach().clone() for p in model.parameters()]
    bilevel_step(model, get_method("darts-v1").build_parts(), a_opt, w_opt, batch, batch, 5.0)
    assert all(m.training for m in model.modules())
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))  # every weight and alpha moved


def test_a_step_can_take_its_weight_step_first_with_nesterov_momentum():
    """GDAS's code (weight_step_first, nesterov): the weight step by Nesterov SGD, then the architecture step at
    the new weights; the same two steps taken one after the other by hand give the same model."""
    from dnas.search import bilevel_step, optimizers
    from dnas.spaces.darts import DartsSupernet

    config = SearchConfig(nesterov=True, weight_step_first=True)
    parts = get_method("darts-v1").build_parts()
    batch = lambda: (torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,)))
    batches = batch(), batch()
    models = []
    for by_hand in (False, True):
        torch.manual_seed(0)
        model = DartsSupernet(10, 3, C=4, layers=3).double()
        w_opt, a_opt = optimizers(model, config)
        assert w_opt.param_groups[0]["nesterov"]
        x = [(b[0].double(), b[1]) for b in batches]
        for _ in range(2):
            if by_hand:  # a weight step alone, then an architecture step whose weight step is undone
                bilevel_step(model, parts, a_opt, w_opt, x[0], x[1], 5.0, update_arch=False)
                weights = [p.detach().clone() for p in model.weight_parameters()]
                state = copy.deepcopy(w_opt.state_dict())
                bilevel_step(model, parts, a_opt, w_opt, x[0], x[1], 5.0)
                with torch.no_grad():
                    for p, w in zip(model.weight_parameters(), weights):
                        p.copy_(w)
                w_opt.load_state_dict(state)
            else:
                bilevel_step(model, parts, a_opt, w_opt, x[0], x[1], 5.0, weight_step_first=True)
        models.append(model)
    for a, b in zip(*(m.parameters() for m in models)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert get_method("gdas").config["weight_step_first"] and get_method("gdas").config["nesterov"]


@pytest.mark.parametrize("fused", [False, True])
def test_unsampled_ops_weights_decay_as_gdas_code_steps_them(fused):
    """GDAS runs one sampled op per edge; its code's zero_grad (PyTorch 1.x) kept zero gradients, so an op's
    weights, once sampled, still take the weight decay and momentum in steps that do not sample it
    (``step_unused_weights``, in the GDAS recipe); without it they stay as they are."""
    from dnas.search import bilevel_step, optimizers
    from dnas.spaces.darts import DartsSupernet

    method = get_method("gdas")
    assert method.config["step_unused_weights"]
    batch = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    moved = {}
    for keep in (False, True):
        torch.manual_seed(0)
        parts = method.build_parts()
        model = DartsSupernet(10, 3, C=4, layers=3, relaxation=parts.relaxation, fused=fused)
        w_opt, a_opt = optimizers(model, SearchConfig(nesterov=True))
        bilevel_step(model, parts, a_opt, w_opt, batch, batch, 5.0, step_unused_weights=keep)
        had = {p for p in model.weight_parameters() if p.grad is not None}
        before = {p: p.detach().clone() for p in had}
        bilevel_step(model, parts, a_opt, w_opt, batch, batch, 5.0, step_unused_weights=keep)
        unused = [p for p in had if p.grad is None or not p.grad.any()]
        assert unused, "some op sampled in the first step is not in the second"
        moved[keep] = [not torch.equal(before[p], p) for p in unused]
    assert not any(moved[False]) and all(moved[True])


@pytest.mark.parametrize("precision, tf32", [("fp32", False), ("tf32", True), ("bf16", False)])
def test_precision_holds_for_the_whole_search_and_is_put_back(fashion_mnist_root, tmp_path, monkeypatch,
                                                              precision, tf32):
    """fp32 (the default) is IEEE float32: no TF32 in cuDNN's convolutions nor in matrix products, where
    PyTorch's defaults would give a GPU's convolutions TF32; tf32 allows it in both; bf16 runs the steps under
    bf16 autocast and the rest in fp32. The flags are the process's: a search sets them while it runs and
    puts back what it found."""
    assert SearchConfig().precision == "fp32"
    flags = torch.backends.cudnn, torch.backends.cuda.matmul
    for f in flags:
        monkeypatch.setattr(f, "allow_tf32", not tf32)
    seen = set()
    state = lambda where: seen.add((where, *(f.allow_tf32 for f in flags), torch.is_autocast_enabled("cpu")))
    module = importlib.import_module("dnas.search")  # (dnas.search is the function)
    step, evaluate = module.bilevel_step, Search._eval_batch
    monkeypatch.setattr(module, "bilevel_step", lambda *a: state("step") or step(*a))
    monkeypatch.setattr(Search, "_eval_batch", lambda self, *a: state("eval") or evaluate(self, *a))
    dnas.search(dataset="fashion-mnist", run_dir=tmp_path / "r", epochs=1, precision=precision, **TINY)
    assert seen == {("step", tf32, tf32, precision == "bf16"), ("eval", tf32, tf32, False)}
    assert [f.allow_tf32 for f in flags] == [not tf32] * 2


def test_cudnn_times_its_algorithms_for_full_batches_only(fashion_mnist_root, tmp_path, monkeypatch):
    """cuDNN's timing of its algorithms for each new shape (cudnn.benchmark) is on for a search's full batches,
    whose shapes repeat every step, and off for an epoch's last, smaller batch (its step and its evaluation),
    which runs once an epoch; the process's flag is put back after the run."""
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    seen = set()
    setup = Search.setup

    def setup_and_watch(self):
        setup(self)
        self.model.register_forward_pre_hook(
            lambda model, args: seen.add((model.training, len(args[0]), torch.backends.cudnn.benchmark)))

    monkeypatch.setattr(Search, "setup", setup_and_watch)
    # 68 images a half: 4 steps of 16 and one of 4; evaluated in 2 batches of 24 and one of 20
    dnas.search(dataset="fashion-mnist", run_dir=tmp_path / "r", epochs=1, eval_batch_size=24,
                **{**TINY, "subset": 136})
    assert seen == {(True, 16, True), (True, 4, False), (False, 24, True), (False, 20, False)}
    assert not torch.backends.cudnn.benchmark


def test_the_fused_cells_ways_of_running_hold_for_the_whole_search_and_are_put_back(fashion_mnist_root, tmp_path,
                                                                                    monkeypatch):
    """``merge_kernel_sizes`` and ``side_streams`` (docs/speed.md) are settings of a search, kept in its
    config.json for a resume: every fused cell of its steps and evaluation runs within them (side streams
    have no effect on the CPU; what the cells ask for is watched), and the module's settings are put back
    after the run."""
    module = importlib.import_module("dnas.spaces.fused")
    streams, seen = module._side_streams, set()
    watch = lambda device: seen.add((module._merge, module._side)) or streams(device)
    monkeypatch.setattr(module, "_side_streams", watch)
    with pytest.warns(UserWarning, match="side_streams: ways of running on a GPU, with no effect on cpu"):
        run = dnas.search(dataset="fashion-mnist", run_dir=tmp_path / "r", epochs=1, fused=True,
                          merge_kernel_sizes=True, side_streams=3, **TINY).run_dir
    assert seen == {(True, 3)}
    config = json.loads((run / "config.json").read_text())["config"]
    assert (config["merge_kernel_sizes"], config["side_streams"]) == (True, 3)
    assert (module._merge, module._side) == (False, 0)
    assert SearchConfig().merge_kernel_sizes is False and SearchConfig().side_streams == 0


def test_a_gdas_search_with_dense_samples_runs_every_op_by_one_plan(fashion_mnist_root, tmp_path, monkeypatch, capsys):
    """``dense_samples`` (docs/speed.md) is a setting of a search, kept in its config.json: GDAS's fused cells
    plan every op (``active`` None), whatever each step samples, the run's first line says so, and the module's
    setting is put back after the run. A soft relaxation runs every op already: there it is a warning."""
    module = importlib.import_module("dnas.spaces.fused")
    asked = []
    monkeypatch.setattr(module, "_build_plan", lambda cell, topology, active, device, build=module._build_plan:
                        asked.append(active) or build(cell, topology, active, device))
    run = tmp_path / "r"
    assert main(["search", "--method", "gdas", "--dataset", "fashion-mnist", "--epochs", "1", "--fused",
                 "--dense-samples", "--device", "cpu", "--run-dir", str(run), "--init-channels", "4", "--layers",
                 "3", "--nodes", "2", "--batch-size", "16", "--subset", "128", "-q"]) == 0
    assert asked and all(active is None for active in asked)
    assert "on cpu (fused cells, every op, sampled on the device, fp32)" in capsys.readouterr().out
    assert json.loads((run / "config.json").read_text())["config"]["dense_samples"] is True
    assert module._dense is False and SearchConfig().dense_samples is False
    with pytest.warns(UserWarning, match="dense_samples: a way of running a hard relaxation .* darts-v1's "
                                         "relaxation is soft"):
        dnas.search(dataset="fashion-mnist", run_dir=tmp_path / "soft", epochs=1, fused=True, dense_samples=True,
                    **TINY)


def test_fast_settings_are_the_fastest_measured_per_device():
    """--fast (docs/speed.md): on a GPU the fused cells replayed from a CUDA graph (but GDAS's, which sample on
    the host), a DARTS cell's independent ops on 5 side streams and its evaluation in NHWC; on a CPU NHWC, with
    the fused cells but for a hard relaxation (GDAS), whose readable cell is the faster one there, and but for
    PC-DARTS's partial channels (too few for NHWC kernels) and iDARTS on NAS-Bench-201."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert fast_settings(cuda, get_method("darts-v2")) == {"fused": True, "cuda_graph": True, "channels_last": False,
                                                           "eval_batch_size": 256, "side_streams": 5,
                                                           "eval_channels_last": True}
    assert fast_settings(cuda, get_method("gdas")) == {"fused": True, "cuda_graph": False, "channels_last": False,
                                                       "eval_batch_size": 256}
    # asked to keep GDAS's sample on the device (--dense-samples), its steps replay as darts-v1's
    assert fast_settings(cuda, get_method("gdas"), dense_samples=True) == fast_settings(cuda, get_method("darts-v1"))
    assert fast_settings(cpu, get_method("gdas"), dense_samples=True)["fused"]
    nb201 = fast_settings(cuda, get_method("darts-v2"), "nb201")
    assert not {"side_streams", "eval_channels_last"} & set(nb201)  # not measured there yet
    assert fast_settings(cpu, get_method("darts-v2")) == {"fused": True, "cuda_graph": False, "channels_last": True}
    assert fast_settings(cpu, get_method("gdas")) == {"fused": False, "cuda_graph": False, "channels_last": True}
    assert fast_settings(cpu, get_method("pc-darts"))["channels_last"]
    assert not fast_settings(cpu, get_method("pc-darts"), "nb201")["channels_last"]  # 4 channels an op
    assert fast_settings(cpu, get_method("idarts"))["channels_last"]
    assert not fast_settings(cpu, get_method("idarts"), "nb201")["channels_last"]  # BatchNorm's double backward


def test_config_defaults_reach_the_optimisers(fashion_mnist_root, tmp_path):
    s = Search(SearchConfig(dataset="fashion-mnist", subset=64, space_options=dict(C=4, layers=3)), tmp_path)
    sgd, adam = s.w_optimizer.param_groups[0], s.a_optimizer.param_groups[0]
    assert (sgd["lr"], sgd["momentum"], sgd["weight_decay"]) == (0.025, 0.9, 3e-4)
    assert (adam["lr"], adam["betas"], adam["weight_decay"]) == (3e-4, (0.5, 0.999), 1e-3)
    assert s.scheduler.T_max == 50 and s.scheduler.eta_min == 0.001
    assert len(s.train_loader.x) == len(s.val_loader.x) == 32  # the 50/50 split


@pytest.mark.slow
def test_one_epoch_search_on_real_cifar10(cifar10_root, tmp_path):
    result = dnas.search(method="darts-v1", dataset="cifar10", data=cifar10_root, epochs=1,
                         run_dir=tmp_path / "c10", C=4, layers=3, nodes=4, batch_size=32, subset=512,
                         progress=False)
    assert result.genotype.nodes == 4 and len(result.genotype.reduce) == 8
    m = result.metrics[0]
    assert m["train_acc"] > 0.1  # above chance on 10 classes after 8 steps is not guaranteed; a sanity floor
    assert json.loads((result.run_dir / "config.json").read_text())["config"]["data"] == str(cifar10_root)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:darts-v1. the alphas move only after")  # held on purpose, as said below
def test_fast_search_on_real_cifar10_computes_what_the_readable_search_computes(cifar10_root, tmp_path):
    """``dnas.search(fast=True)`` on a CPU: the fused cells in NHWC (tests/test_fused.py holds one step of each
    recipe to the readable one's in float64). Over an epoch of real CIFAR-10 in float32, with the alphas held
    (an architecture warm-up epoch: Adam would turn rounding into full steps of near-tied alphas, docs/speed.md),
    the losses agree to float32 rounding (2.5e-4 apart measured; a dropped op or a BatchNorm's statistics
    gone wrong moves them by far more)."""
    runs = {fast: dnas.search(method="darts-v1", dataset="cifar10", data=cifar10_root, epochs=1, arch_warmup_epochs=1,
                              C=4, layers=3, batch_size=32, subset=512, device="cpu", run_dir=tmp_path / str(fast),
                              progress=False, fast=fast)
            for fast in (False, True)}
    config = json.loads((runs[True].run_dir / "config.json").read_text())["config"]
    assert config["space_options"]["fused"] and config["channels_last"]
    readable, fast = (r.metrics[0] for r in runs.values())
    assert fast["train_loss"] == pytest.approx(readable["train_loss"], rel=2e-3)
    assert fast["val_loss"] == pytest.approx(readable["val_loss"], rel=2e-3)
    assert fast["val_acc"] == pytest.approx(readable["val_acc"], abs=0.02)
    with pytest.raises(ValueError, match="resumed run keeps the settings"):
        dnas.search(resume=runs[True].run_dir, fast=True)


def test_channels_last_search_runs_in_nhwc(fashion_mnist_root, tmp_path):
    config = SearchConfig(dataset="fashion-mnist", subset=64, batch_size=16, epochs=1, channels_last=True,
                          space_options=dict(C=4, layers=3, nodes=2))
    search = Search(config, tmp_path / "r")
    x, _ = next(iter(search.train_loader))
    assert search.train_loader.memory_format is torch.channels_last
    with torch.no_grad():
        features = search.model.stem(x)  # 1 channel in: the stem's output is where the layouts differ
    assert features.shape[1] > 1 and features.is_contiguous(memory_format=torch.channels_last)
    assert not features.is_contiguous()
    assert search.run(progress=False).genotype.nodes == 2


@pytest.mark.parametrize("fused", [False, True])
def test_an_evaluation_in_nhwc_under_nchw_steps_measures_the_same(cifar10_root, tmp_path, fused):
    """eval_channels_last: the evaluation's batches in NHWC where the steps run NCHW, the cells following their
    input's layout (from the stem's output on: three colour channels); the measures are the same up to float32
    rounding, and the first line says so."""
    measures = []
    for nhwc in (False, True):
        config = SearchConfig(data=str(cifar10_root), subset=64, batch_size=16, epochs=1, eval_channels_last=nhwc,
                              space_options=dict(C=4, layers=3, nodes=2, fused=fused))
        search = Search(config, tmp_path / str(nhwc))
        x, _ = next(iter(search.eval_loader))
        with torch.no_grad():
            features = search.model.stem(x)
        assert features.is_contiguous(memory_format=torch.channels_last) == nhwc != features.is_contiguous()
        assert ("evaluation NHWC" in search.describe()) == nhwc
        measures.append(search.evaluate())
    assert measures[1]["val_loss"] == pytest.approx(measures[0]["val_loss"], rel=1e-5)
    assert measures[1]["val_acc"] == measures[0]["val_acc"]


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt; /proc/self/statm")
def test_a_cpu_search_reuses_large_blocks_within_bounds(fashion_mnist_root, tmp_path):
    """After a CPU search has set glibc's bounds, a 64 MB block freed and taken again step after step comes
    back without faulting its pages in afresh (glibc maps blocks over 32 MB by default), while a block over
    256 MB is still mapped, and returned when freed."""
    Search(SearchConfig(dataset="fashion-mnist", subset=64, batch_size=16, epochs=1,
                        space_options=dict(C=4, layers=3, nodes=2)), tmp_path / "r")
    faults = []
    for _ in range(6):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.ones(2**24).sum()  # 64 MB, written and freed
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    assert max(faults[-3:]) < 1000, faults  # a fresh 64 MB block is 16k pages
    start = resident_bytes()
    large = torch.ones(HEAP_BLOCK_MAX // 2)  # 512 MB
    assert resident_bytes() - start > HEAP_BLOCK_MAX
    del large
    assert resident_bytes() - start < HEAP_BLOCK_MAX // 4


def test_copies_are_independent_and_copy_into_restores_them():
    """The unrolled model's and DARTS-PT's buffer copies (one multi-tensor copy per dtype): equal, of the same
    dtypes and shapes, not sharing memory or a version counter (BatchNorm updates each in place)."""
    tensors = [torch.randn(3), torch.tensor(7), torch.randn(2, 2), torch.tensor([True, False])]
    saved = copies(tensors)
    for a, b in zip(saved, tensors):
        assert torch.equal(a, b) and a.dtype == b.dtype and a.data_ptr() != b.data_ptr()
    before = [s._version for s in saved]
    saved[0].add_(1)
    assert [s._version for s in saved[1:]] == before[1:]
    for t in tensors:
        t.zero_()
    copy_into(tensors, saved)
    assert torch.equal(tensors[0], saved[0]) and tensors[1] == 7
    assert torch.equal(tensors[3], torch.tensor([True, False]))


def test_warm_up_epochs_past_the_search_are_a_warning(fashion_mnist_root, tmp_path):
    """PC-DARTS trains only the weights for its first 15 epochs: a shorter search ends with the initial alphas,
    which is said; --arch-warmup-epochs shortens the warm-up."""
    def last_alphas(name, *options):
        assert main(["search", "--method", "pc-darts", "--dataset", "fashion-mnist", "--epochs", "1", "--subset",
                     "64", "--batch-size", "16", "--layers", "3", "--init-channels", "4", "-q", *options,
                     "--run-dir", str(tmp_path / name)]) == 0
        return json.loads((tmp_path / name / "alphas.jsonl").read_text().splitlines()[-1])["alphas"]

    warning = "the alphas move only after"
    with pytest.warns(UserWarning, match=f"pc-darts: {warning} 15 warm-up epochs of weight steps, and the search "
                                         f"has 1: they never move"):
        initial = last_alphas("warm-up")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        searched = last_alphas("no-warm-up", "--arch-warmup-epochs", "0")
        dnas.search(resume=tmp_path / "warm-up", progress=False)  # said when the run starts, not on resume
    assert not [w for w in seen if warning in str(w.message)]
    assert searched != initial
