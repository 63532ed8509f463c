"""Runs grouped by what they are (``group``, ``variant``: fields of their specs) and summarised over
seeds: mean with its 95 % interval per metric, and differences between variants with theirs.

A difference is called real in README only when its interval excludes zero
(:attr:`utils.analysis.statistics.Difference.excludes_zero`); otherwise it is "within noise".
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from typing import Any, Callable, Sequence

import numpy as np

from utils.engine.records import RunRecord
from utils.analysis.statistics import (Difference, bootstrap_mean, convergence_verdict, difference, grad_rms,
                                      paired_bootstrap, seed_summary)

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
    "test_loss": _completed(lambda r: r.test_loss),
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


def test_correct(runs: Sequence[RunRecord]) -> np.ndarray | None:
    """``(runs, test images)`` 0/1 array of which test images each run got right, or None when a
    run has no predictions, the runs were tested on different images, or a run's predictions do
    not reproduce its ``test_acc`` (then they are not what the accuracy was computed from)."""
    if not runs or any(r.predictions is None or r.test_acc is None or r.labels != runs[0].labels for r in runs):
        return None
    correct = np.stack([np.asarray(r.predictions) == np.asarray(r.labels) for r in runs]).astype(float)
    if not np.allclose(correct.mean(axis=1), [r.test_acc for r in runs], rtol=0, atol=1e-9):
        return None
    return correct


def summarise_runs(runs: Sequence[RunRecord], metrics: dict[str, Metric] = METRICS) -> dict[str, dict]:
    """Every metric of ``runs`` as a :class:`SeedSummary` dict, plus the seeds, statuses and how
    many runs the plateau criterion calls converged."""
    out = {name: seed_summary(values(runs, m)).as_dict() for name, m in metrics.items()}
    correct = test_correct([r for r in runs if r.completed])
    if "test_acc" in metrics and correct is not None:
        out["test_acc"] = {**bootstrap_mean(correct).as_dict(), "n_missing": out["test_acc"]["n_missing"]}
    out["seeds"] = [r.seed for r in runs]
    out["status"] = [r.status for r in runs]
    out["converged"] = sum(bool(convergence_of(r).get("val_acc", {}).get("plateaued")) for r in runs)
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


NO_PAIRS = "diverged or missing (no complete pair to compare)"


def is_number(v: Any) -> bool:
    """A value of an analysis dict that can be plotted or printed: not None (what :func:`json_safe`
    writes for NaN) and finite."""
    return v is not None and math.isfinite(v)


def json_safe(obj: Any) -> Any:
    """``obj`` with every NaN/inf float (numpy floats too) replaced by None (strict JSON)."""
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def variant_key(group: str, variant: str) -> str:
    """The ``analysis.json`` key of a variant: ``"group/variant"``."""
    return f"{group}/{variant}"


def pair_by_seed(a: Sequence[RunRecord], b: Sequence[RunRecord], metric: Metric | None = None
                 ) -> tuple[list[tuple[RunRecord, RunRecord]], int]:
    """Runs of ``a`` and ``b`` paired by seed, and how many pairs were dropped: a pair is dropped
    when either side is missing, did not complete, or has no value of ``metric``. The one rule for
    diverged or missing runs, in every task; no fallback to unpaired intervals."""
    ra, rb = {r.seed: r for r in a}, {r.seed: r for r in b}
    pairs, dropped = [], 0
    for seed in sorted(set(ra) | set(rb)):
        x, y = ra.get(seed), rb.get(seed)
        ok = x is not None and y is not None and x.completed and y.completed
        if ok and metric is not None:
            vx, vy = metric(x), metric(y)
            ok = vx is not None and vy is not None and math.isfinite(vx) and math.isfinite(vy)
        if ok:
            pairs.append((x, y))
        else:
            dropped += 1
    return pairs, dropped


def compare_paired(a: Sequence[RunRecord], b: Sequence[RunRecord], metric: str) -> Difference:
    """``a - b`` of ``metric`` paired by seed (:func:`pair_by_seed`). Test accuracy: a paired
    bootstrap over seeds and test images (:func:`~utils.analysis.statistics.paired_bootstrap`)
    when every paired run has test predictions of the same images; otherwise (and for every other
    metric) the paired t interval over seeds. ``interval_method`` says which."""
    fn = METRICS[metric]
    pairs, dropped = pair_by_seed(a, b, fn)
    correct = test_correct([r for pair in pairs for r in pair]) if metric == "test_acc" and pairs else None
    if correct is not None:      # rows: a's runs and b's, alternating, in seed order
        return paired_bootstrap(correct[0::2], correct[1::2], n_pairs_dropped=dropped)
    d = difference([fn(x) for x, _ in pairs], [fn(y) for _, y in pairs], paired=True)
    return dataclasses.replace(d, n_pairs_dropped=dropped)


MIXED_PRECISION = "not comparable: the runs were trained at different precisions"


def runtime_of(record: RunRecord) -> str:
    """Where a run was trained, as one label: precision, device and CPU model (the study trains
    every model of one comparison on one machine at one precision; this is how a reader checks)."""
    rt = record.runtime or {}
    cpu = (rt.get("cpu_capabilities") or {}).get("model", rt.get("cpu", "?"))
    return f"{rt.get('precision', '?')} on {rt.get('device', '?')} ({cpu})"


def difference_with_verdict(a: Sequence[RunRecord], b: Sequence[RunRecord], metrics: Sequence[str]) -> dict:
    """``{metric: Difference dict + "verdict" + "runtimes"}`` for ``a - b``: the one
    difference-with-verdict. ``runtimes``: where the compared runs were trained
    (:func:`runtime_of`); runs of different precisions get no verdict (:data:`MIXED_PRECISION`),
    runs of one precision on different machines keep theirs and show both machines."""
    runs = [*a, *b]
    runtimes = sorted({runtime_of(r) for r in runs})
    precisions = {(r.runtime or {}).get("precision") for r in runs}
    out = {}
    for m in metrics:
        d = compare_paired(a, b, m)
        word = MIXED_PRECISION if len(precisions) > 1 else verdict(d) if d.n else NO_PAIRS
        out[m] = {**d.as_dict(), "verdict": word, "runtimes": runtimes}
    return out


def advantage_change(a: Sequence[RunRecord], b: Sequence[RunRecord], a_ref: Sequence[RunRecord],
                     b_ref: Sequence[RunRecord]) -> dict:
    """How much the test-accuracy advantage of ``a`` over ``b`` changes from the reference condition
    to the treated one: ``(a - b) - (a_ref - b_ref)``, on seeds where all four ran to the end, with
    the paired bootstrap over seeds and test images of the per-image differences (the four share
    their test images: e.g. a fixed pixel permutation keeps each image's index and label). Negative: the
    treatment shrinks a's advantage. Without test predictions for all four: no interval."""
    seeds = set.intersection(*({r.seed for r in runs if r.completed} for runs in (a, b, a_ref, b_ref)))
    rows = [sorted((r for r in runs if r.seed in seeds), key=lambda r: r.seed) for runs in (a, b, a_ref, b_ref)]
    correct = test_correct([r for runs in rows for r in runs]) if seeds else None
    if correct is None:
        return {"n": len(seeds), "verdict": NO_PAIRS}
    k = len(seeds)
    ca, cb, cra, crb = (correct[i * k:(i + 1) * k] for i in range(4))
    n_all = len({r.seed for runs in (a, b, a_ref, b_ref) for r in runs})
    d = paired_bootstrap(ca - cb, cra - crb, n_pairs_dropped=n_all - k)
    return {**d.as_dict(), "verdict": verdict(d)}


def convergence_of(record: RunRecord) -> dict:
    """Protocol-v3 plateau verdicts of a run's validation and clean-train accuracy curves, computed
    from ``record.history`` (the engine stores curves, analyses judge them)."""
    h = record.history
    out = {}
    for name in ("val_acc", "train_eval_acc"):
        values = getattr(h, name)
        if values:
            out[name] = json_safe(convergence_verdict(h.step, values, lr=h.lr if len(h.lr) == len(values) else None
                                                      ).as_dict())
    return out


def grad_rms_of(record: RunRecord) -> dict:
    """Per-parameter gradient scale ``||g|| / sqrt(numel)`` of each tracked tensor of ``record``.
    numel: the parameters owned by the tensor's module (``params.per_layer``: weight + bias; the
    bias is a small share of a conv or linear layer)."""
    g, per = record.grad_stats, record.params.get("per_layer", {})
    numel = [per.get(n.rsplit(".", 1)[0], 0) for n in g.names]
    if not g.l2 or not all(numel):
        return {"names": list(g.names), "rms": None, "numel": numel}
    return {"names": list(g.names), "numel": numel, "rms": grad_rms(g.l2, numel).tolist()}


def variant_numbers(runs: Sequence[RunRecord]) -> dict:
    """The one ``analysis.json`` entry of a variant over its seeds: every metric over the finished
    runs (mean, 95 % t interval, n, n_missing), seeds, statuses, size and cost, and the v3 plateau
    verdicts of each run (with their window sizes)."""
    first = runs[0]
    conv = [convergence_of(r) for r in runs]
    return {**summarise_runs([r for r in runs if r.completed]), "seeds": [r.seed for r in runs],
            "status": [r.status for r in runs], "diverged": sum(not r.completed for r in runs),
            "models": [r.model for r in runs], "description": first.description,
            "made_in": sorted({r.experiment for r in runs}), "params": first.params["total"],
            "mflops": first.flops_per_image / 1e6, "lr": first.config.get("lr"), "init": first.init,
            "convergence": conv, "runtimes": sorted({runtime_of(r) for r in runs}),
            "per_seed": {"seed": [r.seed for r in runs], "test_acc": [r.test_acc for r in runs]}}


def format_mean_ci(s: dict, scale: float = 100.0, unit: str = " %") -> str:
    """``"85.12 ± 0.50 % (n=3, df=2)"`` for a :class:`SeedSummary` dict; ``"85.12 % (n=1)"``; ``"–"``."""
    mean, half, n = s.get("mean"), s.get("half_width"), s.get("n", 0)
    if not n or mean is None or not math.isfinite(mean):
        return "–"
    if half is None or not math.isfinite(half):
        return f"{scale * mean:.2f}{unit} (n={n})"
    return f"{scale * mean:.2f} ± {scale * half:.2f}{unit} (n={n}, df={n - 1})"


def format_difference(d: dict, scale: float = 100.0, unit: str = " pp") -> str:
    """``"+1.23 pp [+0.50, +2.00] (n=3, df=2)"`` for a :class:`Difference` dict."""
    m = d.get("mean_difference")
    if m is None or not math.isfinite(m):
        return "–"
    lo, hi, df = d.get("ci95_low"), d.get("ci95_high"), d.get("df")
    ci = f" [{scale * lo:+.2f}, {scale * hi:+.2f}]" if lo is not None and math.isfinite(lo) else ""
    dfs = f", df={df:g}" if df is not None and math.isfinite(df) else ""
    return f"{scale * m:+.2f}{unit}{ci} (n={d.get('n', d.get('n_a'))}{dfs})"
