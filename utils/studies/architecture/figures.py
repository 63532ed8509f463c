"""Figures of the architecture analysis (task 2), kernel study and init study: kernel variants as
dots with intervals, ERF maps and their spread at init vs trained, ERF growth layer by layer,
first-layer activations and filters, feature maps by depth (illustration), gradients at
initialisation. The depth study's figures: :mod:`utils.studies.architecture.depth_figures`.
Shared style and helpers: ``utils.visualization_utils``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import ticker

from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from utils.visualization_utils import color_markers, palette, save_figure, styled


def _image_for_display(img: np.ndarray) -> np.ndarray:
    """uint8/float ``(C, H, W)`` -> ``(H, W, C)`` or ``(H, W)`` in [0, 1] for imshow."""
    a = np.asarray(img, dtype=float)
    a = (a - a.min()) / max(a.max() - a.min(), 1e-12)
    return a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)


@styled
def plot_first_layer_activations(images: np.ndarray, activations: dict, path: Path, title: str,
                                 n_channels: int = 8) -> Path:
    """First conv layer feature maps of several models for the same test images.

    ``images``: ``(N, C, H, W)`` uint8; ``activations``: model -> ``(N, K, h, w)``. Rows are
    (image, model) pairs; for each model the ``n_channels`` channels with the largest mean
    activation over all ``N`` images are shown (the same channels for every image), each map
    scaled to its own range so patterns, not magnitudes, are compared.
    """
    names = list(activations)
    n_img = images.shape[0]
    rows = n_img * len(names)
    fig, axes = plt.subplots(rows, n_channels + 1, figsize=(1.25 * (n_channels + 1) + 1.5, 1.3 * rows + 0.8),
                             squeeze=False)
    for m, name in enumerate(names):
        act = np.asarray(activations[name])
        top = np.argsort(-act.mean(axis=(0, 2, 3)))[:n_channels]
        for i in range(n_img):
            r = i * len(names) + m
            axes[r, 0].imshow(_image_for_display(images[i]), cmap="gray")
            axes[r, 0].set_ylabel(f"img {i + 1}\n{name}", rotation=0, ha="right", va="center", fontsize=9)
            for j, ch in enumerate(top):
                axes[r, j + 1].imshow(act[i, ch], cmap="viridis", interpolation="nearest")
                if r == 0 or i == 0:
                    axes[r, j + 1].set_title(f"ch {ch}", fontsize=8)
            for j in range(len(top), n_channels):   # a model with fewer channels: no empty frames
                axes[r, j + 1].axis("off")
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_title("input", fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


@styled
def plot_first_layer_filters(filters: dict, path: Path, title: str, n_filters: int = 16) -> Path:
    """Learned first-layer kernels per model, RGB (each filter min-max scaled on its own).

    ``filters``: model -> ``(K, C, k, k)`` weights; shows the ``n_filters`` of largest L2 norm.
    """
    names = list(filters)
    fig, axes = plt.subplots(len(names), n_filters, figsize=(0.9 * n_filters + 1.5, 1.1 * len(names) + 0.8),
                             squeeze=False)
    for r, name in enumerate(names):
        w = np.asarray(filters[name], dtype=float)
        order = np.argsort(-np.sqrt((w ** 2).sum(axis=(1, 2, 3))))[:n_filters]
        for j in range(n_filters):
            ax = axes[r, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(order):
                ax.imshow(_image_for_display(w[order[j]]), cmap="gray", interpolation="nearest")
            elif j > 0:
                ax.axis("off")
        axes[r, 0].set_ylabel(f"{name}\n{w.shape[-1]}×{w.shape[-1]}", rotation=0, ha="right", va="center",
                              fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


@styled
def plot_feature_maps_by_depth(image: np.ndarray, maps: dict, path: Path, title: str, n_channels: int = 4) -> Path:
    """Feature maps at several depths of several networks for one image.

    ``image``: ``(C, H, W)``; ``maps``: model -> list of ``(label, (K, h, w) array)`` from input
    to output side. Each depth shows the ``n_channels`` most active channels (2x2 mini grid) so
    the move from edge/colour detectors to coarse, class-level blobs is visible.
    """
    names = list(maps)
    depths = max(len(v) for v in maps.values())
    fig = plt.figure(figsize=(2.1 * (depths + 1) + 0.5, 2.3 * len(names) + 0.6))
    outer = fig.add_gridspec(len(names), depths + 1, wspace=0.12, hspace=0.35,
                             top=1 - 0.9 / (2.3 * len(names) + 0.6))
    side = int(np.ceil(np.sqrt(n_channels)))
    for r, name in enumerate(names):
        ax = fig.add_subplot(outer[r, 0])
        ax.imshow(_image_for_display(image), cmap="gray")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(name, fontsize=10)
        if r == 0:
            ax.set_title("input", fontsize=9)
        for c, (label, fmap) in enumerate(maps[name]):
            fmap = np.asarray(fmap)
            top = np.argsort(-fmap.mean(axis=(1, 2)))[:n_channels]
            inner = outer[r, c + 1].subgridspec(side, side, wspace=0.04, hspace=0.04)
            for k, ch in enumerate(top):
                ax = fig.add_subplot(inner[k // side, k % side])
                ax.imshow(fmap[ch], cmap="viridis", interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if k == 0:
                    ax.set_title(f"{label}\n{fmap.shape[0]}×{fmap.shape[1]}×{fmap.shape[2]}", fontsize=7,
                                 loc="left")
    fig.suptitle(title)
    return save_figure(fig, path)


INIT_REGIME_LABELS = {"pytorch_default": "plain, PyTorch default init", "kaiming": "plain, Kaiming init",
                      "kaiming_bn": "plain, Kaiming + BN", "residual": "residual (BasicBlock), Kaiming + BN"}


@styled
def plot_init_study(summary: Sequence[dict], path: Path, title: str) -> Path:
    """Gradients at initialisation, measured vs predicted (``utils.analysis.signal_propagation``).

    ``summary``: rows of ``summarise_init_study``. Left: ``rms(grad first conv) / rms(grad last conv)``
    against depth per regime, measured (mean of log10 over seeds, bars = min-max) and predicted
    (solid: ReLU-mean reading; dashed + band: He's zero-mean reading, where it differs). Middle:
    per-layer gradient RMS relative to the last conv at each regime's largest depth, measured
    (solid) and predicted (dashed). Right: the same without regimes spanning more than 4 decades.
    """
    regimes = list(dict.fromkeys(s["regime"] for s in summary))
    colors = dict(zip(regimes, palette(len(regimes))))
    deepest = {r: max((s for s in summary if s["regime"] == r), key=lambda s: s["depth"]) for r in regimes}
    zoom = [r for r in regimes if np.nanmin(deepest[r]["log10_relative_grad"] + deepest[r]["predicted_log10_relative_grad"]) > -4]
    n_panels = 3 if 0 < len(zoom) < len(regimes) else 2
    fig, axes = plt.subplots(1, n_panels, figsize=(6.2 * n_panels, 5.2), layout="constrained")
    ax = axes[0]
    for r in regimes:
        rows = sorted((s for s in summary if s["regime"] == r), key=lambda s: s["depth"])
        d = np.array([s["depth"] for s in rows], dtype=float)
        mean = np.array([s["log10_ratio"]["mean"] for s in rows])
        lo, hi = (np.array([s[k] for s in rows]) for k in ("log10_ratio_min", "log10_ratio_max"))
        ax.errorbar(d, 10 ** mean, yerr=[10 ** mean - 10 ** lo, 10 ** hi - 10 ** mean], fmt="o", ms=6, capsize=4,
                    color=colors[r], label=f"{INIT_REGIME_LABELS.get(r, r)} ({rows[0]['log10_ratio']['n']} seeds)")
        pred = np.array([s["predicted_log10_ratio"] for s in rows])
        zero = np.array([s["predicted_log10_ratio_zero_mean"] for s in rows])
        ax.plot(d, 10 ** pred, "-", color=colors[r], lw=1.5)
        if not np.allclose(pred, zero):
            ax.plot(d, 10 ** zero, "--", color=colors[r], lw=1.2)
            ax.fill_between(d, 10 ** np.minimum(pred, zero), 10 ** np.maximum(pred, zero), color=colors[r], alpha=0.12)
    ax.plot([], [], "k-", label="predicted (ReLU-mean reading)")
    ax.plot([], [], "k--", label="predicted, BN nets: He's zero-mean reading (shaded: between)")
    ax.axhline(1, color="grey", lw=0.8)
    depths = sorted({s["depth"] for s in summary})
    ax.set(yscale="log", xticks=depths, xlabel="depth (weighted layers: convs + classifier)",
           ylabel="RMS ∂L/∂W first conv / RMS ∂L/∂W last conv (log scale)",
           title="First/last conv gradient RMS ratio at init\n(points: measured mean, bars: min–max over seeds)")
    ax.legend(fontsize=8, loc="lower left")
    for ax, shown, what in ((axes[1], regimes, "all regimes"), (axes[-1], zoom, "zoom")):
        if ax is axes[-1] and n_panels == 2:
            break
        for r in shown:
            s = deepest[r]
            x = np.arange(1, len(s["layers"]) + 1)
            ax.plot(x, 10 ** np.asarray(s["log10_relative_grad"]), "-", marker=".", color=colors[r],
                    label=f"{INIT_REGIME_LABELS.get(r, r)}, depth {s['depth']}")
            ax.plot(x, 10 ** np.asarray(s["predicted_log10_relative_grad"]), "--", color=colors[r], lw=1.2)
        ax.plot([], [], "k-", marker=".", label="measured (mean of log10 over seeds)")
        ax.plot([], [], "k--", label="predicted (ReLU-mean reading)")
        ax.axhline(1, color="grey", lw=0.8)
        ax.set(yscale="log", xlabel="conv layer along the main path (1 = first, input side)",
               ylabel="RMS ∂L/∂W conv l / RMS ∂L/∂W last conv (log scale)",
               title=f"Per-layer gradient RMS at init, deepest nets ({what})")
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        if ax is not axes[1]:       # the zoom spans a few decades: label 1-2-5, plain numbers
            ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(title)
    return save_figure(fig, path)


# --------------------------------------------------------------------- v2: seeds, RF growth
def _ci(s: dict | None, scale: float = 100.0) -> tuple[float, float, float]:
    """``(mean, lower error, upper error)`` of a summary or difference dict, scaled; NaN if absent."""
    if not s:
        return np.nan, 0.0, 0.0
    mean = s.get("mean", s.get("mean_difference"))
    lo, hi = s.get("ci95_low"), s.get("ci95_high")
    if mean is None:
        return np.nan, 0.0, 0.0
    lo = mean if lo is None or not np.isfinite(lo) else lo
    hi = mean if hi is None or not np.isfinite(hi) else hi
    return scale * mean, scale * (mean - lo), scale * (hi - mean)


def dots(ax: plt.Axes, labels: Sequence[str], entries: Sequence[dict | None], scale: float = 100.0,
         offset: float = 0.0, **kw) -> None:
    """One dot per entry with its 95 % interval as an error bar, at x = 0, 1, ... (+ ``offset``)."""
    vals = [_ci(e, scale) for e in entries]
    xs = np.arange(len(labels)) + offset
    ax.errorbar(xs, [v[0] for v in vals], yerr=[[v[1] for v in vals], [v[2] for v in vals]],
                fmt=kw.pop("marker", "o"), capsize=4, **kw)
    ax.set_xticks(np.arange(len(labels)), labels)


@styled
def plot_kernel_comparison(over_seeds: dict, path: Path, title: str) -> Path:
    """Left: test, validation and clean training accuracy per variant (mean, 95 % t interval over
    seeds). Right: each variant minus the reference, paired by seed: test accuracy (bootstrap
    over seeds and test images), training accuracy and train-validation gap (paired t)."""
    variants = over_seeds["variants"]
    names = list(variants)
    short = [variants[n]["variant"] for n in names]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), layout="constrained")
    for (metric, label), off, (color, marker) in zip(
            (("test_acc", "test"), ("final_val_acc", "validation"), ("final_train_acc", "training (clean)")),
            (-0.15, 0.0, 0.15), color_markers(3)):
        dots(axes[0], short, [variants[n][metric] for n in names], offset=off, color=color, marker=marker,
             label=label)
    axes[0].set(ylabel="accuracy (%)", title=f"accuracy per variant, n = {max(len(v['seeds']) for v in variants.values())} seeds")
    axes[0].legend()
    rows = over_seeds["vs_reference"]
    diff_names = [r["variant_a"] for r in rows]
    for (metric, label), off, (color, marker) in zip(
            (("test_acc", "test accuracy (bootstrap)"), ("final_train_acc", "training accuracy (paired t)"),
             ("gap", "train − val gap (paired t)")), (-0.15, 0.0, 0.15), color_markers(3)):
        dots(axes[1], diff_names, [r["difference"][metric] for r in rows], offset=off, color=color, marker=marker,
             label=label)
    axes[1].axhline(0, color="k", lw=0.8)
    ref = over_seeds["reference_variant"]
    axes[1].set(ylabel=f"variant − {ref} (pp), 95 % CI", title=f"paired differences vs {ref}")
    axes[1].legend()
    fig.suptitle(title)
    return save_figure(fig, path)


def _square(ax: plt.Axes, side: float, center: Sequence[float], **kw) -> None:
    half = side / 2
    ax.add_patch(Rectangle((center[1] - half, center[0] - half), side, side, fill=False, **kw))


@styled
def plot_erf_maps(maps: dict, path: Path, title: str) -> Path:
    """ERF maps, one column per variant, at initialisation (top) and trained (bottom), each scaled
    to its own maximum; overlays: the theoretical RF (dashed cyan) and the centred square holding
    95 % of the ERF mass (solid green), both in the legend. ``maps``: variant -> ``init``,
    ``trained`` arrays, ``theoretical_rf``, ``center``, ``extent_init``, ``extent_trained``."""
    names = list(maps)
    fig, axes = plt.subplots(2, len(names), figsize=(3.4 * len(names) + 1.5, 7.6), squeeze=False,
                             layout="constrained")
    im = None
    half = 0.6 * max(m["theoretical_rf"] for m in maps.values()) + 4   # the same zoom for every panel
    for col, name in enumerate(names):
        m = maps[name]
        for row, key, ext in ((0, "init", "extent_init"), (1, "trained", "extent_trained")):
            ax = axes[row, col]
            erf = np.asarray(m[key], dtype=float)
            im = ax.imshow(erf / max(float(erf.max()), np.finfo(float).tiny), cmap="inferno", vmin=0, vmax=1,
                           interpolation="nearest")
            _square(ax, m["theoretical_rf"], m["center"], edgecolor="cyan", ls="--", lw=1.2)
            _square(ax, m[ext], m["center"], edgecolor="lime", lw=1.5)
            ax.set_title(f"{name}, {'at init' if row == 0 else 'trained'}\nRF {m['theoretical_rf']} px, "
                         f"95 % of ERF in {m[ext]} px", fontsize=9)
            cy, cx = m["center"]
            ax.set(xlim=(cx - half, cx + half), ylim=(cy + half, cy - half), ylabel="y (px)",
                   xlabel="x (px)" if row == 1 else None)
            ax.grid(False)
    handles = [Line2D([], [], color="cyan", ls="--", label="theoretical receptive field"),
               Line2D([], [], color="lime", label="centred square holding 95 % of the ERF")]
    fig.legend(handles=handles, loc="outside lower center", ncol=2)
    fig.colorbar(im, ax=axes, shrink=0.6, label="|∂unit/∂input| per pixel / its maximum in the map")
    fig.suptitle(title)
    return save_figure(fig, path)


@styled
def plot_erf_init_vs_trained(erf: dict, path: Path, title: str) -> Path:
    """Per variant, the ERF's RMS radius relative to a flat box over its theoretical RF at init and
    trained (mean, 95 % t interval over seeds), and trained − init paired by seed."""
    names = list(erf)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), layout="constrained")
    for key, off, label, (color, marker) in (("init", -0.1, "at initialisation", color_markers(2)[0]),
                                             ("trained", 0.1, "trained", color_markers(2)[1])):
        dots(axes[0], names, [erf[n]["rms_ratio"][key] for n in names], 1.0, off, color=color, marker=marker,
             label=label)
    axes[0].axhline(1, color="k", lw=0.8, ls=":", label="flat box over the RF (ratio 1)")
    axes[0].set(ylabel="ERF RMS radius / flat-box RMS radius", title="spread of the ERF")
    axes[0].legend()
    dots(axes[1], names, [erf[n]["rms_ratio"]["trained_minus_init"] for n in names], 1.0, color="C3")
    axes[1].axhline(0, color="k", lw=0.8)
    axes[1].set(ylabel="trained − init (ratio units), 95 % CI", title="what training changed (paired by seed)")
    fig.suptitle(title)
    return save_figure(fig, path)


@styled
def plot_rf_growth(variants: Sequence[dict], path: Path, title: str) -> Path:
    """How the measured ERF grows with the theoretical RF, layer by layer. Each variant dict:
    ``name``, ``growth`` rows with ``theoretical_rf``, ``erf_rms_radius``, ``flat_box_rms_radius``.
    Solid: the ERF's RMS radius; dashed: a flat box over the same RF. Variants sharing an RF are
    drawn with distinct markers and a small horizontal offset so none hides another."""
    fig, ax = plt.subplots(figsize=(9, 5), layout="constrained")
    n = len(variants)
    for k, ((color, marker), v) in enumerate(zip(color_markers(n), variants)):
        off = 0.4 * (k - (n - 1) / 2)
        rf = np.asarray([row["theoretical_rf"] for row in v["growth"]], dtype=float) + off
        ax.plot(rf, [row["erf_rms_radius"] for row in v["growth"]], "-", marker=marker, color=color,
                label=f"{v['name']}: ERF")
        ax.plot(rf, [row["flat_box_rms_radius"] for row in v["growth"]], "--", marker=marker, mfc="none",
                color=color, alpha=0.6, label=f"{v['name']}: flat box over the RF")
    ax.set(xlabel="theoretical receptive field of the layer (px; variants offset by ±0.6 px)",
           ylabel="RMS distance from the RF centre (px)", title=title)
    ax.legend(fontsize=8, ncol=2)
    return save_figure(fig, path)
