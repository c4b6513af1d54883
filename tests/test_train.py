"""Training a genotype's network on real data, as a user runs it: run directory, the paper's settings,
resume, testing with a confusion matrix, and errors."""
import csv
import json
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

import dnas
from conftest import cuda_sync_debug
from dnas.cli import main
from dnas.checkpoint import CheckpointError
from dnas.data import BatchLoader
from dnas.train import IMAGENET, SCHEDULES, TrainConfig, Trainer, evaluate, evaluate_run, load_run

# a tiny network on a few hundred real Fashion-MNIST images: seconds on 2 CPU cores
TINY = dict(C=8, layers=3, batch_size=32, subset=128, test_subset=128, progress=False)


@pytest.fixture(scope="module")
def trained(fashion_mnist_root, tmp_path_factory):
    """A finished 2-epoch run, shared by the tests that only read it."""
    return dnas.train("DARTS_V2", "fashion-mnist", epochs=2, run_dir=tmp_path_factory.mktemp("t") / "run", **TINY)


def test_training_writes_a_readable_run(trained):
    run = trained.run_dir
    assert sorted(p.name for p in run.iterdir()) == [".lock",  # locked by a process running there
                                                     "best.pt", "checkpoint.pt", "config.json", "genotype.json",
                                                     "genotype.txt", "last.pt", "metrics.jsonl"]
    assert dnas.Genotype.load(run / "genotype.json") == dnas.published("DARTS_V2") == trained.genotype

    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics == trained.metrics and [m["epoch"] for m in metrics] == [1, 2]
    assert [m["lr"] for m in metrics] == pytest.approx([0.025, 0.0125])  # cosine over 2 epochs, to 0
    assert [m["drop_path"] for m in metrics] == pytest.approx([0.0, 0.1])  # 0.2 * epoch / epochs
    for m in metrics:
        assert m["train_loss"] > 0 and m["test_loss"] > 0 and m["seconds"] > 0
        assert 0 <= m["train_acc"] <= 1 and 0 <= m["test_acc"] <= m["test_top5"] <= 1
    assert trained.test_acc == metrics[-1]["test_acc"]

    saved = json.loads((run / "config.json").read_text())
    assert saved["config"]["dataset"] == "fashion-mnist" and saved["config"]["cutout"] == 16
    assert saved["data"]["num_classes"] == 10 and saved["data"]["image_size"] == [28, 28]
    assert saved["cost"] == {"params": trained.cost.params, "mult_adds": trained.cost.mult_adds}

    last, checkpoint = (torch.load(run / name, weights_only=True) for name in ("last.pt", "checkpoint.pt"))
    assert all(torch.equal(last[k], v) for k, v in checkpoint["model"].items())
    model, _ = load_run(run, "best")
    assert not model.training and model.classifier.out_features == 10


def test_config_defaults_are_the_papers_cifar_evaluation():
    c = TrainConfig()
    assert (c.network, c.layers, c.C, c.epochs, c.batch_size) == ("cifar", 20, 36, 600, 96)
    assert (c.lr, c.lr_schedule, c.momentum, c.weight_decay, c.grad_clip) == (0.025, "cosine", 0.9, 3e-4, 5.0)
    assert (c.auxiliary, c.auxiliary_weight, c.drop_path, c.cutout, c.label_smoothing) == (True, 0.4, 0.2, 16, 0.0)


def test_imagenet_settings_are_the_papers():
    c = TrainConfig(**IMAGENET, network="imagenet")
    assert (c.layers, c.C, c.epochs, c.batch_size, c.lr, c.weight_decay) == (14, 48, 250, 128, 0.1, 3e-5)
    assert (c.label_smoothing, c.auxiliary_weight, c.drop_path, c.cutout) == (0.1, 0.4, 0.0, 0)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], c.lr)
    scheduler = SCHEDULES[c.lr_schedule](optimizer, c)
    lrs = []
    for _ in range(3):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([0.1, 0.097, 0.09409])  # decayed by 0.97 after each epoch


def test_label_smoothing_is_the_darts_imagenet_loss():
    logits, y, eps = torch.randn(8, 5), torch.randint(0, 5, (8,)), 0.1
    target = (1 - eps) * F.one_hot(y, 5) + eps / 5  # DARTS's CrossEntropyLabelSmooth
    assert F.cross_entropy(logits, y, label_smoothing=eps) == pytest.approx(
        (-target * logits.log_softmax(1)).sum(1).mean().item())


def test_the_trainer_gets_the_settings(fashion_mnist_root, tmp_path):
    t = Trainer(TrainConfig(dataset="fashion-mnist", C=4, layers=3, subset=64, test_subset=32),
                dnas.published("PDARTS"), tmp_path)
    group = t.optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.025, 0.9, 3e-4)
    assert t.scheduler.T_max == 600 and t.scheduler.eta_min == 0
    assert (t.train_loader.cutout, t.train_loader.augment, t.train_loader.batch_size) == (16, True, 96)
    assert len(t.train_loader.x) == 64 and len(t.test_loader.x) == 32 and not t.test_loader.augment
    assert t.model.auxiliary_head is not None and t.model.stem[0].in_channels == 1


def test_channels_last_training_runs_in_nhwc(fashion_mnist_root, tmp_path):
    t = Trainer(TrainConfig(dataset="fashion-mnist", C=4, layers=3, subset=64, test_subset=32, channels_last=True),
                dnas.published("PDARTS"), tmp_path)
    x, _ = next(iter(t.train_loader))
    with torch.no_grad():
        s0, _ = t.model.stem(x)  # 1 channel in: the stem's output is where the layouts differ
    assert t.test_loader.memory_format is torch.channels_last
    assert s0.shape[1] > 1 and s0.is_contiguous(memory_format=torch.channels_last) and not s0.is_contiguous()


def test_resume_after_an_interruption_ends_where_an_uninterrupted_run_ends(fashion_mnist_root, tmp_path, monkeypatch):
    settings = dict(TINY, subset=96, test_subset=64, layers=2)
    whole = dnas.train("DARTS_V2", "fashion-mnist", epochs=2, run_dir=tmp_path / "whole", **settings)

    original = Trainer.train_epoch

    def interrupted(self, progress):  # Ctrl-C in the second epoch
        if self.epoch == 1:
            raise KeyboardInterrupt
        return original(self, progress)

    monkeypatch.setattr(Trainer, "train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        dnas.train("DARTS_V2", "fashion-mnist", epochs=2, run_dir=tmp_path / "cut", **settings)
    monkeypatch.setattr(Trainer, "train_epoch", original)
    assert len((tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()) == 1

    resumed = dnas.train(resume=tmp_path / "cut", progress=False)
    strip = lambda ms: [{k: v for k, v in m.items() if k != "seconds"} for m in ms]
    assert strip(resumed.metrics) == strip(whole.metrics)
    a, b = (torch.load(r.run_dir / "last.pt", weights_only=True) for r in (whole, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_evaluate_run_writes_accuracy_and_the_confusion_matrix(trained):
    report = evaluate_run(trained.run_dir, weights="last", subset=128, progress=False)
    assert report.accuracy == pytest.approx(trained.test_acc)  # the same 128 images the run tested on
    assert report.confusion.shape == (10, 10) and report.confusion.sum() == 128
    assert report.accuracy == pytest.approx(report.confusion.trace().item() / 128)
    saved = json.loads((trained.run_dir / "test-last-subset128.json").read_text())
    assert saved["images"] == 128 and saved["confusion"] == report.confusion.tolist()
    rows = list(csv.reader(open(trained.run_dir / "confusion-last-subset128.csv")))
    assert rows[0][1:] == report.classes and rows[2][0] == "Trouser"
    assert [int(v) for v in rows[1][1:]] == report.confusion[0].tolist()


def scorer_and_loader(device: str, batches: int):
    """A linear classifier of 8 x 8 images and a loader of 7-image batches, both on ``device``."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 256, (7 * batches, 1, 8, 8), generator=g, dtype=torch.uint8), torch.arange(7 * batches) % 10
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).to(device)
    return model, BatchLoader(x, y, 7, [0.5], [0.25], device=device)


def test_evaluate_sums_loss_top1_top5_and_the_confusion_matrix_over_batches():
    model, loader = scorer_and_loader("cpu", 3)
    ev = evaluate(model, loader, 10)
    x, y = (torch.cat(t) for t in zip(*loader))
    with torch.no_grad():
        logits = model(x)
    assert ev.loss == pytest.approx(F.cross_entropy(logits, y).item())
    assert ev.acc == pytest.approx((logits.argmax(1) == y).float().mean().item())
    assert ev.top5 == pytest.approx((logits.topk(5, 1).indices == y[:, None]).any(1).float().mean().item())
    assert ev.confusion.sum() == 21 and ev.confusion[2].sum() == 2  # rows: true class; 21 images, class 2 twice
    assert torch.equal(ev.confusion[y, logits.argmax(1)] > 0, torch.ones(21, dtype=torch.bool))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_evaluate_on_cuda_reads_the_device_once_not_per_batch():
    """The sums stay on the GPU until the end: the host waits for it as often for 1 batch as for 5."""
    waits = []
    for batches in (1, 5):
        model, loader = scorer_and_loader("cuda", batches)
        evaluate(model, loader, 10)  # CUDA's and cuBLAS's lazy set-up, outside the count
        torch.cuda.synchronize()
        with cuda_sync_debug("warn"), warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            evaluate(model, loader, 10)
        waits.append(sum("synchroniz" in str(w.message) for w in seen))
    assert waits[0] == waits[1], waits


def test_test_command_refuses_an_empty_sample(trained, capsys):
    assert main(["test", str(trained.run_dir), "--subset", "0", "-q"]) == 2
    assert "subset must be >= 1, not 0" in capsys.readouterr().err


def test_weights_that_are_not_the_networks_are_one_line_errors(trained, tmp_path, capsys):
    """The run's own checkpoint, another network's weights, a file that is not PyTorch's: said in a line,
    where load_state_dict listed every key."""
    run = trained.run_dir
    assert main(["test", str(run), "--weights", str(run / "checkpoint.pt"), "-q"]) == 2
    error = capsys.readouterr().err
    assert "is a run's checkpoint (its state to resume from), not this run's network's weights: give --weights " \
           "last or best" in error and len(error.splitlines()) == 1
    model, _ = load_run(run)
    state = model.state_dict()
    state["extra"] = state.pop("classifier.bias")
    state["classifier.weight"] = state["classifier.weight"][:3]
    torch.save(state, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"other.pt is not this run's network's weights \(1 of its tensors "
                                              r"missing, e.g. 'classifier.bias'; 1 not its own, e.g. 'extra'; 1 of "
                                              r"other shapes, e.g. 'classifier.weight'\)"):
        load_run(run, str(tmp_path / "other.pt"))
    (tmp_path / "notes.pt").write_text("not weights")
    with pytest.raises(CheckpointError, match="notes.pt is not a file of weights"):
        load_run(run, str(tmp_path / "notes.pt"))


def test_a_training_runs_cells_are_drawn_and_its_weights_are_no_genotype(trained, tmp_path, capsys):
    assert main(["show", str(trained.run_dir), "-o", str(tmp_path / "cells.svg")]) == 0
    assert (tmp_path / "cells.svg").is_file()
    assert main(["show", str(trained.run_dir / "last.pt")]) == 2
    assert "last.pt is not a genotype file: it is not text" in capsys.readouterr().err


def test_testing_on_images_of_another_shape_is_refused(trained, cifar10_root):
    with pytest.raises(ValueError, match=r"cifar10's images have 3 channels; the run was trained on images of 1 "
                                         r"\(fashion-mnist\)"):
        evaluate_run(trained.run_dir, dataset="cifar10", data=cifar10_root, subset=10, progress=False)


def test_test_command_prints_the_accuracy_and_matrix(trained, capsys):
    assert main(["test", str(trained.run_dir), "--weights", "best", "--subset", "64", "-q"]) == 0
    out = capsys.readouterr().out
    assert "test accuracy: " in out and "confusion matrix" in out and "Ankle boot" in out
    assert (trained.run_dir / "test-best-subset64.json").is_file()  # beside, not over, a whole test's file


def test_train_command_runs_and_reports(fashion_mnist_root, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--genotype", "pc-darts", "--dataset", "fashion-mnist", "--epochs", "1", "--layers", "2",
                 "--init-channels", "4", "--subset", "64", "--test-subset", "64", "--no-auxiliary", "--cutout",
                 "--drop-path", "0.3", "--channels-last", "--lr-schedule", "exponential", "--momentum", "0.8",
                 "--weight-decay", "0", "--grad-clip", "1", "--label-smoothing", "0.1", "--auxiliary-weight", "0.5",
                 "--run-dir", str(run), "-q"]) == 0
    assert f"run directory: {run}" in capsys.readouterr().out
    config = json.loads((run / "config.json").read_text())["config"]
    assert (config["auxiliary"], config["cutout"], config["drop_path"], config["C"]) == (False, 16, 0.3, 4)
    assert [config[k] for k in ("lr_schedule", "momentum", "weight_decay", "grad_clip", "label_smoothing",
                                "auxiliary_weight")] == ["exponential", 0.8, 0, 1, 0.1, 0.5]
    assert config["channels_last"] is True
    assert json.loads((run / "config.json").read_text())["genotype"] == dnas.published("PC_DARTS").to_dict()


def test_resume_refuses_changed_settings_and_foreign_folders(trained, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a dnas training run"):
        dnas.train(resume=tmp_path)
    with pytest.raises(FileNotFoundError, match="typo does not exist or is not a directory: give the directory of a "
                                                "training run"):
        dnas.train(resume=tmp_path / "typo")
    (tmp_path / "search").mkdir()
    (tmp_path / "search" / "config.json").write_text(json.dumps({"config": {}, "method": {}}))
    with pytest.raises(FileNotFoundError, match="is a search run \\(dnas search\\), not a training run: train its "
                                                "genotype with dnas train --genotype"):
        load_run(tmp_path / "search")
    with pytest.raises(ValueError, match="only device, data may change"):
        dnas.train(resume=trained.run_dir, epochs=5)


def test_corrupted_checkpoint_is_a_clear_error_and_nothing_is_lost(fashion_mnist_root, tmp_path):
    run = dnas.train("DARTS_V2", "fashion-mnist", epochs=1, run_dir=tmp_path / "r", **dict(TINY, layers=2)).run_dir
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.name != "checkpoint.pt"}
    (run / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupted"):
        dnas.train(resume=run, progress=False)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.name != "checkpoint.pt"} == before


def test_an_existing_run_directory_is_not_overwritten(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="resume"):
        dnas.train("DARTS_V2", "fashion-mnist", run_dir=tmp_path / "r")
    assert (tmp_path / "r" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("args, kwargs, message", [
    (("DARTS_V9",), {}, "not a published genotype"),
    (("DARTS_V2",), dict(network="mobile"), "valid networks: cifar, imagenet"),
    (("DARTS_V2",), dict(dataset="mnist"), "valid datasets: cifar10"),
    (("DARTS_V2",), dict(epoch=3), "unknown settings \\['epoch'\\]"),
    (("DARTS_V2",), dict(drop_path=1.5), "drop_path is a probability"),
    (("DARTS_V2",), dict(lr_schedule="step"), "valid: cosine, exponential"),
    ((), {}, "give the genotype to train"),
    (("DARTS_V2",), dict(test_subset=0), "test_subset must be >= 1, not 0"),
    (("DARTS_V2",), dict(subset=-3, cutout=-1), "subset must be >= 1, not -3; cutout must be >= 0, not -1"),
    (("DARTS_V2",), dict(test_subset=10 ** 6), "test_subset 1000000 is more than the 10,000 test images of "
                                               "fashion-mnist"),
    (("DARTS_V2",), dict(C=0), "C must be >= 1, not 0"),
    (("DARTS_V2",), dict(lr=0, grad_clip=-1, weight_decay=-1e-4), "weight_decay must be >= 0, not -0.0001"),
    (("DARTS_V2",), dict(lr=0, grad_clip=-1), "lr must be > 0, not 0; grad_clip must be > 0, not -1"),
    (("DARTS_V2",), dict(label_smoothing=1), r"label_smoothing is a probability in \[0, 1\), got 1"),
    (("DARTS_V2",), dict(cutout=100), r"cutout 100 is longer than the images' side \(28x28\)"),
    (("DARTS_V2",), dict(network="imagenet", C=8, layers=3),
     r"the imagenet network does not take 1x28x28 images \(.*\): each reduction needs an even side"),
])
def test_bad_input_is_a_clear_error(args, kwargs, message, tmp_path):
    with pytest.raises((ValueError, KeyError), match=message):
        dnas.train(*args, run_dir=tmp_path / "r", **{"dataset": "fashion-mnist", **kwargs})
    assert not (tmp_path / "r").exists()


def test_a_dataset_without_test_images_is_refused(tmp_path):
    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        Image.new("L", (8, 8)).save(tmp_path / "imgs" / c / "0.png")
    with pytest.raises(FileNotFoundError, match="DIR/val/<class>/"):
        dnas.train("DARTS_V2", "image-folder", data=tmp_path / "imgs", run_dir=tmp_path / "r", progress=False)


def test_a_search_runs_genotype_trains_on_the_data_it_was_searched_on(fashion_mnist_root, tmp_path):
    search = dnas.search(method="darts-v1", dataset="fashion-mnist", data=fashion_mnist_root, epochs=1, C=4,
                         layers=3, nodes=2, subset=64, batch_size=16, run_dir=tmp_path / "s", progress=False)
    run = dnas.train(str(search.run_dir), epochs=1, C=4, layers=3, subset=32, test_subset=32, auxiliary=False,
                     batch_size=16, run_dir=tmp_path / "t", progress=False).run_dir
    config = json.loads((run / "config.json").read_text())["config"]
    assert (config["dataset"], config["data"]) == ("fashion-mnist", str(fashion_mnist_root))
    with pytest.raises(ValueError, match="epochs must be >= 1"):  # the text form, too long a name for a path
        dnas.train(str(dnas.published("DARTS_V2")), run_dir=tmp_path / "x", epochs=0)


def test_a_run_is_tested_only_on_its_own_classes_and_says_what_it_tested_on(tmp_path):
    """The network's outputs are the run's classes in their order: a folder of other class names is refused;
    images of another size are tested with a warning; the report names the folder."""
    from PIL import Image

    def folder(root, classes, side):
        for split in ("train", "val"):
            for c in classes:
                (root / split / c).mkdir(parents=True)
                for i in range(4):
                    Image.new("L", (side, side), 40 * i).save(root / split / c / f"{i}.png")
        return root

    run = dnas.train("DARTS_V2", "image-folder", data=folder(tmp_path / "ab", "ab", 8), epochs=1, C=4, layers=3,
                     auxiliary=False, cutout=0, batch_size=4, run_dir=tmp_path / "r", progress=False).run_dir
    with pytest.raises(ValueError, match="image-folder's classes are a, z; the run's network outputs a, b, in that "
                                         "order"):
        dnas.evaluate_run(run, data=folder(tmp_path / "az", "az", 8), progress=False)
    with pytest.warns(UserWarning, match="image-folder's images are 16x16; the run trained on 8x8 ones"):
        report = dnas.evaluate_run(run, data=folder(tmp_path / "big", "ab", 16), progress=False)
    assert json.loads(report.files[0].read_text())["data"] == str(tmp_path / "big")


@pytest.mark.slow
def test_two_epochs_on_real_cifar10_learn(cifar10_root, tmp_path):
    result = dnas.train("DARTS_V2", "cifar10", data=cifar10_root, epochs=2, run_dir=tmp_path / "c10", C=8, layers=3,
                        batch_size=64, subset=2048, test_subset=1000, progress=False)
    # chance is 0.1 on the class-balanced sample; 0.15 is 5 standard deviations of chance above it
    assert result.test_acc > 0.15
    assert not math.isnan(result.metrics[-1]["train_loss"])
