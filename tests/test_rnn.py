"""The recurrent cell space, its genotypes, the language model, search and training on real Penn Treebank."""
from __future__ import annotations

import inspect
import json
import math

import pytest
import torch
from torch import nn

import dnas
from dnas.cli import main
from dnas.data import DataError, batchify, load_corpus
from dnas.genotype import GenotypeError
from dnas.rnn.model import GenotypeCell, SearchCell, highway, lm_loss
from dnas.rnn.train import KIND, LMTrainConfig, build_lm, evaluate_lm_run
from dnas.registry import UnknownNameError
from dnas.methods import get_method
from dnas.search import recipe_settings
from dnas.relax import RELAXATIONS
from dnas.rnn.genotype import RecurrentGenotype
from dnas.rnn.search import RNNSearch, RNNSearchConfig
from dnas.selection import TopK
from dnas.spaces import SPACES
from dnas.zoo import load_genotype, published

from conftest import SHARED_DATA

PTB = SHARED_DATA / "ptb"
TINY = dict(subset=500, batch_size=6, emb_size=8, hidden_size=8, bptt=8, eval_batch_size=4)
V2_TEXT = ("Genotype(recurrent=[('sigmoid', 0), ('relu', 1), ('relu', 1), ('identity', 1), ('tanh', 2), "
           "('sigmoid', 5), ('tanh', 3), ('relu', 5)], concat=range(1, 9))")


@pytest.fixture(scope="module")
def ptb():
    if not (PTB / "train.txt").is_file():
        pytest.skip(f"Penn Treebank not found in {PTB}; set DNAS_SHARED_DATA to the shared data folder")
    return PTB


def test_the_paper_sizes_and_settings_are_the_defaults():
    # DARTS App. A.2.2: 850 / 850 on PTB's 10,000 words, tied decoder -> "23M" (Table 2)
    model = build_lm(LMTrainConfig(), published("DARTS_RNN_V2"), 10000)
    expected = 10000 * 850 + 10000 + (850 + 850) * 2 * 850 + 8 * 850 * 2 * 850
    assert sum(p.numel() for p in model.parameters()) == expected == 22_960_000
    c = LMTrainConfig()
    assert ((c.emb_size, c.hidden_size, c.batch_size, c.lr, c.weight_decay, c.bptt, c.epochs)
            == (850, 850, 64, 20.0, 8e-7, 35, 8000))
    assert (c.dropout, c.dropouth, c.dropoutx, c.dropouti, c.dropoute, c.grad_clip, c.tar, c.nonmono) == \
        (0.75, 0.25, 0.75, 0.2, 0.1, 0.25, 1e-3, 5)
    # App. A.1.2: the search
    s = RNNSearchConfig()
    assert (s.dataset, s.epochs, s.batch_size, s.lr, s.momentum, s.weight_decay, s.grad_clip, s.bptt) == \
        ("ptb", 50, 256, 20.0, 0.0, 5e-7, 0.25, 35)
    assert (s.arch_lr, tuple(s.arch_betas), s.arch_weight_decay) == (3e-3, (0.9, 0.999), 1e-3)
    space = inspect.signature(SPACES.get("darts-rnn")).parameters
    assert {k: space[k].default for k in ("emb_size", "hidden_size", "nodes", "dropout", "dropouth", "dropoutx",
                                          "dropouti", "dropoute")} == \
        dict(emb_size=300, hidden_size=300, nodes=8, dropout=0.75, dropouth=0.25, dropoutx=0.75, dropouti=0.2,
             dropoute=0.0)
    supernet = SPACES.get("darts-rnn")(vocab_size=50, emb_size=4, hidden_size=4)
    assert supernet.alphas["recurrent"].shape == (36, 5) and supernet.ops == ("none", "tanh", "relu", "sigmoid",
                                                                              "identity")


def test_a_node_of_the_cell_by_hand():
    g = RecurrentGenotype((("relu", 0),), (1,))
    cell = GenotypeCell(g, ninp=1, nhid=1).eval()
    a, b, c, d, e, f = 0.3, -0.4, 0.7, 0.2, 0.9, -1.1
    with torch.no_grad():
        cell.W0.copy_(torch.tensor([[a, b], [c, d]]))
        cell.Ws[0].copy_(torch.tensor([[e, f]]))
    x, h = 0.5, 0.2
    sig = lambda v: 1 / (1 + math.exp(-v))
    s0 = h + sig(x * a + h * c) * (math.tanh(x * b + h * d) - h)
    s1 = s0 + sig(s0 * e) * (max(s0 * f, 0.0) - s0)
    out = cell(torch.tensor([[[x]]]), torch.tensor([[h]]))
    assert out.item() == pytest.approx(s1, rel=1e-6)


def test_the_search_cell_mixes_every_op_and_input_by_the_relaxed_weights():
    torch.manual_seed(0)
    cell = SearchCell(ninp=3, nhid=4, nodes=2).eval()
    cell.bn = nn.Identity()  # the arithmetic of the mixture alone
    x, h = torch.randn(2, 3), torch.randn(2, 4)
    w = torch.softmax(torch.randn(3, 5), -1)  # edges (0->1), (0->2), (1->2) x ops
    s0 = cell.node0(x, h, None, None)
    acts = [None, torch.tanh, torch.relu, torch.sigmoid, lambda v: v]

    def node(i, inputs, rows):
        total = 0
        for s, row in zip(inputs, rows):
            gate, cand = cell.gate_and_candidate(i, s, None)
            total = total + sum(row[o] * highway(s, gate, acts[o](cand)) for o in range(1, 5))
        return total

    s1 = node(0, [s0], w[:1])
    s2 = node(1, [s0, s1], w[1:])
    assert torch.allclose(cell.step(x, h, None, None, w), (s1 + s2) / 2, atol=1e-6)
    # a one-hot mixture is the genotype's cell
    g = RecurrentGenotype((("relu", 0), ("tanh", 1)), (1, 2))
    fixed = GenotypeCell(g, 3, 4).eval()
    fixed.load_state_dict({k: v for k, v in cell.state_dict().items() if k.startswith("W")})
    one_hot = torch.zeros(3, 5)
    one_hot[0, 2] = one_hot[2, 1] = 1
    assert torch.allclose(cell.step(x, h, None, None, one_hot), fixed.step(x, h, None, None), atol=1e-6)


def test_k1_selection_keeps_the_strongest_non_zero_edge_of_each_node():
    model = SPACES.get("darts-rnn")(vocab_size=20, emb_size=4, hidden_size=4, nodes=3)
    a = torch.zeros(6, 5)
    a[0, 0] = 9  # node 1: none is strongest but never chosen -> the best other op
    a[0, 3] = 2
    a[2, 4] = 3  # node 2: input 1 (identity) beats input 0
    a[1, 1] = 1
    a[3, 2], a[5, 1] = 1, 4  # node 3: input 2 (tanh)
    with torch.no_grad():
        model.alphas["recurrent"].copy_(a)
    g = model.derive()
    assert g == RecurrentGenotype((("sigmoid", 0), ("identity", 1), ("tanh", 2)), (1, 2, 3))
    assert model.genotype_metrics(g) == {"identity_recurrent": 1, "depth_recurrent": 3}
    with pytest.raises(ValueError, match="exactly one incoming edge"):
        model.derive(TopK(k=2))


@pytest.mark.parametrize("relaxation", ["softmax", "gumbel", "sigmoid", "dirichlet"])
def test_every_relaxation_drives_the_recurrent_supernet(relaxation):
    torch.manual_seed(0)
    model = SPACES.get("darts-rnn")(vocab_size=30, emb_size=4, hidden_size=4, nodes=3,
                                    relaxation=RELAXATIONS.build(relaxation))
    words = torch.randint(0, 30, (6, 8))  # batch 8: BatchNorm over 2 rows would make every node +-1
    logits, _, _ = model(words[:-1], model.init_hidden(8))
    lm_loss(logits, words[1:]).backward()
    assert model.alphas["recurrent"].grad.abs().sum() > 0


def test_genotype_text_json_and_errors(tmp_path):
    g = published("DARTS_RNN_V2")
    assert str(g) == V2_TEXT
    assert RecurrentGenotype.parse(V2_TEXT) == g == RecurrentGenotype.parse(str(g).replace("range(1, 9)",
                                                                                           str(list(range(1, 9)))))
    g.save(tmp_path / "g.json")
    g.save(tmp_path / "g.txt")
    assert json.loads((tmp_path / "g.json").read_text())["space"] == "darts-rnn"
    assert (load_genotype(tmp_path / "g.json")[0] == load_genotype(tmp_path / "g.txt")[0]
            == load_genotype(V2_TEXT)[0] == g)
    assert published("DARTS_RNN_V1").recurrent[5] == ("identity", 1)
    for text, message in [("Genotype(recurrent=[('gelu', 0)], concat=[1])", "unknown activation 'gelu'"),
                          ("Genotype(recurrent=[('tanh', 1)], concat=[1])", "node 1 takes input 1"),
                          ("Genotype(recurrent=[('tanh', 0)], concat=[2])", "concat must name nodes in 0..1"),
                          ("Genotype(recurrent=[('tanh', 0)])", "two fields"),
                          ("Genotype(recurrent=[('tanh' 0)], concat=[1])", "malformed"),
                          ("Genotype(recurrent=[('tanh',)], concat=[1])", "pair")]:
        with pytest.raises(GenotypeError, match=message):
            RecurrentGenotype.parse(text)


def test_the_corpus_layer_reads_ptb_exactly_and_says_what_is_wrong(ptb, tmp_path):
    corpus = load_corpus("ptb", ptb)
    assert (corpus.vocab_size, len(corpus.train), len(corpus.valid), len(corpus.test)) == (10000, 929589, 73760, 82430)
    assert corpus.vocab[corpus.train[0]] == "aer" and "<unk>" in corpus.vocab and "<eos>" in corpus.vocab
    assert batchify(corpus.valid, 10).shape == (7376, 10)
    (tmp_path / "train.txt").write_text("a b\n")
    with pytest.raises(DataError, match="valid.txt, test.txt missing"):
        load_corpus("text", tmp_path)
    (tmp_path / "valid.txt").write_text("b c\n")
    (tmp_path / "test.txt").write_text("\n  \n")
    with pytest.raises(DataError, match="test.txt holds no words"):
        load_corpus("text", tmp_path)
    with pytest.raises(UnknownNameError, match="valid text data sets: ptb, text, wikitext2"):
        load_corpus("penn", tmp_path)
    (tmp_path / "test.txt").write_text("c a\n")
    small = load_corpus("text", tmp_path)
    assert small.vocab == ["a", "b", "<eos>", "c"] and small.train.tolist() == [0, 1, 2]


@pytest.mark.slow
def test_a_tiny_search_on_ptb_resumes_exactly(ptb, tmp_path, monkeypatch):
    settings = dict(space="darts-rnn", method="darts-v2", dataset="ptb", data=ptb, epochs=2, progress=False, **TINY)
    whole = dnas.search(run_dir=tmp_path / "whole", **settings)
    assert isinstance(whole.genotype, RecurrentGenotype) and whole.genotype.nodes == 8
    m = whole.metrics[-1]
    assert math.isfinite(m["val_ppl"]) and m["val_ppl"] == pytest.approx(math.exp(m["val_loss"]))
    assert RecurrentGenotype.load(whole.run_dir / "genotype.json") == whole.genotype

    calls, original = {"n": 0}, RNNSearch.train_epoch

    def interrupted(self, progress):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, progress)

    monkeypatch.setattr(RNNSearch, "train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        dnas.search(run_dir=tmp_path / "cut", **settings)
    monkeypatch.setattr(RNNSearch, "train_epoch", original)
    resumed = dnas.search(resume=tmp_path / "cut", progress=False)
    assert (resumed.run_dir / "alphas.jsonl").read_text() == (whole.run_dir / "alphas.jsonl").read_text()
    strip = lambda ms: [{k: v for k, v in r.items() if k != "seconds"} for r in ms]
    assert strip(resumed.metrics) == strip(whole.metrics)


@pytest.mark.slow
def test_a_tiny_language_model_trains_tests_and_resumes(ptb, tmp_path, monkeypatch, capsys):
    settings = dict(data=ptb, epochs=2, subset=3000, valid_subset=800, batch_size=8, emb_size=8, hidden_size=8,
                    bptt=10, progress=False)
    result = dnas.train("DARTS_RNN_V2", "ptb", run_dir=tmp_path / "lm", **settings)
    assert [m["optimizer"] for m in result.metrics] == ["sgd", "sgd"]
    assert result.metrics[-1]["train_ppl"] < result.metrics[0]["train_ppl"]
    report = evaluate_lm_run(result.run_dir, subset=600, device="cpu", progress=False)
    assert report.test_ppl < 10000  # better than a uniform guess over the vocabulary
    assert json.loads(report.file.read_text())["test_ppl"] == pytest.approx(report.test_ppl)
    assert main(["test", str(result.run_dir), "--subset", "600", "-q"]) == 0
    assert "test perplexity" in capsys.readouterr().out
    # a part of the text, or another test batch, is written beside a whole test's file, not over it
    assert report.file.name == "test-best-subset600.json"
    other = evaluate_lm_run(result.run_dir, subset=600, batch_size=4, device="cpu", progress=False)
    assert other.file.name == "test-best-subset600-batch4.json"
    assert json.loads(other.file.read_text())["test_batch_size"] == 4
    with pytest.raises(DataError, match="wikitext2: no data folder given"):  # not the run's PTB files, mislabelled
        evaluate_lm_run(result.run_dir, dataset="wikitext2", subset=600, device="cpu", progress=False)

    from dnas.rnn.train import LMTrainer
    calls, original = {"n": 0}, LMTrainer.train_epoch

    def interrupted(self, progress):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, progress)

    monkeypatch.setattr(LMTrainer, "train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        dnas.train("DARTS_RNN_V2", "ptb", run_dir=tmp_path / "cut", **settings)
    monkeypatch.setattr(LMTrainer, "train_epoch", original)
    with pytest.raises(ValueError, match=r"only device, data may change, not \['epochs'\]"):
        dnas.train(resume=tmp_path / "cut", epochs=3, progress=False)
    resumed = dnas.train(resume=tmp_path / "cut", progress=False)
    strip = lambda ms: [{k: v for k, v in r.items() if k != "seconds"} for r in ms]
    assert strip(resumed.metrics) == strip(result.metrics)


def test_asgd_takes_over_on_a_non_monotone_validation_loss(ptb, tmp_path, monkeypatch):
    # AWD-LSTM / DARTS: switch once the loss is worse than the best of all but the last `nonmono` epochs
    losses = iter([5.0, 4.0, 4.5, 4.6, 4.7])
    monkeypatch.setattr("dnas.rnn.train.evaluate_lm", lambda *a, **k: next(losses))
    result = dnas.train("DARTS_RNN_V1", "ptb", data=ptb, run_dir=tmp_path / "lm", epochs=5, subset=600,
                        valid_subset=200, batch_size=6, emb_size=4, hidden_size=4, bptt=8, nonmono=1, progress=False)
    assert [m["optimizer"] for m in result.metrics] == ["sgd"] * 4 + ["asgd"]
    assert [m.get("switched_to_asgd", False) for m in result.metrics] == [False, False, False, True, False]
    state = torch.load(result.run_dir / "checkpoint.pt", weights_only=True)
    last = torch.load(result.run_dir / "last.pt", weights_only=True)
    # under ASGD the validated (and saved) weights are the averaged ones, not the live ones
    assert state["averaging"] and not torch.equal(last["encoder.weight"], state["model"]["encoder.weight"])


def test_bad_input_is_refused_clearly(ptb, tmp_path, capsys):
    assert main(["search", "--space", "darts-rnn", "--dataset", "cifar10", "--data", str(ptb)]) == 2
    assert "unknown text data set 'cifar10'; valid text data sets: ptb, text, wikitext2" in capsys.readouterr().err
    assert main(["search", "--space", "darts-rnn", "--data", str(ptb), "--fast"]) == 2
    assert "--fast (fused cells, CUDA graphs, NHWC) is for the image spaces" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown settings layers: .* of the darts-rnn space; valid: .*hidden_size"):
        dnas.search(space="darts-rnn", dataset="ptb", data=ptb, layers=5, run_dir=tmp_path / "r", progress=False)
    with pytest.raises(ValueError, match="method fair-darts: its selection part 'threshold' works on the darts and "
                                         "nb201 spaces only, not on darts-rnn"):  # it may keep no edge of a node
        dnas.search(space="darts-rnn", method="fair-darts", dataset="ptb", data=ptb, run_dir=tmp_path / "f")
    assert not (tmp_path / "f").exists()
    with pytest.raises(ValueError, match="method pc-darts: its edge part 'partial_channel' works on the darts and "
                                         "nb201 spaces only, not on darts-rnn"):
        dnas.search(space="darts-rnn", method="pc-darts", dataset="ptb", data=ptb, run_dir=tmp_path / "p")
    with pytest.raises(ValueError, match="edge 'sum'"):
        SPACES.get("darts-rnn")(vocab_size=10, emb_size=4, hidden_size=4,
                                edge=dnas.methods.registries()["edge"].build("partial_channel"))
    with pytest.raises(ValueError, match="text corpus"):
        dnas.train("DARTS_RNN_V2", "cifar10", run_dir=tmp_path / "t", progress=False)
    with pytest.raises(ValueError, match="hidden size must equal the embedding"):
        build_lm(LMTrainConfig(emb_size=8, hidden_size=6), published("DARTS_RNN_V2"), 10)
    assert main(["info", "--genotype", "DARTS_RNN_V2", "--dataset", "ptb"]) == 0
    assert "22,960,000" in capsys.readouterr().out
    assert main(["train", "--genotype", "DARTS_RNN_V2", "--test-subset", "64", "--layers", "3"]) == 2
    assert "--layers, --test-subset: not for DARTS_RNN_V2, a recurrent one, trained as a language model" in \
        capsys.readouterr().err
    assert main(["train", "--genotype", "DARTS_V2", "--hidden-size", "16"]) == 2
    assert "--hidden-size: not for DARTS_V2, a convolutional one, trained on images" in capsys.readouterr().err
    assert main(["info", "--genotype", "DARTS_RNN_V2", "--layers", "3"]) == 2
    assert "--layers: for convolutional cells; DARTS_RNN_V2 is a recurrent one" in capsys.readouterr().err
    run = tmp_path / "lm"  # a training run's files: sized as it trained
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"kind": KIND, "config": {"hidden_size": 32}, "vocab_size": 500,
                                                 "genotype": published("DARTS_RNN_V2").to_dict()}))
    published("DARTS_RNN_V2").save(run / "genotype.json")
    assert main(["info", "--genotype", str(run), "-o", str(tmp_path / "cell.svg")]) == 0
    out = capsys.readouterr().out
    assert "embedding = hidden = 32, vocabulary 500" in out and f"cells: {tmp_path / 'cell.svg'}" in out


def test_gdas_searches_the_recurrent_cell_in_its_order(ptb, tmp_path, monkeypatch):
    """GDAS's recipe (weight step first, Nesterov momentum) on the recurrent space: its SGD has no momentum, so
    plain SGD (Nesterov without momentum), and each window's weight step comes before its architecture step;
    the settings the recurrent search has of its own (search.recipe_settings) stay its own."""
    order = []
    for cls, name in ((torch.optim.SGD, "weights"), (torch.optim.Adam, "alphas")):
        monkeypatch.setattr(cls, "step", lambda self, *a, step=cls.step, name=name, **k:
                            order.append(name) or step(self, *a, **k))
    settings = dict(space="darts-rnn", method="gdas", dataset="ptb", data=ptb, epochs=1, progress=False, **TINY)
    run = dnas.search(run_dir=tmp_path / "r", **settings).run_dir
    config = json.loads((run / "config.json").read_text())["config"]
    assert config["weight_step_first"] and config["nesterov"] and config["momentum"] == 0
    # its recipe's image-search settings (250 epochs, batch 256, weight decay 5e-4) leave the PTB search's
    assert config["weight_decay"] == 5e-7 and recipe_settings(get_method("gdas"), RNNSearchConfig) == {
        "nesterov": True, "weight_step_first": True, "step_unused_weights": True}
    assert len(order) > 2 and order == ["weights", "alphas"] * (len(order) // 2)


@pytest.mark.parametrize("setting, message", [
    (dict(cuda_graph=True), "cuda_graph does not apply to the recurrent search"),
    (dict(channels_last=True), "channels_last is a layout of images"),
    (dict(precision="bf16"), "precision 'bf16': the recurrent search runs in fp32 only"),
    (dict(eval_channels_last=True), "eval_channels_last: settings of the image search"),
    (dict(side_streams=2, dense_samples=True), "side_streams, dense_samples: ways of running the image spaces' "
                                               "fused cells; the recurrent search has none"),
])
def test_recurrent_search_refuses_the_image_search_options(tmp_path, setting, message):
    with pytest.raises(ValueError, match=message):
        dnas.search(space="darts-rnn", method="darts-v1", run_dir=tmp_path / "r", **setting)
