"""Exported networks give the PyTorch network's outputs: ONNX run in onnxruntime, pt2 in plain PyTorch,
TorchScript reloaded."""
import importlib.util
import json
import subprocess
import sys
import warnings

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

import dnas
from dnas import export as export_module
from dnas.cli import main
from dnas.export import MissingPackage, export, export_run
from dnas.rnn.train import KIND
from dnas.spaces.darts_network import NetworkCIFAR
from dnas.train import load_run


@pytest.fixture(scope="module")
def run(fashion_mnist_root, tmp_path_factory):
    """A one-epoch training run of a tiny AmoebaNet (concat [4, 5, 6], 7x1/1x7 and 7x7 ops) on Fashion-MNIST."""
    return dnas.train("AmoebaNet", "fashion-mnist", epochs=1, C=4, layers=3, batch_size=32, subset=64, test_subset=32,
                      run_dir=tmp_path_factory.mktemp("e") / "run", progress=False).run_dir


def test_onnx_export_runs_in_onnxruntime_with_the_same_outputs(tmp_path):
    torch.manual_seed(0)
    model = NetworkCIFAR(dnas.published("DARTS_V2"), C=8, layers=3)
    path = export(model, tmp_path / "m.onnx", "onnx", (3, 32, 32))
    proto = onnx.load(path)
    onnx.checker.check_model(proto)
    assert [o.version for o in proto.opset_import if o.domain == ""] == [torch.onnx._constants.ONNX_DEFAULT_OPSET]
    session = onnxruntime.InferenceSession(str(path))
    x = torch.randn(3, 3, 32, 32)  # another batch size than the export's example
    (out,) = session.run(["logits"], {"images": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(out, model.eval()(x).numpy(), rtol=1e-4, atol=1e-5)


def test_exports_record_dilated_convolutions_as_convolutions(tmp_path):
    """ops.conv2d runs a dilated convolution by its phases, whose shapes are the batch's; an export records
    the convolution itself, so the exported network runs at any batch and image size."""
    torch.manual_seed(0)
    model = NetworkCIFAR(dnas.published("DARTS_V2"), C=8, layers=3).eval()  # dil_conv_3x3 in both cells
    with warnings.catch_warnings():  # nothing the trace reads of the tensors' values or shapes
        warnings.simplefilter("error", torch.jit.TracerWarning)
        traced = torch.jit.load(str(export(model, tmp_path / "m.pt", "torchscript", (3, 32, 32))))
    x = torch.randn(5, 3, 24, 24)
    with torch.no_grad():
        assert torch.allclose(traced(x), model(x), atol=1e-5)
    proto = onnx.load(export(model, tmp_path / "m.onnx", "onnx", (3, 32, 32)))
    dilations = [list(a.ints) for node in proto.graph.node if node.op_type == "Conv" for a in node.attribute
                 if a.name == "dilations"]
    assert [2, 2] in dilations


def test_torchscript_export_reloads_with_the_same_outputs(run, tmp_path):
    path = export_run(run, "torchscript", weights="best", path=tmp_path / "m.pt")
    model, _ = load_run(run, "best")
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(torch.jit.load(str(path))(x), model(x), atol=1e-6)


def test_pt2_export_runs_in_plain_pytorch_with_the_same_outputs(run, tmp_path, capsys):
    """``dnas export RUN --format pt2`` (torch.export): loaded by a process that never imports dnas, at another
    batch size than the export's, it gives the trained network's logits."""
    assert main(["export", str(run), "--format", "pt2"]) == 0
    path = run / "model.pt2"
    assert f"exported: {path}" in capsys.readouterr().out
    x = torch.randn(5, 1, 28, 28)
    torch.save(x, tmp_path / "x.pt")
    plain = ("import sys, torch; m = torch.export.load(sys.argv[1]).module(); "
             "torch.save(m(torch.load(sys.argv[2])), sys.argv[3]); assert 'dnas' not in sys.modules")
    subprocess.run([sys.executable, "-c", plain, str(path), str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
                   check=True, cwd=tmp_path)
    model, _ = load_run(run, "last")
    with torch.no_grad():
        assert torch.allclose(torch.load(tmp_path / "y.pt"), model(x), atol=1e-5)


@pytest.mark.slow  # a process of its own that imports torch's ONNX exporter afresh: ~19 s
def test_export_command_writes_into_the_run(run):
    done = subprocess.run(["dnas", "export", str(run), "--format", "onnx"], capture_output=True, text=True)
    assert done.returncode == 0 and f"exported: {run / 'model.onnx'}" in done.stdout
    assert done.stderr == ""  # nor torch's exporter on what does not concern it (torchvision, its pytrees)
    session = onnxruntime.InferenceSession(str(run / "model.onnx"))
    assert session.get_inputs()[0].shape[1:] == [1, 28, 28]
    assert not (run / "model.onnx.data").exists()  # one self-contained file


def test_unknown_format_and_missing_packages_are_clear_errors(run, monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="unknown export format 'tflite'; valid: onnx, pt2, torchscript"):
        export_run(run, "tflite")
    real = importlib.util.find_spec
    monkeypatch.setattr(export_module.importlib.util, "find_spec", lambda n: None if n == "onnxscript" else real(n))
    with pytest.raises(MissingPackage, match="pip install onnxscript"):
        export_run(run, "onnx", path=tmp_path / "m.onnx")
    with pytest.raises(FileNotFoundError, match="not a dnas training run"):
        export_run(tmp_path, "onnx")
    (tmp_path / "lm").mkdir()
    (tmp_path / "lm" / "config.json").write_text(json.dumps({"kind": KIND}))
    with pytest.raises(ValueError, match="a language model's run; export takes the image networks of dnas train"):
        export_run(tmp_path / "lm", "onnx")


def test_an_output_path_that_cannot_be_the_file_is_refused_before_exporting(run, tmp_path, capsys):
    """A directory, or another format's suffix: refused, nothing written (pt2's own writer raised a C++
    error for a directory; ONNX into x.pt2 was written as asked)."""
    assert main(["export", str(run), "--format", "pt2", "-o", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert f"{tmp_path} is a directory; give the file to write, e.g. {tmp_path / 'model.pt2'}" in error
    with pytest.raises(ValueError, match=r"x.pt2: onnx exports are written to .onnx files \(.pt2 is pt2's\)"):
        export_run(run, "onnx", path=tmp_path / "x.pt2")
    assert not (tmp_path / "x.pt2").exists()


def test_ctrl_c_during_an_export_stays_a_ctrl_c(run, tmp_path, monkeypatch):
    """torch's ONNX exporter, interrupted, raised an AttributeError of its own while handling the interrupt;
    the command line then printed its traceback rather than "interrupted"."""
    def exporter(*args, **kwargs):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise AttributeError("module 'torch._dynamo' has no attribute 'exc'")

    monkeypatch.setattr(export_module.torch.onnx, "export", exporter)
    assert main(["export", str(run), "--format", "onnx", "-o", str(tmp_path / "m.onnx")]) == 130
