"""The defining mathematics of each part of the method zoo, on tiny tensors."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dnas.arch_grad import Implicit
from dnas.edges import EDGES, AuxiliarySkip, MixedEdge, NoisySkip, PartialChannel
from dnas.perturb import Adversarial, RandomSmoothing, perturbed
from dnas.regularizers import BetaDecay, DirichletKL, L1ParameterFree, ZeroOne
from dnas.relax import RELAXATIONS, Dirichlet, GumbelSoftmax, Sigmoid, Softmax
from dnas.schedule import interpolate
from dnas.search import batch_loss
from dnas.selection import SELECTIONS
from dnas.spaces.darts import DartsSupernet, candidate_ops
from dnas.stopping import HessianEigenvalue, RankStability, SkipCount, dominant_eigenvalue

torch.manual_seed(0)


# -- relaxations ------------------------------------------------------------------------------------------
def test_softmax_and_sigmoid_relaxations():
    alpha = torch.randn(14, 8)
    torch.testing.assert_close(Softmax().weights(alpha), torch.softmax(alpha, -1))
    torch.testing.assert_close(Sigmoid().weights(alpha), 1 / (1 + torch.exp(-alpha)))
    assert not (Sigmoid().weights(alpha).sum(-1) - 1).abs().lt(1e-3).all()  # no competition between ops


def test_hard_gumbel_is_one_hot_forward_with_a_soft_gradient():
    relax = GumbelSoftmax(hard=True)
    relax.on_epoch_start(0, 50)
    alpha = torch.randn(14, 8, requires_grad=True)
    w = relax.weights(alpha)
    assert torch.equal(w.detach().sum(-1), torch.ones(14)) and set(w.detach().unique().tolist()) == {0.0, 1.0}
    (w * torch.randn(14, 8)).sum().backward()
    assert alpha.grad.abs().gt(0).all()  # every op's alpha is reached through the soft sample


def test_hard_gumbel_runs_only_the_sampled_op_and_still_gives_alpha_a_gradient():
    calls = []

    class Recorder(nn.Module):
        def __init__(self, name):
            super().__init__()
            self.name, self.scale = name, nn.Parameter(torch.tensor(1.0))

        def forward(self, x):
            calls.append(self.name)
            return self.scale * x

    edge = MixedEdge({n: Recorder(n) for n in "abcd"})
    alpha = torch.zeros(1, 4, requires_grad=True)
    w = GumbelSoftmax(hard=True).weights(alpha)[0]
    k = int(w.argmax())
    x = torch.arange(1.0, 7.0).view(2, 3)
    y = edge(x, w, active=[k])
    assert calls == ["abcd"[k]]
    torch.testing.assert_close(y, x)
    (y * y).sum().backward()
    assert alpha.grad.abs().sum() > 0


def test_gumbel_temperature_is_annealed_from_10_to_0_1():
    relax = GumbelSoftmax()
    assert relax.tau_range == (10.0, 0.1)
    taus = [relax.on_epoch_start(e, 5)["tau"] for e in range(5)]
    assert taus == pytest.approx([10.0, 7.525, 5.05, 2.575, 0.1])
    soft = GumbelSoftmax(hard=False, tau=(1.0, 0.03), schedule="exponential")
    assert soft.on_epoch_start(4, 5)["tau"] == pytest.approx(0.03)
    soft.on_epoch_start(0, 5)
    weights = soft.weights(torch.zeros(2, 5))
    assert not soft.hard and weights.min() > 0 and weights.sum(-1).allclose(torch.ones(2))


def test_gumbel_samples_follow_softmax_alpha():
    alpha = torch.log(torch.tensor([[0.6, 0.3, 0.1]]))
    relax = GumbelSoftmax(hard=True, tau=(1.0, 1.0))
    counts = sum(relax.weights(alpha).detach() for _ in range(4000))
    torch.testing.assert_close(counts / 4000, torch.tensor([[0.6, 0.3, 0.1]]), atol=0.03, rtol=0)


def test_dirichlet_pathwise_samples_and_mean():
    relax = Dirichlet()
    alpha = torch.tensor([[0.5, -0.5, 2.0]], requires_grad=True)
    beta = torch.nn.functional.elu(alpha.detach()) + 1
    samples = torch.stack([relax.weights(alpha) for _ in range(3000)])
    torch.testing.assert_close(samples.mean(0).detach(), beta / beta.sum(), atol=0.02, rtol=0)
    torch.testing.assert_close(relax.strengths(alpha.detach()), beta / beta.sum())
    samples[:, 0, 2].sum().backward()
    assert alpha.grad[0, 2] > 0  # reparameterised: a larger concentration gives a larger sampled weight


# -- edge computations ------------------------------------------------------------------------------------
def test_partial_channels_pass_exactly_1_over_k_of_the_channels_through_the_ops():
    ops = ("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3")
    edge = PartialChannel(k=4)(16, 1, lambda C, s: candidate_ops(ops, C, s))
    assert all(m.in_channels == 4 for m in edge.modules() if isinstance(m, nn.Conv2d))
    x = torch.randn(2, 16, 8, 8)
    w = torch.tensor([0.0, 0.0, 1.0, 0.0])  # only skip: the edge is a pure channel permutation
    y = edge(x, w)
    torch.testing.assert_close(y, F.channel_shuffle(x, 4))
    # the bypassed 3/4 of the channels are untouched by the ops
    w = torch.tensor([1.0, 0.0, 0.0, 0.0])  # only none: the processed quarter is zero
    y = edge(x, w).view(2, 4, 4, 8, 8).transpose(1, 2).reshape(2, 16, 8, 8)  # undo the shuffle
    assert y[:, :4].abs().max() == 0 and torch.equal(y[:, 4:], x[:, 4:])
    reduce = PartialChannel(k=4)(16, 2, lambda C, s: candidate_ops(ops, C, s))
    assert reduce(x, torch.softmax(torch.randn(4), 0)).shape == (2, 16, 4, 4)
    with pytest.raises(ValueError, match="divisible by 4"):
        PartialChannel(k=4)(18, 1, lambda C, s: candidate_ops(ops, C, s))


def test_channel_shuffle_interleaves_groups():
    """PC-DARTS's shuffle is ShuffleNet's (PyTorch's F.channel_shuffle): the channels of K groups interleaved."""
    x = torch.arange(8.0).view(1, 8, 1, 1)
    assert F.channel_shuffle(x, 2).flatten().tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


def test_pc_darts_edge_normalisation_weights_nodes_and_enters_selection():
    model = DartsSupernet(C=8, layers=3, nodes=2, edge=PartialChannel(), edge_normalization=True)
    assert [p.shape for p in model.arch_parameters()] == [(5, 8), (5, 8), (5,), (5,)]
    with torch.no_grad():
        model.betas["normal"].copy_(torch.tensor([0.0, 5.0, 0.0, 0.0, 5.0]))
    ew = model.edge_weights("normal")
    torch.testing.assert_close(ew[:2].sum(), torch.tensor(1.0))  # softmax over the edges into node 0
    torch.testing.assert_close(ew[2:].sum(), torch.tensor(1.0))
    s = model.strengths()["normal"]
    torch.testing.assert_close(s, torch.softmax(model.alphas["normal"].detach(), -1) * ew[:, None])
    genotype = model.derive()
    assert genotype.normal[0][1] == 1  # the strong edge into node 0 wins
    model(torch.randn(2, 3, 16, 16)).sum().backward()
    assert model.betas["normal"].grad.abs().sum() > 0


def test_darts_minus_auxiliary_skip_adds_beta_x_and_decays_linearly():
    part = AuxiliarySkip()
    betas = [part.on_epoch_start(e, 5)["aux_skip_beta"] for e in range(5)]
    assert betas == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2])  # 1 - epoch / epochs
    ops = ("none", "skip_connect", "sep_conv_3x3")
    edge = part(4, 1, lambda C, s: candidate_ops(ops, C, s))
    x, w = torch.randn(2, 4, 6, 6), torch.tensor([1.0, 0.0, 0.0])
    part.beta = 0.3
    torch.testing.assert_close(edge(x, w), 0.3 * x)
    assert part(4, 2, lambda C, s: candidate_ops(ops, C, s))(x, w).shape == (2, 4, 3, 3)


def test_noisy_darts_adds_unbiased_noise_scaled_to_the_skip_output_in_training_only():
    ops = ("none", "skip_connect", "sep_conv_3x3")
    assert NoisySkip().factor == 0.2 and NoisySkip().mean == 0.0
    edge = NoisySkip(factor=0.2)(4, 1, lambda C, s: candidate_ops(ops, C, s))
    x, w = 3.0 * torch.randn(64, 4, 8, 8), torch.tensor([0.0, 1.0, 0.0])
    noise = edge(x, w) - x
    assert abs(noise.mean().item()) < 0.02 and noise.std().item() == pytest.approx(0.2 * 3.0, rel=0.05)
    edge.eval()
    torch.testing.assert_close(edge(x, w), x)
    with pytest.raises(ValueError, match="skip_connect"):
        NoisySkip()(4, 1, lambda C, s: candidate_ops(("none", "sep_conv_3x3"), C, s))


# -- regularisers -----------------------------------------------------------------------------------------
def supernet():
    return DartsSupernet(C=4, layers=3, nodes=2, in_channels=1, num_classes=3)


def test_beta_decay_is_lambda_times_mean_logsumexp():
    model, reg = supernet(), BetaDecay(weight=(0.0, 2.0))
    reg.on_epoch_start(4, 5)
    alphas = torch.cat(list(model.alphas.values()))
    torch.testing.assert_close(reg(model), 2.0 * torch.logsumexp(alphas, -1).mean())
    reg(model).backward()
    torch.testing.assert_close(model.alphas["normal"].grad,
                               2.0 * torch.softmax(model.alphas["normal"].detach(), -1) / 10)


def test_zero_one_loss_and_its_gradient():
    model, reg = supernet(), ZeroOne()
    assert reg.weight == 10.0
    a = torch.cat([x.flatten() for x in model.alphas.values()])
    torch.testing.assert_close(reg(model), -10.0 * ((torch.sigmoid(a) - 0.5) ** 2).mean())
    with torch.no_grad():
        model.alphas["normal"].fill_(0.5)
    reg(model).backward()
    s = torch.sigmoid(torch.tensor(0.5))
    expected = -10.0 * 2 * (s - 0.5) * s * (1 - s) / a.numel()
    torch.testing.assert_close(model.alphas["normal"].grad, torch.full((5, 8), expected.item()))
    assert (model.alphas["normal"].grad < 0).all()  # descending pushes positive alphas towards sigmoid = 1


def test_l1_on_parameter_free_ops_only():
    model, reg = supernet(), L1ParameterFree(weight=0.5)
    free = [i for i, n in enumerate(model.ops) if n in ("none", "skip_connect", "max_pool_3x3", "avg_pool_3x3")]
    expected = 0.5 * sum(a[:, free].abs().sum() for a in model.alphas.values())
    torch.testing.assert_close(reg(model), expected)
    reg(model).backward()
    learnable = [i for i in range(8) if i not in free]
    assert model.alphas["normal"].grad[:, learnable].abs().max() == 0


def test_dirichlet_kl_is_the_divergence_from_the_uniform_dirichlet_over_the_live_ops():
    from torch.distributions import Dirichlet, kl_divergence

    model, reg = supernet(), DirichletKL(weight=1e-3)
    with torch.no_grad():
        for a in model.alphas.values():
            a.normal_()
    beta = [torch.nn.functional.elu(a) + 1 for a in model.alphas.values()]
    expected = sum(kl_divergence(Dirichlet(b), Dirichlet(torch.ones_like(b))).sum() for b in beta)
    torch.testing.assert_close(reg(model), 1e-3 * expected)
    with torch.no_grad():  # an op masked out of the space (alpha = -inf): over the others alone
        model.alphas["normal"][:, 0] = float("-inf")
    live = [b[:, 1:] if t == "normal" else b for t, b in zip(model.alphas, beta)]
    expected = sum(kl_divergence(Dirichlet(b), Dirichlet(torch.ones_like(b))).sum() for b in live)
    torch.testing.assert_close(reg(model), 1e-3 * expected)


# -- perturbations ----------------------------------------------------------------------------------------
def test_sdarts_perturbs_the_op_weights_clamped_and_renormalised():
    w, delta = torch.tensor([[0.5, 0.3, 0.2]]), torch.tensor([[0.6, -0.4, 0.1]])
    torch.testing.assert_close(perturbed(w, delta), torch.tensor([[1.0, 0.0, 0.3]]) / 1.3)


def test_random_smoothing_is_uniform_within_epsilon_ramped_from_0_03_to_0_3():
    model, rs = supernet(), RandomSmoothing()
    assert rs.epsilon_range == (0.03, 0.3)
    # the SDARTS code's 0.03 + 0.27 * epoch / epochs
    assert [rs.on_epoch_start(e, 3)["perturbation_epsilon"] for e in range(3)] == pytest.approx([0.03, 0.12, 0.21])
    rs.on_epoch_start(0, 3)
    deltas = rs(model, None)
    assert set(deltas) == set(model.alphas) and all(d.shape == model.alphas[t].shape for t, d in deltas.items())
    d = torch.cat([x.flatten() for x in deltas.values()])
    assert d.abs().max() <= 0.03 and d.abs().mean().item() == pytest.approx(0.015, rel=0.2)


def test_adversarial_perturbation_increases_the_loss_and_stays_in_the_ball():
    model = supernet()
    batch = (torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,)))
    loss = lambda params=None: batch_loss(model, batch, params)
    adv = Adversarial(epsilon=0.3, steps=7)
    assert adv.epsilon == 0.3 and Adversarial().epsilon_range == (0.03, 0.3) and Adversarial().steps == 7
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    torch.manual_seed(1)
    deltas = adv(model, loss)
    assert model.training and model.weight_delta is None  # the model is left as it was
    assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers())  # BN statistics untouched
    assert max(d.abs().max() for d in deltas.values()) <= 0.3 + 1e-6
    model.eval()  # compare as PGD does, on the running statistics
    with torch.no_grad():
        clean = batch_loss(model, batch).item()
        model.weight_delta = deltas
        attacked = batch_loss(model, batch).item()
        model.weight_delta = {t: torch.empty_like(d).uniform_(-0.3, 0.3) for t, d in deltas.items()}
        random = batch_loss(model, batch).item()
    assert attacked > clean and attacked > random


def test_an_attack_that_does_not_raise_the_loss_perturbs_nothing():
    """As the SDARTS code: where PGD ends below the unperturbed loss, the weight step runs unperturbed. Here a
    loss that every perturbation lowers."""
    model = supernet()
    loss = lambda params=None: -sum((d ** 2).sum() for d in (model.weight_delta or {"none": torch.zeros(1)}).values())
    deltas = Adversarial(epsilon=0.3, steps=3)(model, loss)
    assert all(torch.equal(d, torch.zeros_like(d)) for d in deltas.values())


# -- stopping ---------------------------------------------------------------------------------------------
def test_skip_count_stops_at_two_skips():
    stop = SkipCount()
    assert stop(None, {"epoch": 3, "skip_connect_normal": 1}) is None
    s = stop(None, {"epoch": 4, "skip_connect_normal": 2})
    assert s.genotype_epoch == 4 and "2 skip" in s.reason


def test_rank_stability_counts_unchanged_epochs():
    class Fake:
        model = supernet()

    with torch.no_grad():
        Fake.model.alphas["normal"][0, 4:] = torch.tensor([0.4, 0.3, 0.2, 0.1])
    stop = RankStability(patience=3)
    results = [stop(Fake, {"epoch": e}) for e in range(1, 5)]
    assert results[:3] == [None, None, None] and results[3].genotype_epoch == 4
    with torch.no_grad():
        Fake.model.alphas["normal"][0, 7] += 10  # a learnable op overtakes: the count restarts
    assert stop(Fake, {"epoch": 5}) is None and stop.stable == 0


def test_dominant_eigenvalue_matches_the_autograd_hessian():
    torch.manual_seed(0)
    model = DartsSupernet(C=2, layers=3, nodes=1, in_channels=1, num_classes=3,
                          ops=("none", "skip_connect", "avg_pool_3x3")).double()
    batch = (torch.randn(6, 1, 8, 8, dtype=torch.float64), torch.randint(0, 3, (6,)))

    class Fake:
        pass

    Fake.model, Fake.val_loader = model, [batch]
    value = dominant_eigenvalue(Fake, batches=1, iterations=200)
    a0, a1 = model.arch_parameters()

    def loss(x0, x1):
        logits = torch.func.functional_call(model, {"alphas.normal": x0, "alphas.reduce": x1}, (batch[0],))
        return torch.nn.functional.cross_entropy(logits, batch[1])

    h = torch.autograd.functional.hessian(loss, (a0.detach(), a1.detach()))
    n0 = a0.numel()
    full = torch.cat([torch.cat([h[0][0].reshape(n0, n0), h[0][1].reshape(n0, -1)], 1),
                      torch.cat([h[1][0].reshape(-1, n0), h[1][1].reshape(a1.numel(), -1)], 1)])
    eig = torch.linalg.eigvalsh(full)
    dominant = eig[eig.abs().argmax()].item()
    assert value == pytest.approx(dominant, rel=1e-4)


def test_hessian_stopper_ratio_rule():
    stop = HessianEigenvalue(window=2, threshold=0.75)
    stop.history = [1.0, 1.0, 1.0]
    import dnas.stopping as st

    original = st.dominant_eigenvalue
    st.dominant_eigenvalue = lambda *a: 2.0
    try:
        assert stop(None, {"epoch": 4}) is not None  # before = mean(1, 1), now = mean(1, 2): 1/1.5 < 0.75
    finally:
        st.dominant_eigenvalue = original
    assert stop.state_dict() == {"history": [1.0, 1.0, 1.0, 2.0]}


def test_hessian_stopper_takes_its_codes_rule_too(monkeypatch):
    """R-DARTS's code (EVLocalAvg): means over 5 epochs, 4 apart, a rise by more than 1.3 stops, not before its
    epoch 17, and the genotype is that of 6 epochs back (its means are centred)."""
    import dnas.stopping as st

    values = [1.0] * 9 + [2.0] * 8 + [6.0] * 3  # epochs 1-9, 10-17, 18-20
    stops = {}
    for start in (1, 17):
        code = HessianEigenvalue(window=5, lag=4, threshold=1 / 1.3, start_epoch=start, centred=True)
        draws = iter(values)
        monkeypatch.setattr(st, "dominant_eigenvalue", lambda *a: next(draws))
        stops[start] = {epoch: code(None, {"epoch": epoch}) for epoch in range(1, 21)}
    # epoch 11: (1, 1, 1, 2, 2) against (1, 1, 1, 1, 1); epoch 17: (2, 2, 2, 2, 2) against (1, 2, 2, 2, 2), no
    # rise of 1.3; epoch 18: (2, 2, 2, 2, 6) against (2, 2, 2, 2, 2)
    assert min(e for e, s in stops[1].items() if s is not None) == 11
    assert [e for e, s in stops[17].items() if s is not None] == [18, 19, 20]
    assert stops[17][18].genotype_epoch == 12
    with pytest.raises(ValueError, match="lag must be >= 1, not 0"):
        HessianEigenvalue(lag=0)
    with pytest.raises(ValueError, match="threshold is the ratio .* between 0 and 1, not 1.3"):
        HessianEigenvalue(threshold=1.3)


# -- architecture gradients -------------------------------------------------------------------------------
class Quadratic(nn.Module):
    """L_train = 1/2 w'Aw - w'B alpha (so w*(alpha) = A^-1 B alpha), L_val = 1/2 |w - c|^2 + d'alpha."""

    def __init__(self, n=4, m=3):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        q = torch.randn(n, n, generator=g, dtype=torch.float64)
        self.A = q @ q.T / n + torch.eye(n, dtype=torch.float64)
        self.B = torch.randn(n, m, generator=g, dtype=torch.float64)
        self.c = torch.randn(n, generator=g, dtype=torch.float64)
        self.d = torch.randn(m, generator=g, dtype=torch.float64)
        self.w = nn.Parameter(torch.randn(n, generator=g, dtype=torch.float64))
        self.alpha = nn.Parameter(torch.randn(m, generator=g, dtype=torch.float64))

    def arch_parameters(self):
        return [self.alpha]

    def weight_parameters(self):
        return [self.w]

    def train_loss(self, params=None):
        return 0.5 * self.w @ self.A @ self.w - self.w @ self.B @ self.alpha

    def val_loss(self, params=None):
        return 0.5 * ((self.w - self.c) ** 2).sum() + self.d @ self.alpha


def test_implicit_gradient_matches_the_exact_hypergradient_on_a_quadratic():
    q = Quadratic()
    with torch.no_grad():  # at the inner optimum w*(alpha), where the implicit function theorem applies
        q.w.copy_(torch.linalg.solve(q.A, q.B @ q.alpha))
    exact = q.d + (torch.linalg.solve(q.A, q.B)).T @ (q.w.detach() - q.c)
    eta = 0.9 / torch.linalg.eigvalsh(q.A).max().item()
    opt = torch.optim.SGD(q.weight_parameters(), lr=eta)
    Implicit(k=200)(q, q.train_loss, q.val_loss, opt)
    torch.testing.assert_close(q.alpha.grad, exact, rtol=1e-6, atol=1e-8)
    Implicit(k=0)(q, q.train_loss, q.val_loss, opt)  # one term: the one-step unrolled approximation
    torch.testing.assert_close(q.alpha.grad, q.d + eta * q.B.T @ (q.w.detach() - q.c))


def test_schedule_shapes():
    assert interpolate(1, 0, 2, 5) == 0.5
    assert interpolate(1, 0, 2, 5, "cosine") == pytest.approx(0.5)
    assert interpolate(10, 0.1, 4, 5, "exponential") == pytest.approx(0.1)
    with pytest.raises(ValueError, match="valid: linear, cosine, exponential"):
        interpolate(1, 0, 0, 5, "step")


def test_registries_list_their_parts():
    assert RELAXATIONS.names() == ["dirichlet", "gumbel", "sigmoid", "softmax"]
    assert EDGES.names() == ["auxiliary_skip", "noisy_skip", "partial_channel", "skip_dropout", "sum"]


# -- FairDARTS selection ----------------------------------------------------------------------------------
def test_threshold_keeps_edges_whose_best_op_reaches_0_85_at_most_two_per_node():
    ops = ["none", "skip_connect", "sep_conv_3x3"]
    s = torch.tensor([[0.99, 0.90, 0.10],   # best non-zero op 0.90: kept
                      [0.00, 0.20, 0.84],   # 0.84: below the threshold
                      [0.00, 0.95, 0.97]])  # 0.97: kept, strongest
    sel = SELECTIONS.get("threshold")()
    assert (sel.threshold, sel.k) == (0.85, 2)
    assert sel(s, ops) == [("sep_conv_3x3", 2), ("skip_connect", 0)]
    s[1, 2] = 0.86
    assert sel(s, ops) == [("sep_conv_3x3", 2), ("skip_connect", 0)]  # three pass, two strongest kept
    assert len(SELECTIONS.get("threshold")(k=None)(s, ops)) == 3


def test_threshold_derives_a_fairdarts_genotype_with_nodes_dropped():
    model = DartsSupernet(C=4, layers=3, nodes=3, in_channels=1, num_classes=3, relaxation=Sigmoid(),
                          ops=("skip_connect", "sep_conv_3x3"))
    with torch.no_grad():
        for a in model.alphas.values():
            a.fill_(-5.0)  # sigmoid 0.007: nothing passes
        normal = model.alphas["normal"]
        normal[0, 1] = normal[1, 0] = 5.0  # node 2: both inputs
        normal[8, 1] = 5.0                 # node 4 from node 3, which keeps no edge: dropped with it
        normal[6, 0] = 5.0                 # node 4 from input 1 (edges 5-8 go into node 4)
    g = model.derive(SELECTIONS.get("threshold")())
    assert g.edges("normal") == (("sep_conv_3x3", 0, 2), ("skip_connect", 1, 2), ("skip_connect", 1, 4))
    assert g.normal_concat == (2, 4)
    # the reduction cell, where nothing passed, keeps its strongest edge into node 2
    assert len(g.edges("reduce")) == 1 and g.edges("reduce")[0][2] == 2
    assert model.genotype_metrics(g) == {"skip_connect_normal": 2, "parameter_free_normal": 2}


def test_a_part_given_an_option_it_has_not_says_which_it_has():
    """A recipe's misspelt part option (``{name = "second_order", epsilonn = 0.05}``) names the part's options."""
    from dnas.methods import registries
    with pytest.raises(ValueError,
                       match="architecture gradient 'second_order': .*'epsilonn'; its options: epsilon, clip"):
        registries()["arch_grad"].build({"name": "second_order", "epsilonn": 0.05})
