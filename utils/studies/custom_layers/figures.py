"""Figures of the custom-layer study (task 3): layer speed and the swapped nets' training cost (fp32
and bf16 autocast), the layer swaps against the base CNN, the residual blocks at their own and at
the shared lr, and the stability sweep (accuracy, gradient scale and loss spikes against lr; the
loss against step at each block's highest stable lr).

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

from utils.comparison_utils import is_number
from utils.visualization_utils import palette, plain_minor_log_labels, save_figure, styled
from utils.engine.records import RunRecord

DIVERGED_COLOR = "crimson"


def _median(v) -> float | None:
    """A ratio as stored (a paired-ratio dict) or a bare number."""
    return v.get("median") if isinstance(v, dict) else v


@styled
def plot_layer_speed(rows: Sequence[dict], path: Path, title: str) -> Path:
    """Forward+backward time per call of each custom layer, its same-maths autograd twin and the
    standard layer (horizontal bars, log x), one panel per precision (``row["precision"]``, fp32
    when absent), annotated with the custom / other ratios (median over paired rounds)."""
    precisions = list(dict.fromkeys(r.get("precision", "fp32") for r in rows))
    series = (("custom_ms", "custom (hand-written backward)"), ("autograd_ms", "same maths, autograd backward"),
              ("standard_ms", "standard PyTorch layer"))
    colors = palette(3)
    n_rows = max(sum(r.get("precision", "fp32") == p for r in rows) for p in precisions)
    fig, axes = plt.subplots(1, len(precisions), figsize=(11 * len(precisions), 0.75 * n_rows + 1.8), squeeze=False,
                             layout="constrained")
    h = 0.26
    for ax, precision in zip(axes[0], precisions):
        sub = [r for r in rows if r.get("precision", "fp32") == precision][::-1]
        y = np.arange(len(sub))
        for i, ((key, name), color) in enumerate(zip(series, colors)):
            vals = [r.get(key) for r in sub]
            pos = [yy + (1 - i) * h for yy, v in zip(y, vals) if v]
            if pos:
                ax.barh(pos, [v for v in vals if v], h, color=color, label=name)
        for yy, r in zip(y, sub):
            parts = []
            if _median(r.get("ratio_vs_autograd")):
                parts.append(f"×{_median(r['ratio_vs_autograd']):.2f} vs autograd")
            if _median(r.get("ratio_vs_standard")):
                parts.append(f"×{_median(r['ratio_vs_standard']):.2f} vs {r.get('standard_layer') or 'standard'}")
            ax.annotate("   " + ", ".join(parts), (r["custom_ms"], yy + h), va="center", fontsize=8)
        ax.set_yticks(y, [f"{r['layer']}\n{r['variant']}" for r in sub], fontsize=8)
        ax.set(xscale="log", xlabel="forward + backward time per call (ms, median, log scale)",
               title="bf16 autocast (custom layers as fp32 islands)" if precision == "bf16" else precision)
        ax.set_xlim(right=ax.get_xlim()[1] * 8)  # room for the ratio labels
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(title)
    return save_figure(fig, path)


@styled
def plot_training_cost(training: dict[str, dict], path: Path, title: str) -> Path:
    """Per layer-swap net, one training batch's forward+backward time relative to the base CNN
    (dot: median of the per-round ratios; bar: 25-75 %), one marker per precision; hollow markers:
    the custom net's autograd twin (same maths, autograd backward)."""
    precisions = list(training)
    names = [n for n in next(iter(training.values()))["nets"] if not n.endswith("_autograd")]
    fig, ax = plt.subplots(figsize=(10, 0.55 * len(names) + 2), layout="constrained")
    markers = {"fp32": "o", "bf16": "s"}
    handles = []
    for j, (precision, color) in enumerate(zip(precisions, palette(len(precisions)))):
        nets = training[precision]["nets"]
        off = 0.18 * (j - (len(precisions) - 1) / 2)
        for i, name in enumerate(names):
            for key, filled, dy in ((name, True, 0.0), (f"{name}_autograd", False, 0.09)):
                r = nets.get(key, {}).get("ratio_vs_base")
                if r is None:
                    continue
                ax.errorbar(r["median"], i + off + dy, xerr=[[r["median"] - r["q25"]], [r["q75"] - r["median"]]],
                            fmt=markers.get(precision, "o"), color=color, mfc=color if filled else "white", ms=6,
                            capsize=3)
        handles.append(Line2D([], [], marker=markers.get(precision, "o"), color=color, ls="",
                              label=f"{precision}{' autocast' if precision == 'bf16' else ''}: the net as trained"))
        if any(n.endswith("_autograd") for n in nets):
            handles.append(Line2D([], [], marker=markers.get(precision, "o"), color=color, mfc="white", ls="",
                                  label=f"{precision}: its custom layers under autograd"))
    ax.axvline(1, color="k", lw=0.8)
    ax.set_yticks(range(len(names)), names)
    ax.set_ylim(len(names) - 0.5, -0.6)
    ax.set(xlabel="time of one training batch / base CNN's (median of paired rounds, bar 25-75 %)", title=title)
    ax.legend(handles=handles, fontsize=8, loc="lower right")
    return save_figure(fig, path)


def _pct_values(values: Sequence[float | None]) -> np.ndarray:
    return np.asarray([100 * v for v in values if is_number(v)], dtype=float)


def _acc_limits(summaries: Sequence[dict], seeds: Sequence[float | None] = (), pad: float = 4.0) -> tuple[float, float]:
    """Accuracy-axis limits (%) around the means and seed values, inside [0, 100]: a 2-seed t interval
    (t = 12.7) would otherwise stretch the axis far past 0-100 %."""
    v = np.concatenate([_pct_values([s.get("mean") for s in summaries]), _pct_values(seeds)])
    return (0.0, 100.0) if v.size == 0 else (max(0.0, v.min() - pad), min(100.0, v.max() + pad))


def _mean_ci(ax, pos: float, summary: dict, color, marker: str, filled: bool, horizontal: bool = False) -> bool:
    """Mean (marker) with its 95 % interval (error bar) in percent at ``pos``; False if there is no mean."""
    if not is_number(summary.get("mean")):
        return False
    half = summary.get("half_width")
    err = 100 * half if is_number(half) else None
    xy, kw = ((100 * summary["mean"], pos), {"xerr": err}) if horizontal else ((pos, 100 * summary["mean"]),
                                                                              {"yerr": err})
    ax.errorbar(*xy, **kw, fmt=marker, color=color, mfc=color if filled else "white", ms=7, capsize=4, zorder=3)
    return True


@styled
def plot_layer_swaps(numbers: dict, path: Path, title: str) -> Path:
    """The layer study in two panels, one row per variant (``numbers``: the layers analysis, variants
    keyed ``layer/variant``): test accuracy (mean, 95 % CI, every seed) and final validation accuracy;
    the paired test-accuracy difference to the base CNN with its 95 % interval (red: the interval
    excludes zero, "real"; grey: within noise). Training cost: :func:`plot_training_cost`."""
    variants = numbers["variants"]
    names = list(variants)
    base = numbers.get("base_key")
    diffs = {r["a"]: r["test_acc"] for r in numbers["vs_base"]}
    fig, (ax_acc, ax_d) = plt.subplots(1, 2, figsize=(14, 0.5 * len(names) + 2.6), sharey=True, layout="constrained")
    for i, name in enumerate(names):
        v = variants[name]
        color = "0.3" if name == base else "C0"
        if _mean_ci(ax_acc, i, v["test_acc"], color, "o", True, horizontal=True):
            seeds = _pct_values(v["per_seed"]["test_acc"])
            ax_acc.scatter(seeds, np.full(seeds.size, i + 0.2), s=10, color="k", zorder=4)
        else:
            ax_acc.annotate(f"all {v['runs']} runs diverged", (0.02, i), xycoords=("axes fraction", "data"),
                            color=DIVERGED_COLOR, va="center", fontsize=8)
        _mean_ci(ax_acc, i - 0.2, v["final_val_acc"], color, "s", False, horizontal=True)
        d = diffs.get(name)
        if d is not None and is_number(d.get("mean_difference")):
            m, lo, hi = (100 * d[k] for k in ("mean_difference", "ci95_low", "ci95_high"))
            c = "C3" if d["verdict"] == "real" else "0.55"
            ax_d.errorbar(m, i, xerr=[[m - lo], [hi - m]] if math.isfinite(lo) else None, fmt="o", color=c, ms=7,
                          capsize=4)
            ax_d.annotate(d["verdict"], (m, i), xytext=(0, 6), textcoords="offset points", fontsize=8, ha="center",
                          va="bottom")
    ax_acc.set_xlim(*_acc_limits([s for v in variants.values() for s in (v["test_acc"], v["final_val_acc"])],
                                 [x for v in variants.values() for x in v["per_seed"]["test_acc"]]))
    ax_acc.set_yticks(np.arange(len(names)), names)
    ax_acc.set_ylim(len(names) - 0.5, -0.6)
    ax_acc.legend(handles=[Line2D([], [], marker="o", color="0.3", ls="", label="test, mean ± 95 % CI"),
                           Line2D([], [], marker=".", color="k", ls="", label="test, one seed"),
                           Line2D([], [], marker="s", mfc="white", color="0.3", ls="",
                                  label="final validation, mean ± 95 % CI")], fontsize=8, loc="lower left")
    ax_acc.set(xlabel="accuracy (%)", title="Accuracy over seeds")
    ax_d.axvline(0, color="k", lw=0.8)
    ax_d.set(xlabel="test accuracy − base CNN's (pp)",
             title="Paired difference to the base CNN (95 % CI over seeds and test images)")
    fig.suptitle(title)
    return save_figure(fig, path)


def _block_label(name: str, b: dict) -> str:
    widths = "-".join(map(str, b.get("widths", [])))
    return f"{name}\n{widths} x{b.get('blocks_per_stage', '?')}\n{b['params'] / 1e3:.0f}k, {b['mflops']:.0f} MFLOPs"


@styled
def plot_block_finals(numbers: dict, sizes: dict, path: Path, title: str) -> Path:
    """Residual blocks over the final seeds: test accuracy (mean, 95 % t interval, every seed) at each
    block's own lr and at the shared lr (left), and the paired test-accuracy difference to the
    reference block with its 95 % interval (right; red: excludes zero). ``numbers``:
    :func:`utils.studies.custom_layers.blocks.finals_numbers`; ``sizes``: block -> widths, params, FLOPs."""
    variants, ref = numbers["variants"], numbers["reference"]
    settings = list(dict.fromkeys(k.split("/")[0] for k in variants))
    blocks = list(sizes)
    fig, (ax, ax_d) = plt.subplots(1, 2, figsize=(15, 5.4), layout="constrained")
    markers = dict(zip(settings, ("o", "s", "^")))
    colors = dict(zip(blocks, palette(len(blocks))))
    shown = []
    for j, setting in enumerate(settings):
        off = 0.18 * (j - (len(settings) - 1) / 2)
        for i, b in enumerate(blocks):
            v = variants.get(f"{setting}/{b}")
            if v is None:
                continue
            if _mean_ci(ax, i + off, v["test_acc"], colors[b], markers[setting], j == 0):
                seeds = _pct_values(v["per_seed"]["test_acc"])
                ax.scatter(np.full(seeds.size, i + off + 0.05), seeds, s=9, color="k", zorder=4)
                ax.annotate(f"{v['lr']:g}", (i + off, 100 * v["test_acc"]["mean"]), xytext=(-6, 0),
                            textcoords="offset points", fontsize=7, ha="right", va="center")
                if setting not in shown:
                    shown.append(setting)
            else:
                ax.annotate("all runs diverged", (i, 0.5), xycoords=("data", "axes fraction"), color=DIVERGED_COLOR,
                            ha="center", fontsize=8)
        for k, row in enumerate(r for r in numbers["differences"] if r["setting"] == setting and r["b"] == ref):
            d = row["test_acc"]
            if not is_number(d.get("mean_difference")):
                continue
            pos = blocks.index(row["a"]) + off
            m, lo, hi = (100 * d[k] if is_number(d.get(k)) else np.nan for k in ("mean_difference", "ci95_low",
                                                                                "ci95_high"))
            color = "C3" if d["verdict"] == "real" else "0.5"
            ax_d.errorbar(pos, m, yerr=None if np.isnan(lo) else [[m - lo], [hi - m]], fmt=markers[setting],
                          color=color, mfc=color if j == 0 else "white", ms=7, capsize=4)
    ax.set_xticks(range(len(blocks)), [_block_label(b, sizes[b]) for b in blocks], fontsize=8)
    ax.set_ylim(*_acc_limits([v["test_acc"] for v in variants.values()],
                             [x for v in variants.values() for x in v["per_seed"]["test_acc"]]))
    ax.set(ylabel="test accuracy (%)", title="Test accuracy over the final seeds (mean ± 95 % CI, dots: seeds)")
    ax.legend(handles=[Line2D([], [], marker=markers[s], color="0.3", mfc="0.3" if i == 0 else "white", ls="",
                              label=s.replace("_", " ")) for i, s in enumerate(shown)],
              fontsize=8, loc="lower left", title="peak lr (value beside each point)")
    ax_d.axhline(0, color="k", lw=0.8)
    if ref in blocks:
        ax_d.annotate("reference", (blocks.index(ref), 0), xytext=(0, 6), textcoords="offset points", ha="center",
                      fontsize=8)
    ax_d.set_xticks(range(len(blocks)), blocks)
    ax_d.set(ylabel=f"test accuracy − {ref}'s (pp)",
             title=f"Paired difference to {ref} (95 % CI over seeds and test images; red: excludes 0)")
    fig.suptitle(title)
    return save_figure(fig, path)


@styled
def plot_stability(numbers: dict, path: Path, title: str) -> Path:
    """The stability sweep (``numbers``: :func:`utils.studies.custom_layers.blocks.sweep_numbers`),
    lr on a log axis, one colour per block: final validation accuracy of the pilots (mean ± 95 %
    CI over seeds; an lr with an unstable run as a cross at the bottom, only when there is one);
    the gradient RMS over training after step 0 (median of the pooled samples, bar 10-90 %); the
    loss-spike steps per run (mean ± 95 % CI)."""
    fig, (ax_acc, ax_g, ax_sp) = plt.subplots(1, 3, figsize=(18, 5), layout="constrained")
    blocks = numbers["blocks"]
    lrs = sorted({p["lr"] for b in blocks.values() for p in b["points"]})
    n_b = max(len(blocks), 1)
    rise = f"{numbers['spike_definition']['rises_percent'][0]:g}"
    any_unstable = any_grad = any_spikes = False
    for k, (color, (name, b)) in enumerate(zip(palette(n_b), blocks.items())):
        pts = b["points"]
        shift = 1.0 + 0.04 * (k - (n_b - 1) / 2)      # side by side on the log axis
        x = np.asarray([p["lr"] for p in pts], dtype=float) * shift
        acc = [p["final_val_acc"] for p in pts]
        mean = np.asarray([100 * a["mean"] if is_number(a["mean"]) else np.nan for a in acc])
        half = np.asarray([100 * a["half_width"] if is_number(a.get("half_width")) else 0.0 for a in acc])
        finite = np.isfinite(mean).any()
        if finite:      # a block unstable at every lr gets its legend entry from its crosses
            ax_acc.errorbar(x, mean, yerr=half, fmt="-o", ms=4, capsize=3, color=color, label=name)
        bad = [xx for xx, p in zip(x, pts) if p["unstable"]]
        if bad:
            any_unstable = True
            ax_acc.scatter(bad, np.full(len(bad), 0.04), transform=ax_acc.get_xaxis_transform(), marker="x", s=60,
                           color=color, zorder=5, label=None if finite else f"{name}: no stable lr")
        g = [p["grad_rms"] for p in pts]
        med = np.asarray([np.nan if q["p50"] is None else q["p50"] for q in g], dtype=float)
        lo = np.asarray([np.nan if q["p10"] is None else q["p10"] for q in g], dtype=float)
        hi = np.asarray([np.nan if q["p90"] is None else q["p90"] for q in g], dtype=float)
        if np.isfinite(med).any():
            any_grad = True
            ax_g.errorbar(x, med, yerr=[np.nan_to_num(med - lo), np.nan_to_num(hi - med)], fmt="-o", ms=4, capsize=3,
                          color=color, label=name)
        sp = [p["loss_spike_steps"][rise] for p in pts]
        sp_mean = np.asarray([np.nan if not is_number(s["mean"]) else s["mean"] for s in sp], dtype=float)
        if np.isfinite(sp_mean).any():
            any_spikes = True
            ax_sp.errorbar(x, sp_mean, yerr=[0.0 if not is_number(s.get("half_width")) else s["half_width"] for s in sp],
                           fmt="-o", ms=4, capsize=3, color=color, label=name)
    handles = ax_acc.get_legend_handles_labels()[0]
    if any_unstable:
        handles.append(Line2D([], [], marker="x", color="0.3", ls="", label="an unstable run at this lr"))
    ax_acc.legend(handles=handles, fontsize=8, loc="best")
    ax_acc.set(ylabel="final validation accuracy of the pilots (%)", title="Accuracy (mean ± 95 % CI over seeds)")
    ax_g.set(ylabel="gradient RMS per parameter", title="Gradient scale during training (after step 0; 10-90 %)")
    if any_grad:
        ax_g.set_yscale("log")
        plain_minor_log_labels(ax_g.yaxis)
        ax_g.legend(fontsize=8)
    ax_sp.set(ylabel="spike steps per run", title=f"Loss spikes (> {rise} % above the mean of the previous "
              f"{numbers['spike_definition']['window_steps']} steps)")
    if any_spikes:
        ax_sp.legend(fontsize=8)
    for ax in (ax_acc, ax_g, ax_sp):
        ax.set_xscale("log")
        ax.set_xlabel("peak learning rate (log scale)")
        if lrs:
            ax.set_xlim(min(lrs) / 1.4, max(lrs) * 1.4)     # also when no point is finite
            ax.set_xticks(lrs, [f"{v:g}" for v in lrs])
            ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    fig.suptitle(title)
    return save_figure(fig, path)


def _moving_mean(x: np.ndarray, k: int) -> np.ndarray:
    if x.size < k:
        return x
    c = np.cumsum(np.insert(x, 0, 0.0))
    return (c[k:] - c[:-k]) / k


@styled
def plot_loss_at_lr(curves: dict[str, Sequence[RunRecord]], path: Path, title: str, smooth: int = 10) -> Path:
    """Training loss against optimisation step for each block at one lr (``curves``: label -> the
    runs of its seeds): mean over seeds of a ``smooth``-step moving average, band min-max over seeds;
    log y. A run that diverged stops where it did."""
    fig, ax = plt.subplots(figsize=(10, 5), layout="constrained")
    peaks: list[float] = []
    for color, (label, runs) in zip(palette(max(len(curves), 1)), curves.items()):
        series = [_moving_mean(np.asarray(r.step_loss, dtype=float), smooth) for r in runs if r.step_loss]
        if not series:
            continue
        n = min(len(x) for x in series)
        arr = np.stack([x[:n] for x in series])
        steps = np.arange(n) + (smooth - 1) / 2      # the centre of each averaged window
        ax.plot(steps, arr.mean(0), color=color, lw=1.3, label=f"{label} (n={len(series)})")
        ax.fill_between(steps, arr.min(0), arr.max(0), color=color, alpha=0.2)
        done = [r for r in runs if r.completed and r.step_loss]
        if done:
            peaks.append(done[0].config.get("warmup_fraction", 0.2) * len(done[0].step_loss))
    if peaks:
        ax.axvline(float(np.median(peaks)), color="0.4", ls=":", lw=1.2, label="peak of the lr schedule")
    if ax.get_legend_handles_labels()[0]:
        ax.set_yscale("log")
        plain_minor_log_labels(ax.yaxis)
    else:
        ax.annotate("no stable learning rate: nothing to plot", (0.5, 0.5), xycoords="axes fraction", ha="center")
    ax.set(xlabel="optimisation step", ylabel=f"training loss ({smooth}-step moving mean, log scale)", title=title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, title="block (peak lr), mean and min-max over seeds")
    return save_figure(fig, path)
