"""The figure helpers every task shares, and the generic figures of a set of runs.

* house style (applied per figure with :func:`styled`, never globally), atomic PNG saving
  (:func:`save_figure`), colours and markers, cost axes, readable layer names;
* the figures of any set of runs: training curves, over-fitting gap, size and cost, confusions,
  misclassified images and gradient flow. Each takes typed :class:`~utils.engine.records.RunRecord` s
  (or arrays), draws one self-explanatory figure (title, axis labels with units, legend) and saves
  it as PNG atomically. Accuracy is shown as accuracy (%) everywhere, never as error.

Each task's own figures live with its analysis under ``utils/studies/``.
"""

from __future__ import annotations

import functools
import io
import re
from pathlib import Path
from typing import Callable, Sequence, TypeVar

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib import colors as mcolors  # noqa: E402
from matplotlib import ticker  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from utils.engine.files import atomic_write_bytes  # noqa: E402
from utils.engine.gradients import first_last_ratio
from utils.engine.records import RunRecord

_RC = {"figure.dpi": 110, "savefig.dpi": 110, "axes.titlesize": 12, "axes.labelsize": 11,
       "legend.fontsize": 9, "figure.titlesize": 14}

F = TypeVar("F", bound=Callable)


def styled(fn: F) -> F:
    """Run a figure function under the house style (seaborn whitegrid, notebook sizes, our rc).

    The style is a context, not a global ``sns.set_theme``: importing a figure module changes no
    setting of the caller's matplotlib. The figure is drawn and saved inside the context.
    """
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with plt.rc_context({**sns.axes_style("whitegrid"), **sns.plotting_context("notebook"), **_RC}):
            return fn(*args, **kwargs)
    return wrapper  # type: ignore[return-value]


def save_figure(fig: plt.Figure, path: Path) -> Path:
    """Save ``fig`` as PNG at ``path`` (temp file + rename, see ``utils.engine.files``) and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


def palette(n: int) -> list:
    """``n`` line colours: tab10, or tab20 beyond 10 (tab10 would repeat its colours)."""
    return sns.color_palette("tab10" if n <= 10 else "tab20", n_colors=max(n, 3))


_MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def color_markers(n: int) -> list[tuple[tuple, str]]:
    """``n`` distinct (colour, marker) pairs: tab10 colours and 7 markers cycle together, so the
    first 70 pairs differ (a scatter with 11 models stays readable without text labels)."""
    colors = sns.color_palette("tab10", n_colors=10)
    return [(colors[i % 10], _MARKERS[i % len(_MARKERS)]) for i in range(n)]


def cost_axis(axis: matplotlib.axis.Axis, values: Sequence[float]) -> None:
    """A readable x (or y) axis for a size/cost quantity.

    Log scale only when the values span at least a decade, labelled at 1-2-5 (up to two
    decades) or at the decades only, never on the minor ticks (a log axis over less than a decade
    labels its minor ticks, which run together); otherwise a linear axis with a few round ticks.
    Labels use SI prefixes (``100k``, ``1.2M``).
    """
    v = np.asarray([x for x in values if x is not None], dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    ax = axis.axes
    set_scale = ax.set_xscale if axis is ax.xaxis else ax.set_yscale
    if v.size and v.max() / v.min() >= 10:
        set_scale("log")
        subs = (1.0,) if v.max() / v.min() >= 100 else (1.0, 2.0, 5.0)   # 1-2 decades: 1-2-5 labels
        axis.set_major_locator(ticker.LogLocator(base=10, subs=subs, numticks=8))
        axis.set_minor_locator(ticker.LogLocator(base=10, subs=np.arange(2, 10) * 0.1, numticks=12))
        axis.set_minor_formatter(ticker.NullFormatter())
    else:
        set_scale("linear")
        axis.set_major_locator(ticker.MaxNLocator(nbins=5))
    axis.set_major_formatter(ticker.EngFormatter(sep=""))


def plain_minor_log_labels(axis: matplotlib.axis.Axis) -> None:
    """On a log axis that spans less than a decade, label the minor ticks ``1.4``, ``1.6``, ...
    instead of ``1.4×10⁰`` (which runs together); wider axes keep decade labels only."""
    axis.set_minor_formatter(ticker.LogFormatter(minor_thresholds=(1, 0.4)))


# ------------------------------------------------------------------------- gradient ratio
# --------------------------------------------------------------------------- layer names
# One line of a module's repr: "    (conv1): Conv2d(16, 32, kernel_size=(3, 3), ...)"; the indent
# (2 spaces per level) gives the nesting, so the qualified name is rebuilt without the model.
_REPR_LINE = re.compile(r"^(?P<indent> *)\((?P<name>[^()]+)\): (?P<type>[\w.]+)\((?P<args>.*?)\)?$")
_NORM_DIM = re.compile(r"\d+d$")      # BatchNorm2d -> BatchNorm
_SHORTCUT_PARTS = {"shortcut", "downsample", "proj", "skip"}


def _repr_modules(architecture: str) -> list[tuple[str, str, str]]:
    """``(qualified name, type, constructor args)`` of every submodule in a ``str(model)``."""
    out, path = [], []
    for line in architecture.splitlines():
        m = _REPR_LINE.match(line)
        if not m:
            continue
        depth = len(m["indent"]) // 2 - 1
        path = path[:depth] + [m["name"]]
        out.append((".".join(path), m["type"], m["args"]))
    return out


def _positional_ints(args: str) -> list[int]:
    ints = []
    for part in re.split(r",\s*(?![^()]*\))", args):   # commas outside parentheses
        if "=" in part:
            break
        if part.strip().isdigit():
            ints.append(int(part))
    return ints


def _keyword(args: str, key: str) -> str | None:
    m = re.search(rf"\b{key}=(\([^)]*\)|[^,]+)", args)
    return m.group(1).strip("()").split(",")[0].strip() if m else None


def readable_layer_names(architecture: str) -> dict[str, str]:
    """Qualified module name -> a name a reader understands, from the model's ``str()``.

    ``net.1`` -> ``fc1 (Linear 784→512)``, ``stages.1.0.shortcut.0`` -> ``conv6 (1×1, 16→32,
    stride 2, shortcut)``, ``stem.1`` -> ``bn1 (BatchNorm 16)``. Convolutions, linear and norm
    layers are numbered from the input in registration order; any other module is named by its
    type, numbered per type (``ChannelAttention #2 (64)``). Works on ``record.architecture`` (no
    model needed), so figures of existing result files get the same names.
    """
    counters: dict[str, int] = {}
    names = {}
    for qualified, typ, args in _repr_modules(architecture):
        tag = ", shortcut" if _SHORTCUT_PARTS & set(qualified.split(".")) else ""
        ints = _positional_ints(args)
        if "Conv" in typ:
            kind = "conv"
            k = _keyword(args, "kernel_size") or "?"
            stride = _keyword(args, "stride")
            shape = f"{ints[0]}→{ints[1]}" if len(ints) >= 2 else "?"
            extra = f", stride {stride}" if stride not in (None, "1") else ""
            prefix = "" if typ == "Conv2d" else f"{typ} "
            desc = f"{prefix}{k}×{k}, {shape}{extra}{tag}"
        elif typ == "Linear":
            kind = "fc"
            desc = f"Linear {_keyword(args, 'in_features')}→{_keyword(args, 'out_features')}{tag}"
        elif "Norm" in typ:
            kind = "bn" if "BatchNorm" in typ else "norm"
            size = ints[0] if ints else (args.split(",")[0].strip("()[] ") or "?")
            desc = f"{_NORM_DIM.sub('', typ)} {size}{tag}"
        else:   # attention, learnable activation or pooling: its type, numbered per type
            counters[typ] = counters.get(typ, 0) + 1
            names[qualified] = f"{typ} #{counters[typ]}" + (f" ({ints[0]}{tag})" if ints else "")
            continue
        counters[kind] = counters.get(kind, 0) + 1
        names[qualified] = f"{kind}{counters[kind]} ({desc})"
    return names


def weight_label(tensor_name: str, readable: dict[str, str]) -> str:
    """A readable label for a weight tensor name such as ``net.1.weight`` (see above)."""
    module = tensor_name.rsplit(".", 1)[0] if tensor_name.endswith((".weight", ".bias")) else tensor_name
    return readable.get(module, module[-28:])


# ------------------------------------------------------------------- figures of a set of runs
ZERO_COLOR = "crimson"      # gradient exactly 0 in the heat maps
MISSING_COLOR = "0.82"      # not recorded (e.g. after a divergence)


def _integer_epochs(ax: plt.Axes) -> None:
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))


# --------------------------------------------------------------------------- training curves
@styled
def plot_learning_curves(records: Sequence[RunRecord], path: Path, title: str) -> Path:
    """Loss and accuracy during training, clean train subset (dashed) vs validation split (solid),
    every model in one figure; the legend gives each model's one test-set evaluation at the end."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(13, 4.8), layout="constrained")
    handles = []
    for color, r in zip(palette(len(records)), records):
        h = r.history
        ax_loss.plot(h.epoch, h.train_eval_loss, "--", color=color, marker="o", ms=3)
        ax_loss.plot(h.epoch, h.val_loss, "-", color=color, marker="o", ms=3)
        ax_acc.plot(h.epoch, 100 * np.asarray(h.train_eval_acc), "--", color=color, marker="o", ms=3)
        test = "" if r.test_acc is None else f" (test acc {100 * r.test_acc:.2f} %)"
        handles += ax_acc.plot(h.epoch, 100 * np.asarray(h.val_acc), "-", color=color, marker="o", ms=3,
                               label=r.label + test)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss", yscale="log")
    plain_minor_log_labels(ax_loss.yaxis)
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    for ax in (ax_loss, ax_acc):
        _integer_epochs(ax)
    handles += (ax_acc.plot([], [], "k--", label="train subset (eval mode)")
                + ax_acc.plot([], [], "k-", label="validation"))
    fig.legend(handles=handles, loc="outside right upper")
    fig.suptitle(title)
    return save_figure(fig, path)


@styled
def plot_generalisation_gap(records: Sequence[RunRecord], path: Path, title: str) -> Path:
    """Clean train minus validation accuracy during training (percentage points): the overfitting curve."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5), layout="constrained")
    for color, r in zip(palette(len(records)), records):
        h = r.history
        gap = 100 * (np.asarray(h.train_eval_acc, dtype=float) - np.asarray(h.val_acc, dtype=float))
        ax.plot(h.epoch, gap, marker="o", color=color, label=r.label)
    ax.axhline(0, color="k", lw=0.8)
    ax.set(xlabel="epoch", ylabel="train accuracy − validation accuracy (pp)", title=title)
    _integer_epochs(ax)
    ax.legend()
    return save_figure(fig, path)


# ------------------------------------------------------------------------------ costs & sizes
@styled
def plot_accuracy_vs_cost(records: Sequence[RunRecord], path: Path, title: str) -> Path:
    """Test accuracy against parameters, FLOPs and training time.

    Each model has its own colour and marker, named in one legend outside the panels (text labels
    next to close points overprint each other). An axis is logarithmic only when its values span
    a decade or more.
    """
    done = [r for r in records if r.summary.test_acc is not None]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), sharey=True, layout="constrained")
    specs = (("params", "parameters"), ("mflops", "forward MFLOPs per image"),
             ("train_time_s", "training time, all epochs (s)"))
    for ax, (key, xlabel) in zip(axes, specs):
        xs = [getattr(r.summary, key) for r in done]
        for (color, marker), r, x in zip(color_markers(len(done)), done, xs):
            ax.scatter(x, 100 * r.summary.test_acc, s=70, color=color, marker=marker, edgecolor="k",
                       linewidth=0.5, label=r.model, zorder=3)
        cost_axis(ax.xaxis, xs)
        ax.margins(x=0.08, y=0.08)
        ax.set(xlabel=xlabel)
    axes[0].set_ylabel("test accuracy (%)")
    fig.legend(handles=axes[0].collections, loc="outside right center", title="model")
    fig.suptitle(title)
    return save_figure(fig, path)


@styled
def plot_parameter_breakdown(records: Sequence[RunRecord], path: Path, title: str, top: int = 24) -> Path:
    """Parameters per layer for each model, input layer at the top, with readable layer names
    (``fc1 (Linear 784→512)``): every convolution and linear layer (the ``top`` largest if there
    are more) in network order; norm layers and the rest summed into one grey bar, so the bars
    add up to the total."""
    fig, axes = plt.subplots(1, len(records), figsize=(6.4 * len(records), 5.2), squeeze=False,
                             layout="constrained")
    for ax, color, r in zip(axes[0], palette(len(records)), records):
        names = readable_layer_names(r.architecture)
        per = list(r.params["per_layer"].items())
        weight_layers = [(n, v) for n, v in per if names.get(n, "").startswith(("conv", "fc"))]
        keep = {n for n, _ in sorted(weight_layers, key=lambda kv: -kv[1])[:top]}
        bars = [(names[n], v) for n, v in per if n in keep]
        rest = [(n, v) for n, v in per if n not in keep]
        if rest:
            norms_only = all(names.get(n, "").startswith(("bn", "norm")) for n, _ in rest)
            bars.append((f"{len(rest)} {'norm' if norms_only else 'other'} layer{'s' * (len(rest) > 1)}",
                         sum(v for _, v in rest)))
        total = r.params["total"]
        y = np.arange(len(bars))
        ax.barh(y, [v for _, v in bars], color=[color] * (len(bars) - bool(rest)) + ["0.6"] * bool(rest))
        for yy, (_, v) in zip(y, bars):
            ax.annotate(f" {v:,} ({100 * v / total:.1f} %)", (v, yy), va="center", fontsize=7.5)
        ax.set_yticks(y, [n for n, _ in bars], fontsize=8)
        ax.invert_yaxis()
        cost_axis(ax.xaxis, [v for _, v in bars])
        ax.set_xlim(right=ax.get_xlim()[1] * (6 if ax.get_xscale() == "log" else 1.35))  # room for the labels
        ax.set(xlabel="parameters" + (" (log scale)" if ax.get_xscale() == "log" else ""),
               title=f"{r.model}: {total:,} parameters")
    fig.suptitle(title)
    return save_figure(fig, path)


# ------------------------------------------------------------------------------- confusions
def error_counts(labels: Sequence[int], predictions: Sequence[int], n_classes: int) -> np.ndarray:
    """Confusion counts ``(true, predicted)`` with the diagonal (the correct answers) set to 0."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(labels), np.asarray(predictions)), 1)
    np.fill_diagonal(cm, 0)
    return cm


@styled
def plot_confusion_matrices(records: Sequence[RunRecord], path: Path, title: str) -> Path:
    """The errors of each model: off-diagonal cells count the test images of a true class (row)
    given a wrong class (column), on one colour scale for all models; the grey diagonal gives
    each class's accuracy (%). Zero cells are left blank."""
    done = [r for r in records if r.predictions]
    n = len(done)
    fig, axes = plt.subplots(1, n, figsize=(6.2 * n + 1, 5.8), squeeze=False, layout="constrained")
    errors = [error_counts(r.labels, r.predictions, len(r.class_names)) for r in done]
    vmax = max(1, max(int(e.max()) for e in errors))
    # bad = the masked diagonal; under = the zero cells (vmin sits between 0 and 1 error), blank
    cmap = plt.get_cmap("Reds").with_extremes(bad="0.88", under="white")
    im = None
    for ax, r, err in zip(axes[0], done, errors):
        classes, k = r.class_names, len(r.class_names)
        labels, preds = np.asarray(r.labels), np.asarray(r.predictions)
        shown = np.ma.masked_where(np.eye(k, dtype=bool), err.astype(float))
        im = ax.imshow(shown, cmap=cmap, vmin=0.5, vmax=vmax, interpolation="nearest")
        for i in range(k):
            n_true = int((labels == i).sum())
            acc = 100 * float((preds[labels == i] == i).mean()) if n_true else float("nan")
            ax.text(i, i, f"{acc:.1f}", ha="center", va="center", fontsize=6.5, color="0.3")
            for j in np.flatnonzero(err[i]):
                ax.text(j, i, str(err[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if err[i, j] > 0.6 * vmax else "black")
        ax.set_xticks(range(k), classes, rotation=45, ha="right", rotation_mode="anchor", fontsize=8)
        ax.set_yticks(range(k), classes, fontsize=8)
        ax.grid(False)
        n_err, n = int(err.sum()), len(labels)
        ax.set(xlabel="predicted class", ylabel="true class",
               title=f"{r.model}: {n_err:,} errors in {n:,} (test acc {100 * (1 - n_err / n):.2f} %)")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="misclassified test images (count)")
    fig.suptitle(f"{title}\n(off-diagonal: error counts; grey diagonal: accuracy of the class in %)")
    return save_figure(fig, path)


def _image_hwc(img: np.ndarray) -> np.ndarray:
    """``(C, H, W)`` uint8 -> ``(H, W)`` or ``(H, W, C)`` for imshow, without rescaling."""
    a = np.asarray(img)
    return a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)


def misclassified_round_robin(labels: Sequence[int], preds: Sequence[int]) -> np.ndarray:
    """Indices of the misclassified samples, taking turns over the true classes: the first error
    of each class (in data-set order), then the second of each, ... A test set stored class by
    class would otherwise fill the grid with one class; no choice is made by hand."""
    labels, preds = np.asarray(labels), np.asarray(preds)
    wrong = np.flatnonzero(labels != preds)
    rank = np.zeros(len(wrong), dtype=np.int64)
    for k in np.unique(labels[wrong]):
        members = labels[wrong] == k
        rank[members] = np.arange(members.sum())
    return wrong[np.lexsort((labels[wrong], rank))]


@styled
def plot_misclassified(images: np.ndarray, labels: Sequence[int], preds: Sequence[int], class_names: Sequence[str],
                       path: Path, title: str, n: int = 24) -> Path:
    """A grid of ``n`` misclassified test images, each with its true and (red) predicted class,
    chosen by :func:`misclassified_round_robin` (every true class in turn, in test-set order).

    ``images``: ``(N, C, H, W)`` uint8 (C = 1 or 3), ``labels`` / ``preds``: ``(N,)`` class ids.
    """
    images, labels, preds = np.asarray(images), np.asarray(labels), np.asarray(preds)
    if images.ndim != 4 or images.shape[1] not in (1, 3) or not len(images) == len(labels) == len(preds):
        raise ValueError(f"need images (N, 1|3, H, W) and N labels and predictions, got {images.shape}, "
                         f"{labels.shape}, {preds.shape}")
    wrong = misclassified_round_robin(labels, preds)
    shown = wrong[:n]
    cols = 8
    rows = max(1, int(np.ceil(len(shown) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(1.45 * cols, 1.75 * rows + 0.7), squeeze=False,
                             layout="constrained")
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), shown):
        ax.imshow(_image_hwc(images[i]), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(f"true {class_names[labels[i]]}", fontsize=7.5, pad=9)
        ax.text(0.5, 1.0, f"pred {class_names[preds[i]]}", transform=ax.transAxes, ha="center", va="bottom",
                fontsize=7.5, color="crimson")
    if not len(shown):
        axes[0, 0].text(0, 0.5, "no misclassified image", fontsize=11)
    fig.suptitle(f"{title}\n{len(shown)} of {len(wrong):,} misclassified test images "
                 f"({100 * len(wrong) / max(len(labels), 1):.2f} % of {len(labels):,}), true classes in turn",
                 fontsize=11)
    return save_figure(fig, path)


# ---------------------------------------------------------------------------- gradient flow
def gradient_flow_scale(norm_arrays: Sequence[np.ndarray]) -> mcolors.LogNorm:
    """One logarithmic colour scale for the heat maps of all compared models: from the smallest
    positive to the largest finite norm over all of them. Zeros and NaN are left out (they are
    drawn apart), so the scale is not stretched down to an invented floor."""
    values = np.concatenate([np.asarray(a, dtype=float).ravel() for a in norm_arrays] or [np.empty(0)])
    positive = values[np.isfinite(values) & (values > 0)]
    if positive.size == 0:
        return mcolors.LogNorm(vmin=1e-3, vmax=1.0)      # nothing to scale: every cell is 0 or missing
    lo, hi = float(positive.min()), float(positive.max())
    return mcolors.LogNorm(vmin=lo, vmax=hi if hi > lo else lo * 10)


def _cell_edges(x: Sequence[float]) -> np.ndarray:
    """Cell boundaries around the (possibly unevenly spaced) sample positions ``x``."""
    x = np.asarray(x, dtype=float)
    if len(x) == 1:
        return np.array([x[0] - 0.5, x[0] + 0.5])
    mid = (x[1:] + x[:-1]) / 2
    return np.concatenate([[2 * x[0] - mid[0]], mid, [2 * x[-1] - mid[-1]]])


def gradient_flow_figure(records: Sequence[RunRecord], title: str) -> plt.Figure:
    """The figure of :func:`plot_gradient_flow`, returned open (for tests and notebooks); call it
    under :func:`~utils.visualization_utils.styled` for the house style."""
    done = [r for r in records if r.grad_stats.l2]
    norms = [np.asarray(r.grad_stats.l2, dtype=float) for r in done]          # (samples, layers) each
    norm = gradient_flow_scale(norms)
    cmap = plt.get_cmap("viridis")
    fig = plt.figure(figsize=(6.4 * max(len(done), 1) + 1.5, 10), layout="constrained")
    grid = fig.add_gridspec(2, max(len(done), 1), height_ratios=[3, 1.4])
    heat_axes, mesh = [], None
    any_zero = any_missing = False
    for i, (r, a) in enumerate(zip(done, norms)):
        g = r.grad_stats
        ax = fig.add_subplot(grid[0, i])
        x, y = _cell_edges(g.step), np.arange(len(g.names) + 1) - 0.5
        finite = np.isfinite(a.T)
        zero, missing = finite & (a.T == 0), ~finite
        any_zero, any_missing = any_zero or zero.any(), any_missing or missing.any()
        mesh = ax.pcolormesh(x, y, np.ma.masked_where(~finite | (a.T <= 0), a.T), cmap=cmap, norm=norm)
        if zero.any():
            ax.pcolormesh(x, y, np.ma.masked_where(~zero, np.ones_like(a.T)),
                          cmap=mcolors.ListedColormap([ZERO_COLOR]), vmin=0, vmax=1)
        ax.set_facecolor(MISSING_COLOR)
        readable = readable_layer_names(r.architecture)
        ax.set_yticks(range(len(g.names)), [weight_label(n, readable) for n in g.names], fontsize=7)
        ax.set_ylim(len(g.names) - 0.5, -0.5)
        ax.set(xlabel="training step", title=f"{r.label}: ‖grad‖₂ per layer")
        ax.grid(False)
        heat_axes.append(ax)
    if mesh is not None:
        fig.colorbar(mesh, ax=heat_axes, label="gradient L2 norm of the layer's weights (one scale for all)")
    notes = ([Patch(color=ZERO_COLOR, label="exactly 0 (no gradient)")] if any_zero else []) + \
            ([Patch(color=MISSING_COLOR, label="not recorded")] if any_missing else [])
    if notes:
        heat_axes[0].legend(handles=notes, loc="lower left", bbox_to_anchor=(0, 1.06), ncol=2, fontsize=8,
                            frameon=False)
    ax_ratio = fig.add_subplot(grid[1, :])
    for color, r in zip(palette(len(done)), done):
        ratio = first_last_ratio(r.grad_stats.l2)
        median = np.nanmedian(ratio) if np.isfinite(ratio).any() else np.nan
        ax_ratio.plot(r.grad_stats.step, ratio, color=color, label=f"{r.label} (median {median:.3g})")
    ax_ratio.set(yscale="log", xlabel="training step", ylabel="‖grad first layer‖ / ‖grad last layer‖",
                 title="Gradient ratio first / last layer (1 = gradients reach the input layer undiminished)")
    ax_ratio.axhline(1, color="k", lw=0.8)
    ax_ratio.legend(fontsize=8)
    fig.suptitle(title)
    return fig


@styled
def plot_gradient_flow(records: Sequence[RunRecord], path: Path, title: str) -> Path:
    """Per-layer gradient L2 norms over training: a layer x step heat map per model, all on one
    logarithmic colour scale (so the panels compare), exact zeros in red, and below it the
    first-layer / last-layer norm ratio over training for all models."""
    return save_figure(gradient_flow_figure(records, title), path)
