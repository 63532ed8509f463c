"""Every figure of the study. Each function takes result records (see README "Result files") or
arrays, draws one self-explanatory figure (title, axis labels with units, legend) and saves it as
PNG atomically via :func:`save_figure`.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402

from utils.files import atomic_write_bytes  # noqa: E402

sns.set_theme(context="notebook", style="whitegrid", font_scale=1.0)
plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 110, "axes.titlesize": 12, "axes.labelsize": 11,
                     "legend.fontsize": 9, "figure.titlesize": 14})


def save_figure(fig: plt.Figure, path: Path) -> Path:
    """Save ``fig`` as PNG at ``path`` (temp file + rename) and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


def _palette(n: int) -> list:
    return sns.color_palette("tab10", n_colors=max(n, 3))


def _label(r: dict) -> str:
    return r["model"] + ("" if r["status"] == "completed" else f" ({r['status']})")


# --------------------------------------------------------------------------- training curves
def plot_learning_curves(records: Sequence[dict], path: Path, title: str) -> Path:
    """Loss and accuracy per epoch, train (dashed) vs test (solid), every model in one figure."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(13, 4.8))
    for color, r in zip(_palette(len(records)), records):
        h = r["history"]
        ax_loss.plot(h["epoch"], h["train_eval_loss"], "--", color=color, marker="o", ms=3)
        ax_loss.plot(h["epoch"], h["test_loss"], "-", color=color, marker="o", ms=3, label=_label(r))
        ax_acc.plot(h["epoch"], 100 * np.asarray(h["train_eval_acc"]), "--", color=color, marker="o", ms=3)
        ax_acc.plot(h["epoch"], 100 * np.asarray(h["test_acc"]), "-", color=color, marker="o", ms=3, label=_label(r))
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss", yscale="log")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    for ax in (ax_loss, ax_acc):
        ax.plot([], [], "k--", label="train (eval mode)")
        ax.plot([], [], "k-", label="test")
        ax.legend(loc="best")
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_generalisation_gap(records: Sequence[dict], path: Path, title: str) -> Path:
    """Train minus test accuracy per epoch (percentage points): the overfitting curve."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for color, r in zip(_palette(len(records)), records):
        h = r["history"]
        gap = 100 * (np.asarray(h["train_eval_acc"]) - np.asarray(h["test_acc"]))
        ax.plot(h["epoch"], gap, marker="o", color=color, label=_label(r))
    ax.axhline(0, color="k", lw=0.8)
    ax.set(xlabel="epoch", ylabel="train acc − test acc (pp)", title=title)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend()
    return save_figure(fig, path)


# ------------------------------------------------------------------------------ costs & sizes
def plot_accuracy_vs_cost(records: Sequence[dict], path: Path, title: str) -> Path:
    """Test accuracy against parameters, FLOPs and training time (log x axes)."""
    done = [r for r in records if r["summary"].get("final_test_acc") is not None]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    specs = (("params", "parameters"), ("mflops", "forward MFLOPs per image"), ("train_time_s", "training time (s)"))
    for ax, (key, xlabel) in zip(axes, specs):
        for color, r in zip(_palette(len(done)), done):
            s = r["summary"]
            ax.scatter(s[key], 100 * s["final_test_acc"], s=70, color=color, label=r["model"], zorder=3)
            ax.annotate(r["model"], (s[key], 100 * s["final_test_acc"]), textcoords="offset points",
                        xytext=(5, 5), fontsize=8)
        ax.set(xscale="log", xlabel=xlabel, ylabel="test accuracy (%)")
    axes[0].legend(loc="lower right")
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_parameter_breakdown(records: Sequence[dict], path: Path, title: str, top: int = 12) -> Path:
    """Parameters per layer for each model (horizontal bars, the ``top`` largest layers)."""
    fig, axes = plt.subplots(1, len(records), figsize=(5.2 * len(records), 4.8), squeeze=False)
    for ax, color, r in zip(axes[0], _palette(len(records)), records):
        per = sorted(r["params"]["per_layer"].items(), key=lambda kv: -kv[1])[:top]
        names = [n if len(n) < 28 else "…" + n[-27:] for n, _ in per][::-1]
        ax.barh(names, [v for _, v in per][::-1], color=color)
        ax.set(xscale="log", xlabel="parameters (log scale)",
               title=f"{r['model']}\n{r['params']['total']:,} parameters in total")
        ax.tick_params(axis="y", labelsize=8)
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_timing(records: Sequence[dict], path: Path, title: str) -> Path:
    """Training time per epoch, batch-1 latency and large-batch throughput per model."""
    done = [r for r in records if r.get("inference")]
    names = [r["model"] for r in done]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    colors = _palette(len(done))
    vals = (([r["summary"]["epoch_time_s"] for r in done], "seconds per training epoch"),
            ([r["inference"]["latency_ms_batch1"] for r in done], "latency, batch of 1 (ms)"),
            ([r["inference"]["throughput_img_s"] for r in done], "inference throughput (images/s)"))
    for ax, (v, label) in zip(axes, vals):
        ax.bar(names, v, color=colors)
        ax.set(ylabel=label)
        ax.tick_params(axis="x", rotation=20)
        for i, x in enumerate(v):
            ax.annotate(f"{x:,.3g}", (i, x), ha="center", va="bottom", fontsize=8)
    fig.suptitle(title)
    return save_figure(fig, path)


# ------------------------------------------------------------------------------- confusions
def plot_confusion_matrices(records: Sequence[dict], path: Path, title: str) -> Path:
    """Row-normalised confusion matrix per model (rows: true class; cells: % of that class)."""
    from sklearn.metrics import confusion_matrix

    done = [r for r in records if r.get("predictions")]
    n = len(done)
    fig, axes = plt.subplots(1, n, figsize=(6.2 * n, 5.6), squeeze=False)
    for ax, r in zip(axes[0], done):
        classes = r["class_names"]
        cm = confusion_matrix(r["labels"], r["predictions"], labels=range(len(classes)), normalize="true")
        sns.heatmap(100 * cm, ax=ax, annot=True, fmt=".0f", cmap="Blues", vmin=0, vmax=100, cbar=ax is axes[0][-1],
                    xticklabels=classes, yticklabels=classes, annot_kws={"fontsize": 7}, square=True,
                    cbar_kws={"label": "% of the true class"})
        acc = 100 * np.mean(np.asarray(r["labels"]) == np.asarray(r["predictions"]))
        ax.set(xlabel="predicted class", ylabel="true class", title=f"{r['model']} (test acc {acc:.2f} %)")
        ax.tick_params(axis="x", rotation=45, labelsize=8)
        ax.tick_params(axis="y", rotation=0, labelsize=8)
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_per_class_accuracy(records: Sequence[dict], path: Path, title: str) -> Path:
    """Test accuracy of each class, grouped bars per model."""
    from sklearn.metrics import recall_score

    done = [r for r in records if r.get("predictions")]
    classes = done[0]["class_names"]
    x = np.arange(len(classes))
    width = 0.8 / len(done)
    fig, ax = plt.subplots(figsize=(12, 4.5))
    for i, (color, r) in enumerate(zip(_palette(len(done)), done)):
        rec = recall_score(r["labels"], r["predictions"], labels=range(len(classes)), average=None, zero_division=0)
        ax.bar(x + (i - (len(done) - 1) / 2) * width, 100 * rec, width, color=color, label=r["model"])
    ax.set_xticks(x, classes, rotation=20)
    ax.set(ylabel="test accuracy of the class (%)", title=title, ylim=(0, 100))
    ax.legend(ncol=len(done), loc="lower center")
    return save_figure(fig, path)


# ---------------------------------------------------------------------------- gradient flow
def _short(name: str) -> str:
    return name.replace(".weight", "").replace("features.", "f.").replace("stages.", "s.")[-24:]


def plot_gradient_flow(records: Sequence[dict], path: Path, title: str) -> Path:
    """Per-layer gradient L2 norms over training: a layer x step heat map (log10) per model, and
    the first-layer / last-layer norm ratio over training for all models."""
    done = [r for r in records if r["grad_stats"]["l2"]]
    fig = plt.figure(figsize=(6.8 * len(done), 10))
    grid = fig.add_gridspec(2, len(done), height_ratios=[3, 1.4], wspace=0.75, hspace=0.3)
    ax_ratio = fig.add_subplot(grid[1, :])
    for i, (color, r) in enumerate(zip(_palette(len(done)), done)):
        g = r["grad_stats"]
        norms = np.asarray(g["l2"], dtype=float)                      # (samples, layers)
        ax = fig.add_subplot(grid[0, i])
        logn = np.log10(np.maximum(norms.T, 1e-12))
        im = ax.imshow(logn, aspect="auto", cmap="viridis", interpolation="nearest",
                       extent=(g["step"][0], max(g["step"][-1], g["step"][0] + 1), len(g["names"]) - 0.5, -0.5))
        ax.set_yticks(range(len(g["names"])), [_short(n) for n in g["names"]], fontsize=7)
        ax.set(xlabel="training step", title=f"{r['model']}: log10 ‖grad‖₂ per layer")
        ax.grid(False)
        fig.colorbar(im, ax=ax, label="log10 gradient L2 norm")
        ratio = norms[:, 0] / np.maximum(norms[:, -1], 1e-12)
        ax_ratio.plot(g["step"], ratio, color=color, label=f"{r['model']} (median {np.median(ratio):.3g})")
    ax_ratio.set(yscale="log", xlabel="training step", ylabel="‖grad first layer‖ / ‖grad last layer‖",
                 title="Gradient ratio first / last layer (1 = gradients reach the input layer undiminished)")
    ax_ratio.axhline(1, color="k", lw=0.8)
    ax_ratio.legend()
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_gradient_norms_per_layer(records: Sequence[dict], path: Path, title: str,
                                  which: str = "first") -> Path:
    """Gradient L2 norm per layer (log scale) at the first recorded step (initialisation) and as
    the median over training, one line per model: where gradients vanish or explode."""
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.8))
    for color, r in zip(_palette(len(records)), records):
        g = r["grad_stats"]
        if not g["l2"]:
            continue
        norms = np.asarray(g["l2"], dtype=float)
        depth = np.arange(1, norms.shape[1] + 1)
        axes[0].plot(depth, norms[0], marker="o", ms=3, color=color, label=_label(r))
        axes[1].plot(depth, np.nanmedian(norms, axis=0), marker="o", ms=3, color=color, label=_label(r))
    axes[0].set(title="At initialisation (step 0)")
    axes[1].set(title="Median over training")
    for ax in axes:
        ax.set(yscale="log", xlabel="layer (input → output)", ylabel="gradient L2 norm of the weights")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return save_figure(fig, path)


# ------------------------------------------------------------------- architecture analysis
def plot_architecture_bars(records: Sequence[dict], path: Path, title: str, target_params: int | None = None,
                           tol: float = 0.02, step_ms: dict | None = None) -> Path:
    """Parameters (with the ±tol band around ``target_params`` if given), forward MFLOPs, training
    time, [``step_ms``: model -> forward+backward ms per batch measured side by side] and final
    test accuracy per model, as bars with their values written on them."""
    names = [_label(r) for r in records]
    s = [r["summary"] for r in records]
    colors = _palette(len(records))
    panels = (([x["params"] for x in s], "parameters", "{:,.0f}"),
              ([x["mflops"] for x in s], "forward MFLOPs per image", "{:.1f}"),
              ([x.get("train_time_s", np.nan) for x in s], "training time, all epochs (s)", "{:.3g}"))
    if step_ms is not None:
        panels += (([step_ms.get(r["model"], np.nan) for r in records],
                    "fwd+bwd time per batch (ms),\nmodels timed in turns", "{:.0f}"),)
    panels += (([100 * x.get("final_test_acc", np.nan) for x in s], "test accuracy (%)", "{:.2f}"),)
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


def plot_receptive_fields(variants: Sequence[dict], path: Path, title: str) -> Path:
    """Theoretical RF vs empirical ERF, one column per variant.

    Each variant dict: ``name``, ``rf_layers`` (list of ``(layer label, RF size)``), ``rf``
    (theoretical RF of the analysed unit), ``center`` ``(cy, cx)`` of that RF on the input,
    ``erf_init`` / ``erf_trained`` (``(H, W)`` arrays summing to 1) and ``extent_init`` /
    ``extent_trained`` (side of the square holding 95 % of the ERF). Rows: theoretical RF
    (the input pixels that can influence the unit), ERF at initialisation, ERF after training
    (one linear colour scale for all maps, so a concentrated ERF is visibly brighter; squares:
    dashed = theoretical RF, solid = 95 % ERF), and below all of them the RF size layer by layer.
    """
    from matplotlib.patches import Rectangle

    n = len(variants)
    fig = plt.figure(figsize=(3.6 * n + 1.2, 13.5))
    grid = fig.add_gridspec(4, n, height_ratios=[1, 1, 1, 1.1], hspace=0.42, top=0.93)
    vmax = max(float(np.max(v[k])) for v in variants for k in ("erf_init", "erf_trained"))

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
            im = ax.imshow(np.asarray(v[key]), cmap="inferno", vmin=0, vmax=vmax, interpolation="nearest")
            square(ax, v["rf"], (cy, cx), edgecolor="cyan", ls="--", lw=1.2)
            square(ax, v[ext], (cy, cx), edgecolor="lime", lw=1.5)
            ax.set_title(f"ERF {'at init' if row == 1 else 'trained'}: 95 % in {v[ext]}×{v[ext]} px", fontsize=10)
        for ax in fig.axes[-3:]:
            ax.set(xlim=(-0.5, w - 0.5), ylim=(h - 0.5, -0.5), xlabel="x (px)", ylabel="y (px)")
            ax.grid(False)
    fig.colorbar(im, ax=fig.axes, shrink=0.35, location="right", anchor=(0, 0.75),
                 label="ERF: share of |∂unit/∂input| per pixel")
    ax = fig.add_subplot(grid[3, :])
    for color, v in zip(_palette(n), variants):
        sizes = [s for _, s in v["rf_layers"]]
        ax.plot(range(1, len(sizes) + 1), sizes, marker="o", color=color, label=f"{v['name']} (final {sizes[-1]} px)")
    h = np.asarray(variants[0]["erf_trained"]).shape[0]
    ax.axhline(h, color="k", ls=":", lw=1, label=f"image size ({h} px)")
    ax.set(xlabel="conv / pool layer (input → output)", ylabel="theoretical RF side (px)",
           title="Theoretical receptive field layer by layer (dashed cyan squares above; solid green: 95 % ERF)")
    ax.legend(fontsize=8, ncol=2)
    fig.suptitle(title, y=0.975)
    return save_figure(fig, path)


def _image_for_display(img: np.ndarray) -> np.ndarray:
    """uint8/float ``(C, H, W)`` -> ``(H, W, C)`` or ``(H, W)`` in [0, 1] for imshow."""
    a = np.asarray(img, dtype=float)
    a = (a - a.min()) / max(a.max() - a.min(), 1e-12)
    return a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)


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


def plot_plain_vs_residual(groups: Sequence[tuple[str, Sequence[dict]]], path: Path, title: str) -> Path:
    """Degradation plot in the style of He et al. (2016), Fig. 1/6: per group of models (one
    column), the training loss and the train (dashed) / test (solid) error per epoch."""
    fig, axes = plt.subplots(2, len(groups), figsize=(7 * len(groups), 8.5), squeeze=False)
    for col, (group_title, records) in enumerate(groups):
        for color, r in zip(_palette(len(records)), records):
            h = r["history"]
            if not h["epoch"]:
                axes[0, col].plot([], [], color=color, label=f"{_label(r)}: no finished epoch")
                continue
            axes[0, col].plot(h["epoch"], h["train_loss"], marker="o", color=color, label=_label(r))
            axes[1, col].plot(h["epoch"], 100 * (1 - np.asarray(h["train_eval_acc"])), "--", marker="o", ms=3,
                              color=color)
            axes[1, col].plot(h["epoch"], 100 * (1 - np.asarray(h["test_acc"])), "-", marker="o", color=color,
                              label=f"{_label(r)} (test {100 * (1 - h['test_acc'][-1]):.1f} %)")
        axes[0, col].set(title=f"{group_title}: training loss", xlabel="epoch",
                         ylabel="mean training cross-entropy in the epoch", yscale="log")
        axes[1, col].plot([], [], "k--", label="train error (eval mode)")
        axes[1, col].plot([], [], "k-", label="test error")
        axes[1, col].set(title=f"{group_title}: error", xlabel="epoch", ylabel="error (%)")
        for ax in axes[:, col]:
            ax.legend(fontsize=8)
            ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_gradient_ratio(records: Sequence[dict], path: Path, title: str) -> Path:
    """First-layer / last-layer gradient norm ratio over training, all models in one panel
    (log scale; 1 = the input layer gets as much gradient as the output layer)."""
    fig, ax = plt.subplots(figsize=(10, 4.8))
    for color, r in zip(_palette(len(records)), records):
        g = r["grad_stats"]
        if not g["l2"]:
            continue
        norms = np.asarray(g["l2"], dtype=float)
        ratio = norms[:, 0] / np.maximum(norms[:, -1], 1e-30)
        ax.plot(g["step"], ratio, color=color, marker=".", label=f"{_label(r)} (init {ratio[0]:.2g})")
    ax.axhline(1, color="k", lw=0.8)
    ax.set(yscale="log", xlabel="training step (batch)", ylabel="‖grad first conv‖ / ‖grad last layer‖",
           title=title)
    ax.legend(fontsize=8, ncol=2)
    return save_figure(fig, path)


# ------------------------------------------------------------------- custom layers & blocks
def plot_layer_speed(rows: Sequence[dict], path: Path, title: str) -> Path:
    """Forward+backward time per call of each custom layer, its same-maths autograd twin and the
    standard layer (horizontal bars, log x), annotated with the custom / other ratios."""
    labels = [f"{r['layer']}\n{r['variant']}" for r in rows][::-1]
    y = np.arange(len(rows))
    series = (("custom_ms", "custom (hand-written backward)"), ("autograd_ms", "same maths, autograd backward"),
              ("standard_ms", "standard PyTorch layer"))
    colors = _palette(3)
    fig, ax = plt.subplots(figsize=(11, 0.75 * len(rows) + 1.8))
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


def plot_layer_swap(rows: Sequence[dict], base_acc: dict, path: Path, title: str) -> Path:
    """Left: test accuracy of each variant, with the base CNN's seed mean ± std as a band.
    Right: training time per epoch relative to the base CNN's mean."""
    names = [r["model"] for r in rows]
    colors = ["0.6" if r["swapped"] == "base" else c for r, c in zip(rows, _palette(len(rows)))]
    fig, (ax_acc, ax_t) = plt.subplots(1, 2, figsize=(14, 0.45 * len(rows) + 2.5))
    acc = [100 * r["test_acc"] for r in rows]
    ax_acc.barh(names, acc, color=colors)
    m, s = 100 * base_acc["mean"], 100 * base_acc["std"]
    ax_acc.axvspan(m - s, m + s, color="k", alpha=0.12, label=f"base mean ± std ({base_acc['n']} seeds)")
    ax_acc.axvline(m, color="k", lw=1)
    for i, (v, r) in enumerate(zip(acc, rows)):
        ax_acc.annotate(f" {v:.2f} ({r['delta_vs_base_mean_pp']:+.2f} pp)", (v, i), va="center", fontsize=8)
    lo = np.nanmin(acc) if np.isfinite(acc).any() else 0
    ax_acc.set_xlim(max(0, lo - 8), min(100, np.nanmax(acc) + 6) if np.isfinite(acc).any() else 100)
    ax_acc.set(xlabel="test accuracy (%)", title="Test accuracy (Δ vs base mean)")
    ax_acc.legend(loc="lower right", fontsize=8)
    ax_acc.invert_yaxis()
    ratio = [r["epoch_time_ratio_vs_base"] for r in rows]
    ax_t.barh(names, ratio, color=colors)
    ax_t.axvline(1, color="k", lw=1)
    for i, (v, r) in enumerate(zip(ratio, rows)):
        ax_t.annotate(f" ×{v:.2f} ({r['epoch_time_s']:.1f} s)", (v, i), va="center", fontsize=8)
    ax_t.set(xlabel="training time per epoch / base CNN's", title="Training cost (1 = base CNN)")
    ax_t.set_xlim(0, np.nanmax(ratio) * 1.3)
    ax_t.invert_yaxis()
    fig.suptitle(title)
    return save_figure(fig, path)


def _band(ax, x, band: dict, color, label: str, scale: float = 1.0) -> None:
    mean, lo, hi = (scale * np.asarray(band[k], dtype=float) for k in ("mean", "min", "max"))
    ax.plot(x[:len(mean)], mean, "-o", ms=3, color=color, label=label)
    ax.fill_between(x[:len(mean)], lo, hi, color=color, alpha=0.2)


def plot_seed_bands(groups: dict, path: Path, title: str) -> Path:
    """Train loss, test loss and test accuracy per epoch: mean line and min-max band over seeds,
    one colour per group (``groups``: label -> list of records)."""
    from utils.statistics import curve_band

    fig, axes = plt.subplots(1, 3, figsize=(17, 4.6), gridspec_kw={"wspace": 0.3})
    keys = (("train_loss", "training loss (running mean over the epoch)", 1.0),
            ("test_loss", "test loss (cross-entropy)", 1.0), ("test_acc", "test accuracy (%)", 100.0))
    for color, (label, runs) in zip(_palette(len(groups)), groups.items()):
        if not runs:
            continue
        for ax, (key, ylabel, scale) in zip(axes, keys):
            band = curve_band([r["history"][key] for r in runs])
            x = np.arange(1, len(band["mean"]) + 1)
            _band(ax, x, band, color, f"{label} (n={len(runs)})", scale)
            ax.set(xlabel="epoch", ylabel=ylabel)
    for ax in axes:
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=8)
    axes[0].set_title("Training loss")
    axes[1].set_title("Test loss")
    axes[2].set_title("Test accuracy")
    fig.suptitle(title)
    return save_figure(fig, path)


def _grad_band(runs: Sequence[dict]) -> tuple[np.ndarray, dict] | None:
    from utils.gradient_stats import total_grad_norm
    from utils.statistics import curve_band

    runs = [r for r in runs if r["grad_stats"]["l2"]]
    if not runs:
        return None
    longest = max(runs, key=lambda r: len(r["grad_stats"]["step"]))
    return (np.asarray(longest["grad_stats"]["step"]),
            curve_band([total_grad_norm(r["grad_stats"]["l2"]) for r in runs]))


def plot_grad_norm_traces(groups: dict, high: dict, path: Path, title: str) -> Path:
    """Global gradient L2 norm vs optimisation step. Left: base lr, mean and min-max over seeds.
    Right: the same mean (thin) against the single higher-lr run of each group (thick)."""
    from utils.gradient_stats import total_grad_norm

    fig, (ax, ax_hi) = plt.subplots(1, 2, figsize=(15, 4.8), sharey=True)
    for color, (label, runs) in zip(_palette(len(groups)), groups.items()):
        gb = _grad_band(runs)
        if gb is None:
            continue
        steps, band = gb
        _band(ax, steps, band, color, f"{label} (n={len(runs)})")
        ax_hi.plot(steps[:len(band["mean"])], band["mean"], color=color, lw=1, alpha=0.6,
                   label=f"{label}, base lr (mean)")
        h = high.get(label)
        if h is not None and h["grad_stats"]["l2"]:
            hs = h["grad_stats"]
            ax_hi.plot(hs["step"], total_grad_norm(hs["l2"]), color=color, lw=2.2,
                       label=f"{label}, lr {h['config']['lr']:g}" + ("" if h["status"] == "completed"
                                                                     else f" ({h['status']})"))
    ax.set(yscale="log", xlabel="training step (batch)", ylabel="‖∇W‖₂ over all conv/linear weights",
           title="Base learning rate: mean and min-max over seeds")
    ax_hi.set(yscale="log", xlabel="training step (batch)", title="Higher learning rate (one seed)")
    for a in (ax, ax_hi):
        a.legend(fontsize=8)
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_seed_accuracy(blocks: dict, path: Path, title: str) -> Path:
    """Per block: test accuracy mean ± std with every seed as a dot (and the higher-lr run as a
    cross); parameters; MFLOPs; training time per epoch. ``blocks``: the ``blocks`` dict of
    ``blocks_stability.json``."""
    names = list(blocks)
    colors = _palette(len(names))
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.6), gridspec_kw={"width_ratios": [1.6, 1, 1, 1], "wspace": 0.4})
    x = np.arange(len(names))
    ax = axes[0]
    for i, (n, c) in enumerate(zip(names, colors)):
        st = blocks[n]["test_acc"]
        ax.bar(i, 100 * st["mean"], yerr=100 * st["std"], color=c, alpha=0.75, capsize=6)
        vals = 100 * np.asarray(st["values"], dtype=float)
        ax.scatter(np.full(len(vals), i) + np.linspace(-0.15, 0.15, len(vals)), vals, color="k", s=14, zorder=3,
                   label="one seed" if i == 0 else None)
        ax.annotate(f"{100 * st['mean']:.2f} ± {100 * st['std']:.2f}", (i, 100 * st["max"]), xytext=(0, 8),
                    textcoords="offset points", ha="center", fontsize=8)
        hl = blocks[n].get("high_lr")
        if hl and hl.get("test_acc") is not None:
            ax.scatter(i + 0.3, 100 * hl["test_acc"], marker="x", color="crimson", s=50, zorder=4,
                       label=f"lr {hl['lr']:g} (seed 0)" if i == 0 else None)
    accs = [100 * blocks[n]["test_acc"]["min"] for n in names]
    lows = [100 * blocks[n]["high_lr"]["test_acc"] for n in names
            if blocks[n].get("high_lr") and blocks[n]["high_lr"].get("test_acc") is not None]
    ax.set_ylim(max(0, min(accs + lows) - 10), None)
    ax.set_xticks(x, names)
    ax.set(ylabel="test accuracy (%)", title="Test accuracy: mean ± std over seeds")
    ax.legend(fontsize=8, loc="lower right")
    for ax, (key, label) in zip(axes[1:], (("params", "parameters"), ("mflops", "forward MFLOPs per image"),
                                           ("epoch_time_s", "training time per epoch (s)"))):
        vals = [blocks[n][key]["mean"] if isinstance(blocks[n][key], dict) else blocks[n][key] for n in names]
        ax.bar(x, vals, color=colors)
        for i, v in enumerate(vals):
            ax.annotate(f"{v:,.3g}" if key != "params" else f"{v:,}", (i, v), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(x, names)
        ax.set(ylabel=label, title=label[0].upper() + label[1:])
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_high_lr(groups: dict, high: dict, path: Path, title: str) -> Path:
    """Per block (one column): test loss and test accuracy per epoch at the base lr (mean and
    min-max over seeds) and at the higher lr (one seed, dashed)."""
    from utils.statistics import curve_band

    names = [n for n, runs in groups.items() if runs]
    fig, axes = plt.subplots(2, len(names), figsize=(5.2 * len(names), 7.5), squeeze=False)
    for j, (name, color) in enumerate(zip(names, _palette(len(names)))):
        runs, h = groups[name], high.get(name)
        for i, (key, ylabel, scale) in enumerate((("test_loss", "test loss", 1.0), ("test_acc", "test accuracy (%)", 100.0))):
            ax = axes[i][j]
            band = curve_band([r["history"][key] for r in runs])
            _band(ax, np.arange(1, len(band["mean"]) + 1), band, color,
                  f"lr {runs[0]['config']['lr']:g} (n={len(runs)})", scale)
            if h is not None and h["history"][key]:
                hv = scale * np.asarray(h["history"][key], dtype=float)
                ax.plot(np.arange(1, len(hv) + 1), hv, "--s", ms=4, color="crimson",
                        label=f"lr {h['config']['lr']:g}" + ("" if h["status"] == "completed" else f" ({h['status']})"))
            ax.set(xlabel="epoch", ylabel=ylabel)
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.legend(fontsize=8)
        axes[0][j].set_title(name)
    fig.suptitle(title)
    return save_figure(fig, path)
