"""The architecture gradients against direct autograd computations of what they approximate."""
import pytest
import torch

from dnas.arch_grad import ARCH_GRADS, FirstOrder, SecondOrder
from dnas.search import batch_loss
from dnas.spaces.darts import DartsSupernet

OPS = ("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3")


def tiny_problem(seed=0):
    torch.manual_seed(seed)
    model = DartsSupernet(num_classes=3, in_channels=1, C=2, layers=3, nodes=2, ops=OPS).double()
    model.alphas["normal"].data.normal_(0, 0.5)
    model.alphas["reduce"].data.normal_(0, 0.5)
    batch = lambda: (torch.randn(6, 1, 8, 8, dtype=torch.float64), torch.randint(0, 3, (6,)))
    opt = torch.optim.SGD(model.weight_parameters(), lr=0.1, momentum=0.9, weight_decay=3e-4)
    return model, batch(), batch(), opt


def exact_second_order(model, train_batch, val_batch, opt):
    """d/d alpha L_val(w', alpha) by autograd, w' the SGD step: w - xi * (mu * buf + d), d = grad_w L_train(w,
    alpha) + wd * w; with Nesterov momentum w - xi * (d + mu * (mu * buf + d)), buf = 0 where there is none."""
    names, weights = zip(*model.named_weight_parameters())
    group = opt.param_groups[0]
    xi, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
    grads = torch.autograd.grad(batch_loss(model, train_batch), weights, create_graph=True)
    unrolled = {}
    for n, w, g in zip(names, weights, grads):
        buf = opt.state.get(w, {}).get("momentum_buffer")
        d, buf = g + wd * w, 0 if buf is None else buf
        unrolled[n] = w - xi * (d + mu * (mu * buf + d) if group["nesterov"] else d + mu * buf)
    return torch.autograd.grad(batch_loss(model, val_batch, unrolled), model.arch_parameters())


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("with_momentum", [False, True])
def test_second_order_matches_autograd_through_the_unrolled_step(with_momentum, nesterov):
    model, train_batch, val_batch, opt = tiny_problem()
    opt.param_groups[0]["nesterov"] = nesterov
    if with_momentum:  # one real weight step so the optimiser holds momentum buffers
        batch_loss(model, train_batch).backward()
        opt.step()
        opt.zero_grad()
    exact = exact_second_order(model, train_batch, val_batch, opt)
    before = [w.detach().clone() for w in model.weight_parameters()]

    # The supernet is piecewise smooth (ReLU, max pool): central differences equal the exact
    # Hessian-vector product only for a step that crosses no kink, so this float64 check takes a small one.
    # (The paper's epsilon = 0.01 trades that against float32 round-off in full-size networks.)
    SecondOrder(epsilon=1e-6)(model, lambda params=None: batch_loss(model, train_batch, params),
                              lambda params=None: batch_loss(model, val_batch, params), opt)

    for a, e in zip(model.arch_parameters(), exact):
        assert a.grad.abs().max() > 1e-6
        torch.testing.assert_close(a.grad, e, rtol=1e-3, atol=1e-7)
    # the finite differences leave the weights where they were
    for w, b in zip(model.weight_parameters(), before):
        torch.testing.assert_close(w.detach(), b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("nesterov", [False, True])
def test_the_unrolled_weights_are_the_weight_optimisers_next_step(nesterov):
    """w' of second order is where the SGD step about to be taken puts the weights: with momentum buffers
    (after one real step) and without, plain or Nesterov (GDAS's code)."""
    model, train_batch, _, _ = tiny_problem()
    opt = torch.optim.SGD(model.weight_parameters(), lr=0.1, momentum=0.9, weight_decay=3e-4, nesterov=nesterov)
    for _ in range(2):  # first without momentum buffers, then with
        weights = list(model.weight_parameters())
        unrolled = SecondOrder.unrolled_weights(weights, batch_loss(model, train_batch), opt)
        opt.zero_grad()
        batch_loss(model, train_batch).backward()
        opt.step()
        for u, w in zip(unrolled, weights):
            torch.testing.assert_close(u.detach(), w.detach(), rtol=1e-12, atol=1e-12)


def test_second_order_differs_from_first_order():
    model, train_batch, val_batch, opt = tiny_problem(1)
    losses = (lambda params=None: batch_loss(model, train_batch, params),
              lambda params=None: batch_loss(model, val_batch, params))
    FirstOrder()(model, *losses, opt)
    first = [a.grad.clone() for a in model.arch_parameters()]
    SecondOrder()(model, *losses, opt)
    assert any((f - a.grad).abs().max() > 1e-6 for f, a in zip(first, model.arch_parameters()))


def test_first_order_is_the_validation_gradient_at_current_weights():
    model, train_batch, val_batch, opt = tiny_problem(2)
    exact = torch.autograd.grad(batch_loss(model, val_batch), model.arch_parameters())
    FirstOrder()(model, lambda params=None: batch_loss(model, train_batch, params),
                 lambda params=None: batch_loss(model, val_batch, params), opt)
    for a, e in zip(model.arch_parameters(), exact):
        torch.testing.assert_close(a.grad, e)
    assert all(w.grad is None for w in model.weight_parameters())


def test_unrolled_forward_leaves_batchnorm_statistics_alone():
    model, train_batch, val_batch, opt = tiny_problem(3)
    stats = {n: b.clone() for n, b in model.named_buffers()}
    params = dict(model.named_weight_parameters())
    batch_loss(model, val_batch, params)
    for n, b in model.named_buffers():
        torch.testing.assert_close(b, stats[n])


def test_registry_and_paper_epsilon():
    assert ARCH_GRADS.names() == ["first_order", "implicit", "second_order"]
    assert SecondOrder().epsilon == 0.01
