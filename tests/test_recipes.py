"""Every recipe of the method zoo runs a tiny search on real data, with the parts its paper names."""
import json
import re
import textwrap
from pathlib import Path

import pytest

import dnas
from dnas.methods import builtin_methods, get_method
from dnas.relax import RELAXATIONS

# one step per epoch, the alphas' too (no warm-up epochs: PC-DARTS's 15, P-DARTS's 10)
TINY = dict(C=8, layers=3, nodes=2, batch_size=16, subset=32, arch_warmup_epochs=0, progress=False)
METHODS = sorted(builtin_methods())

# what each recipe must log each epoch: its schedules and measurements
LOGGED = {"gdas": "tau", "snas": "tau", "darts-minus": "aux_skip_beta", "beta-darts": "beta_decay_weight",
          "sdarts-rs": "perturbation_epsilon", "sdarts-adv": "perturbation_epsilon",
          "r-darts": "hessian_eigenvalue", "p-darts": "skip_dropout"}


@pytest.mark.slow
@pytest.mark.parametrize("name", METHODS)
def test_recipe_runs_a_one_epoch_search_on_fashion_mnist(name, fashion_mnist_root, tmp_path):
    tiny = {k: v for k, v in TINY.items() if not (name == "p-darts" and k == "layers")}  # its stages' own
    result = dnas.search(method=name, dataset="fashion-mnist", epochs=1, run_dir=tmp_path / name, **tiny)
    g = result.genotype
    # FairDARTS's threshold keeps only edges whose sigmoid weight reached 0.85: after one tiny epoch, few
    assert g.nodes == 2 if name != "fair-darts" else 1 <= g.nodes <= 2
    assert dnas.Genotype.load(result.run_dir / "genotype.json") == g
    record = result.metrics[0]
    if name in LOGGED:
        assert LOGGED[name] in record
    saved = json.loads((result.run_dir / "config.json").read_text())
    assert saved["method"]["name"] == name


def test_every_recipe_cites_its_paper_and_says_what_it_changes():
    for method in builtin_methods().values():
        assert method.paper and method.year and method.changes, method.name


def test_the_issue_s_methods_are_all_there():
    assert {"darts-v1", "darts-v2", "pc-darts", "gdas", "snas", "drnas", "beta-darts", "darts-minus",
            "noisy-darts", "sdarts-rs", "sdarts-adv", "cdarts-l1", "darts-plus", "r-darts", "idarts", "fair-darts",
            "p-darts"} <= set(METHODS)


def test_paper_settings_are_pinned():
    m = builtin_methods()
    pc = m["pc-darts"]
    assert pc.parts["edge"] == {"name": "partial_channel", "k": 4}
    assert (pc.config["batch_size"], pc.config["lr"], pc.config["arch_lr"]) == (256, 0.1, 6e-4)
    assert pc.config["space_options"] == {"edge_normalization": True}
    assert m["gdas"].build("relaxation").tau_range == (10.0, 0.1) and m["gdas"].build("relaxation").hard
    assert m["gdas"].config == {"epochs": 250, "batch_size": 256, "weight_decay": 5e-4, "nesterov": True,
                                "weight_step_first": True, "step_unused_weights": True}
    assert not m["snas"].build("relaxation").hard
    assert m["sdarts-rs"].build("perturbation").epsilon_range == (0.03, 0.3)
    adv = m["sdarts-adv"].build("perturbation")
    assert (adv.epsilon_range, adv.steps) == ((0.03, 0.3), 7)
    snas = m["snas"].build("relaxation")
    assert (snas.tau_range, snas.schedule) == ((1.0, 0.03), "linear")
    noisy = m["noisy-darts"].build("edge")
    assert (noisy.factor, noisy.mean) == (0.2, 0.0)
    assert m["noisy-darts"].config == {"batch_size": 128, "lr": 0.05}  # its code's
    fair = m["fair-darts"].config
    assert (fair["batch_size"], fair["lr"], fair["arch_lr"], fair["arch_betas"]) == (128, 0.005, 3e-3, [0.9, 0.999])
    beta = m["beta-darts"].build("regularizers")[0]
    assert [beta.on_epoch_start(e, 50)["beta_decay_weight"] for e in (0, 1, 49)] == pytest.approx([0.0, 0.5, 24.5])
    assert beta.on_epoch_start(9, 10)["beta_decay_weight"] == pytest.approx(4.5)  # 0.5 per epoch, any length
    minus = m["darts-minus"].build("edge")
    assert [minus.on_epoch_start(e, 50)["aux_skip_beta"] for e in (0, 49)] == pytest.approx([1.0, 0.02])
    assert m["idarts"].build("arch_grad").k == 2
    assert m["darts-minus"].build("edge").start == 1.0 and m["darts-minus"].build("edge").end == 0.0
    plus = m["darts-plus"].build("stopping")
    assert plus[0].max_skips == 2 and plus[1].patience == 10
    assert m["darts-v2"].build("arch_grad").epsilon == 0.01


@pytest.mark.parametrize("fused", [False, True])
def test_the_part_of_adding_a_method_runs_as_the_doc_writes_it(fused, fashion_mnist_root, tmp_path, monkeypatch,
                                                               capsys):
    """docs/adding-a-method.md: its example relaxation, registered as written and named by a recipe, searches."""
    doc = (Path(__file__).parents[1] / "docs" / "adding-a-method.md").read_text()
    monkeypatch.setattr(RELAXATIONS, "_table", dict(RELAXATIONS._table))  # the registration ends with the test
    exec(textwrap.dedent(re.search(r"```python\n(.*?)```", doc, re.S).group(1)), {})
    recipe = tmp_path / "tempered.toml"
    recipe.write_text('name = "tempered"\n[parts]\nrelaxation = {name = "tempered_softmax", temperature = 4.0}\n')
    assert get_method(str(recipe)).build("relaxation").temperature == 4.0
    result = dnas.search(method=str(recipe), dataset="fashion-mnist", epochs=1, run_dir=tmp_path / "r", fused=fused,
                         **TINY)
    assert result.genotype.nodes == 2
    assert capsys.readouterr().out.startswith("tempered on fashion-mnist (")  # the recipe's name


def test_a_method_made_in_python_and_ops_as_text_search(fashion_mnist_root, tmp_path):
    method = dnas.Method(name="mine", parts={"relaxation": "sigmoid"})
    result = dnas.search(method=method, dataset="fashion-mnist", epochs=1, ops="sep_conv_3x3, skip_connect",
                         runs_root=tmp_path, **TINY)
    assert result.run_dir.name.endswith("-mine-fashion-mnist")
    saved = json.loads((result.run_dir / "config.json").read_text())
    assert saved["method"]["parts"] == {"relaxation": "sigmoid"} and saved["config"]["method"] == "mine"
    assert saved["config"]["space_options"]["ops"] == ["sep_conv_3x3", "skip_connect"]


def test_parts_that_break_their_interface_say_so(fashion_mnist_root, tmp_path, monkeypatch):
    """A relaxation without strengths, before anything runs; a selection that chooses an input a node does
    not have, at the first epoch's genotype (it was dropped, and the genotype took other edges)."""
    from dnas.selection import SELECTIONS

    class WeightsOnly:
        def weights(self, alpha):
            return alpha.softmax(-1)

    class OutOfRange:
        def __call__(self, strengths, ops):
            return [("sep_conv_3x3", 7)]

    monkeypatch.setattr(RELAXATIONS, "_table", {**RELAXATIONS._table, "weights_only": WeightsOnly})
    monkeypatch.setattr(SELECTIONS, "_table", {**SELECTIONS._table, "out_of_range": OutOfRange})
    with pytest.raises(ValueError, match=r"method m: its relaxation WeightsOnly has no strengths\(alpha\): a "
                                         r"relaxation gives the op weights"):
        dnas.search(method=dnas.Method("m", parts={"relaxation": "weights_only"}), dataset="fashion-mnist",
                    epochs=1, run_dir=tmp_path / "a", **TINY)
    assert not (tmp_path / "a").exists()
    with pytest.raises(ValueError, match=r"selection OutOfRange chose \('sep_conv_3x3', 7\) for node 2: a selection "
                                         r"returns \(op, input\) pairs .* of the node's inputs, 0 to 1"):
        dnas.search(method=dnas.Method("m", parts={"selection": "out_of_range"}), dataset="fashion-mnist",
                    epochs=1, run_dir=tmp_path / "b", **TINY)


def test_a_recipe_setting_of_another_name_lists_the_valid_ones(tmp_path):
    recipe = tmp_path / "typo.toml"
    recipe.write_text('name = "typo"\n[config]\narch_learning_rate = 1e-3\nbatch_sise = 8\n')
    with pytest.raises(ValueError, match=r"recipe typo: unknown settings in its \[config\]: arch_learning_rate, "
                                         r"batch_sise \(did you mean batch_size\?\); valid: arch_betas, "
                                         r"arch_grad_clip, arch_lr, "):
        dnas.search(method=str(recipe), dataset="fashion-mnist", run_dir=tmp_path / "r", progress=False)
