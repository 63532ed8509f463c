"""Figures of the custom-layer study (task 3): layer speed, layer swaps, and the residual-block
comparison over seeds (loss bands, gradient-norm traces, accuracy per seed, higher learning rate).
Shared style and helpers: ``utils.plot_common``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import ticker

from utils.gradient_stats import total_grad_norm
from utils.statistics import curve_band
from utils.plot_common import palette, save_figure, styled
from utils.records import RunRecord


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


@styled
def plot_layer_swap(rows: Sequence[dict], base_acc: dict, path: Path, title: str) -> Path:
    """Left: test accuracy of each variant, with the base CNN's seed mean ± std as a band.
    Right: training time per epoch relative to the base CNN's mean."""
    names = [r["model"] for r in rows]
    colors = ["0.6" if r["swapped"] == "base" else c for r, c in zip(rows, palette(len(rows)))]
    fig, (ax_acc, ax_t) = plt.subplots(1, 2, figsize=(14, 0.45 * len(rows) + 2.5), layout="constrained")
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


@styled
def plot_seed_bands(groups: dict[str, Sequence[RunRecord]], path: Path, title: str) -> Path:
    """Train loss, validation loss and validation accuracy along training: mean line and min-max
    band over seeds, one colour per group (``groups``: label -> the records of its seeds)."""
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.6), layout="constrained")
    keys = (("train_loss", "training loss (running mean)", 1.0),
            ("val_loss", "validation loss (cross-entropy)", 1.0), ("val_acc", "validation accuracy (%)", 100.0))
    for color, (label, runs) in zip(palette(len(groups)), groups.items()):
        if not runs:
            continue
        for ax, (key, ylabel, scale) in zip(axes, keys):
            band = curve_band([getattr(r.history, key) for r in runs])
            x = np.asarray(max((r.history.epoch for r in runs), key=len), dtype=float)
            _band(ax, x, band, color, f"{label} (n={len(runs)})", scale)
            ax.set(xlabel="epoch", ylabel=ylabel)
    for ax in axes:
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        ax.legend(fontsize=8)
    axes[0].set_title("Training loss")
    axes[1].set_title("Validation loss")
    axes[2].set_title("Validation accuracy")
    fig.suptitle(title)
    return save_figure(fig, path)


def _lr_label(r: RunRecord, prefix: str = "") -> str:
    return f"{prefix}lr {r.config['lr']:g}" + ("" if r.completed else f" ({r.status})")


def _grad_band(runs: Sequence[RunRecord]) -> tuple[np.ndarray, dict] | None:

    runs = [r for r in runs if r.grad_stats.l2]
    if not runs:
        return None
    longest = max(runs, key=lambda r: len(r.grad_stats.step))
    return np.asarray(longest.grad_stats.step), curve_band([total_grad_norm(r.grad_stats.l2) for r in runs])


@styled
def plot_grad_norm_traces(groups: dict[str, Sequence[RunRecord]], high: dict[str, RunRecord], path: Path,
                          title: str) -> Path:
    """Global gradient L2 norm vs optimisation step. Left: base lr, mean and min-max over seeds.
    Right: the same mean (thin) against the single higher-lr run of each group (thick)."""
    fig, (ax, ax_hi) = plt.subplots(1, 2, figsize=(15, 4.8), sharey=True, layout="constrained")
    for color, (label, runs) in zip(palette(len(groups)), groups.items()):
        gb = _grad_band(runs)
        if gb is None:
            continue
        steps, band = gb
        _band(ax, steps, band, color, f"{label} (n={len(runs)})")
        ax_hi.plot(steps[:len(band["mean"])], band["mean"], color=color, lw=1, alpha=0.6,
                   label=f"{label}, base lr (mean)")
        h = high.get(label)
        if h is not None and h.grad_stats.l2:
            ax_hi.plot(h.grad_stats.step, total_grad_norm(h.grad_stats.l2), color=color, lw=2.2,
                       label=_lr_label(h, prefix=f"{label}, "))
    ax.set(yscale="log", xlabel="training step (batch)", ylabel="‖∇W‖₂ over all conv/linear weights",
           title="Base learning rate: mean and min-max over seeds")
    ax_hi.set(yscale="log", xlabel="training step (batch)", title="Higher learning rate (one seed)")
    for a in (ax, ax_hi):
        a.legend(fontsize=8)
    fig.suptitle(title)
    return save_figure(fig, path)


@styled
def plot_seed_accuracy(blocks: dict, path: Path, title: str) -> Path:
    """Per block: test accuracy mean ± std with every seed as a dot (and the higher-lr run as a
    cross); parameters; MFLOPs; training time per epoch. ``blocks``: the ``blocks`` dict of
    ``blocks_stability.json``."""
    names = list(blocks)
    colors = palette(len(names))
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.6), gridspec_kw={"width_ratios": [1.6, 1, 1, 1]},
                             layout="constrained")
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


@styled
def plot_high_lr(groups: dict[str, Sequence[RunRecord]], high: dict[str, RunRecord], path: Path, title: str) -> Path:
    """Per block (one column): validation loss and accuracy along training at the base lr (mean and
    min-max over seeds) and at the higher lr (one seed, dashed)."""
    names = [n for n, runs in groups.items() if runs]
    fig, axes = plt.subplots(2, len(names), figsize=(5.2 * len(names), 7.5), squeeze=False, layout="constrained")
    for j, (name, color) in enumerate(zip(names, palette(len(names)))):
        runs, h = groups[name], high.get(name)
        for i, (key, ylabel, scale) in enumerate((("val_loss", "validation loss", 1.0),
                                                  ("val_acc", "validation accuracy (%)", 100.0))):
            ax = axes[i][j]
            band = curve_band([getattr(r.history, key) for r in runs])
            x = np.asarray(max((r.history.epoch for r in runs), key=len), dtype=float)
            _band(ax, x, band, color, f"lr {runs[0].config['lr']:g} (n={len(runs)})", scale)
            if h is not None and getattr(h.history, key):
                hv = scale * np.asarray(getattr(h.history, key), dtype=float)
                ax.plot(h.history.epoch, hv, "--s", ms=4, color="crimson", label=_lr_label(h))
            ax.set(xlabel="epoch", ylabel=ylabel)
            ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
            ax.legend(fontsize=8)
        axes[0][j].set_title(name)
    fig.suptitle(title)
    return save_figure(fig, path)
