"""NAS-Bench-201: the cell space, its arch strings, the shipped ground truth against the benchmark's table, a
search on the space and ``dnas bench nb201``."""
import csv
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dnas
from conftest import SHARED_DATA
from dnas.bench import nb201
from dnas.bench.nb201 import NB201_OPS, NB201Genotype, NotInBenchmarkError
from dnas.cli import main
from dnas.genotype import GenotypeError
from dnas.methods import builtin_methods, get_method
from dnas.relax import GumbelSoftmax
from dnas.search import SearchConfig, bilevel_step, optimizers
from dnas.selection import TopK
from dnas.spaces import SPACES
from dnas.spaces.nb201 import NB201Supernet, ResidualBlock, SearchCell

CSV = SHARED_DATA / "nas-bench-201" / "test_accuracy_200ep.csv"
ALL_SKIP = "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|"
ALL_NONE = "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"
BN_EPS = 1e-5

torch.manual_seed(0)


# -- the supernet ---------------------------------------------------------------------------------------------
def test_supernet_defaults_structure_and_output_shape():
    model = SPACES.get("nb201")(num_classes=10)
    assert isinstance(model, NB201Supernet) and model.ops == NB201_OPS == (
        "none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
    kinds = ["R" if isinstance(m, ResidualBlock) else "C" for m in model.cells]
    assert "".join(kinds) == "CCCCC" + "R" + "CCCCC" + "R" + "CCCCC"  # 3 stages of N = 5 cells
    assert model.stem[0].out_channels == 16 and model.classifier.in_features == 64
    assert [(m.conv_a[1].in_channels, m.conv_a[1].out_channels, m.conv_a[1].stride) for m in model.cells
            if isinstance(m, ResidualBlock)] == [(16, 32, (2, 2)), (32, 64, (2, 2))]
    assert all(len(m.edges) == 6 for m in model.cells if isinstance(m, SearchCell))

    assert list(model.alphas) == ["cell"] and model.alphas["cell"].shape == (6, 5)
    assert model.arch_parameters() == [model.alphas["cell"]]
    names = [n for n, _ in model.named_weight_parameters()]
    assert len(names) == len(model.weight_parameters()) == len(list(model.parameters())) - 1
    assert not any(n.startswith("alphas") for n in names)
    # the search setting: non-affine BN in the cells' ops, affine BN in the fixed residual blocks
    cell_bns = [m for c in model.cells if isinstance(c, SearchCell)
                for m in c.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(cell_bns) == 15 * 6 * 2 and not any(bn.affine for bn in cell_bns)  # the two convs of each edge
    assert all(bn.affine for c in model.cells if isinstance(c, ResidualBlock)
               for bn in c.modules() if isinstance(bn, nn.BatchNorm2d))

    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    small = SPACES.get("nb201")(num_classes=7, in_channels=1, C=4, N=1)
    assert len(small.cells) == 5 and small(torch.randn(2, 1, 28, 28)).shape == (2, 7)


def test_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match="valid ops"):
        NB201Supernet(ops=("none", "conv_9x9"))
    with pytest.raises(ValueError, match="C and N must be positive"):
        NB201Supernet(N=0)


def test_a_cell_with_one_op_forced_per_edge_is_the_hand_computed_cell():
    model = NB201Supernet(C=3, N=1).eval()  # eval: BN uses its fresh running stats, y = x / sqrt(1 + eps)
    arch = NB201Genotype.parse(
        "|nor_conv_3x3~0|+|skip_connect~0|none~1|+|avg_pool_3x3~0|nor_conv_1x1~1|skip_connect~2|")
    with torch.no_grad():
        model.alphas["cell"].copy_(1e3 * F.one_hot(torch.tensor([NB201_OPS.index(op) for op in arch.ops]), 5))
    weights = model.relaxation.strengths(model.alphas["cell"])
    assert torch.equal(weights, weights.round())  # exactly one-hot: the other ops contribute exact zeros
    cell = model.cells[0]
    x = torch.randn(2, 3, 6, 6)

    def conv(e, k):  # nor_conv: ReLU -> Conv -> BN, with the weights of the cell's own op
        w = cell.edges[e].ops[NB201_OPS.index(f"nor_conv_{k}x{k}")][1].weight
        return F.conv2d(F.relu(x if e == 0 else n1), w, padding=k // 2) / math.sqrt(1 + BN_EPS)

    n1 = conv(0, 3)
    n2 = x + 0 * n1
    n3 = F.avg_pool2d(x, 3, 1, 1, count_include_pad=False) + conv(4, 1) + n2  # bare pooling, no BN after it
    torch.testing.assert_close(cell(x, weights), n3)
    assert model.derive() == arch and model.genotype_metrics(arch)["skip_connect_normal"] == 2


def test_derive_keeps_the_argmax_op_of_every_edge_including_none():
    model = NB201Supernet(C=4, N=1)
    picks = [0, 3, 0, 1, 4, 2]  # none wins edges 0 and 2
    with torch.no_grad():
        model.alphas["cell"].copy_(torch.tensor([3.0, 3, 3, 2, 4, 3])[:, None] * F.one_hot(torch.tensor(picks), 5))
    expected = NB201Genotype(tuple(NB201_OPS[k] for k in picks))
    assert model.derive() == model.derive(None) == expected
    assert str(expected) == "|none~0|+|nor_conv_3x3~0|none~1|+|skip_connect~0|avg_pool_3x3~1|nor_conv_1x1~2|"
    # a DARTS-style selection keeps the strongest non-none edge per node; the dropped edges become none
    kept = model.derive(TopK(k=1))
    assert [op != "none" for op in kept.ops] == [True, True, False, False, True, False]


def test_edge_normalization_and_hard_relaxation_run_on_the_space():
    torch.manual_seed(0)  # a sampled cell can cut every path to the output; this seed's cells do not
    model = NB201Supernet(C=4, N=1, edge_normalization=True, relaxation=GumbelSoftmax(hard=True))
    torch.testing.assert_close(model.edge_weights()[:3].sum(), torch.tensor(2.0))  # nodes 1 and 2 sum to 1 each
    assert len(model.arch_parameters()) == 2 and model.strengths()["cell"].shape == (6, 5)
    F.cross_entropy(model(torch.randn(4, 3, 8, 8)), torch.tensor([0, 1, 2, 3])).backward()
    assert model.alphas["cell"].grad.abs().gt(0).any() and model.betas["cell"].grad.abs().gt(0).any()


def test_a_recipe_keeps_its_op_set_to_its_own_space():
    """FairDARTS and DARTS-PT chose their ops from the DARTS space's (its 8 without ``none``); on NAS-Bench-201
    the space keeps its own 5, and a recipe's other options (PC-DARTS's edge normalisation) still apply."""
    fair, pc = get_method("fair-darts"), get_method("pc-darts")
    assert "none" not in fair.space_options()["ops"] and fair.space_options("darts") == fair.space_options()
    assert fair.space_options("nb201") == {}
    assert pc.space_options("nb201") == {"edge_normalization": True}


@pytest.mark.parametrize("method, part", [("p-darts", "schedule part 'progressive'"),
                                          ("darts-pt", "selection part 'perturbation'")])
def test_a_method_for_the_darts_space_only_is_refused_before_it_runs(method, part, tmp_path):
    """P-DARTS deepens the DARTS supernet and DARTS-PT projects its op masks: on NAS-Bench-201 they are refused
    at once, not after a search has run."""
    with pytest.raises(ValueError, match=f"method {method}: its {part} works on the darts space only, not on nb201"):
        dnas.search(space="nb201", method=method, dataset="fashion-mnist", run_dir=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_every_builtin_method_takes_a_step_on_the_space():
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    for name, method in builtin_methods().items():
        torch.manual_seed(0)
        parts = method.build_parts()
        model = NB201Supernet(C=4, N=1, relaxation=parts.relaxation, edge=parts.edge, **method.space_options("nb201"))
        parts.on_epoch_start(0, 50)
        w_opt, a_opt = optimizers(model, SearchConfig())
        before = model.alphas["cell"].detach().clone()
        bilevel_step(model, parts, a_opt, w_opt, (x, y), (x, y), 5.0)
        assert not torch.equal(before, model.alphas["cell"]), name
        genotype = model.derive(parts.selection)
        assert set(model.genotype_metrics(genotype)) >= {"nb201_cifar10", "skip_connect_normal"}, name


# -- arch strings ---------------------------------------------------------------------------------------------
def test_arch_string_round_trip_and_files(tmp_path):
    text = "|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|skip_connect~1|skip_connect~2|"
    g = NB201Genotype.parse(f"  {text}\n")
    assert str(g) == text and g.nodes == 4 and g.ops[:3] == ("nor_conv_3x3", "none", "nor_conv_3x3")
    assert NB201Genotype.parse(str(g)) == g and NB201Genotype.from_dict(g.to_dict()) == g
    assert g.to_dict() == {"space": "nb201", "arch": text}
    for name in ("genotype.txt", "genotype.json"):
        g.save(tmp_path / name)
        assert NB201Genotype.load(tmp_path / name) == g
    assert (tmp_path / "genotype.txt").read_text() == text + "\n"
    assert json.loads((tmp_path / "genotype.json").read_text())["arch"] == text
    assert str(NB201Genotype.parse("|none~0|+|skip_connect~0|none~1|")) == "|none~0|+|skip_connect~0|none~1|"  # 3 nodes


@pytest.mark.parametrize("text, message", [
    ("", "malformed"),
    ("nor_conv_3x3~0", "malformed"),
    ("|nor_conv_3x3|+|none~0|none~1|+|none~0|none~1|none~2|", "malformed"),
    ("|none~a|+|none~0|none~1|+|none~0|none~1|none~2|", "malformed"),
    ("|none~0|+|none~0|none~1|+", "malformed"),
    ("|conv_9x9~0|+|none~0|none~1|+|none~0|none~1|none~2|", "unknown op 'conv_9x9'; valid ops: avg_pool_3x3"),
    ("|none~1|+|none~0|none~1|+|none~0|none~1|none~2|", r"node 1 .* takes inputs \[1\]"),
    ("|none~0|+|none~1|none~0|+|none~0|none~1|none~2|", r"in order: \[0, 1\]"),
    ("|none~0|+|none~0|+|none~0|none~1|none~2|", r"node 2 .* takes inputs \[0\]"),
])
def test_malformed_arch_strings_are_clear_errors(text, message):
    with pytest.raises(GenotypeError, match=message):
        NB201Genotype.parse(text)


def test_genotype_constructor_and_json_errors(tmp_path):
    with pytest.raises(GenotypeError, match="n\\(n-1\\)/2 edges"):
        NB201Genotype(("none",) * 5)
    with pytest.raises(GenotypeError, match='"space": "nb201"'):
        NB201Genotype.from_dict({"space": "darts", "normal": []})
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(GenotypeError, match="not valid JSON"):
        NB201Genotype.load(tmp_path / "bad.json")


# -- the ground truth (shipped with the package) ---------------------------------------------------------------
def test_lookup_from_the_package_data():
    assert nb201.lookup(ALL_SKIP) == {"cifar10": 54.2967, "cifar100": 15.6067, "ImageNet16-120": 16.3222, "index": 1835}
    assert nb201.lookup(ALL_NONE) == {"cifar10": 10.0, "cifar100": 1.0, "ImageNet16-120": 0.8333, "index": 1651}
    assert nb201.lookup(NB201Genotype.parse(
        "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|")) == {
        "cifar10": 85.8633, "cifar100": 52.9133, "ImageNet16-120": 26.6333, "index": 0}
    # the benchmark's optimum per data set: 94.37 / 73.51 / 47.31 (NAS-Bench-201, Table 5); CIFAR-10 has a tie
    assert str(nb201.best("cifar10")) == (
        "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|")
    assert [nb201.lookup(nb201.best(d))[d] for d in nb201.DATASETS] == [94.3733, 73.5133, 47.3111]
    assert [nb201.lookup(nb201.best(d))["index"] for d in nb201.DATASETS] == [6111, 9930, 857]
    assert nb201.table()["accuracy"].shape == (15625, 3)


def test_encoding_and_cells_outside_the_benchmark():
    assert nb201.encode(ALL_NONE) == 0 and nb201.encode(NB201Genotype(("avg_pool_3x3",) * 6)) == 5**6 - 1
    assert all(nb201.encode(nb201.decode(c)) == c for c in (0, 1, 5, 1234, 15624))
    assert nb201.decode(1).ops == ("none",) * 5 + ("skip_connect",)
    with pytest.raises(NotInBenchmarkError, match="'sep_conv_3x3' is not one of its ops"):
        nb201.lookup(ALL_SKIP.replace("skip_connect~2", "sep_conv_3x3~2"))
    with pytest.raises(NotInBenchmarkError, match="has 3 nodes"):
        nb201.lookup("|none~0|+|none~0|none~1|")
    with pytest.raises(ValueError, match="valid: cifar10, cifar100, ImageNet16-120"):
        nb201.best("imagenet")
    assert NB201Supernet.genotype_metrics(
        NB201Genotype.parse("|sep_conv_3x3~0|+|none~0|none~1|+|none~0|none~1|none~2|")) == {
        "skip_connect_normal": 0}  # no ground truth outside the benchmark


def test_the_package_data_is_the_benchmarks_table():
    if not CSV.is_file():
        pytest.skip(f"NAS-Bench-201 table not found at {CSV}; set DNAS_SHARED_DATA to the shared data folder")
    with open(CSV, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 15625 and [int(r["index"]) for r in rows] == list(range(15625))
    columns = dict(zip(nb201.DATASETS, ("cifar10_test", "cifar100_test", "imagenet16_120_test")))
    for row in rows:
        assert nb201.lookup(row["arch"]) == {**{d: float(row[c]) for d, c in columns.items()},
                                             "index": int(row["index"])}
    for d, c in columns.items():  # the first of the best rows, in the benchmark's order
        assert str(nb201.best(d)) == max(rows, key=lambda r: float(r[c]))["arch"]
    by_arch = {r["arch"]: r for r in rows}
    assert by_arch[ALL_SKIP]["cifar10_test"] == "54.2967" and by_arch[ALL_NONE]["cifar10_test"] == "10.0000"


# -- a search on the space, and the command line ----------------------------------------------------------------
def test_search_on_nb201_reports_the_true_accuracy_of_its_genotype(fashion_mnist_root, tmp_path):
    result = dnas.search(space="nb201", method="darts-v1", dataset="fashion-mnist", C=4, N=1, subset=128,
                         batch_size=16, epochs=1, runs_root=tmp_path, progress=False)
    assert isinstance(result.genotype, NB201Genotype)
    assert result.run_dir.name.endswith("-darts-v1-nb201-fashion-mnist")  # the space in the name: not darts-v1's own
    truth = nb201.lookup(result.genotype)
    m = result.metrics[0]
    assert m["genotype"] == str(result.genotype)
    assert [m[f"nb201_{d}"] for d in nb201.DATASETS] == [truth[d] for d in nb201.DATASETS]
    assert m["skip_connect_normal"] == result.genotype.ops.count("skip_connect")
    run = result.run_dir
    assert (run / "genotype.txt").read_text() == str(result.genotype) + "\n"
    assert NB201Genotype.load(run / "genotype.json") == result.genotype
    alphas = json.loads((run / "alphas.jsonl").read_text())
    assert alphas["ops"] == list(NB201_OPS) and torch.tensor(alphas["alphas"]["cell"]).shape == (6, 5)
    assert json.loads((run / "config.json").read_text())["config"]["space_options"] == {"C": 4, "N": 1}


@pytest.mark.parametrize("arch, connected", [
    (ALL_NONE, False), (ALL_SKIP, True),
    ("|skip_connect~0|+|none~0|none~1|+|none~0|none~1|none~2|", False),  # node 1 reached, the output not
    ("|none~0|+|none~0|none~1|+|avg_pool_3x3~0|none~1|none~2|", True),  # straight from the input
    ("|nor_conv_3x3~0|+|none~0|none~1|+|none~0|none~1|skip_connect~2|", False),  # node 2 never reached
    ("|nor_conv_3x3~0|+|none~0|nor_conv_1x1~1|+|none~0|none~1|skip_connect~2|", True)])
def test_a_cell_whose_every_path_has_none_is_a_defect(arch, connected):
    """Its output is zeros, so its network ignores it: NAS-Bench-201 lists such cells at chance, 10.0%."""
    genotype = NB201Genotype.parse(arch)
    assert (genotype.defect() is None) == connected
    assert connected or nb201.lookup(genotype)["cifar10"] == 10.0


def test_a_search_that_ends_with_a_cell_of_zeros_warns(fashion_mnist_root, tmp_path, monkeypatch):
    """FairDARTS's sigmoids can leave ``none`` the strongest op of every edge after a short search."""
    monkeypatch.setattr(NB201Supernet, "derive", lambda self, selection=None: NB201Genotype.parse(ALL_NONE))
    with pytest.warns(UserWarning, match="every path from the cell's input to its output has a none op"):
        result = dnas.search(space="nb201", method="fair-darts", dataset="fashion-mnist", C=4, N=1, subset=64,
                             batch_size=16, epochs=1, run_dir=tmp_path / "run", progress=False)
    assert (result.run_dir / "genotype.txt").read_text() == ALL_NONE + "\n"  # written all the same


def test_fast_search_on_nb201_runs_its_cells_fused(fashion_mnist_root, tmp_path, capsys):
    """``dnas search --space nb201 --fast`` on a CPU: the cells run by the fused path (tests/test_fused.py
    holds it to the readable cell) in NHWC, and the run ends with a benchmark genotype; ``--layers`` sets
    the cells per stage."""
    run = tmp_path / "run"
    assert main(["search", "--space", "nb201", "--method", "darts-v2", "--dataset", "fashion-mnist",
                 "--init-channels", "4", "--layers", "1", "--subset", "64", "--batch-size", "16", "--epochs", "1",
                 "--run-dir", str(run), "-q", "--fast", "--device", "cpu"]) == 0
    config = json.loads((run / "config.json").read_text())["config"]
    assert config["space_options"] == {"C": 4, "N": 1, "fused": True}
    assert config["channels_last"] is True and not config["cuda_graph"]
    genotype = NB201Genotype.load(run / "genotype.json")
    assert f"genotype: {genotype}" in capsys.readouterr().out.splitlines()
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["nb201_cifar10"] == \
        nb201.lookup(genotype)["cifar10"]


def test_cli_bench_nb201(capsys):
    assert main(["bench", "nb201", "--arch", ALL_SKIP]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"arch: {ALL_SKIP}", "index: 1835", "cifar10: 54.2967", "cifar100: 15.6067", "ImageNet16-120: 16.3222"]
    assert main(["bench", "nb201", "--arch", "|sep_conv_3x3~0|+|none~0|none~1|+|none~0|none~1|none~2|"]) == 2
    assert capsys.readouterr().err.startswith("dnas: error: |sep_conv_3x3~0|")
    assert main(["bench", "nb201", "--arch", "skip_connect"]) == 2
    assert "malformed NAS-Bench-201 arch string" in capsys.readouterr().err


def test_cli_bench_nb201_reads_a_search_run_or_a_genotype_file(tmp_path, capsys):
    NB201Genotype.parse(ALL_SKIP).save(tmp_path / "genotype.json")  # as a --space nb201 search leaves it
    for arch in (tmp_path, tmp_path / "genotype.json"):
        assert main(["bench", "nb201", "--arch", str(arch)]) == 0
        assert capsys.readouterr().out.splitlines()[:2] == [f"arch: {ALL_SKIP}", "index: 1835"]
    dnas.load_genotype("DARTS_V2")[0].save(tmp_path / "darts.json")
    assert main(["bench", "nb201", "--arch", str(tmp_path / "darts.json")]) == 2
    assert "darts.json holds a Genotype, not a NAS-Bench-201 cell" in capsys.readouterr().err


def test_a_nas_bench_201_cell_is_a_genotype_wherever_one_is_given(tmp_path, capsys):
    """--genotype and dnas show take the arch string, and the .json and .txt files a search writes; training
    and info, which build the DARTS evaluation networks, point to the benchmark instead."""
    cell = NB201Genotype.parse(nb201.EXAMPLE)
    cell.save(tmp_path / "genotype.json")
    cell.save(tmp_path / "genotype.txt")
    for spec in (nb201.EXAMPLE, tmp_path / "genotype.json", tmp_path / "genotype.txt", tmp_path):
        assert dnas.load_genotype(spec)[0] == cell
    assert main(["show", str(tmp_path / "genotype.json"), "-o", str(tmp_path / "cell.svg")]) == 0
    assert (tmp_path / "cell.svg").stat().st_size > 0
    with pytest.raises(ValueError, match=f"a NAS-Bench-201 cell, whose trained accuracy the benchmark holds: "
                                         f"dnas bench nb201 --arch"):
        dnas.train(tmp_path, "cifar10", run_dir=tmp_path / "run")
    assert main(["info", "--genotype", nb201.EXAMPLE]) == 2
    assert "dnas bench nb201 --arch" in capsys.readouterr().err


def test_cells_outside_the_benchmark_are_said_to_be(recwarn):
    """Other node counts or ops give cells NAS-Bench-201 has no accuracy for: a warning says so up front."""
    NB201Supernet(C=4, N=1, ops=("none", "skip_connect", "nor_conv_3x3"))  # a subset of its ops: inside
    assert not [w for w in recwarn if "NAS-Bench-201" in str(w.message)]
    with pytest.warns(UserWarning, match="cells of 3 nodes are outside NAS-Bench-201"):
        NB201Supernet(C=4, N=1, nodes=3)
    with pytest.warns(UserWarning, match="cells of ops sep_conv_3x3 are outside NAS-Bench-201"):
        NB201Supernet(C=4, N=1, ops=("skip_connect", "sep_conv_3x3"))
