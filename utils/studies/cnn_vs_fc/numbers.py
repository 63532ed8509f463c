"""Task 1's numbers from run records (pure functions): training compute, the shared-lr choice,
the effective learning rate of BatchNorm-ed layers, comparisons of per-run measurements that are
not record fields (calibration), and the per-run / per-variant / difference tables of the
experiments' ``analysis.json``."""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from utils.analysis.compute import FLOP_CONVENTION, training_flop
from utils.analysis.statistics import difference, seed_summary
from utils.analysis.classification import classification_summary
from utils.comparison_utils import (by_variant, convergence_of, difference_with_verdict, grad_rms_of, variant_key,
                                    variant_numbers, verdict)
from utils.engine.experiment import ExperimentConfig
from utils.engine.records import RunRecord
from utils.training_utils import lr_factor

PFLOP_CONVENTION = FLOP_CONVENTION


def training_pflop(r: RunRecord) -> float:
    """Training compute of a run in PFLOP (:data:`utils.analysis.compute.FLOP_CONVENTION`)."""
    return training_flop(r.flops_per_image, r.history.step[-1] if r.history.step else 0, r.config["batch_size"]) / 1e15


def mean_score(scores: Sequence[float | None]) -> float | None:
    """The mean of per-model (or per-seed) validation scores; None when any is missing (a model
    that diverged at a grid point rules that point out for a shared setting)."""
    if not scores or any(s is None or not math.isfinite(s) for s in scores):
        return None
    return float(np.mean(scores))


def pilot_table(records: Sequence[RunRecord], key: str = "lr") -> dict:
    """``{group: {value: {"val_acc": [...per pilot seed], "mean": ...}}}`` of pilot runs, the value
    being the run's ``config[key]`` (final validation accuracy; the test set is not read)."""
    out: dict[str, dict] = {}
    for r in records:
        v = f"{r.config[key]:g}"
        cell = out.setdefault(r.group, {}).setdefault(v, {"val_acc": [], "seeds": [], "status": []})
        cell["val_acc"].append(r.summary.final_val_acc if r.completed else None)
        cell["seeds"].append(r.seed)
        cell["status"].append(r.status)
    for cells in out.values():
        for cell in cells.values():
            cell["mean"] = mean_score(cell["val_acc"])
    return out


# ----------------------------------------------------------------------- effective learning rate
def effective_lr_curve(r: RunRecord, names: Sequence[str]) -> dict | None:
    """The effective learning rate ``lr(t) / ||w(t)||^2`` of the scale-invariant layers ``names``
    of run ``r`` over training (the recorded weight norms, at the gradient-sample steps), as the
    geometric mean over those layers; and ``||w(t)|| / ||w(0)||`` (geometric mean over layers).
    None when the record has no weight norms or none of ``names``."""
    g = r.grad_stats
    cols = [g.names.index(n) for n in names if n in g.names]
    if not g.weight_l2 or not cols:
        return None
    w = np.asarray(g.weight_l2, dtype=float)[:, cols]                     # (samples, layers)
    cfg = ExperimentConfig(**r.config)
    total = r.history.step[-1]
    lr = np.array([cfg.lr * lr_factor(s, total, cfg) for s in g.step])
    log_eff = np.log(np.maximum(lr, 1e-300))[:, None] - 2 * np.log(w)
    eff = np.exp(log_eff.mean(axis=1))
    rel = np.exp(np.log(w / w[0]).mean(axis=1))
    steps_per_epoch = r.history.step[-1] / r.history.epoch[-1]
    return {"step": list(g.step), "epoch": (np.asarray(g.step) / steps_per_epoch).tolist(),
            "effective_lr": eff.tolist(), "weight_norm_rel": rel.tolist(), "layers": [g.names[c] for c in cols],
            "mean_effective_lr": float(eff.mean()), "final_weight_norm_rel": float(rel[-1]),
            "weight_norm_rel_min": float(rel.min())}


def ratio_over_seeds(a: Mapping[int, float], b: Mapping[int, float]) -> dict:
    """The geometric-mean ratio ``a / b`` of a positive per-seed quantity, paired by seed, with
    its 95 % t interval (computed on the logs, over the seeds both have)."""
    seeds = sorted(set(a) & set(b))
    d = difference([math.log(a[s]) for s in seeds], [math.log(b[s]) for s in seeds], paired=True)
    exp = lambda v: math.exp(v) if math.isfinite(v) else math.nan  # noqa: E731
    return {"ratio": exp(d.mean_difference), "ci95_low": exp(d.ci95_low), "ci95_high": exp(d.ci95_high),
            "n": d.n, "df": d.df, "excludes_one": d.excludes_zero, "interval_method": "paired t over seeds, on logs",
            "verdict": verdict(d)}


# ------------------------------------------------------------------- per-run measurements over seeds
def per_seed_summary(values: Mapping[int, float]) -> dict:
    """Mean and 95 % t interval of a per-seed measurement (``{seed: value}``)."""
    return {**seed_summary(list(values.values())).as_dict(), "seeds": sorted(values)}


def paired_difference(a: Mapping[int, float], b: Mapping[int, float]) -> dict:
    """``a - b`` of a per-seed measurement, paired by seed (seeds missing on either side are left
    out and counted), with its 95 % paired t interval and the README verdict."""
    seeds = sorted(set(a) & set(b))
    d = difference([a[s] for s in seeds], [b[s] for s in seeds], paired=True)
    return {**d.as_dict(), "n_pairs_dropped": len(set(a) ^ set(b)), "verdict": verdict(d)}


# ------------------------------------------------------------------------- runs and variants
#: the metrics every task-1 difference between variants is read on
COMPARED = ("test_acc", "gap", "final_val_acc", "test_loss")


def run_numbers(r: RunRecord, extra: dict | None = None) -> dict:
    """Per-run numbers beyond the variant summaries: errors, gap, plateau verdicts, gradient
    scale per layer, compute."""
    if not r.completed:
        return {"status": r.status, "diverged_at": r.diverged_at}
    rms = grad_rms_of(r)
    return {**classification_summary(r.labels, r.predictions, r.class_names), "test_acc": r.test_acc,
            "test_loss": r.test_loss, "final_gap": r.summary.gap, "convergence": convergence_of(r),
            "training_pflop": training_pflop(r),
            "grad_rms_median": (np.median(np.asarray(rms["rms"]), axis=0).tolist() if rms["rms"] else None),
            "grad_layers": rms["names"], **(extra or {})}


def variant_entry(runs: Sequence[RunRecord]) -> dict:
    """One variant's numbers over its seeds (:func:`variant_numbers`) and its mean training compute
    per finished run."""
    done = [r for r in runs if r.completed]
    return {**variant_numbers(runs), "training_pflop": (float(np.mean([training_pflop(r) for r in done]))
                                                        if done else None), "pflop_convention": PFLOP_CONVENTION}


def variants_of(records: Sequence[RunRecord]) -> dict:
    return {variant_key(g, v): variant_entry(runs) for (g, v), runs in by_variant(records).items()}


def differences_of(records: Sequence[RunRecord], pairs: Sequence[tuple[tuple, tuple]]) -> dict:
    groups = by_variant(records)
    return {f"{variant_key(*a)} vs {variant_key(*b)}": difference_with_verdict(groups[a], groups[b], COMPARED)
            for a, b in pairs if a in groups and b in groups}


def calibration_numbers(records: Sequence[RunRecord], cal: dict[str, dict],
                        pairs: Sequence[tuple[tuple, tuple]]) -> dict:
    """Test-set ECE and over-confidence per variant over seeds, and paired differences."""
    groups = by_variant(records)
    per = {k: {"ece": {r.seed: cal[r.model]["ece"] for r in runs if r.model in cal},
               "overconfidence": {r.seed: cal[r.model]["overconfidence"] for r in runs if r.model in cal}}
           for k, runs in groups.items()}
    return {"variants": {variant_key(*k): {m: per_seed_summary(v) for m, v in p.items()} for k, p in per.items()},
            "differences": {f"{variant_key(*a)} vs {variant_key(*b)}": {
                m: paired_difference(per[a][m], per[b][m]) for m in ("ece", "overconfidence")}
                for a, b in pairs if a in per and b in per},
            "method": "top-1 confidence, 15 equal-width bins, test set scored as the run's test accuracy (flip TTA)"}
