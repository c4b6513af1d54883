"""The evaluation networks built from genotypes: layout of the paper's CIFAR and ImageNet networks, cells
that follow the genotype edge by edge, the auxiliary head and drop-path."""
import pytest
import torch
from torch import nn

import dnas
from conftest import BATCH_NORM_AND_CONVOLUTION, KernelInputs, strided
from dnas.ops import FactorizedReduce, SepConv
from dnas.spaces.darts_network import (NETWORKS, AuxiliaryHead, EvalCell, NetworkCIFAR, NetworkImageNet,
                                       drop_path)

DARTS_V2 = dnas.published("DARTS_V2")


def test_cifar_network_is_the_papers_20_cells_36_channels():
    net = NetworkCIFAR(DARTS_V2)
    assert len(net.cells) == 20
    assert [i for i, c in enumerate(net.cells) if c.reduction] == [6, 13]  # 1/3 and 2/3 of the depth
    assert net.stem[0].out_channels == 3 * 36
    assert net.aux_index == 13 and isinstance(net.auxiliary_head, AuxiliaryHead)
    assert net.auxiliary_head.features[2].in_channels == 4 * 144  # after the second reduction: 4 nodes x 4C
    assert net.classifier.in_features == 4 * 144
    assert all(m.affine for m in net.modules() if isinstance(m, nn.BatchNorm2d))  # OPS with affine=True


def test_imagenet_network_has_the_two_stems_and_14_cells_of_48_channels():
    net = NetworkImageNet(DARTS_V2)
    stem0, stem1 = net.stem.stem0, net.stem.stem1
    assert [(m.out_channels, m.stride) for m in stem0 if isinstance(m, nn.Conv2d)] == [(24, (2, 2)), (48, (2, 2))]
    assert isinstance(stem1[0], nn.ReLU) and (stem1[1].out_channels, stem1[1].stride) == (48, (2, 2))
    s0, s1 = net.stem(torch.zeros(1, 3, 224, 224))
    assert s0.shape[-1] == 56 and s1.shape[-1] == 28  # the first cell's s0 has twice s1's resolution
    assert isinstance(net.cells[0].preprocess0, FactorizedReduce)
    assert len(net.cells) == 14 and [i for i, c in enumerate(net.cells) if c.reduction] == [4, 9]
    assert net.classifier.out_features == 1000 and NetworkImageNet.image_size == 224
    # the DARTS ImageNet auxiliary head has no BN after its 2x2 conv
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.auxiliary_head.features) == 1


def test_the_auxiliary_head_runs_only_while_training():
    net = NetworkCIFAR(DARTS_V2, C=4, layers=5)
    x = torch.randn(2, 3, 32, 32)
    logits, aux = net.train().forward_with_aux(x)
    assert logits.shape == aux.shape == (2, 10)
    assert net.eval().forward_with_aux(x)[1] is None
    assert NetworkCIFAR(DARTS_V2, C=4, layers=5, auxiliary=False).train().forward_with_aux(x)[1] is None
    # the head also fits 28x28 inputs (7x7 at 2/3 depth), e.g. Fashion-MNIST
    _, aux = NetworkCIFAR(DARTS_V2, in_channels=1, C=4, layers=5).train().forward_with_aux(torch.randn(2, 1, 28, 28))
    assert aux.shape == (2, 10)


def test_a_cell_applies_each_edge_op_to_its_input_and_concatenates_the_concat_nodes():
    amoeba = dnas.published("AmoebaNet")
    cell = EvalCell(amoeba.edges("reduce"), amoeba.reduce_concat, 16, 16, 8, reduction=True, reduction_prev=False)
    # edges from the cell inputs reduce (stride 2), edges from intermediate nodes do not
    assert [op for op, _ in amoeba.reduce][3] == "sep_conv_7x7" and amoeba.reduce[3][1] == 2
    assert cell.ops[3][0][1].stride == (1, 1) and cell.ops[2].stride == 2  # max_pool from input 0
    out = cell(torch.randn(2, 16, 16, 16), torch.randn(2, 16, 16, 16))
    assert out.shape == (2, 3 * 8, 8, 8)  # concat [3, 4, 6]: 3 nodes of 8 channels, halved resolution

    normal = EvalCell(DARTS_V2.edges("normal"), DARTS_V2.normal_concat, 12, 12, 4, reduction=False, reduction_prev=True)
    assert isinstance(normal.preprocess0, FactorizedReduce)
    assert isinstance(normal.ops[0], SepConv) and isinstance(normal.ops[5], nn.Identity)  # skip_connect, stride 1
    assert normal(torch.randn(2, 12, 16, 16), torch.randn(2, 12, 8, 8)).shape == (2, 16, 8, 8)


def test_a_node_is_the_sum_of_its_two_edges():
    skip = dnas.Genotype(normal=[("skip_connect", 0), ("skip_connect", 1)], normal_concat=[2],
                         reduce=[("skip_connect", 0), ("skip_connect", 1)], reduce_concat=[2])
    cell = EvalCell(skip.edges("normal"), skip.normal_concat, 4, 4, 4, reduction=False, reduction_prev=False).eval()
    s0, s1 = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    assert torch.allclose(cell(s0, s1), cell.preprocess0(s0) + cell.preprocess1(s1))


def test_drop_path_zeroes_whole_samples_and_keeps_the_expectation():
    torch.manual_seed(0)
    x = torch.ones(4000, 2, 3, 3)
    y = drop_path(x, 0.2)
    per_sample = y.flatten(1)
    assert set(per_sample.unique().tolist()) == {0.0, 1.25}
    assert (per_sample == per_sample[:, :1]).all()  # a sample is dropped whole
    assert y.mean().item() == pytest.approx(1.0, abs=0.05)


def test_drop_path_spares_identity_edges_and_acts_only_in_training():
    skips = dnas.Genotype(normal=[("skip_connect", 0), ("skip_connect", 1)] * 2, normal_concat=[2, 3],
                          reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1)] * 2, reduce_concat=[2, 3])
    s0, s1 = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    cell = EvalCell(skips.edges("normal"), skips.normal_concat, 4, 4, 4, reduction=False, reduction_prev=False).train()
    assert torch.equal(cell(s0, s1, 0.9), cell(s0, s1, 0.0))  # identity ops are never dropped
    convs = EvalCell(DARTS_V2.edges("normal"), DARTS_V2.normal_concat, 4, 4, 4, reduction=False, reduction_prev=False)
    torch.manual_seed(1)
    assert not torch.equal(convs.train()(s0, s1, 0.9), convs(s0, s1, 0.0))
    assert torch.equal(convs.eval()(s0, s1, 0.9), convs(s0, s1, 0.0))


def test_networks_registry_names_the_two_settings():
    assert NETWORKS.names() == ["cifar", "imagenet"]
    with pytest.raises(KeyError, match="valid networks: cifar, imagenet"):
        NETWORKS.get("mobile")
    with pytest.raises(ValueError, match="layers and C must be positive"):
        NetworkCIFAR(DARTS_V2, layers=0)


def test_create_network_makes_a_genotypes_network_by_name():
    """As timm's create_model: a published genotype's name (or a file, a run, the text form) and the network's
    options; the paper's network by default."""
    torch.manual_seed(0)
    made = dnas.create_network("DARTS_V2")
    torch.manual_seed(0)
    assert made.state_dict().keys() == NetworkCIFAR(dnas.published("DARTS_V2")).state_dict().keys()
    small = dnas.create_network(str(dnas.published("PDARTS")), "imagenet", num_classes=5, C=8, layers=3)
    assert isinstance(small, NetworkImageNet) and small.classifier.out_features == 5
    with pytest.raises(ValueError, match="network 'cifar': got an unexpected keyword argument 'widht'; its "
                                         "options: num_classes, in_channels, C, layers, auxiliary"):
        dnas.create_network("DARTS_V2", widht=3)
    with pytest.raises(ValueError, match="is not a convolutional cell"):
        dnas.create_network("DARTS_RNN_V2")


def test_fairdarts_cell_with_an_empty_node_builds_and_runs():
    g = dnas.Genotype.parse(
        "Genotype(normal=[('sep_conv_3x3', 2, 0), ('sep_conv_5x5', 2, 1), ('max_pool_3x3', 4, 0), "
        "('sep_conv_3x3', 5, 0)], normal_concat=range(2, 6), reduce=[('max_pool_3x3', 2, 0), ('avg_pool_3x3', 2, 1), "
        "('skip_connect', 3, 0), ('skip_connect', 3, 1)], reduce_concat=range(2, 4))")
    cell = EvalCell(g.edges("normal"), g.normal_concat, 4, 4, 4, reduction=False, reduction_prev=False)
    assert len(cell.ops) == 4
    assert cell(torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)).shape == (2, 3 * 4, 8, 8)  # nodes 2, 4, 5


def test_channels_last_computes_what_the_default_layout_computes():
    """``dnas train --channels-last``: the same network in NHWC gives the same logits and gradients."""
    results = []
    for layout in (torch.contiguous_format, torch.channels_last):
        torch.manual_seed(0)
        net = NetworkCIFAR(DARTS_V2, C=4, layers=5).double().to(memory_format=layout).train()
        x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        logits, aux = net.forward_with_aux(x.contiguous(memory_format=layout))
        (logits.sum() + aux.sum()).backward()
        results.append((logits, [p.grad for p in net.parameters()]))
    (a, grads_a), (b, grads_b) = results
    torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)
    for ga, gb in zip(grads_a, grads_b):  # to float64 rounding of sums taken in another order
        torch.testing.assert_close(gb, ga, rtol=0, atol=max(1e-9 * ga.abs().max().item(), 1e-12))


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_batch_norms_get_dense_gradients_without_drop_path(layout):
    """A cell concatenates its nodes, whose gradients the concatenation's backward hands on as slices; without
    drop path (the first epoch of the CIFAR schedule, every epoch of the ImageNet one) nothing lies between
    it and the BatchNorms that end the ops, whose CPU backward ran up to 25x slower on a slice. Each node's
    gradient is made dense first (``ops.cat_dense_gradients``): no BatchNorm kernel gets a strided tensor."""
    model = NetworkCIFAR(DARTS_V2, C=8, layers=5).to(memory_format=layout).train()
    x = torch.randn(2, 3, 32, 32).contiguous(memory_format=layout)
    with KernelInputs(BATCH_NORM_AND_CONVOLUTION, strided) as seen:
        logits, aux = model.forward_with_aux(x)
        (logits.sum() + aux.sum()).backward()
    assert seen.counts["native_batch_norm_backward"] == seen.counts["native_batch_norm"] == 0
