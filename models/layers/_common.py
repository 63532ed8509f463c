"""What every custom layer shares: the fp32 island under autocast, the autograd switch, small helpers."""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any, Callable, Optional, Sequence, Tuple, Type, Union

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx

size_2_t = Union[int, Tuple[int, int]]
Grads = Tuple[Optional[Tensor], ...]


# --------------------------------------------------------------------------- #
# Autocast handling
# --------------------------------------------------------------------------- #
# Choice: an explicit fp32 island, modelled on
# ``torch.amp.custom_fwd(cast_inputs=torch.float32)`` / ``custom_bwd``, but keyed
# on the device of the actual inputs instead of a device_type fixed at
# decoration time (``custom_fwd(device_type='cpu')`` would do nothing under
# CUDA autocast, and then F.conv2d inside forward would silently run in fp16
# while our hand-written math ran in fp32).
# Why fp32 at all: the backward formulas contain rsqrt(var), pow, log and
# sigmoid(1 - sigmoid) products whose bf16 rounding error is large, and the
# saved tensors must have one consistent dtype.  The input cast is not recorded
# by autograd, but the engine casts each returned gradient back to its input's
# dtype (so a bf16 input receives a bf16 grad).  The layer output is float32;
# the next autocast-eligible op re-casts it as usual.


def _device_type(args: Sequence[Any]) -> str:
    for a in args:
        if isinstance(a, Tensor):
            return a.device.type
    return "cpu"


def _to_fp32(a: Any) -> Any:
    # Same eligibility rule as torch.amp's _cast: floating, not float64.
    if isinstance(a, Tensor) and a.is_floating_point() and a.dtype is not torch.float64:
        return a.float()
    return a


def run_fp32(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``; if autocast is on for the inputs' device, with fp32 inputs and autocast off."""
    device_type = _device_type(args)
    if not torch.is_autocast_enabled(device_type):
        return fn(*args)
    with torch.autocast(device_type=device_type, enabled=False):
        return fn(*(_to_fp32(a) for a in args))


def fp32_forward(fwd: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate ``Function.forward``: run it as an fp32 island (see :func:`run_fp32`)."""

    @functools.wraps(fwd)
    def wrapper(ctx: FunctionCtx, *args: Any) -> Any:
        ctx.autocast_device = _device_type(args)  # type: ignore[attr-defined]
        return run_fp32(functools.partial(fwd, ctx), *args)

    return wrapper


def first_order_backward(bwd: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate ``Function.backward``: first order only, run with autocast off.

    The hand-written backward is not differentiable: its intermediates were
    computed without a graph, so differentiating through it (``create_graph=True``:
    double backward, gradient penalties, Hessian-vector products) would silently
    drop every second-order term.  ``torch.autograd.function.once_differentiable``
    only catches the case where an incoming gradient requires grad, not a penalty
    ``grad(y.sum(), x, create_graph=True)`` whose parameters' terms vanish.
    The engine runs backward with grad mode on exactly when it builds a graph
    (``create_graph=True``), so that is the test.  Autocast is turned off because
    ``.backward()`` may be called inside an autocast context.
    """

    @functools.wraps(bwd)
    def wrapper(ctx: FunctionCtx, *grads: Tensor) -> Any:
        if torch.is_grad_enabled():
            raise RuntimeError(
                f"{type(ctx).__name__[:-len('Backward')]} has a hand-written, first-order-only backward: "
                "create_graph=True (double backward, gradient penalty, Hessian-vector product) is not supported "
                "and would silently drop the second-order terms. Use models.custom_layers.autograd_reference(model), "
                "the same layers with autograd's backward, for second-order use.")
        with torch.autocast(device_type=ctx.autocast_device, enabled=False):  # type: ignore[attr-defined]
            return bwd(ctx, *grads)

    return wrapper


# --------------------------------------------------------------------------- #
# Hand-written backward or autograd of the same forward
# --------------------------------------------------------------------------- #
class AutogradSwitch:
    """Mixin of every layer with a hand-written backward.

    ``use_autograd = False`` (default): the layer calls its ``autograd.Function``
    (hand-written backward).  ``True``: it runs the *same* pure forward function
    under autograd, which derives the backward itself; that is the reference the
    tests and the speed study compare against (see
    :func:`models.custom_layers.autograd_reference`).
    """

    use_autograd: bool = False

    def _run(self, function: Type[torch.autograd.Function], fwd: Callable[..., Any], *args: Any) -> Tensor:
        if self.use_autograd:
            out = run_fp32(fwd, *args)
            return out if isinstance(out, Tensor) else out[0]
        return function.apply(*args)


# --------------------------------------------------------------------------- #
# Argument validation: one clear ValueError at construction, not a failure deep inside
# --------------------------------------------------------------------------- #
def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def positive_int(layer: str, name: str, value: Any) -> int:
    if not _is_int(value) or value < 1:
        raise ValueError(f"{layer}: {name} must be a positive integer, got {value!r}")
    return int(value)


def int_pair(layer: str, name: str, value: Any, minimum: int) -> Tuple[int, int]:
    """An int or a pair of ints, each >= ``minimum``, as a pair (the ``_pair`` convention of torch.nn)."""
    pair = (value, value) if _is_int(value) else value
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(_is_int(v) and v >= minimum for v in pair)):
        raise ValueError(f"{layer}: {name} must be an integer >= {minimum} or a pair of them, got {value!r}")
    return int(pair[0]), int(pair[1])


def finite_float(layer: str, name: str, value: Any, positive: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if not math.isfinite(v) or (positive and v <= 0):
        raise ValueError(f"{layer}: {name} must be a finite number{' > 0' if positive else ''}, got {value!r}")
    return v


# --------------------------------------------------------------------------- #
# Input checks and small helpers
# --------------------------------------------------------------------------- #
def check_4d(x: Tensor, name: str, channels: Optional[int] = None) -> None:
    if x.dim() != 4:
        raise ValueError(f"{name} expects a 4-D input N x C x H x W, got shape {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{name} expects {channels} input channels, got shape {tuple(x.shape)}")


def check_window(x: Tensor, kernel_size: Tuple[int, int], name: str) -> None:
    if x.shape[2] < kernel_size[0] or x.shape[3] < kernel_size[1]:
        raise ValueError(f"{name}: the {kernel_size[0]}x{kernel_size[1]} window does not fit the "
                         f"{x.shape[2]}x{x.shape[3]} input (shape {tuple(x.shape)})")


def avg_pool2d_adjoint(grad_out: Tensor, x: Tensor, kernel_size: Tuple[int, int], stride: Tuple[int, int]) -> Tensor:
    """Adjoint (transpose) of ``F.avg_pool2d(x, kernel_size, stride)`` (padding 0, floor mode).

    Average pooling is linear, so its backward is its adjoint: every input pixel
    receives ``grad / (kh * kw)`` from each window it belongs to.  The aten kernel
    implements exactly that; ``x`` only provides the shape and memory format.
    """
    return torch.ops.aten.avg_pool2d_backward(grad_out, x, list(kernel_size), list(stride), [0, 0], False, True, None)


def channel_view(t: Tensor) -> Tensor:
    """Reshape a per-channel vector (C,) to (1, C, 1, 1) for broadcasting against N x C x H x W."""
    return t.view(1, -1, 1, 1)
