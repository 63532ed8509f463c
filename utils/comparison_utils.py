"""Runs grouped by what they are (``group``, ``variant``: fields of their specs) and summarised over
seeds: mean with its 95 % interval per metric, and differences between variants with theirs.

A difference is called real in README only when its interval excludes zero
(:attr:`utils.analysis.statistics.Difference.excludes_zero`); otherwise it is "within noise".
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Callable, Sequence

from utils.engine.records import RunRecord
from utils.analysis.statistics import Difference, SeedSummary, difference, seed_summary

Metric = Callable[[RunRecord], "float | None"]

def _completed(metric: Metric) -> Metric:
    """A diverged run has no final quality: its last pre-divergence values are not the run's result."""
    return lambda r: metric(r) if r.completed else None


# The metrics analyses summarise over seeds (fractions, seconds); None -> NaN -> counted as missing.
METRICS: dict[str, Metric] = {
    "test_acc": _completed(lambda r: r.test_acc),
    "final_val_acc": _completed(lambda r: r.summary.final_val_acc),
    "best_val_acc": _completed(lambda r: r.summary.best_val_acc),
    "final_train_acc": _completed(lambda r: r.summary.final_train_acc),
    "gap": _completed(lambda r: r.summary.gap),
    "final_train_loss": _completed(lambda r: r.summary.final_train_loss),
    "final_val_loss": _completed(lambda r: r.summary.final_val_loss),
    "train_time_s": _completed(lambda r: r.summary.train_time_s),
}


def by_variant(records: Sequence[RunRecord]) -> dict[tuple[str, str], list[RunRecord]]:
    """``(group, variant) -> its runs`` (one per seed), in first-seen order."""
    out: dict[tuple[str, str], list[RunRecord]] = defaultdict(list)
    for r in records:
        out[(r.group, r.variant)].append(r)
    return dict(out)


def values(runs: Sequence[RunRecord], metric: Metric) -> list[float]:
    return [math.nan if (v := metric(r)) is None else float(v) for r in runs]


def summarise_runs(runs: Sequence[RunRecord], metrics: dict[str, Metric] = METRICS) -> dict[str, dict]:
    """Every metric of ``runs`` as a :class:`SeedSummary` dict, plus the seeds, statuses and how
    many runs the plateau criterion calls converged."""
    out = {name: seed_summary(values(runs, m)).as_dict() for name, m in metrics.items()}
    out["seeds"] = [r.seed for r in runs]
    out["status"] = [r.status for r in runs]
    out["converged"] = sum(bool(r.summary.converged) for r in runs)
    return out


def compare(a: Sequence[RunRecord], b: Sequence[RunRecord], metric: Metric) -> Difference:
    """``mean(a) - mean(b)`` of ``metric`` with its 95 % interval; paired by seed when both
    variants ran the same seeds (same data order and init draws), else Welch."""
    paired = sorted(r.seed for r in a) == sorted(r.seed for r in b) and len(a) > 1
    if paired:
        a, b = sorted(a, key=lambda r: r.seed), sorted(b, key=lambda r: r.seed)
    return difference(values(a, metric), values(b, metric), paired=paired)


def verdict(d: Difference) -> str:
    """The README's words for a difference."""
    if d.n_a < 2 or d.n_b < 2 or math.isnan(d.ci95_low):
        return "not enough seeds to tell"
    return "real" if d.excludes_zero else "within noise"


def summary_of(summary: SeedSummary | dict) -> str:
    """``mean ± half-width`` in percent for an accuracy-like summary."""
    s = summary if isinstance(summary, dict) else summary.as_dict()
    if math.isnan(s["half_width"]):
        return f"{100 * s['mean']:.2f} %"
    return f"{100 * s['mean']:.2f} ± {100 * s['half_width']:.2f} %"
