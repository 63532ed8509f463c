"""What every figure module shares: the house style (applied per figure, never globally), atomic
PNG saving, colours and markers, readable layer names, and the first/last-layer gradient ratio.

The figures themselves live in ``utils.visualization_utils`` (training curves, costs, confusions,
gradient flow), ``utils.plots_architecture`` (task 2) and ``utils.plots_blocks`` (task 3).
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
from matplotlib import ticker  # noqa: E402

from utils.files import atomic_write_bytes  # noqa: E402

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
    """Save ``fig`` as PNG at ``path`` (temp file + rename, see ``utils.files``) and close it."""
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
