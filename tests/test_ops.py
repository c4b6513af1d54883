"""The DARTS candidate ops, with the exact semantics of the DARTS paper's code (Liu et al., ICLR 2019)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import CountOps, batch_norm_derivatives
from dnas import ops
from dnas.ops import (DARTS_OPS, OPS, PARAMETER_FREE_OPS, Conv2d, DilConv, FactorizedReduce, SepConv, Zero,
                      conv2d, pixels)
from dnas.registry import UnknownNameError
from dnas.spaces.darts import DartsSupernet

C = 16


def build(name, stride=1, affine=False, C=C):
    torch.manual_seed(0)
    return OPS.get(name)(C, stride, affine)


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def test_darts_ops_are_the_8_original_ops_in_order():
    assert DARTS_OPS == ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
                         "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")
    assert all(name in OPS for name in DARTS_OPS)


def test_parameter_free_ops():
    assert PARAMETER_FREE_OPS == {"none", "avg_pool_3x3", "max_pool_3x3", "skip_connect"}
    assert PARAMETER_FREE_OPS <= set(DARTS_OPS)
    # at stride 1 they really have no parameters
    for name in PARAMETER_FREE_OPS:
        assert n_params(build(name, 1, affine=True)) == 0, name


@pytest.mark.parametrize("name", DARTS_OPS)
@pytest.mark.parametrize("affine", [False, True])
def test_shapes_even_input(name, affine):
    x = torch.randn(2, C, 8, 8)
    with torch.no_grad():
        assert build(name, 1, affine)(x).shape == (2, C, 8, 8)
        assert build(name, 2, affine)(x).shape == (2, C, 4, 4)


@pytest.mark.parametrize("name", DARTS_OPS)
def test_shapes_odd_input(name):
    x = torch.randn(2, C, 7, 9)
    with torch.no_grad():
        assert build(name, 1)(x).shape == (2, C, 7, 9)
        if name == "skip_connect":
            return  # FactorizedReduce's shifted half is one pixel short on odd sizes, as in the original code
        assert build(name, 2)(x).shape == (2, C, 4, 5)


def test_none_returns_zeros_of_strided_shape():
    x = torch.randn(2, C, 8, 8) + 3.0
    op = build("none", 1)
    assert isinstance(op, Zero)
    y = op(x)
    assert y.shape == x.shape and torch.equal(y, torch.zeros_like(x))
    y2 = build("none", 2)(x)
    assert y2.shape == (2, C, 4, 4) and torch.equal(y2, torch.zeros(2, C, 4, 4))
    assert build("none", 2)(torch.randn(1, C, 7, 7)).shape == (1, C, 4, 4)


def test_skip_connect_is_identity_at_stride_1_and_factorized_reduce_at_stride_2():
    x = torch.randn(2, C, 8, 8)
    y = build("skip_connect", 1)(x)
    assert torch.equal(y, x)
    op = build("skip_connect", 2)
    assert isinstance(op, FactorizedReduce)
    assert op(x).shape == (2, C, 4, 4)


def test_factorized_reduce_computation():
    """relu, two stride-2 1x1 convs (the second on the input shifted by one pixel), concat, BN."""
    torch.manual_seed(0)
    op = FactorizedReduce(4, 6, affine=False).eval()
    x = torch.randn(1, 4, 6, 6)
    r = torch.relu(x)
    a = nn.functional.conv2d(r, op.conv_1.weight, stride=2)
    b = nn.functional.conv2d(r[:, :, 1:, 1:], op.conv_2.weight, stride=2)
    expected = torch.cat([a, b], 1)  # eval BN with fresh stats: mean 0, var 1
    expected = expected / torch.sqrt(torch.tensor(1.0 + op.bn.eps))
    assert torch.allclose(op(x), expected, atol=1e-6)


def test_relu_nhwc_writes_nhwc_and_hands_back_an_nchw_gradient():
    """ops.relu_nhwc: relu(x) of an NCHW x written NHWC in one kernel, its gradient NCHW in one; a backward
    differentiated again (create_graph: iDARTS, R-DARTS's Hessian) by differentiable ops."""
    x = torch.randn(2, 6, 5, 5, dtype=torch.float64, requires_grad=True)
    with CountOps() as counted:
        y = ops.relu_nhwc(x)
        (gx,) = torch.autograd.grad(y, x, torch.randn_like(y))
    assert torch.equal(y, F.relu(x)) and y.is_contiguous(memory_format=torch.channels_last) and gx.is_contiguous()
    assert counted.counts["clamp_min"] == counted.counts["threshold_backward"] == 1 and not counted.counts["clone"]
    assert torch.autograd.gradcheck(ops.relu_nhwc, (x,)) and torch.autograd.gradgradcheck(ops.relu_nhwc, (x,))


def test_avg_pool_excludes_padding():
    op = build("avg_pool_3x3", 1)
    assert isinstance(op, nn.AvgPool2d) and op.count_include_pad is False
    y = op(torch.ones(1, C, 8, 8))
    assert y[0, 0, 0, 0].item() == 1.0  # corner: 4 real pixels averaged, no zero padding counted
    assert torch.equal(y, torch.ones_like(y))


def test_avg_pool_values():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    y = OPS.get("avg_pool_3x3")(1, 1, False)(x)
    assert y[0, 0, 0, 0].item() == pytest.approx((0 + 1 + 4 + 5) / 4)
    assert y[0, 0, 1, 1].item() == pytest.approx(sum([0, 1, 2, 4, 5, 6, 8, 9, 10]) / 9)


def test_max_pool():
    op = build("max_pool_3x3", 1)
    assert isinstance(op, nn.MaxPool2d)
    x = torch.arange(16.0).view(1, 1, 4, 4)
    y = op(x)
    assert y[0, 0, 0, 0].item() == 5.0
    assert y[0, 0, 3, 3].item() == 15.0
    assert y[0, 0, 1, 1].item() == 10.0
    # negative values: padding does not contribute zeros
    assert op(-torch.ones(1, 1, 4, 4)).max().item() == -1.0
    y2 = build("max_pool_3x3", 2)(x)
    assert y2.shape == (1, 1, 2, 2) and y2[0, 0, 0, 0].item() == 5.0


CONV_PARAMS = {
    "sep_conv_3x3": (2 * (16 * 9 + 16 * 16), 2 * 2 * 16),
    "sep_conv_5x5": (2 * (16 * 25 + 16 * 16), 2 * 2 * 16),
    "dil_conv_3x3": (16 * 9 + 16 * 16, 2 * 16),
    "dil_conv_5x5": (16 * 25 + 16 * 16, 2 * 16),
}


@pytest.mark.parametrize("name", sorted(CONV_PARAMS))
@pytest.mark.parametrize("stride", [1, 2])
def test_conv_parameter_counts(name, stride):
    conv, bn = CONV_PARAMS[name]
    assert n_params(build(name, stride, affine=False)) == conv
    assert n_params(build(name, stride, affine=True)) == conv + bn


@pytest.mark.parametrize("name", ["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect"])
@pytest.mark.parametrize("affine", [False, True])
def test_parameter_free_ops_have_no_parameters_at_stride_1(name, affine):
    assert n_params(build(name, 1, affine)) == 0


@pytest.mark.parametrize("name", ["none", "max_pool_3x3", "avg_pool_3x3"])
def test_pools_and_none_have_no_parameters_at_stride_2(name):
    assert n_params(build(name, 2, True)) == 0


def test_factorized_reduce_parameter_count():
    assert n_params(FactorizedReduce(16, 16, affine=False)) == 2 * 16 * 8
    assert n_params(FactorizedReduce(16, 16, affine=True)) == 2 * 16 * 8 + 2 * 16
    assert n_params(build("skip_connect", 2, affine=False)) == 2 * 16 * 8
    assert n_params(build("skip_connect", 2, affine=True)) == 2 * 16 * 8 + 2 * 16


def test_factorized_reduce_odd_channels_raise():
    with pytest.raises(ValueError, match="even"):
        FactorizedReduce(16, 15)
    with pytest.raises(ValueError, match="15"):
        OPS.get("skip_connect")(15, 2, False)


def _convs(module):
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize("name,k,pad", [("dil_conv_3x3", 3, 2), ("dil_conv_5x5", 5, 4)])
def test_dil_conv_structure(name, k, pad):
    op = build(name, 1)
    assert isinstance(op, DilConv)
    assert isinstance(op[0], nn.ReLU)
    depthwise, pointwise = _convs(op)
    assert depthwise.kernel_size == (k, k)
    assert depthwise.dilation == (2, 2)
    assert depthwise.padding == (pad, pad)
    assert depthwise.groups == C
    assert pointwise.kernel_size == (1, 1)
    assert isinstance(op[-1], nn.BatchNorm2d)
    strided = build(name, 2)
    assert _convs(strided)[0].stride == (2, 2)
    assert _convs(strided)[1].stride == (1, 1)


def assert_rounding_close(got, want):
    """Equal but for float64's rounding, or float32's (a GPU's forms, ``form_dtype``)."""
    rounding = 1e-12 if want.dtype == torch.float64 else 1e-5 * want.abs().max().item()
    assert torch.allclose(got, want, rtol=0, atol=rounding)


@pytest.mark.parametrize("k,padding,dilation,groups", [(3, 2, 2, C), (5, 4, 2, C), (1, 0, 1, 1)])
@pytest.mark.parametrize("size", [(8, 8), (7, 9)])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_stride_2_conv_runs_on_the_pixels_it_reads(k, padding, dilation, groups, size, layout):
    """The convolutions of a reducing edge whose taps fall on every other pixel (a dilated op's, FactorizedReduce's
    1x1) run on those pixels with stride 1 (ops.conv2d): the same outputs and gradients, in the layout of the
    input, also backward."""
    torch.manual_seed(0)
    x = torch.randn(2, C, *size, dtype=torch.float64).contiguous(memory_format=layout).requires_grad_()
    w = torch.randn(C, C // groups, k, k, dtype=torch.float64, requires_grad=True)
    args = (None, (2, 2), (padding, padding), (dilation, dilation), groups)
    y, expected = conv2d(x, w, *args), nn.functional.conv2d(x, w, *args)
    g = torch.randn_like(y)
    (dx, dw), (want_dx, want_dw) = torch.autograd.grad(y, (x, w), g), torch.autograd.grad(expected, (x, w), g)
    for got, want in ((y, expected), (dx, want_dx), (dw, want_dw)):
        assert_rounding_close(got, want)
    assert y.is_contiguous(memory_format=layout) and dx.is_contiguous(memory_format=layout)
    # given those pixels already (the fused cell takes them before copying a source to its edges)
    assert torch.allclose(conv2d(pixels(x, step=2), w, *args, sampled=True), expected, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="reads other pixels too"):  # a convolution that reads every pixel
        conv2d(pixels(x, step=2), w, None, (2, 2), (padding + 1, padding + 1), (dilation, dilation), groups,
               sampled=True)


def test_the_reducing_ops_convolve_by_conv2d():
    """The dilated ops and FactorizedReduce of a reducing edge run their convolutions by ops.conv2d."""
    reducing = [m for name in ("dil_conv_3x3", "dil_conv_5x5", "skip_connect") for m in build(name, 2).modules()]
    assert all(isinstance(m, Conv2d) for m in reducing if isinstance(m, nn.Conv2d))


@pytest.fixture(params=["cpu", "cuda"])
def form_device(request, monkeypatch):
    """A device whose convolutions take the GPU's forms: the GPU where there is one, and the CPU made one."""
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device: the forms on the GPU itself")
    if request.param == "cpu":
        monkeypatch.setattr(ops, "FORM_DEVICES", ("cpu",))
    return request.param


@pytest.fixture
def form_dtype(form_device, request):
    """float64 on the CPU; float32 without TF32 on a GPU, where PyTorch gives a float64 convolution to its
    own NCHW kernels in any layout (cuDNN takes NHWC for float32 and half only), so that float64 would test
    neither cuDNN's NHWC kernels nor the layouts of what they return."""
    if form_device == "cpu":
        return torch.float64
    request.getfixturevalue("no_tf32")
    return torch.float32


def test_on_the_cpu_only_dilated_depthwise_convolutions_run_by_their_phases(monkeypatch):
    """The forms measured faster on the CPU too: the phases of a dilated depthwise convolution (1.5-5x); an
    undilated one and a grouped pointwise one stay oneDNN's convolutions there."""
    assert ops.FORM_DEVICES == ("cuda",)
    formed = []
    for form in ("depthwise_nhwc", "pointwise_matmul"):
        monkeypatch.setattr(ops, form, lambda *a, form=getattr(ops, form), name=form: formed.append(name) or form(*a))
    x = torch.randn(2, C, 8, 8)
    conv2d(x, torch.randn(C, 1, 3, 3), None, (1, 1), (2, 2), (2, 2), C)  # dil_conv_3x3
    conv2d(x, torch.randn(C, 1, 5, 5), None, (1, 1), (2, 2), (1, 1), C)  # sep_conv_5x5's
    conv2d(x, torch.randn(C, C // 2, 1, 1), groups=2)
    assert formed == ["depthwise_nhwc"]


def _same_as_conv(x, w, args):
    """conv2d against F.conv2d: outputs and both gradients, to float64's rounding or float32's, each of the
    first two in x's layout."""
    y, expected = conv2d(x, w, *args), nn.functional.conv2d(x, w, *args)
    g = torch.randn_like(expected)
    (dx, dw), (want_dx, want_dw) = torch.autograd.grad(y, (x, w), g), torch.autograd.grad(expected, (x, w), g)
    for got, want in ((y, expected), (dx, want_dx), (dw, want_dw)):
        assert_rounding_close(got, want)
    layout = torch.channels_last if ops.channels_innermost(x) else torch.contiguous_format
    assert y.is_contiguous(memory_format=layout) and dx.is_contiguous(memory_format=layout)
    return y


@pytest.mark.parametrize("k,stride,padding,dilation", [(3, 1, 1, 1), (5, 1, 2, 1), (3, 2, 1, 1), (3, 1, 2, 2),
                                                       (5, 1, 4, 2), (3, 1, 1, 2), (3, 1, 2, 3)])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_depthwise_convolutions_in_the_gpu_form(form_device, form_dtype, k, stride, padding, dilation, layout,
                                                monkeypatch):
    """On a GPU a depthwise convolution runs NHWC, a dilated one (on every device) as the undilated
    convolution of its phases (ops.depthwise_nhwc) where its padding is a multiple of the dilation and the
    sides of it: the same outputs and gradients, in the layout of the input; others (padding 1 at dilation
    2) as they are."""
    torch.manual_seed(0)
    x = torch.randn(2, C, 12, 12, dtype=form_dtype, device=form_device).contiguous(memory_format=layout)
    w = torch.randn(C, 1, k, k, dtype=form_dtype, device=form_device, requires_grad=True)
    formed = []
    monkeypatch.setattr(ops, "depthwise_nhwc", lambda *a, form=ops.depthwise_nhwc: formed.append(a) or form(*a))
    _same_as_conv(x.requires_grad_(), w, (None, (stride, stride), (padding, padding), (dilation, dilation), C))
    assert len(formed) == int(padding % dilation == 0)


@pytest.mark.parametrize("device", ["cpu", "cpu-pooling-nchw", "cuda"])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("pool", [dict(kernel_size=3, stride=1, padding=1, count_include_pad=False),
                                  dict(kernel_size=3, stride=2, padding=1, count_include_pad=False),
                                  dict(kernel_size=2, stride=2), dict(kernel_size=5, stride=3, count_include_pad=False,
                                                                      ceil_mode=True)],
                         ids=["avg_pool_3x3", "avg_pool_3x3-reducing", "nb201-shortcut", "auxiliary-head"])
def test_average_pooling_has_its_gradient_in_either_layout(device, layout, pool, monkeypatch):
    """ops.AvgPool2d (the avg_pool_3x3 op, NAS-Bench-201's shortcut, the auxiliary head) against PyTorch's
    pooling in float64 on the CPU: output and gradient, in the layout of the input. On a GPU PyTorch 2.11's
    own backward of a channels_last input was wrong by the gradient's size (benchmarks/RESULTS.md, 2026-11-27);
    there this one pools such an input NCHW (``cpu-pooling-nchw``: so on the CPU too)."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device: PyTorch's NHWC pooling kernels on the GPU")
    if device == "cpu-pooling-nchw":
        monkeypatch.setattr(ops, "NCHW_POOLING_DEVICES", ("cpu",))
        device = "cpu"
    torch.manual_seed(0)
    x = torch.randn(2, C, 8, 8, dtype=torch.float64, requires_grad=True)
    y = nn.AvgPool2d(**pool)(x)
    g = torch.randn_like(y)
    dtype = torch.float64 if device == "cpu" else torch.float32
    x_ = x.detach().to(device, dtype).contiguous(memory_format=layout).requires_grad_()
    y_ = ops.AvgPool2d(**pool)(x_)
    (dx_,) = torch.autograd.grad(y_, x_, g.to(device, dtype).contiguous(memory_format=layout))
    for got, want in ((y_, y), (dx_, torch.autograd.grad(y, x, g)[0])):
        assert_rounding_close(got.cpu(), want.to(dtype))
        assert got.is_contiguous(memory_format=layout)


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_phases_take_one_copy_each_way(d, layout):
    """ops.to_phases and from_phases: x_r[j] = x[d j + r] stacked in the batch, NHWC, and back in the layout
    asked for; one copy forward and one backward each, the gradients in the layout of the input."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6 * d, 3 * d, dtype=torch.float64).contiguous(memory_format=layout).requires_grad_()
    with CountOps() as forward:
        phases = ops.to_phases(x, d)
    want = torch.cat([x[:, :, r // d::d, r % d::d] for r in range(d * d)])
    assert torch.equal(phases, want) and phases.is_contiguous(memory_format=torch.channels_last)
    g = torch.randn_like(phases)
    with CountOps() as backward:
        (dx,) = torch.autograd.grad(phases, x, g)
    assert torch.equal(dx, torch.autograd.grad(want, x, g)[0]) and dx.is_contiguous(memory_format=layout)
    y, g_image = phases.detach().requires_grad_(), torch.randn_like(x)
    with CountOps() as back:
        image = ops.from_phases(y, d, nhwc=layout == torch.channels_last)
        (dy,) = torch.autograd.grad(image, y, g_image)
    assert torch.equal(image, x) and image.is_contiguous(memory_format=layout)
    assert torch.equal(dy, ops.to_phases(g_image, d)) and dy.is_contiguous(memory_format=torch.channels_last)
    assert forward.counts == backward.counts == {"clone": 1} and back.counts == {"clone": 2}


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device: SyncBatchNorm's kernels themselves"))])
@pytest.mark.parametrize("affine", ["weight", "weight and bias", "neither"])
def test_batch_norm_by_parts_computes_what_batch_norm_computes(device, affine, batch_norm_by_parts_anywhere):
    """In 8 parts or whole, the same output, batch statistics (the mean and the unbiased variance, as
    F.batch_norm writes them at momentum 1), gradients of the input, weight and bias, and second derivatives
    (those by PyTorch's own backward, which autograd differentiates again)."""
    g = torch.Generator().manual_seed(0)
    t = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64).to(device)
    x = (3 * t(8, 6, 5, 5) + 1).requires_grad_()
    weight = t(6).requires_grad_() if affine != "neither" else None
    bias = t(6).requires_grad_() if affine == "weight and bias" else None
    whole = lambda x, mean, var, weight, bias, eps: F.batch_norm(x, mean, var, weight, bias, True, 1.0, eps)
    dy = t(8, 6, 5, 5)
    by_parts, reference = (batch_norm_derivatives(f, x, weight, bias, dy) for f in (ops.batch_norm_by_parts, whole))
    assert type(by_parts[0].grad_fn).__name__ == "_BatchNormByPartsBackward"
    for ours, theirs in zip(by_parts, reference):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


def test_batch_parts_of_the_darts_search_network():
    """At batch 64: 32 x 32 channels in 8-16 parts, 16 x 16 ones in 4, 8 x 8 ones whole; an input not dense
    NCHW, or of another dtype than its statistics (bf16 under autocast), whole."""
    shapes = [(16, 32), (48, 32), (128, 32), (32, 16), (96, 16), (256, 16), (64, 8), (512, 8)]
    assert [ops.batch_parts(64, c, h * h) for c, h in shapes] == [16, 16, 8, 4, 4, 4, 1, 1]
    x = torch.randn(64, 16, 32, 32)
    for other in (x.contiguous(memory_format=torch.channels_last), x.bfloat16()):
        y = ops.batch_norm_by_parts(other.requires_grad_(), *torch.zeros(2, 16))
        assert type(y.grad_fn).__name__ == "NativeBatchNormBackward0"


def test_the_depthwise_form_has_second_derivatives(form_device):
    """iDARTS differentiates the weights' gradient again (arch_grad ``implicit``)."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 6, 6, dtype=torch.float64, device=form_device, requires_grad=True)
    w = torch.randn(3, 1, 3, 3, dtype=torch.float64, device=form_device, requires_grad=True)
    dilated = lambda x, w: conv2d(x, w, None, (1, 1), (2, 2), (2, 2), 3)
    assert torch.autograd.gradgradcheck(dilated, (x, w))


@pytest.mark.parametrize("weight, stride, padding, dilation, groups", [
    ((6, 1, 3, 3), 1, 1, 1, 6), ((6, 1, 3, 3), 2, 2, 2, 6), ((6, 2, 1, 1), 1, 0, 1, 3)],
    ids=["depthwise", "strided-dilated", "grouped-pointwise"])
def test_second_derivatives_of_grouped_convolutions_by_grouped_kernels(weight, stride, padding, dilation, groups):
    """Within ``ops.second_derivatives`` (iDARTS's Hessian-vector products) a grouped convolution's backward
    is differentiated by one grouped kernel per term, where PyTorch's own double backward runs a convolution
    per group, to the same first and second derivatives."""
    torch.manual_seed(0)
    x = torch.randn(2, 6, 9, 9, dtype=torch.float64, requires_grad=True)
    w = torch.randn(*weight, dtype=torch.float64, requires_grad=True)
    conv = lambda x, w: conv2d(x, w, None, (stride,) * 2, (padding,) * 2, (dilation,) * 2, groups)

    def hessian_vector_products():  # of the weights' and the input's gradient, as iDARTS's chain rule needs
        with CountOps() as ops_run:
            gx, gw = torch.autograd.grad(conv(x, w).square().sum(), (x, w), create_graph=True)
            products = torch.autograd.grad(gx.sum() + gw.square().sum(), (x, w))
        return products, ops_run.counts["convolution"]

    native, native_convolutions = hessian_vector_products()
    with ops.second_derivatives():
        assert torch.autograd.gradgradcheck(conv, (x, w))
        grouped, grouped_convolutions = hessian_vector_products()
    for a, b in zip(native, grouped):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert native_convolutions > groups and grouped_convolutions == 3  # the forward, two for d/dgy


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_grouped_pointwise_convolutions_in_the_gpu_form(form_device, form_dtype, layout, monkeypatch):
    """On a GPU a grouped 1x1 convolution runs as matrix products (ops.pointwise_matmul): of an NCHW input
    batched per group, of an NHWC one of up to ops.BLOCK_DIAGONAL_CHANNELS channels as one product with the
    block-diagonal matrix of the groups' weights (a wider one as cuDNN's grouped convolution)."""
    torch.manual_seed(0)
    x = torch.randn(2, 3 * C, 5, 7, dtype=form_dtype, device=form_device).contiguous(memory_format=layout)
    w = torch.randn(3 * C, C, 1, 1, dtype=form_dtype, device=form_device, requires_grad=True)
    formed = []
    monkeypatch.setattr(ops, "pointwise_matmul", lambda *a, form=ops.pointwise_matmul: formed.append(a) or form(*a))
    _same_as_conv(x.requires_grad_(), w, (None, (1, 1), (0, 0), (1, 1), 3))
    assert len(formed) == 1
    monkeypatch.setattr(ops, "BLOCK_DIAGONAL_CHANNELS", 3 * C - 1)
    _same_as_conv(x, w, (None, (1, 1), (0, 0), (1, 1), 3))
    assert len(formed) == 1 + int(layout == torch.contiguous_format)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_the_pointwise_form_has_second_derivatives(layout):
    """iDARTS differentiates the weights' gradient again, through the matrix-product form too (the NHWC one's
    block-diagonal matrix hands back the gradient's diagonal blocks as a view)."""
    torch.manual_seed(0)
    x = torch.randn(2, 3 * C, 3, 2, dtype=torch.float64).contiguous(memory_format=layout).requires_grad_()
    w = torch.randn(3 * C, C, 1, 1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x, w: ops.pointwise_matmul(x, w, 3), (x, w))


def test_dil_conv_5x5_keeps_size():
    x = torch.randn(1, C, 5, 5)
    with torch.no_grad():
        assert build("dil_conv_5x5", 1)(x).shape == x.shape
        assert build("dil_conv_5x5", 1)(torch.randn(1, C, 11, 11)).shape == (1, C, 11, 11)


@pytest.mark.parametrize("name,k,pad", [("sep_conv_3x3", 3, 1), ("sep_conv_5x5", 5, 2)])
def test_sep_conv_structure(name, k, pad):
    """Two DilConvs with dilation 1: the first carries the stride, the second stride 1."""
    op = build(name, 2)
    assert isinstance(op, SepConv)
    first, second = op
    assert isinstance(first, DilConv) and isinstance(second, DilConv)
    convs = _convs(op)
    assert len(convs) == 4
    dw1, pw1, dw2, pw2 = convs
    for dw in (dw1, dw2):
        assert dw.kernel_size == (k, k) and dw.dilation == (1, 1) and dw.padding == (pad, pad)
        assert dw.groups == C
    assert dw1.stride == (2, 2) and dw2.stride == (1, 1)
    assert pw1.kernel_size == pw2.kernel_size == (1, 1)
    assert sum(isinstance(m, nn.ReLU) for m in op.modules()) == 2
    assert sum(isinstance(m, nn.BatchNorm2d) for m in op.modules()) == 2


def test_bn_affine_flag_is_passed_through():
    for name in ("sep_conv_3x3", "dil_conv_3x3"):
        bns = [m for m in build(name, 1, affine=False).modules() if isinstance(m, nn.BatchNorm2d)]
        assert bns and all(not bn.affine for bn in bns)
        bns = [m for m in build(name, 1, affine=True).modules() if isinstance(m, nn.BatchNorm2d)]
        assert bns and all(bn.affine for bn in bns)


def test_unknown_op_lists_valid_ops():
    with pytest.raises(UnknownNameError) as info:
        OPS.get("foo")
    err = info.value
    assert isinstance(err, KeyError) and isinstance(err, ValueError)
    message = str(err)
    assert "foo" in message
    assert "sep_conv_3x3" in message
    assert all(name in message for name in DARTS_OPS)
    with pytest.raises(KeyError):
        OPS.get("foo")
    with pytest.raises(ValueError):
        OPS.get("foo")


@pytest.mark.parametrize("factory, message", [
    (lambda C, stride, affine: nn.Conv2d(C, C, 3, 1, 1), r"op 'mine' \(C=4, stride 2\) takes a \(2, 4, 16, 16\) "
                                                         r"input to \(2, 4, 16, 16\), not \(2, 4, 8, 8\): an op keeps"),
    (lambda C, stride, affine: nn.Conv2d(C, 2 * C, 1, stride), r"stride 1\) takes .* to \(2, 8, 16, 16\)"),
    (lambda C, stride, affine: nn.Conv2d(C, C, 3, stride, 1, bias=False) if stride == 1 else None,
     r"op 'mine' \(C=4, stride 2\) fails on a \(2, 4, 16, 16\) input: AttributeError"),
])
def test_an_op_of_other_shapes_is_refused_naming_it(factory, message, monkeypatch):
    monkeypatch.setitem(OPS._table, "mine", factory)
    with pytest.raises(ValueError, match=message):
        DartsSupernet(10, 3, C=4, layers=3, ops=("mine", "skip_connect"))


def test_a_name_is_registered_once_but_a_definition_again_replaces_itself():
    """A module imported again (a notebook cell run again, importlib.reload) registers what it did; another
    definition under a taken name is refused, naming both."""
    from dnas.registry import Registry

    def factory():
        return 1

    reg = Registry("op")
    reg.register("mine", factory)
    reg.register("mine", factory)
    with pytest.raises(ValueError, match=r"op 'mine' is registered twice \(by .*<lambda> and .*factory\): give one "
                                         r"of them another name"):
        reg.register("mine", lambda: 2)
    assert reg.get("mine") is factory
