"""Figures of the architecture analysis (task 2): size/cost bars, receptive fields, first-layer
activations and filters, feature maps by depth, plain vs residual curves and the first/last-layer
gradient ratio. Shared style and helpers: ``utils.visualization_utils``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import ticker

from utils.visualization_utils import palette, plain_minor_log_labels, save_figure, styled
from utils.engine.gradients import first_last_ratio
from utils.engine.records import RunRecord


def _num(v: float | None) -> float:
    return np.nan if v is None else float(v)


@styled
def plot_architecture_bars(records: Sequence[RunRecord], path: Path, title: str, target_params: int | None = None,
                           tol: float = 0.02, step_ms: dict | None = None) -> Path:
    """Parameters (with the ±tol band around ``target_params`` if given), forward MFLOPs, training
    time, [``step_ms``: model -> forward+backward ms per batch measured side by side] and final
    test accuracy per model, as bars with their values written on them."""
    names = [r.label for r in records]
    s = [r.summary for r in records]
    colors = palette(len(records))
    panels = (([x.params for x in s], "parameters", "{:,.0f}"),
              ([x.mflops for x in s], "forward MFLOPs per image", "{:.1f}"),
              ([_num(x.train_time_s) for x in s], "training time, all epochs (s)", "{:.3g}"))
    if step_ms is not None:
        panels += (([step_ms.get(r.model, np.nan) for r in records],
                    "fwd+bwd time per batch (ms),\nmodels timed in turns", "{:.0f}"),)
    panels += (([100 * _num(x.test_acc) for x in s], "test accuracy (%)", "{:.2f}"),)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.3 * len(panels), 4.4))
    for ax, (vals, label, fmt) in zip(axes, panels):
        ax.bar(names, vals, color=colors)
        for i, v in enumerate(vals):
            ax.annotate(fmt.format(v), (i, v), ha="center", va="bottom", fontsize=9 if len(names) <= 4 else 7.5)
        ax.set(ylabel=label)
        ax.tick_params(axis="x", rotation=15 if len(names) <= 4 else 40)
        if len(names) > 4:
            plt.setp(ax.get_xticklabels(), ha="right", rotation_mode="anchor")
    if target_params:
        axes[0].axhspan(target_params * (1 - tol), target_params * (1 + tol), color="grey", alpha=0.25,
                        label=f"target ±{100 * tol:.0f} %")
        axes[0].legend(loc="lower right")
    acc = [v for v in panels[-1][0] if np.isfinite(v)]
    if acc:  # zoom in: differences of a few points are the story, not the distance from 0
        axes[-1].set_ylim(max(0, min(acc) - 8), min(100, max(acc) + 4))
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


@styled
def plot_receptive_fields(variants: Sequence[dict], path: Path, title: str, layer_panel: bool = True) -> Path:
    """Theoretical RF vs empirical ERF, one column per variant.

    Each variant dict: ``name``, ``rf_layers`` (list of ``(layer label, RF size)``), ``rf``
    (theoretical RF of the analysed unit), ``center`` ``(cy, cx)`` of that RF on the input,
    ``erf_init`` / ``erf_trained`` (``(H, W)`` arrays summing to 1) and ``extent_init`` /
    ``extent_trained`` (side of the square holding 95 % of the ERF). Rows: theoretical RF
    (the input pixels that can influence the unit), ERF at initialisation, ERF after training
    (each map scaled to its own maximum: a shared scale leaves the spread-out ERFs of large
    kernels near-black; the share of the mass is read from the squares: dashed = theoretical
    RF, solid = 95 % ERF), and below all of them the RF size layer by layer (``layer_panel``;
    :func:`plot_rf_growth` draws the growth against the RF in pixels instead).
    """
    from matplotlib.patches import Rectangle

    n = len(variants)
    rows = 4 if layer_panel else 3
    fig = plt.figure(figsize=(3.6 * n + 1.2, 13.5 if layer_panel else 10.5))
    grid = fig.add_gridspec(rows, n, height_ratios=[1, 1, 1, 1.1][:rows], hspace=0.42, wspace=0.3,
                            top=0.93 if layer_panel else 0.9)

    def square(ax, side, center, **kw):
        half = side / 2
        ax.add_patch(Rectangle((center[1] - half, center[0] - half), side, side, fill=False, **kw))

    im = None
    for col, v in enumerate(variants):
        h, w = np.asarray(v["erf_trained"]).shape
        cy, cx = v["center"]
        ax = fig.add_subplot(grid[0, col])
        yy, xx = np.mgrid[0:h, 0:w]
        inside = (np.abs(yy - cy) <= (v["rf"] - 1) / 2) & (np.abs(xx - cx) <= (v["rf"] - 1) / 2)
        ax.imshow(inside, cmap="Greys", vmin=0, vmax=1.5, interpolation="nearest")
        ax.set_title(f"{v['name']}\ntheoretical RF {v['rf']}×{v['rf']} px"
                     + (" (> image)" if v["rf"] > h else ""), fontsize=10)
        for row, key, ext in ((1, "erf_init", "extent_init"), (2, "erf_trained", "extent_trained")):
            ax = fig.add_subplot(grid[row, col])
            erf = np.asarray(v[key], dtype=float)
            im = ax.imshow(erf / max(float(erf.max()), np.finfo(float).tiny), cmap="inferno", vmin=0, vmax=1,
                           interpolation="nearest")
            square(ax, v["rf"], (cy, cx), edgecolor="cyan", ls="--", lw=1.2)
            square(ax, v[ext], (cy, cx), edgecolor="lime", lw=1.5)
            ax.set_title(f"ERF {'at init' if row == 1 else 'trained'}: 95 % in {v[ext]}×{v[ext]} px", fontsize=10)
        for ax in fig.axes[-3:]:
            ax.set(xlim=(-0.5, w - 0.5), ylim=(h - 0.5, -0.5), xlabel="x (px)", ylabel="y (px)")
            ax.grid(False)
    fig.colorbar(im, ax=fig.axes, shrink=0.35, location="right", anchor=(0, 0.75),
                 label="ERF: |∂unit/∂input| per pixel / its maximum in the map")
    if not layer_panel:
        fig.suptitle(title, y=0.975)
        return save_figure(fig, path)
    ax = fig.add_subplot(grid[3, :])
    for color, v in zip(palette(n), variants):
        sizes = [s for _, s in v["rf_layers"]]
        ax.plot(range(1, len(sizes) + 1), sizes, marker="o", color=color, label=f"{v['name']} (final {sizes[-1]} px)")
    h = np.asarray(variants[0]["erf_trained"]).shape[0]
    ax.axhline(h, color="k", ls=":", lw=1, label=f"image size ({h} px)")
    ax.set(xlabel="conv / pool layer (input → output)", ylabel="theoretical RF side (px)",
           title="Theoretical receptive field layer by layer (dashed cyan squares above; solid green: 95 % ERF)")
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.legend(fontsize=8, ncol=2)
    fig.suptitle(title, y=0.975)
    return save_figure(fig, path)


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


@styled
def plot_plain_vs_residual(groups: Sequence[tuple[str, Sequence[RunRecord]]], path: Path, title: str,
                           label: Callable[[RunRecord], str] = lambda r: r.label) -> Path:
    """Degradation plot in the style of He et al. (2016), Fig. 1/6, drawn as accuracy: per group
    of models (one column), the training loss and the train (dashed) / validation (solid) accuracy
    per epoch; ``label`` names a run in the legends."""
    fig, axes = plt.subplots(2, len(groups), figsize=(7 * len(groups), 8.5), squeeze=False, layout="constrained")
    for col, (group_title, records) in enumerate(groups):
        for color, r in zip(palette(len(records)), records):
            h = r.history
            if not h.epoch:
                axes[0, col].plot([], [], color=color, label=f"{label(r)}: no finished epoch")
                continue
            axes[0, col].plot(h.epoch, h.train_loss, marker="o", color=color, label=label(r))
            axes[1, col].plot(h.epoch, 100 * np.asarray(h.train_eval_acc), "--", marker="o", ms=3, color=color)
            test = "" if r.test_acc is None else f" (test acc {100 * r.test_acc:.1f} %)"
            axes[1, col].plot(h.epoch, 100 * np.asarray(h.val_acc), "-", marker="o", color=color,
                              label=f"{label(r)}{test}")
        axes[0, col].set(title=f"{group_title}: training loss", xlabel="epoch",
                         ylabel="training cross-entropy (running mean)", yscale="log")
        plain_minor_log_labels(axes[0, col].yaxis)
        axes[1, col].plot([], [], "k--", label="train accuracy (eval mode)")
        axes[1, col].plot([], [], "k-", label="validation accuracy")
        axes[1, col].set(title=f"{group_title}: accuracy", xlabel="epoch", ylabel="accuracy (%)")
        for ax in axes[:, col]:
            ax.legend(fontsize=8)
            ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    fig.suptitle(title)
    return save_figure(fig, path)


@styled
def plot_gradient_ratio(records: Sequence[RunRecord], path: Path, title: str,
                        label: Callable[[RunRecord], str] = lambda r: r.label) -> Path:
    """First-layer / last-layer gradient norm ratio over training, all models in one panel
    (log scale; 1 = the input layer gets as much gradient as the output layer; a gap where the
    last layer's gradient is exactly 0)."""
    fig, ax = plt.subplots(figsize=(10, 4.8), layout="constrained")
    for color, r in zip(palette(len(records)), records):
        g = r.grad_stats
        if not g.l2:
            continue
        ratio = first_last_ratio(g.l2)
        ax.plot(g.step, ratio, color=color, marker=".", label=f"{label(r)} (first step {ratio[0]:.2g})")
    ax.axhline(1, color="k", lw=0.8)
    ax.set(yscale="log", xlabel="training step (batch)", ylabel="‖grad first conv‖ / ‖grad last layer‖",
           title=title)
    ax.legend(fontsize=8, ncol=2)
    return save_figure(fig, path)


INIT_REGIME_LABELS = {"pytorch_default": "plain, PyTorch default init", "kaiming": "plain, Kaiming init",
                      "kaiming_bn": "plain, Kaiming + BN", "residual": "residual (BasicBlock), Kaiming + BN"}


@styled
def plot_init_study(summary: Sequence[dict], path: Path, title: str) -> Path:
    """Gradients at initialisation, measured vs predicted (``utils.analysis.signal_propagation``).

    ``summary``: rows of ``summarise_init_study``. Left: ``||grad first conv|| / ||grad last conv||``
    against depth per regime, measured (mean of log10 over seeds, bars = min-max) and predicted
    (solid: ReLU-mean reading; dashed + band: He's zero-mean reading, where it differs). Middle:
    per-layer gradient norm relative to the last conv at each regime's largest depth, measured
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
           ylabel="‖∂L/∂W first conv‖ / ‖∂L/∂W last conv‖ (log scale)",
           title="First/last conv gradient ratio at init\n(points: measured mean, bars: min–max over seeds)")
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
               ylabel="‖∂L/∂W conv l‖ / ‖∂L/∂W last conv‖ (log scale)",
               title=f"Per-layer gradient norm at init, deepest nets ({what})")
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        if ax is not axes[1]:       # the zoom spans a few decades: label 1-2-5, plain numbers
            ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(title)
    return save_figure(fig, path)


# --------------------------------------------------------------------- v2: seeds, RF growth
def _mean_and_half(s: dict, scale: float) -> tuple[float, float]:
    mean = s["mean"] if s["mean"] is not None else np.nan
    half = s["half_width"] if s["half_width"] is not None and np.isfinite(s["half_width"]) else 0.0
    return scale * mean, scale * half


@styled
def plot_variants_over_seeds(variants: dict, path: Path, title: str, target_params: int | None = None,
                             tol: float = 0.02) -> Path:
    """Parameters (with the ±tol band around ``target_params``), forward MFLOPs, training time and
    test accuracy per variant; time and accuracy are means over seeds with their 95 % intervals.
    ``variants``: label -> a dict of ``utils.studies.architecture.numbers.variant_numbers``."""
    names = list(variants)
    colors = palette(len(names))
    v = [variants[n] for n in names]
    times = [_mean_and_half(x["train_time_s"], 1.0) for x in v]
    accs = [_mean_and_half(x["test_acc"], 100.0) for x in v]
    panels = (([x["params"] for x in v], None, "parameters", "{:,.0f}"),
              ([x["mflops"] for x in v], None, "forward MFLOPs per image", "{:.1f}"),
              ([t for t, _ in times], [h for _, h in times], "training time (s), mean ± 95 % CI", "{:.3g}"),
              ([a for a, _ in accs], [h for _, h in accs], "test accuracy (%), mean ± 95 % CI", "{:.2f}"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.3 * len(panels), 4.4), layout="constrained")
    for ax, (vals, half, label, fmt) in zip(axes, panels):
        ax.bar(names, vals, color=colors, yerr=half, capsize=5 if half else 0)
        for i, val in enumerate(vals):
            ax.annotate(fmt.format(val) + ("" if not half or not half[i] else f" ± {fmt.format(half[i])}"),
                        (i, val), ha="center", va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
        ax.set(ylabel=label)
        ax.tick_params(axis="x", rotation=15)
    if target_params:
        axes[0].axhspan(target_params * (1 - tol), target_params * (1 + tol), color="grey", alpha=0.25,
                        label=f"target ±{100 * tol:.0f} %")
        axes[0].legend(loc="lower right")
    acc = [a for a in panels[-1][0] if np.isfinite(a)]
    if acc:
        axes[-1].set_ylim(max(0, min(acc) - 8), min(100, max(acc) + 4))
    n_seeds = sorted({len(x["seeds"]) for x in v})
    fig.suptitle(f"{title}; seeds per variant: {'/'.join(map(str, n_seeds))}")
    return save_figure(fig, path)


@styled
def plot_rf_growth(variants: Sequence[dict], path: Path, title: str, image_size: int | None = None) -> Path:
    """How the measured ERF grows with the theoretical RF, layer by layer, against the RF in pixels
    (so nets with different numbers of layers line up). Each variant dict: ``name`` and
    ``growth``, rows with ``theoretical_rf``, ``erf_extent_50`` / ``flat_box_extent_50`` (side of
    the centred square holding half the mass) and ``erf_rms_radius`` / ``flat_box_rms_radius``.
    Solid: the trained net's ERF; dashed: a flat box over the same RF (what "every pixel of the RF
    counts alike" gives); below the dashed line the ERF is concentrated towards the centre."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), layout="constrained")
    panels = (("erf_extent_50", "flat_box_extent_50", "side of the square holding 50 % of the ERF (px)"),
              ("erf_rms_radius", "flat_box_rms_radius", "RMS distance of the ERF from the RF centre (px)"))
    for color, v in zip(palette(len(variants)), variants):
        rf = [row["theoretical_rf"] for row in v["growth"]]
        for ax, (erf_key, box_key, _) in zip(axes, panels):
            ax.plot(rf, [row[erf_key] for row in v["growth"]], "-", marker="o", color=color, label=f"{v['name']}: ERF")
            ax.plot(rf, [row[box_key] for row in v["growth"]], "--", marker=".", color=color, alpha=0.7,
                    label=f"{v['name']}: flat box over the RF")
    for ax, (_, _, ylabel) in zip(axes, panels):
        if image_size:
            ax.axvline(image_size, color="k", ls=":", lw=1, label=f"image size ({image_size} px)")
        ax.set(xlabel="theoretical receptive field of the layer (px)", ylabel=ylabel)
    axes[0].legend(fontsize=7, ncol=2)
    fig.suptitle(title)
    return save_figure(fig, path)
