"""Tests for utils/statistics.py: per-seed summaries, curve bands, relative spread."""

from __future__ import annotations

import math

import pytest

from utils.statistics import curve_band, relative_spread, seed_statistics


def test_seed_statistics():
    st = seed_statistics([0.5, 0.6, 0.7])
    assert st["mean"] == pytest.approx(0.6)
    assert st["std"] == pytest.approx(0.1)          # sample std (ddof=1)
    assert (st["min"], st["max"], st["n"], st["n_missing"]) == (0.5, 0.7, 3, 0)
    st = seed_statistics([0.5, float("nan")])     # a diverged seed is counted as missing
    assert (st["mean"], st["std"], st["n"], st["n_missing"]) == (0.5, 0.0, 1, 1)
    assert math.isnan(seed_statistics([float("nan")])["mean"])


def test_curve_band_uneven_lengths():
    band = curve_band([[3.0, 2.0, 1.0], [5.0, 4.0], [4.0, 3.0, 2.0]])
    assert band["mean"] == pytest.approx([4.0, 3.0, 1.5])
    assert band["min"] == [3.0, 2.0, 1.0]
    assert band["max"] == [5.0, 4.0, 2.0]
    assert band["n"] == [3, 3, 2]
    with pytest.raises(ValueError):
        curve_band([])


def test_relative_spread():
    assert relative_spread([1.0, 2.0, 3.0]) == pytest.approx(1.0)
    assert relative_spread([2.0, 2.0]) == 0.0
    assert relative_spread([-1.0, -3.0]) == pytest.approx(1.0)        # |mean|: scale-free for negatives too
    assert relative_spread([1.0, float("nan"), 3.0]) == pytest.approx(1.0)
    assert math.isnan(relative_spread([float("nan")]))
    assert math.isnan(relative_spread([1.0, -1.0]))                   # mean 0: undefined
