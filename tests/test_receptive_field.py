"""Tests for utils/analysis/receptive_field.py: theoretical RF (hand-computed, published values, autograd
support), the package's own layers, residual blocks, and refusal of what it cannot compute."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models.cnn_models import BasicBlock, BottleneckBlock, ResidualBlock, ResNet, SwappableCNN, WideBlock
from models.custom_layers import CBAM, ChannelAttention, CustomConv2d, GeMPool2d, MixedPool2d, SpatialAttention, Swish
from utils.analysis.receptive_field import LayerSpec, ReceptiveFieldRow, layer_specs_from_module, receptive_field


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
    # the shortcut (downsample) convs are not part of the chain: they would apply each stride twice
    assert not any("downsample" in s.name for s in specs)


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
# The package's own layers and residual blocks
# ---------------------------------------------------------------------------------------------


def _rf(model: nn.Module) -> ReceptiveFieldRow:
    return receptive_field(layer_specs_from_module(model))[-1]


def _support(model: nn.Module, size: int, positive: bool = False) -> tuple[ReceptiveFieldRow, tuple[int, int]]:
    """The RF row of the model's output and the input rows that reach its central unit (autograd)."""
    model.eval()
    row = _rf(model)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    x = (x.abs() + 0.1 if positive else x).requires_grad_(True)
    out = model(x)
    i = out.shape[-1] // 2
    out[0, :, i, i].sum().backward()
    rows = (x.grad[0].abs().sum(dim=(0, 2)) > 0).nonzero().flatten()
    half = (row.size - 1) / 2
    assert half <= row.center(i) <= size - 1 - half, "pick a unit whose RF is inside the image"
    return row, (rows.min().item() - row.center(i) + half, rows.max().item() - row.center(i) + half)


@pytest.mark.parametrize("swap", [
    {"conv": CustomConv2d},
    {"pool": lambda: MixedPool2d(2)},
    {"pool": lambda: GeMPool2d(2)},
    {"act": Swish},
    {"attention": lambda c: ChannelAttention(c, 4)},
    {"head_pool": lambda: GeMPool2d()},
], ids=["custom_conv", "mixed_pool", "gem_pool", "swish", "se", "gem_head"])
def test_package_layers_have_the_geometry_of_the_standard_ones(swap):
    """The audit's case: with CustomConv2d the RF was reported as 8, with MixedPool2d as 7."""
    base = _rf(SwappableCNN(8))
    row = _rf(SwappableCNN(8, **swap))
    assert base.size == 22 and (row.size, row.jump, row.start) == (base.size, base.jump, base.start)


def test_package_layers_rf_matches_autograd_support():
    """Custom conv, mixed pooling and CBAM's spatial attention (a 3x3 window: +2 px at each stage)."""
    torch.manual_seed(0)
    model = SwappableCNN(4, conv=CustomConv2d, act=nn.Identity, pool=lambda: MixedPool2d(2, alpha_init=0.3),
                         attention=lambda c: CBAM(c, 2, kernel_size=3, use_channel=False)).features
    row, (lo, hi) = _support(model, 64)
    assert (row.size, row.jump) == (36, 8)
    assert (lo, hi) == (0, row.size - 1)            # exactly the predicted pixels reach the unit
    assert _rf(nn.Sequential(SpatialAttention(7))).size == 7


def test_channel_attention_global_gate_is_not_counted():
    """Documented choice: SE's gate is a global average, so in autograd every pixel reaches every
    unit; the RF reported is that of the local path, as for a classifier's global pooling."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), ChannelAttention(4, 2))
    row, (lo, hi) = _support(model, 16)
    assert row.size == 3 and (lo, hi) == (-7, 8)    # the gradient reaches the whole 16-pixel image


@pytest.mark.parametrize("block,expected", [(BasicBlock, (13, 2)), (BottleneckBlock, (7, 2)), (WideBlock, (13, 2))])
def test_residual_nets_rf_is_the_residual_branch_and_matches_autograd(block, expected):
    torch.manual_seed(0)
    net = ResNet(block, (8, 16), (1, 1))
    with torch.no_grad():                            # positive weights, positive input: no ReLU cuts a path
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.uniform_(0.0, 1.0)
                if m.bias is not None:
                    m.bias.zero_()
    model = nn.Sequential(net.stem, net.stages)
    row, (lo, hi) = _support(model, 32, positive=True)
    assert (row.size, row.jump) == expected
    assert (lo, hi) == (0, row.size - 1)
    assert _rf(net).size == row.size                 # the head (pooling, linear) adds nothing


# ---------------------------------------------------------------------------------------------
# Refusals: what the calculator cannot compute raises, naming the module
# ---------------------------------------------------------------------------------------------


class _Blur(nn.Module):
    def forward(self, x):
        return x


class _Block(ResidualBlock):
    """A toy residual block with a chosen residual branch and shortcut."""

    def __init__(self, main: nn.Module, short: nn.Module) -> None:
        super().__init__()
        self.main, self.short = main, short

    def forward(self, x):
        return self.main(x) + self.short(x)

    def residual_branch(self):
        return [self.main]

    def shortcut_branch(self):
        return [self.short]

    def residual_end(self):
        return self.main


def test_refuses_branching_torchvision_nets():
    torchvision = pytest.importorskip("torchvision")
    with torch.device("meta"):
        googlenet = torchvision.models.googlenet(init_weights=False, aux_logits=False)
        densenet = torchvision.models.densenet121()
    with pytest.raises(ValueError, match=r"unsupported container 1 \(Inception\)"):
        layer_specs_from_module(nn.Sequential(nn.Conv2d(3, 192, 3), googlenet.inception3a))
    with pytest.raises(ValueError, match=r"denseblock1 \(_DenseBlock\)"):
        layer_specs_from_module(densenet.features)
    with pytest.raises(ValueError, match="GoogLeNet"):
        layer_specs_from_module(googlenet)


def test_refuses_unknown_layers_and_containers():
    with pytest.raises(ValueError, match=r"unsupported layer 1 \(_Blur\)"):
        layer_specs_from_module(nn.Sequential(nn.Conv2d(1, 1, 3), _Blur()))
    with pytest.raises(ValueError, match=r"unsupported container 0 \(ModuleList\)"):
        layer_specs_from_module(nn.Sequential(nn.ModuleList([nn.Conv2d(1, 1, 3)])))
    with pytest.raises(ValueError, match="after the head layer 1"):
        layer_specs_from_module(nn.Sequential(nn.Conv2d(1, 1, 3), nn.Flatten(), nn.Conv2d(1, 1, 3)))


def test_residual_blocks_whose_union_is_not_a_chain_are_refused():
    fine = _Block(nn.Conv2d(1, 1, 3, padding=1), nn.Conv2d(1, 1, 1))     # 1x1 shortcut inside the 3x3
    assert [s.kernel_size for s in layer_specs_from_module(fine)] == [3]
    with pytest.raises(ValueError, match="shortcut sees input pixels"):
        layer_specs_from_module(nn.Sequential(_Block(nn.Conv2d(1, 1, 1), nn.Conv2d(1, 1, 5, padding=2))))
    with pytest.raises(ValueError, match="stride"):
        layer_specs_from_module(_Block(nn.Conv2d(1, 1, 3, 2, 1), nn.Identity()))
