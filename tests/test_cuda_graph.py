"""The search step replayed from a CUDA graph (cuda_graph.py), and in bf16 autocast.

On any machine: a step of every recipe but GDAS reads nothing of the device on the host (the condition of a
capture), checked by the dispatch mode the search itself uses. On a GPU: the replayed steps compute what
eager steps compute, and a search with ``cuda_graph`` runs, replays and resumes.
"""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import dnas
from dnas import ops
from dnas.cuda_graph import GraphPool, GraphedStep, HostSyncs, set_capturable
from dnas.methods import builtin_methods
from dnas.search import Search, SearchConfig, bilevel_step, optimizers
from dnas.spaces.darts import DartsSupernet
from dnas.spaces.fused import dense_samples, side_streams
from dnas.spaces.nb201 import NB201Supernet

from conftest import recipe_parts

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: CUDA graphs")
SAMPLES_ON_HOST = {"gdas"}  # the hard relaxation decides on the host which op of each edge runs (but within
# fused.dense_samples)


def recipe_step(name: str, fused: bool, device="cpu", dtype=torch.float32, space="darts",
                layout=torch.contiguous_format):
    """A small supernet of a recipe in ``layout`` with its optimisers (SGD fused with its lr a device tensor, Adam
    with its step counter on the device, as a capture needs), and its bilevel step as a function of four
    tensors. The supernet takes its layout before the optimisers their state (fused SGD's momentum buffers, made
    in its weights' strides, must keep them: the kernel compares them)."""
    method, parts = recipe_parts(name)
    options = method.space_options(space)
    torch.manual_seed(0)
    size = {"C": 4, "N": 1} if space == "nb201" else {"C": 4, "layers": 3}
    model = (NB201Supernet if space == "nb201" else DartsSupernet)(
        10, 3, relaxation=parts.relaxation, edge=parts.edge, fused=fused, **size, **options)
    model = model.to(device, dtype, memory_format=layout)
    w_opt, _ = optimizers(model, SearchConfig())
    set_capturable(w_opt)  # fused, its lr a device tensor, as a replayed search has it
    a_opt = torch.optim.Adam(model.arch_parameters(), 3e-4, betas=(0.5, 0.999), weight_decay=1e-3,
                             **({"capturable": True} if device == "cuda" else {"fused": True}))
    step = lambda x, y, vx, vy: bilevel_step(model, parts, a_opt, w_opt, (x, y), (vx, vy), 5.0)
    return model, step


def batches(n: int, device="cpu", dtype=torch.float32, sizes=(4,)):
    """``n`` (images, labels, val images, val labels) of 8 x 8 images, of ``sizes`` images in turn."""
    g = torch.Generator().manual_seed(1)
    image = lambda b: torch.randn(b, 3, 8, 8, generator=g, dtype=dtype).to(device)
    label = lambda b: torch.randint(0, 10, (b,), generator=g).to(device)
    return [(image(b), label(b), image(b), label(b)) for b in (sizes[i % len(sizes)] for i in range(n))]


@pytest.mark.parametrize("space, fused", [("darts", False), ("darts", True), ("nb201", True)],
                         ids=["readable", "fused", "fused-nb201"])
@pytest.mark.parametrize("name", sorted(set(builtin_methods()) - SAMPLES_ON_HOST))
def test_step_reads_nothing_on_the_host(name, fused, space):
    """No .item(), no nonzero, no tensor made from Python data inside a step once its plans are cached: a
    GPU never waits for the host, and the step can be captured whole. (What a recipe adds to the step, its
    relaxation, edges and gradient, is the same code in both spaces; their cells, the readable one and the
    fused path's batches, differ: the NAS-Bench-201 network is checked fused.)"""
    _, step = recipe_step(name, fused, space=space)
    first, second = batches(2)
    step(*first)
    with HostSyncs() as syncs:
        step(*second)
    assert syncs.found == {}


@pytest.mark.parametrize("space", ["darts", "nb201"])
def test_a_sample_kept_on_the_device_reads_nothing_on_the_host(space):
    """GDAS's fused cells within ``dense_samples``: every op runs, weighed by the sample, which stays on the
    device; the step can be captured."""
    with dense_samples():
        _, step = recipe_step("gdas", True, space=space)
        first, second = batches(2)
        step(*first)
        with HostSyncs() as syncs:
            step(*second)
    assert syncs.found == {}


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_the_gpu_convolution_forms_read_nothing_on_the_host(layout, monkeypatch):
    """The forms a GPU runs the convolutions in (ops.FORM_DEVICES: depthwise NHWC and by phases, grouped 1x1
    as matrix products, block-diagonal in NHWC), here on the CPU, keep a second-order step capturable."""
    monkeypatch.setattr(ops, "FORM_DEVICES", ("cpu",))
    model, step = recipe_step("darts-v2", fused=True, layout=layout)
    first, second = ([t.contiguous(memory_format=layout) if t.dim() == 4 else t for t in b] for b in batches(2))
    step(*first)
    with HostSyncs() as syncs:
        step(*second)
    assert syncs.found == {}


def test_host_reads_are_named_with_their_line():
    _, step = recipe_step("gdas", fused=True)
    first, second = batches(2)
    step(*first)
    with HostSyncs() as syncs:
        step(*second)
    # on the CPU: each newly sampled pattern of ops gets a plan of index tensors (on a GPU, moreover, the
    # sampled ops are copied to the host)
    assert any("dnas/spaces/" in where for where in syncs.found.values())
    with HostSyncs() as syncs:
        torch.ones(3).sum().item()
        torch.tensor([1, 2]).nonzero()
    assert set(syncs.found) == {"_local_scalar_dense", "nonzero", "lift_fresh"}


def test_warmup_must_be_a_step():
    with pytest.raises(ValueError, match="warmup"):
        GraphedStep(lambda x: (x,), warmup=1)


class FakeGraph:
    """Stands in for torch.cuda.CUDAGraph on the CPU: what the step records while capturing runs at replay;
    ``captured_into`` is the pool id it was given, ``pool()`` its own (a new one where it was given none)."""

    capturing: "FakeGraph | None" = None
    pools = 0

    def __init__(self):
        self.kernels = []

    def pool(self):
        return self.captured_into

    def replay(self):
        for kernel in self.kernels:
            kernel()


class Doubling:
    """A step ``x -> (2x,)`` that, like a real capture, computes nothing while capturing."""

    def __init__(self):
        self.eager = 0

    def __call__(self, x):
        out = torch.empty_like(x)
        if FakeGraph.capturing is not None:
            FakeGraph.capturing.kernels.append(lambda: out.copy_(2 * x))
        else:
            self.eager += 1
            out.copy_(2 * x)
        return (out,)


@pytest.fixture
def fake_cuda_graphs(monkeypatch):
    from contextlib import contextmanager

    @contextmanager
    def graph(g, pool=None):
        if pool is None:
            FakeGraph.pools += 1
            pool = f"pool {FakeGraph.pools}"
        FakeGraph.capturing, g.captured_into = g, pool
        try:
            yield
        finally:
            FakeGraph.capturing = None

    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", graph)


def test_graphed_step_warms_up_captures_replays_and_resets(fake_cuda_graphs):
    step = Doubling()
    graphed = GraphedStep(step)
    for i in range(1, 6):  # 2 warm-up steps, the capture (replayed at once), 2 replays
        x = torch.full((3,), float(i))
        assert torch.equal(graphed(x)[0], 2 * x)
    assert step.eager == 2 and graphed.replays == 3
    for i in range(4):  # another shape (an epoch's last batch): its own warm-up and graph
        assert torch.equal(graphed(torch.full((2,), float(i)))[0], torch.full((2,), 2.0 * i))
    assert step.eager == 4 and graphed.replays == 5 and len(graphed.graphs) == 2
    assert torch.equal(graphed(torch.ones(3))[0], 2 * torch.ones(3)) and graphed.replays == 6
    graphed.reset()  # a new epoch: warm up and capture again (the host reads are checked once only)
    for i in range(3):
        graphed(torch.ones(3))
    assert step.eager == 6 and graphed.replays == 7


def test_graphed_steps_share_a_pool_while_one_of_its_graphs_lives(fake_cuda_graphs):
    """The graphs of steps given one GraphPool, and those of one step, capture into one pool id; once they are
    all released the next capture takes a fresh one (PyTorch's allocator refuses an id whose graphs are gone)."""
    pool = GraphPool()
    graphed = [GraphedStep(Doubling(), pool=pool) for _ in range(2)]
    for g in graphed:
        for x in (torch.ones(3),) * 3 + (torch.ones(2),) * 3:
            g(x)
    first = [graph.captured_into for g in graphed for graph, _, _ in g.graphs.values()]
    assert len(first) == 4 and len(set(first)) == 1 and pool.graphs == 4
    graphed[0].reset()  # the other step's graphs still hold the pool: the same id
    for _ in range(3):
        graphed[0](torch.ones(3))
    assert graphed[0].graphs[(torch.Size([3]),)][0].captured_into == first[0]
    for g in graphed:
        g.reset()
    assert pool.graphs == 0 and pool.handle is None
    for _ in range(3):
        graphed[1](torch.ones(3))
    assert graphed[1].graphs[(torch.Size([3]),)][0].captured_into not in (None, first[0])


class EagerGraphedStep:
    """Stands in for a search's ``GraphedStep`` on the CPU: runs the step, counts the resets."""

    def __init__(self, step):
        self.step, self.resets = step, 0

    def __call__(self, *inputs):
        return self.step(*inputs)

    def reset(self):
        self.resets += 1


@pytest.mark.parametrize("method, settings, resets", [
    ("darts-v1", {}, 1),  # captured once, for all epochs (and dropped after the last)
    ("pc-darts", {"arch_warmup_epochs": 1}, 2),  # and again at the first epoch that moves the alphas
    ("darts-minus", {}, 3),  # a part with a schedule (DARTS-'s beta): captured afresh each epoch
])
def test_a_search_recaptures_its_graphs_only_when_its_steps_change(fashion_mnist_root, tmp_path, method,
                                                                   settings, resets):
    """With the weights' lr a device tensor (fused SGD, which the scheduler fills), on the CPU here."""
    config = SearchConfig(method=method, dataset="fashion-mnist", subset=96, batch_size=16, epochs=3,
                          space_options={"C": 4, "layers": 3, "nodes": 2}, **settings)
    search = Search(config, tmp_path / "r")
    set_capturable(search.w_optimizer)
    search.graph, search.eval_graph = EagerGraphedStep(search._bilevel_step), EagerGraphedStep(search._eval_batch)
    metrics = search.run(progress=False).metrics
    assert search.graph.resets == search.eval_graph.resets == resets + 1
    assert [m["lr"] for m in metrics] == pytest.approx([0.001 + 0.024 * (1 + math.cos(math.pi * e / 3)) / 2
                                                        for e in range(3)])  # cosine over 3 epochs, as floats
    assert isinstance(search.w_optimizer.param_groups[0]["lr"], torch.Tensor)


def test_graphed_step_stays_eager_when_the_step_reads_the_host(fake_cuda_graphs):
    def step(x):
        return (x * float(x.sum()),)  # float() of a tensor reads it on the host

    graphed = GraphedStep(step)
    with pytest.warns(UserWarning, match=r"runs eagerly.*read on the host"):
        for _ in range(5):
            graphed(torch.ones(2))
    assert graphed.replays == 0 and graphed.graphs == {}


class ReadsTheHostWhenCaptured(Doubling):
    """Reads the host at the third call only, past the warm-up step that is checked: its capture fails."""

    def __call__(self, x):
        if FakeGraph.capturing is not None or (x.is_cuda and torch.cuda.is_current_stream_capturing()):
            float(x.sum())
            if not x.is_cuda:
                raise RuntimeError("operation not permitted when stream is capturing")
        return super().__call__(x)


def test_a_failed_capture_leaves_the_step_eager(fake_cuda_graphs):
    step = ReadsTheHostWhenCaptured()
    graphed = GraphedStep(step)
    with pytest.warns(UserWarning, match=r"runs eagerly: its capture failed \(RuntimeError: operation not"):
        outs = [graphed(torch.full((3,), float(i)))[0] for i in range(5)]
    assert [o.tolist() for o in outs] == [[2.0 * i] * 3 for i in range(5)]
    assert graphed.replays == 0 and graphed.graphs == {} and step.eager == 5


class FailsCapturingShape(Doubling):
    """Its capture fails for inputs of ``shape`` only."""

    def __init__(self, shape):
        super().__init__()
        self.shape = shape

    def __call__(self, x):
        if FakeGraph.capturing is not None and x.shape == self.shape:
            raise RuntimeError("operation not permitted when stream is capturing")
        return super().__call__(x)


def test_a_failed_capture_of_another_shape_leaves_that_shape_eager_only(fake_cuda_graphs):
    """An epoch's last, smaller batch whose capture fails runs eagerly from then on, with a warning naming its
    shape; the full batches' graph replays on, also after a reset."""
    step = FailsCapturingShape(torch.Size([2]))
    graphed = GraphedStep(step)
    for _ in range(3):
        graphed(torch.ones(3))
    with pytest.warns(UserWarning, match=r"step of inputs \[\(2,\)\] runs eagerly: its capture failed"):
        for _ in range(3):
            graphed(torch.ones(2))
    outs = [graphed(torch.full((n,), 2.0))[0] for n in (3, 2, 3)]
    assert [o.tolist() for o in outs] == [[4.0] * 3, [4.0] * 2, [4.0] * 3]
    assert graphed.eager_reason is None and list(graphed.graphs) == [(torch.Size([3]),)]
    assert graphed.replays == 3 and step.eager == 2 + 3 + 1  # warm-ups; the smaller shape's every call
    graphed.reset()
    for _ in range(4):
        graphed(torch.ones(2))
    assert step.eager == 2 + 3 + 1 + 4


@CUDA
def test_a_failed_capture_leaves_the_step_eager_and_random_draws_working():
    graphed = GraphedStep(ReadsTheHostWhenCaptured())
    with pytest.warns(UserWarning, match="its capture failed"):
        outs = [graphed(torch.full((3,), float(i), device="cuda"))[0] for i in range(4)]
    assert [o.tolist() for o in outs] == [[2.0 * i] * 3 for i in range(4)]
    assert graphed.replays == 0 and torch.randn(4, device="cuda").isfinite().all()


def test_a_run_saved_with_the_graph_on_resumes_without_it(fashion_mnist_root, tmp_path):
    """A --fast run from a GPU (Adam's step counters on the device, SGD fused with its lr a device tensor)
    continues on a machine without one."""
    config = SearchConfig(method="darts-v1", dataset="fashion-mnist", subset=64, batch_size=16, epochs=1,
                          space_options={"C": 4, "layers": 3, "nodes": 2})
    Search(config, tmp_path / "r").run(progress=False)
    state = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    for group in state["a_optimizer"]["param_groups"]:
        group["capturable"] = True
    for group in state["w_optimizer"]["param_groups"]:
        group["fused"], group["foreach"], group["lr"] = True, False, torch.tensor(group["lr"])
    torch.save(state, tmp_path / "r" / "checkpoint.pt")
    resumed = Search(dataclasses.replace(config, epochs=2), tmp_path / "r")
    resumed.load_checkpoint()
    assert len(resumed.run(progress=False).metrics) == 2
    assert not resumed.a_optimizer.param_groups[0]["capturable"]
    group = resumed.w_optimizer.param_groups[0]
    assert not group["fused"] and isinstance(group["lr"], float)


def replayed_against_eager(name: str, data) -> GraphedStep:
    """The steps of a recipe on ``data`` in float64, replayed and run eagerly: their losses and then the
    models' states the same to float64 rounding. Returns the graphed step."""
    eager_model, eager_step = recipe_step(name, True, "cuda", torch.float64)
    graph_model, graph_step = recipe_step(name, True, "cuda", torch.float64)
    graphed = GraphedStep(graph_step)
    for batch in data:
        loss_e, _ = eager_step(*batch)
        loss_g, _ = graphed(*batch)
        torch.testing.assert_close(loss_g, loss_e, rtol=1e-9, atol=0)
    assert graphed.eager_reason is None
    assert_same_state(eager_model, graph_model)
    return graphed


@CUDA
@pytest.mark.parametrize("name", ["darts-v1", "darts-v2", "pc-darts", "fair-darts", "idarts", "beta-darts"])
def test_replayed_steps_equal_eager_steps(name):
    """Deterministic recipes: after warm-up, capture and replays, the model and optimiser state equal those of
    the same steps run eagerly."""
    assert replayed_against_eager(name, batches(6, "cuda", torch.float64)).replays == 6 - 2


@CUDA
@pytest.mark.parametrize("name", ["darts-v1", "darts-v2"])
def test_an_epochs_last_smaller_batch_replays_its_own_graph_in_the_same_memory(name):
    """Four epochs of three batches of 4 and a last one of 3: each size warms up, is captured and replays its
    own graph, both in one memory pool (the full batches' replaying after the smaller one's capture, in its
    memory), and the steps equal those run eagerly."""
    graphed = replayed_against_eager(name, batches(16, "cuda", torch.float64, sizes=(4, 4, 4, 3)))
    assert graphed.replays == (12 - 2) + (4 - 2) and len(graphed.graphs) == 2
    assert len({graph.pool() for graph, _, _ in graphed.graphs.values()}) == 1


def assert_same_state(reference, other) -> None:
    """Every parameter and buffer of ``other`` equals ``reference``'s, to float64 rounding."""
    for (n, a), b in zip(reference.state_dict().items(), other.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12, msg=lambda m: f"{n}: {m}")


@CUDA
@pytest.mark.parametrize("name, layout", [("darts-v1", torch.channels_last), ("darts-v2", torch.contiguous_format),
                                          ("pc-darts", torch.channels_last)])
def test_side_streams_compute_what_one_stream_computes(name, layout):
    """The fused cells' independent ops on side streams (``fused.side_streams``), eager in the warm-up steps
    and replayed from the graph they were captured into, forward and backward, in float64: the model and
    optimiser state equal those of the same steps on one stream. A lane that read a tensor before the
    stream writing it had finished would differ."""
    to = lambda t: t.contiguous(memory_format=layout) if t.dim() == 4 else t
    data = [tuple(map(to, batch)) for batch in batches(6, "cuda", torch.float64)]
    models, steps = zip(*(recipe_step(name, True, "cuda", torch.float64, layout=layout) for _ in range(2)))
    graphed = GraphedStep(steps[1])
    for batch in data:
        loss, _ = steps[0](*batch)
        with side_streams(4):
            loss_lanes, _ = graphed(*batch)
        torch.testing.assert_close(loss_lanes, loss, rtol=1e-9, atol=0)
    assert graphed.eager_reason is None and graphed.replays == len(data) - 2
    assert_same_state(*models)


@CUDA
@pytest.mark.parametrize("name", ["sdarts-rs", "drnas", "snas", "noisy-darts", "darts-minus"])
def test_random_recipes_replay_fresh_draws(name):
    _, step = recipe_step(name, True, "cuda")
    graphed = GraphedStep(step)
    losses = [float(graphed(*batch)[0]) for batch in batches(5, "cuda")]
    assert graphed.eager_reason is None and graphed.replays == 3
    assert all(torch.isfinite(torch.tensor(losses)))


@CUDA
def test_bf16_steps_replay():
    from dnas.search import precision

    _, step = recipe_step("darts-v2", True, "cuda")

    def bf16_step(*batch):
        with precision("cuda", "bf16"):
            return step(*batch)

    graphed = GraphedStep(bf16_step)
    losses = [graphed(*batch)[0].item() for batch in batches(5, "cuda")]
    assert graphed.replays == 3 and all(map(math.isfinite, losses))


@CUDA
@pytest.mark.parametrize("space", ["darts", "nb201"])
def test_gdas_with_its_sample_on_the_device_replays(space):
    """Within ``dense_samples`` GDAS's step is captured and replayed."""
    with dense_samples():
        _, step = recipe_step("gdas", True, "cuda", space=space)
        graphed = GraphedStep(step)
        losses = [float(graphed(*batch)[0]) for batch in batches(5, "cuda")]
    assert graphed.eager_reason is None and graphed.replays == 3
    assert all(map(math.isfinite, losses))


@CUDA
def test_gdas_runs_eagerly_with_a_warning():
    _, step = recipe_step("gdas", True, "cuda")
    graphed = GraphedStep(step)
    with pytest.warns(UserWarning, match="runs eagerly"):
        for batch in batches(4, "cuda"):
            graphed(*batch)
    assert graphed.replays == 0 and "darts.py" in graphed.eager_reason


@CUDA
def test_search_with_cuda_graph_runs_replays_and_resumes(fashion_mnist_root, tmp_path):
    config = SearchConfig(method="darts-v1", dataset="fashion-mnist", subset=680, batch_size=32, epochs=3,
                          device="cuda", cuda_graph=True, space_options={"C": 4, "layers": 3, "fused": True})
    first = Search(config, tmp_path / "r")
    metrics = first.run(progress=False).metrics
    # 10 steps of 32 images an epoch and one of 20: the full ones 2 eager, then captured once and replayed over
    # the epochs (the lr a device tensor); the smaller one eager in the first two epochs, replayed in the third
    assert first.graph.replays == (30 - 2) + (3 - 2)
    assert first.eval_graph.replays == (30 - 2) + (3 - 2)  # likewise the evaluation's 10 + 1 batches an epoch
    assert [m["lr"] for m in metrics] == pytest.approx([0.025, 0.019, 0.007])  # cosine over 3 epochs
    rng = first.val_loader.generator.get_state()
    replayed = first.evaluate()
    first.val_loader.generator.set_state(rng)
    first.eval_graph = None
    eager = first.evaluate()
    assert replayed["val_acc"] == eager["val_acc"]
    assert replayed["val_loss"] == pytest.approx(eager["val_loss"], rel=1e-5)
    resumed = Search(dataclasses.replace(config, epochs=4), tmp_path / "r")
    resumed.load_checkpoint()
    result = resumed.run(progress=False)
    assert resumed.graph.replays == 8 and len(result.metrics) == 4
    assert all(s["step"].device.type == "cuda" for s in resumed.a_optimizer.state.values())


class Dtypes(TorchDispatchMode):
    """The dtypes the convolutions of a step run in."""

    def __init__(self):
        super().__init__()
        self.conv = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ == "convolution":
            self.conv.add(args[0].dtype)
        return func(*args, **(kwargs or {}))


@pytest.mark.slow
@pytest.mark.parametrize("method, channels_last", [("darts-v1", False), ("darts-v2", False), ("gdas", True),
                                                   ("pc-darts", True)])
def test_bf16_search_runs_its_convolutions_in_bf16(fashion_mnist_root, tmp_path, method, channels_last):
    """--precision bf16: the step's convolutions in bf16 (second order too: its in-place finite-difference
    shifts of the weights reach the casts, which are not cached; a hard relaxation's sums of bf16 ops and
    fp32 straight-through terms; NHWC), the run ends with a genotype."""
    config = SearchConfig(method=method, dataset="fashion-mnist", subset=64, batch_size=16, epochs=1,
                          precision="bf16", channels_last=channels_last,
                          space_options={"C": 4, "layers": 3, "nodes": 2, "fused": True})
    search = Search(config, tmp_path / "r")
    (x, y), (vx, vy) = next(iter(search.train_loader)), next(iter(search.val_loader))
    with Dtypes() as seen:
        loss, _ = search.step((x, y), (vx, vy))
    assert seen.conv == {torch.bfloat16} and loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(p.dtype == torch.float32 for p in search.model.parameters())
    result = search.run(progress=False)
    assert len(result.metrics) == 1 and result.genotype is not None


def test_unknown_precision_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown precision 'fp16'; valid: fp32, tf32, bf16"):
        dnas.search(method="darts-v1", precision="fp16", run_dir=tmp_path / "r")
