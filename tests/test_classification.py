"""Tests for utils/analysis/classification.py."""

from __future__ import annotations

import math

import pytest

from utils.analysis.classification import classification_summary


def test_classification_summary_by_hand():
    # class a: 3 of 4 right (one taken for b); b: 1 of 3 (two taken for c); c: 2 of 2; d: no samples
    labels = [0, 0, 0, 0, 1, 1, 1, 2, 2]
    preds = [0, 0, 0, 1, 1, 2, 2, 2, 2]
    out = classification_summary(labels, preds, ["a", "b", "c", "d"], top=5)
    assert out["error_rate"] == pytest.approx(3 / 9)
    assert out["per_class_acc"]["a"] == 0.75 and out["per_class_acc"]["b"] == pytest.approx(1 / 3)
    assert math.isnan(out["per_class_acc"]["d"])
    assert out["worst_class"] == "b"
    assert out["top_confusions"] == [
        {"true": "b", "pred": "c", "count": 2, "share_of_true": pytest.approx(2 / 3)},
        {"true": "a", "pred": "b", "count": 1, "share_of_true": 0.25}]
