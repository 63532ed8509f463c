"""Pure analysis helpers for the CNN-vs-FC study: receptive fields, parameter matching, FLOPs and
gradient-flow summaries.

Nothing here trains, loads data or writes files; every function takes a model / tensors / arrays
and returns numbers, so plots and tables can call them freely.

Sections
--------
1. Theoretical receptive field (RF): :class:`LayerSpec`, :class:`ReceptiveFieldRow`,
   :func:`receptive_field`, :func:`layer_specs_from_module`.
2. Empirical effective receptive field (ERF, Luo et al. 2016): :func:`effective_receptive_field`,
   :func:`erf_extent`.
3. Parameter matching for the kernel-size experiment: :func:`count_parameters`,
   :func:`solve_width_for_params`, :func:`relative_param_gap`, :func:`within_tolerance`.
4. FLOPs: :func:`count_flops`.
5. Gradient flow: :func:`weight_tensor_names`, :func:`gradient_flow_summary`.
6. Custom-layer study: :func:`time_forward_backward`, :func:`compare_forward_backward` (side-by-side
   speed), :func:`seed_statistics`, :func:`curve_band`, :func:`total_grad_norm`,
   :func:`relative_spread` (multi-seed aggregation).

Coordinate convention (RF ``start``)
------------------------------------
We follow Araujo, Norris & Sim, "Computing Receptive Fields of Convolutional Neural Networks",
Distill 2019 (https://distill.pub/2019/computing-receptive-fields/): input pixels are indexed
0, 1, 2, ... and the centre of pixel ``i`` is at coordinate ``i`` (0-based centres, *not* the
0.5, 1.5, ... convention of some blog posts). A negative ``start`` means the first output unit's
RF reaches into the zero padding. In that convention the "effective padding" reported by the
paper's library is ``P = (size - 1) / 2 - start``.
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "LayerSpec",
    "ReceptiveFieldRow",
    "receptive_field",
    "layer_specs_from_module",
    "effective_receptive_field",
    "erf_extent",
    "count_parameters",
    "solve_width_for_params",
    "relative_param_gap",
    "within_tolerance",
    "count_flops",
    "weight_tensor_names",
    "gradient_flow_summary",
    "time_forward_backward",
    "compare_forward_backward",
    "seed_statistics",
    "curve_band",
    "total_grad_norm",
    "relative_spread",
]


# ---------------------------------------------------------------------------------------------
# 1. Theoretical receptive field
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerSpec:
    """Geometry of one spatial layer (convolution or pooling), square kernels only.

    Only the geometry matters for the RF, so channels, bias, activation etc. are not recorded.
    ``padding`` is the padding on the *leading* (top/left) side, which is what moves ``start``;
    for symmetric padding that is simply the layer's ``padding`` argument.
    """

    name: str
    kernel_size: int
    stride: int = 1
    padding: int = 0
    dilation: int = 1

    def __post_init__(self) -> None:
        # Validate here so a bad spec fails at construction, not deep inside a recurrence.
        if self.kernel_size < 1 or self.stride < 1 or self.dilation < 1 or self.padding < 0:
            raise ValueError(f"invalid layer geometry: {self}")

    @property
    def effective_kernel(self) -> int:
        """Span of a dilated kernel in input pixels: ``dilation * (kernel_size - 1) + 1``."""
        return self.dilation * (self.kernel_size - 1) + 1


@dataclass(frozen=True)
class ReceptiveFieldRow:
    """RF of the output of one layer, expressed in input pixels (one spatial axis; square).

    Fields
    ------
    name:  the layer's name (from its :class:`LayerSpec`).
    size:  RF side length in input pixels (``r``), i.e. how many input pixels along one axis can
           influence one output unit. Counts the span, including holes of dilated kernels.
    jump:  effective stride (``j``): distance in input pixels between the RF centres of two
           adjacent output units; the product of all strides so far.
    start: input coordinate of the RF centre of the first output unit (index 0), with 0-based
           pixel centres (Distill 2019 convention, see module docstring). Can be negative or
           fractional (even kernels give half-pixel offsets).
    """

    name: str
    size: int
    jump: int
    start: float

    @property
    def effective_padding(self) -> int:
        """Distill's effective padding ``P_L = sum_l p_l * prod_{i<l} s_i = (size - 1)/2 - start``.

        This is the number the paper's library (google-research/receptive_field) reports as
        "effective padding"; the first output unit's RF covers input coordinates
        ``[-P, -P + size - 1]``.
        """
        return int(round((self.size - 1) / 2 - self.start))

    def center(self, index: int) -> float:
        """Input coordinate of the RF centre of output unit ``index`` (0-based)."""
        return self.start + index * self.jump


def receptive_field(layers: Sequence[LayerSpec]) -> list[ReceptiveFieldRow]:
    """Theoretical RF after each layer of a single-path (chain) network.

    Recurrences (Distill 2019, single-path case), starting from the input with
    ``r_0 = 1, j_0 = 1, start_0 = 0``::

        k_eff     = dilation * (k - 1) + 1
        r_out     = r_in + (k_eff - 1) * j_in
        j_out     = j_in * stride
        start_out = start_in + ((k_eff - 1) / 2 - padding) * j_in

    Args:
        layers: the conv/pool layers in forward order. Layers that do not change geometry
            (activations, batch norm, 1x1 stride-1 convs) may be included or omitted.

    Returns:
        One :class:`ReceptiveFieldRow` per input layer, same order (empty list for no layers).
        The network's RF is ``rows[-1].size``.
    """
    rows: list[ReceptiveFieldRow] = []
    size, jump, start = 1, 1, 0.0
    for spec in layers:
        k_eff = spec.effective_kernel
        # start must use the *incoming* jump, so update it before jump.
        start = start + ((k_eff - 1) / 2 - spec.padding) * jump
        size = size + (k_eff - 1) * jump
        jump = jump * spec.stride
        rows.append(ReceptiveFieldRow(name=spec.name, size=size, jump=jump, start=start))
    return rows


def _square(value: int | tuple[int, ...], what: str, name: str) -> int:
    """Collapse an int-or-tuple hyper-parameter to one int, refusing non-square geometry."""
    if isinstance(value, int):
        return value
    values = tuple(int(v) for v in value)
    if len(set(values)) != 1:
        raise ValueError(f"{name}: non-square {what} {values}; only square geometry is supported")
    return values[0]


def _conv_leading_padding(conv: nn.Conv2d, k: int, d: int) -> int:
    """Leading-side padding of a Conv2d, resolving the string forms 'valid' and 'same'."""
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return 0
        # PyTorch 'same' (stride 1 only) pads d*(k-1) in total and puts the odd pixel at the end,
        # so the leading side gets the floor half.
        return d * (k - 1) // 2
    return _square(conv.padding, "padding", "conv")


def layer_specs_from_module(
    model: nn.Module, skip: Sequence[str] = ("downsample", "shortcut")
) -> list[LayerSpec]:
    """Collect the Conv2d / MaxPool2d / AvgPool2d layers of ``model`` as :class:`LayerSpec`.

    The walk is ``model.named_modules()``, i.e. module *registration* order, which equals the
    forward order for chain networks built as ``nn.Sequential`` or with layers assigned in
    ``__init__`` in the order they are used. Everything else is ignored: BN, activations,
    dropout, flatten, ``nn.Linear`` and adaptive pools (whose kernel depends on the input size;
    a global pool makes the RF the whole image anyway). So ``receptive_field(...)[-1]`` is the RF
    of the last conv/pool output.

    Residual networks: the RF of the output is the union over paths, and the longest path is the
    chain of main-branch convs in order, which is what this returns *provided the shortcut
    branch is skipped*: e.g. torchvision's ``Bottleneck`` registers ``downsample`` (a 1x1
    stride-2 conv) *after* ``conv3``, so walking it as if it were in the chain would apply the
    stage's stride twice. Any module whose qualified name has a dotted component in ``skip`` is
    therefore left out, with its children (defaults cover torchvision's ``downsample`` and the
    common ``shortcut`` naming). Branching nets (Inception) are not supported.

    Args:
        model: the network; only module attributes are read (works on the meta device).
        skip: name components of shortcut/side branches to leave out.

    Returns:
        The specs in registration order, each named by the module's qualified name.

    Raises:
        ValueError: a layer has non-square kernel/stride/padding/dilation.
    """
    skip_set = set(skip)
    specs: list[LayerSpec] = []
    for name, module in model.named_modules():
        if skip_set and skip_set.intersection(name.split(".")):
            continue
        if isinstance(module, nn.Conv2d):
            k = _square(module.kernel_size, "kernel_size", name)
            d = _square(module.dilation, "dilation", name)
            s = _square(module.stride, "stride", name)
            p = _conv_leading_padding(module, k, d)
            specs.append(LayerSpec(name, k, s, p, d))
        elif isinstance(module, nn.MaxPool2d):
            k = _square(module.kernel_size, "kernel_size", name)
            # stride=None means stride=kernel_size; nn.MaxPool2d already resolves that.
            s = _square(module.stride if module.stride is not None else k, "stride", name)
            p = _square(module.padding, "padding", name)
            d = _square(module.dilation, "dilation", name)
            specs.append(LayerSpec(name, k, s, p, d))
        elif isinstance(module, nn.AvgPool2d):
            k = _square(module.kernel_size, "kernel_size", name)
            s = _square(module.stride if module.stride is not None else k, "stride", name)
            p = _square(module.padding, "padding", name)
            specs.append(LayerSpec(name, k, s, p, 1))
    return specs


# ---------------------------------------------------------------------------------------------
# 2. Empirical effective receptive field
# ---------------------------------------------------------------------------------------------


class _StopForward(Exception):
    """Raised by the capture hook so the forward pass stops once the wanted output exists."""


def effective_receptive_field(
    model: nn.Module,
    images: Tensor,
    layer: nn.Module | None = None,
    channel: int | None = None,
) -> Tensor:
    """Empirical effective receptive field (Luo, Li, Urtasun & Zemel, NeurIPS 2016).

    For every image, back-propagates 1 from the *central* spatial unit of a feature map
    ``(N, K, h, w)`` (summed over its ``K`` channels, or only ``channel``) to the input and
    records ``|d unit / d input|``.

    The central unit is ``(h // 2, w // 2)``: for even ``h``/``w`` that is the lower/right of
    the two middle positions. :func:`erf_extent` uses the same centre on the input grid.

    Args:
        model: the network. Put in eval mode for the call (so batch norm uses running stats and
            does not couple images in a batch, and dropout is off); every module's training flag
            and every parameter's ``requires_grad`` are restored afterwards. Parameters have
            ``requires_grad`` switched off during the call, so no ``.grad`` is accumulated (and
            no time is spent on parameter gradients).
        images: ``(N, C, H, W)`` float tensor on the model's device; not modified.
        layer: a submodule whose output (a single ``(N, K, h, w)`` tensor) is analysed, captured
            by a forward hook on its first call; the forward pass is stopped right after, so
            later layers (e.g. a classifier head) are never run. ``None``: the model's own
            output, which must then be a spatial map ``(N, K, h, w)``.
        channel: analyse this channel of the feature map instead of the sum over channels.

    Returns:
        ``(H, W)`` float tensor on the images' device: the mean over the ``N`` images of
        ``|grad|`` summed over the ``C`` input channels, normalised to sum to 1.

    Raises:
        ValueError: wrong input/feature-map rank, the hooked layer never ran, or the gradient is
            identically zero (e.g. dead ReLUs), in which case no distribution exists.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")

    training_flags = [(m, m.training) for m in model.modules()]
    grad_flags = [(p, p.requires_grad) for p in model.parameters()]
    captured: list[Tensor] = []
    handle = None

    def _hook(_module: nn.Module, _inputs: object, output: object) -> None:
        if not isinstance(output, Tensor):
            raise ValueError(f"hooked layer must return one Tensor, got {type(output).__name__}")
        captured.append(output)
        raise _StopForward

    try:
        model.eval()
        for p, _ in grad_flags:
            p.requires_grad_(False)
        # A fresh leaf copy: the caller's tensor stays untouched and may live under no_grad.
        x = images.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            if layer is not None:
                handle = layer.register_forward_hook(_hook)
                try:
                    model(x)
                except _StopForward:
                    pass
                if not captured:
                    raise ValueError("the given layer was not called during model(images)")
                fmap = captured[0]
            else:
                fmap = model(x)
                if not isinstance(fmap, Tensor):
                    raise ValueError("model output must be a Tensor; pass `layer=`")
            if fmap.ndim != 4:
                raise ValueError(
                    f"feature map must be (N, K, h, w), got shape {tuple(fmap.shape)}; "
                    "pass a spatial `layer=`"
                )
            ci, cj = fmap.shape[2] // 2, fmap.shape[3] // 2
            unit = fmap[:, :, ci, cj] if channel is None else fmap[:, channel, ci, cj]
            # Summing over the batch gives every image its own gradient in one backward pass:
            # in eval mode images do not interact, so d(sum_n out_n)/d x_n = d out_n / d x_n.
            (grad,) = torch.autograd.grad(unit.sum(), x)
    finally:
        if handle is not None:
            handle.remove()
        for p, flag in grad_flags:
            p.requires_grad_(flag)
        for m, flag in training_flags:
            m.training = flag

    # abs before the channel sum: opposite-signed channel gradients must not cancel.
    erf = grad.abs().sum(dim=1).mean(dim=0)
    total = erf.sum()
    if not torch.isfinite(total) or total.item() <= 0:
        raise ValueError("gradient is identically zero (or not finite); ERF is undefined")
    return erf / total


def erf_extent(erf: Tensor, mass: float = 0.95) -> int:
    """Side of the smallest centred square that holds ``mass`` of the ERF's total.

    The square is centred on ``(H // 2, W // 2)`` (the same centre as
    :func:`effective_receptive_field`) and grows in odd sides 1, 3, 5, ... (Chebyshev rings),
    so the result is always odd and directly comparable with an odd theoretical RF size. Near
    the border the square is clipped to the image but its nominal side is still reported, like a
    theoretical RF larger than the image.

    Args:
        erf: ``(H, W)`` non-negative map (need not be normalised).
        mass: fraction in ``(0, 1]`` of the total to enclose.

    Returns:
        The side length ``2 * r + 1`` of the smallest such square.
    """
    if erf.ndim != 2:
        raise ValueError(f"erf must be (H, W), got shape {tuple(erf.shape)}")
    h, w = erf.shape
    return erf_extent_at(erf, (h // 2, w // 2), mass)


# ---------------------------------------------------------------------------------------------
# 3. Parameter matching
# ---------------------------------------------------------------------------------------------


def count_parameters(model: nn.Module) -> dict:
    """Parameter counts (buffers such as BN running stats are not parameters, not counted).

    Returns:
        dict with
          ``total``: number of scalar parameters, each shared tensor counted once;
          ``trainable``: the part with ``requires_grad=True``;
          ``per_layer``: ``OrderedDict`` (registration order) mapping the qualified name of each
          module that directly owns parameters (``"<root>"`` for the model itself) to the count
          of the parameters it owns; a shared tensor is credited to its first owner, so the
          values sum to ``total``.
    """
    seen: set[int] = set()
    per_layer: OrderedDict[str, int] = OrderedDict()
    total = trainable = 0
    for name, module in model.named_modules():
        owned = 0
        for p in module.parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            owned += p.numel()
            total += p.numel()
            if p.requires_grad:
                trainable += p.numel()
        if owned:
            per_layer[name or "<root>"] = owned
    return {"total": total, "trainable": trainable, "per_layer": per_layer}


def _param_count_of(build: Callable[[int], nn.Module], width: int, use_meta: bool) -> int:
    if use_meta:
        # Meta tensors have shapes but no storage: building even a 1024-wide 7x7 model is free
        # and skips weight initialisation, which dominates the cost on a 2-core CPU.
        with torch.device("meta"):
            model = build(width)
    else:
        model = build(width)
    return count_parameters(model)["total"]


def solve_width_for_params(
    build: Callable[[int], nn.Module],
    target: int,
    lo: int = 1,
    hi: int = 1024,
    use_meta: bool = True,
) -> tuple[int, int]:
    """Integer width in ``[lo, hi]`` whose model has the parameter count closest to ``target``.

    Assumes the count is non-decreasing in width (true for widening conv/linear layers). Binary
    search finds the smallest width with count >= target; the answer is that width or the one
    below it, whichever is closer (ties go to the smaller, cheaper width). If even ``hi`` is
    below target (or ``lo`` above), the boundary is returned.

    Note the achievable precision: for a model whose count grows like ``w**2`` one width step
    changes the count by about ``2 / w`` relative, so the best match can be up to ``~1 / w`` off;
    a +-2 % tolerance needs widths of about 50 or more.

    Args:
        build: ``width -> model``. Built under ``torch.device("meta")`` when ``use_meta`` (the
            builder must then not copy or read parameter values).
        target: wanted number of parameters (``count_parameters(...)["total"]``).
        lo, hi: inclusive width range.
        use_meta: build on the meta device (fast, no memory); set False for builders that can't.

    Returns:
        ``(width, params)``.
    """
    if not 1 <= lo <= hi:
        raise ValueError(f"need 1 <= lo <= hi, got lo={lo}, hi={hi}")
    cache: dict[int, int] = {}

    def params(w: int) -> int:
        if w not in cache:
            cache[w] = _param_count_of(build, w, use_meta)
        return cache[w]

    left, right = lo, hi  # invariant: answer of "first w with params(w) >= target" in [left, right]
    if params(hi) < target:
        return hi, params(hi)
    while left < right:
        mid = (left + right) // 2
        if params(mid) >= target:
            right = mid
        else:
            left = mid + 1
    candidates = [w for w in (left - 1, left) if lo <= w <= hi]
    best = min(candidates, key=lambda w: (abs(params(w) - target), w))
    return best, params(best)


def relative_param_gap(params: Sequence[int], target: int | None = None) -> float:
    """Relative mismatch of a group of parameter counts.

    With ``target``: ``max_i |p_i - target| / target`` (worst model vs. the target).
    Without: ``(max - min) / mean`` (spread of the group around its own mean).
    """
    values = np.asarray(params, dtype=np.float64)
    if values.size == 0:
        raise ValueError("params is empty")
    if target is not None:
        if target <= 0:
            raise ValueError("target must be positive")
        return float(np.max(np.abs(values - target)) / target)
    return float((values.max() - values.min()) / values.mean())


def within_tolerance(params: Sequence[int], target: int, tol: float = 0.02) -> bool:
    """True when every count is within ``tol`` (relative, inclusive) of ``target``."""
    return relative_param_gap(params, target) <= tol


# ---------------------------------------------------------------------------------------------
# 4. FLOPs
# ---------------------------------------------------------------------------------------------


def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Forward FLOPs for ONE image, counted by ``torch.utils.flop_counter.FlopCounterMode``.

    Counts a multiply-add as 2 FLOPs and covers the matmul-like ops (conv, linear/addmm, mm,
    bmm, ...); element-wise ops (activations, bias adds, batch norm, pooling) count 0, so e.g.
    ``Linear(100, 10)`` is ``2 * 100 * 10 = 2000``.

    Args:
        model: the network; run in eval mode under ``torch.no_grad()``, training flags restored.
        input_shape: shape of one input *without* the batch dimension, e.g. ``(3, 32, 32)``; a
            batch of 1 of zeros is used (zeros, not random, so the global RNG stream that
            experiments depend on is left untouched).

    Returns:
        Total FLOPs as an int.
    """
    from torch.utils.flop_counter import FlopCounterMode

    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    x = torch.zeros((1, *input_shape), device=device, dtype=dtype)
    training_flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        for m, flag in training_flags:
            m.training = flag
    return int(counter.get_total_flops())


# ---------------------------------------------------------------------------------------------
# 5. Gradient flow
# ---------------------------------------------------------------------------------------------


def weight_tensor_names(model: nn.Module) -> list[str]:
    """Names of the parameters gradient-flow plots track: ``*weight`` tensors with ndim > 1.

    This drops biases and BN/LayerNorm affine weights (1-D), whose gradient norms say little
    about signal propagation. Order is ``named_parameters()`` order (= forward order for chains).
    """
    return [n for n, p in model.named_parameters() if n.endswith("weight") and p.ndim > 1]


def gradient_flow_summary(layer_names: Sequence[str], norms: np.ndarray) -> dict:
    """Summarise per-layer gradient norms recorded during training.

    Args:
        layer_names: the ``n_layers`` tracked tensors in forward order (input side first). The
            caller chooses them, normally :func:`weight_tensor_names`.
        norms: ``(n_samples, n_layers)`` L2 norms of each tensor's gradient, one row per
            recorded step. NaN entries (e.g. a diverged step) are ignored by the medians.

    Returns:
        dict with
          ``layer_names``: list of the names, as given;
          ``median_norm``: ``(n_layers,)`` median over samples of each layer's norm;
          ``first_last_ratio``: ``(n_samples,)`` ``norm[first layer] / norm[last layer]`` per
          step: > 1 means gradients grow towards the input, < 1 means they vanish towards it
          (NaN where the last-layer norm is 0);
          ``median_first_last_ratio``: float, median of that ratio over time.
    """
    arr = np.asarray(norms, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"norms must be (n_samples, n_layers), got shape {arr.shape}")
    if arr.shape[1] != len(layer_names):
        raise ValueError(f"{arr.shape[1]} norm columns but {len(layer_names)} layer names")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError("norms is empty")
    if (arr < 0).any():
        raise ValueError("gradient norms must be non-negative")
    first, last = arr[:, 0], arr[:, -1]
    ratio = np.full(arr.shape[0], np.nan)
    np.divide(first, last, out=ratio, where=last > 0)
    return {
        "layer_names": list(layer_names),
        "median_norm": np.nanmedian(arr, axis=0),
        "first_last_ratio": ratio,
        "median_first_last_ratio": float(np.nanmedian(ratio)) if np.isfinite(ratio).any() else math.nan,
    }


# ---------------------------------------------------------------------------------------------
# 6. Custom-layer study: side-by-side speed, multi-seed aggregation
# ---------------------------------------------------------------------------------------------


def time_forward_backward(
    modules: "dict[str, nn.Module]",
    x: Tensor,
    repeats: int = 7,
    warmup: int = 2,
) -> dict:
    """Median forward+backward wall time of several modules on the same input, measured side by side.

    Every round runs each module once, in turn (the order rotates every round), so slow drifts of
    the machine (another job, CPU frequency) hit all of them alike; the median over ``repeats``
    rounds drops the occasional outlier. One call = ``y = m(x)``, then ``y.backward(g)`` with a
    fixed random ``g`` (a plain ``sum()`` would give an all-ones gradient, which some kernels
    special-case), computing the gradients w.r.t. ``x`` and every parameter.

    Args:
        modules: name -> module; all must accept ``x``. They are timed in their current mode.
        x: the input (its dtype / memory format are kept; ``requires_grad`` is set on a copy).
        repeats: timed rounds (>= 1).
        warmup: untimed rounds first (allocator, oneDNN primitive caches).

    Returns:
        ``{name: {"median_ms", "min_ms", "times_ms"}}``.
    """
    import time

    if repeats < 1 or warmup < 0:
        raise ValueError("repeats must be >= 1 and warmup >= 0")
    if not modules:
        raise ValueError("modules is empty")
    names = list(modules)
    xin = x.detach().clone(memory_format=torch.preserve_format).requires_grad_(True)
    gen = torch.Generator().manual_seed(0)
    grads: dict[str, Tensor] = {}
    with torch.no_grad():
        for name in names:
            out = modules[name](xin)
            grads[name] = torch.randn(out.shape, generator=gen, dtype=out.dtype).to(out.device)

    def one_call(name: str) -> float:
        m = modules[name]
        xin.grad = None
        for p in m.parameters():
            p.grad = None
        t0 = time.perf_counter()
        y = m(xin)
        y.backward(grads[name])
        if xin.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            t = one_call(name)
            if r >= warmup:
                times[name].append(1000.0 * t)
    return {n: {"median_ms": float(np.median(v)), "min_ms": float(np.min(v)), "times_ms": v}
            for n, v in times.items()}


def compare_forward_backward(custom: nn.Module, native: nn.Module, x: Tensor, repeats: int = 7,
                             warmup: int = 2) -> dict:
    """Forward+backward time of a custom layer vs its native counterpart on the same input.

    Returns:
        dict with ``custom_ms`` and ``native_ms`` (medians, timed side by side by
        :func:`time_forward_backward`), ``ratio = custom_ms / native_ms`` (> 1: the custom layer is
        slower), and ``max_abs_diff`` of the two forward outputs (``None`` when the shapes differ),
        which is ~0 when the pair computes the same function with the same parameters.
    """
    t = time_forward_backward({"custom": custom, "native": native}, x, repeats, warmup)
    with torch.no_grad():
        yc, yn = custom(x), native(x)
    diff = float((yc - yn).abs().max()) if yc.shape == yn.shape else None
    c, n = t["custom"]["median_ms"], t["native"]["median_ms"]
    return {"custom_ms": c, "native_ms": n, "ratio": c / n if n > 0 else math.nan, "max_abs_diff": diff}


def seed_statistics(values: Sequence[float]) -> dict:
    """Mean, sample std (ddof=1; 0 for a single value), min, max and n of per-seed values.

    NaN entries (e.g. a diverged run without a final accuracy) are dropped and counted in
    ``n_missing``.
    """
    arr = np.asarray(values, dtype=np.float64)
    ok = arr[np.isfinite(arr)]
    if ok.size == 0:
        return {"mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan, "n": 0,
                "n_missing": int(arr.size), "values": arr.tolist()}
    return {"mean": float(ok.mean()), "std": float(ok.std(ddof=1)) if ok.size > 1 else 0.0,
            "min": float(ok.min()), "max": float(ok.max()), "n": int(ok.size),
            "n_missing": int(arr.size - ok.size), "values": arr.tolist()}


def curve_band(curves: Sequence[Sequence[float]]) -> dict:
    """Mean and min-max band, point by point, of several curves (e.g. one per seed).

    Curves may have different lengths (a diverged run stops early): each point aggregates the
    curves that reach it, and ``n`` says how many did.

    Returns:
        dict of equal-length lists ``mean``, ``min``, ``max``, ``n`` (length of the longest curve).
    """
    if not curves:
        raise ValueError("curves is empty")
    length = max(len(c) for c in curves)
    arr = np.full((len(curves), length), np.nan)
    for i, c in enumerate(curves):
        arr[i, :len(c)] = np.asarray(c, dtype=np.float64)
    n = np.isfinite(arr).sum(axis=0)
    # Every column has >= 1 finite value when the inputs are finite; NaN inputs give NaN points.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "All-NaN slice": NaN there, on purpose
        mean, lo, hi = np.nanmean(arr, axis=0), np.nanmin(arr, axis=0), np.nanmax(arr, axis=0)
    return {"mean": mean.tolist(), "min": lo.tolist(), "max": hi.tolist(), "n": n.astype(int).tolist()}


def total_grad_norm(l2: Sequence[Sequence[float]]) -> np.ndarray:
    """Global gradient L2 norm per recorded step from per-layer norms ``(samples, layers)``.

    ``sqrt(sum_layers l2**2)``: the norm of all tracked weight gradients as one vector.
    """
    arr = np.asarray(l2, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"l2 must be (n_samples, n_layers), got shape {arr.shape}")
    return np.sqrt((arr ** 2).sum(axis=1))


def relative_spread(values: Sequence[float]) -> float:
    """``(max - min) / mean`` of positive values: a scale-free spread (0 = identical)."""
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0 or arr.mean() == 0:
        return math.nan
    return float((arr.max() - arr.min()) / abs(arr.mean()))


# ---------------------------------------------------------------------------------------------
# 7. Architecture study: activations, per-layer conv costs, off-centre ERF extent
# ---------------------------------------------------------------------------------------------


def collect_activations(model: nn.Module, images: Tensor, layers: "dict[str, nn.Module]") -> "dict[str, Tensor]":
    """Outputs of the given submodules for ``images``, captured with forward hooks.

    Args:
        model: the network; run once in eval mode under ``torch.no_grad()`` (training flags
            restored afterwards), so BN uses its running statistics and images do not interact.
        images: ``(N, C, H, W)`` normalised input on the model's device.
        layers: label -> submodule of ``model``; each must return one tensor. A module called
            several times keeps its first output.

    Returns:
        label -> detached float32 CPU tensor (contiguous, default memory format), e.g.
        ``(N, K, h, w)`` for a conv block.
    """
    captured: dict[str, Tensor] = {}
    handles = []

    def make_hook(label: str):
        def hook(_m: nn.Module, _inp: object, out: object) -> None:
            if not isinstance(out, Tensor):
                raise ValueError(f"layer {label!r} must return one Tensor, got {type(out).__name__}")
            # clone: in-place ops later in the forward (ReLU(inplace=True)) must not change it
            captured.setdefault(label, out.detach().float().cpu().contiguous().clone())
        return hook

    training_flags = [(m, m.training) for m in model.modules()]
    try:
        for label, module in layers.items():
            handles.append(module.register_forward_hook(make_hook(label)))
        model.eval()
        with torch.no_grad():
            model(images)
    finally:
        for h in handles:
            h.remove()
        for m, flag in training_flags:
            m.training = flag
    missing = set(layers) - set(captured)
    if missing:
        raise ValueError(f"layers never called during the forward pass: {sorted(missing)}")
    return {label: captured[label] for label in layers}


def conv_layer_costs(model: nn.Module, input_shape: tuple[int, ...]) -> list[dict]:
    """Parameters and forward FLOPs of every ``nn.Conv2d``, with the resolution it runs at.

    A conv's FLOPs are ``2 * weight.numel() * H_out * W_out`` (one multiply-add = 2, as in
    :func:`count_flops`; bias ignored). So at equal parameters, FLOPs depend on *where* the
    parameters sit: a weight at 32x32 costs 16x more per image than the same weight at 8x8.

    Returns:
        One dict per conv in forward order: ``name, kernel, in_ch, out_ch, params`` (weight +
        bias), ``out_hw`` and ``flops``.
    """
    rows: list[dict] = []
    handles = []

    def make_hook(name: str, conv: nn.Conv2d):
        def hook(_m: nn.Module, _inp: object, out: Tensor) -> None:
            h, w = int(out.shape[-2]), int(out.shape[-1])
            rows.append({"name": name, "kernel": _square(conv.kernel_size, "kernel_size", name),
                         "in_ch": conv.in_channels, "out_ch": conv.out_channels,
                         "params": sum(p.numel() for p in conv.parameters()),
                         "out_hw": [h, w], "flops": 2 * conv.weight.numel() * h * w})
        return hook

    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    training_flags = [(m, m.training) for m in model.modules()]
    try:
        for name, m in model.named_modules():
            if isinstance(m, nn.Conv2d):
                handles.append(m.register_forward_hook(make_hook(name, m)))
        model.eval()
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), device=device))
    finally:
        for h in handles:
            h.remove()
        for m, flag in training_flags:
            m.training = flag
    return rows


def erf_extent_at(erf: Tensor, center: tuple[float, float], mass: float = 0.95) -> int:
    """Like :func:`erf_extent`, but for a square centred on an arbitrary (e.g. half-pixel) point.

    Why: after 2x2 max-pools the RF centre of the middle unit is a half-pixel off the image centre
    (e.g. 17.5 instead of 16 on a 32-pixel input, see ``ReceptiveFieldRow.center``); measuring
    the ERF square around the wrong centre would inflate it by a few pixels.

    Pixels are grouped by Chebyshev distance ``d = max(|i - cy|, |j - cx|)`` from ``center``
    (pixel centres at integer coordinates); the smallest ``d`` whose square holds ``mass`` of the
    total gives the side ``2 d + 1`` in pixels (odd for an integer centre, even for a half-pixel
    one). For an integer centre at ``(H // 2, W // 2)`` this equals :func:`erf_extent`.
    """
    if erf.ndim != 2:
        raise ValueError(f"erf must be (H, W), got shape {tuple(erf.shape)}")
    if not 0.0 < mass <= 1.0:
        raise ValueError(f"mass must be in (0, 1], got {mass}")
    values = erf.detach().to("cpu", torch.float64).numpy()
    if (values < 0).any():
        raise ValueError("erf must be non-negative")
    total = values.sum()
    if total <= 0:
        raise ValueError("erf sums to zero")
    h, w = values.shape
    dist = np.maximum(np.abs(np.arange(h) - center[0])[:, None], np.abs(np.arange(w) - center[1])[None, :])
    levels, inverse = np.unique(np.round(dist, 6), return_inverse=True)
    cumulative = np.cumsum(np.bincount(inverse.ravel(), weights=values.ravel()))
    d = levels[int(np.argmax(cumulative >= mass * total - 1e-9 * total))]
    return int(round(2 * d + 1))


# ---------------------------------------------------------------------------------------------
# 8. Classification errors (task 1): per-class accuracy and the most frequent confusions
# ---------------------------------------------------------------------------------------------


def classification_summary(labels: Sequence[int], preds: Sequence[int], class_names: Sequence[str],
                           top: int = 5) -> dict:
    """Error rate, per-class accuracy (recall) and the ``top`` most frequent confusions.

    Returns a JSON-safe dict: ``error_rate``, ``per_class_acc`` (class name -> fraction),
    ``worst_class``, and ``top_confusions``: list of ``{"true", "pred", "count", "share_of_true"}``
    sorted by count (off-diagonal cells of the confusion matrix).
    """
    from sklearn.metrics import confusion_matrix

    n = len(class_names)
    cm = confusion_matrix(labels, preds, labels=list(range(n)))
    support = cm.sum(axis=1)
    per_class = {class_names[i]: float(cm[i, i] / support[i]) if support[i] else math.nan for i in range(n)}
    off = [(int(cm[i, j]), i, j) for i in range(n) for j in range(n) if i != j and cm[i, j] > 0]
    off.sort(reverse=True)
    return {
        "error_rate": float(1.0 - np.trace(cm) / cm.sum()),
        "per_class_acc": per_class,
        "worst_class": min(per_class, key=lambda k: per_class[k]),
        "top_confusions": [{"true": class_names[i], "pred": class_names[j], "count": c,
                            "share_of_true": float(c / support[i])} for c, i, j in off[:top]],
    }
