"""Receptive fields: the theoretical RF of a network (layer by layer) and the empirical effective
receptive field (ERF, Luo et al. 2016) measured by back-propagation.

Theoretical RF: :class:`LayerSpec`, :class:`ReceptiveFieldRow`, :func:`receptive_field`,
:func:`layer_specs_from_module`. Empirical ERF: :func:`effective_receptive_field`,
:func:`erf_extent_at`.

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

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from utils.eval_mode import eval_mode

__all__ = [
    "LayerSpec",
    "ReceptiveFieldRow",
    "receptive_field",
    "layer_specs_from_module",
    "square_geometry",
    "effective_receptive_field",
    "erf_extent_at",
]



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


def square_geometry(value: int | tuple[int, ...], what: str, name: str) -> int:
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
    return square_geometry(conv.padding, "padding", "conv")


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
            k = square_geometry(module.kernel_size, "kernel_size", name)
            d = square_geometry(module.dilation, "dilation", name)
            s = square_geometry(module.stride, "stride", name)
            p = _conv_leading_padding(module, k, d)
            specs.append(LayerSpec(name, k, s, p, d))
        elif isinstance(module, nn.MaxPool2d):
            k = square_geometry(module.kernel_size, "kernel_size", name)
            # stride=None means stride=kernel_size; nn.MaxPool2d already resolves that.
            s = square_geometry(module.stride if module.stride is not None else k, "stride", name)
            p = square_geometry(module.padding, "padding", name)
            d = square_geometry(module.dilation, "dilation", name)
            specs.append(LayerSpec(name, k, s, p, d))
        elif isinstance(module, nn.AvgPool2d):
            k = square_geometry(module.kernel_size, "kernel_size", name)
            s = square_geometry(module.stride if module.stride is not None else k, "stride", name)
            p = square_geometry(module.padding, "padding", name)
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
    the two middle positions; ``erf_extent_at(erf, (H // 2, W // 2))`` measures around the
    same centre on the input grid.

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

    grad_flags = [(p, p.requires_grad) for p in model.parameters()]
    captured: list[Tensor] = []
    handle = None

    def _hook(_module: nn.Module, _inputs: object, output: object) -> None:
        if not isinstance(output, Tensor):
            raise ValueError(f"hooked layer must return one Tensor, got {type(output).__name__}")
        captured.append(output)
        raise _StopForward

    with eval_mode(model):
        try:
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

    # abs before the channel sum: opposite-signed channel gradients must not cancel.
    erf = grad.abs().sum(dim=1).mean(dim=0)
    total = erf.sum()
    if not torch.isfinite(total) or total.item() <= 0:
        raise ValueError("gradient is identically zero (or not finite); ERF is undefined")
    return erf / total


def erf_extent_at(erf: Tensor, center: tuple[float, float], mass: float = 0.95) -> int:
    """Side of the smallest square centred on ``center`` that holds ``mass`` of the ERF's total.

    ``center`` may be a half-pixel point. Why: after 2x2 max-pools the RF centre of the middle unit is a half-pixel off the image centre
    (e.g. 17.5 instead of 16 on a 32-pixel input, see ``ReceptiveFieldRow.center``); measuring
    the ERF square around the wrong centre would inflate it by a few pixels.

    Pixels are grouped by Chebyshev distance ``d = max(|i - cy|, |j - cx|)`` from ``center``
    (pixel centres at integer coordinates); the smallest ``d`` whose square holds ``mass`` of the
    total gives the side ``2 d + 1`` in pixels (odd for an integer centre, even for a half-pixel
    one). Near the border the square is clipped to the image but its nominal side is still
    reported, like a theoretical RF larger than the image.

    Args:
        erf: ``(H, W)`` non-negative map (need not be normalised).
        center: ``(row, column)`` input coordinate of the square's centre, e.g. the analysed
            unit's RF centre ``ReceptiveFieldRow.center(i)``; ``(H // 2, W // 2)`` is the
            centre :func:`effective_receptive_field` back-propagates from on a stride-1 net.
        mass: fraction in ``(0, 1]`` of the total to enclose.
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


