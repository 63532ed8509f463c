"""Tests for utils/analysis/statistics.py: per-seed summaries, curve bands, relative spread."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from utils.analysis.statistics import (BOOTSTRAP, BOOTSTRAP_MEAN, T_PAIRED, T_WELCH, convergence_verdict, curve_band, difference, grad_rms,
                                      bootstrap_mean, paired_bootstrap, seed_summary)

# Two-sided 95 % quantiles of Student's t, from printed tables (not from scipy).
T975 = {3: 3.182446305284263, 4: 2.7764451051977987}



def test_curve_band_uneven_lengths():
    band = curve_band([[3.0, 2.0, 1.0], [5.0, 4.0], [4.0, 3.0, 2.0]])
    assert band["mean"] == pytest.approx([4.0, 3.0, 1.5])
    assert band["min"] == [3.0, 2.0, 1.0]
    assert band["max"] == [5.0, 4.0, 2.0]
    assert band["n"] == [3, 3, 2]
    with pytest.raises(ValueError):
        curve_band([])



def test_seed_summary_by_hand():
    # mean 0.675; deviations -0.175, -0.075, 0.025, 0.225 -> sum of squares 0.0875, std = sqrt(0.0875 / 3)
    st = seed_summary([0.5, 0.6, 0.7, 0.9, float("nan")])
    std = math.sqrt(0.0875 / 3)
    half = T975[3] * std / 2
    assert (st.n, st.n_missing) == (4, 1)
    assert st.mean == pytest.approx(0.675) and st.std == pytest.approx(std)
    assert st.half_width == pytest.approx(half)
    assert (st.ci95_low, st.ci95_high) == (pytest.approx(0.675 - half), pytest.approx(0.675 + half))
    assert st.as_dict()["n"] == 4


def test_seed_summary_too_few_values():
    one = seed_summary([0.4])
    assert one.n == 1 and one.mean == 0.4 and math.isnan(one.std) and math.isnan(one.ci95_low)
    none = seed_summary([float("nan")])
    assert (none.n, none.n_missing) == (0, 1) and math.isnan(none.mean)


def test_difference_welch_by_hand():
    # equal variances (1) and sizes (3): se = sqrt(1/3 + 1/3), Welch df = (2/3)^2 / (2 * (1/3)^2 / 2) = 4
    d = difference([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    half = T975[4] * math.sqrt(2 / 3)
    assert d.mean_difference == pytest.approx(-3.0) and d.df == pytest.approx(4.0)
    assert (d.ci95_low, d.ci95_high) == (pytest.approx(-3.0 - half), pytest.approx(-3.0 + half))
    assert d.excludes_zero and not d.paired and (d.n_a, d.n_b) == (3, 3)


def test_difference_welch_matches_scipy_for_unequal_samples():
    a, b = [1.0, 2.0, 3.5], [4.0, 5.0, 6.0, 8.0]
    d = difference(a, b)
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert (d.ci95_low, d.ci95_high) == (pytest.approx(ci.low), pytest.approx(ci.high))


def test_difference_paired_by_hand():
    # per-seed differences 0.5, 0.2, 0.6, 0.1: mean 0.35, sum of squared deviations 0.17
    a, b = [1.0, 2.0, 3.0, 4.0], [0.5, 1.8, 2.4, 3.9]
    d = difference(a, b, paired=True)
    half = T975[3] * math.sqrt(0.17 / 3) / 2
    assert d.mean_difference == pytest.approx(0.35) and d.df == 3
    assert (d.ci95_low, d.ci95_high) == (pytest.approx(0.35 - half), pytest.approx(0.35 + half))
    assert d.ci95_low < 0 < d.ci95_high and not d.excludes_zero
    # a pair with a missing value is dropped as a whole
    assert difference(a + [float("nan")], b + [1.0], paired=True).n_a == 4
    with pytest.raises(ValueError, match="equal lengths"):
        difference([1.0, 2.0], [1.0], paired=True)


def test_difference_pairing_removes_the_seed_effect():
    seed_effect = np.array([0.0, 0.05, -0.04, 0.02, 0.08])
    a, b = 0.70 + seed_effect + 0.01, 0.70 + seed_effect + np.array([0.0, 0.002, -0.001, 0.001, -0.002])
    assert difference(a, b, paired=True).excludes_zero
    assert not difference(a, b).excludes_zero


def test_difference_degenerate_cases():
    single = difference([0.5], [0.4, 0.45])
    assert single.mean_difference == pytest.approx(0.075) and math.isnan(single.ci95_low)
    assert not single.excludes_zero
    exact = difference([2.0, 2.0], [1.0, 1.0])          # no spread at all: the difference is exact
    assert (exact.ci95_low, exact.ci95_high, exact.excludes_zero) == (1.0, 1.0, True)


# ----------------------------------------------------------------------- convergence verdict
STEPS = np.arange(0, 101, 1.0)


def test_verdict_rising_curve_is_still_improving():
    v = convergence_verdict(STEPS, 0.001 * STEPS)              # +0.1 pp per step, +2 pp over the window
    assert (v.status, v.plateaued) == ("still_improving", False)
    assert v.improvement == pytest.approx(0.02) and v.window_start == 80 and v.window_points == 21


def test_verdict_flat_and_noisy_flat_curves_converged():
    rising_then_flat = np.minimum(STEPS / 50, 1.0) * 0.8
    assert convergence_verdict(STEPS, rising_then_flat).status == "converged"
    noise = np.random.default_rng(0).normal(0, 0.002, STEPS.size)   # fitted-improvement noise ~0.0015
    v = convergence_verdict(STEPS, 0.8 + noise)
    assert (v.status, v.plateaued) == ("converged", True) and abs(v.improvement) < 0.005


def test_verdict_loss_direction():
    loss = 2.0 * np.exp(-STEPS / 100)
    assert convergence_verdict(STEPS, loss, higher_is_better=False).status == "still_improving"
    assert convergence_verdict(STEPS, loss, higher_is_better=True).status == "declining"
    overfit = 1.0 + 0.001 * np.maximum(STEPS - 60, 0)            # validation loss rising at the end
    v = convergence_verdict(STEPS, overfit, higher_is_better=False)
    assert (v.status, v.plateaued) == ("declining", True) and v.improvement == pytest.approx(-0.02)


def test_verdict_short_and_non_finite_curves():
    epochs = [1, 2, 3, 4]                                         # the window [3.4, 4] holds one point
    v = convergence_verdict(epochs, [0.3, 0.5, 0.6, 0.62])
    assert (v.status, v.plateaued, v.window_points) == ("too_short", None, 1) and math.isnan(v.improvement)
    assert convergence_verdict([], []).status == "too_short"
    assert convergence_verdict(STEPS, np.where(STEPS > 90, np.nan, 0.5)).status == "not_finite"
    # v3: a 3-point window gets no verdict (v2 called this "still_improving" from 3 evaluations)
    wider = convergence_verdict(epochs, [0.3, 0.5, 0.6, 0.62], window=0.7)    # window [1.9, 4]: 3 points
    assert (wider.status, wider.plateaued, wider.window_points) == ("too_short", None, 3)


def test_verdict_noisy_plateau_is_not_still_improving():
    """41 evaluations of a flat curve with 1 pp noise: the fitted gain over the 9-point window is
    +2.2 pp by chance, beyond tol (v2 said "still_improving") but within 2 SE of 0 (v3: plateau)."""
    x = np.arange(41.0)
    y = 0.8 + np.random.default_rng(26).normal(0, 0.01, x.size)
    v = convergence_verdict(x, y)
    assert v.window_points == 9 and v.improvement > 0.005               # the old rule's trigger
    assert v.improvement < 2 * v.improvement_se
    assert (v.status, v.plateaued) == ("flat", True)


def test_verdict_long_noisy_plateau_and_continued_run_converged():
    long = np.arange(200.0)                                           # a long run: 40 points in the window
    y = 0.9 - 0.3 * np.exp(-long / 10) + np.random.default_rng(1).normal(0, 0.004, long.size)
    v = convergence_verdict(long, y)
    assert (v.status, v.plateaued, v.window_points) == ("converged", True, 40)
    # the same curve stopped early (rising through the window) is still improving
    assert convergence_verdict(long[:30], y[:30] * 0 + 0.3 + 0.01 * long[:30], min_points=6).status == "still_improving"


def test_verdict_flags_an_anneal_in_the_window():
    x = np.arange(50.0)
    lr = np.where(x < 30, 0.1, 0.1 * (50 - x) / 20 + 1e-4)            # linear decay over the last 40 %
    v = convergence_verdict(x, 0.8 + 0 * x, lr=lr)
    assert v.anneal_in_window is True and v.status == "converged"
    assert convergence_verdict(x, 0.8 + 0 * x, lr=np.full(50, 0.1)).anneal_in_window is False
    assert convergence_verdict(x, 0.8 + 0 * x).anneal_in_window is None


# ------------------------------------------------------------------------------ bootstrap
def _correct(acc_per_seed, images=400, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([(rng.random(images) < a).astype(float) for a in acc_per_seed])


def test_paired_bootstrap_is_wider_than_the_seed_only_interval():
    """Identical per-seed accuracies: the seed t interval is exact (zero width) and calls a 1.5 pp
    difference real; on 400 test images that is within test-set noise, which the bootstrap keeps."""
    rng = np.random.default_rng(3)
    b = (rng.random((3, 400)) < 0.8).astype(float)
    a = b.copy()
    flip = rng.choice(400, 30, replace=False)                        # a wins 18, loses 12 images on every seed
    a[:, flip[:18]], a[:, flip[18:]] = 1.0, 0.0
    b[:, flip[:18]], b[:, flip[18:]] = 0.0, 1.0
    t = difference(a.mean(axis=1), b.mean(axis=1), paired=True)
    boot = paired_bootstrap(a, b)
    assert t.excludes_zero and t.interval_method == T_PAIRED                      # the old defect
    assert boot.mean_difference == pytest.approx(t.mean_difference)
    assert not boot.excludes_zero and boot.ci95_low < 0 < boot.ci95_high
    assert (boot.interval_method, boot.n, boot.df, boot.n_test_images) == (BOOTSTRAP, 3, 2.0, 400)


def test_paired_bootstrap_reproducible_and_detects_a_large_gain():
    a, b = _correct([0.9, 0.91, 0.9], 2000, 1), _correct([0.7, 0.71, 0.69], 2000, 2)
    one, two = paired_bootstrap(a, b), paired_bootstrap(a, b)
    assert one == two and one.excludes_zero and one.ci95_low > 0.15
    assert math.isnan(paired_bootstrap(a[:1], b[:1]).ci95_low)
    with pytest.raises(ValueError):
        paired_bootstrap(a, b[:, :10])


def test_welch_names_its_method():
    assert difference([1.0, 2.0], [1.0, 3.0]).interval_method == T_WELCH


def test_grad_rms_divides_by_sqrt_numel():
    rms = grad_rms([[3.0, 4.0], [6.0, 8.0]], [9, 16])
    assert rms.tolist() == [[1.0, 1.0], [2.0, 2.0]]
    with pytest.raises(ValueError):
        grad_rms([[1.0, 2.0]], [1])


def test_verdict_errors():
    with pytest.raises(ValueError, match="length"):
        convergence_verdict([1, 2], [1.0])
    with pytest.raises(ValueError, match="increasing"):
        convergence_verdict([1, 1, 2], [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="window"):
        convergence_verdict([1, 2], [1.0, 1.0], window=0)


def test_bootstrap_mean_carries_test_set_noise_that_a_seed_t_interval_misses():
    rng = np.random.default_rng(0)
    # three seeds that agree almost exactly (seed noise ~0), 2,000 test images at 65 %
    base = rng.random(2000) < 0.65
    correct = np.stack([base ^ (rng.random(2000) < 0.01) for _ in range(3)]).astype(float)
    t = seed_summary(correct.mean(axis=1))
    b = bootstrap_mean(correct, resamples=2000)
    binomial_se = math.sqrt(0.65 * 0.35 / 2000)                        # ~1.07 pp
    assert b.interval_method == BOOTSTRAP_MEAN and b.n == 3 and b.as_dict()["df"] == 2.0
    assert b.ci95_low <= b.mean <= b.ci95_high
    assert b.half_width > 1.5 * binomial_se > t.half_width             # the bootstrap sees the test set's noise
    assert math.isnan(bootstrap_mean(correct[:1]).half_width)          # one seed: no interval
    with pytest.raises(ValueError):
        bootstrap_mean(np.zeros(5))
