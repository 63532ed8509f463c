"""Tests for utils/engine/eval_mode.py and utils/analysis/feature_maps.py (both run a model in eval mode)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from utils.analysis.feature_maps import collect_activations
from utils.engine.eval_mode import eval_mode


def test_eval_mode_restores_each_modules_own_flag():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Dropout(0.5))
    model.train()
    model[1].eval()                        # deliberately mixed: a frozen BN inside a training model
    with eval_mode(model) as m:
        assert m is model and not any(x.training for x in model.modules())
    assert [x.training for x in model.modules()] == [True, True, False, True]


def test_eval_mode_restores_on_error():
    model = nn.Sequential(nn.Linear(2, 2))
    model.train()
    with pytest.raises(RuntimeError, match="boom"):
        with eval_mode(model):
            raise RuntimeError("boom")
    assert all(x.training for x in model.modules())


def test_collect_activations_is_unaffected_by_inplace_relu():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(inplace=True), nn.Conv2d(2, 1, 1))
    model.train()
    acts = collect_activations(model, torch.randn(3, 1, 8, 8), {"conv": model[0], "relu": model[2]})
    assert acts["conv"].shape == (3, 2, 8, 8) and (acts["conv"] < 0).any()   # pre-ReLU values kept
    assert (acts["relu"] >= 0).all()
    assert model.training                                                   # mode restored


def test_collect_activations_unused_layer():
    model = nn.Sequential(nn.Conv2d(1, 1, 1))
    with pytest.raises(ValueError, match="never called"):
        collect_activations(model, torch.randn(1, 1, 2, 2), {"other": nn.ReLU()})
