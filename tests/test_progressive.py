"""P-DARTS: op-space pruning between stages, skip dropout, the skip limit, and a real staged run that resumes."""
import json
import math

import pytest
import torch

import dnas
from dnas.edges import SkipDropout
from dnas.methods import builtin_methods
from dnas.progressive import Progressive
from dnas.report import load_run
from dnas.search import Search
from dnas.spaces.darts import candidate_ops

OPS = ["none", "skip_connect", "sep_conv_3x3", "max_pool_3x3"]


def test_paper_settings_are_pinned():
    m = builtin_methods()["p-darts"]
    schedule = m.build("schedule")
    assert (schedule.layers, schedule.keep, schedule.skip_dropout, schedule.max_skips) == (
        (5, 11, 17), (5, 3, 1), (0.1, 0.4, 0.7), 2)
    assert {k: m.config[k] for k in ("epochs", "arch_warmup_epochs", "batch_size", "arch_lr", "lr_min",
                                     "arch_grad_clip")} == {
        "epochs": 25, "arch_warmup_epochs": 10, "batch_size": 96, "arch_lr": 6e-4, "lr_min": 0.0, "arch_grad_clip": 5.0}


def test_pruning_keeps_the_strongest_live_ops_and_drops_none_at_the_end():
    s = torch.tensor([[0.40, 0.10, 0.30, 0.20],
                      [0.05, 0.50, 0.25, 0.20]])
    everything = torch.ones(2, 4, dtype=torch.bool)
    kept = Progressive.prune(s, everything, 2, OPS, last=False)
    assert kept.tolist() == [[True, False, True, False], [False, True, True, False]]
    # an op already pruned never comes back, however strong its (stale) weight
    assert Progressive.prune(s, kept, 1, OPS, last=False)[0].tolist() == [True, False, False, False]
    assert Progressive.prune(s, kept, 1, OPS, last=True)[0].tolist() == [False, False, True, False]


def test_the_final_normal_cell_holds_at_most_two_skips():
    # 2 nodes (5 edges), each edge down to one op; node 2 and node 3 would take 3 skips
    s = torch.zeros(5, 4)
    s[0, 1], s[1, 1] = 0.9, 0.8           # node 2: two skips
    s[2, 1], s[3, 2], s[4, 2] = 0.7, 0.3, 0.2  # node 3: a skip (0.7), then two convs
    cell = Progressive(max_skips=2).final_cell(s, OPS, nodes=2, limit_skips=True)
    assert cell == [("skip_connect", 0), ("skip_connect", 1), ("sep_conv_3x3", 1), ("sep_conv_3x3", 2)]
    assert Progressive().final_cell(s, OPS, nodes=2, limit_skips=False)[2] == ("skip_connect", 0)
    # as the P-DARTS code: the struck skip's edge competes with its next op of the last stage's
    s[2, 2] = 0.5
    cell = Progressive(max_skips=2).final_cell(s, OPS, nodes=2, limit_skips=True)
    assert cell[2:] == [("sep_conv_3x3", 0), ("sep_conv_3x3", 1)]


def test_skip_dropout_decays_within_a_stage_and_touches_only_the_skip():
    part = SkipDropout(rate=0.4)
    assert [part.on_epoch_start(e, 4)["skip_dropout"] for e in range(4)] == pytest.approx([0.3, 0.2, 0.1, 0.0])
    # as the P-DARTS code: linear while only the weights train, then 0.4 exp(-0.2 (epoch - warm-up))
    staged = SkipDropout(rate=0.4, warmup=2)
    assert [staged.on_epoch_start(e, 5)["skip_dropout"] for e in range(5)] == pytest.approx(
        [0.32, 0.24, 0.4, 0.4 * math.exp(-0.2), 0.4 * math.exp(-0.4)])
    part.on_epoch_start(0, 2)  # rate 0.2
    edge = part(4, 1, lambda C, s: candidate_ops(("skip_connect", "max_pool_3x3"), C, s)).train()
    x = torch.ones(2, 4, 8, 8)
    y = edge(x, torch.tensor([1.0, 0.0]))
    assert ((y == 0) | (y == 1.25)).all() and 0.1 < (y == 0).float().mean() < 0.3
    torch.testing.assert_close(edge.eval()(x, torch.tensor([1.0, 0.0])), x)


def test_bad_schedules_are_clear_errors():
    with pytest.raises(ValueError, match="one entry per stage"):
        Progressive(layers=(5, 11), keep=(5, 3, 1))
    with pytest.raises(ValueError, match="shrink to 1"):
        Progressive(keep=(5, 3, 2))
    with pytest.raises(ValueError, match=r"at least 3 cells \(one normal, two reductions\), got layers \[2, 5\]"):
        Progressive(layers=(2, 5), keep=(2, 1), skip_dropout=(0.1, 0.4))


def _recipe(tmp_path):
    recipe = tmp_path / "p-tiny.toml"
    recipe.write_text('name = "p-tiny"\nchanges = "P-DARTS, two tiny stages"\n[parts]\n'
                      'schedule = {name = "progressive", layers = [3, 4], keep = [2, 1], skip_dropout = [0.1, 0.4]}\n'
                      '[config]\nepochs = 2\n')
    return str(recipe)


TINY = dict(dataset="fashion-mnist", C=4, nodes=2, batch_size=16, subset=64, progress=False,
            ops=("none", "skip_connect", "sep_conv_3x3", "max_pool_3x3"))


def test_layers_are_the_schedules_not_the_users(tmp_path):
    """P-DARTS deepens the supernet stage by stage: a depth given beside it would be dropped, so it is refused."""
    with pytest.raises(ValueError, match=r"sets the cells of each stage \(its schedule's layers, \[3, 4\]\), so "
                                         r"layers \(--layers\) does not apply"):
        dnas.search(method=_recipe(tmp_path), run_dir=tmp_path / "r", layers=3, **TINY)
    with pytest.raises(ValueError, match="ops must be distinct"):  # checked before the run's files are made
        dnas.search(method=_recipe(tmp_path), run_dir=tmp_path / "r", **{**TINY, "ops": ("none", "none")})
    assert not (tmp_path / "r").exists()


def test_a_staged_run_prunes_between_stages_and_resumes_where_it_stopped(fashion_mnist_root, tmp_path, monkeypatch):
    whole = dnas.search(method=_recipe(tmp_path), run_dir=tmp_path / "whole", **TINY)
    run = whole.run_dir
    stages = json.loads((run / "stages.json").read_text())
    assert [s["ops_kept_after"] for s in stages] == [2, 1]
    stage1_mask = torch.tensor(stages[0]["op_mask"]["normal"])
    assert (stage1_mask.sum(-1) == 2).all()
    # stage 2's supernet ran with stage 1's mask, on 4 cells, with the skip dropout of stage 2
    config2 = json.loads((run / "stage-2" / "config.json").read_text())
    assert config2["config"]["space_options"]["layers"] == 4
    assert torch.equal(torch.tensor(config2["config"]["space_options"]["op_mask"]["normal"]), stage1_mask)
    assert config2["method"]["parts"]["edge"] == {"name": "skip_dropout", "rate": 0.4, "warmup": 0}
    # each normal edge of the genotype uses its one op left, never none
    final = torch.tensor(stages[1]["op_mask"]["normal"])
    assert (final.sum(-1) == 1).all() and not final[:, 0].any()
    ops = TINY["ops"]
    edge_index = lambda node, j: sum(range(2, node)) + j  # node n's edges follow those of nodes 2..n-1
    assert all(final[edge_index(node, j), ops.index(op)] for op, j, node in whole.genotype.edges("normal"))
    assert [(m["stage"], m["epoch"]) for m in whole.metrics] == [(1, 1), (1, 2), (2, 3), (2, 4)]
    assert dnas.Genotype.load(run / "genotype.json") == whole.genotype
    assert load_run(run).planned_epochs == 4 and load_run(run).genotype() == whole.genotype  # dnas report reads it

    # the same run, interrupted in the middle of stage 2, then resumed
    saves = {"n": 0}
    original = Search.save_checkpoint

    def crash_on_the_third(self):
        original(self)
        saves["n"] += 1
        if saves["n"] == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(Search, "save_checkpoint", crash_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        dnas.search(method=_recipe(tmp_path), run_dir=tmp_path / "cut", **TINY)
    monkeypatch.setattr(Search, "save_checkpoint", original)
    resumed = dnas.search(resume=tmp_path / "cut", progress=False)
    assert resumed.genotype == whole.genotype
    strip = lambda ms: [{k: v for k, v in m.items() if k != "seconds"} for m in ms]
    assert strip(resumed.metrics) == strip(whole.metrics)
