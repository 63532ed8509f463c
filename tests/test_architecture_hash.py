"""A run's identity hashes the architecture's structure, never its text (utils/engine/architecture.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models.cnn_models import BasicBlock, PlainCNN, ResNet, SwappableCNN
from models.layers.activation import Swish
from models.layers.attention import CBAM
from models.layers.conv import CustomConv2d
from models.layers.pooling import GeMPool2d as GeM
from tests.data_files import class_pattern_images
from utils.engine.architecture import architecture_digest, describe_architecture
from utils.engine.data import ArrayDataset, DatasetSplits
from utils.engine.experiment import ExperimentConfig, ModelSpec
from utils.engine.runner import config_hash
from utils.engine.runtime import resolve_runtime


def _resnet(width: int = 8, kernel: int = 3) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, width, kernel, padding=kernel // 2), ResNet(BasicBlock, (width, 2 * width), (1, 1),
                                                                                in_channels=width))


def _custom() -> nn.Module:
    return SwappableCNN(8, conv=CustomConv2d, act=lambda: Swish(1.5), attention=lambda c: CBAM(c, 2),
                        head_pool=lambda: GeM(p=3.0))


BUILDERS = {"resnet": _resnet, "plain": lambda: PlainCNN((8, 16, 16)), "custom": _custom}


def _splits() -> DatasetSplits:
    def split(n, seed):
        images, labels = class_pattern_images(n, 4, (8, 8), seed)
        return ArrayDataset(torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels).long())
    return DatasetSplits("toy", split(60, 0), split(20, 1), ("a", "b", "c", "d"), "generated").with_validation(20)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_description_is_the_same_on_every_build(name):
    torch.manual_seed(0)
    a = architecture_digest(BUILDERS[name]())
    torch.manual_seed(1)
    assert architecture_digest(BUILDERS[name]()) == a


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_repr_and_docstring_edits_change_no_hash(name, monkeypatch):
    before = architecture_digest(BUILDERS[name]())
    for cls in (nn.Conv2d, nn.BatchNorm2d, nn.Linear, CustomConv2d, Swish, GeM, CBAM, BasicBlock, ResNet, PlainCNN):
        monkeypatch.setattr(cls, "extra_repr", lambda self: "edited", raising=False)
        monkeypatch.setattr(cls, "__repr__", lambda self: "Edited()", raising=False)
        monkeypatch.setattr(cls, "__doc__", "edited", raising=False)
    model = BUILDERS[name]()
    assert "Edited()" in repr(model)          # the text did change
    assert architecture_digest(model) == before


def test_structural_changes_change_the_hash():
    base = architecture_digest(_resnet())
    assert architecture_digest(_resnet(width=12)) != base                       # a width
    assert architecture_digest(_resnet(kernel=5)) != base                       # a kernel
    assert architecture_digest(nn.Conv2d(3, 4, 3, stride=2)) != architecture_digest(nn.Conv2d(3, 4, 3))
    assert architecture_digest(nn.Conv2d(3, 4, 3, bias=False)) != architecture_digest(nn.Conv2d(3, 4, 3))
    assert architecture_digest(nn.Conv2d(4, 4, 3, groups=2)) != architecture_digest(nn.Conv2d(4, 4, 3))
    assert architecture_digest(nn.Conv2d(3, 4, 3, dilation=2)) != architecture_digest(nn.Conv2d(3, 4, 3))
    assert architecture_digest(nn.BatchNorm2d(4, eps=1e-3)) != architecture_digest(nn.BatchNorm2d(4))
    assert architecture_digest(nn.Dropout(0.2)) != architecture_digest(nn.Dropout(0.1))
    assert architecture_digest(nn.MaxPool2d(2)) != architecture_digest(nn.MaxPool2d(3))
    assert architecture_digest(nn.MaxPool2d(2)) != architecture_digest(nn.AvgPool2d(2))   # the class
    # custom layers: constructor arguments, including those kept only as scalar tensors
    assert architecture_digest(Swish(1.0)) != architecture_digest(Swish(2.0))
    assert architecture_digest(Swish(1.0, learnable=False)) != architecture_digest(Swish(1.0))
    assert architecture_digest(GeM(p=3.0)) != architecture_digest(GeM(p=2.0))
    assert architecture_digest(CBAM(8, 2)) != architecture_digest(CBAM(8, 4))
    assert architecture_digest(CustomConv2d(3, 4, 3)) != architecture_digest(CustomConv2d(3, 4, 3, padding=1))
    # the module tree: the same layers under other names
    assert (architecture_digest(nn.Sequential(nn.Linear(2, 2)))
            != architecture_digest(nn.Sequential(__import__("collections").OrderedDict(fc=nn.Linear(2, 2)))))


def test_config_hash_ignores_repr_but_follows_structure(monkeypatch):
    runtime = resolve_runtime("cpu", "fp32")
    data = _splits()
    cfg = ExperimentConfig(epochs=1)
    spec = ModelSpec("m", lambda c: PlainCNN((4, 8), in_channels=1, num_classes=4, dropout=c.dropout))
    h = config_hash(spec, cfg, data, runtime)
    monkeypatch.setattr(nn.Conv2d, "extra_repr", lambda self: "edited")
    assert config_hash(spec, cfg, data, runtime) == h
    wider = ModelSpec("m", lambda c: PlainCNN((4, 12), in_channels=1, num_classes=4, dropout=c.dropout))
    assert config_hash(wider, cfg, data, runtime) != h
    assert config_hash(spec, cfg.replace(dropout=0.3), data, runtime) != h     # dropout p is structure too


def test_description_lists_every_module_with_its_name():
    model = PlainCNN((4, 8))
    names = [d["name"] for d in describe_architecture(model)]
    assert names == [n for n, _ in model.named_modules()]
