"""Tests for models/init.py: the initialisation schemes and the zero-init-residual flag."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from models.cnn_models import BasicBlock, BottleneckBlock, PlainCNN, ResNet, WideBlock
from models.custom_layers import CustomConv2d
from models.init import INIT_SCHEMES, init_weights


def _built(build, scheme: str, zero: bool = False, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = build()
    init_weights(model, scheme, zero_init_residual=zero)
    return model


@pytest.mark.parametrize("layer,fan_in", [
    (lambda: nn.Conv2d(64, 96, 3), 64 * 9),
    (lambda: nn.Conv2d(32, 64, 5, groups=4), 8 * 25),
    (lambda: CustomConv2d(48, 64, 3, channel_gate=True), 48 * 9),
    (lambda: nn.Linear(700, 300), 700),
])
def test_kaiming_is_he_normal_fan_in(layer, fan_in):
    model = nn.Sequential(layer(), nn.BatchNorm2d(4))
    with torch.no_grad():
        model[1].weight.fill_(3.0)
        model[1].bias.fill_(2.0)
    record = init_weights(model, "kaiming")
    w = model[0].weight.detach().double()
    expected = math.sqrt(2.0 / fan_in)
    assert w.std().item() == pytest.approx(expected, rel=0.03)     # >= 40k samples: ~0.4 % sampling error
    assert abs(w.mean().item()) < 0.02 * expected
    if model[0].bias is not None:
        assert torch.count_nonzero(model[0].bias) == 0
    assert torch.all(model[1].weight == 1) and torch.all(model[1].bias == 0)
    assert (record.scheme, record.layers_initialised, record.residual_ends_zeroed) == ("kaiming", 2, 0)


def test_kaiming_leaves_other_parameters_alone():
    conv = CustomConv2d(4, 4, 3, channel_gate=True)
    with torch.no_grad():
        conv.gate.fill_(0.5)
    init_weights(nn.Sequential(conv), "kaiming")
    assert torch.all(conv.gate == 0.5)


@pytest.mark.parametrize("build", [
    lambda: ResNet(BasicBlock, (8, 16), (2, 1)),
    lambda: ResNet(WideBlock, (8, 16), (1, 1), norm=False),
    lambda: PlainCNN([8, 16, 16]),
])
def test_pytorch_default_equals_a_fresh_build(build):
    torch.manual_seed(3)
    fresh = build()
    after_fresh = torch.rand(1)
    torch.manual_seed(3)
    model = build()
    record = init_weights(model, "pytorch_default")
    assert torch.equal(torch.rand(1), after_fresh)              # it draws no random numbers
    assert record.layers_initialised == 0
    for (k, a), (_, b) in zip(fresh.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b), k


def _changed(a: nn.Module, b: nn.Module) -> set[str]:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    return {k for k in sa if not torch.equal(sa[k], sb[k])}


@pytest.mark.parametrize("scheme", INIT_SCHEMES)
@pytest.mark.parametrize("block,norm,expected", [
    (BasicBlock, True, {"bn2.weight"}),
    (BottleneckBlock, True, {"bn3.weight"}),
    (WideBlock, True, {"conv2.weight", "conv2.bias"}),      # pre-activation: no BN after the last conv
    (BasicBlock, False, {"conv2.weight", "conv2.bias"}),    # no BN: the last conv is the residual end
])
def test_zero_init_residual_changes_only_the_residual_ends(scheme, block, norm, expected):
    def build():
        return ResNet(block, (8, 16), (2, 1), norm=norm, num_classes=3)

    plain = _built(build, scheme, zero=False)
    zeroed = _built(build, scheme, zero=True)
    block_names = [n for n, m in zeroed.named_modules() if isinstance(m, block)]
    assert len(block_names) == 3
    ends = {f"{n}.{p}" for n in block_names for p in expected}
    # exactly the residual ends change (a bias the scheme already set to 0 cannot change)
    assert {k for k in ends if k.endswith("weight")} <= _changed(plain, zeroed) <= ends
    # and the zeroed tensors are zero: every residual branch outputs 0, each block is its shortcut
    for n in block_names:
        for p in expected:
            assert torch.count_nonzero(zeroed.get_parameter(f"{n}.{p}")) == 0


def test_zeroed_block_is_its_shortcut():
    torch.manual_seed(0)
    for blk in (BasicBlock(8, 16, stride=2), BottleneckBlock(8, 16, stride=2), WideBlock(8, 16, stride=2)):
        init_weights(blk, "kaiming", zero_init_residual=True)
        blk.eval()
        x = torch.randn(2, 8, 6, 6)
        with torch.no_grad():
            shortcut = x
            for m in blk.shortcut_branch():
                shortcut = m(shortcut)
            expected = shortcut if blk.pre_activation else torch.relu(shortcut)
            torch.testing.assert_close(blk(x), expected)


def test_errors():
    with pytest.raises(ValueError, match="unknown init scheme"):
        init_weights(nn.Linear(2, 2), "xavier")
    with pytest.raises(ValueError, match="no residual blocks"):
        init_weights(PlainCNN([4, 8]), "kaiming", zero_init_residual=True)
    with pytest.raises(TypeError):
        ResNet(init="kaiming")                      # constructors do not initialise: init_weights does
