"""The numbers of the architecture study (task 2) that follow from run records alone.

Pure functions of :class:`~utils.engine.records.RunRecord` lists (no models, no data), so they are tested
on synthetic records (``tests/fakes.py``) and never crash on an experiment whose runs diverged:

* :func:`divergence_report`: which runs diverged, and whether all of them did;
* :func:`variant_numbers`: one (group, variant) over seeds, with the plateau verdicts of its
  training curves;
* :func:`depth_numbers`: plain vs residual families over depth: training accuracy of deeper vs
  shallower nets (the degradation problem, He et al. 2016) and residual vs plain at each depth,
  each a difference with its 95 % interval and the README's verdict;
* :func:`choose_lr`: the learning rate of a pilot sweep, read from final validation accuracy only;
* :func:`controls_numbers`, :func:`kernel_numbers`: the no-normalisation control and the kernel
  study over seeds; :func:`gradient_numbers`: first/last-layer gradient ratios of a run;
* ``*_markdown``: the ``analysis.md`` of each experiment, rendered from its ``analysis.json`` dict.

Accuracy is the convention everywhere (training error = 1 - training accuracy). "Training
accuracy" is the engine's clean (eval-mode) accuracy on a fixed training subset
(``train_eval_acc``), the curve whose plateau verdict says whether training had flattened.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np

from utils.comparison_utils import METRICS, by_variant, compare, convergence_of, json_safe, summarise_runs, verdict  # noqa: F401
from utils.engine.gradients import gradient_flow_summary
from utils.engine.markdown import markdown_table
from utils.engine.records import GradStats, RunRecord

PRIMARY = "final_train_acc"                       # the degradation question is about training error
DIFF_METRICS = ("final_train_acc", "final_train_loss", "final_val_acc", "test_acc")




# --------------------------------------------------------------------------------- runs
def divergence_report(records: Sequence[RunRecord]) -> dict:
    """Which runs diverged (and where); ``all_diverged`` when every run did (then no trained
    model is left to analyse, but sizes, costs and the curves up to the divergence still are)."""
    diverged = [r for r in records if not r.completed]
    return {"runs": len(records), "diverged": [r.model for r in diverged],
            "diverged_at": {r.model: r.diverged_at for r in diverged},
            "all_diverged": bool(records) and len(diverged) == len(records)}


def timing_summary(records: Sequence[RunRecord]) -> dict:
    """Wall time of an experiment's runs and the share spent in training steps (the rest:
    evaluation, the final test pass, inference timing, checkpoints); analyses are not included."""
    train = sum(r.timing.get("train_s") or 0.0 for r in records)
    total = sum(r.timing.get("total_s") or 0.0 for r in records)
    return {"runs": len(records), "train_s": train, "total_s": total, "train_share": train / total if total else None,
            "min_run_train_share": min((r.timing.get("train_share") or 0.0 for r in records), default=None)}


def first_seed(records: list[RunRecord]) -> list[RunRecord]:
    """One run per variant: the lowest seed of each (group, variant), in first-seen order."""
    best: dict[tuple[str, str], RunRecord] = {}
    for r in records:
        if (r.group, r.variant) not in best or r.seed < best[(r.group, r.variant)].seed:
            best[(r.group, r.variant)] = r
    return list(best.values())


def train_plateau(runs: Sequence[RunRecord]) -> dict:
    """The engine's plateau verdicts of the clean training-accuracy curve, counted over runs."""
    statuses = [convergence_of(r).get("train_eval_acc", {}).get("status", "missing") for r in runs]
    improving = [convergence_of(r).get("train_eval_acc", {}).get("improvement") for r in runs]
    return {"statuses": statuses, "improvement_last_window": improving,
            "plateaued": sum(s in ("converged", "declining") for s in statuses), "runs": len(runs)}


def variant_numbers(runs: Sequence[RunRecord]) -> dict:
    """One variant over its seeds: every metric as mean / std / 95 % interval over the runs that
    finished (a diverged run's last numbers are from before the divergence, not results), its size
    and cost, lr and init as run, and the plateau verdicts of the training and validation curves."""
    first = runs[0]
    return {**summarise_runs([r for r in runs if r.completed]), "seeds": [r.seed for r in runs],
            "status": [r.status for r in runs], "diverged": sum(not r.completed for r in runs),
            "models": [r.model for r in runs], "params": first.params["total"],
            "mflops": first.flops_per_image / 1e6, "lr": first.config.get("lr"), "init": first.init,
            "train_plateau": train_plateau(runs),
            "val_plateau": [convergence_of(r).get("val_acc", {}).get("status", "missing") for r in runs],
            "train_share": [r.timing.get("train_share") for r in runs]}


DIVERGED = "diverged (no finished run to compare)"


def difference(a: Sequence[RunRecord], b: Sequence[RunRecord], metrics: Sequence[str] = DIFF_METRICS) -> dict:
    """``a - b`` for each metric over the finished runs, with its 95 % interval (paired by seed
    where both sides finished the same seeds) and verdict; :data:`DIVERGED` where a side has no
    finished run."""
    a, b = [r for r in a if r.completed], [r for r in b if r.completed]
    out = {}
    for m in metrics:
        d = compare(a, b, METRICS[m])
        out[m] = {**d.as_dict(), "verdict": verdict(d) if a and b else DIVERGED}
    return out


def _direction(diff: dict, better: str, worse: str) -> str:
    """Words for a training-accuracy difference ``a - b``: ``better`` / ``worse`` when real."""
    if diff["verdict"] != "real":
        return diff["verdict"]
    return better if diff["mean_difference"] > 0 else worse


def _finite(v: Any) -> bool:
    """A number to print (analysis dicts hold None where JSON has no NaN)."""
    return isinstance(v, (int, float)) and math.isfinite(v)


def _pp(diff: dict) -> str:
    if not _finite(diff["mean_difference"]):
        return "–"
    text = f"{100 * diff['mean_difference']:+.2f} pp"
    if _finite(diff["ci95_low"]):
        text += f" [{100 * diff['ci95_low']:+.2f}, {100 * diff['ci95_high']:+.2f}]"
    return text


# -------------------------------------------------------------------------------- depth
def depth_numbers(records: Sequence[RunRecord], plain: str = "plain", residual: str = "residual",
                  controls: Sequence[tuple[tuple[str, str], tuple[str, str]]] = ()) -> dict:
    """Plain vs residual over depth (``group`` = family, ``variant`` = number of weighted layers).

    The degradation test uses the depths both families ran: for every pair of them, deeper minus
    shallower training accuracy in each family (a real negative difference = the deeper net ends
    at a higher training error); then residual minus plain at each depth. ``controls``: further
    ``(a, b)`` variant pairs to compare (e.g. zero-init residual vs not). ``answers`` puts this in
    the README's words: ``plain_degrades`` is "yes" when some deeper plain net ends at a really
    higher training error (interval below zero), "no: ..." when every deeper one is really lower,
    "no real increase ..." when none is really higher and some are within noise, else "not enough
    seeds to tell" (or "every compared variant diverged"); ``residual_removes_it`` ("yes" / "no" /
    "partly ...") is asked only where plain degrades: "yes" needs no deeper residual net to be
    really worse and the residual net to be really better than the plain one at the deepest depth
    that degraded. Diverged runs are left out of every statistic (see :func:`difference`).
    """
    groups = by_variant(records)
    variants = {f"{g}/{v}": variant_numbers(runs) for (g, v), runs in groups.items()}
    depths = {fam: sorted(int(v) for g, v in groups if g == fam) for fam in (plain, residual)}
    shared = sorted(set(depths[plain]) & set(depths[residual]))
    deeper: dict[str, list[dict]] = {}
    for fam in (plain, residual):
        rows = []
        for i, d1 in enumerate(shared):
            for d2 in shared[i + 1:]:
                diff = difference(groups[(fam, str(d2))], groups[(fam, str(d1))])
                rows.append({"deeper": d2, "shallower": d1, "difference": diff,
                             "direction": _direction(diff[PRIMARY], "deeper reaches a lower training error",
                                                     "deeper reaches a higher training error")})
        deeper[fam] = rows
    res_vs_plain = []
    for d in shared:
        diff = difference(groups[(residual, str(d))], groups[(plain, str(d))])
        res_vs_plain.append({"depth": d, "difference": diff,
                             "direction": _direction(diff[PRIMARY], "residual reaches a lower training error",
                                                     "residual reaches a higher training error")})
    control_rows = [{"a": "/".join(a), "b": "/".join(b), "difference": difference(groups[a], groups[b])}
                    for a, b in controls if a in groups and b in groups]
    plateau = {k: v["train_plateau"] for k, v in variants.items()}
    return {"primary_metric": PRIMARY, "families": {plain: depths[plain], residual: depths[residual]},
            "degradation_depths": shared, "variants": variants, "deeper_vs_shallower": deeper,
            "residual_vs_plain": res_vs_plain, "controls": control_rows,
            "all_train_curves_plateaued": all(p["plateaued"] == p["runs"] for p in plateau.values()),
            "answers": _depth_answers(deeper[plain], deeper[residual], res_vs_plain)}


def _depth_answers(plain_rows: list[dict], res_rows: list[dict], res_vs_plain: list[dict]) -> dict:
    higher, lower = "deeper reaches a higher training error", "deeper reaches a lower training error"

    def verdict_of(rows: list[dict]) -> str:
        dirs = [r["direction"] for r in rows]
        if not dirs:
            return "not measured"
        if higher in dirs:
            return "yes"
        if all(d == lower for d in dirs):
            return "no: every deeper net reaches a lower training error"
        if all(d == DIVERGED for d in dirs):
            return "every compared variant diverged"
        if all(d in (lower, "within noise") for d in dirs):
            return "no real increase (some differences within noise)"
        return "not enough seeds to tell"

    plain_degrades = verdict_of(plain_rows)
    residual_degrades = verdict_of(res_rows)
    if plain_degrades != "yes":
        removes = "not applicable (no real degradation of the plain nets)"
    elif residual_degrades == "yes":
        removes = "no"
    else:
        worse = {(r["deeper"], r["shallower"]) for r in plain_rows if r["direction"] == higher}
        deepest = max(d for d, _ in worse)
        rescued = next((r for r in res_vs_plain if r["depth"] == deepest), None)
        removes = "yes" if rescued and rescued["direction"] == "residual reaches a lower training error" else \
            "partly (no deeper residual net is worse, but residual vs plain at the deepest depth is not a real gain)"
    return {"plain_degrades": plain_degrades, "residual_degrades": residual_degrades, "residual_removes_it": removes,
            "plain": [f"plain-{r['deeper']} vs plain-{r['shallower']}: training accuracy {_pp(r['difference'][PRIMARY])}"
                      f" ({r['direction']})" for r in plain_rows],
            "residual": [f"resnet-{r['deeper']} vs resnet-{r['shallower']}: training accuracy "
                         f"{_pp(r['difference'][PRIMARY])} ({r['direction']})" for r in res_rows],
            "residual_vs_plain": [f"depth {r['depth']}: residual - plain training accuracy "
                                  f"{_pp(r['difference'][PRIMARY])} ({r['direction']})" for r in res_vs_plain]}


# ------------------------------------------------------------------------- lr pilots
def choose_lr(pilots: Sequence[RunRecord]) -> dict:
    """The pilot sweep's choice per (group, variant): the lr with the highest *final validation*
    accuracy (the test set is never read); ties go to the smaller lr. Where no candidate finished,
    the smallest lr is taken and ``no_candidate_finished`` says so."""
    table: dict[str, dict] = {}
    for r in pilots:
        table.setdefault(f"{r.group}/{r.variant}", {})[r.config["lr"]] = r
    out = {}
    for key, by_lr in table.items():
        done = {lr: r.summary.final_val_acc for lr, r in by_lr.items() if r.summary.final_val_acc is not None}
        chosen = max(sorted(done), key=lambda lr: done[lr]) if done else min(by_lr)
        out[key] = {"chosen_lr": chosen, "no_candidate_finished": not done,
                    "candidates": {f"{lr:g}": {"model": r.model, "status": r.status,
                                               "final_val_acc": r.summary.final_val_acc,
                                               "final_train_acc": r.summary.final_train_acc,
                                               "diverged_at": r.diverged_at} for lr, r in sorted(by_lr.items())}}
    return {"rule": "highest final validation accuracy (ties: smaller lr); test set not read", "choices": out}


# ------------------------------------------------------------------- controls and kernels
def controls_numbers(records: Sequence[RunRecord], pairs: Sequence[tuple[tuple[str, str], tuple[str, str]]],
                     reference: Sequence[RunRecord] = ()) -> dict:
    """Variants over seeds and the differences of ``pairs`` (keys ``(group, variant)``), the
    ``reference`` runs (e.g. the BatchNorm nets of the depth study) included as variants too."""
    groups = by_variant([*records, *reference])
    return {"variants": {f"{g}/{v}": variant_numbers(runs) for (g, v), runs in groups.items()},
            "differences": [{"a": "/".join(a), "b": "/".join(b), "difference": difference(groups[a], groups[b])}
                            for a, b in pairs if a in groups and b in groups]}


def kernel_numbers(records: Sequence[RunRecord], reference: str = "3x3") -> dict:
    """Kernel variants over seeds and each one minus the ``reference`` variant."""
    groups = by_variant(records)
    ref = next((k for k in groups if k[1] == reference), None)
    diffs = [{"a": v, "b": reference, "difference": difference(runs, groups[ref], ("test_acc", "final_val_acc",
                                                                                    "final_train_acc", "train_time_s"))}
             for (g, v), runs in groups.items() if ref is not None and (g, v) != ref]
    return {"variants": {v: variant_numbers(runs) for (g, v), runs in groups.items()}, "vs_reference": diffs}


# ---------------------------------------------------------------------------- gradients
def grad_view(record: RunRecord) -> RunRecord:
    """The record with projection-shortcut weights left out of its gradient statistics, so layer
    index = position along the main path (same x axis for plain and residual nets)."""
    g = record.grad_stats
    keep = [i for i, n in enumerate(g.names) if "shortcut" not in n]
    return dataclasses.replace(record, grad_stats=GradStats(
        names=[g.names[i] for i in keep], step=g.step, l2=[[row[i] for i in keep] for row in g.l2],
        mean_abs=[[row[i] for i in keep] for row in g.mean_abs]))


def gradient_numbers(record: RunRecord) -> dict:
    """First/last layer gradient ratio at initialisation and during training."""
    g = grad_view(record).grad_stats
    if not g.l2:
        return {"samples": 0}
    norms = np.asarray(g.l2, dtype=float)
    summ = gradient_flow_summary(g.names, np.where(np.isfinite(norms), norms, np.nan))
    ratio = summ["first_last_ratio"]
    later = ratio[1:][np.isfinite(ratio[1:])]
    return {"samples": int(norms.shape[0]), "ratio_first_last_init": float(ratio[0]),
            "ratio_first_last_median_training": float(np.median(later)) if later.size else None,
            "norm_first_init": float(norms[0, 0]), "norm_last_init": float(norms[0, -1]),
            "non_finite_samples": int((~np.all(np.isfinite(norms), axis=1)).sum())}


# ------------------------------------------------------------------------------ markdown
def _mean_pm(s: dict, scale: float = 100.0, unit: str = " %") -> str:
    if not _finite(s["mean"]):
        return "–"
    if not _finite(s["half_width"]):
        return f"{scale * s['mean']:.2f}{unit}"
    return f"{scale * s['mean']:.2f} ± {scale * s['half_width']:.2f}{unit}"


def timing_markdown(t: dict) -> str:
    share = "–" if t["train_share"] is None else f"{100 * t['train_share']:.0f} %"
    return f"{t['runs']} runs, {t['total_s'] / 60:.1f} min of wall time, {share} of it in training steps."


def variants_markdown(variants: dict) -> str:
    """One row per variant: mean ± 95 % half-width over seeds."""
    rows = []
    for key, v in variants.items():
        tp = v["train_plateau"]
        rows.append([key, len(v["seeds"]), f"{v['params']:,}", f"{v['mflops']:.1f}", f"{v['lr']:g}",
                     _mean_pm(v["final_train_acc"]), _mean_pm(v["final_train_loss"], 1.0, ""),
                     _mean_pm(v["final_val_acc"]), _mean_pm(v["test_acc"]), _mean_pm(v["train_time_s"], 1.0, " s"),
                     f"{tp['plateaued']}/{tp['runs']}", ", ".join(sorted(set(v["status"])))])
    return markdown_table(["variant", "seeds", "params", "MFLOPs/img", "lr", "train acc (clean)", "train loss",
                           "val acc", "test acc", "train time", "train curve plateaued", "status"], rows)


def differences_markdown(rows: Sequence[dict], metrics: Sequence[str] = ("final_train_acc", "test_acc")) -> str:
    table = [[r["a"], r["b"], *(f"{_pp(r['difference'][m])} ({r['difference'][m]['verdict']})" for m in metrics)]
             for r in rows]
    return markdown_table(["a", "b", *(f"{m}: a − b [95 % CI]" for m in metrics)], table)


def kernel_markdown(analysis: dict) -> str:
    pm = analysis["param_matching"]
    lines = ["# Kernel size at equal parameters\n",
             f"Target: {pm['target_params']:,} parameters ({pm['reference']}), tolerance ±{100 * pm['tolerance']:.0f} %, "
             f"worst gap {100 * pm['max_relative_gap']:.2f} %. Mean ± 95 % half-width over seeds. "
             f"{timing_markdown(analysis['timing'])}\n",
             variants_markdown(analysis["over_seeds"]["variants"]), "",
             differences_markdown(analysis["over_seeds"]["vs_reference"], ("test_acc", "final_val_acc")), "",
             "ERF of the first seed's trained net (centre unit of the last conv before the last pool) beside a "
             f"flat box over its theoretical RF; {analysis['analysis_images']} test images.\n"]
    rows = []
    for kernel, t in analysis["variants"].items():
        e = t["erf_trained"]
        if e is None:
            rows.append([kernel, f"{t['theoretical_rf']} px", "–", "–", "–", t["status"]])
            continue
        rows.append([kernel, f"{t['theoretical_rf']} px",
                     " / ".join(f"{e['erf_extent'][m]} vs {e['flat_box_extent'][m]}" for m in ("0.5", "0.9", "0.95")),
                     f"{e['erf_rms_radius']:.1f} vs {e['flat_box_rms_radius']:.1f} px ({e['rms_ratio']:.2f})",
                     f"{100 * e['erf_mass_in_half_rf']:.0f} % vs {100 * e['flat_box_mass_in_half_rf']:.0f} %", e["shape"]])
    lines.append(markdown_table(["kernel", "theoretical RF", "50 / 90 / 95 % square: ERF vs flat box (px)",
                                         "RMS radius: ERF vs box (ratio)", "mass in central half-RF square",
                                         "shape"], rows))
    return "\n".join(lines) + "\n"


def depth_markdown(analysis: dict) -> str:
    a = analysis["answers"]
    lines = ["# Depth: plain vs residual\n",
             f"Training accuracy = clean (eval-mode) accuracy on a fixed training subset at the end of training. "
             f"Every training curve plateaued: {analysis['all_train_curves_plateaued']}. Mean ± 95 % half-width "
             f"over seeds; differences paired by seed. {timing_markdown(analysis['timing'])}\n",
             variants_markdown(analysis["variants"]), "",
             f"**Deeper plain nets reach a higher training error:** {a['plain_degrades']}. "
             f"**Residual nets remove it:** {a['residual_removes_it']}.\n",
             *(f"- {s}" for s in a["plain"] + a["residual"] + a["residual_vs_plain"]), "",
             differences_markdown(analysis["controls"])]
    return "\n".join(lines) + "\n"


def nobn_markdown(analysis: dict) -> str:
    rows = [[k, f"{c['chosen_lr']:g}", ", ".join(f"{lr}: " + ("diverged" if v["final_val_acc"] is None else
                                                               f"{100 * v['final_val_acc']:.1f} %")
                                                 for lr, v in c["candidates"].items())]
            for k, c in analysis["lr_choice"]["choices"].items()]
    return "\n".join([
        "# Without normalisation: residual connections vs initialisation\n",
        f"Learning rate per net and init, chosen by pilot runs on validation ({analysis['lr_choice']['rule']}). "
        f"Pilots: {timing_markdown(analysis['timing']['pilots'])} Finals: {timing_markdown(analysis['timing']['finals'])}\n",
        markdown_table(["net/init", "chosen lr", "final val acc per pilot lr"], rows), "",
        variants_markdown(analysis["variants"]), "", differences_markdown(analysis["differences"])]) + "\n"
