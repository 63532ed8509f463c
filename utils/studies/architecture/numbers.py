"""The numbers of the architecture study (task 2) that follow from run records alone.

Pure functions of :class:`~utils.engine.records.RunRecord` lists (no models, no data), tested on
synthetic records (``tests/fakes.py``). Every comparison is protocol v3's
(:func:`utils.comparison_utils.difference_with_verdict`: paired by seed; test accuracy by a paired
bootstrap over seeds and test images, other metrics by the paired t interval; "real" iff the 95 %
interval excludes zero). Which groups and variants are compared is passed in by the script:
nothing here knows the script's names.

"Training accuracy" is the engine's clean (eval-mode) accuracy on a fixed training subset
(``final_train_acc`` = the last point of ``train_eval_acc``); training error = 1 - it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from utils.analysis.statistics import difference, seed_summary
from utils.comparison_utils import (by_variant, convergence_of, difference_with_verdict, format_difference,
                                    format_mean_ci, grad_rms_of, variant_key, variant_numbers, verdict)
from utils.engine.markdown import markdown_table
from utils.engine.records import RunRecord

Key = tuple[str, str]   # (group, variant)
TRAIN_FIT = ("final_train_acc", "final_train_loss", "test_acc")
KERNEL_METRICS = ("test_acc", "final_train_acc", "final_val_acc", "gap")


# --------------------------------------------------------------------------------- runs
def divergence_report(records: Sequence[RunRecord]) -> dict:
    """Which runs diverged (and where); ``all_diverged`` when every run did."""
    diverged = [r for r in records if not r.completed]
    return {"runs": len(records), "diverged": [r.model for r in diverged],
            "diverged_at": {r.model: r.diverged_at for r in diverged},
            "all_diverged": bool(records) and len(diverged) == len(records)}


def first_seed(records: Sequence[RunRecord]) -> list[RunRecord]:
    """One run per variant: the lowest seed of each (group, variant), in first-seen order."""
    best: dict[Key, RunRecord] = {}
    for r in records:
        if (r.group, r.variant) not in best or r.seed < best[(r.group, r.variant)].seed:
            best[(r.group, r.variant)] = r
    return list(best.values())


def train_curve_verdicts(runs: Sequence[RunRecord]) -> dict:
    """Protocol-v3 plateau verdicts of the clean training-accuracy curves of ``runs``: statuses,
    gains with their SE, window sizes, the anneal flag, and how many runs had flattened
    (``converged`` / ``flat`` / ``declining``: no gain the curve's noise can tell from zero)."""
    verdicts = [convergence_of(r).get("train_eval_acc", {}) for r in runs]
    statuses = [v.get("status", "missing") for v in verdicts]
    return {"statuses": statuses, "gain": [v.get("improvement") for v in verdicts],
            "gain_se": [v.get("improvement_se") for v in verdicts],
            "window_points": [v.get("window_points") for v in verdicts],
            "anneal_in_window": [v.get("anneal_in_window") for v in verdicts],
            "flattened": sum(bool(v.get("plateaued")) for v in verdicts), "runs": len(runs)}


def _format(d: dict, metric: str) -> str:
    """A difference in pp for accuracies, in nats for losses."""
    return format_difference(d, 1.0, "") if "loss" in metric else format_difference(d)


def _entry(a: str, b: str, diff: dict, metric: str) -> dict:
    return {"a": a, "b": b, "difference": diff, "verdict": diff[metric]["verdict"],
            "text": f"{a} − {b}: {metric} {_format(diff[metric], metric)} ({diff[metric]['verdict']})"}


def compare_pairs(groups: Mapping[Key, Sequence[RunRecord]], pairs: Sequence[tuple[Key, Key]],
                  metrics: Sequence[str], headline: str) -> list[dict]:
    """``a - b`` for each pair present in ``groups``, every metric with its verdict; ``text`` reads
    the ``headline`` metric."""
    return [{**_entry(variant_key(*a), variant_key(*b), difference_with_verdict(groups[a], groups[b], metrics),
                      headline), "variant_a": a[1], "variant_b": b[1]}
            for a, b in pairs if a in groups and b in groups]


# ---------------------------------------------------------------------------- degradation
@dataclass(frozen=True)
class DepthDesign:
    """Where the depth study's runs sit: the two families' groups, the weighted-layer count of
    each (group, variant), and labelled controls ``(a, b)`` to compare (e.g. zero-init vs not)."""

    plain: str
    residual: str
    depth_of: Mapping[Key, int]
    controls: Sequence[tuple[Key, Key]] = field(default_factory=tuple)

    def family(self, records: Sequence[RunRecord], group: str) -> dict[int, list[RunRecord]]:
        out: dict[int, list[RunRecord]] = {}
        for key, runs in by_variant(records).items():
            if key[0] == group and key in self.depth_of:
                out[self.depth_of[key]] = runs
        return dict(sorted(out.items()))

    def key(self, group: str, depth: int) -> Key:
        return next(k for k, d in self.depth_of.items() if k[0] == group and d == depth)


def depth_numbers(records: Sequence[RunRecord], design: DepthDesign) -> dict:
    """Degradation as He et al. (2016) read it, on training error: at every pair of depths that
    both families ran, deeper minus shallower training accuracy per family, and residual minus
    plain at each depth (paired by seed, t interval over seeds; test accuracy beside it with the
    bootstrap interval). ``answers``: ``plain_degrades`` is "yes" when some deeper plain net has
    a really lower training accuracy; ``residual_removes_it`` "yes" when no deeper residual net
    is really worse and residual beats plain really at the deepest degraded depth. The plateau
    verdicts say whether the training curves had flattened, which the degradation reading needs.
    """
    groups = by_variant(records)
    plain, res = design.family(records, design.plain), design.family(records, design.residual)
    shared = sorted(set(plain) & set(res))
    deeper = {}
    for name, fam in ((design.plain, plain), (design.residual, res)):
        pairs = [((design.key(name, d2)), design.key(name, d1)) for i, d1 in enumerate(shared) for d2 in shared[i + 1:]]
        deeper[name] = compare_pairs(groups, pairs, TRAIN_FIT, "final_train_acc")
    vs = compare_pairs(groups, [(design.key(design.residual, d), design.key(design.plain, d)) for d in shared],
                       TRAIN_FIT, "final_train_acc")
    controls = compare_pairs(groups, design.controls, TRAIN_FIT, "final_train_acc")
    depth_of_key = {variant_key(*k): d for k, d in design.depth_of.items()}
    for row in [*deeper[design.plain], *deeper[design.residual], *vs, *controls]:
        row["depth_a"], row["depth_b"] = depth_of_key.get(row["a"]), depth_of_key.get(row["b"])
    variants = {variant_key(*k): {**variant_numbers(runs), "depth": design.depth_of.get(k),
                                  "train_curve": train_curve_verdicts(runs)} for k, runs in groups.items()}
    flattened = {k: v["train_curve"]["flattened"] == v["train_curve"]["runs"] for k, v in variants.items()}
    return {"primary_metric": "final_train_acc", "degradation_depths": shared,
            "families": {design.plain: sorted(plain), design.residual: sorted(res)}, "variants": variants,
            "deeper_vs_shallower": deeper, "residual_vs_plain": vs, "controls": controls,
            "train_curves_flattened": flattened, "all_train_curves_flattened": all(flattened.values()),
            "answers": {**depth_answers(deeper[design.plain], deeper[design.residual], vs),
                        "curves_not_flattened": [k for k, ok in flattened.items() if not ok],
                        "reading": "at convergence" if all(flattened.values()) else
                        "at the end of the budget: the listed training curves had not flattened "
                        "(v3 verdict on train_eval_acc), so the differences are not He et al.'s at convergence"}}


def _sign(entry: dict) -> int:
    """+1 / -1 for a real positive / negative training-accuracy difference, 0 within noise."""
    d = entry["difference"]["final_train_acc"]
    if d["verdict"] != "real":
        return 0
    return 1 if d["mean_difference"] > 0 else -1


def depth_answers(plain_rows: list[dict], res_rows: list[dict], res_vs_plain: list[dict]) -> dict:
    def degrades(rows: list[dict]) -> str:
        if not rows:
            return "not measured"
        if all(r["verdict"] not in ("real", "within noise") for r in rows):
            return "no complete pair to compare"
        signs = [_sign(r) for r in rows]
        if -1 in signs:
            return "yes"
        return "no: every deeper net fits really better" if all(s == 1 for s in signs) else \
            "no real increase in training error (some differences within noise)"

    plain, residual = degrades(plain_rows), degrades(res_rows)
    if plain != "yes":
        removes = "not applicable (no real degradation of the plain nets)"
    elif residual == "yes":
        removes = "no"
    else:
        worst = max((r for r in plain_rows if _sign(r) == -1), key=lambda r: r["depth_a"])
        at = next((r for r in res_vs_plain if r["b"] == worst["a"]), None)
        removes = "yes" if at is not None and _sign(at) == 1 else \
            "partly (no deeper residual net fits worse, but residual vs plain at that depth is within noise)"
    return {"plain_degrades": plain, "residual_degrades": residual, "residual_removes_it": removes,
            "lines": [r["text"] for r in plain_rows + res_rows + res_vs_plain]}


# -------------------------------------------------------------------------- gradient flow
def gradient_rms(record: RunRecord, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """``(steps, rms)`` of the tensors ``names`` (in that order): per-parameter gradient RMS
    (``grad_rms_of``), ``(samples, len(names))``; None without gradient samples."""
    g = grad_rms_of(record)
    if g["rms"] is None:
        return None
    col = {n: i for i, n in enumerate(g["names"])}
    rms = np.asarray(g["rms"], dtype=float)[:, [col[n] for n in names]]
    return np.asarray(record.grad_stats.step[:rms.shape[0]], dtype=float), rms


def log10_first_last(rms: np.ndarray) -> np.ndarray:
    """log10(RMS of the first tensor / RMS of the last) per sample; NaN where either is zero."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.log10(rms[:, 0] / rms[:, -1])
    return np.where(np.isfinite(out), out, np.nan)


def gradient_flow_numbers(records: Sequence[RunRecord], main_path: Mapping[str, Sequence[str]],
                          depth_of: Mapping[Key, int] | None = None) -> dict:
    """Per variant, over seeds: log10 of the first/last main-path conv gradient RMS at step 0 (at
    initialisation) and its median over the rest of training. ``main_path``: model name -> its
    conv weights along the main path, input side first (shortcuts left out, so plain and residual
    nets line up). With ``depth_of``, a least-squares slope of the step-0 log10 ratio against
    depth per group: the per-layer growth factor ``10 ** slope`` (Yang et al. 2019 predict
    geometric growth towards the input for BN nets at initialisation)."""
    out: dict[str, dict] = {}
    for key, runs in by_variant(records).items():
        init, later = [], []
        for r in runs:
            got = gradient_rms(r, main_path[r.model]) if r.model in main_path else None
            if got is None:
                continue
            ratio = log10_first_last(got[1])
            init.append(ratio[0])
            later.append(float(np.nanmedian(ratio[1:])) if np.isfinite(ratio[1:]).any() else math.nan)
        out[variant_key(*key)] = {"group": key[0], "variant": key[1],
                                  "depth": depth_of.get(key) if depth_of else None,
                                  "log10_first_last_init": seed_summary(init).as_dict(),
                                  "log10_first_last_median_training": seed_summary(later).as_dict(),
                                  "per_seed_init": init}
    slopes = {}
    if depth_of:
        for group in sorted({v["group"] for v in out.values()}):
            pts = [(v["depth"], x) for v in out.values() if v["group"] == group and v["depth"] is not None
                   for x in v["per_seed_init"] if math.isfinite(x)]
            if len({d for d, _ in pts}) >= 2:
                slope = float(np.polyfit([d for d, _ in pts], [x for _, x in pts], 1)[0])
                slopes[group] = {"log10_per_layer": slope, "factor_per_layer": 10 ** slope, "points": len(pts)}
    return {"variants": out, "init_growth_with_depth": slopes,
            "rule": "per-parameter RMS ||g||/sqrt(numel) of the first and the last conv on the main path"}


def tracked_trajectories(record: RunRecord, groups: Mapping[str, Sequence[str]]) -> dict[str, list[float]]:
    """Mean over each group of tracked parameters (``groups``: label -> parameter names) of their
    mean |value| at every sampled step: e.g. the last-BN γ of each stage's residual branches."""
    g = record.grad_stats
    if not g.param_mean_abs:
        return {}
    arr = np.asarray(g.param_mean_abs, dtype=float)
    col = {n: i for i, n in enumerate(g.param_names)}
    return {label: arr[:, [col[n] for n in names]].mean(axis=1).tolist() for label, names in groups.items()
            if all(n in col for n in names)}


def gamma_numbers(runs_by_key: Mapping[str, Sequence[RunRecord]], groups: Mapping[str, Mapping[str, Sequence[str]]],
                  at: Sequence[float] = (0.0, 0.1, 0.25, 0.5, 1.0)) -> dict:
    """Mean |γ| of the residual branches' last BN per stage at fractions ``at`` of training, mean
    and range over seeds, per variant (``runs_by_key``: label -> runs; ``groups``: model name ->
    stage label -> parameter names)."""
    out = {}
    for label, runs in runs_by_key.items():
        per_stage: dict[str, list[list[float]]] = {}
        for r in runs:
            for stage, traj in tracked_trajectories(r, groups.get(r.model, {})).items():
                idx = [min(len(traj) - 1, round(f * (len(traj) - 1))) for f in at]
                per_stage.setdefault(stage, []).append([traj[i] for i in idx])
        out[label] = {stage: {f"{f:g}": {"mean": float(np.mean([v[j] for v in vals])),
                                         "min": float(np.min([v[j] for v in vals])),
                                         "max": float(np.max([v[j] for v in vals]))}
                              for j, f in enumerate(at)} | {"seeds": len(vals)}
                      for stage, vals in per_stage.items()}
    return {"fractions_of_training": list(at), "variants": out}


# ----------------------------------------------------------------------------------- ERF
def erf_numbers(rows: Sequence[dict], measures: Sequence[str] = ("rms_ratio", "erf_rms_radius",
                                                                  "erf_mass_in_half_rf")) -> dict:
    """Trained minus initialisation of each ERF measure, paired by seed (t interval over seeds).
    ``rows``: one per (variant, seed) with ``variant``, ``seed``, ``init`` and ``trained`` dicts of
    :func:`utils.analysis.erf.erf_vs_flat_box` (``trained`` None where the run diverged)."""
    out: dict[str, dict] = {}
    for v in dict.fromkeys(r["variant"] for r in rows):
        mine = sorted((r for r in rows if r["variant"] == v and r["init"] and r["trained"]), key=lambda r: r["seed"])
        entry = {"seeds": [r["seed"] for r in mine], "theoretical_rf": mine[0]["init"]["theoretical_rf"] if mine else None}
        for m in measures:
            a, b = [r["trained"][m] for r in mine], [r["init"][m] for r in mine]
            d = difference(a, b, paired=True)
            entry[m] = {"init": seed_summary(b).as_dict(), "trained": seed_summary(a).as_dict(),
                        "trained_minus_init": {**d.as_dict(), "verdict": verdict(d)}}
        out[v] = entry
    return out


# ---------------------------------------------------------------------------- feature maps
def feature_map_summary(per_seed: Sequence[Mapping[str, Mapping[str, float]]]) -> dict:
    """Per probed layer over seeds: the mean activation (over images, channels and positions;
    mean and 95 % interval over seeds), the spread over images (mean over seeds of the per-image
    5-95 % range) and the share of exact zeros. ``per_seed``: one dict per seed, layer -> the
    statistics :func:`utils.studies.architecture.analysis.activation_stats` returns."""
    layers = list(dict.fromkeys(k for s in per_seed for k in s))
    out = {}
    for layer in layers:
        rows = [s[layer] for s in per_seed if layer in s]
        out[layer] = {"mean": seed_summary([r["mean"] for r in rows]).as_dict(),
                      "image_p05": float(np.mean([r["image_p05"] for r in rows])),
                      "image_p95": float(np.mean([r["image_p95"] for r in rows])),
                      "image_std": float(np.mean([r["image_std"] for r in rows])),
                      "zero_share": float(np.mean([r["zero_share"] for r in rows])),
                      "relative_depth": rows[0]["relative_depth"], "images": rows[0]["images"], "seeds": len(rows)}
    return out


# --------------------------------------------------------------------- kernels, controls
def kernel_numbers(records: Sequence[RunRecord], reference: Key) -> dict:
    """Kernel variants over seeds and each one minus ``reference`` (test accuracy by the bootstrap
    over seeds and test images; training fit and the train-validation gap by the paired t)."""
    groups = by_variant(records)
    pairs = [(k, reference) for k in groups if k != reference]
    return {"variants": {variant_key(*k): {**variant_numbers(runs), "variant": k[1],
                                           "train_curve": train_curve_verdicts(runs)} for k, runs in groups.items()},
            "reference": variant_key(*reference), "reference_variant": reference[1],
            "vs_reference": compare_pairs(groups, pairs, KERNEL_METRICS, "test_acc")}


def controls_numbers(records: Sequence[RunRecord], pairs: Sequence[tuple[Key, Key]]) -> dict:
    """Variants over seeds and the differences of ``pairs`` on training fit and test accuracy."""
    groups = by_variant(records)
    return {"variants": {variant_key(*k): {**variant_numbers(runs), "train_curve": train_curve_verdicts(runs)}
                         for k, runs in groups.items()},
            "differences": compare_pairs(groups, pairs, TRAIN_FIT, "test_acc")}


# ------------------------------------------------------------------------------ markdown
def variants_markdown(variants: Mapping[str, dict]) -> str:
    rows = []
    for key, v in variants.items():
        tc = v.get("train_curve", {})
        rows.append([key, len(v["seeds"]), f"{v['params']:,}", f"{v['lr']:g}", format_mean_ci(v["final_train_acc"]),
                     format_mean_ci(v["final_val_acc"]), format_mean_ci(v["test_acc"]),
                     f"{tc.get('flattened', '–')}/{tc.get('runs', '–')}", ", ".join(sorted(set(v["status"])))])
    return markdown_table(["variant", "seeds", "params", "lr", "train acc (clean)", "val acc", "test acc",
                           "train curve flattened", "status"], rows)


def differences_markdown(rows: Sequence[dict], metrics: Sequence[str]) -> str:
    table = [[r["a"], r["b"], *(f"{_format(r['difference'][m], m)} ({r['difference'][m]['verdict']})"
                                for m in metrics)] for r in rows]
    return markdown_table(["a", "b", *(f"{m}: a − b [95 % CI]" for m in metrics)], table)


def selections_markdown(selections: Mapping[str, dict]) -> str:
    rows = [[k, f"{s['chosen_lr']:g}", ", ".join(f"{lr}: {'diverged' if v is None else f'{100 * v:.1f} %'}"
                                                  for lr, v in s["scores"].items()),
             s["edge"] or "interior", "yes" if s["hit_cap"] else "no"] for k, s in selections.items()]
    return markdown_table(["variant", "chosen lr", "pilot val acc per lr", "winner at edge", "hit cap"], rows)


def kernel_markdown(a: dict) -> str:
    pm = a["param_matching"]
    erf_rows = [[v, e["theoretical_rf"], format_mean_ci(e["rms_ratio"]["init"], 1.0, ""),
                 format_mean_ci(e["rms_ratio"]["trained"], 1.0, ""),
                 f"{format_difference(e['rms_ratio']['trained_minus_init'], 1.0, '')} "
                 f"({e['rms_ratio']['trained_minus_init']['verdict']})"] for v, e in a["erf"]["variants"].items()]
    return "\n".join([
        "# Kernel size at equal parameters\n",
        f"Target {pm['target_params']:,} parameters ({pm['reference']}), worst gap {100 * pm['max_relative_gap']:.2f} %. "
        "Mean ± 95 % t half-width over seeds; differences paired by seed (test: bootstrap over seeds and test "
        "images). A difference is real iff its interval excludes zero.\n",
        variants_markdown(a["over_seeds"]["variants"]), "",
        differences_markdown(a["over_seeds"]["vs_reference"], KERNEL_METRICS), "",
        f"ERF on a {a['erf']['canvas_px']}-px canvas of {a['erf']['tiles']}² test images ({a['erf']['images']} "
        "canvases): RMS radius of the ERF / that of a flat box over the theoretical RF.\n",
        markdown_table(["variant", "theoretical RF (px)", "ratio at init", "ratio trained", "trained − init"],
                       erf_rows)]) + "\n"


def depth_markdown(a: dict) -> str:
    ans = a["answers"]
    return "\n".join([
        "# Depth: plain vs residual\n",
        "Training accuracy = clean (eval-mode) accuracy on a fixed training subset at the end of training; "
        f"lr per variant chosen on validation (bracketing grid). All training curves flattened: "
        f"{a['all_train_curves_flattened']}.\n",
        markdown_table(["variant", "selection"], [[k, f"lr {s['chosen_lr']:g}, edge {s['edge'] or 'interior'}, "
                                                   f"cap {'hit' if s['hit_cap'] else 'not hit'}"]
                                                  for k, s in a["lr_selection"].items()]), "",
        variants_markdown(a["variants"]), "",
        f"**Deeper plain nets reach a higher training error:** {ans['plain_degrades']}. "
        f"**Residual nets remove it:** {ans['residual_removes_it']}. Read {ans['reading']}"
        + (f" ({', '.join(ans['curves_not_flattened'])})." if ans["curves_not_flattened"] else ".") + "\n",
        *(f"- {s}" for s in ans["lines"]), "",
        differences_markdown(a["controls"], TRAIN_FIT)]) + "\n"


def nobn_markdown(a: dict) -> str:
    return "\n".join([
        "# Without normalisation: residual connections vs initialisation\n",
        selections_markdown(a["lr_selection"]), "", variants_markdown(a["variants"]), "",
        differences_markdown(a["differences"], TRAIN_FIT)]) + "\n"
