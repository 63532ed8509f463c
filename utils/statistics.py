"""Statistics over seeds and curves: per-seed summaries, point-wise curve bands, relative spread.

Inputs are plain numbers (one per seed / run); NaN marks a run without a value (e.g. diverged).
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np

__all__ = ["seed_statistics", "curve_band", "relative_spread"]


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
