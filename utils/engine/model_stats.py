"""Size and cost of a model: parameter counts, width solving for equal parameters, forward FLOPs
and the per-layer cost of its convolutions.

Nothing here trains or writes files; FLOPs and conv costs run one forward pass on zeros in eval
mode (training flags restored), leaving the global RNG untouched.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from utils.engine.eval_mode import eval_mode

__all__ = [
    "count_parameters",
    "square_geometry",
    "solve_width_for_params",
    "relative_param_gap",
    "within_tolerance",
    "count_flops",
    "conv_layer_costs",
]


def square_geometry(value: int | tuple[int, ...], what: str, name: str) -> int:
    """Collapse an int-or-tuple hyper-parameter to one int, refusing non-square geometry."""
    if isinstance(value, int):
        return value
    values = tuple(int(v) for v in value)
    if len(set(values)) != 1:
        raise ValueError(f"{name}: non-square {what} {values}; only square geometry is supported")
    return values[0]


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


def relative_param_gap(params: Sequence[int], target: int) -> float:
    """Relative mismatch of a group of parameter counts to ``target``: ``max_i |p_i - target| / target``."""
    values = np.asarray(params, dtype=np.float64)
    if values.size == 0:
        raise ValueError("params is empty")
    if target <= 0:
        raise ValueError("target must be positive")
    return float(np.max(np.abs(values - target)) / target)


def within_tolerance(params: Sequence[int], target: int, tol: float = 0.02) -> bool:
    """True when every count is within ``tol`` (relative, inclusive) of ``target``."""
    return relative_param_gap(params, target) <= tol


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
    with eval_mode(model), torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


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
            rows.append({"name": name, "kernel": square_geometry(conv.kernel_size, "kernel_size", name),
                         "in_ch": conv.in_channels, "out_ch": conv.out_channels,
                         "params": sum(p.numel() for p in conv.parameters()),
                         "out_hw": [h, w], "flops": 2 * conv.weight.numel() * h * w})
        return hook

    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    try:
        for name, m in model.named_modules():
            if isinstance(m, nn.Conv2d):
                handles.append(m.register_forward_hook(make_hook(name, m)))
        with eval_mode(model), torch.no_grad():
            model(torch.zeros((1, *input_shape), device=device))
    finally:
        for h in handles:
            h.remove()
    return rows


