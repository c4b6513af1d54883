"""The DARTS supernet, its relaxation and selection, and the DARTS recipes (Liu et al., ICLR 2019)."""
import inspect

import pytest
import torch
from torch import nn

from dnas.arch_grad import FirstOrder, SecondOrder
from dnas.edges import MixedEdge
from dnas.genotype import Genotype
from dnas.methods import get_method
from dnas.ops import DARTS_OPS
from dnas.registry import UnknownNameError
from dnas.relax import RELAXATIONS, Softmax
from dnas.search import SearchConfig
from dnas.selection import SELECTIONS, TopK
from dnas.spaces import SPACES
from dnas.spaces.darts import DartsSupernet

NONE, MAX, AVG, SKIP, SEP3, SEP5, DIL3, DIL5 = range(8)


@pytest.fixture(scope="module")
def supernet():
    torch.manual_seed(0)
    return DartsSupernet()


def edge_index(node, j):
    """Index of the edge from state j into intermediate node ``node`` (0-based) in the alpha rows."""
    return sum(2 + i for i in range(node)) + j


# --- the paper's defaults ----------------------------------------------------------------------------

def test_signature_defaults():
    params = inspect.signature(DartsSupernet).parameters
    assert params["C"].default == 16
    assert params["layers"].default == 8
    assert params["nodes"].default == 4
    assert tuple(params["ops"].default) == DARTS_OPS
    assert params["stem_multiplier"].default == 3
    assert params["num_classes"].default == 10
    assert params["in_channels"].default == 3
    assert SPACES.get("darts") is DartsSupernet


def test_param_size_matches_original_darts(supernet):
    # the original train_search.py logs "param size = 1.930618MB" for this network
    assert sum(p.numel() for p in supernet.weight_parameters()) == 1_930_618


def test_alphas(supernet):
    assert set(supernet.alphas) == {"normal", "reduce"}
    for a in supernet.alphas.values():
        assert a.shape == (14, 8)
        assert a.requires_grad


def test_reduction_cells_at_one_and_two_thirds(supernet):
    assert len(supernet.cells) == 8
    assert [i for i, c in enumerate(supernet.cells) if c.reduction] == [2, 5] == [8 // 3, 2 * 8 // 3]


def test_channels_double_at_reductions(supernet):
    widths = [cell.preprocess1[1].out_channels for cell in supernet.cells]
    assert widths == [16, 16, 32, 32, 32, 64, 64, 64]
    assert supernet.stem[0].out_channels == 48
    assert supernet.classifier.in_features == 4 * 64
    # cells after a reduction cell reduce their k-2 input with a FactorizedReduce
    from dnas.ops import FactorizedReduce
    assert [isinstance(c.preprocess0, FactorizedReduce) for c in supernet.cells] == \
        [False, False, False, True, False, False, True, False]
    # reducing edges (from the cell inputs) of a reduction cell have stride 2
    cell = supernet.cells[2]
    assert len(cell.edges) == 14
    sep = cell.edges[0].ops[cell.edges[0].names.index("sep_conv_3x3")]
    assert sep[0][1].stride == (2, 2)
    sep_inner = cell.edges[2].ops[cell.edges[2].names.index("sep_conv_3x3")]  # node 3 from state 0: reducing
    assert sep_inner[0][1].stride == (2, 2)
    sep_node = cell.edges[4].ops[cell.edges[4].names.index("sep_conv_3x3")]  # node 3 from node 2: stride 1
    assert sep_node[0][1].stride == (1, 1)


def test_parameter_split(supernet):
    arch = supernet.arch_parameters()
    assert len(arch) == 2
    assert arch[0] is supernet.alphas["normal"] and arch[1] is supernet.alphas["reduce"]
    weights = supernet.weight_parameters()
    arch_ids = {id(p) for p in arch}
    weight_ids = {id(p) for p in weights}
    assert not arch_ids & weight_ids
    assert arch_ids | weight_ids == {id(p) for p in supernet.parameters()}
    assert len(weights) + len(arch) == len(list(supernet.parameters()))


@pytest.mark.parametrize("name, options", [("darts", {"C": 4, "layers": 3, "edge_normalization": True}),
                                           ("nb201", {"C": 4, "N": 1, "edge_normalization": True}),
                                           ("darts-rnn", {"vocab_size": 20, "emb_size": 8, "hidden_size": 8})])
def test_arch_parameters_are_the_alphas_and_betas_in_parameter_order(name, options):
    """Read from their dicts (fast), they are what the parameters named alphas.* and betas.* are, in order."""
    model = SPACES.get(name)(**options)
    named = [p for n, p in model.named_parameters() if n.startswith(("alphas.", "betas."))]
    assert [id(p) for p in model.arch_parameters()] == [id(p) for p in named]
    assert len(named) == {"darts": 4, "nb201": 2, "darts-rnn": 1}[name]  # alphas and betas per cell type


def test_search_bn_is_not_affine(supernet):
    cell_bns = [m for m in supernet.cells.modules() if isinstance(m, nn.BatchNorm2d)]
    assert cell_bns and not any(bn.affine for bn in cell_bns)


def test_forward_cifar_shape(supernet):
    with torch.no_grad():
        y = supernet(torch.randn(2, 3, 32, 32))
    assert y.shape == (2, 10)
    assert torch.isfinite(y).all()


def test_forward_one_channel_28x28():
    torch.manual_seed(0)
    model = DartsSupernet(num_classes=10, in_channels=1)
    with torch.no_grad():
        y = model(torch.randn(2, 1, 28, 28))
    assert y.shape == (2, 10)
    assert torch.isfinite(y).all()


def test_backward_reaches_alphas():
    torch.manual_seed(0)
    model = DartsSupernet(C=4, layers=3, nodes=2)
    loss = nn.functional.cross_entropy(model(torch.randn(2, 3, 8, 8)), torch.tensor([0, 1]))
    loss.backward()
    for a in model.arch_parameters():
        assert a.grad is not None and a.grad.abs().sum() > 0


# --- configurable ------------------------------------------------------------------------------------

def test_three_nodes():
    model = DartsSupernet(C=4, layers=3, nodes=3)
    assert all(a.shape == (9, 8) for a in model.alphas.values())
    assert all(len(c.edges) == 9 for c in model.cells)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 8, 8)).shape == (1, 10)
    g = model.derive()
    assert len(g.normal) == len(g.reduce) == 6 and g.normal_concat == (2, 3, 4)


def test_custom_ops():
    ops = ("none", "skip_connect", "sep_conv_3x3")
    model = DartsSupernet(C=4, layers=3, ops=ops)
    assert all(a.shape == (14, 3) for a in model.alphas.values())
    assert model.cells[0].edges[0].names == list(ops)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 8, 8)).shape == (1, 10)
    assert {op for op, _ in model.derive().normal} <= {"skip_connect", "sep_conv_3x3"}


def test_unknown_op_lists_valid_ops():
    with pytest.raises(UnknownNameError) as info:
        DartsSupernet(C=4, layers=3, ops=("none", "conv_99x99"))
    assert "conv_99x99" in str(info.value) and "sep_conv_3x3" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_invalid_sizes():
    with pytest.raises(ValueError):
        DartsSupernet(layers=0)
    with pytest.raises(ValueError):
        DartsSupernet(nodes=0)
    with pytest.raises(ValueError, match=r"at least 3 to search a normal cell \(the cells at 1/3 and 2/3 of the "
                                         r"depth are reduction cells\), got layers=2"):
        DartsSupernet(layers=2)  # both cells would reduce: the normal cell's alphas would never move


@pytest.mark.parametrize("ops", [("none",), ("sep_conv_3x3", "skip_connect", "sep_conv_3x3")])
def test_ops_must_be_distinct_and_more_than_none(ops):
    with pytest.raises(ValueError, match="ops must be distinct and include one besides 'none'"):
        DartsSupernet(C=4, layers=3, ops=ops)


# --- mixed edge and relaxation -----------------------------------------------------------------------

class Scale(nn.Module):
    def __init__(self, s):
        super().__init__()
        self.s = s

    def forward(self, x):
        return self.s * x


def test_mixed_edge_is_the_weighted_sum():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 3, 3, padding=1, bias=False)
    candidates = {"identity": nn.Identity(), "double": Scale(2.0), "conv": conv, "square": Scale(-0.5)}
    edge = MixedEdge(candidates)
    assert edge.names == ["identity", "double", "conv", "square"]
    x = torch.randn(2, 3, 5, 5)
    w = torch.tensor([0.1, 0.2, 0.3, 0.4])
    expected = 0.1 * x + 0.2 * (2.0 * x) + 0.3 * conv(x) + 0.4 * (-0.5 * x)
    assert torch.allclose(edge(x, w), expected, atol=1e-6)
    # one-hot weights pick one candidate
    assert torch.allclose(edge(x, torch.tensor([0.0, 0.0, 1.0, 0.0])), conv(x), atol=1e-6)
    assert torch.allclose(edge(x, torch.zeros(4)), torch.zeros_like(x))


def test_mixed_edge_gradient_wrt_weights():
    edge = MixedEdge({"a": nn.Identity(), "b": Scale(3.0)})
    x = torch.randn(1, 1, 2, 2)
    w = torch.tensor([0.5, 0.5], requires_grad=True)
    edge(x, w).sum().backward()
    assert torch.allclose(w.grad, torch.stack([x.sum(), 3 * x.sum()]))


def test_mixed_edge_needs_candidates():
    with pytest.raises(ValueError, match="at least one"):
        MixedEdge({})


def test_softmax_relaxation():
    torch.manual_seed(0)
    relax = RELAXATIONS.get("softmax")()
    assert isinstance(relax, Softmax) and relax.hard is False
    alpha = torch.randn(14, 8) * 3
    w = relax.weights(alpha)
    assert w.shape == (14, 8)
    assert torch.allclose(w.sum(-1), torch.ones(14))
    assert torch.allclose(w, torch.softmax(alpha, dim=-1))
    assert torch.allclose(relax.strengths(alpha), torch.softmax(alpha, dim=-1))
    assert (w > 0).all()


def test_supernet_uses_softmax_by_default(supernet):
    assert isinstance(supernet.relaxation, Softmax)
    s = supernet.strengths()
    for t in ("normal", "reduce"):
        assert torch.allclose(s[t], torch.softmax(supernet.alphas[t], -1))


# --- top-k selection ---------------------------------------------------------------------------------

def strengths(*rows):
    m = torch.zeros(len(rows), 8)
    for r, entries in enumerate(rows):
        for op, v in entries.items():
            m[r, op] = v
    return m


def test_edge_strength_ignores_none():
    # edge 0: strongest op overall is none (0.9), but its best real op is weak (0.02)
    # edge 1: a strong sep conv; edge 2: a medium dil conv
    s = strengths({NONE: 0.9, SEP3: 0.02}, {NONE: 0.1, SEP3: 0.5, SKIP: 0.3}, {DIL3: 0.3, MAX: 0.2})
    assert TopK(k=2)(s, list(DARTS_OPS)) == [("sep_conv_3x3", 1), ("dil_conv_3x3", 2)]


def test_op_is_argmax_excluding_none():
    s = strengths({NONE: 0.95, SKIP: 0.03, SEP5: 0.02}, {NONE: 0.5, MAX: 0.2, DIL5: 0.3})
    assert TopK(k=2)(s, list(DARTS_OPS)) == [("dil_conv_5x5", 1), ("skip_connect", 0)]


def test_k_edges_per_node():
    s = strengths({SEP3: 0.1}, {SEP5: 0.4}, {DIL3: 0.3}, {MAX: 0.2}, {AVG: 0.05})
    assert TopK(k=2)(s, list(DARTS_OPS)) == [("sep_conv_5x5", 1), ("dil_conv_3x3", 2)]
    assert TopK(k=1)(s, list(DARTS_OPS)) == [("sep_conv_5x5", 1)]
    assert TopK(k=3)(s, list(DARTS_OPS)) == [("sep_conv_5x5", 1), ("dil_conv_3x3", 2), ("max_pool_3x3", 3)]


def test_strongest_edge_first():
    s = strengths({SEP3: 0.2}, {SEP3: 0.7})
    assert TopK(k=2)(s, list(DARTS_OPS)) == [("sep_conv_3x3", 1), ("sep_conv_3x3", 0)]
    s = strengths({SEP3: 0.7}, {SEP3: 0.2})
    assert TopK(k=2)(s, list(DARTS_OPS)) == [("sep_conv_3x3", 0), ("sep_conv_3x3", 1)]


def test_tie_goes_to_the_earlier_input():
    s = strengths({SEP3: 0.5}, {SEP3: 0.5}, {SEP3: 0.5})
    assert TopK(k=2)(s, list(DARTS_OPS)) == [("sep_conv_3x3", 0), ("sep_conv_3x3", 1)]


def test_selection_never_returns_none():
    s = strengths({NONE: 1.0}, {NONE: 1.0}, {NONE: 0.99, SKIP: 0.01})
    picked = TopK(k=2)(s, list(DARTS_OPS))
    assert len(picked) == 2 and all(op != "none" for op, _ in picked)
    assert picked[0] == ("skip_connect", 2)


def test_selection_excluding_every_op_raises():
    s = strengths({SEP3: 0.5}, {SEP3: 0.5})
    with pytest.raises(ValueError, match="excludes every op"):
        TopK(k=2, exclude=DARTS_OPS)(s, list(DARTS_OPS))
    with pytest.raises(ValueError):
        TopK(k=1)(torch.ones(2, 1), ["none"])


def test_top_k_registered():
    sel = SELECTIONS.build({"name": "top_k", "k": 2})
    assert isinstance(sel, TopK) and sel.k == 2 and sel.exclude == ("none",)


# --- derive ------------------------------------------------------------------------------------------

def test_derive_exact_genotype():
    torch.manual_seed(0)
    model = DartsSupernet(C=4, layers=3)
    with torch.no_grad():
        normal, reduce = model.alphas["normal"], model.alphas["reduce"]
        normal.zero_()
        reduce.zero_()
        for node in range(4):
            normal[edge_index(node, 0), SEP3] = 5.0
            normal[edge_index(node, 1), SEP3] = 5.0
            # the latest intermediate node is dominated by none: never in the genotype
            if node >= 1:
                normal[edge_index(node, node + 1), NONE] = 20.0
            reduce[edge_index(node, 0), NONE] = 10.0
            reduce[edge_index(node, 1), MAX] = 6.0
            if node == 0:
                reduce[edge_index(node, 0), AVG] = 1.0
            else:
                reduce[edge_index(node, node + 1), SKIP] = 4.0
    g = model.derive()
    assert isinstance(g, Genotype)
    assert g.normal == (("sep_conv_3x3", 0), ("sep_conv_3x3", 1)) * 4
    assert g.reduce == (("max_pool_3x3", 1), ("avg_pool_3x3", 0),
                        ("max_pool_3x3", 1), ("skip_connect", 2),
                        ("max_pool_3x3", 1), ("skip_connect", 3),
                        ("max_pool_3x3", 1), ("skip_connect", 4))
    assert g.normal_concat == g.reduce_concat == (2, 3, 4, 5)
    assert "none" not in {op for op, _ in g.normal + g.reduce}
    # the default selection is DARTS's top-2
    assert model.derive(TopK(k=2)) == g
    assert Genotype.parse(str(g)) == g


def test_derive_with_none_everywhere():
    model = DartsSupernet(C=4, layers=3)
    with torch.no_grad():
        for a in model.alphas.values():
            a[:, NONE] = 50.0
    g = model.derive()
    assert all(op != "none" for op, _ in g.normal + g.reduce)
    assert len(g.normal) == len(g.reduce) == 8


def test_derive_of_fresh_supernet(supernet):
    g = supernet.derive()
    assert isinstance(g, Genotype)
    for cell in (g.normal, g.reduce):
        assert len(cell) == 8
        for node in range(4):
            (op_a, a), (op_b, b) = cell[2 * node: 2 * node + 2]
            assert a != b
            assert 0 <= a < node + 2 and 0 <= b < node + 2
            assert op_a in DARTS_OPS and op_a != "none" and op_b != "none"
    assert g.normal_concat == g.reduce_concat == (2, 3, 4, 5)


def test_genotype_metrics():
    g = Genotype.parse(
        "Genotype(normal=[('skip_connect', 0), ('sep_conv_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 1)], "
        "normal_concat=[2, 3], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('max_pool_3x3', 0), "
        "('max_pool_3x3', 1)], reduce_concat=[2, 3])")
    assert DartsSupernet.genotype_metrics(g) == {"skip_connect_normal": 2, "parameter_free_normal": 3}


# --- recipes and config ------------------------------------------------------------------------------

def test_darts_v1_recipe():
    m = get_method("darts-v1")
    assert m.name == "darts-v1" and m.year == 2019
    assert m.part("space") == "darts"
    assert m.part("arch_grad") == "first_order"
    assert isinstance(m.build("arch_grad"), FirstOrder)
    assert m.part("relaxation") == "softmax"
    assert isinstance(m.build("relaxation"), Softmax)
    assert m.part("edge") == "sum"


def test_darts_v2_recipe():
    m = get_method("darts-v2")
    assert m.part("arch_grad") == {"name": "second_order", "epsilon": 0.01}
    grad = m.build("arch_grad")
    assert isinstance(grad, SecondOrder) and grad.epsilon == 0.01
    assert isinstance(m.build("relaxation"), Softmax)


@pytest.mark.parametrize("name", ["darts-v1", "darts-v2"])
def test_darts_recipes_select_top_2(name):
    m = get_method(name)
    parts = m.build_parts()
    assert isinstance(parts.relaxation, Softmax)
    # the recipe leaves selection to the space, whose own is DARTS top-2
    sel = parts.selection
    if sel is None:
        model = DartsSupernet(C=4, layers=3)
        assert model.derive(None) == model.derive(TopK(k=2))
    else:
        assert isinstance(sel, TopK) and sel.k == 2
    assert parts.perturbation is None and parts.regularizers == [] and parts.stopping == []


def test_unknown_method_lists_builtin():
    with pytest.raises(UnknownNameError) as info:
        get_method("nope")
    assert "nope" in str(info.value) and "darts-v1" in str(info.value) and "darts-v2" in str(info.value)
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)


def test_user_recipe_from_path(tmp_path):
    path = tmp_path / "my-darts.toml"
    path.write_text(
        'name = "my-darts"\n'
        'paper = "mine"\n'
        'year = 2024\n'
        'changes = "top-1 selection, second order"\n'
        "[parts]\n"
        'arch_grad = {name = "second_order", epsilon = 0.02}\n'
        'selection = {name = "top_k", k = 1}\n'
        "[config]\n"
        "batch_size = 32\n"
    )
    m = get_method(str(path))
    assert m.name == "my-darts" and m.year == 2024
    assert m.build("arch_grad").epsilon == 0.02
    sel = m.build("selection")
    assert isinstance(sel, TopK) and sel.k == 1
    assert m.config == {"batch_size": 32}
    assert isinstance(m.build("relaxation"), Softmax)  # default part


def test_recipe_with_unknown_key(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('name = "bad"\nlearning_rate = 0.1\n')
    with pytest.raises(ValueError, match="learning_rate"):
        get_method(str(path))
    path.write_text('name = "bad"\n[parts]\noptimizer = "adam"\n')
    with pytest.raises(ValueError, match="optimizer"):
        get_method(str(path))


def test_recipe_with_unknown_part_name(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('name = "bad"\n[parts]\nrelaxation = "sparsemax"\n')
    with pytest.raises(ValueError) as info:
        get_method(str(path))
    assert "sparsemax" in str(info.value) and "softmax" in str(info.value)
    path.write_text('name = "bad"\n[parts]\nspace = "nasnet"\n')
    with pytest.raises(ValueError, match="unknown search space 'nasnet'; valid search spaces: darts"):
        get_method(str(path))


def test_missing_recipe_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        get_method(str(tmp_path / "absent.toml"))


def test_search_config_defaults_are_the_paper_s():
    c = SearchConfig()
    assert c.method == "darts-v1"
    assert c.epochs == 50
    assert c.batch_size == 64
    assert c.lr == 0.025
    assert c.lr_min == 0.001
    assert c.momentum == 0.9
    assert c.weight_decay == 3e-4
    assert c.grad_clip == 5
    assert c.arch_lr == 3e-4
    assert tuple(c.arch_betas) == (0.5, 0.999)
    assert c.arch_weight_decay == 1e-3
    assert c.train_portion == 0.5
    assert c.cutout == 0


# --- the op mask (P-DARTS pruning, DARTS-PT discretisation) --------------------------------------------

@pytest.mark.parametrize("relaxation", ["softmax", "sigmoid", "gumbel", "dirichlet"])
def test_masked_ops_weigh_zero_are_not_run_and_the_rest_renormalise(relaxation):
    torch.manual_seed(0)
    net = DartsSupernet(C=4, layers=3, nodes=2, relaxation=RELAXATIONS.get(relaxation)()).train()
    assert not net.cells[0].reduction
    mask = net.op_mask["normal"]
    mask[0, [NONE, SEP3, SEP5]] = False  # edge 0 keeps 5 ops
    mask[1] = False                      # edge 1 is dropped
    mask[2, :] = torch.arange(8) == SKIP  # edge 2 is discretised to skip
    w = net.op_weights(net.relaxation.weights)["normal"].detach()
    assert (w[0, [NONE, SEP3, SEP5]] == 0).all() and (w[1] == 0).all() and w[2, SKIP] > 0
    if relaxation != "sigmoid":
        assert w[0].sum().item() == pytest.approx(1.0) and w[2, SKIP].item() == pytest.approx(1.0)
    ran = []
    for e, edge in enumerate(net.cells[0].edges[:3]):
        for name, op in zip(edge.names, edge.ops):
            op.register_forward_hook(lambda *_, e=e, name=name: ran.append((e, name)))
    loss = net(torch.randn(2, 3, 8, 8)).sum()
    assert not {(0, "none"), (0, "sep_conv_3x3"), (0, "sep_conv_5x5")} & set(ran)
    assert not [r for r in ran if r[0] == 1] and {n for e, n in ran if e == 2} <= {"skip_connect"}
    loss.backward()
    assert torch.isfinite(net.alphas["normal"].grad).all()
    assert net.strengths()["normal"][1].sum() == 0
    assert "op_mask_normal" in net.state_dict()
