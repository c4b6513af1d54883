"""Cell pictures: the DOT graph as the DARTS code draws it, PNG and SVG through the real `dot`, and a clear
error where Graphviz is missing (`make system-packages` installs it)."""
import re

import pytest

import dnas
from dnas import viz
from dnas.cli import main

DARTS_V2 = dnas.published("DARTS_V2")


def test_a_cell_graph_has_the_inputs_the_nodes_the_output_and_one_labelled_arrow_per_edge():
    dot = viz.cell_dot(DARTS_V2.edges("normal"), DARTS_V2.normal_concat, "normal")
    labels = re.findall(r'^"\w+" \[label="([^"]+)"', dot, re.M)
    assert labels == ["c_{k-2}", "c_{k-1}", "0", "1", "2", "3", "c_{k}"]
    edges = re.findall(r'"normal(\d)" -> "normal(\d)" \[label="(\w+)"', dot)
    assert edges == [(str(j), str(2 + k // 2), op) for k, (op, j) in enumerate(DARTS_V2.normal)]
    assert re.findall(r'"normal(\d)" -> "normal_out"', dot) == ["2", "3", "4", "5"]


def test_only_the_concatenated_nodes_feed_the_output():
    amoeba = dnas.published("AmoebaNet")
    dot = viz.cell_dot(amoeba.edges("reduce"), amoeba.reduce_concat, "reduce")
    assert re.findall(r'"reduce(\d)" -> "reduce_out"', dot) == ["3", "4", "6"]


def test_draw_writes_png_and_svg(tmp_path):
    png = viz.draw(DARTS_V2, tmp_path / "cells.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = viz.draw(dnas.published("NASNet"), tmp_path / "sub" / "cells.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    assert "normal cell" in svg and "reduction cell" in svg and "sep_conv_7x7" in svg and "c_{k&#45;2}" in svg


def test_a_missing_dot_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(viz.shutil, "which", lambda name: None)
    with pytest.raises(viz.GraphvizNotFound, match="apt-get install graphviz"):
        viz.draw(DARTS_V2, tmp_path / "cells.png")
    assert main(["show", "DARTS_V2", "-o", str(tmp_path / "c.png")]) == 2
    assert "apt-get install graphviz" in capsys.readouterr().err
    assert not (tmp_path / "c.png").exists()


def test_a_picture_needs_a_known_format(tmp_path):
    with pytest.raises(ValueError, match="suffix naming its format"):
        viz.draw(DARTS_V2, tmp_path / "cells")
    with pytest.raises(ValueError, match='Format: "xyz" not recognized'):
        viz.draw(DARTS_V2, tmp_path / "cells.xyz")


def test_show_and_info_commands_draw_the_cells(tmp_path, capsys):
    assert main(["show", "pc-darts", "-o", str(tmp_path / "pc.svg")]) == 0
    assert f"PC_DARTS_cifar: {tmp_path / 'pc.svg'}" in capsys.readouterr().out
    assert main(["info", "--genotype", "DARTS_V2", "-o", str(tmp_path / "v2.png")]) == 0
    out = capsys.readouterr().out
    assert "params: 3.349M (3,349,342; auxiliary head excluded)" in out
    assert "mult-adds: 528.4M per image" in out and f"cells: {tmp_path / 'v2.png'}" in out
    assert (tmp_path / "v2.png").is_file()


def test_recurrent_cell_is_drawn_as_the_darts_paper_draws_it(tmp_path):
    g, _ = dnas.load_genotype("DARTS_RNN_V2")
    dot = viz.recurrent_dot(g)
    assert '"x" -> "n0"' in dot and '"h_prev" -> "n0"' in dot
    for i, (op, j) in enumerate(g.recurrent, start=1):
        assert f'"n{j}" -> "n{i}" [label="{op}"' in dot
    assert dot.count('-> "out"') == len(g.concat) == 8
    png = viz.draw(g, tmp_path / "rnn.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
