"""Training stability as numbers: loss spikes, gradient-norm statistics and the divergence frontier
of a learning-rate sweep. Pure functions of what a :class:`~utils.engine.records.RunRecord` holds
(``step_loss``, ``grad_stats.l2``, ``status``); nothing here trains or plots.

Definitions (used by task 3's lr sweep and quoted in README):

* **loss spike** (:func:`loss_spike_steps`): an optimisation step whose training loss is more than
  ``rise`` (a fraction: 0.5 = 50 %) above the mean of the ``window`` steps before it. The trailing
  mean, not a centred one, is what a person watching the loss would compare with; the first
  ``window`` steps have no reference and are never spikes. Every step above the line counts (a
  spike lasting three steps counts 3); :func:`loss_spike_events` counts runs of consecutive spike
  steps instead. Mini-batch noise alone crosses a low threshold now and then, more so late in
  training when the loss is small, so compare counts between runs of one recipe (e.g. along an lr
  sweep) rather than reading one count on its own.
* **gradient-norm statistics** (:func:`grad_norm_stats`): the global L2 norm of all tracked weight
  gradients (``utils.engine.gradients.total_grad_norm``) at each sampled step: at initialisation
  (the first sample), median, 90th percentile and maximum over the run, and max / median.
* **divergence frontier** (:func:`divergence_frontier`): the smallest learning rate at which any
  run of the sweep diverged (a non-finite loss or gradient, ``status == "diverged"``), ``None`` if
  none did; with the largest learning rate below it at which every run completed.
* **unstable run** (:func:`is_unstable`): diverged, or completed without learning (final clean
  training accuracy below a stated floor): a BatchNorm net at a huge lr can keep a finite loss
  while it never leaves chance, which is as much a failed run as a NaN.
* **gradient scale over training** (:func:`grad_rms_over_training`, :func:`grad_rms_distribution`):
  the per-parameter RMS ``||g|| / sqrt(numel)`` of all tracked tensors at every sample *after*
  step 0 (the step-0 value is the initialisation's, the same at every lr), pooled over seeds.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import numpy as np

from utils.engine.gradients import total_grad_norm
from utils.comparison_utils import convergence_of
from utils.engine.records import RunRecord
from utils.analysis.statistics import seed_summary

__all__ = ["SPIKE_WINDOW", "SPIKE_RISES", "loss_spike_steps", "loss_spike_events", "spike_counts",
           "grad_norm_stats", "Frontier", "divergence_frontier", "run_stability", "stability_over_seeds",
           "sweep_points", "is_unstable", "grad_rms_over_training", "grad_rms_distribution"]

SPIKE_WINDOW = 20          # steps in the trailing mean a step's loss is compared with
SPIKE_RISES = (0.5, 1.0)   # thresholds reported: loss 50 % and 100 % (doubled) above that mean


def loss_spike_steps(losses: Sequence[float], window: int = SPIKE_WINDOW, rise: float = 0.5) -> np.ndarray:
    """Indices ``t`` (0-based optimisation steps) with ``losses[t] > (1 + rise) * mean(losses[t-window:t])``.

    Steps before ``window`` (no full reference window) are never spikes. Non-finite losses (which
    the engine never records: it stops the run first) are not spikes and make the windows that
    contain them undefined, so those steps are skipped too.

    Raises:
        ValueError: ``window < 1`` or ``rise < 0``.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if not rise >= 0:
        raise ValueError(f"rise must be >= 0, got {rise}")
    x = np.asarray(losses, dtype=np.float64).ravel()
    if x.size <= window:
        return np.zeros(0, dtype=int)
    csum = np.concatenate([[0.0], np.cumsum(x)])
    trailing = (csum[window:-1] - csum[:-window - 1]) / window      # mean of x[t-window:t], t = window..n-1
    current = x[window:]
    with np.errstate(invalid="ignore"):
        spike = np.isfinite(trailing) & np.isfinite(current) & (current > (1.0 + rise) * trailing)
    return np.flatnonzero(spike) + window


def loss_spike_events(steps: Sequence[int]) -> int:
    """Number of runs of consecutive spike steps (``[5, 6, 7, 20]`` -> 2)."""
    s = np.asarray(steps, dtype=int).ravel()
    if s.size == 0:
        return 0
    return int(1 + np.count_nonzero(np.diff(s) > 1))


def spike_counts(losses: Sequence[float], window: int = SPIKE_WINDOW,
                 rises: Iterable[float] = SPIKE_RISES) -> dict:
    """Spike steps and events at each threshold, in a JSON-ready dict keyed by the threshold in
    percent: ``{"window": 20, "steps": n, "by_rise": {"50": {"steps": k, "events": e, "first": t}, ...}}``
    (``first``: the first spike step, None without one)."""
    n = len(losses)
    out = {"window": window, "steps": n, "by_rise": {}}
    for rise in rises:
        at = loss_spike_steps(losses, window, rise)
        out["by_rise"][f"{100 * rise:g}"] = {"steps": int(at.size), "events": loss_spike_events(at),
                                            "first": int(at[0]) if at.size else None}
    return out


def grad_norm_stats(l2: Sequence[Sequence[float]]) -> dict:
    """Statistics of the global gradient norm from per-layer norms ``(samples, layers)``.

    Returns ``samples``, ``at_init`` (the first sample), ``median``, ``p90``, ``max`` and
    ``max_over_median``; every number is None when there is no finite sample (e.g. a run that
    diverged before its first one). Non-finite samples are left out.
    """
    arr = np.asarray(l2, dtype=np.float64)
    empty = {"samples": 0, "at_init": None, "median": None, "p90": None, "max": None, "max_over_median": None}
    if arr.size == 0:
        return empty
    total = total_grad_norm(arr)
    finite = total[np.isfinite(total)]
    if finite.size == 0:
        return {**empty, "samples": int(total.size)}
    median = float(np.median(finite))
    return {"samples": int(total.size), "at_init": float(total[0]) if np.isfinite(total[0]) else None,
            "median": median, "p90": float(np.percentile(finite, 90)), "max": float(finite.max()),
            "max_over_median": float(finite.max() / median) if median > 0 else None}


@dataclass(frozen=True)
class Frontier:
    """Where a learning-rate sweep starts to diverge.

    ``frontier``: smallest lr at which at least one run diverged (None: none did);
    ``stable_up_to``: largest lr below the frontier (or overall, without one) at which every run
    completed (None: none did); ``diverged_lrs``: every lr with a diverged run, ascending;
    ``completed_above_frontier``: lrs above the frontier at which every run completed (a frontier
    that is not a clean edge, e.g. one unlucky seed).
    """

    frontier: float | None
    stable_up_to: float | None
    diverged_lrs: list[float]
    completed_above_frontier: list[float]
    runs: int
    diverged_runs: int

    def as_dict(self) -> dict:
        return asdict(self)


def divergence_frontier(lrs: Sequence[float], diverged: Sequence[bool]) -> Frontier:
    """The :class:`Frontier` of runs at learning rates ``lrs`` (one entry per run; several runs may
    share an lr, e.g. seeds), ``diverged[i]`` True when run ``i`` diverged.

    Raises:
        ValueError: lengths differ, or an lr is not a positive finite number.
    """
    lr = [float(v) for v in lrs]
    bad = [bool(v) for v in diverged]
    if len(lr) != len(bad):
        raise ValueError(f"{len(lr)} learning rates but {len(bad)} divergence flags")
    if any(not (math.isfinite(v) and v > 0) for v in lr):
        raise ValueError(f"learning rates must be positive and finite, got {lr}")
    levels = sorted(set(lr))
    any_div = {v: any(b for x, b in zip(lr, bad) if x == v) for v in levels}
    div_lrs = [v for v in levels if any_div[v]]
    frontier = div_lrs[0] if div_lrs else None
    below = [v for v in levels if not any_div[v] and (frontier is None or v < frontier)]
    above_ok = [v for v in levels if frontier is not None and v > frontier and not any_div[v]]
    return Frontier(frontier, below[-1] if below else None, div_lrs, above_ok, len(lr), sum(bad))


# ------------------------------------------------------------------------------ from run records
def _summary(values) -> dict:
    """``seed_summary`` of ``values`` as a dict, None counted as missing."""
    return seed_summary([math.nan if v is None else v for v in values]).as_dict()


def _mean(values) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def run_stability(r: RunRecord) -> dict:
    """One run's stability numbers: status, accuracies, loss spikes (:func:`spike_counts` of
    ``step_loss``) and gradient-norm statistics (:func:`grad_norm_stats` of ``grad_stats.l2``)."""
    done = r.status == "completed"   # a diverged run's last validation point is not a final accuracy
    return {"model": r.model, "seed": r.seed, "lr": r.config["lr"], "status": r.status, "diverged_at": r.diverged_at,
            "final_val_acc": r.summary.final_val_acc if done else None, "test_acc": r.test_acc,
            "made_in": r.experiment,
            "plateau": convergence_of(r).get("val_acc", {}).get("status"), "spikes": spike_counts(r.step_loss),
            "grad_norm": grad_norm_stats(r.grad_stats.l2)}


def stability_over_seeds(runs: Sequence[RunRecord]) -> dict:
    """Spike steps per threshold and the median / max gradient norm of ``runs`` (one per seed), each
    as a seed summary (mean, 95 % interval)."""
    stab = [run_stability(r) for r in runs]
    rises = [f"{100 * x:g}" for x in SPIKE_RISES]
    return {"loss_spike_steps": {k: _summary(s["spikes"]["by_rise"][k]["steps"] for s in stab) for k in rises},
            "grad_norm_median": _summary(s["grad_norm"]["median"] for s in stab),
            "grad_norm_max": _summary(s["grad_norm"]["max"] for s in stab)}


def sweep_points(runs: Sequence[RunRecord]) -> dict:
    """One model's learning-rate sweep (``runs``: every lr and seed, lr read from ``config["lr"]``):
    per lr, the runs' stability numbers, final validation and test accuracy over seeds, diverged
    runs, mean spike steps and gradient norms; the :class:`Frontier`; the lr with the best mean
    final validation accuracy (None if every run diverged)."""
    points = []
    rises = [f"{100 * x:g}" for x in SPIKE_RISES]
    for lr in sorted({r.config["lr"] for r in runs}):
        stab = [run_stability(r) for r in runs if r.config["lr"] == lr]
        points.append({"lr": lr, "runs": stab, "n": len(stab),
                       "diverged": sum(s["status"] != "completed" for s in stab),
                       "final_val_acc": _summary(s["final_val_acc"] for s in stab),
                       "test_acc": _summary(s["test_acc"] for s in stab),
                       "loss_spike_steps": {k: _mean(s["spikes"]["by_rise"][k]["steps"] for s in stab) for k in rises},
                       "grad_norm_median": _mean(s["grad_norm"]["median"] for s in stab),
                       "grad_norm_max": _mean(s["grad_norm"]["max"] for s in stab)})
    frontier = divergence_frontier([r.config["lr"] for r in runs], [r.status != "completed" for r in runs])
    scored = [p for p in points if p["final_val_acc"]["n"] > 0]
    return {"points": points, "frontier": frontier.as_dict(),
            "best_lr_by_val": max(scored, key=lambda p: p["final_val_acc"]["mean"])["lr"] if scored else None}


# ------------------------------------------------------------------ unstable runs, gradient scale
def is_unstable(r: RunRecord, min_train_acc: float) -> bool:
    """True when ``r`` diverged, or completed with a final clean-train accuracy below ``min_train_acc``
    (e.g. twice chance: the run never learned)."""
    if not r.completed:
        return True
    acc = r.summary.final_train_acc
    return acc is None or not math.isfinite(acc) or acc < min_train_acc


def grad_rms_over_training(r: RunRecord, skip_steps: int = 1) -> np.ndarray:
    """The per-parameter gradient RMS ``sqrt(sum_i ||g_i||^2 / sum_i numel_i)`` over the tracked
    tensors at every gradient sample with ``step >= skip_steps`` (default: every sample after step 0);
    numel per tensor from ``params.per_layer`` (the owning module: weight + bias). Non-finite
    samples are dropped; empty when nothing is left or a tensor's size is unknown."""
    g, per = r.grad_stats, r.params.get("per_layer", {})
    numel = np.asarray([per.get(n.rsplit(".", 1)[0], 0) for n in g.names], dtype=np.float64)
    if not g.l2 or numel.size == 0 or not numel.all():
        return np.zeros(0)
    l2 = np.asarray(g.l2, dtype=np.float64)
    keep = np.asarray(g.step[:len(l2)]) >= skip_steps
    rms = np.sqrt((l2[keep] ** 2).sum(axis=1) / numel.sum())
    return rms[np.isfinite(rms)]


def grad_rms_distribution(runs: Sequence[RunRecord], skip_steps: int = 1) -> dict:
    """The distribution of :func:`grad_rms_over_training` over ``runs`` (one per seed): quantiles
    (10, 50, 90 %, max) of every sample of every run pooled, and each run's median as a seed summary
    (mean, 95 % interval: how far the runs agree)."""
    per_run = [grad_rms_over_training(r, skip_steps) for r in runs]
    pooled = np.concatenate(per_run) if per_run else np.zeros(0)
    q = (lambda p: float(np.percentile(pooled, p))) if pooled.size else (lambda p: None)
    return {"samples": int(pooled.size), "skip_steps": skip_steps, "p10": q(10), "p50": q(50), "p90": q(90),
            "max": float(pooled.max()) if pooled.size else None,
            "run_median": _summary(float(np.median(x)) if x.size else None for x in per_run)}
