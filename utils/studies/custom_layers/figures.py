"""Figures of the custom-layer study (task 3): layer speed, the layer swaps against the base CNN,
the residual blocks in two regimes over seeds, their curves, and the learning-rate sweep.

Every figure reads the analysis dicts the script writes (``analysis.json`` before NaN -> None, so
missing numbers are NaN or None) and draws what exists: a variant or block whose every run diverged
is marked, never a crash. Accuracy is accuracy (%), validation and test are labelled apart.
Shared style and helpers: ``utils.visualization_utils``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import ticker
from matplotlib.lines import Line2D

from utils.analysis.statistics import curve_band
from utils.visualization_utils import palette, plain_minor_log_labels, save_figure, styled
from utils.engine.records import RunRecord

DIVERGED_COLOR = "crimson"


def _finite(v) -> bool:
    return v is not None and math.isfinite(v)


@styled
def plot_layer_speed(rows: Sequence[dict], path: Path, title: str) -> Path:
    """Forward+backward time per call of each custom layer, its same-maths autograd twin and the
    standard layer (horizontal bars, log x), annotated with the custom / other ratios."""
    labels = [f"{r['layer']}\n{r['variant']}" for r in rows][::-1]
    y = np.arange(len(rows))
    series = (("custom_ms", "custom (hand-written backward)"), ("autograd_ms", "same maths, autograd backward"),
              ("standard_ms", "standard PyTorch layer"))
    colors = palette(3)
    fig, ax = plt.subplots(figsize=(11, 0.75 * len(rows) + 1.8), layout="constrained")
    h = 0.26
    for i, ((key, name), color) in enumerate(zip(series, colors)):
        vals = [r.get(key) for r in rows][::-1]
        pos = [yy + (1 - i) * h for yy, v in zip(y, vals) if v]
        ax.barh(pos, [v for v in vals if v], h, color=color, label=name)
    for yy, r in zip(y, rows[::-1]):
        parts = []
        if r.get("ratio_vs_autograd"):
            parts.append(f"×{r['ratio_vs_autograd']:.2f} vs autograd")
        if r.get("ratio_vs_standard"):
            parts.append(f"×{r['ratio_vs_standard']:.2f} vs {r.get('standard_layer') or 'standard'}")
        ax.annotate("   " + ", ".join(parts), (r["custom_ms"], yy + h), va="center", fontsize=8)
    ax.set_yticks(y, labels, fontsize=8)
    ax.set(xscale="log", xlabel="forward + backward time per call (ms, median, log scale)", title=title)
    ax.set_xlim(right=ax.get_xlim()[1] * 8)  # room for the ratio labels
    ax.legend(loc="lower right")
    return save_figure(fig, path)


def _band(ax, x, band: dict, color, label: str, scale: float = 1.0) -> None:
    mean, lo, hi = (scale * np.asarray(band[k], dtype=float) for k in ("mean", "min", "max"))
    ax.plot(x[:len(mean)], mean, "-o", ms=3, color=color, label=label)
    ax.fill_between(x[:len(mean)], lo, hi, color=color, alpha=0.2)


@styled
def plot_seed_bands(groups: dict[str, Sequence[RunRecord]], path: Path, title: str) -> Path:
    """Train loss, validation loss and validation accuracy along training: mean line and min-max
    band over seeds, one colour per group (``groups``: label -> the records of its seeds). A
    diverged run's curve stops where it diverged; a group without any curve point is named in the
    legend as diverged."""
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.6), layout="constrained")
    keys = (("train_loss", "training loss (running mean)", 1.0),
            ("val_loss", "validation loss (cross-entropy)", 1.0), ("val_acc", "validation accuracy (%)", 100.0))
    for color, (label, runs) in zip(palette(len(groups)), groups.items()):
        bad = sum(not r.completed for r in runs)
        name = f"{label} (n={len(runs)}" + (f", {bad} diverged)" if bad else ")")
        with_curves = [r for r in runs if r.history.epoch]
        for ax, (key, ylabel, scale) in zip(axes, keys):
            ax.set(xlabel="epoch", ylabel=ylabel)
            if not with_curves:
                ax.plot([], [], "x", color=color, label=name + ": no curve")
                continue
            band = curve_band([getattr(r.history, key) for r in with_curves])
            x = np.asarray(max((r.history.epoch for r in with_curves), key=len), dtype=float)
            _band(ax, x, band, color, name, scale)
    for ax, t in zip(axes, ("Training loss", "Validation loss", "Validation accuracy")):
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        ax.legend(fontsize=8)
        ax.set_title(t)
    fig.suptitle(title)
    return save_figure(fig, path)


def _pct_values(values: Sequence[float | None]) -> np.ndarray:
    return np.asarray([100 * v for v in values if _finite(v)], dtype=float)


def _acc_limits(summaries: Sequence[dict], seeds: Sequence[float | None] = (), pad: float = 4.0) -> tuple[float, float]:
    """Accuracy-axis limits (%) around the means and seed values, inside [0, 100]: a 2-seed t interval
    (t = 12.7) would otherwise stretch the axis far past 0-100 %."""
    v = np.concatenate([_pct_values([s.get("mean") for s in summaries]), _pct_values(seeds)])
    return (0.0, 100.0) if v.size == 0 else (max(0.0, v.min() - pad), min(100.0, v.max() + pad))


def _mean_ci(ax, pos: float, summary: dict, color, marker: str, filled: bool, horizontal: bool = False) -> bool:
    """Mean (marker) with its 95 % interval (error bar) in percent at ``pos``; False if there is no mean."""
    if not _finite(summary.get("mean")):
        return False
    half = summary.get("half_width")
    err = 100 * half if _finite(half) else None
    xy, kw = ((100 * summary["mean"], pos), {"xerr": err}) if horizontal else ((pos, 100 * summary["mean"]),
                                                                              {"yerr": err})
    ax.errorbar(*xy, **kw, fmt=marker, color=color, mfc=color if filled else "white", ms=7, capsize=4, zorder=3)
    return True


@styled
def plot_layer_swaps(numbers: dict, path: Path, title: str) -> Path:
    """The layer study in three panels, one row per variant (``numbers``: the layers analysis):
    test accuracy (mean, 95 % CI, every seed) and final validation accuracy; the test-accuracy
    difference to the base CNN with its 95 % CI (red: the interval excludes zero, "real"; grey:
    within noise); training time per epoch relative to the base CNN."""
    variants = numbers["variants"]
    names = list(variants)
    diffs = {r["a"]: r["test_acc"] for r in numbers["vs_base"]}
    fig, (ax_acc, ax_d, ax_t) = plt.subplots(1, 3, figsize=(16, 0.5 * len(names) + 2.6), sharey=True,
                                             gridspec_kw={"width_ratios": [1.3, 1.3, 1]}, layout="constrained")
    for i, name in enumerate(names):
        v = variants[name]
        color = "0.3" if name == "base" else "C0"
        if _mean_ci(ax_acc, i, v["test_acc"], color, "o", True, horizontal=True):
            seeds = _pct_values(v["per_seed"]["test_acc"])
            ax_acc.scatter(seeds, np.full(seeds.size, i + 0.2), s=10, color="k", zorder=4)
        else:
            ax_acc.annotate(f"all {v['runs']} runs diverged", (0.02, i), xycoords=("axes fraction", "data"),
                            color=DIVERGED_COLOR, va="center", fontsize=8)
        _mean_ci(ax_acc, i - 0.2, v["final_val_acc"], color, "s", False, horizontal=True)
        d = diffs.get(name)
        if d is not None and _finite(d["mean_difference"]):
            real = d["verdict"] == "real"
            _mean_ci(ax_d, i, {"mean": d["mean_difference"], "half_width": d["half_width"]},
                     "C3" if real else "0.55", "o", True, horizontal=True)
            ax_d.annotate(d["verdict"], (100 * d["mean_difference"], i), xytext=(0, 6), textcoords="offset points",
                          fontsize=8, ha="center", va="bottom")
        ratio = v["epoch_time_ratio_vs_base"]
        if _finite(ratio):
            ax_t.barh(i, ratio, color=color, alpha=0.8, height=0.6)
            ax_t.annotate(f" ×{ratio:.2f}", (ratio, i), va="center", fontsize=8)
    ax_acc.set_xlim(*_acc_limits([s for v in variants.values() for s in (v["test_acc"], v["final_val_acc"])],
                                 [x for v in variants.values() for x in v["per_seed"]["test_acc"]]))
    spread = [abs(100 * d["mean_difference"]) for d in diffs.values() if _finite(d["mean_difference"])]
    if spread:
        ax_d.set_xlim(-3 * max(spread) - 1, 3 * max(spread) + 1)    # long (2-seed) intervals run off the edge
    ax_acc.set_yticks(np.arange(len(names)), names)
    ax_acc.set_ylim(len(names) - 0.5, -0.6)
    ax_acc.legend(handles=[Line2D([], [], marker="o", color="0.3", ls="", label="test, mean ± 95 % CI"),
                           Line2D([], [], marker=".", color="k", ls="", label="test, one seed"),
                           Line2D([], [], marker="s", mfc="white", color="0.3", ls="",
                                  label="final validation, mean ± 95 % CI")], fontsize=8, loc="lower left")
    ax_acc.set(xlabel="accuracy (%)", title="Accuracy over seeds")
    ax_d.axvline(0, color="k", lw=0.8)
    ax_d.set(xlabel="test accuracy − base CNN's (pp)", title="Difference to the base CNN (95 % CI)")
    ax_t.axvline(1, color="k", lw=0.8)
    ax_t.set(xlabel="training time per epoch / base CNN's", title="Training cost")
    fig.suptitle(title)
    return save_figure(fig, path)


def _block_label(name: str, b: dict) -> str:
    widths = "-".join(map(str, b.get("widths", [])))
    return f"{name}\n{widths}\n{b['params'] / 1e3:.0f}k params, {b['mflops']:.0f} MFLOPs"


@styled
def plot_block_regimes(regimes: dict[str, dict], path: Path, title: str) -> Path:
    """One panel per regime (``regimes``: regime -> the blocks analysis): per block, test accuracy
    (mean, 95 % CI, every seed) and final validation accuracy, with widths, parameters and FLOPs
    under each block; one accuracy axis for all panels."""
    fig, axes = plt.subplots(1, len(regimes), figsize=(6.5 * max(len(regimes), 1), 5.2), squeeze=False,
                             sharey=True, layout="constrained")
    colors = dict(zip(("basic", "bottleneck", "wide"), palette(3)))
    for ax, (regime, n) in zip(axes[0], regimes.items()):
        blocks = n["blocks"]
        for i, (name, b) in enumerate(blocks.items()):
            color = colors.get(name, "C0")
            if _mean_ci(ax, i - 0.1, b["test_acc"], color, "o", True):
                seeds = _pct_values(b["per_seed"]["test_acc"])
                ax.scatter(np.full(seeds.size, i - 0.1), seeds, s=10, color="k", zorder=4)
                ax.annotate(f"{100 * b['test_acc']['mean']:.2f} %", (i - 0.1, 100 * b["test_acc"]["mean"]),
                            xytext=(-9, 0), textcoords="offset points", fontsize=8, va="center", ha="right")
            else:
                ax.annotate(f"all {b['runs']} runs\ndiverged", (i, 0.5), xycoords=("data", "axes fraction"),
                            color=DIVERGED_COLOR, ha="center", fontsize=9)
            _mean_ci(ax, i + 0.15, b["final_val_acc"], color, "s", False)
        ax.set_xticks(range(len(blocks)), [_block_label(k, b) for k, b in blocks.items()], fontsize=8)
        ax.set_xlim(-0.6, len(blocks) - 0.4)
        gap = n.get("param_gap_vs_target")
        ax.set_title(f"{regime}" + (f" (parameters within {100 * gap:.1f} % of the {n['match_target']} net)"
                                    if regime == "matched" and _finite(gap) else ""))
    summaries = [s for n in regimes.values() for b in n["blocks"].values() for s in (b["test_acc"], b["final_val_acc"])]
    axes[0][0].set_ylim(*_acc_limits(summaries, [x for n in regimes.values() for b in n["blocks"].values()
                                                 for x in b["per_seed"]["test_acc"]]))
    axes[0][0].set_ylabel("accuracy (%)")
    axes[0][0].legend(handles=[Line2D([], [], marker="o", color="0.3", ls="", label="test, mean ± 95 % CI"),
                               Line2D([], [], marker=".", color="k", ls="", label="test, one seed"),
                               Line2D([], [], marker="s", mfc="white", color="0.3", ls="",
                                      label="final validation, mean ± 95 % CI")], fontsize=8, loc="lower left")
    fig.suptitle(title)
    return save_figure(fig, path)


@styled
def plot_lr_sweep(numbers: dict, path: Path, title: str) -> Path:
    """The learning-rate sweep (``numbers``: the sweep analysis), lr on a log axis, one colour per
    block: final validation (solid) and test (dashed) accuracy, mean over seeds with a min-max band
    when there are several; diverged runs as red crosses at the bottom and each block's divergence
    frontier as a dotted line; loss-spike steps; median and maximum gradient norm."""
    fig, (ax_acc, ax_sp, ax_g) = plt.subplots(1, 3, figsize=(18, 5), layout="constrained")
    lrs = sorted({p["lr"] for b in numbers["blocks"].values() for p in b["points"]})
    rises = [f"{x:g}" for x in numbers["spike_definition"]["rises_percent"]]
    any_grad = False
    for color, (name, b) in zip(palette(len(numbers["blocks"])), numbers["blocks"].items()):
        pts = b["points"]
        x = np.asarray([p["lr"] for p in pts], dtype=float)
        for key, style, what in (("final_val_acc", "-o", "validation"), ("test_acc", "--^", "test")):
            mean = np.asarray([100 * p[key]["mean"] if _finite(p[key]["mean"]) else np.nan for p in pts])
            ax_acc.plot(x, mean, style, color=color, ms=5, label=f"{name}, {what}")
            if max(p["n"] for p in pts) > 1:
                vals = [_pct_values([r[key] for r in p["runs"]]) for p in pts]
                lo = np.asarray([v.min() if v.size else np.nan for v in vals])
                hi = np.asarray([v.max() if v.size else np.nan for v in vals])
                ax_acc.fill_between(x, lo, hi, color=color, alpha=0.15 if key == "final_val_acc" else 0.07)
        bad = [p["lr"] for p in pts for r in p["runs"] if r["status"] != "completed"]
        ax_acc.scatter(bad, np.full(len(bad), 0.03), transform=ax_acc.get_xaxis_transform(), marker="x", s=60,
                       color=DIVERGED_COLOR, zorder=5)
        if b["frontier"]["frontier"] is not None:
            ax_acc.axvline(b["frontier"]["frontier"], color=color, ls=":", lw=1.5)
        for rise, style in zip(rises, ("-o", "--s")):
            ax_sp.plot(x, [np.nan if p["loss_spike_steps"][rise] is None else p["loss_spike_steps"][rise] for p in pts],
                       style, color=color, ms=4, label=f"{name}, loss > {rise} % above mean")
        for key, style, what in (("grad_norm_median", "-o", "median"), ("grad_norm_max", "--s", "max")):
            g = np.asarray([np.nan if p[key] is None else p[key] for p in pts], dtype=float)
            any_grad |= bool(np.isfinite(g).any() and (g > 0).any())
            ax_g.plot(x, g, style, color=color, ms=4, label=f"{name}, {what}")
    extra = [Line2D([], [], marker="x", color=DIVERGED_COLOR, ls="", label="a diverged run"),
             Line2D([], [], color="0.4", ls=":", label="divergence frontier")]
    ax_acc.legend(handles=ax_acc.get_legend_handles_labels()[0] + extra, fontsize=7, loc="best")
    ax_acc.set(ylabel="accuracy at the end of training (%)", title="Final validation and test accuracy")
    ax_sp.set(ylabel="steps (mean over seeds)", title=f"Loss spikes (vs the mean of the previous "
              f"{numbers['spike_definition']['window_steps']} steps)")
    ax_g.set(ylabel="‖∇W‖₂ over all conv/linear weights", title="Gradient norm during training")
    if any_grad:
        ax_g.set_yscale("log")
        plain_minor_log_labels(ax_g.yaxis)
    for ax in (ax_acc, ax_sp, ax_g):
        ax.set_xscale("log")
        ax.set_xlabel("peak learning rate (log scale)")
        if lrs:
            ax.set_xticks(lrs, [f"{v:g}" for v in lrs])
            ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        if ax is not ax_acc and ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(title)
    return save_figure(fig, path)
