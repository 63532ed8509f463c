"""Tests for utils/analysis/erf.py: the empirical effective receptive field and its extent."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from utils.analysis.erf import effective_receptive_field, erf_extent_at
from utils.analysis.receptive_field import LayerSpec, layer_specs_from_module, receptive_field


def erf_extent(erf: torch.Tensor, mass: float = 0.95) -> int:
    """The extent around the centre unit ``effective_receptive_field`` back-propagates from."""
    h, w = erf.shape
    return erf_extent_at(erf, (h // 2, w // 2), mass)


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
