"""Tests for utils/engine/gradients.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
from torch import nn

from utils.engine.gradients import MIN_NORM, first_last_ratio, gradient_flow_summary, total_grad_norm, weight_tensor_names


# ---------------------------------------------------------------------------------------------
# Gradient flow
# ---------------------------------------------------------------------------------------------


def test_gradient_flow_summary():
    norms = np.array([[4.0, 2.0, 1.0], [8.0, 4.0, 2.0], [1.0, 1.0, 4.0]])
    out = gradient_flow_summary(["l0.weight", "l1.weight", "l2.weight"], norms)
    assert out["layer_names"] == ["l0.weight", "l1.weight", "l2.weight"]
    np.testing.assert_allclose(out["median_norm"], [4.0, 2.0, 2.0])
    np.testing.assert_allclose(out["first_last_ratio"], [4.0, 4.0, 0.25])
    assert out["median_first_last_ratio"] == 4.0


def test_gradient_flow_summary_zero_nan_and_errors():
    norms = np.array([[1.0, 0.0], [3.0, 1.0], [np.nan, 1.0], [2.0, 1.0]])
    out = gradient_flow_summary(["a", "b"], norms)
    assert np.isnan(out["first_last_ratio"][0]) and np.isnan(out["first_last_ratio"][2])
    assert out["median_first_last_ratio"] == 2.5  # median of [3, 2]
    np.testing.assert_allclose(out["median_norm"], [2.0, 1.0])
    with pytest.raises(ValueError):
        gradient_flow_summary(["a"], norms)
    with pytest.raises(ValueError):
        gradient_flow_summary(["a", "b"], -norms[1:2])
    assert math.isnan(gradient_flow_summary(["a", "b"], np.array([[1.0, 0.0]]))["median_first_last_ratio"])


def test_weight_tensor_names():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2, 2))
    assert weight_tensor_names(model) == ["0.weight", "3.weight"]


def test_first_last_ratio_zero_and_tiny_last_norm_is_nan():
    ratio = first_last_ratio([[2.0, 4.0], [1.0, 0.0], [1.0, MIN_NORM], [1.0, np.nan], [3.0, 1e-20]])
    assert ratio[0] == 0.5 and ratio[4] == pytest.approx(3e20)
    assert np.isnan(ratio[1:4]).all()
    with pytest.raises(ValueError):
        first_last_ratio([1.0, 2.0])


def test_total_grad_norm():
    np.testing.assert_allclose(total_grad_norm([[3.0, 4.0], [0.0, 1.0]]), [5.0, 1.0])
    with pytest.raises(ValueError):
        total_grad_norm([1.0, 2.0])
