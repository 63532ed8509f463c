"""Figures of the depth study and its no-normalisation control (task 2): degradation on training
error in the shape of He et al. (2016) Fig. 1 with the final numbers as dots and intervals,
gradient flow during training (per-parameter RMS per main-path conv), the first/last ratio over
training, the residual branches' BN scale γ of the zero-init control, feature-map statistics over
many images, the bracketing lr pilots and the no-BN variants as dots with intervals.

Inputs are typed records grouped by the caller or the dicts of
:mod:`utils.studies.architecture.numbers`; group names and legends come from the caller.
Shared style: :mod:`utils.visualization_utils`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import colors as mcolors
from matplotlib import ticker

from utils.analysis.statistics import curve_band
from utils.engine.records import RunRecord
from utils.studies.architecture.figures import dots
from utils.studies.architecture.numbers import DepthDesign, gradient_rms, log10_first_last, tracked_trajectories
from utils.visualization_utils import color_markers, palette, save_figure, styled


def _band(ax: plt.Axes, runs: Sequence[RunRecord], field: str, color, label: str, scale: float = 100.0,
          error: bool = False) -> None:
    """Mean over ``runs`` of ``history.<field>`` against the step, min-max band (runs that stopped
    early count up to where they stopped); ``error``: plot ``1 - value``."""
    runs = [r for r in runs if r.history.step]
    if not runs:
        return
    longest = max(runs, key=lambda r: len(r.history.step))
    band = curve_band([[(1 - v) if error else v for v in getattr(r.history, field)] for r in runs])
    x = np.asarray(longest.history.step[:len(band["mean"])])
    ax.plot(x, scale * np.asarray(band["mean"]), color=color, label=label)
    ax.fill_between(x, scale * np.asarray(band["min"]), scale * np.asarray(band["max"]), color=color, alpha=0.2)


@styled
def plot_degradation(families: Mapping[str, Mapping[int, Sequence[RunRecord]]], variants: Mapping[str, dict],
                     design: DepthDesign, path: Path, title: str) -> Path:
    """Top: clean training error against the step per family (one line per depth, mean over seeds,
    band min-max). Bottom: final training error and test error against depth, mean and 95 % t
    interval over seeds, both families. ``variants``: ``analysis["variants"]`` (``group/variant``
    keys, each with ``depth``)."""
    fig, axes = plt.subplots(2, 2, figsize=(13, 9), layout="constrained")
    for ax, (group, by_depth) in zip(axes[0], families.items()):
        for color, (d, runs) in zip(palette(len(by_depth)), by_depth.items()):
            _band(ax, runs, "train_eval_acc", color, f"{group}-{d} ({len(runs)} seeds)", error=True)
        ax.set(xlabel="training step (batch)", ylabel="training error, clean (%)", title=f"{group}: training error")
        ax.legend()
    for ax, metric, label in ((axes[1, 0], "final_train_acc", "final training error, clean (%)"),
                              (axes[1, 1], "test_acc", "test error (%)")):
        for k, ((color, marker), group) in enumerate(zip(color_markers(len(families)), families)):
            rows = sorted((v["depth"], v) for v in variants.values()
                          if v.get("depth") is not None and v["models"] and any(
                              v["models"][0] == r.model for runs in families[group].values() for r in runs))
            xs = np.asarray([d for d, _ in rows], dtype=float)
            means, lo, hi = [], [], []
            for _, v in rows:
                s = v[metric]
                m = s.get("mean")
                means.append(np.nan if m is None else 100 * (1 - m))
                lo.append(0 if s.get("ci95_high") is None else 100 * (s["ci95_high"] - m))
                hi.append(0 if s.get("ci95_low") is None else 100 * (m - s["ci95_low"]))
            ax.errorbar(xs * (1 + 0.03 * (k - 0.5)), means, yerr=[lo, hi], fmt="-" + marker, color=color, capsize=4,
                        label=group)
        ax.set(xscale="log", xlabel="weighted layers (log scale)", ylabel=f"{label}, mean ± 95 % CI", title=label)
        ax.xaxis.set_major_locator(ticker.FixedLocator(sorted({d for fam in families.values() for d in fam})))
        ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%d"))
        ax.xaxis.set_minor_locator(ticker.NullLocator())
        ax.legend()
    fig.suptitle(title)
    return save_figure(fig, path)


@styled
def plot_gradient_flow(pair: Mapping[str, Sequence[RunRecord]], main_path: Mapping[str, Sequence[str]], path: Path,
                       title: str) -> Path:
    """Heat maps (first seed of each net): per-parameter gradient RMS of every main-path conv
    (rows, input at the bottom) at every sampled step (columns), one shared log colour scale."""
    data = {}
    for label, runs in pair.items():
        rec = next((r for r in runs if r.model in main_path), None)
        got = gradient_rms(rec, main_path[rec.model]) if rec is not None else None
        if got is not None:
            data[label] = got
    fig, axes = plt.subplots(1, max(1, len(data)), figsize=(6.5 * max(1, len(data)) + 1, 5), squeeze=False,
                             layout="constrained")
    finite = np.concatenate([v[1][np.isfinite(v[1]) & (v[1] > 0)] for v in data.values()]) if data else np.ones(1)
    norm = mcolors.LogNorm(vmin=max(finite.min(), 1e-12), vmax=finite.max())
    mesh = None
    for ax, (label, (steps, rms)) in zip(axes[0], data.items()):
        mesh = ax.pcolormesh(np.arange(len(steps) + 1), np.arange(rms.shape[1] + 1) + 0.5,
                             np.where(rms > 0, rms, np.nan).T, norm=norm, cmap="viridis", shading="flat")
        ticks = np.linspace(0, len(steps) - 1, min(6, len(steps))).round().astype(int)
        ax.set_xticks(ticks + 0.5, [f"{int(steps[i])}" for i in ticks])
        ax.set(xlabel="training step (batch)", ylabel="main-path conv (1 = input side)", title=label)
        ax.grid(False)
    if mesh is not None:
        fig.colorbar(mesh, ax=axes[0], label="gradient RMS per parameter, ‖g‖/√numel")
    fig.suptitle(title)
    return save_figure(fig, path)


@styled
def plot_first_last_ratio(groups: Mapping[str, Sequence[RunRecord]], main_path: Mapping[str, Sequence[str]],
                          path: Path, title: str) -> Path:
    """log10(first / last main-path conv gradient RMS) against the step, mean over seeds and
    min-max band, one line per labelled group of runs."""
    fig, ax = plt.subplots(figsize=(10, 5), layout="constrained")
    for (color, marker), (label, runs) in zip(color_markers(len(groups)), groups.items()):
        curves, steps = [], None
        for r in runs:
            got = gradient_rms(r, main_path[r.model]) if r.model in main_path else None
            if got is not None:
                curves.append(log10_first_last(got[1]))
                steps = got[0] if steps is None or len(got[0]) > len(steps) else steps
        if not curves:
            continue
        band = curve_band(curves)
        x = steps[:len(band["mean"])]
        ax.plot(x, band["mean"], color=color, marker=marker, ms=3, markevery=max(1, len(x) // 8),
                label=f"{label} (step 0: ×{10 ** band['mean'][0]:.3g})")
        ax.fill_between(x, band["min"], band["max"], color=color, alpha=0.15)
    ax.axhline(0, color="k", lw=0.8)
    ax.set(xlabel="training step (batch)", ylabel="log10(RMS first conv / RMS last conv)")
    ax.legend(fontsize=8, ncol=2)
    fig.suptitle(title)
    return save_figure(fig, path)


@styled
def plot_gamma(runs: Mapping[str, Sequence[RunRecord]], groups: Mapping[str, Mapping[str, Sequence[str]]],
               path: Path, title: str) -> Path:
    """Left: mean |γ| of the residual branches' last BN per stage against the step (mean over
    seeds, min-max band), each labelled variant in its own line style. Right: their clean
    training accuracy over the same steps."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), layout="constrained")
    styles = ["-", "--", ":", "-."]
    for ls, (label, recs) in zip(styles, runs.items()):
        per_stage: dict[str, list[list[float]]] = {}
        steps = None
        for r in recs:
            for stage, traj in tracked_trajectories(r, groups.get(r.model, {})).items():
                per_stage.setdefault(stage, []).append(traj)
                steps = r.grad_stats.step
        for color, (stage, trajs) in zip(palette(len(per_stage)), per_stage.items()):
            band = curve_band(trajs)
            x = np.asarray(steps[:len(band["mean"])])
            axes[0].plot(x, band["mean"], ls, color=color, label=f"{label}, {stage}")
            axes[0].fill_between(x, band["min"], band["max"], color=color, alpha=0.15)
        _band(axes[1], recs, "train_eval_acc", "C0" if ls == "-" else "C3", f"{label} ({len(recs)} seeds)")
    axes[0].set(xlabel="training step (batch)", ylabel="mean |γ| of the residual branch's last BN",
                title="BN scale at the end of each residual branch")
    axes[0].legend(fontsize=8)
    axes[1].set(xlabel="training step (batch)", ylabel="training accuracy, clean (%)", title="training accuracy")
    axes[1].legend()
    fig.suptitle(title)
    return save_figure(fig, path)


@styled
def plot_feature_stats(stats: Mapping[tuple[str, str], dict], design: DepthDesign, path: Path, title: str) -> Path:
    """Per net (one panel per family, one colour per depth): mean activation of the probed block
    outputs against relative depth, mean over seeds (line) and the 5-95 % range of per-image
    means (band); and the share of exactly-zero units (right)."""
    fams = [design.plain, design.residual]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8), layout="constrained")
    for ax, fam in zip(axes[:2], fams):
        keys = sorted((k for k in stats if k[0] == fam), key=lambda k: design.depth_of[k])
        for color, key in zip(palette(len(keys)), keys):
            layers = stats[key]
            x = [v["relative_depth"] for v in layers.values()]
            ax.plot(x, [v["mean"]["mean"] for v in layers.values()], "-o", color=color,
                    label=f"{fam}-{design.depth_of[key]}")
            ax.fill_between(x, [v["image_p05"] for v in layers.values()], [v["image_p95"] for v in layers.values()],
                            color=color, alpha=0.15)
        ax.set(xlabel="relative depth (conv index / main-path convs)", ylabel="mean activation", title=fam)
        ax.legend()
    for (color, marker), key in zip(color_markers(len(stats)), sorted(stats, key=lambda k: (k[0], design.depth_of[k]))):
        layers = stats[key]
        axes[2].plot([v["relative_depth"] for v in layers.values()], [100 * v["zero_share"] for v in layers.values()],
                     "-", marker=marker, color=color, label=f"{key[0]}-{design.depth_of[key]}")
    axes[2].set(xlabel="relative depth", ylabel="units exactly zero (%)", title="share of inactive units")
    axes[2].legend(fontsize=8)
    fig.suptitle(title)
    return save_figure(fig, path)


@styled
def plot_lr_pilots(selections: Mapping[str, dict], labels: Mapping[str, str], path: Path, title: str) -> Path:
    """Final validation accuracy of every pilot lr (log axis) per variant; the chosen lr ringed, a
    diverged pilot an x on the bottom axis, points added by the bracketing extension hollow."""
    fig, ax = plt.subplots(figsize=(9, 5), layout="constrained")
    for (key, s), (color, marker) in zip(selections.items(), color_markers(len(selections))):
        scores = {float(lr): v for lr, v in s["scores"].items()}
        ok = sorted((lr, 100 * v) for lr, v in scores.items() if v is not None)
        name = labels.get(key, key)
        cap = ", hit the cap" if s["hit_cap"] else ""
        if ok:
            ax.plot(*zip(*ok), "-", marker=marker, color=color, label=f"{name}: lr {s['chosen_lr']:g}{cap}")
        added = [(lr, v) for lr, v in ok if lr in {float(a) for a in s["added"]}]
        if added:
            ax.plot(*zip(*added), marker, ms=9, mfc="white", color=color)
        bad = [lr for lr, v in scores.items() if v is None]
        if bad:
            ax.plot(bad, [0] * len(bad), "x", color=color, ms=9, clip_on=False)
        chosen = dict(ok).get(float(s["chosen_lr"]))
        if chosen is not None:
            ax.plot([s["chosen_lr"]], [chosen], "o", ms=15, mfc="none", color=color)
    ax.plot([], [], "o", ms=15, mfc="none", color="k", label="chosen (highest validation accuracy)")
    ax.plot([], [], "o", ms=9, mfc="white", color="k", label="added by the bracketing extension")
    ax.plot([], [], "x", color="k", label="diverged")
    ax.set(xscale="log", xlabel="peak learning rate (log scale)", ylabel="final validation accuracy (%)",
           ylim=(0, None))
    ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    ax.legend(fontsize=8)
    fig.suptitle(title)
    return save_figure(fig, path)


@styled
def plot_variant_dots(variants: Mapping[str, dict], labels: Mapping[str, str], path: Path, title: str) -> Path:
    """Clean training accuracy and test accuracy per variant, mean and 95 % t interval over seeds."""
    keys = list(variants)
    names = [labels.get(k, k) for k in keys]
    fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(keys)), 5.2), layout="constrained")
    for (metric, label), off, (color, marker) in zip((("final_train_acc", "training accuracy (clean)"),
                                                       ("test_acc", "test accuracy")), (-0.12, 0.12), color_markers(2)):
        dots(ax, names, [variants[k][metric] for k in keys], offset=off, color=color, marker=marker, label=label)
    ax.set(ylabel="accuracy (%), mean ± 95 % CI", ylim=(0, 100))
    ax.tick_params(axis="x", rotation=20)
    ax.legend()
    fig.suptitle(title)
    return save_figure(fig, path)
