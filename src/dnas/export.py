"""Exporting a trained network for inference without dnas: torch.export, ONNX and TorchScript.

The exported model maps float32 images N x C x H x W, normalised with the training set's per-channel mean
and std (in the run's config.json), to logits; the batch size is free. It is the inference network only:
the auxiliary head and drop-path act in training and are left out.

    pt2           torch.export's ExportedProgram; load with torch.export.load(path).module(), in
                  PyTorch without dnas (TorchScript's successor)
    TorchScript   torch.jit.trace; load with torch.jit.load(path) (deprecated in torch 2.13)
    ONNX          torch.onnx.export with the installed torch's default exporter and opset (needs the
                  packages onnx and onnxscript); run it with onnxruntime, input "images", output "logits"
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from .rnn.train import is_lm_run
from .train import load_run

#: Export formats and the file suffix each writes.
FORMATS = {"onnx": ".onnx", "pt2": ".pt2", "torchscript": ".pt"}


class MissingPackage(ImportError, ValueError):
    """A package an export format needs is not installed."""


def export(model: nn.Module, path: str | os.PathLike, format: str, input_size: tuple[int, int, int]) -> Path:
    """Write ``model`` (put in eval mode) to ``path`` as ``format`` (one of ``FORMATS``) for inputs of
    ``input_size`` (C, H, W) and any batch size."""
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; valid: {', '.join(FORMATS)}")
    path = Path(path).expanduser()
    if path.is_dir():
        example_file = path / f"model{FORMATS[format]}"
        raise IsADirectoryError(f"{path} is a directory; give the file to write, e.g. {example_file}")
    if path.suffix in FORMATS.values() and path.suffix != FORMATS[format]:
        raise ValueError(f"{path}: {format} exports are written to {FORMATS[format]} files ({path.suffix} is "
                         f"{', '.join(f for f, s in FORMATS.items() if s == path.suffix)}'s)")
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    p = next(model.parameters())
    example = torch.zeros(2, *input_size, device=p.device, dtype=p.dtype)  # batch 2: 1 would be specialised
    any_batch = ({0: torch.export.Dim("batch")},)
    if format == "torchscript":
        with torch.no_grad():
            torch.jit.trace(model, example).save(str(path))
        return path
    if format == "pt2":
        torch.export.save(torch.export.export(model, (example,), dynamic_shapes=any_batch), str(path))
        return path
    missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingPackage(f"ONNX export needs the package(s) {', '.join(missing)}: pip install {' '.join(missing)}")
    try:
        with quiet_onnx_exporter():
            torch.onnx.export(model, (example,), str(path), input_names=["images"], output_names=["logits"],
                              dynamic_shapes=any_batch, external_data=False, verbose=False)
    except Exception as e:  # torch's exporter can turn a Ctrl-C into an error of its own while handling it
        if interrupted(e):
            raise KeyboardInterrupt from None
        raise
    return path


@contextlib.contextmanager
def quiet_onnx_exporter():
    """Within it, torch's ONNX exporter says nothing of what does not concern a dnas network: that torchvision,
    whose detection ops it would register, is not installed, and a deprecation inside torch's own pytrees."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*LeafSpec.* is deprecated", category=FutureWarning)
            yield
    finally:
        registration.setLevel(level)


def interrupted(error: BaseException | None) -> bool:
    """Whether ``error`` was raised while handling a KeyboardInterrupt (its context or cause, at any depth)."""
    while error is not None:
        if isinstance(error, KeyboardInterrupt):
            return True
        error = error.__cause__ or error.__context__
    return False


def export_run(run_dir: str | os.PathLike, format: str, weights: str = "last",
               path: str | os.PathLike | None = None) -> Path:
    """Export the trained network of a run directory (``weights`` "last", "best" or a .pt file) to ``path``,
    by default ``<run_dir>/model<suffix>`` (model.onnx, model.pt2, model.pt)."""
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; valid: {', '.join(FORMATS)}")
    if is_lm_run(run_dir):
        raise ValueError(f"{run_dir} is a language model's run; export takes the image networks of dnas train")
    model, saved = load_run(run_dir, weights)
    data = saved["data"]
    return export(model, path or Path(run_dir).expanduser() / f"model{FORMATS[format]}", format,
                  (data["channels"], *data["image_size"]))
