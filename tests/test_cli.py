"""The dnas command as a user types it."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import dnas
from dnas.cli import evaluate, main
from dnas.report import load_run

TINY = ["--dataset", "fashion-mnist", "--subset", "128", "--batch-size", "16", "--layers", "3",
        "--init-channels", "4", "--nodes", "2", "-q"]


def test_search_prints_the_genotype_and_resume_finishes_a_run(fashion_mnist_root, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["search", "--method", "darts-v1", "--epochs", "1", "--run-dir", str(run), *TINY]) == 0
    out = capsys.readouterr().out
    assert out.startswith("darts-v1 on fashion-mnist (128 training images of 10 classes, 1x28x28), 1 epoch, on ")
    assert f"(fp32): {run}\n" in out  # the first line
    assert f"genotype: {dnas.Genotype.load(run / 'genotype.txt')}" in out
    assert f"run directory: {run}" in out
    # a finished run resumes to the same end without training again
    assert main(["search", "--resume", str(run), "-q"]) == 0
    assert "darts-v1 on fashion-mnist (128 training images of 10 classes, 1x28x28), 1 epoch, resumed after epoch 1 " \
           "of 1, on " in capsys.readouterr().out
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1


def test_search_options_reach_the_config(fashion_mnist_root, tmp_path, capsys):
    run = tmp_path / "run"
    with pytest.warns(UserWarning, match="side_streams: ways of running on a GPU, with no effect on cpu"):
        main(["search", "--method", "darts-v2", "--epochs", "1", "--seed", "7", "--cutout", "8", "--channels-last",
              "--ops", "none,skip_connect,sep_conv_3x3,sep_conv_5x5", "--fused", "--merge-kernel-sizes",
              "--side-streams", "2", "--eval-channels-last", "--run-dir", str(run), "--device", "cpu", "--lr", "0.05",
              "--lr-min", "0", "--momentum", "0.8", "--weight-decay", "1e-4", "--grad-clip", "2", "--arch-lr", "1e-3",
              "--arch-weight-decay", "0", "--train-portion", "0.75", *TINY])
    config = json.loads((run / "config.json").read_text())["config"]
    assert (config["method"], config["seed"], config["cutout"], config["device"]) == ("darts-v2", 7, 8, "cpu")
    assert [config[k] for k in ("lr", "lr_min", "momentum", "weight_decay", "grad_clip", "arch_lr",
                                "arch_weight_decay", "train_portion")] == [0.05, 0, 0.8, 1e-4, 2, 1e-3, 0, 0.75]
    assert [config[k] for k in ("channels_last", "eval_channels_last", "merge_kernel_sizes", "side_streams")] == [
        True, True, True, 2]
    # and the run's first line says how its steps run (side streams are a GPU's: none on the CPU)
    assert f"on cpu (fused cells, NHWC, 3x3 and 5x5 ops merged, fp32): {run}" in capsys.readouterr().out
    assert config["space_options"] == {"C": 4, "layers": 3, "nodes": 2, "fused": True,
                                       "ops": ["none", "skip_connect", "sep_conv_3x3", "sep_conv_5x5"]}
    assert {op for op, _ in dnas.Genotype.load(run / "genotype.json").normal} <= {"skip_connect", "sep_conv_3x3",
                                                                                  "sep_conv_5x5"}


@pytest.mark.parametrize("argv, message", [
    (["--method", "darts-v3"], "unknown method 'darts-v3'; valid methods: beta-darts, "),
    (["--dataset", "mnist"], "unknown dataset 'mnist'; valid datasets: cifar10, cifar100, fashion-mnist, image-folder"),
    (["--dataset", "cifar10", "--data", "/nowhere/cifar"], "/nowhere/cifar"),
    (["--dataset", "fashion-mnist", "--ops", "sep_conv_3x3,conv_11x11"], "unknown op 'conv_11x11'"),
    (["--method", "/nowhere/recipe.toml"], "recipe file /nowhere/recipe.toml does not exist"),
    (["--dataset", "fashion-mnist", "--lr", "0", "--grad-clip", "-1"],
     "lr must be > 0, not 0.0; grad_clip must be > 0"),
    (["--dataset", "fashion-mnist", "--hidden-size", "50"],
     "--hidden-size is the recurrent space's (--space darts-rnn); the darts space's width is --init-channels"),
    (["--dataset", "fashion-mnist", "--train-portion", "1"], "train_portion is the share of the training images the "
                                                             "weights train on"),
    (["--space", "darts-rnn", "--train-portion", "0.8"], "train_portion: settings of the image search; the "
                                                         "recurrent search keeps its lr constant"),
])
def test_bad_input_exits_2_with_a_message(argv, message, capsys, tmp_path):
    assert main(["search", "--run-dir", str(tmp_path / "r"), "--epochs", "1", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dnas: error: ") and message in err


def test_run_dir_and_runs_are_not_given_together(tmp_path, capsys):
    for command in ("search", "train"):
        assert main([command, "--run-dir", str(tmp_path / "r"), "--runs", str(tmp_path)]) == 2
        assert "--runs, the folder of new run directories, does not apply with it" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_resume_takes_no_other_settings(capsys):
    """The run's settings are its config.json's: options given beside --resume are refused, not dropped."""
    assert main(["search", "--resume", "/nowhere/run"]) == 2
    assert "/nowhere/run does not exist: --resume takes the directory of a search run" in capsys.readouterr().err
    assert main(["search", "--resume", "/nowhere/run", "--epochs", "3", "--method", "gdas", "--device", "cpu"]) == 2
    assert "a resumed run keeps its settings: drop --epochs, --method (only --device, --data (where the data is " \
           "now), --tensorboard and -q go with --resume)" in capsys.readouterr().err
    assert main(["train", "--resume", "/nowhere/run", "--lr", "0.5"]) == 2
    assert "drop --lr (only --device, --data (where the data is now) and -q go with --resume)" in \
           capsys.readouterr().err
    assert main(["search", "--resume", "/nowhere/run", "--method", "darts-v1"]) == 2  # a default typed out too
    assert "drop --method" in capsys.readouterr().err


def test_cifar10_without_data_says_how_to_get_it(capsys, tmp_path):
    assert main(["search", "--dataset", "cifar10", "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "--data" in err and "cifar-10-batches-py" in err


def test_user_recipe_file(fashion_mnist_root, tmp_path):
    recipe = tmp_path / "mine.toml"
    recipe.write_text('name = "mine"\nchanges = "coarser finite differences"\n'
                      '[parts]\narch_grad = {name = "second_order", epsilon = 0.05}\n[config]\narch_lr = 6e-4\n')
    run = tmp_path / "run"
    assert main(["search", "--method", str(recipe), "--epochs", "1", "--run-dir", str(run), *TINY]) == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["method"]["parts"]["arch_grad"] == {"name": "second_order", "epsilon": 0.05}
    assert saved["config"]["arch_lr"] == 6e-4


MY_OP = """from torch import nn
from dnas.ops import OPS
OPS.register("plain_conv_3x3", lambda C, stride, affine: nn.Sequential(
    nn.ReLU(), nn.Conv2d(C, C, 3, stride, 1, bias=False), nn.BatchNorm2d(C, affine=affine)))
"""


def test_import_brings_a_users_op_to_every_command(fashion_mnist_root, tmp_path, monkeypatch, capsys):
    """--import MODULE (before or after the command; a name from the working folder, or a .py file): an op of
    one's own for the search, and for every later command on its run, which names --import where it is missing."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_ops_for_dnas.py").write_text(MY_OP)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(dnas.ops.OPS, "_table", dict(dnas.ops.OPS._table))
    monkeypatch.setitem(sys.modules, "my_ops_for_dnas", None)  # not importable until the test imports it
    del sys.modules["my_ops_for_dnas"]  # (monkeypatch removes it again afterwards)
    run = tmp_path / "run"
    search = ["search", "--epochs", "1", "--ops", "plain_conv_3x3,skip_connect", "--run-dir", str(run), *TINY]
    assert main(search) == 2
    assert "unknown op 'plain_conv_3x3'" in capsys.readouterr().err
    assert main(["--import", "my_ops_for_dnas", *search]) == 0
    assert "plain_conv_3x3" in (run / "genotype.txt").read_text()
    del dnas.ops.OPS._table["plain_conv_3x3"]
    assert main(["show", str(run), "-o", str(tmp_path / "c.png")]) == 2
    assert "import the module that registers it: --import MODULE" in capsys.readouterr().err
    picture = str(tmp_path / "c.png")
    assert main(["show", str(run), "--import", str(tmp_path / "my_ops_for_dnas.py"), "-o", picture]) == 0
    assert main(["--import", "no_such_module_here", "methods"]) == 2
    assert "--import no_such_module_here: no module 'no_such_module_here' in " in capsys.readouterr().err


def test_info_and_report_size_a_search_run_by_the_images_it_read(tmp_path, capsys):
    """An image folder of 1 x 32 x 24 images and 3 classes: the search's config.json says so, and dnas info
    sizes the network (and the report its cost) on them, not on CIFAR-10's."""
    from PIL import Image

    for c in ("a", "b", "c"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(8):
            Image.new("L", (24, 32), 30 * i).save(tmp_path / "imgs" / c / f"{i}.png")
    run = tmp_path / "run"
    assert main(["search", "--dataset", "image-folder", "--data", str(tmp_path / "imgs"), "--epochs", "1",
                 "--run-dir", str(run), *TINY[4:]]) == 0  # (not its --dataset and --subset)
    assert "darts-v1 on image-folder (24 training images of 3 classes, 1x32x24)" in capsys.readouterr().out
    assert json.loads((run / "config.json").read_text())["data"] == {
        "images": 24, "num_classes": 3, "channels": 1, "image_size": [32, 24], "classes": ["a", "b", "c"]}
    assert main(["info", "--genotype", str(run), "-o", str(tmp_path / "c.png")]) == 0
    assert "3 classes, input 1x32x24" in capsys.readouterr().out
    assert load_run(run).images == (1, 32, 24, 3)  # the report's cost of each epoch's cell is measured on them


def test_methods_lists_recipes_with_papers():
    out = subprocess.run(["dnas", "methods"], capture_output=True, text=True, check=True).stdout
    assert "darts-v1" in out and "darts-v2" in out and "ICLR 2019" in out


def test_console_script_and_module_agree():
    a = subprocess.run(["dnas", "--version"], capture_output=True, text=True, check=True).stdout
    b = subprocess.run([sys.executable, "-m", "dnas", "--version"], capture_output=True, text=True, check=True).stdout
    assert a == b == f"dnas {dnas.__version__}\n"


def test_options_are_taken_only_as_spelt_out(capsys):
    """`dnas info` has no --data: abbreviated, it would be read as --dataset."""
    with pytest.raises(SystemExit) as e:
        main(["info", "--genotype", "DARTS_V2", "--data", "/some/folder"])
    assert e.value.code == 2 and "unrecognized arguments: --data" in capsys.readouterr().err


def test_info_sizes_a_convolutional_network_by_its_images(tmp_path, capsys):
    """--dataset, else the data set a run directory's genotype was searched on, gives the network's input
    channels, image size and classes; the recurrent options are refused."""
    picture = ["-o", str(tmp_path / "cells.png")]
    assert main(["info", "--genotype", "DARTS_V2", "--dataset", "cifar100", *picture]) == 0
    assert "network: cifar, 20 cells, 100 classes, input 3x32x32" in capsys.readouterr().out
    run = tmp_path / "run"  # a search run's files: its config and genotype
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"config": {"dataset": "fashion-mnist"}, "method": {}}))
    dnas.load_genotype("DARTS_V2")[0].save(run / "genotype.json")
    assert main(["info", "--genotype", str(run), *picture]) == 0
    assert "network: cifar, 20 cells, 10 classes, input 1x28x28" in capsys.readouterr().out
    assert main(["info", "--genotype", str(run), "--network", "imagenet", *picture]) == 0  # the cell moved
    assert "network: imagenet, 14 cells, 1000 classes, input 3x224x224" in capsys.readouterr().out
    assert main(["info", "--genotype", "DARTS_V2", "--dataset", "image-folder"]) == 2
    assert ("--dataset image-folder: the image shapes known are those of cifar10, cifar100, fashion-mnist; for "
            "other images give --in-channels, --image-size and --num-classes") in capsys.readouterr().err
    assert main(["info", "--genotype", "DARTS_V2", "--vocab-size", "5"]) == 2
    assert "--vocab-size: for recurrent cells; DARTS_V2 is a convolutional one" in capsys.readouterr().err
    trained = tmp_path / "trained"  # a training run's files: its network as it trained it
    trained.mkdir()
    (trained / "config.json").write_text(json.dumps({
        "config": {"network": "cifar", "C": 8, "layers": 3, "dataset": "image-folder"},
        "genotype": dnas.published("DARTS_V2").to_dict(), "data": {"channels": 3, "image_size": [40, 40],
                                                                   "num_classes": 5}}))
    dnas.published("DARTS_V2").save(trained / "genotype.json")
    assert main(["info", "--genotype", str(trained), *picture]) == 0
    assert "network: cifar, 3 cells, 5 classes, input 3x40x40" in capsys.readouterr().out
    (run / "config.json").write_text("{broken")  # a run's config that is not JSON: said, for info and train
    for command in (["info"], ["train", "--epochs", "1"]):
        assert main([*command, "--genotype", str(run), *(picture if command == ["info"] else [])]) == 2
        assert f"{run / 'config.json'} is not valid JSON" in capsys.readouterr().err


def test_info_refuses_sizes_its_network_cannot_take(capsys):
    """A side a reduction cannot halve evenly, or none at all: a clear error, where PyTorch's own came from
    deep in the network (a concatenation of 4 and 3 pixels; a negative tensor dimension)."""
    assert main(["info", "--genotype", "DARTS_V2", "--image-size", "30"]) == 2
    assert "the cifar network does not take 3x30x30 images (" in capsys.readouterr().err
    for option in ("--init-channels", "--image-size", "--hidden-size"):
        with pytest.raises(SystemExit):
            main(["info", "--genotype", "DARTS_V2", option, "0"])
        assert f"argument {option}: must be 1 or more, not 0" in capsys.readouterr().err


def test_sigterm_ends_a_command_as_ctrl_c_does(monkeypatch, capsys):
    """``timeout`` and job schedulers send SIGTERM: the run's own handler of an interrupt then says how to
    resume it (Search.run, Trainer.run); the process's handler is put back after."""
    def terminated_while_running(args):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the signal arrives before this ends

    monkeypatch.setattr(evaluate, "run_train", terminated_while_running)
    before = signal.getsignal(signal.SIGTERM)
    assert main(["train", "--genotype", "DARTS_V2"]) == 143
    assert capsys.readouterr().err == "\nterminated\n"
    assert signal.getsignal(signal.SIGTERM) is before
