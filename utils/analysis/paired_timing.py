"""Side-by-side timing: several candidates measured in turns, so machine drift hits all alike.

:func:`rotated` is the turn order shared with ``benchmarks/bench_levers.py``;
:func:`time_forward_backward` times forward + backward of several modules on one input;
:func:`time_training_steps` times whole training steps (forward under the training precision, loss,
backward, optimizer step) of several models, :func:`time_forward` their inference (forward only, no
autograd), and :func:`paired_ratios` turns such rounds into per-round ratios against a reference:
the paired statistic every speed claim quotes.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Callable, ContextManager, Sequence, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["rotated", "spread", "time_forward_backward", "time_training_steps", "time_forward", "paired_ratios",
           "MIN_REPEATS"]

MIN_REPEATS = 5     # a speed claim rests on at least this many alternating rounds

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




def spread(v: Sequence[float]) -> dict:
    """Median, quartiles, extremes and count of ``v`` (the spread every timing reports)."""
    q25, q50, q75 = (float(q) for q in np.percentile(v, [25, 50, 75]))
    return {"median": q50, "q25": q25, "q75": q75, "min": float(np.min(v)), "max": float(np.max(v)), "n": len(v)}


def _check(candidates: dict, repeats: int, warmup: int) -> None:
    if not candidates:
        raise ValueError("nothing to time")
    if repeats < 1 or warmup < 0:
        raise ValueError("repeats must be >= 1 and warmup >= 0")


def _rounds(names: Sequence[str], call: Callable[[str], None], device: torch.device, repeats: int, warmup: int,
            what: str, batch: int) -> dict:
    """``call(name)`` for every name in the rotating order of :func:`rotated`, ``warmup`` untimed
    rounds then ``repeats`` timed ones; the ms per round, and their spread per name as ``what``."""
    rounds: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + repeats):
        for name in rotated(names, r):
            t0 = time.perf_counter()
            call(name)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if r >= warmup:
                rounds[name].append(1000.0 * (time.perf_counter() - t0))
    return {"rounds_ms": rounds, what: {n: spread(v) for n, v in rounds.items()},
            "images_per_s": {n: spread([1000.0 * batch / t for t in v]) for n, v in rounds.items()},
            "repeats": repeats, "warmup": warmup, "batch": batch}


def time_training_steps(models: "dict[str, nn.Module]", x: Tensor, y: Tensor, *, repeats: int = 7, warmup: int = 2,
                        autocast: Callable[[], ContextManager] = nullcontext, lr: float = 0.01) -> dict:
    """Wall time of one training step of each model, measured side by side in rotating rounds.

    A step is what training does: ``zero_grad``, forward under ``autocast()`` (pass the run's
    ``Runtime.autocast`` to time at the training precision, e.g. bf16 with fp32 islands), cross
    entropy, backward, an SGD-momentum step. Each model gets its own optimizer on its own
    parameters (the models are trained a little by the timing: time copies if that matters).

    Returns:
        ``{"rounds_ms": {name: [ms per round]}, "step_ms": {name: spread}, "images_per_s": {name: spread},
        "repeats", "warmup", "batch"}``; a spread is median, quartiles, min, max and n.

    Raises:
        ValueError: no models, ``repeats`` < 1 or ``warmup`` < 0.
    """
    _check(models, repeats, warmup)
    opts = {n: torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9) for n, m in models.items()}

    def step(name: str) -> None:
        m, opt = models[name], opts[name]
        m.train()
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = nn.functional.cross_entropy(m(x), y)
        loss.backward()
        opt.step()

    return _rounds(list(models), step, x.device, repeats, warmup, "step_ms", int(x.shape[0]))


@torch.inference_mode()
def time_forward(modules: "dict[str, nn.Module]", x: Tensor, *, repeats: int = 7, warmup: int = 2) -> dict:
    """Wall time of one forward pass (inference, no autograd) of each module on the same input,
    measured side by side in rotating rounds like :func:`time_training_steps`.

    The modules are timed in their current mode (call ``eval()`` first for inference); wrap the
    call in an autocast context to time the precision the models run in.

    Returns:
        ``{"rounds_ms": {name: [ms per round]}, "forward_ms": {name: spread},
        "images_per_s": {name: spread}, "repeats", "warmup", "batch"}``.

    Raises:
        ValueError: no modules, ``repeats`` < 1 or ``warmup`` < 0.
    """
    _check(modules, repeats, warmup)
    return _rounds(list(modules), lambda name: modules[name](x), x.device, repeats, warmup, "forward_ms",
                   int(x.shape[0]))


def paired_ratios(rounds_ms: "dict[str, Sequence[float]]", reference: str) -> dict:
    """Per-round time ratios ``t(model) / t(reference)`` of side-by-side rounds, summarised.

    Both were measured in the same round, so the machine's drift between rounds cancels in the
    ratio; the median over rounds with its quartiles is the paired speed statistic ("x1.73
    (quartiles 1.70-1.77, n=7)"), where a ratio of two medians would not be.

    Raises:
        KeyError: ``reference`` was not timed. ValueError: rounds of different lengths.
    """
    ref = np.asarray(rounds_ms[reference], dtype=np.float64)
    out = {}
    for name, v in rounds_ms.items():
        arr = np.asarray(v, dtype=np.float64)
        if arr.shape != ref.shape:
            raise ValueError(f"{name}: {arr.size} rounds, the reference has {ref.size}")
        out[name] = spread((arr / ref).tolist())
    return out
