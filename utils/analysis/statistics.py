"""Statistics over seeds and curves.

* :func:`seed_summary`: mean, sample std and the 95 % t confidence interval of per-seed values;
* :func:`difference`: the difference of two models' means with its 95 % interval (Welch, or
  paired by seed); a difference may be called real only when the interval excludes zero;
* :func:`convergence_verdict`: whether a (validation) curve had plateaued at the end of a run;
* :func:`seed_statistics`, :func:`curve_band`, :func:`relative_spread`: plain descriptive helpers.

Inputs are plain numbers (one per seed / run); NaN marks a run without a value (e.g. diverged) and
is left out (and counted) everywhere.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from scipy import stats

__all__ = ["SeedSummary", "seed_summary", "Difference", "difference", "ConvergenceVerdict", "convergence_verdict",
           "seed_statistics", "curve_band", "relative_spread"]

CONFIDENCE = 0.95


def _finite(values: Sequence[float]) -> tuple[np.ndarray, int]:
    arr = np.asarray(values, dtype=np.float64).ravel()
    ok = arr[np.isfinite(arr)]
    return ok, int(arr.size - ok.size)


def _t_quantile(df: float) -> float:
    """Two-sided 95 % quantile of Student's t with ``df`` degrees of freedom."""
    return float(stats.t.ppf(0.5 + CONFIDENCE / 2, df))


@dataclass(frozen=True)
class SeedSummary:
    """Mean of per-seed values with its 95 % confidence interval (Student t, ``n - 1`` df).

    ``std`` is the sample standard deviation (ddof=1); ``half_width = t_{0.975, n-1} * std / sqrt(n)``
    and ``ci95 = mean -+ half_width``. With one value the std and the interval are NaN (nothing
    to estimate the spread from); with none, everything but the counts is NaN.
    """

    n: int
    n_missing: int
    mean: float
    std: float
    ci95_low: float
    ci95_high: float
    half_width: float

    def as_dict(self) -> dict:
        return asdict(self)


def seed_summary(values: Sequence[float]) -> SeedSummary:
    """:class:`SeedSummary` of per-seed values (non-finite values dropped and counted as missing)."""
    ok, missing = _finite(values)
    n = int(ok.size)
    if n == 0:
        return SeedSummary(0, missing, math.nan, math.nan, math.nan, math.nan, math.nan)
    mean = float(ok.mean())
    if n == 1:
        return SeedSummary(1, missing, mean, math.nan, math.nan, math.nan, math.nan)
    std = float(ok.std(ddof=1))
    half = _t_quantile(n - 1) * std / math.sqrt(n)
    return SeedSummary(n, missing, mean, std, mean - half, mean + half, half)


@dataclass(frozen=True)
class Difference:
    """``mean(a) - mean(b)`` with its 95 % confidence interval.

    ``excludes_zero`` is True only when the whole interval lies on one side of 0 (a NaN interval,
    e.g. from fewer than two values per side, never excludes zero). ``df`` is the t distribution's
    degrees of freedom (Welch-Satterthwaite for unpaired samples, ``n - 1`` for paired ones).
    """

    mean_difference: float
    ci95_low: float
    ci95_high: float
    half_width: float
    excludes_zero: bool
    paired: bool
    n_a: int
    n_b: int
    df: float

    def as_dict(self) -> dict:
        return asdict(self)


def _interval(diff: float, se: float, df: float) -> tuple[float, float, float]:
    if se == 0.0:   # no spread at all (e.g. deterministic values): the difference is exact
        return diff, diff, 0.0
    half = _t_quantile(df) * se
    return diff - half, diff + half, half


def difference(a: Sequence[float], b: Sequence[float], paired: bool = False) -> Difference:
    """Difference of the means of ``a`` and ``b`` (``a - b``) with a 95 % t interval.

    Unpaired (default): Welch's interval, which does not assume equal variances:
    ``se = sqrt(s_a^2 / n_a + s_b^2 / n_b)``, ``df = se^4 / ((s_a^2/n_a)^2/(n_a-1) + (s_b^2/n_b)^2/(n_b-1))``.
    Paired (``a[i]`` and ``b[i]`` share seed ``i``, so seed effects cancel): the t interval of the
    per-seed differences ``d = a - b``: ``se = std(d) / sqrt(n)``, ``df = n - 1``. Non-finite values
    are dropped (for paired samples, the whole pair).

    Raises:
        ValueError: paired samples of different lengths.
    """
    if paired:
        arr_a, arr_b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
        if arr_a.shape != arr_b.shape:
            raise ValueError(f"paired samples need equal lengths, got {arr_a.size} and {arr_b.size}")
        keep = np.isfinite(arr_a) & np.isfinite(arr_b)
        d = arr_a[keep] - arr_b[keep]
        n = int(d.size)
        diff = float(d.mean()) if n else math.nan
        if n < 2:
            low = high = half = df = math.nan
        else:
            df = float(n - 1)
            low, high, half = _interval(diff, float(d.std(ddof=1)) / math.sqrt(n), df)
        n_a = n_b = n
    else:
        xa, _ = _finite(a)
        xb, _ = _finite(b)
        n_a, n_b = int(xa.size), int(xb.size)
        diff = float(xa.mean() - xb.mean()) if n_a and n_b else math.nan
        if n_a < 2 or n_b < 2:
            low = high = half = df = math.nan
        else:
            va, vb = float(xa.var(ddof=1)) / n_a, float(xb.var(ddof=1)) / n_b
            se = math.sqrt(va + vb)
            df = (va + vb) ** 2 / (va ** 2 / (n_a - 1) + vb ** 2 / (n_b - 1)) if se > 0 else math.inf
            low, high, half = _interval(diff, se, df)
    excludes = bool(low > 0 or high < 0)   # False for NaN
    return Difference(diff, low, high, half, excludes, paired, n_a, n_b, df)


@dataclass(frozen=True)
class ConvergenceVerdict:
    """Whether a curve had plateaued by its end (see :func:`convergence_verdict` for the rule).

    ``status``: ``"converged"`` (improved by at most ``tol`` over the final window, and got worse
    by at most ``tol``), ``"declining"`` (got worse by more than ``tol``: a plateau
    too, e.g. a validation loss rising from over-fitting), ``"still_improving"``, ``"too_short"``
    (fewer than ``min_points`` points in the final window) or ``"not_finite"`` (NaN/inf values:
    a diverged run). ``plateaued`` is True for converged/declining, False for still_improving and
    None when no verdict is possible. ``improvement`` is the fitted change over the window in the
    better direction (positive = better), NaN without a verdict.
    """

    status: str
    plateaued: bool | None
    improvement: float
    tol: float
    window: float
    window_start: float
    window_points: int
    higher_is_better: bool

    def as_dict(self) -> dict:
        return asdict(self)


def convergence_verdict(steps: Sequence[float], values: Sequence[float], window: float = 0.2, tol: float = 0.005,
                        higher_is_better: bool = True, min_points: int = 3) -> ConvergenceVerdict:
    """Had the curve ``values`` (at ``steps``: epochs or optimiser steps) plateaued by its end?

    The rule, precisely:

    1. The final window is the points with ``step >= s_last - window * (s_last - s_first)``:
       the last ``window`` (default 20 %) of the run, measured in steps, not in points.
    2. A least-squares line is fitted to the window's points; ``improvement = slope * (s_last -
       window_start)`` is the change over the window that the line predicts, signed so that
       positive is better (``higher_is_better``: accuracy; False: loss). The fit, rather than
       last-minus-first, keeps one noisy evaluation from deciding the verdict.
    3. ``improvement > tol`` -> "still_improving"; ``improvement < -tol`` -> "declining";
       otherwise "converged". ``tol`` is in the curve's own units (default 0.005: half a
       percentage point of accuracy, or 0.005 of a loss).
    4. Fewer than ``min_points`` (default 3) points in the window -> "too_short": a line through
       two points is the noise of two evaluations; evaluate more often to get a verdict.
       Any non-finite value -> "not_finite".

    Noise: with ``n`` evenly spaced window points of independent noise ``sigma`` the fitted
    improvement scatters by about ``sigma * sqrt(12 / n)``; keep that well below ``tol`` (evaluate
    on enough images, often enough) for the verdict to mean something.

    Raises:
        ValueError: lengths differ, steps not strictly increasing, window not in (0, 1], tol < 0,
            or min_points < 2.
    """
    x = np.asarray(steps, dtype=np.float64).ravel()
    y = np.asarray(values, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"steps and values differ in length ({x.size} vs {y.size})")
    if not 0.0 < window <= 1.0:
        raise ValueError(f"window must be in (0, 1], got {window}")
    if not tol >= 0.0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    if min_points < 2:
        raise ValueError(f"min_points must be >= 2, got {min_points}")
    if x.size > 1 and not np.all(np.diff(x) > 0):
        raise ValueError("steps must be strictly increasing")

    def verdict(status: str, plateaued: bool | None, improvement: float, start: float, points: int):
        return ConvergenceVerdict(status, plateaued, improvement, tol, window, start, points, higher_is_better)

    if x.size == 0:
        return verdict("too_short", None, math.nan, math.nan, 0)
    start = float(x[-1] - window * (x[-1] - x[0]))
    in_window = x >= start
    points = int(in_window.sum())
    if not np.all(np.isfinite(y)) or not np.all(np.isfinite(x)):
        return verdict("not_finite", None, math.nan, start, points)
    if points < min_points:
        return verdict("too_short", None, math.nan, start, points)
    slope = float(np.polyfit(x[in_window], y[in_window], 1)[0])
    improvement = slope * float(x[-1] - start) * (1.0 if higher_is_better else -1.0)
    if improvement > tol:
        return verdict("still_improving", False, improvement, start, points)
    if improvement < -tol:
        return verdict("declining", True, improvement, start, points)
    return verdict("converged", True, improvement, start, points)


def seed_statistics(values: Sequence[float]) -> dict:
    """Mean, sample std (ddof=1; 0 for a single value), min, max and n of per-seed values.

    NaN entries (e.g. a diverged run without a final accuracy) are dropped and counted in
    ``n_missing``.
    """
    arr = np.asarray(values, dtype=np.float64)
    ok = arr[np.isfinite(arr)]
    if ok.size == 0:
        return {"mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan, "n": 0,
                "n_missing": int(arr.size), "values": arr.tolist()}
    return {"mean": float(ok.mean()), "std": float(ok.std(ddof=1)) if ok.size > 1 else 0.0,
            "min": float(ok.min()), "max": float(ok.max()), "n": int(ok.size),
            "n_missing": int(arr.size - ok.size), "values": arr.tolist()}


def curve_band(curves: Sequence[Sequence[float]]) -> dict:
    """Mean and min-max band, point by point, of several curves (e.g. one per seed).

    Curves may have different lengths (a diverged run stops early): each point aggregates the
    curves that reach it, and ``n`` says how many did.

    Returns:
        dict of equal-length lists ``mean``, ``min``, ``max``, ``n`` (length of the longest curve).
    """
    if not curves:
        raise ValueError("curves is empty")
    length = max(len(c) for c in curves)
    arr = np.full((len(curves), length), np.nan)
    for i, c in enumerate(curves):
        arr[i, :len(c)] = np.asarray(c, dtype=np.float64)
    n = np.isfinite(arr).sum(axis=0)
    # Every column has >= 1 finite value when the inputs are finite; NaN inputs give NaN points.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "All-NaN slice": NaN there, on purpose
        mean, lo, hi = np.nanmean(arr, axis=0), np.nanmin(arr, axis=0), np.nanmax(arr, axis=0)
    return {"mean": mean.tolist(), "min": lo.tolist(), "max": hi.tolist(), "n": n.astype(int).tolist()}


def relative_spread(values: Sequence[float]) -> float:
    """``(max - min) / |mean|`` of the finite values: a scale-free spread (0 = identical).

    E.g. the spread of a group of parameter counts around its own mean, or of final losses over
    seeds. NaN when no finite value is left or the mean is 0.
    """
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0 or arr.mean() == 0:
        return math.nan
    return float((arr.max() - arr.min()) / abs(arr.mean()))
