"""Statistics over seeds and curves.

* :func:`seed_summary`: mean, sample std and the 95 % t confidence interval of per-seed values;
* :func:`difference`: the difference of two models' means with its 95 % interval (Welch, or
  paired by seed); a difference may be called real only when the interval excludes zero;
* :func:`paired_bootstrap`: the paired difference of two models' test accuracy with an interval
  that carries seed noise *and* test-set sampling noise (seeds and test images resampled jointly);
* :func:`convergence_verdict`: whether a curve had plateaued at the end of a run, judged against
  the noise of its own fit (protocol v3);
* :func:`grad_rms`: per-parameter gradient scale ``||g|| / sqrt(numel)``;
* :func:`curve_band`: a plain descriptive helper.

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

__all__ = ["SeedSummary", "seed_summary", "Difference", "difference", "paired_bootstrap", "ConvergenceVerdict",
           "convergence_verdict", "curve_band", "grad_rms", "bootstrap_mean", "T_PAIRED", "T_WELCH", "T_OVER_SEEDS",
           "BOOTSTRAP", "BOOTSTRAP_MEAN"]

# The names of the interval methods, as written into every analysis.json (``interval_method``).
T_PAIRED = "paired_t_over_seeds"
T_WELCH = "welch_t_over_seeds"
T_OVER_SEEDS = "t_over_seeds"      # a mean's interval (SeedSummary)
BOOTSTRAP_MEAN = "bootstrap_seeds_and_test_images"
BOOTSTRAP = "paired_bootstrap_seeds_and_test_images"
BOOTSTRAP_RESAMPLES = 4000
BOOTSTRAP_RNG_SEED = 0

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
    interval_method: str = T_OVER_SEEDS

    @property
    def df(self) -> float:
        """Degrees of freedom of the seed dimension (``n - 1``; NaN below two values)."""
        return float(self.n - 1) if self.n >= 2 else math.nan

    def as_dict(self) -> dict:
        return {**asdict(self), "df": self.df}


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
    interval_method: str = T_PAIRED
    n_pairs_dropped: int = 0          # pairs left out because a side diverged or was missing
    n_test_images: int | None = None  # images resampled (bootstrap only)
    resamples: int | None = None      # bootstrap resamples (bootstrap only)

    @property
    def n(self) -> int:
        """Seeds (pairs) behind the interval (``n_a`` for a paired difference)."""
        return self.n_a if self.paired else min(self.n_a, self.n_b)

    def as_dict(self) -> dict:
        return {**asdict(self), "n": self.n}


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
    return Difference(diff, low, high, half, excludes, paired, n_a, n_b, df, T_PAIRED if paired else T_WELCH)


def _bootstrap_interval(cells: np.ndarray, resamples: int, rng_seed: int) -> tuple[float, float]:
    """95 % percentile interval of the mean of ``cells`` (seeds x test images), resampling seeds and
    images jointly: one resample draws ``n`` seeds and ``m`` images with replacement and averages
    the drawn cells."""
    n, m = cells.shape
    rng = np.random.default_rng(rng_seed)
    means = np.empty(resamples)
    chunk = max(1, min(resamples, 2_000_000 // max(m, 1)))
    for start in range(0, resamples, chunk):
        k = min(chunk, resamples - start)
        img_counts = rng.multinomial(m, np.full(m, 1.0 / m), size=k)          # (k, m)
        seed_counts = rng.multinomial(n, np.full(n, 1.0 / n), size=k)         # (k, n)
        per_seed = img_counts @ cells.T / m                                   # (k, n): image-resampled means
        means[start:start + k] = (per_seed * seed_counts).sum(axis=1) / n
    low, high = np.percentile(means, [50 * (1 - CONFIDENCE), 50 * (1 + CONFIDENCE)])
    return float(low), float(high)


def bootstrap_mean(correct: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES,
                   rng_seed: int = BOOTSTRAP_RNG_SEED) -> SeedSummary:
    """Mean test accuracy of one model over seeds, with a 95 % bootstrap interval over seeds *and*
    test images (``correct[i, j]`` = 1 when seed ``i``'s run got image ``j`` right): the interval
    of a mean that a reader compares with another test set's number carries the test set's own
    sampling noise, which a seed-only t interval leaves out (one 5,000-image test set at 65 %
    alone has a binomial standard error of about 0.7 pp). ``std`` is over the per-seed accuracies.
    With fewer than two seeds: no interval."""
    c = np.asarray(correct, dtype=np.float64)
    if c.ndim != 2 or c.shape[1] == 0:
        raise ValueError(f"need a (seeds, images) array, got shape {c.shape}")
    n = c.shape[0]
    if n == 0:
        return SeedSummary(0, 0, math.nan, math.nan, math.nan, math.nan, math.nan, BOOTSTRAP_MEAN)
    per_seed = c.mean(axis=1)
    mean = float(per_seed.mean())
    if n < 2:
        return SeedSummary(n, 0, mean, math.nan, math.nan, math.nan, math.nan, BOOTSTRAP_MEAN)
    low, high = _bootstrap_interval(c, resamples, rng_seed)
    low, high = min(low, mean), max(high, mean)
    return SeedSummary(n, 0, mean, float(per_seed.std(ddof=1)), low, high, max(mean - low, high - mean),
                       BOOTSTRAP_MEAN)


def paired_bootstrap(correct_a: np.ndarray, correct_b: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES,
                     rng_seed: int = BOOTSTRAP_RNG_SEED, n_pairs_dropped: int = 0) -> Difference:
    """Paired difference of test accuracy ``a - b`` with a 95 % percentile bootstrap interval over
    seeds *and* test images.

    ``correct_a[i, j]`` is 1 when model a's run with the ``i``-th seed got test image ``j`` right
    (``correct_b`` the same for b, same seeds in the same order, same test images: a paired design).
    One resample draws ``n`` seeds with replacement and, jointly, the ``m`` test images with
    replacement (the same draw for both models, so the pairing is kept), and takes the mean of
    ``correct_a - correct_b`` over the drawn (seed, image) cells. The interval is the 2.5 / 97.5 %
    percentiles of ``resamples`` such means (fixed ``rng_seed``: reproducible). Seed noise (which
    nets training produced) and test-set sampling noise (which images were drawn for the test
    set) both widen it; a seed-only t interval misses the second. ``df = n - 1`` is reported for
    the seed dimension (the bootstrap does not use it). With fewer than two seeds: NaN interval.
    """
    a, b = np.asarray(correct_a, dtype=np.float64), np.asarray(correct_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"need two (seeds, images) arrays of one shape, got {a.shape} and {b.shape}")
    d = a - b
    n, m = d.shape
    diff = float(d.mean()) if d.size else math.nan
    if n < 2 or m == 0:
        return Difference(diff, math.nan, math.nan, math.nan, False, True, n, n, math.nan, BOOTSTRAP,
                          n_pairs_dropped, m, resamples)
    low, high = _bootstrap_interval(d, resamples, rng_seed)
    low, high = min(low, diff), max(high, diff)
    half = max(diff - low, high - diff)
    return Difference(diff, low, high, half, bool(low > 0 or high < 0), True, n, n, float(n - 1), BOOTSTRAP,
                      n_pairs_dropped, m, resamples)


@dataclass(frozen=True)
class ConvergenceVerdict:
    """Whether a curve had plateaued by its end (see :func:`convergence_verdict` for the rule).

    ``status``: ``"still_improving"`` / ``"declining"`` (the fitted gain over the final window is
    beyond both ``tol`` and twice its own standard error), ``"converged"`` (the gain is within
    ``tol``), ``"flat"`` (the gain exceeds ``tol`` but not 2 SE: no trend the noise lets one
    see), ``"too_short"`` (fewer than ``min_points`` points in the window) or ``"not_finite"``
    (a diverged run). ``plateaued``: True for converged/flat/declining, False for
    still_improving, None without a verdict. ``improvement``: fitted change over the window,
    positive = better; ``improvement_se`` its standard error. ``window_points``: the points the
    verdict read. ``anneal_in_window``: the learning rate changed by more than
    :data:`ANNEAL_RATIO` inside the window (see the rule's step 5).
    """

    status: str
    plateaued: bool | None
    improvement: float
    improvement_se: float
    tol: float
    window: float
    window_start: float
    window_points: int
    min_points: int
    higher_is_better: bool
    anneal_in_window: bool | None
    rule: str = "v3: fitted gain vs tol and 2 SE"

    def as_dict(self) -> dict:
        return asdict(self)


PLATEAU_WINDOW = 0.2     # the verdict reads the last 20 % of a run, in steps
MIN_WINDOW_POINTS = 8
ANNEAL_RATIO = 1.5


def convergence_verdict(steps: Sequence[float], values: Sequence[float], window: float = PLATEAU_WINDOW,
                        tol: float = 0.005, higher_is_better: bool = True, min_points: int = MIN_WINDOW_POINTS,
                        lr: Sequence[float] | None = None) -> ConvergenceVerdict:
    """Had the curve ``values`` (at ``steps``) plateaued by its end? The rule (protocol v3):

    1. The final window is the points with ``step >= s_last - window * (s_last - s_first)``
       (the last 20 % of the run, in steps).
    2. Fewer than ``min_points`` (8) points in that window -> ``"too_short"``: a line through 3
       points is the noise of 3 evaluations, not a verdict (evenly spaced, a 20 % window needs
       ``eval_points >= 36``-40 per run; ``ExperimentConfig.plateau_points`` places them in the
       window instead). Non-finite values -> ``"not_finite"``.
    3. A least-squares line through the window; ``gain = slope * span`` (signed: positive is
       better) and its standard error ``se = se(slope) * span`` from the fit's residuals.
    4. ``gain > tol and gain > 2 se`` -> "still_improving"; ``gain < -tol and gain < -2 se`` ->
       "declining"; ``|gain| <= tol`` -> "converged"; otherwise "flat" (a gain beyond ``tol``
       that the curve's own noise cannot tell from zero).
    5. Annealing: with ``lr`` given, ``anneal_in_window`` flags a window in which the learning rate
       changed by more than a factor :data:`ANNEAL_RATIO` (a one-cycle or cosine run's final 20 %).
       The verdict is still read on the window (the run's end is what it is), but a
       "still_improving" there may be the anneal's doing; readers must show the flag with it.

    Raises:
        ValueError: lengths differ, steps not strictly increasing, window not in (0, 1], tol < 0,
            or min_points < 3.
    """
    x = np.asarray(steps, dtype=np.float64).ravel()
    y = np.asarray(values, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"steps and values differ in length ({x.size} vs {y.size})")
    if not 0.0 < window <= 1.0:
        raise ValueError(f"window must be in (0, 1], got {window}")
    if not tol >= 0.0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    if min_points < 3:
        raise ValueError(f"min_points must be >= 3, got {min_points}")
    if x.size > 1 and not np.all(np.diff(x) > 0):
        raise ValueError("steps must be strictly increasing")

    def verdict(status, plateaued, gain, se, start, points, anneal=None):
        return ConvergenceVerdict(status, plateaued, gain, se, tol, window, start, points, min_points,
                                  higher_is_better, anneal)

    if x.size == 0:
        return verdict("too_short", None, math.nan, math.nan, math.nan, 0)
    start = float(x[-1] - window * (x[-1] - x[0]))
    in_window = x >= start
    points = int(in_window.sum())
    if not np.all(np.isfinite(y)) or not np.all(np.isfinite(x)):
        return verdict("not_finite", None, math.nan, math.nan, start, points)
    if points < min_points:
        return verdict("too_short", None, math.nan, math.nan, start, points)
    anneal = None
    if lr is not None:
        rates = np.asarray(lr, dtype=np.float64).ravel()
        if rates.shape == x.shape:
            w = rates[in_window]
            anneal = bool(w.min() <= 0 or w.max() / w.min() > ANNEAL_RATIO)
    xs, ys = x[in_window], y[in_window]
    span = float(xs[-1] - xs[0])
    slope, intercept = np.polyfit(xs, ys, 1)
    resid = ys - (slope * xs + intercept)
    sxx = float(((xs - xs.mean()) ** 2).sum())
    se_slope = math.sqrt(float((resid ** 2).sum()) / (points - 2) / sxx) if sxx > 0 else math.inf
    sign = 1.0 if higher_is_better else -1.0
    gain, se = float(slope) * span * sign, se_slope * span
    if gain > tol and gain > 2 * se:
        return verdict("still_improving", False, gain, se, start, points, anneal)
    if gain < -tol and gain < -2 * se:
        return verdict("declining", True, gain, se, start, points, anneal)
    if abs(gain) <= tol:
        return verdict("converged", True, gain, se, start, points, anneal)
    return verdict("flat", True, gain, se, start, points, anneal)


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



def grad_rms(l2: Sequence[Sequence[float]] | np.ndarray, numel: Sequence[int]) -> np.ndarray:
    """Per-parameter gradient scale ``||g|| / sqrt(numel)`` of each tracked tensor (columns of ``l2``,
    ``(samples, tensors)``): the root mean square of one gradient entry. Raw L2 norms grow with a
    tensor's size, so a 3x3x512x512 conv looks "larger" than a 10-unit head at equal per-weight
    scale; compare layers or models on this instead.

    Raises:
        ValueError: a column count that is not ``len(numel)``, or a non-positive numel.
    """
    arr = np.asarray(l2, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    sizes = np.asarray(numel, dtype=np.float64)
    if arr.size and arr.shape[1] != sizes.size:
        raise ValueError(f"{arr.shape[1]} norm columns but {sizes.size} sizes")
    if np.any(sizes <= 0):
        raise ValueError("numel must be positive")
    return arr / np.sqrt(sizes)
