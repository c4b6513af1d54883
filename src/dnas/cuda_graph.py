"""A search step (and the evaluation of each epoch) replayed from a CUDA graph.

A DARTS step launches thousands of small kernels, and on a GPU the host cannot launch them as fast as the
GPU runs them: the original code's supernet forward+backward takes 375 ms on an H100 eagerly and 130 ms
when the same kernels are replayed from one CUDA graph (../shared/reference-figures.md). A graph records
the kernels of one step once; a replay launches all of them at once (``torch.cuda.graph``). What a graph
needs, and how ``GraphedStep`` provides it:

* the same input tensors: each batch is copied into the captured inputs before a replay; a batch of
  another shape (the last, smaller batch of an epoch) has a graph of its own, in the same memory;
* the same Python numbers: a temperature or regulariser weight is baked into the kernels when the step is
  captured, so a search whose parts have schedules captures afresh each epoch (``reset``), after they have
  moved; the learning rate is a device tensor that the scheduler fills (``set_capturable``), so a search
  without (DARTS) captures once;
* no reading of the device on the host inside the step: the second step (the first fills caches) runs
  under ``HostSyncs``, which sees every ATen op; a step that reads the device (GDAS decides on the host
  which sampled op to run) keeps running eagerly, with a warning naming the op and the line;
* warm-up: ``warmup`` eager steps on a side stream before each capture (lazily made optimiser state,
  cuDNN's choice of algorithms). They are real steps of the search, as is the captured one: it is
  replayed right after the capture, which itself runs nothing;
* no autograd graph of an earlier step kept alive: its gradient accumulators stay bound to the stream
  they were made on, and a capture whose backward reaches the default stream fails. A capture that
  raises leaves the step eager, with a warning naming the error.

Random numbers drawn inside the step (Gumbel noise, dropout, SDARTS's perturbation) come out fresh at each
replay: PyTorch's CUDA generator advances its offset per replay.
"""
from __future__ import annotations

import traceback
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .settings import warn

_HOST_READS = {"_local_scalar_dense": "a tensor read on the host (.item(), .tolist(), bool())",
               "nonzero": "nonzero (its size is known only on the device)",
               "masked_select": "masked_select (its size is known only on the device)",
               "unique": "unique", "_unique2": "unique", "unique_dim": "unique",
               "repeat_interleave": "repeat_interleave by a tensor of counts",
               "lift_fresh": "a tensor made from Python data (a host-to-device copy)",
               "equal": "torch.equal", "is_nonzero": "a tensor read on the host (bool())"}
_PACKAGE = str(Path(__file__).resolve().parent)


class HostSyncs(TorchDispatchMode):
    """Records the ops that make the host wait for the device, or copy host data to it, with the first line
    of dnas that called each: none of them may run inside a CUDA-graph capture. Most are seen on any device,
    so that a CPU test can check that a step is capturable; copies between host and device (``.cpu()``,
    ``.tolist()`` of a GPU tensor) only where there is a device."""

    def __init__(self):
        super().__init__()
        self.found: dict[str, str] = {}  # op -> "what (where)"

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        what = _HOST_READS.get(name)
        if what is None and name in ("_to_copy", "copy_"):
            src = args[1] if name == "copy_" else args[0]
            dst = args[0].device if name == "copy_" else (kwargs or {}).get("device")
            if dst is not None and (src.device.type == "cpu") != (torch.device(dst).type == "cpu"):
                what = "a copy between host and device (.cpu(), .tolist(), .to(device))"
        if what is not None and name not in self.found:
            self.found[name] = f"{what} at {_caller()}"
        return func(*args, **(kwargs or {}))


def _caller() -> str:
    """The innermost frame of dnas (outside this module) on the stack."""
    for frame in reversed(traceback.extract_stack()):
        if frame.filename.startswith(_PACKAGE) and not frame.filename.endswith("cuda_graph.py"):
            return f"{Path(frame.filename).relative_to(Path(_PACKAGE).parent)}:{frame.lineno}"
    return "outside dnas"


class GraphPool:
    """The memory that several graphs share, which never run at once: each graph's temporaries are the
    others' too, so that steps sharing a pool take the memory of the largest, not their sum. Its id is
    that of the first graph captured into it (``CUDAGraph.pool()``), and a fresh one once all its graphs are
    gone: PyTorch's allocator refuses to capture into a pool whose graphs have all been released."""

    def __init__(self):
        self.handle, self.graphs = None, 0  # the id, and how many captured graphs live in it

    def captured(self, graph) -> None:
        if self.graphs == 0:
            self.handle = graph.pool()
        self.graphs += 1

    def released(self, graphs: int) -> None:
        self.graphs -= graphs
        if self.graphs == 0:
            self.handle = None


class GraphedStep:
    """``step(*tensors) -> tuple of tensors``, replayed from a CUDA graph once warmed up and captured: one graph
    per shape of the inputs (an epoch's last, smaller batch gets its own, captured at its third call, the
    third epoch of a search that does not ``reset``; a capture that fails for one shape leaves that one eager).

    Call ``reset()`` whenever a Python number the step reads has changed; the next calls warm up and capture
    again. ``eager_reason`` says why the step runs eagerly for good, if it does. Its graphs share one
    ``GraphPool``, and so do those of the steps given the same ``pool``: they must never run at once, and a
    graph's outputs are read before another graph replays (as a search reads its loss)."""

    def __init__(self, step: Callable[..., Sequence[torch.Tensor]], warmup: int = 2, pool: GraphPool | None = None):
        if warmup < 2:
            raise ValueError(f"warmup must be >= 2 eager steps before a capture (the first fills caches, the "
                             f"second is checked for host reads), not {warmup}")
        self.step, self.warmup, self.pool = step, warmup, pool or GraphPool()
        self.graphs: dict[tuple, tuple] = {}  # the inputs' shapes -> (graph, captured inputs, outputs)
        self.eager_reason: str | None = None
        self.eager_shapes: set[tuple] = set()  # shapes whose capture failed where another shape's graph replays
        self.checked = False
        self.replays = 0  # steps replayed so far, over all captures
        self.reset()

    def reset(self) -> None:
        """Drop the captured graphs (and their memory); the next steps warm up and capture afresh."""
        self.pool.released(len(self.graphs))
        self.graphs = {}
        self.warm: dict[tuple, int] = {}  # the inputs' shapes -> eager warm-up steps taken

    def __call__(self, *inputs: torch.Tensor):
        shapes = tuple(t.shape for t in inputs)
        if self.eager_reason is not None or shapes in self.eager_shapes:
            return self.step(*inputs)
        if shapes in self.graphs:
            graph, static, outputs = self.graphs[shapes]
            for s, t in zip(static, inputs):
                s.copy_(t)
            graph.replay()
            self.replays += 1
            return outputs
        warm = self.warm[shapes] = self.warm.get(shapes, 0) + 1
        if warm <= self.warmup:
            if warm < self.warmup or self.checked:
                return self._on_side_stream(inputs)
            self.checked = True  # the last warm-up step of the first capture: does it read the device on the host?
            with HostSyncs() as syncs:
                out = self._on_side_stream(inputs)
            if syncs.found:
                self._run_eagerly(f"it makes the host wait for the GPU ({'; '.join(syncs.found.values())})")
            return out
        static, graph = [t.clone() for t in inputs], torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=self.pool.handle):
                outputs = self.step(*static)
        except Exception as e:  # the capture ran nothing: this step, and those after it, run eagerly
            _end_failed_capture(inputs[0].device)
            reason = f"its capture failed ({type(e).__name__}: {str(e).splitlines()[0]})"
            if self.graphs:  # of these shapes only: the others' graphs replay on
                self.eager_shapes.add(shapes)
                warn(f"{self.name} of inputs {[tuple(t.shape) for t in inputs]} runs eagerly: {reason}")
            else:
                self.reset()
                self._run_eagerly(reason)
            return self.step(*inputs)
        self.graphs[shapes] = graph, static, outputs
        self.pool.captured(graph)
        graph.replay()  # the capture ran nothing: this is the step of these inputs
        self.replays += 1
        return outputs

    def _run_eagerly(self, reason: str) -> None:
        """From now on: the step runs eagerly, for ``reason``, which a warning names."""
        self.eager_reason = reason
        warn(f"{self.name} is not replayed from a CUDA graph, it runs eagerly: {reason}")

    @property
    def name(self) -> str:
        return getattr(self.step, "__name__", "the step").lstrip("_")

    def _on_side_stream(self, inputs):
        """An eager step on a side stream, as CUDA-graph warm-up must be."""
        if inputs[0].device.type != "cuda":
            return self.step(*inputs)
        stream = torch.cuda.Stream(inputs[0].device)
        stream.wait_stream(torch.cuda.current_stream(inputs[0].device))
        with torch.cuda.stream(stream):
            out = self.step(*inputs)
        torch.cuda.current_stream(inputs[0].device).wait_stream(stream)
        return out


def _end_failed_capture(device: torch.device) -> None:
    """After a capture that raised: give the device's random generator a copy of its state outside any
    capture (torch 2.11 leaves it counting offsets for the dead graph, and the next draw raises)."""
    if device.type == "cuda":
        generator = torch.cuda.default_generators[device.index if device.index is not None
                                                  else torch.cuda.current_device()]
        generator.graphsafe_set_state(generator.clone_state())


def set_capturable(optimizer: torch.optim.Optimizer, capturable: bool = True) -> None:
    """Whether an optimiser's step can be replayed from a CUDA graph over the epochs of a search: Adam keeps its
    step counters on the device (``capturable``); SGD runs fused with its learning rate a device tensor, which
    the scheduler fills each epoch (a Python number would be baked into the graph, and PyTorch's multi-tensor
    SGD reads a tensor one on the host). Set again after ``load_state_dict``, which restores the saved
    settings: a run may resume with the graph on or off, on another device."""
    for group in optimizer.param_groups:
        if "capturable" in group:
            group["capturable"] = capturable
            for p in group["params"]:
                state = optimizer.state.get(p, {})
                if "step" in state:
                    state["step"] = state["step"].to(p.device if capturable else "cpu", torch.float32)
        elif isinstance(optimizer, torch.optim.SGD):
            group["fused"], group["foreach"] = (True, False) if capturable else (None, None)
            lr = float(group["lr"])
            group["lr"] = torch.tensor(lr, device=group["params"][0].device) if capturable else lr
            if capturable and group["momentum"] and not group["dampening"]:
                # each weight's momentum from the start: fused SGD takes no weight whose first gradient comes
                # after the others' (a hard relaxation's unsampled op). Zero is what PyTorch's first step
                # makes exact: buffer = momentum * 0 + gradient
                for p in group["params"]:
                    state = optimizer.state[p]
                    if state.get("momentum_buffer") is None:
                        state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
