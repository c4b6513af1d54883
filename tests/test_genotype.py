"""Genotypes: the DARTS text form (as the original code prints it), JSON, and clear errors on bad input."""
import json

import pytest

from dnas.genotype import Genotype, GenotypeError

# exactly as the original DARTS repository (cnn/genotypes.py) prints them
DARTS_V2_TEXT = (
    "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
    "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], "
    "normal_concat=range(2, 6), "
    "reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), "
    "('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], "
    "reduce_concat=range(2, 6))"
)
DARTS_V1_TEXT = (
    "Genotype(normal=[('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 0), ('sep_conv_3x3', 1), "
    "('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 2)], "
    "normal_concat=[2, 3, 4, 5], "
    "reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 0), "
    "('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('avg_pool_3x3', 0)], "
    "reduce_concat=[2, 3, 4, 5])"
)

V2_NORMAL = (("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
             ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2))
V2_REDUCE = (("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
             ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1))
V1_NORMAL = (("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_3x3", 1),
             ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2))
V1_REDUCE = (("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
             ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("avg_pool_3x3", 0))


@pytest.fixture
def v2():
    return Genotype.parse(DARTS_V2_TEXT)


@pytest.fixture
def v1():
    return Genotype.parse(DARTS_V1_TEXT)


def test_parse_darts_v2(v2):
    assert v2.normal == V2_NORMAL
    assert v2.reduce == V2_REDUCE
    assert v2.normal_concat == (2, 3, 4, 5)
    assert v2.reduce_concat == (2, 3, 4, 5)
    assert v2.nodes == 4


def test_parse_darts_v1(v1):
    assert v1.normal == V1_NORMAL
    assert v1.reduce == V1_REDUCE
    assert v1.normal_concat == (2, 3, 4, 5)
    assert v1.reduce_concat == (2, 3, 4, 5)
    assert v1.nodes == 4


def test_fields_are_typed(v2):
    for op, j in v2.normal + v2.reduce:
        assert type(op) is str and type(j) is int
    assert all(type(i) is int for i in v2.normal_concat)


def test_str_uses_lists_for_concats(v1, v2):
    assert str(v1) == DARTS_V1_TEXT
    assert str(v2) == DARTS_V2_TEXT.replace("range(2, 6)", "[2, 3, 4, 5]")
    assert "range" not in str(v2)
    assert "normal_concat=[2, 3, 4, 5]" in str(v2) and "reduce_concat=[2, 3, 4, 5]" in str(v2)
    assert repr(v2) == str(v2)


def test_str_round_trips(v1, v2):
    for g in (v1, v2):
        again = Genotype.parse(str(g))
        assert again == g
        assert str(again) == str(g)


def test_v1_and_v2_differ(v1, v2):
    assert v1 != v2


def test_dict_round_trip(v2):
    d = v2.to_dict()
    assert d["normal"][0] == ["sep_conv_3x3", 0]
    assert d["normal_concat"] == [2, 3, 4, 5]
    json.dumps(d)  # JSON-serialisable
    assert Genotype.from_dict(d) == v2
    assert Genotype.from_dict(json.loads(json.dumps(d))) == v2


@pytest.mark.parametrize("suffix", [".json", ".txt"])
def test_save_load_round_trip(v1, v2, tmp_path, suffix):
    for i, g in enumerate((v1, v2)):
        path = tmp_path / f"g{i}{suffix}"
        g.save(path)
        assert Genotype.load(path) == g
        assert Genotype.load(str(path)) == g


def test_save_formats(v2, tmp_path):
    v2.save(tmp_path / "g.json")
    assert json.loads((tmp_path / "g.json").read_text())["reduce"][0] == ["max_pool_3x3", 0]
    v2.save(tmp_path / "g.txt")
    assert (tmp_path / "g.txt").read_text().strip() == str(v2)


def test_load_pasted_original_text(tmp_path):
    (tmp_path / "darts_v2.txt").write_text("\n" + DARTS_V2_TEXT + "\n\n")
    assert Genotype.load(tmp_path / "darts_v2.txt").normal == V2_NORMAL


def test_positional_form():
    text = ("Genotype([('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], [2], "
            "[('max_pool_3x3', 0), ('skip_connect', 1)], [2])")
    g = Genotype.parse(text)
    assert g.normal == (("sep_conv_3x3", 0), ("sep_conv_3x3", 1))
    assert g.normal_concat == (2,)
    assert g.reduce == (("max_pool_3x3", 0), ("skip_connect", 1))
    assert g.reduce_concat == (2,)
    assert g.nodes == 1


def test_positional_form_of_darts_v2(v2):
    text = (f"Genotype({list(V2_NORMAL)}, range(2, 6), {list(V2_REDUCE)}, range(2, 6))")
    assert Genotype.parse(text) == v2


def test_surrounding_whitespace(v2):
    assert Genotype.parse("\n\n   " + DARTS_V2_TEXT + "  \n\t\n") == v2


def test_multiline_text(v1):
    text = DARTS_V1_TEXT.replace(", normal_concat", ",\n    normal_concat").replace(", reduce=", ",\n    reduce=")
    assert "\n" in text
    assert Genotype.parse(text) == v1


def test_genotype_is_hashable_and_frozen(v2):
    assert len({v2, Genotype.parse(DARTS_V2_TEXT)}) == 1
    with pytest.raises(Exception):
        v2.normal = ()


# --- malformed input -------------------------------------------------------------------------------

def _raises(text, *fragments):
    with pytest.raises(GenotypeError) as info:
        Genotype.parse(text)
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    for f in fragments:
        assert f in message, message
    return message


def test_genotype_error_is_a_value_error():
    assert issubclass(GenotypeError, ValueError)


@pytest.mark.parametrize("text", [
    "Foo(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], normal_concat=[2], "
    "reduce=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], reduce_concat=[2])",
    "[1, 2]",
    "42",
    "genotype",
    "",
])
def test_not_a_genotype_call(text):
    _raises(text, "Genotype(")


def test_syntax_error():
    _raises("Genotype(normal=[('sep_conv_3x3', 0), ", "malformed", "Genotype(")
    _raises("Genotype(normal=[('sep_conv_3x3' 0)])", "malformed")


def test_wrong_field_names():
    text = DARTS_V1_TEXT.replace("normal_concat=", "normal_concatenate=")
    _raises(text, "normal_concat", "reduce_concat")
    _raises(DARTS_V1_TEXT.replace("reduce=", "reduction="), "four fields")


def test_missing_field():
    text = ("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], normal_concat=[2], "
            "reduce=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)])")
    _raises(text, "four fields", "reduce_concat")


def test_too_many_fields():
    text = DARTS_V1_TEXT[:-1] + ", extra=[1])"
    _raises(text, "four fields")


@pytest.mark.parametrize("edge", ["('sep_conv_3x3',)", "('sep_conv_3x3', 0, 1)", "'sep_conv_3x3'",
                                  "(0, 'sep_conv_3x3')", "('sep_conv_3x3', '0')"])
def test_edge_not_a_pair(edge):
    text = (f"Genotype(normal=[{edge}, ('sep_conv_3x3', 1)], normal_concat=[2], "
            "reduce=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], reduce_concat=[2])")
    _raises(text, "normal", "(op, input)")


def test_cell_not_a_list():
    text = ("Genotype(normal=5, normal_concat=[2], "
            "reduce=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], reduce_concat=[2])")
    _raises(text, "normal", "list")


def test_unknown_op_lists_valid_ops():
    text = DARTS_V1_TEXT.replace("('avg_pool_3x3', 0)", "('avg_pool_9x9', 0)")
    message = _raises(text, "avg_pool_9x9", "reduce", "valid ops")
    for op in ("sep_conv_3x3", "max_pool_3x3", "dil_conv_5x5", "skip_connect", "none"):
        assert op in message


def test_input_from_a_later_node():
    # node 2 (the first intermediate node) may take only inputs 0 and 1
    text = ("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 2)], normal_concat=[2], "
            "reduce=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], reduce_concat=[2])")
    _raises(text, "node 2", "input 2")
    # node 3 may take 0..2, not 3
    text = ("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 3), "
            "('sep_conv_3x3', 0)], normal_concat=[2, 3], "
            "reduce=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 2), ('sep_conv_3x3', 1)], "
            "reduce_concat=[2, 3])")
    _raises(text, "node 3", "input 3")


def test_negative_input():
    text = DARTS_V1_TEXT.replace("('sep_conv_3x3', 1)", "('sep_conv_3x3', -1)", 1)
    _raises(text, "input -1")


def test_odd_number_of_edges():
    text = ("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 2)], "
            "normal_concat=[2, 3], "
            "reduce=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], reduce_concat=[2])")
    _raises(text, "normal", "2 incoming edges per node", "3")


def test_empty_cell():
    text = "Genotype(normal=[], normal_concat=[], reduce=[], reduce_concat=[])"
    _raises(text, "non-empty list", "(op, input) pairs")


@pytest.mark.parametrize("concat", ["[2, 3, 4, 6]", "range(2, 7)", "[-1]", "[]"])
def test_concat_out_of_range(concat):
    text = DARTS_V1_TEXT.replace("reduce_concat=[2, 3, 4, 5]", f"reduce_concat={concat}")
    _raises(text, "reduce_concat", "0..5")


def test_code_injection_is_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    text = (f"Genotype(normal=__import__('os').system('echo hi > {marker}'), normal_concat=[2], "
            "reduce=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], reduce_concat=[2])")
    _raises(text, "normal", "literal")
    text = (f"Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], normal_concat=[2], "
            f"reduce=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], "
            f"reduce_concat=range(open(r'{marker}', 'w').write('x')))")
    with pytest.raises(GenotypeError):
        Genotype.parse(text)
    text = f"__import__('os').system('touch {marker}')"
    with pytest.raises(GenotypeError):
        Genotype.parse(text)
    assert not marker.exists()


def test_from_dict_missing_keys(v2):
    d = v2.to_dict()
    del d["reduce"], d["reduce_concat"]
    with pytest.raises(GenotypeError) as info:
        Genotype.from_dict(d)
    assert "reduce" in str(info.value) and "reduce_concat" in str(info.value)
    with pytest.raises(GenotypeError, match="normal"):
        Genotype.from_dict({})


def test_from_dict_checks_content(v2):
    d = v2.to_dict()
    d["normal"][0] = ["conv_99x99", 0]
    with pytest.raises(GenotypeError, match="conv_99x99"):
        Genotype.from_dict(d)


def test_load_json_missing_keys(tmp_path):
    path = tmp_path / "g.json"
    path.write_text(json.dumps({"normal": [["sep_conv_3x3", 0], ["sep_conv_3x3", 1]], "normal_concat": [2]}))
    with pytest.raises(GenotypeError, match="reduce_concat"):
        Genotype.load(path)


def test_load_invalid_json(tmp_path):
    path = tmp_path / "g.json"
    path.write_text('{"normal": [["sep_conv_3x3", 0],')
    with pytest.raises(GenotypeError) as info:
        Genotype.load(path)
    assert "JSON" in str(info.value) and str(path) in str(info.value)


def test_load_garbage_text(tmp_path):
    path = tmp_path / "g.txt"
    path.write_text("this is not a genotype\n")
    with pytest.raises(GenotypeError, match="malformed"):
        Genotype.load(path)


# --- FairDARTS's (op, node, input) form --------------------------------------------------------------

# FairDARTS_a as its code prints it (threshold 0.85): node 3 of the normal cell keeps no edge
FAIR_A = ("Genotype(normal=[('sep_conv_3x3', 2, 0), ('sep_conv_5x5', 2, 1), ('max_pool_3x3', 4, 0), "
          "('sep_conv_3x3', 5, 0)], normal_concat=range(2, 6), "
          "reduce=[('max_pool_3x3', 2, 0), ('avg_pool_3x3', 2, 1), ('avg_pool_3x3', 3, 0), ('dil_conv_5x5', 3, 1), "
          "('avg_pool_3x3', 4, 0), ('sep_conv_5x5', 4, 1), ('skip_connect', 5, 0), ('skip_connect', 5, 1)], "
          "reduce_concat=range(2, 6))")


def test_triples_name_each_edges_node_and_empty_nodes_leave_the_concat():
    g = Genotype.parse(FAIR_A)
    assert g.edges("normal") == (("sep_conv_3x3", 0, 2), ("sep_conv_5x5", 1, 2), ("max_pool_3x3", 0, 4),
                                 ("sep_conv_3x3", 0, 5))
    assert g.normal_concat == (2, 4, 5) and g.reduce_concat == (2, 3, 4, 5) and g.nodes == 4
    assert Genotype.parse(str(g)) == g == Genotype.from_dict(json.loads(json.dumps(g.to_dict())))


def test_pairs_read_as_two_edges_per_node():
    g = Genotype.parse(DARTS_V1_TEXT)
    assert [node for *_, node in g.edges("normal")] == [2, 2, 3, 3, 4, 4, 5, 5]
    assert [(op, j) for op, j, _ in g.edges("reduce")] == list(g.reduce)


def test_triple_from_a_node_without_edges():
    text = FAIR_A.replace("('sep_conv_3x3', 5, 0)", "('sep_conv_3x3', 5, 3)")
    _raises(text, "node 5 takes input 3", "without incoming edges")


def test_triple_into_an_input_node():
    _raises(FAIR_A.replace("('max_pool_3x3', 4, 0)", "('max_pool_3x3', 1, 0)"), "nodes 0 and 1 are the cell's inputs")
