"""Tests for utils/receptive_field.py: theoretical RF (hand-computed, published values, autograd
support) and the empirical ERF."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from utils.receptive_field import (
    LayerSpec,
    ReceptiveFieldRow,
    effective_receptive_field,
    erf_extent_at,
    layer_specs_from_module,
    receptive_field,
)


def erf_extent(erf: torch.Tensor, mass: float = 0.95) -> int:
    """The extent around the centre unit ``effective_receptive_field`` back-propagates from."""
    h, w = erf.shape
    return erf_extent_at(erf, (h // 2, w // 2), mass)


# ---------------------------------------------------------------------------------------------
# Theoretical receptive field: hand-computed cases
# ---------------------------------------------------------------------------------------------


def test_single_3x3():
    (row,) = receptive_field([LayerSpec("c", 3, padding=1)])
    assert row == ReceptiveFieldRow("c", size=3, jump=1, start=0.0)
    assert row.effective_padding == 1


def test_two_3x3_give_5():
    rows = receptive_field([LayerSpec("a", 3), LayerSpec("b", 3)])
    assert [r.size for r in rows] == [3, 5]
    assert [r.jump for r in rows] == [1, 1]
    # no padding: first unit of a 3x3 is centred on pixel 1, of two 3x3s on pixel 2
    assert [r.start for r in rows] == [1.0, 2.0]


def test_strided_then_3x3_gives_7():
    rows = receptive_field([LayerSpec("a", 3, stride=2), LayerSpec("b", 3)])
    assert (rows[-1].size, rows[-1].jump) == (7, 2)
    assert rows[-1].start == 3.0  # 1 + (1 - 0) * 2


def test_dilation_2_3x3_gives_5():
    (row,) = receptive_field([LayerSpec("d", 3, padding=2, dilation=2)])
    assert (row.size, row.jump, row.start) == (5, 1, 0.0)


def test_pooling():
    rows = receptive_field(
        [LayerSpec("conv", 3, padding=1), LayerSpec("pool", 2, stride=2), LayerSpec("conv2", 3, padding=1)]
    )
    assert [(r.size, r.jump) for r in rows] == [(3, 1), (4, 2), (8, 2)]
    # 2x2 pool centres its first unit between pixels 0 and 1
    assert [r.start for r in rows] == [0.0, 0.5, 0.5]
    assert rows[-1].effective_padding == 3  # 1*1 + 0*1 + 1*2
    assert rows[-1].center(2) == 4.5


def test_empty_and_invalid():
    assert receptive_field([]) == []
    with pytest.raises(ValueError):
        LayerSpec("bad", 0)
    with pytest.raises(ValueError):
        LayerSpec("bad", 3, stride=0)


@pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")  # even-kernel 'same' on purpose
@pytest.mark.parametrize(
    "layers",
    [
        [nn.Conv2d(1, 1, 3, stride=2, padding=1), nn.Conv2d(1, 1, 4, padding=1), nn.AvgPool2d(2),
         nn.Conv2d(1, 1, 3, padding=2, dilation=2)],
        [nn.Conv2d(1, 1, 4, padding="same"), nn.Conv2d(1, 1, 3, stride=3),
         nn.AvgPool2d(3, stride=2, padding=1), nn.Conv2d(1, 1, 5, padding="valid")],
        [nn.Conv2d(1, 1, 7, stride=2, padding=3), nn.AvgPool2d(3, stride=2, padding=1),
         nn.Conv2d(1, 1, 3, padding=1), nn.Conv2d(1, 1, 3, stride=2, padding=1)],
    ],
)
def test_rf_position_matches_autograd(layers):
    """size/jump/start predict exactly which input pixels reach an output unit.

    All weights positive and the net linear, so no gradient cancels: the gradient support of
    unit i along one axis is [center(i) - (size-1)/2, center(i) + (size-1)/2].
    """
    torch.manual_seed(0)
    model = nn.Sequential(*layers)
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Conv2d):
                m.weight.uniform_(0.1, 1.0)
                m.bias.zero_()
    row = receptive_field(layer_specs_from_module(model))[-1]
    x = torch.randn(1, 1, 80, 80, requires_grad=True)
    out = model(x)
    i = out.shape[-1] // 2
    half = (row.size - 1) / 2
    lo, hi = row.center(i) - half, row.center(i) + half
    assert 0 <= lo and hi <= 79, "pick a unit whose RF is inside the image"
    out[0, 0, i, i].backward()
    support = (x.grad[0, 0].abs().sum(dim=0) > 0).nonzero().flatten()
    assert (support.min().item(), support.max().item()) == (lo, hi)


# ---------------------------------------------------------------------------------------------
# Published values.
# Source: Araujo, Norris & Sim, "Computing Receptive Fields of Convolutional Neural Networks",
# Distill 2019 (doi:10.23915/distill.00021), whose library's summary table (README of
# github.com/google-research/receptive_field) gives alexnet_v2 195/32/64, vgg_16 212/32/90,
# resnet_v1_50 483/32/239 (RF / effective stride / effective padding), and whose per-end-point
# table receptive_field/RECEPTIVE_FIELD_TABLE.md (TF-Slim models, resolution 224) gives the
# intermediate rows checked below. The networks are the TF-Slim ones (tensorflow/models,
# research/slim/nets), whose padding choices fix the effective padding.
# ---------------------------------------------------------------------------------------------


def _alexnet_v2_specs() -> list[LayerSpec]:
    # TF-Slim alexnet_v2: conv1 11x11/4 VALID, pools 3x3/2 VALID, other convs SAME.
    return [
        LayerSpec("conv1", 11, 4, 0), LayerSpec("pool1", 3, 2, 0),
        LayerSpec("conv2", 5, 1, 2), LayerSpec("pool2", 3, 2, 0),
        LayerSpec("conv3", 3, 1, 1), LayerSpec("conv4", 3, 1, 1), LayerSpec("conv5", 3, 1, 1),
        LayerSpec("pool5", 3, 2, 0),
    ]


def _vgg16_specs() -> list[LayerSpec]:
    specs = []
    for block, n_convs in enumerate([2, 2, 3, 3, 3], start=1):
        specs += [LayerSpec(f"conv{block}_{i}", 3, 1, 1) for i in range(1, n_convs + 1)]
        specs.append(LayerSpec(f"pool{block}", 2, 2, 0))
    return specs


def _resnet50_specs(placement: str) -> list[LayerSpec]:
    """Longest path (all 3x3 convs) of ResNet-50, 1x1 convs included for completeness.

    placement:
      "slim_v1": TF-Slim resnet_v1_50 (the published 483): a block's stride sits on the 3x3 of its
                 LAST unit, for block1..block3 (resnet_v1_block: "stride ... implemented as a
                 stride in the last unit"); stem max pool is SAME, which at 224 -> 112 pads
                 (0, 1), so leading padding 0.
      "torchvision": torchvision v1.5: stride on the 3x3 of the FIRST unit of layer2..layer4.
      "he2016": original ResNet v1: stride on the first 1x1 of the FIRST unit of stages 3..5.
    """
    specs = [LayerSpec("conv1", 7, 2, 3),
             LayerSpec("pool1", 3, 2, 0 if placement == "slim_v1" else 1)]
    for b, units in enumerate([3, 4, 6, 3], start=1):
        for u in range(units):
            s1 = s3 = 1
            if placement == "slim_v1" and b < 4 and u == units - 1:
                s3 = 2
            if placement == "torchvision" and b > 1 and u == 0:
                s3 = 2
            if placement == "he2016" and b > 1 and u == 0:
                s1 = 2
            name = f"block{b}/unit_{u + 1}"
            specs += [LayerSpec(f"{name}/conv1", 1, s1, 0), LayerSpec(f"{name}/conv2", 3, s3, 1),
                      LayerSpec(f"{name}/conv3", 1, 1, 0)]
    return specs


def _by_name(rows):
    return {r.name: (r.size, r.jump, r.effective_padding) for r in rows}


def test_alexnet_v2_published():
    got = _by_name(receptive_field(_alexnet_v2_specs()))
    published = {  # RECEPTIVE_FIELD_TABLE.md, alexnet_v2, resolution 224: RF, stride, padding
        "conv1": (11, 4, 0), "pool1": (19, 8, 0), "conv2": (51, 8, 16), "conv3": (99, 16, 32),
        "conv4": (131, 16, 48), "conv5": (163, 16, 64), "pool5": (195, 32, 64),
    }
    assert {k: got[k] for k in published} == published


def test_vgg16_published():
    got = _by_name(receptive_field(_vgg16_specs()))
    published = {  # RECEPTIVE_FIELD_TABLE.md, vgg_16, resolution 224
        "conv1_1": (3, 1, 1), "pool1": (6, 2, 2), "conv2_1": (10, 2, 4), "pool2": (16, 4, 6),
        "conv3_1": (24, 4, 10), "conv3_2": (32, 4, 14), "pool3": (44, 8, 18),
        "conv4_1": (60, 8, 26), "conv4_2": (76, 8, 34), "pool4": (100, 16, 42),
        "conv5_1": (132, 16, 58), "conv5_2": (164, 16, 74), "pool5": (212, 32, 90),
    }
    assert {k: got[k] for k in published} == published
    # 212 is pool5; the last conv (conv5_3, not listed in the table) is 196.
    assert got["conv5_3"] == (196, 16, 90)


def test_resnet_v1_50_published():
    rows = receptive_field(_resnet50_specs("slim_v1"))
    got = _by_name(rows)
    published = {  # RECEPTIVE_FIELD_TABLE.md, resnet_v1_50, resolution 224 (block end-points)
        "block1/unit_3/conv3": (35, 8, 15), "block2/unit_4/conv3": (99, 16, 47),
        "block3/unit_6/conv3": (291, 32, 143), "block4/unit_3/conv3": (483, 32, 239),
    }
    assert {k: got[k] for k in published} == published
    assert rows[-1].size == 483


def test_resnet50_stride_placement():
    # Not published numbers, derived: in torchvision v1.5 the first 3x3 of layer2..layer4 is
    # itself the strided layer, so it grows the RF at the previous stage's jump, giving
    # 483 - 2 * (4 + 8 + 16) = 427. With Slim's stride on the last unit, or He et al.'s strided
    # first 1x1 (which adds nothing itself), every 3x3 of a stage sees the stage's jump: 483.
    assert receptive_field(_resnet50_specs("torchvision"))[-1].size == 427
    assert receptive_field(_resnet50_specs("he2016"))[-1].size == 483
    assert receptive_field(_resnet50_specs("torchvision"))[-1].jump == 32


def test_layer_specs_from_torchvision_models():
    torchvision = pytest.importorskip("torchvision")
    with torch.device("meta"):  # shapes only: no memory, no weight init
        alexnet = torchvision.models.alexnet()
        vgg16 = torchvision.models.vgg16()
        resnet50 = torchvision.models.resnet50()
    # torchvision's AlexNet pads conv1 by 2, so only size and jump match Slim's alexnet_v2
    row = receptive_field(layer_specs_from_module(alexnet))[-1]
    assert (row.size, row.jump, row.effective_padding) == (195, 32, 66)
    row = receptive_field(layer_specs_from_module(vgg16))[-1]
    assert (row.size, row.jump, row.effective_padding) == (212, 32, 90)
    specs = layer_specs_from_module(resnet50)
    # same geometry, layer by layer, as the hand-built torchvision-placement path
    assert [_astuple(s)[1:] for s in specs] == [_astuple(s)[1:] for s in _resnet50_specs("torchvision")]
    assert specs[0].name == "conv1" and specs[-1].name == "layer4.2.conv3"
    row = receptive_field(specs)[-1]
    assert (row.size, row.jump) == (427, 32)
    # Walking the shortcut convs as if they were in the chain applies each stride twice.
    wrong = receptive_field(layer_specs_from_module(resnet50, skip=()))[-1]
    assert wrong.jump == 256


def _astuple(s: LayerSpec) -> tuple:
    return (s.name, s.kernel_size, s.stride, s.padding, s.dilation)


def test_layer_specs_from_module_args():
    model = nn.Sequential(
        nn.Conv2d(3, 4, (5, 5), stride=(2, 2), padding=(2, 2)), nn.BatchNorm2d(4), nn.ReLU(),
        nn.MaxPool2d(3, stride=None, padding=1, dilation=2), nn.AvgPool2d((2, 2)),
        nn.Flatten(), nn.Linear(4, 2),
    )
    assert [_astuple(s) for s in layer_specs_from_module(model)] == [
        ("0", 5, 2, 2, 1), ("3", 3, 3, 1, 2), ("4", 2, 2, 0, 1)]
    with pytest.raises(ValueError, match="non-square"):
        layer_specs_from_module(nn.Sequential(nn.Conv2d(1, 1, (3, 5))))


# ---------------------------------------------------------------------------------------------
# Effective receptive field
# ---------------------------------------------------------------------------------------------


def _window(h: int, w: int, k: int) -> torch.Tensor:
    mask = torch.zeros(h, w, dtype=torch.bool)
    ci, cj, r = h // 2, w // 2, k // 2
    mask[ci - r: ci + r + 1, cj - r: cj + r + 1] = True
    return mask


@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("size", [15, 16])  # 16: even size, centre (8, 8)
def test_erf_single_conv_random(k, size):
    torch.manual_seed(0)
    model = nn.Conv2d(3, 4, k, padding=k // 2)
    erf = effective_receptive_field(model, torch.randn(4, 3, size, size))
    assert erf.shape == (size, size)
    assert erf.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert torch.equal(erf > 0, _window(size, size, k))  # nonzero on all of k x k, nowhere else
    assert erf_extent(erf, mass=1.0) == k


def test_erf_single_conv_all_ones_is_uniform():
    model = nn.Conv2d(2, 1, 3, padding=1, bias=False)
    nn.init.ones_(model.weight)
    with torch.no_grad():
        model.weight[0, 1] = -1.0  # |.| is taken per input channel, so opposite signs don't cancel
    erf = effective_receptive_field(model, torch.randn(2, 2, 9, 9))
    expected = torch.zeros(9, 9)
    expected[3:6, 3:6] = 1 / 9
    torch.testing.assert_close(erf, expected)


def test_erf_two_3x3_is_triangle_and_5x5():
    model = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1, bias=False), nn.Conv2d(1, 1, 3, padding=1, bias=False))
    for m in model:
        nn.init.ones_(m.weight)
    erf = effective_receptive_field(model, torch.randn(3, 1, 11, 11))
    tri = torch.tensor([1.0, 2.0, 3.0, 2.0, 1.0])
    expected = torch.zeros(11, 11)
    expected[3:8, 3:8] = torch.outer(tri, tri) / 81  # ones * ones = triangle, sums to 9 * 9
    torch.testing.assert_close(erf, expected)
    assert erf_extent(erf, 1.0) == 5 == receptive_field(layer_specs_from_module(model))[-1].size
    # The ERF is concentrated: the central 3x3 holds (2+3+2)^2 / 81 = 49/81 = 0.605 of it.
    assert erf[4:7, 4:7].sum().item() == pytest.approx(49 / 81)
    assert erf_extent(erf, 0.6) == 3 and erf_extent(erf, 0.61) == 5


def test_erf_two_3x3_random_confined_to_5x5():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1))
    erf = effective_receptive_field(model, torch.randn(8, 3, 13, 13))
    assert not (erf[~_window(13, 13, 5)] != 0).any()
    assert erf[6, 6] > 0


def test_erf_dilated_conv():
    torch.manual_seed(0)
    model = nn.Conv2d(1, 2, 3, padding=2, dilation=2)
    erf = effective_receptive_field(model, torch.randn(2, 1, 11, 11))
    expected_support = torch.zeros(11, 11, dtype=torch.bool)
    expected_support[3:8:2, 3:8:2] = True  # taps at offsets -2, 0, +2 around (5, 5)
    assert torch.equal(erf > 0, expected_support)
    assert erf_extent(erf, 1.0) == 5 == receptive_field([LayerSpec("d", 3, 1, 2, 2)])[0].size


def test_erf_layer_hook_channel_and_state_restored():
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 2, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0] = 1.0  # channel 0: box filter
        conv.weight[1, 0, 1, 1] = 1.0  # channel 1: identity (centre tap only)
    bn = nn.BatchNorm2d(2)
    head = nn.Linear(2, 3)
    model = nn.Sequential(conv, bn, nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)
    head.weight.requires_grad_(False)  # a frozen parameter must stay frozen
    model.train()
    conv.weight.grad = None
    running_mean = bn.running_mean.clone()

    erf = effective_receptive_field(model, torch.randn(4, 1, 7, 7), layer=bn, channel=1)
    expected = torch.zeros(7, 7)
    expected[3, 3] = 1.0
    torch.testing.assert_close(erf, expected)
    erf0 = effective_receptive_field(model, torch.randn(4, 1, 7, 7), layer=bn, channel=0)
    assert torch.equal(erf0 > 0, _window(7, 7, 3))

    assert all(m.training for m in model.modules())
    assert conv.weight.requires_grad and not head.weight.requires_grad
    assert conv.weight.grad is None and bn.weight.grad is None
    torch.testing.assert_close(bn.running_mean, running_mean)  # eval mode: stats untouched


def test_erf_errors():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 5 * 5, 3))
    with pytest.raises(ValueError, match="N, K, h, w"):
        effective_receptive_field(model, torch.randn(1, 1, 7, 7))
    with pytest.raises(ValueError, match="not called"):
        effective_receptive_field(model, torch.randn(1, 1, 7, 7), layer=nn.ReLU())
    dead = nn.Conv2d(1, 1, 3, padding=1, bias=False)
    nn.init.zeros_(dead.weight)
    with pytest.raises(ValueError, match="zero"):
        effective_receptive_field(dead, torch.randn(1, 1, 5, 5))


def test_erf_extent_uniform_and_gaussian():
    for k in (1, 3, 7):
        erf = torch.zeros(21, 21)
        erf[10 - k // 2: 10 + k // 2 + 1, 10 - k // 2: 10 + k // 2 + 1] = 1.0
        assert erf_extent(erf, 1.0) == k
    # uniform 7x7: 5x5 holds 25/49 = 0.51 of the mass
    assert erf_extent(erf, 0.5) == 5 and erf_extent(erf, 0.52) == 7
    # Separable Gaussian, sigma 2: the centred square of half-width r holds m_r^2, with m_r the
    # 1-D mass of |x| <= r, roughly 2 Phi((r + 0.5) / 2) - 1 (pixels span +-0.5). m_3^2 = 0.852
    # and m_4^2 = 0.955, so 95 % needs r = 4, side 9; at 99 %: m_5^2 = 0.989, m_6^2 = 0.998 -> 13.
    g = torch.exp(-((torch.arange(41.0) - 20) ** 2) / (2 * 2.0**2))
    m = np.array([g[20 - r: 21 + r].sum().item() for r in range(8)]) / g.sum().item()
    assert m[3] ** 2 < 0.95 <= m[4] ** 2 and m[5] ** 2 < 0.99 <= m[6] ** 2
    erf = torch.outer(g, g)
    assert erf_extent(erf, 0.95) == 9
    assert erf_extent(erf, 0.99) == 13
    with pytest.raises(ValueError):
        erf_extent(erf, 0.0)


def test_erf_extent_at_half_pixel_centre():
    erf = torch.zeros(32, 32)
    erf[17:19, 17:19] = 1.0                      # a 2x2 blob around (17.5, 17.5)
    assert erf_extent_at(erf, (17.5, 17.5), 0.95) == 2
    assert erf_extent_at(erf, (16, 16), 0.95) == 5   # measured around the wrong centre it looks larger


def test_erf_extent_at_errors():
    with pytest.raises(ValueError, match="non-negative"):
        erf_extent_at(-torch.ones(3, 3), (1, 1))
    with pytest.raises(ValueError, match="zero"):
        erf_extent_at(torch.zeros(3, 3), (1, 1))
    with pytest.raises(ValueError, match="H, W"):
        erf_extent_at(torch.ones(1, 3, 3), (1, 1))
