"""Figures of the depth study (task 2, v2): the degradation curves of plain vs residual nets in
the shape of He et al. (2016) Fig. 1/6 (drawn as accuracy, the package's convention), the
summary of accuracy and training time against depth, and the learning-rate pilots.

Inputs are typed records grouped by the caller (family -> depth -> runs over seeds) or the
per-variant dicts of :mod:`utils.studies.architecture.numbers`. Shared style: :mod:`utils.visualization_utils`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import ticker

from utils.visualization_utils import palette, plain_minor_log_labels, save_figure, styled
from utils.engine.records import RunRecord
from utils.analysis.statistics import curve_band


def _mean_curve(runs: Sequence[RunRecord], field: str) -> tuple[np.ndarray, dict] | None:
    """Epochs of the longest run and the mean / min / max of ``history.<field>`` over ``runs``
    (runs that stopped early, e.g. diverged, count up to where they stopped)."""
    runs = [r for r in runs if r.history.epoch]
    if not runs:
        return None
    longest = max(runs, key=lambda r: len(r.history.epoch))
    return np.asarray(longest.history.epoch), curve_band([getattr(r.history, field) for r in runs])


def _finite_mean(values: Sequence[float | None]) -> float:
    ok = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(ok)) if ok else math.nan


@styled
def plot_degradation(families: Sequence[tuple[str, Mapping[int, Sequence[RunRecord]]]], path: Path,
                     title: str) -> Path:
    """Plain vs residual side by side (one column per family; one colour per depth, the same in
    every column). Top: clean training accuracy (dashed) and validation accuracy (solid) per epoch,
    the mean over seeds with the min-max band of the training curve; bottom: clean training loss
    (log scale). Legends give each depth's final training accuracy and its one test-set
    evaluation (means over seeds)."""
    depths = sorted({d for _, by_depth in families for d in by_depth})
    colors = dict(zip(depths, palette(len(depths))))
    fig, axes = plt.subplots(2, len(families), figsize=(7 * len(families), 9), squeeze=False, sharey="row",
                             layout="constrained")
    for col, (family, by_depth) in enumerate(families):
        ax_acc, ax_loss = axes[0, col], axes[1, col]
        for depth in sorted(by_depth):
            runs, color = by_depth[depth], colors[depth]
            done = [r for r in runs if r.completed]
            train = _mean_curve(runs, "train_eval_acc")
            if train is None:
                ax_acc.plot([], [], color=color, label=f"{family}-{depth}: diverged before the first evaluation")
                continue
            x, band = train
            ax_acc.plot(x, 100 * np.asarray(band["mean"]), "--", color=color)
            ax_acc.fill_between(x, 100 * np.asarray(band["min"]), 100 * np.asarray(band["max"]), color=color,
                                alpha=0.15, lw=0)
            x, val = _mean_curve(runs, "val_acc")
            status = "" if len(done) == len(runs) else f", {len(runs) - len(done)} of {len(runs)} diverged"
            ax_acc.plot(x, 100 * np.asarray(val["mean"]), "-", color=color, marker="o", ms=3,
                        label=f"{family}-{depth}: train {100 * _finite_mean([r.summary.final_train_acc for r in done]):.1f} %"
                              f", test {100 * _finite_mean([r.test_acc for r in done]):.1f} % "
                              f"(n={len(runs)}{status})")
            x, loss = _mean_curve(runs, "train_eval_loss")
            ax_loss.plot(x, loss["mean"], "-", color=color, marker="o", ms=3, label=f"{family}-{depth}")
        ax_acc.plot([], [], "k--", label="training accuracy (clean, fixed training subset; band: seeds' min-max)")
        ax_acc.plot([], [], "k-", label="validation accuracy")
        ax_acc.set(title=f"{family}: accuracy", xlabel="epoch", ylabel="accuracy (%)")
        ax_loss.set(title=f"{family}: training loss (clean, fixed training subset)", xlabel="epoch",
                    ylabel="cross-entropy", yscale="log")
        plain_minor_log_labels(ax_loss.yaxis)
        for ax in (ax_acc, ax_loss):
            if ax.get_legend_handles_labels()[0]:     # nothing to name when every run diverged
                ax.legend(fontsize=8)
            ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    fig.suptitle(title)
    return save_figure(fig, path)


def _errorbar(ax: plt.Axes, xs: Sequence[float], summaries: Sequence[dict], scale: float, **kw) -> None:
    means = [scale * (s["mean"] if s["mean"] is not None else math.nan) for s in summaries]
    half = [scale * (s["half_width"] if s["half_width"] is not None and math.isfinite(s["half_width"]) else 0.0)
            for s in summaries]
    ax.errorbar(xs, means, yerr=half, capsize=4, **kw)


@styled
def plot_depth_summary(series: Mapping[str, Mapping[int, dict]], path: Path, title: str) -> Path:
    """Final clean training accuracy, test accuracy and training time against depth (weighted
    layers, log axis), one line per series (e.g. "plain, BN"); points are means over seeds with
    their 95 % intervals (none drawn for a single seed). ``series``: label -> depth -> a variant
    dict of ``utils.studies.architecture.numbers.variant_numbers``."""
    panels = (("final_train_acc", 100.0, "final training accuracy (%), clean"),
              ("test_acc", 100.0, "test accuracy (%)"), ("train_time_s", 1.0, "training time (s)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.6), layout="constrained")
    markers = ("o", "s", "^", "D", "v", "P", "X", "*")
    all_depths = sorted({d for by_depth in series.values() for d in by_depth})
    singles = 0
    for (label, by_depth), color, marker in zip(series.items(), palette(len(series)), markers * 3):
        xs = sorted(by_depth)
        # series measured at one depth (controls) sit side by side, not on top of each other
        shift = 1.0 if len(xs) > 1 else 1.05 ** (singles := singles + 1)
        for ax, (metric, scale, _) in zip(axes, panels):
            _errorbar(ax, [x * shift for x in xs], [by_depth[d][metric] for d in xs], scale, color=color,
                      marker=marker, ls="-" if len(xs) > 1 else "none", label=label)
    for ax, (_, _, ylabel) in zip(axes, panels):
        ax.set(xscale="log", xlabel="depth (weighted layers: convs + linear)", ylabel=ylabel)
        ax.xaxis.set_major_locator(ticker.FixedLocator(all_depths))
        ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%d"))
        ax.xaxis.set_minor_locator(ticker.NullLocator())
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    return save_figure(fig, path)


@styled
def plot_lr_pilots(choices: Mapping[str, dict], path: Path, title: str) -> Path:
    """Final validation accuracy of every pilot lr (log axis) per net, the chosen lr ringed;
    a pilot that diverged is an x on the bottom axis. ``choices``: ``choose_lr(...)["choices"]``."""
    fig, ax = plt.subplots(figsize=(7.5, 4.6), layout="constrained")
    for (key, c), color in zip(choices.items(), palette(len(choices))):
        lrs = [float(lr) for lr in c["candidates"]]
        accs = [v["final_val_acc"] for v in c["candidates"].values()]
        ok = [(lr, 100 * a) for lr, a in zip(lrs, accs) if a is not None]
        if ok:
            ax.plot(*zip(*ok), marker="o", color=color, label=f"{key} (chosen lr {c['chosen_lr']:g})")
        bad = [lr for lr, a in zip(lrs, accs) if a is None]
        if bad:
            ax.plot(bad, [0] * len(bad), "x", color=color, ms=9, clip_on=False,
                    label=None if ok else f"{key}: every lr diverged")
        chosen = dict(ok).get(c["chosen_lr"])
        if chosen is not None:
            ax.plot([c["chosen_lr"]], [chosen], "o", ms=14, mfc="none", color=color)
    ax.set(xscale="log", xlabel="peak learning rate", ylabel="final validation accuracy (%)", ylim=(0, None),
           title="ringed: the choice (highest final validation accuracy); x: diverged")
    lrs = sorted({float(lr) for c in choices.values() for lr in c["candidates"]})
    ax.xaxis.set_major_locator(ticker.FixedLocator(lrs))
    ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_locator(ticker.NullLocator())
    ax.legend(fontsize=8)
    fig.suptitle(title)
    return save_figure(fig, path)
