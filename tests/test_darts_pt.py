"""DARTS-PT (Wang et al., ICLR 2021): the removal measurement, the decisions on constructed supernets, the
protocol's numbers, and tiny real runs on Fashion-MNIST with an interruption in the middle of the projection."""
import copy
import dataclasses
import importlib
import json
import math
from types import SimpleNamespace

import pytest
import torch

import dnas
from dnas import projection
from dnas.data import BatchLoader
from dnas.methods import get_method
from dnas.ops import DARTS_OPS, OPS
from dnas.projection import Perturbation, evaluate
from dnas.search import Search, SearchConfig
from dnas.selection import SELECTIONS
from dnas.spaces.darts import DartsSupernet

OPS3 = ("max_pool_3x3", "skip_connect", "sep_conv_3x3")
PT = get_method("darts-pt")
QUICK = dict(tune_epochs=1, tune_steps=2, eval_batches=1)  # the paper's protocol, shortened


def constructed_supernet():
    """A tiny supernet (its only normal cell is cells[0]) and a loader of 64 fixed images."""
    torch.manual_seed(0)
    model = DartsSupernet(num_classes=10, in_channels=1, C=4, layers=3, nodes=2, ops=OPS3)
    x = torch.randint(0, 256, (64, 1, 12, 12), dtype=torch.uint8)
    loader = BatchLoader(x, torch.zeros(64), 32, (0.5,), (0.25,), generator=torch.Generator())
    return model, loader


def label_with_own_predictions(model, loader):
    """Make the labels the supernet's own predictions, so that the whole supernet scores 1.0."""
    with torch.no_grad():
        model.train()
        loader.y = torch.cat([model(x).argmax(1) for x, _ in loader])
    assert evaluate(model, loader)["val_acc"] == 1.0


def silence(op):
    """Zero an op's convolutions: its output is then exactly 0, whatever its alpha."""
    for p in op.parameters():
        p.data.zero_()


# -- the measurement --------------------------------------------------------------------------------------
def test_removing_an_op_zeroes_its_weight_and_leaves_the_others_as_they_are():
    model, loader = constructed_supernet()
    model.alphas["normal"].data.normal_()
    zeroed = copy.deepcopy(model)
    zeroed.cells[0].edges[0].ops[2] = OPS.get("none")(4, 1, False)  # sep_conv_3x3 outputs nothing
    before = {n: b.clone() for n, b in model.named_buffers()}

    removed = evaluate(model, loader, removed=("normal", 0, [2]))
    assert removed["val_loss"] == pytest.approx(evaluate(zeroed, loader)["val_loss"], rel=1e-6)
    for n, b in model.named_buffers():  # measured in training mode, the running statistics kept
        assert torch.equal(b, before[n]), n
    assert model.op_scale is None

    renormalised = copy.deepcopy(model)  # not what the paper does: the op mask renormalises over the others
    renormalised.op_mask["normal"][0, 2] = False
    x = next(iter(loader))[0]
    assert (renormalised(x) - zeroed(x)).abs().max() > 1e-3

    dropped = copy.deepcopy(model)  # removing every op of an edge is dropping the edge
    dropped.op_mask["normal"][3] = False
    assert evaluate(model, loader, removed=("normal", 3, [0, 1, 2]))["val_loss"] == pytest.approx(
        evaluate(dropped, loader)["val_loss"], rel=1e-6)


def test_the_op_that_matters_is_kept_where_the_largest_alpha_contributes_nothing():
    model, loader = constructed_supernet()
    mask = model.op_mask["normal"]
    mask[1:] = torch.tensor([False, False, True])  # every other normal edge decided (sep_conv_3x3)
    model.alphas["normal"].data[0] = torch.tensor([-30.0, 2.0, 3.0])  # sep_conv_3x3 has the largest alpha ...
    silence(model.cells[0].edges[0].ops[2])  # ... and contributes nothing; skip_connect carries the edge
    assert OPS3[int(model.strengths()["normal"][0].argmax())] == "sep_conv_3x3"  # what magnitude would keep
    label_with_own_predictions(model, loader)

    selection = Perturbation()
    selection.generator = torch.Generator().manual_seed(0)
    record = selection.decide_op(SimpleNamespace(model=model, val_loader=loader), "normal")

    scores = {c["op"]: c["val_acc"] for c in record["candidates"]}
    assert (record["edge"], record["node"], record["input"]) == (0, 2, 0)  # the only open edge
    assert scores["sep_conv_3x3"] == 1.0 == record["supernet"]["val_acc"]  # removing it changes nothing
    assert scores["skip_connect"] < 1.0
    assert record["choice"] == "skip_connect"
    assert mask[0].tolist() == [False, True, False]  # the edge is discretised with the op mask
    assert selection.decide_op(SimpleNamespace(model=model, val_loader=loader), "normal") is None


def test_topology_keeps_the_two_inputs_whose_removal_hurts_most():
    model, loader = constructed_supernet()
    model.op_mask["normal"][:] = torch.tensor([False, False, True])  # every edge decided: sep_conv_3x3
    silence(model.cells[0].edges[3].ops[2])  # node 3's edge from input 1 contributes nothing
    label_with_own_predictions(model, loader)

    selection = Perturbation()
    selection.generator = torch.Generator().manual_seed(0)
    record = selection.decide_topology(SimpleNamespace(model=model, val_loader=loader), "normal")

    assert (record["node"], record["edges"]) == (3, [2, 3, 4])  # node 2 has only 2 inputs: nothing to decide
    assert [c["input"] for c in record["candidates"]] == [0, 1, 2]
    assert record["candidates"][1]["val_acc"] == 1.0
    assert record["choice"] == [0, 2]
    assert model.op_mask["normal"].any(-1).tolist() == [True, True, True, False, True]
    assert model.derive(selection).normal == (("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
                                              ("sep_conv_3x3", 0), ("sep_conv_3x3", 2))


# -- the protocol -------------------------------------------------------------------------------------------
def test_the_protocol_is_the_papers():
    selection = PT.build("selection")
    assert isinstance(selection, Perturbation)
    # the code's exp_scripts/darts-proj-sota.sh (proj_intv 5, crit acc) and projection.py (lr / 10)
    assert (selection.tune_epochs, selection.lr_scale, selection.criterion) == (5, 0.1, "accuracy")
    assert (selection.eval_batches, selection.tune_steps) == (None, None)  # the whole validation half
    # DARTS cell: 14 edges, then the 3 nodes with more than 2 inputs; 5 epochs after each step, 1 after the last
    steps = selection.schedule(DartsSupernet(C=2, layers=3))
    assert steps == ["op"] * 14 + ["topology"] * 3
    assert selection.tuning_epochs(len(steps)) == 81
    # the supernet is a DARTS one (first order, 50 epochs, lr 0.025 to 0.001) over the code's space s5: no `none`
    assert (PT.part("space"), PT.part("relaxation"), PT.part("arch_grad")) == ("darts", "softmax", "first_order")
    assert tuple(PT.config["space_options"]["ops"]) == DARTS_OPS[1:]
    config = SearchConfig()
    assert (config.epochs, config.lr * selection.lr_scale, config.lr_min) == (50, pytest.approx(0.0025), 0.001)
    assert "darts-pt" in dnas.builtin_methods() and PT.year == 2021 and "2108.04392" in PT.paper


def test_bad_options_fail_clearly():
    for options, message in (({"tune_epochs": -1}, "tune_epochs must be an integer >= 0"),
                             ({"eval_batches": 0}, "eval_batches must be an integer >= 1 or None"),
                             ({"tune_steps": 1.5}, "tune_steps must be an integer >= 1"),
                             ({"lr_scale": 0}, "lr_scale must be > 0"),
                             ({"criterion": "acc"}, "valid: accuracy, loss")):
        with pytest.raises(ValueError, match=message):
            Perturbation(**options)
    with pytest.raises(KeyError, match="perturbation"):  # the valid names include it
        SELECTIONS.get("perturb")
    with pytest.raises(ValueError, match="needs a space with an op mask"):
        Perturbation().after_search(SimpleNamespace(model=torch.nn.Linear(1, 1), config=SearchConfig()))


# -- tiny real runs ---------------------------------------------------------------------------------------
def tiny_search(run_dir, **selection) -> Search:
    """DARTS-PT on Fashion-MNIST: 1 search epoch of a 3-cell supernet with 2 nodes, the projection shortened."""
    method = dataclasses.replace(PT, parts={**PT.parts, "selection": {**PT.parts["selection"], **QUICK, **selection}})
    config = SearchConfig(method="darts-pt", dataset="fashion-mnist", epochs=1, batch_size=16, subset=128,
                          space_options={**PT.config["space_options"], "C": 4, "layers": 3, "nodes": 2})
    return Search(config, run_dir, method)


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def whole(fashion_mnist_root, tmp_path_factory):
    """An uninterrupted tiny run: its search and result."""
    search = tiny_search(tmp_path_factory.mktemp("darts-pt") / "whole")
    return search, search.run(progress=False)


def test_a_tiny_run_projects_both_cells_and_its_genotype_honours_the_decisions(whole):
    search, result = whole
    run = result.run_dir
    assert {"projection.jsonl", "tuning.jsonl", "genotype.txt"} <= {p.name for p in run.iterdir()}
    assert len(result.metrics) == 1  # the search's epochs; the tuning epochs have their own file
    decisions = lines(run / "projection.jsonl")
    # 5 op steps and 1 topology step (node 3), each in both cells, edges in a random order
    assert [(d["step"], d["cell"]) for d in decisions] == [(s, c) for s in range(1, 7) for c in ("normal", "reduce")]
    orders, kept = [], {}
    for cell in ("normal", "reduce"):
        ops = {d["edge"]: d for d in decisions if d["cell"] == cell and d["kind"] == "op"}
        orders.append(list(ops))
        assert sorted(ops) == [0, 1, 2, 3, 4]
        (topology,) = [d for d in decisions if d["cell"] == cell and d["kind"] == "topology"]
        kept[cell] = topology["choice"]
        for d in [*ops.values(), topology]:  # each choice: whose removal scored lowest, ties by the higher loss
            scores = [(c["val_acc"], -c["val_loss"]) for c in d["candidates"]]
            best = sorted(range(len(scores)), key=lambda i: scores[i])[: 1 if d["kind"] == "op" else 2]
            label = "op" if d["kind"] == "op" else "input"
            assert d["choice"] == (d["candidates"][best[0]][label] if d["kind"] == "op"
                                   else sorted(d["candidates"][i][label] for i in best))
        # the genotype: node 2 keeps both inputs, node 3 the 2 chosen; each edge the op chosen for it
        expected = [(ops[e]["choice"], j) for e, j in ((0, 0), (1, 1))]
        expected += [(ops[2 + j]["choice"], j) for j in topology["choice"]]
        assert list(getattr(result.genotype, cell)) == expected
    assert "none" not in str(result.genotype)
    assert any(order != sorted(order) for order in orders)

    tuning = lines(run / "tuning.jsonl")
    assert [t["tune_epoch"] for t in tuning] == list(range(1, 7))  # 1 after each of the 6 steps (the last: 1)
    assert [t["after_step"] for t in tuning] == [1, 2, 3, 4, 5, 6]
    cosine = [0.001 + 0.5 * (0.0025 - 0.001) * (1 + math.cos(math.pi * k / 6)) for k in range(6)]
    assert [t["lr"] for t in tuning] == pytest.approx(cosine)  # a tenth of 0.025, annealed to 0.001
    assert tuning[-1]["genotype"] == str(result.genotype)
    assert all(d["tune_epoch"] == d["step"] - 1 for d in decisions)

    # the alphas went on training in the tuning; the checkpoint holds the projected supernet
    searched = torch.tensor(lines(run / "alphas.jsonl")[-1]["alphas"]["normal"])
    assert not torch.equal(search.model.alphas["normal"].detach(), searched)
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    for cell in ("normal", "reduce"):
        assert state["model"][f"op_mask_{cell}"].sum(-1).tolist() == [1, 1] + [int(j in kept[cell]) for j in range(3)]


@pytest.mark.slow
def test_resume_in_the_middle_of_the_projection_ends_as_an_uninterrupted_run(whole, tmp_path, monkeypatch):
    whole = whole[1]

    def interrupt_at(name, call, module=projection):  # Ctrl-C at a given call of module.<name>
        original, calls = getattr(module, name), []

        def interrupted(*args, **kwargs):
            calls.append(1)
            if len(calls) == call:
                raise KeyboardInterrupt
            return original(*args, **kwargs)
        monkeypatch.setattr(module, name, interrupted)

    cut = tmp_path / "cut"
    interrupt_at("evaluate", 2 * 16 + 8 + 3)  # step 3: the normal cell decided (8 measurements), not the reduce
    with pytest.raises(KeyboardInterrupt):
        tiny_search(cut).run(progress=False)
    monkeypatch.undo()
    assert [(d["step"], d["cell"]) for d in lines(cut / "projection.jsonl")][-1] == (3, "normal")
    assert not (cut / "genotype.txt").exists()

    # resumed: tuning epoch 3, step 4 decided, then the middle of tuning epoch 4
    interrupt_at("bilevel_step", 4, importlib.import_module("dnas.search"))
    with pytest.raises(KeyboardInterrupt):
        dnas.search(resume=cut, progress=False)
    monkeypatch.undo()
    assert len(lines(cut / "tuning.jsonl")) == 3

    resumed = dnas.search(resume=cut, progress=False)
    assert resumed.genotype == whole.genotype
    assert (cut / "projection.jsonl").read_text() == (whole.run_dir / "projection.jsonl").read_text()
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert strip(lines(cut / "tuning.jsonl")) == strip(lines(whole.run_dir / "tuning.jsonl"))
    ends = [torch.load(d / "checkpoint.pt", weights_only=True) for d in (cut, whole.run_dir)]
    for key, value in ends[1]["model"].items():
        assert torch.equal(ends[0]["model"][key], value), key
