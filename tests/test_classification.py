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


def test_calibration_by_hand():
    from utils.analysis.classification import calibration

    # 4 bins of width 0.25. Bin (0.25, 0.5]: confidences 0.3, 0.5, one right -> acc 0.5, conf 0.4;
    # bin (0.75, 1]: 0.8, 0.9, 1.0, all right -> acc 1.0, conf 0.9; bin [0, 0.25]: 0.0, wrong.
    conf = [0.3, 0.5, 0.8, 0.9, 1.0, 0.0]
    correct = [True, False, True, True, True, False]
    out = calibration(conf, correct, n_bins=4)
    assert out["bin_count"] == [1, 2, 0, 3]
    assert out["bin_accuracy"] == [0.0, 0.5, None, 1.0]
    assert out["bin_confidence"][1] == pytest.approx(0.4) and out["bin_confidence"][3] == pytest.approx(0.9)
    # ECE = 1/6 |0 - 0| + 2/6 |0.5 - 0.4| + 3/6 |1.0 - 0.9| = 0.0333 + 0.05
    assert out["ece"] == pytest.approx(2 / 6 * 0.1 + 3 / 6 * 0.1)
    assert out["overconfidence"] == pytest.approx(3.5 / 6 - 4 / 6)


def test_calibration_of_a_calibrated_predictor_is_near_zero_and_bad_input_is_refused():
    import numpy as np

    from utils.analysis.classification import calibration

    rng = np.random.default_rng(0)
    conf = rng.uniform(0.1, 1.0, 200_000)
    assert calibration(conf, rng.random(conf.size) < conf)["ece"] < 0.01
    assert calibration(conf, np.ones(conf.size, bool))["ece"] > 0.3          # always right: under-confident
    with pytest.raises(ValueError):
        calibration([1.2], [True])
    with pytest.raises(ValueError):
        calibration([0.5, 0.6], [True])
