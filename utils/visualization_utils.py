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

from utils.training_utils import atomic_write_bytes  # noqa: E402

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
    fig = plt.figure(figsize=(6 * len(done), 9.5))
    grid = fig.add_gridspec(2, len(done), height_ratios=[3, 1.4])
    ax_ratio = fig.add_subplot(grid[1, :])
    for i, (color, r) in enumerate(zip(_palette(len(done)), done)):
        g = r["grad_stats"]
        norms = np.asarray(g["l2"], dtype=float)                      # (samples, layers)
        ax = fig.add_subplot(grid[0, i])
        logn = np.log10(np.maximum(norms.T, 1e-12))
        im = ax.imshow(logn, aspect="auto", cmap="viridis", interpolation="nearest",
                       extent=(g["step"][0], g["step"][-1], len(g["names"]) - 0.5, -0.5))
        ax.set_yticks(range(len(g["names"])), [_short(n) for n in g["names"]], fontsize=7)
        ax.set(xlabel="training step", title=f"{r['model']}: log10 ‖grad‖₂ per layer")
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
        axes[1].plot(depth, np.median(norms, axis=0), marker="o", ms=3, color=color, label=_label(r))
    axes[0].set(title="At initialisation (step 0)")
    axes[1].set(title="Median over training")
    for ax in axes:
        ax.set(yscale="log", xlabel="layer (input → output)", ylabel="gradient L2 norm of the weights")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return save_figure(fig, path)
