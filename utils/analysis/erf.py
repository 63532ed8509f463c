"""The empirical effective receptive field (ERF, Luo, Li, Urtasun & Zemel, NeurIPS 2016).

:func:`effective_receptive_field` back-propagates from one output unit to the input;
:func:`erf_extent_at` measures the square that holds a given share of the gradient mass around a
centre (normally the unit's theoretical RF centre, ``utils.analysis.receptive_field.ReceptiveFieldRow.center``);
:func:`erf_vs_flat_box` checks a claim about the ERF's shape against numbers: the same measures for
a flat (uniform) box over the theoretical RF, which is what "every pixel of the RF counts alike"
would give. Coordinates follow the convention of :mod:`utils.analysis.receptive_field`.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import Tensor, nn

from utils.analysis.feature_maps import collect_activations
from utils.engine.eval_mode import eval_mode
from utils.analysis.receptive_field import ReceptiveFieldRow, layer_specs_from_module, receptive_field

log = logging.getLogger(__name__)

__all__ = ["effective_receptive_field", "erf_extent_at", "flat_box", "erf_rms_radius", "mass_within",
           "erf_vs_flat_box", "CONCENTRATED_RMS_RATIO", "relu_points", "last_map_before_pool", "unit_erf",
           "erf_growth"]


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


# ------------------------------------------------------------------- shape against a flat box
# Reference shapes for the RMS radius relative to a flat box over the same RF: a tent (the ERF of a
# chain of box filters, separable) has 1/sqrt(2) = 0.71 of the box's, a flat box 1. An ERF is called
# "concentrated towards the centre" when its ratio is nearer the tent's than the box's (below the
# midpoint, 0.854), "wider than a flat box" above the inverse of that, else "close to a flat box".
CONCENTRATED_RMS_RATIO = (2 ** -0.5 + 1.0) / 2


def _chebyshev(shape: tuple[int, int], center: tuple[float, float]) -> np.ndarray:
    h, w = shape
    return np.maximum(np.abs(np.arange(h) - center[0])[:, None], np.abs(np.arange(w) - center[1])[None, :])


def flat_box(shape: tuple[int, int], rf: int, center: tuple[float, float]) -> Tensor:
    """The uniform map over the theoretical RF: 1 on every pixel of the ``rf x rf`` square centred
    on ``center`` (a half-pixel centre gives an even square, as for the RF itself), clipped to the
    ``(H, W)`` image, normalised to sum to 1 (float64).

    Raises:
        ValueError: ``rf < 1``, or the square misses the image.
    """
    if rf < 1:
        raise ValueError(f"rf must be >= 1, got {rf}")
    box = torch.as_tensor(_chebyshev(shape, center) <= (rf - 1) / 2 + 1e-9, dtype=torch.float64)
    if box.sum() == 0:
        raise ValueError(f"the {rf}-px square around {center} misses the {shape} image")
    return box / box.sum()


def erf_rms_radius(erf: Tensor, center: tuple[float, float]) -> float:
    """Root-mean-square Euclidean distance (px) of the map's mass from ``center``. Unlike a mass
    square it moves continuously (no 1-2 px steps) and is not capped by the image border."""
    values = erf.detach().to("cpu", torch.float64).numpy()
    h, w = values.shape
    d2 = (np.arange(h) - center[0])[:, None] ** 2 + (np.arange(w) - center[1])[None, :] ** 2
    return float(np.sqrt((values * d2).sum() / values.sum()))


def mass_within(erf: Tensor, center: tuple[float, float], side: float) -> float:
    """Share of the map's mass inside the square of ``side`` px centred on ``center`` (pixels
    whose centre lies within Chebyshev distance ``(side - 1) / 2``)."""
    values = erf.detach().to("cpu", torch.float64).numpy()
    inside = _chebyshev(values.shape, center) <= (side - 1) / 2 + 1e-9
    return float(values[inside].sum() / values.sum())


def erf_vs_flat_box(erf: Tensor, rf: int, center: tuple[float, float],
                    masses: tuple[float, ...] = (0.5, 0.9, 0.95)) -> dict:
    """The ERF's shape measured beside a flat box over the theoretical RF (same centre, same
    image, same discrete measures), so "concentrated towards the centre" is a number:

    * ``erf_extent`` / ``flat_box_extent``: side (px) of the centred square holding each share
      of ``masses`` (:func:`erf_extent_at`);
    * ``erf_rms_radius`` / ``flat_box_rms_radius`` and their ``rms_ratio``;
    * ``erf_mass_in_half_rf`` / ``flat_box_mass_in_half_rf``: share of the mass in the central
      square of half the RF's side;
    * ``shape``: "concentrated towards the centre" when ``rms_ratio < CONCENTRATED_RMS_RATIO``,
      "wider than a flat box" above its inverse, else "close to a flat box".
    """
    box = flat_box(tuple(erf.shape), rf, center)
    rms, rms_box = erf_rms_radius(erf, center), erf_rms_radius(box, center)
    ratio = rms / rms_box if rms_box > 0 else float("nan")
    if ratio < CONCENTRATED_RMS_RATIO:
        shape = "concentrated towards the centre"
    elif ratio > 1 / CONCENTRATED_RMS_RATIO:
        shape = "wider than a flat box"
    else:
        shape = "close to a flat box"
    return {"theoretical_rf": int(rf), "center": [float(center[0]), float(center[1])],
            "erf_extent": {str(m): erf_extent_at(erf, center, m) for m in masses},
            "flat_box_extent": {str(m): erf_extent_at(box, center, m) for m in masses},
            "erf_rms_radius": rms, "flat_box_rms_radius": rms_box, "rms_ratio": ratio,
            "erf_mass_in_half_rf": mass_within(erf, center, rf / 2),
            "flat_box_mass_in_half_rf": mass_within(box, center, rf / 2), "shape": shape}


# ----------------------------------------------------------- layer by layer in a conv chain
def relu_points(features: nn.Sequential) -> list[tuple[str, nn.Module, int]]:
    """Every ReLU of a ``conv -> [BN] -> ReLU [-> pool]`` chain as ``(name, module, row)``, where
    ``row`` indexes ``receptive_field(layer_specs_from_module(features))`` (the conv before it)."""
    points, n_specs = [], 0
    for name, m in features.named_children():
        n_specs += isinstance(m, (nn.Conv2d, nn.MaxPool2d))
        if isinstance(m, nn.ReLU):
            points.append((name, m, n_specs - 1))
    return points


def last_map_before_pool(features: nn.Sequential) -> tuple[nn.Module, int]:
    """The ReLU before the last max-pool (the deepest map at its stage's full resolution) and the
    number of conv/pool layers up to it (its RF row is that number - 1)."""
    feats = list(features)
    last_pool = max(i for i, m in enumerate(feats) if isinstance(m, nn.MaxPool2d))
    return feats[last_pool - 1], sum(isinstance(m, (nn.Conv2d, nn.MaxPool2d)) for m in feats[:last_pool])


def unit_erf(model: nn.Module, x: Tensor, layer: nn.Module, row: ReceptiveFieldRow, map_hw: tuple[int, int],
             masses: tuple[float, ...] = (0.5, 0.9, 0.95)) -> tuple[dict, Tensor] | None:
    """The ERF of the centre unit of ``layer`` (an ``map_hw`` map whose RF geometry is ``row``) and
    :func:`erf_vs_flat_box` of it; None (with a warning) where the gradient is zero or not finite,
    e.g. a diverged net."""
    try:
        erf = effective_receptive_field(model, x, layer=layer).float().cpu()
    except ValueError as exc:
        log.warning("no ERF: %s", exc)
        return None
    center = (row.center(map_hw[0] // 2), row.center(map_hw[1] // 2))
    return erf_vs_flat_box(erf, row.size, center, masses), erf


def erf_growth(model: nn.Module, features: nn.Sequential, x: Tensor) -> list[dict]:
    """ERF beside the flat box at every conv of ``features`` (at its ReLU), with the theoretical RF
    in pixels: how the measured ERF grows as the RF grows."""
    rows = receptive_field(layer_specs_from_module(features))
    points = relu_points(features)
    maps = collect_activations(model, x[:1], {name: m for name, m, _ in points})
    growth = []
    for name, m, i in points:
        found = unit_erf(model, x, m, rows[i], tuple(maps[name].shape[-2:]), (0.5,))
        if found is not None:
            c = found[0]
            growth.append({"layer": name, "theoretical_rf": rows[i].size, "erf_extent_50": c["erf_extent"]["0.5"],
                           "flat_box_extent_50": c["flat_box_extent"]["0.5"], "erf_rms_radius": c["erf_rms_radius"],
                           "flat_box_rms_radius": c["flat_box_rms_radius"], "rms_ratio": c["rms_ratio"]})
    return growth
