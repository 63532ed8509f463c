"""Task 1's own figures: the shared-lr choice, the regularisation ablation (Δ test accuracy and
Δ train-validation gap with 95 % intervals), weight decay's effective learning rate, accuracy vs
training compute, the paired timing, the per-parameter gradient scale per layer and the shuffled-pixel control."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np

from utils.comparison_utils import grad_rms_of, is_number
from utils.engine.records import RunRecord
from utils.visualization_utils import color_markers, palette, save_figure, styled

REGULARISER_LABELS = {"dropout": "dropout", "weight_decay": "weight decay", "augment": "augmentation",
                      "label_smoothing": "label smoothing", "all": "all four"}


@styled
def plot_lr_selection(numbers: dict, path: Path, title: str) -> Path:
    """Final validation accuracy of each model's pilots against the lr, their mean (what chooses)
    and the chosen lr."""
    fig, ax = plt.subplots(figsize=(7.5, 4.6), layout="constrained")
    pilots, chosen = numbers["pilots"], numbers["chosen_lr"]
    for color, (group, cells) in zip(palette(len(pilots)), pilots.items()):
        lrs = sorted(cells, key=float)
        ax.plot([float(v) for v in lrs], [100 * cells[v]["mean"] if is_number(cells[v]["mean"]) else np.nan
                                          for v in lrs], "o-", color=color, label=group.removeprefix("pilot_"))
    scores = numbers["selection"]["scores"]
    lrs = sorted(scores, key=float)
    ax.plot([float(v) for v in lrs], [100 * scores[v] if is_number(scores[v]) else np.nan for v in lrs], "ks-", lw=2,
            label="mean of the three (chooses)")
    ax.axvline(chosen, color="k", ls=":", label=f"chosen lr {chosen:g}")
    ax.set_xscale("log", base=2)
    ax.set_xticks([float(v) for v in lrs], lrs)
    ax.set(xlabel="peak learning rate (log scale)", ylabel="final validation accuracy (%)", title=title)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def _pp_errorbar(d: Mapping, mean_key: str) -> tuple[float, float, float] | None:
    """``d[mean_key]`` in pp with the lengths of its 95 % interval's lower and upper arms (0 where an
    end is missing), or None when there is no mean to draw."""
    if not d or not is_number(d.get(mean_key)):
        return None
    mean = 100 * d[mean_key]
    low = 100 * d["ci95_low"] if is_number(d.get("ci95_low")) else mean
    high = 100 * d["ci95_high"] if is_number(d.get("ci95_high")) else mean
    return mean, mean - low, high - mean


@styled
def plot_regularisation_ablation(rows: Mapping[str, Mapping[str, dict | None]], path: Path, title: str) -> Path:
    """One row per regulariser; left Δ test accuracy, right Δ (clean train − validation) gap, both
    vs the same model without regularisers, in pp with 95 % intervals; MLP and ResNet side by
    side in each row (a model missing from a row was not run with that regulariser)."""
    models = sorted({m for r in rows.values() for m, d in r.items() if d}, key=["MLP", "ResNet"].index)
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.75 * len(rows) + 2), sharey=True, layout="constrained")
    offsets = {m: (i - (len(models) - 1) / 2) * 0.25 for i, m in enumerate(models)}
    for ax, metric, xlabel in ((axes[0], "test_acc", "Δ test accuracy (pp)"),
                               (axes[1], "gap", "Δ train − validation accuracy gap (pp)")):
        for (color, marker), m in zip(color_markers(len(models)), models):
            ys, xs, lo, hi = [], [], [], []
            for y, (reg, r) in enumerate(rows.items()):
                bar = _pp_errorbar((r.get(m) or {}).get(metric), "mean_difference")
                if bar is None:
                    continue
                ys.append(y + offsets[m])
                for values, v in zip((xs, lo, hi), bar):
                    values.append(v)
            ax.errorbar(xs, ys, xerr=[lo, hi], fmt=marker, color=color, capsize=3, ms=7, label=m)
        ax.axvline(0, color="k", lw=0.8)
        ax.set(xlabel=xlabel)
    axes[0].set_yticks(range(len(rows)), [REGULARISER_LABELS.get(k, k) for k in rows])
    axes[0].invert_yaxis()
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, title="model (vs itself unregularised)", fontsize=8, loc="outside lower center",
               ncols=len(models))
    fig.suptitle(title)
    return save_figure(fig, path)


@styled
def plot_effective_lr(curves: Mapping[str, Sequence[dict]], path: Path, title: str) -> Path:
    """Per variant (mean over seeds, min-max band): the norm of the weights before each BatchNorm
    relative to initialisation, and their effective learning rate lr/||w||^2 over training."""
    fig, (ax_w, ax_e) = plt.subplots(1, 2, figsize=(12.5, 4.5), layout="constrained")
    for color, (variant, runs) in zip(palette(len(curves)), curves.items()):
        if not runs:
            continue
        n = min(len(c["epoch"]) for c in runs)
        epoch = np.asarray(runs[0]["epoch"][:n])
        for ax, key in ((ax_w, "weight_norm_rel"), (ax_e, "effective_lr")):
            arr = np.asarray([c[key][:n] for c in runs])
            ax.plot(epoch, arr.mean(axis=0), "o-", ms=3, color=color, label=f"{variant.replace('_', ' ')} (n={len(runs)})")
            ax.fill_between(epoch, arr.min(axis=0), arr.max(axis=0), color=color, alpha=0.2, lw=0)
    ax_w.set(xlabel="epoch", ylabel="‖w‖ / ‖w at init‖ (geometric mean over layers)",
             title="Weight norm of the layers before BatchNorm")
    ax_e.set(xlabel="epoch", ylabel="lr / ‖w‖² (geometric mean over layers)", yscale="log",
             title="Effective learning rate of those layers")
    for ax in (ax_w, ax_e):
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return save_figure(fig, path)


@styled
def plot_accuracy_vs_compute(variants: Mapping[str, dict], path: Path, title: str,
                             target: float | None = None) -> Path:
    """Mean test accuracy (95 % interval, n seeds) of each variant against its training compute,
    and the target accuracy as a dashed line. Variants at the same compute (the ResNet with and
    without regularisers: same net, same epochs) are dodged sideways so none hides another."""
    fig, ax = plt.subplots(figsize=(8, 4.8), layout="constrained")
    items = [(k, v) for k, v in variants.items() if is_number(v.get("training_pflop")) and v["test_acc"].get("n")]
    same = {}
    for key, v in items:
        same.setdefault(round(float(np.log10(v["training_pflop"])), 3), []).append(key)
    for (color, marker), (key, v) in zip(color_markers(len(items)), items):
        group = same[round(float(np.log10(v["training_pflop"])), 3)]
        dodge = 10 ** (0.025 * (group.index(key) - (len(group) - 1) / 2))
        t = v["test_acc"]
        half = 100 * t["half_width"] if is_number(t.get("half_width")) else 0.0
        ax.errorbar(v["training_pflop"] * dodge, 100 * t["mean"], yerr=half, fmt=marker, color=color, capsize=3,
                    ms=8, mec="k", mew=0.5, label=f"{key} (n={t['n']})")
    if target is not None:
        ax.axhline(100 * target, color="k", ls="--", lw=1, label=f"target {100 * target:g} %")
    ax.set_xscale("log")
    ax.set(xlabel="training compute (PFLOP: 3 × forward FLOPs × images seen; equal compute dodged sideways)",
           ylabel="test accuracy (%)", title=title)
    ax.legend(fontsize=8, loc="best")
    return save_figure(fig, path)


@styled
def plot_paired_timing(timing: dict, path: Path, title: str) -> Path:
    """Median time of one training step, inference throughput and batch-1 latency per model
    (quartiles over the interleaved rounds), from :func:`utils.studies.cnn_vs_fc.probes.paired_timing`."""
    models = list(timing["models"])
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.3), layout="constrained")
    for ax, what, key, label in (
            (axes[0], "train_step", "ms", f"training step, ms per batch of {timing['batch']}"),
            (axes[1], "inference", "images_per_s", f"inference, images/s (batch {timing['batch']})"),
            (axes[2], "latency", "ms", f"latency, ms per image (batch 1, {timing['latency_repeats']} rounds)")):
        for i, (color, m) in enumerate(zip(palette(len(models)), models)):
            t = timing["models"][m][what][key]
            mid, lo, hi = t["median"], t["q25"], t["q75"]
            ax.errorbar([i], [mid], yerr=[[mid - lo], [hi - mid]], fmt="o", color=color, capsize=4, ms=8)
            ax.annotate(f" {mid:,.0f}" if mid >= 100 else f" {mid:.3g}", (i, mid), va="center", fontsize=8)
        ax.set_xticks(range(len(models)), models, rotation=15)
        ax.set(ylabel=label, yscale="log")
    fig.suptitle(f"{title} (median and quartiles over interleaved rounds: {timing['repeats']} for training "
                 f"and inference, {timing['latency_repeats']} for latency; {timing['runtime'].get('precision')})")
    return save_figure(fig, path)


@styled
def plot_gradient_rms(records: Sequence[RunRecord], path: Path, title: str) -> Path:
    """Per-parameter gradient scale ``||g|| / sqrt(numel)`` of each weight tensor, median over the
    sampled training steps, one line per model against relative depth (first weight layer 0, last
    1), so nets with different layer counts share an axis (RMS, unlike raw norms of tensors of
    different sizes, is comparable across layers and models)."""
    fig, ax = plt.subplots(figsize=(9, 4.6), layout="constrained")
    for (color, marker), r in zip(color_markers(len(records)), records):
        rms = grad_rms_of(r)
        if not rms["rms"]:
            continue
        med = np.nanmedian(np.asarray(rms["rms"], dtype=float), axis=0)
        depth = np.linspace(0, 1, med.size) if med.size > 1 else np.zeros(1)
        ax.plot(depth, med, "-", marker=marker, ms=4, color=color, label=f"{r.label} ({med.size} weight layers)")
    ax.set(yscale="log", xlabel="relative depth of the weight layer (0 = input layer, 1 = classifier)",
           ylabel="gradient RMS per parameter", title=title)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


@styled
def plot_reliability(calibrations: Mapping[str, Sequence[dict]], path: Path, title: str) -> Path:
    """Reliability diagram per variant: accuracy against mean confidence in each confidence bin,
    pooled over the variant's seeds (count-weighted), marker area ~ the bin's share of test images;
    the diagonal is perfect calibration. The legend gives the ECE (mean over seeds)."""
    fig, ax = plt.subplots(figsize=(6.2, 5.6), layout="constrained")
    ax.plot([0, 100], [0, 100], "k:", lw=1, label="perfect calibration")
    for color, (variant, cals) in zip(palette(len(calibrations)), calibrations.items()):
        if not cals:
            continue
        count = np.sum([c["bin_count"] for c in cals], axis=0).astype(float)
        acc = np.sum([np.asarray(c["bin_count"]) * np.nan_to_num(np.asarray(c["bin_accuracy"], dtype=float))
                      for c in cals], axis=0)
        conf = np.sum([np.asarray(c["bin_count"]) * np.nan_to_num(np.asarray(c["bin_confidence"], dtype=float))
                       for c in cals], axis=0)
        keep = count > 0
        ece = float(np.mean([c["ece"] for c in cals]))
        ax.plot(100 * conf[keep] / count[keep], 100 * acc[keep] / count[keep], "-", color=color, lw=1)
        ax.scatter(100 * conf[keep] / count[keep], 100 * acc[keep] / count[keep], s=2000 * count[keep] / count.sum(),
                   color=color, alpha=0.7, edgecolor="k", lw=0.4,
                   label=f"{variant.replace('_', ' ')} (ECE {100 * ece:.1f} %, n={len(cals)})")
    ax.set(xlabel="mean confidence in the bin (%)", ylabel="accuracy in the bin (%)", xlim=(0, 100), ylim=(0, 100),
           title=title)
    ax.legend(fontsize=8, loc="upper left")
    return save_figure(fig, path)


SHUFFLE_MODELS = {"mlp": "MLP", "resnet": "residual CNN"}
SHUFFLE_PIXELS = {"original": "original pixels", "shuffled": "pixels shuffled"}


@styled
def plot_shuffle_control(variants: Mapping[str, dict], path: Path, title: str) -> Path:
    """Test accuracy with its 95 % interval of each model (rows) on the original and on the
    shuffled pixels (markers); ``variants`` is keyed ``<pixels>/<model>``. A cell not run is left out."""
    fig, ax = plt.subplots(figsize=(7.5, 3.4), layout="constrained")
    offsets = {p: (i - 0.5) * 0.2 for i, p in enumerate(SHUFFLE_PIXELS)}
    for (color, marker), (pixels, label) in zip(color_markers(len(SHUFFLE_PIXELS)), SHUFFLE_PIXELS.items()):
        xs, ys, lo, hi = [], [], [], []
        for y, model in enumerate(SHUFFLE_MODELS):
            bar = _pp_errorbar((variants.get(f"{pixels}/{model}") or {}).get("test_acc"), "mean")
            if bar is None:
                continue
            ys.append(y + offsets[pixels])
            for values, v in zip((xs, lo, hi), bar):
                values.append(v)
        if xs:
            ax.errorbar(xs, ys, xerr=[lo, hi], fmt=marker, color=color, capsize=3, ms=7, label=label)
    ax.set_yticks(range(len(SHUFFLE_MODELS)), list(SHUFFLE_MODELS.values()))
    ax.invert_yaxis()
    ax.set(xlabel="test accuracy (%, 95 % interval over seeds and test images)", title=title)
    ax.legend(fontsize=8, loc="best")
    return save_figure(fig, path)
