"""Side-by-side timing: several candidates measured in turns, so machine drift hits all alike.

:func:`rotated` is the turn order shared with ``benchmarks/bench_levers.py``;
:func:`time_forward_backward` times forward + backward of several modules on one input,
:func:`time_forward` their inference (forward only, no autograd).
"""

from __future__ import annotations

import time
from typing import Sequence, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["rotated", "time_forward_backward", "time_forward"]

T = TypeVar("T")


def rotated(items: Sequence[T], round_index: int) -> list[T]:
    """``items`` rotated left by ``round_index`` (mod its length): the turn order of one round.

    Running the candidates in this order in round ``r`` = 0, 1, 2, ... puts every candidate first
    equally often, so "first in the round" effects (a cold cache, a load that just started) do
    not always hit the same one.
    """
    if not items:
        return []
    shift = round_index % len(items)
    return list(items[shift:]) + list(items[:shift])


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
        for name in rotated(names, r):
            t = one_call(name)
            if r >= warmup:
                times[name].append(1000.0 * t)
    return {n: {"median_ms": float(np.median(v)), "min_ms": float(np.min(v)), "times_ms": v}
            for n, v in times.items()}




def _summary(times: dict[str, list[float]]) -> dict:
    return {n: {"median_ms": float(np.median(v)), "min_ms": float(np.min(v)), "max_ms": float(np.max(v)),
                "times_ms": v} for n, v in times.items()}


@torch.inference_mode()
def time_forward(modules: "dict[str, nn.Module]", x: Tensor, repeats: int = 7, warmup: int = 2) -> dict:
    """Median forward (inference) wall time of several modules on the same input, side by side:
    every round runs each module once, in the rotating order of :func:`rotated`. The modules are
    timed in their current mode (call ``eval()`` first for inference); wrap the call in an
    autocast context to time the precision the models run in.

    Returns:
        ``{name: {"median_ms", "min_ms", "max_ms", "times_ms"}}``.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError("repeats must be >= 1 and warmup >= 0")
    if not modules:
        raise ValueError("modules is empty")
    names = list(modules)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + repeats):
        for name in rotated(names, r):
            t0 = time.perf_counter()
            modules[name](x)
            if x.device.type == "cuda":
                torch.cuda.synchronize()
            if r >= warmup:
                times[name].append(1000.0 * (time.perf_counter() - t0))
    return _summary(times)
