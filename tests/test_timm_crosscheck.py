"""Cross-checks of the custom layers against timm's independent implementations of the same layers.

Run from the repo root:  python3 -m pytest tests/test_timm_crosscheck.py -q   (needs timm: requirements-test.txt)

For every layer of this package that timm also implements, the same weights are copied into both
modules, and the forward output, the input gradient and every parameter gradient for one random
upstream gradient are compared in float64.  The reference numbers are timm's (its modules run with
autograd's backward, or, for ``SwishMe``, timm's own hand-written one), not ours: a change to one of
our backward passes that still matched our own autograd twin (tests/test_custom_layers.py) but
computed a different layer fails here.

    ours                                             timm (1.0)
    ChannelAttention (SE, pool_types=("avg",))       layers.SEModule / SqueezeExcite
    ChannelAttention(pool_types=("avg", "max"))      layers.cbam.ChannelAttn
    SpatialAttention                                 layers.cbam.SpatialAttn
    CBAM                                             layers.cbam.CbamModule
    CustomConv2d(weight_standardization=True)        layers.StdConv2d
    Swish                                            layers.activations.Swish, activations_me.SwishMe, nn.SiLU
    MixedPool2d (alpha 1/2, window = the input)      layers.adaptive_avgmax_pool2d / AdaptiveAvgMaxPool2d

timm has no generalised-mean pooling (GeMPool2d): it is checked against the float64 definition in
tests/test_custom_layers_reliability.py instead.
"""

from __future__ import annotations

from typing import Callable, List, Sequence, Tuple

import pytest
import torch
import torch.nn as nn
from torch import Tensor

timm = pytest.importorskip("timm")
from timm.layers import SEModule, SqueezeExcite, StdConv2d, AdaptiveAvgMaxPool2d, adaptive_avgmax_pool2d  # noqa: E402
from timm.layers.activations import Swish as TimmSwish  # noqa: E402
from timm.layers.activations_me import SwishMe  # noqa: E402
from timm.layers.cbam import CbamModule, ChannelAttn, SpatialAttn  # noqa: E402

from models.custom_layers import (CBAM, ChannelAttention, CustomConv2d, MixedPool2d, SpatialAttention,  # noqa: E402
                                  Swish)

F64 = torch.float64
TOL = dict(rtol=1e-10, atol=1e-12)
SHAPES = [(2, 8, 7, 9), (1, 8, 5, 5), (3, 8, 1, 6)]
SHAPE_IDS = ["odd", "n1", "one_row"]


def _run(module: Callable[[Tensor], Tensor], x: Tensor, params: Sequence[Tensor]) -> List[Tensor]:
    """[output, dL/dx, dL/dparams...] for L = sum(G * y), G a fixed random upstream gradient."""
    x = x.detach().clone().requires_grad_()
    y = module(x)
    gy = torch.randn(y.shape, dtype=y.dtype, generator=torch.Generator().manual_seed(1))
    return [y, *torch.autograd.grad(y, [x, *params], gy)]


def _compare(got: List[Tensor], want: List[Tensor], names: Sequence[str]) -> None:
    assert len(got) == len(want) == len(names)
    for g, w, n in zip(got, want, names):
        torch.testing.assert_close(g, w.reshape(g.shape), **TOL, msg=lambda m: f"{n}: {m}")


def _input(shape: Tuple[int, ...], seed: int = 0) -> Tensor:
    return torch.randn(*shape, dtype=F64, generator=torch.Generator().manual_seed(seed))


def _away_from_init(*params: Tensor) -> None:
    with torch.no_grad():
        for p in params:
            p.add_(0.3 * torch.randn(p.shape, dtype=p.dtype, generator=torch.Generator().manual_seed(p.numel())))


# --------------------------------------------------------------------------- #
# Channel attention: SE and CBAM's avg + max
# --------------------------------------------------------------------------- #
def _copy_mlp(ours: ChannelAttention, fc1: nn.Conv2d, fc2: nn.Conv2d) -> None:
    with torch.no_grad():
        fc1.weight.copy_(ours.fc1_weight[:, :, None, None]); fc1.bias.copy_(ours.fc1_bias)
        fc2.weight.copy_(ours.fc2_weight[:, :, None, None]); fc2.bias.copy_(ours.fc2_bias)


def _mlp_params(ours: ChannelAttention) -> List[Tensor]:
    return [ours.fc1_weight, ours.fc1_bias, ours.fc2_weight, ours.fc2_bias]


MLP_NAMES = ["output", "dL/dx", "dL/dfc1.weight", "dL/dfc1.bias", "dL/dfc2.weight", "dL/dfc2.bias"]


@pytest.mark.parametrize("timm_cls", [SEModule, SqueezeExcite], ids=["SEModule", "SqueezeExcite"])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_se_matches_timm_se_module(shape, timm_cls) -> None:
    torch.manual_seed(0)
    ours = ChannelAttention(8, reduction=4).double()
    # timm rounds the hidden width with make_divisible: pass ours (8 // 4 = 2) directly; both MLPs have biases
    theirs = timm_cls(8, rd_channels=ours.hidden, bias=True).double()
    _away_from_init(*_mlp_params(ours))
    _copy_mlp(ours, theirs.fc1, theirs.fc2)
    x = _input(shape)
    want = _run(theirs, x, [theirs.fc1.weight, theirs.fc1.bias, theirs.fc2.weight, theirs.fc2.bias])
    _compare(_run(ours, x, _mlp_params(ours)), want, MLP_NAMES)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_cbam_channel_attention_matches_timm_channel_attn(shape) -> None:
    torch.manual_seed(1)
    ours = ChannelAttention(8, reduction=2, pool_types=("avg", "max")).double()
    # timm's CBAM MLP has no biases by default (mlp_bias=False); ours has them: turn timm's on. Both apply the
    # MLP with its biases to each descriptor, so fc2's bias enters twice in both.
    theirs = ChannelAttn(8, rd_channels=ours.hidden, mlp_bias=True).double()
    _away_from_init(*_mlp_params(ours))
    _copy_mlp(ours, theirs.fc1, theirs.fc2)
    x = _input(shape, seed=1)  # random: no ties in the max (timm's amax would split a tie evenly, ours not)
    want = _run(theirs, x, [theirs.fc1.weight, theirs.fc1.bias, theirs.fc2.weight, theirs.fc2.bias])
    _compare(_run(ours, x, _mlp_params(ours)), want, MLP_NAMES)


# --------------------------------------------------------------------------- #
# CBAM spatial attention and the whole module
# --------------------------------------------------------------------------- #
def _copy_spatial(ours: SpatialAttention, theirs: SpatialAttn) -> Tuple[Tensor, Tensor]:
    """Our spatial conv has a bias and no BatchNorm; timm's has no bias and a BN: put timm's BN in eval mode with
    running mean 0, running var 1, eps 0 and weight 1, so it is exactly "+ bias", and put our bias there.
    Returns timm's (conv weight, bias) parameters, the counterparts of ours."""
    conv, bn = theirs.conv.conv, theirs.conv.bn
    assert conv.bias is None and isinstance(bn, nn.BatchNorm2d)
    with torch.no_grad():
        conv.weight.copy_(ours.weight)
        bn.running_mean.zero_(); bn.running_var.fill_(1.0); bn.weight.fill_(1.0)
        bn.bias.copy_(ours.bias)
    bn.eps = 0.0
    theirs.eval()
    return conv.weight, bn.bias


@pytest.mark.parametrize("kernel_size", [3, 7])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_spatial_attention_matches_timm_spatial_attn(shape, kernel_size: int) -> None:
    torch.manual_seed(2)
    ours = SpatialAttention(kernel_size).double()
    theirs = SpatialAttn(kernel_size).double()
    _away_from_init(ours.weight, ours.bias)
    their_params = _copy_spatial(ours, theirs)
    x = _input(shape, seed=2)  # random: no ties in the channel max
    _compare(_run(ours, x, [ours.weight, ours.bias]), _run(theirs, x, list(their_params)),
             ["output", "dL/dx", "dL/dconv.weight", "dL/dconv.bias"])


@pytest.mark.parametrize("kernel_size", [3, 7])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_cbam_matches_timm_cbam_module(shape, kernel_size: int) -> None:
    """The whole module, channel stage (avg + max, shared MLP) then spatial stage: fails for an SE channel stage."""
    torch.manual_seed(3)
    ours = CBAM(8, reduction=4, kernel_size=kernel_size).double()
    # mlp_bias=True and the hidden width passed directly, as above; the spatial BN made "+ bias" as above
    theirs = CbamModule(8, rd_channels=ours.channel.hidden, spatial_kernel_size=kernel_size, mlp_bias=True).double()
    ours_params = _mlp_params(ours.channel) + [ours.spatial.weight, ours.spatial.bias]
    _away_from_init(*ours_params)
    _copy_mlp(ours.channel, theirs.channel.fc1, theirs.channel.fc2)
    their_params = [theirs.channel.fc1.weight, theirs.channel.fc1.bias, theirs.channel.fc2.weight,
                    theirs.channel.fc2.bias, *_copy_spatial(ours.spatial, theirs.spatial)]
    x = _input(shape, seed=3)
    _compare(_run(ours, x, ours_params), _run(theirs, x, their_params),
             MLP_NAMES + ["dL/dspatial.weight", "dL/dspatial.bias"])


def test_cbam_default_is_timm_cbam_default_geometry() -> None:
    """Same defaults as the paper and timm: reduction 16 and a 7 x 7 spatial kernel."""
    ours, theirs = CBAM(64), CbamModule(64)
    assert ours.channel.hidden == theirs.channel.fc1.out_channels == 4
    assert ours.spatial.kernel_size == theirs.spatial.conv.conv.kernel_size[0] == 7


# --------------------------------------------------------------------------- #
# Weight-standardised convolution
# --------------------------------------------------------------------------- #
STD_CONV = {
    "plain": dict(in_channels=3, out_channels=5, kernel_size=3, padding=1),
    "strided_dilated": dict(in_channels=4, out_channels=6, kernel_size=(3, 2), stride=2, padding=(2, 1), dilation=2),
    "groups": dict(in_channels=4, out_channels=6, kernel_size=3, padding=1, groups=2),
}


@pytest.mark.parametrize("weight_scale", [1.0, 1e-3], ids=["unit_weights", "tiny_weights_eps_matters"])
@pytest.mark.parametrize("option", list(STD_CONV))
def test_weight_standardized_conv_matches_timm_std_conv2d(option: str, weight_scale: float) -> None:
    """Both standardise each filter with its biased variance, (W - mean) / sqrt(var + eps); timm's eps is 1e-6 and
    ours 1e-5 by default, so ours is built with timm's. With filters of std ~1e-3 (var ~ eps) a different eps or an
    unbiased variance would show. timm's StdConv2d has no bias by default: turned on, as ours; no gate (timm has
    none)."""
    kw = STD_CONV[option]
    torch.manual_seed(4)
    ours = CustomConv2d(kw["in_channels"], kw["out_channels"], kw["kernel_size"], stride=kw.get("stride", 1),
                        padding=kw["padding"], dilation=kw.get("dilation", 1), groups=kw.get("groups", 1), bias=True,
                        weight_standardization=True, eps=1e-6).double()
    theirs = StdConv2d(kw["in_channels"], kw["out_channels"], kw["kernel_size"], stride=kw.get("stride", 1),
                       padding=kw["padding"], dilation=kw.get("dilation", 1), groups=kw.get("groups", 1), bias=True,
                       eps=1e-6).double()
    with torch.no_grad():
        ours.weight.mul_(weight_scale)
        theirs.weight.copy_(ours.weight); theirs.bias.copy_(ours.bias)
    x = _input((2, kw["in_channels"], 9, 8), seed=4)
    _compare(_run(ours, x, [ours.weight, ours.bias]), _run(theirs, x, [theirs.weight, theirs.bias]),
             ["output", "dL/dx", "dL/dweight", "dL/dbias"])


# --------------------------------------------------------------------------- #
# Swish / SiLU
# --------------------------------------------------------------------------- #
TIMM_SWISH = {"activations.Swish": TimmSwish, "activations_me.SwishMe": SwishMe,
              "create_act_layer('swish')": lambda: timm.layers.create_act_layer("swish")}


@pytest.mark.parametrize("timm_name", list(TIMM_SWISH))
def test_swish_beta1_matches_timm_swish(timm_name: str) -> None:
    """timm's Swish has no slope: ours at beta = 1 (learnable, so dL/dbeta is computed too but has no counterpart)."""
    ours, theirs = Swish(beta=1.0).double(), TIMM_SWISH[timm_name]()
    x = _input((2, 3, 7, 9), seed=5) * 4
    _compare(_run(ours, x, []), _run(theirs, x, []), ["output", "dL/dx"])


@pytest.mark.parametrize("beta", [0.4, 1.7, -0.8])
@pytest.mark.parametrize("timm_name", ["activations.Swish", "activations_me.SwishMe"])
def test_swish_beta_matches_timm_swish_of_scaled_input(timm_name: str, beta: float) -> None:
    """x * sigmoid(beta x) = swish(beta x) / beta: timm's swish, with autograd differentiating the scaling by a beta
    tensor, gives a reference dL/dbeta (and dL/dx) from timm's numbers for our learnable slope."""
    ours, theirs = Swish(beta=beta).double(), TIMM_SWISH[timm_name]()
    beta_t = ours.beta.detach().clone().requires_grad_()  # the same value (beta was rounded to float32 at init)
    x = _input((2, 3, 7, 9), seed=6) * 3
    _compare(_run(ours, x, [ours.beta]), _run(lambda t: theirs(beta_t * t) / beta_t, x, [beta_t]),
             ["output", "dL/dx", "dL/dbeta"])


# --------------------------------------------------------------------------- #
# Mixed pooling at alpha 1/2 over the whole input = timm's avg-max pooling
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("shape", [(2, 3, 7, 9), (1, 4, 5, 5), (3, 2, 1, 6)], ids=SHAPE_IDS)
def test_mixed_pool_half_matches_timm_adaptive_avgmax_pool(shape) -> None:
    """timm's avgmax pooling is 0.5 * (avg + max) over the whole map: ours with alpha = 1/2 and the window = the
    input. (timm has no mixing logit, so dL/da has no counterpart; random inputs: no ties in the max.)"""
    ours = MixedPool2d(shape[2:], alpha_init=0.5).double()
    x = _input(shape, seed=7)
    got = _run(ours, x, [])
    _compare(got, _run(AdaptiveAvgMaxPool2d(1), x, []), ["output", "dL/dx"])
    _compare(got, _run(lambda t: adaptive_avgmax_pool2d(t, 1), x, []), ["output", "dL/dx"])
