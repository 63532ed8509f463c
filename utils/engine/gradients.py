"""Gradient statistics recorded during training: which tensors to track, the first/last-layer
gradient ratio, per-layer summaries and the global gradient norm.

The engine records ``grad_stats["l2"]``: one row per sampled step, one column per tracked weight
tensor (:func:`weight_tensor_names`, input side first). Every function here reads that layout.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from torch import nn

__all__ = [
    "weight_tensor_names",
    "first_last_ratio",
    "gradient_flow_summary",
    "total_grad_norm",
    "MIN_NORM",
]

# Gradient norms at or below this count as zero: a ratio over such a norm is undefined (NaN), not
# a huge number made of rounding residue. Any real non-zero gradient norm of a float32 model is
# far above it, so for those the ratio is the plain quotient.
MIN_NORM = 1e-30


def weight_tensor_names(model: nn.Module) -> list[str]:
    """Names of the parameters gradient-flow plots track: ``*weight`` tensors with ndim > 1.

    This drops biases and BN/LayerNorm affine weights (1-D), whose gradient norms say little
    about signal propagation. Order is ``named_parameters()`` order (= forward order for chains).
    """
    return [n for n, p in model.named_parameters() if n.endswith("weight") and p.ndim > 1]


def first_last_ratio(norms: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """``norm[first layer] / norm[last layer]`` per recorded step, from ``(n_samples, n_layers)`` norms.

    > 1: gradients grow towards the input; < 1: they vanish towards it. NaN where the last-layer
    norm is at or below :data:`MIN_NORM` (or NaN itself), so log-scale plots show a gap and
    ``np.nanmedian`` skips the step.

    Returns:
        ``(n_samples,)`` float64 array.
    """
    arr = np.asarray(norms, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise ValueError(f"norms must be (n_samples, n_layers) with n_layers >= 1, got shape {arr.shape}")
    first, last = arr[:, 0], arr[:, -1]
    ratio = np.full(arr.shape[0], np.nan)
    np.divide(first, last, out=ratio, where=last > MIN_NORM)
    return ratio


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
          step (:func:`first_last_ratio`): > 1 means gradients grow towards the input, < 1 means
          they vanish towards it (NaN where the last-layer norm is zero);
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
    ratio = first_last_ratio(arr)
    return {
        "layer_names": list(layer_names),
        "median_norm": np.nanmedian(arr, axis=0),
        "first_last_ratio": ratio,
        "median_first_last_ratio": float(np.nanmedian(ratio)) if np.isfinite(ratio).any() else math.nan,
    }


def total_grad_norm(l2: Sequence[Sequence[float]]) -> np.ndarray:
    """Global gradient L2 norm per recorded step from per-layer norms ``(samples, layers)``.

    ``sqrt(sum_layers l2**2)``: the norm of all tracked weight gradients as one vector.
    """
    arr = np.asarray(l2, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"l2 must be (n_samples, n_layers), got shape {arr.shape}")
    return np.sqrt((arr ** 2).sum(axis=1))


