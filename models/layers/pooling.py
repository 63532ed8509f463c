"""Pooling: generalised-mean (GeM) and a learnable mix of max and average pooling."""

from __future__ import annotations

import math
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx

from models.layers._common import (AutogradSwitch, Grads, avg_pool2d_adjoint, check_4d, check_window, finite_float,
                                   first_order_backward, fp32_forward, int_pair, size_2_t)

__all__ = ["gem_pool_fwd", "gem_pool_bwd", "gem_exponent_fwd", "gem_exponent_bwd", "gem_exponent_inverse",
           "gem_pool_param_fwd", "GeMPoolFunction", "GeMPool2d",
           "mixed_pool_fwd", "mixed_pool_bwd", "MixedPoolFunction", "MixedPool2d"]


# --------------------------------------------------------------------------- #
# GeM
# --------------------------------------------------------------------------- #
class GeMForward(NamedTuple):
    y: Tensor       # pooled output
    m: Tensor       # pooled mean of (xc / M)^p, in [1 / window size, 1]
    scale: Tensor   # M: the maximum of xc over each window (pooled size)


def _window_slices(x: Tensor, kernel_size: Tuple[int, int], stride: Tuple[int, int]) -> List[Tuple[slice, slice]]:
    """For each offset (i, j) in the window, the strided slice of ``x`` holding that element of every window.

    ``x[..., sh, sw]`` has the pooled shape ``(N, C, H_out, W_out)`` (floor mode, no padding), and one
    slice addresses each input pixel at most once, so ``grad[..., sh, sw] += g`` is a scatter-add.
    """
    (kh, kw), (sh, sw) = kernel_size, stride
    h_out, w_out = (x.shape[2] - kh) // sh + 1, (x.shape[3] - kw) // sw + 1
    return [(slice(i, i + sh * (h_out - 1) + 1, sh), slice(j, j + sw * (w_out - 1) + 1, sw))
            for i in range(kh) for j in range(kw)]


def gem_pool_fwd(x: Tensor, p: Tensor, kernel_size: Optional[Tuple[int, int]], stride: Optional[Tuple[int, int]],
                 eps: float) -> GeMForward:
    r"""Generalised-mean pooling (Radenovic et al. 2018), ``p`` 0-dim, computed without under- or overflow.

    Over each window (k x k, or H x W if ``kernel_size`` is None; ``K`` elements)::

        xc = max(x, eps)
        y  = (mean_window xc^p)^(1/p)                              (the definition)
           = M * m^(1/p),  m = mean_window r^p,  r = xc / M,  M = max_window xc

    ``y`` is homogeneous of degree 1 in the inputs, so dividing by the window
    maximum ``M`` and multiplying back is exact, and ``M`` is a constant for
    every derivative (it is detached).  Why: in float32, ``xc^p`` under- or
    overflows already at p=10 for x=1e-5 or x=1e4; ``r^p`` lies in (0, 1] and
    its largest term is 1, so ``m`` lies in [1/K, 1] and only terms negligible
    next to the maximum can underflow.
    """
    xc = x.clamp(min=eps)
    if kernel_size is None:
        scale = xc.amax(dim=(2, 3), keepdim=True).detach()
        m = (xc / scale).pow(p).mean(dim=(2, 3), keepdim=True)
    else:
        assert stride is not None
        scale = F.max_pool2d(xc, kernel_size, stride).detach()
        total: Optional[Tensor] = None
        for sh, sw in _window_slices(x, kernel_size, stride):
            term = (xc[..., sh, sw] / scale).pow(p)
            total = term if total is None else total + term
        m = total / (kernel_size[0] * kernel_size[1])
    return GeMForward(scale * m.pow(1.0 / p), m, scale)


def gem_pool_bwd(grad_y: Tensor, x: Tensor, p: Tensor, m: Tensor, y: Tensor, scale: Tensor,
                 kernel_size: Optional[Tuple[int, int]], stride: Optional[Tuple[int, int]], eps: float,
                 needs: Sequence[bool]) -> Grads:
    r"""Backward of :func:`gem_pool_fwd`, with ``G = dL/dy``; returns ``(dL/dx, dL/dp)``.

    With ``u = r^p`` (per window and element) and ``M`` constant::

        Gm     = G * y / (p m)                                        (= dL/dm, y = M m^(1/p))
        Gu     = Gm / K                                               (= dL/du, each window's mean)
        dL/dx  = sum_{windows w containing x} Gu_w * p * u / xc * [x >= eps]    (du/dxc = p u / xc)
        dL/dp  = sum Gu * u * log(r)  -  sum G * y * log(m) / p^2

    ``dL/dp``: ``dm/dp = mean_window u log r`` and ``dy/dp`` at fixed ``m`` is
    ``-y log(m) / p^2``.  ``u log r`` is evaluated as ``xlogy(u, r)`` (0 where
    ``u`` underflowed).  ``xc``, ``r`` and ``u`` are recomputed from ``x``;
    windowed pooling loops over the ``K`` window offsets (pooled-size tensors).
    """
    need_x, need_p = needs
    grad_x: Optional[Tensor] = None
    grad_p_windows: Optional[Tensor] = None  # sum Gu * u * log(r)

    grad_m = grad_y * y / (p * m)
    if kernel_size is None:
        xc = x.clamp(min=eps)
        r = xc / scale
        u = r.pow(p)
        grad_u = grad_m / (x.shape[2] * x.shape[3])
        if need_x:
            # clamp passes the gradient only where it did not clip (x >= eps), like torch.clamp
            grad_x = torch.where(x >= eps, grad_u * p * u / xc, 0.0)
        if need_p:
            grad_p_windows = (grad_u * torch.xlogy(u, r)).sum()
    else:
        assert stride is not None
        grad_u = grad_m / (kernel_size[0] * kernel_size[1])
        if need_x:
            grad_x = torch.zeros_like(x)
        for sh, sw in _window_slices(x, kernel_size, stride):
            xs = x[..., sh, sw]
            xc = xs.clamp(min=eps)
            r = xc / scale
            u = r.pow(p)
            if grad_x is not None:
                grad_x[..., sh, sw] += torch.where(xs >= eps, grad_u * p * u / xc, 0.0)
            if need_p:
                term = (grad_u * torch.xlogy(u, r)).sum()
                grad_p_windows = term if grad_p_windows is None else grad_p_windows + term
    grad_p = None
    if need_p:
        assert grad_p_windows is not None
        grad_p = (grad_p_windows - (grad_y * y * torch.log(m)).sum() / (p * p)).reshape(p.shape)
    return grad_x, grad_p


# Learnable p is stored as p_raw with p = p_min + softplus(p_raw).  F.softplus is linear above
# its threshold (the documented default, 20; passed explicitly), and the backward mirrors that.
_SOFTPLUS_THRESHOLD = 20.0


def gem_exponent_fwd(p_param: Tensor, p_min: Optional[float]) -> Tensor:
    r"""The GeM exponent from its stored parameter: ``p = p_min + softplus(p_raw)``, or ``p_param`` itself if
    ``p_min`` is None (a fixed, unconstrained ``p``).  ``p > p_min`` for every finite ``p_raw``, and
    ``p >= p_min`` in floating point, however negative ``p_raw`` gets."""
    if p_min is None:
        return p_param
    return p_min + F.softplus(p_param, beta=1.0, threshold=_SOFTPLUS_THRESHOLD)


def gem_exponent_bwd(grad_p: Tensor, p_raw: Tensor) -> Tensor:
    r"""Backward of :func:`gem_exponent_fwd` (with ``p_min``): ``dL/dp_raw = dL/dp * sigmoid(p_raw)``
    (``softplus' = sigmoid``), and ``dL/dp`` above the threshold, where ``F.softplus`` returns ``p_raw``."""
    return grad_p * torch.where(p_raw > _SOFTPLUS_THRESHOLD, 1.0, torch.sigmoid(p_raw))


def gem_exponent_inverse(p: Union[float, Tensor], p_min: float) -> Tensor:
    r"""``p_raw`` with ``gem_exponent_fwd(p_raw, p_min) == p`` (``p > p_min``): ``log(expm1(p - p_min))``, as
    ``d + log(-expm1(-d))`` (no overflow for large ``d = p - p_min``)."""
    d = torch.as_tensor(p, dtype=torch.float64) - p_min
    if not bool((d > 0).all()):
        raise ValueError(f"GeMPool2d: a learnable p must be > p_min = {p_min}, got {p}")
    return torch.where(d > _SOFTPLUS_THRESHOLD, d, d + torch.log(-torch.expm1(-d)))


def gem_pool_param_fwd(x: Tensor, p_param: Tensor, p_min: Optional[float], kernel_size: Optional[Tuple[int, int]],
                       stride: Optional[Tuple[int, int]], eps: float) -> GeMForward:
    """:func:`gem_pool_fwd` at ``p = gem_exponent_fwd(p_param, p_min)``: the forward of :class:`GeMPoolFunction`."""
    return gem_pool_fwd(x, gem_exponent_fwd(p_param, p_min), kernel_size, stride, eps)


class GeMPoolFunction(torch.autograd.Function):
    """GeM with the backward of :func:`gem_pool_bwd` (and :func:`gem_exponent_bwd` through the softplus).

    ``apply(x, p_param, p_min, kernel_size_or_None, stride, eps)``: ``p_min=None`` means ``p_param`` is
    ``p`` itself; otherwise ``p = p_min + softplus(p_param)`` and the gradient returned is ``dL/dp_param``.
    """

    @staticmethod
    @fp32_forward
    def forward(ctx: FunctionCtx, x: Tensor, p_param: Tensor, p_min: Optional[float],
                kernel_size: Optional[Tuple[int, int]], stride: Optional[Tuple[int, int]], eps: float) -> Tensor:
        p = gem_exponent_fwd(p_param, p_min)
        out = gem_pool_fwd(x, p, kernel_size, stride, eps)
        ctx.pool = (kernel_size, stride, eps)  # type: ignore[attr-defined]
        ctx.p_min = p_min  # type: ignore[attr-defined]
        # x (not u): xc and u are recomputed in backward, so only one
        # input-sized tensor is kept alive.  m, y and the scale are pooled-size; p and p_param 0-dim.
        ctx.save_for_backward(x, p, out.m, out.y, out.scale, p_param)
        return out.y

    @staticmethod
    @first_order_backward
    def backward(ctx: FunctionCtx, grad_y: Tensor) -> Grads:
        *saved, p_param = ctx.saved_tensors  # type: ignore[attr-defined]
        grad_x, grad_p = gem_pool_bwd(grad_y, *saved, *ctx.pool,  # type: ignore[attr-defined]
                                      needs=ctx.needs_input_grad[:2])
        if grad_p is not None and ctx.p_min is not None:  # type: ignore[attr-defined]
            grad_p = gem_exponent_bwd(grad_p, p_param)
        return grad_x, grad_p, None, None, None, None


class GeMPool2d(AutogradSwitch, nn.Module):
    """Generalised-mean pooling ``y = avg_pool(max(x, eps)^p)^(1/p)``.

    ``p=1`` is average pooling (for inputs >= eps), ``p -> inf`` tends to max
    pooling.  ``p`` is learnable or a fixed buffer.

    A learnable ``p`` is kept valid during training by a reparameterisation: the parameter is
    ``p_raw`` and ``p = p_min + softplus(p_raw)``, so ``p >= p_min`` whatever the optimiser does
    (an unconstrained ``p`` could reach 0, where the output jumps to the window maximum and the
    gradients are NaN, or go negative).  The default floor ``p_min = 1`` keeps GeM between
    average pooling (``p = 1``) and max pooling; a smaller positive floor admits the means below the
    average.  The chain rule through the softplus is in the hand-written backward
    (:func:`gem_exponent_bwd`).  ``p_raw`` starts at the value giving ``p`` (3 by default).

    Attributes:
        p: the effective exponent, a detached 0-dim tensor (``p_min + softplus(p_raw)``, or the fixed
            value); read-only.  Its gradient lives in ``p_raw.grad``.
        p_raw: the learnable parameter (learnable ``p`` only).
        p_fixed: the buffer holding a fixed ``p`` (``learnable=False`` only).
        p_min: the floor of a learnable ``p`` (``None`` for a fixed one).

    Shape:
        global (``kernel_size=None``): ``(N, C, H, W)`` -> ``(N, C, 1, 1)``.
        windowed: ``(N, C, H, W)`` -> ``(N, C, H_out, W_out)`` exactly as
        ``F.avg_pool2d(x, kernel_size, stride)`` (no padding, floor mode).

    Args:
        kernel_size: window, or ``None`` for global pooling.
        stride: defaults to ``kernel_size``.
        p: initial exponent (finite, > 0; > ``p_min`` if learnable).
        learnable: learn ``p`` (as ``p_raw``, see above); otherwise ``p`` is a fixed buffer.
        eps: clamp floor (inputs below it count as ``eps`` and get no gradient), finite and > 0.
        p_min: floor of a learnable ``p`` (finite, > 0; ignored for a fixed ``p``).

    Raises:
        ValueError: a ``p``, ``eps`` or ``p_min`` that is not finite and > 0, a learnable ``p`` not
        above ``p_min``, a kernel size or stride that is not a positive integer (or pair), a
        ``stride`` without ``kernel_size``; in forward, an input that is not 4-D or smaller than
        the window.

    Numerics: each window is divided by its maximum before the power (see
    :func:`gem_pool_fwd`), so float32 output and gradients stay finite and
    accurate for p up to at least 20 over inputs from 1e-6 to 1e4
    (tests/test_custom_layers_reliability.py checks this against float64).

    State dicts of the former layout (one entry ``p``, the exponent itself) still load: the value
    is converted to ``p_raw`` (or ``p_fixed``).
    """

    def __init__(
        self,
        kernel_size: Optional[size_2_t] = None,
        stride: Optional[size_2_t] = None,
        p: float = 3.0,
        learnable: bool = True,
        eps: float = 1e-6,
        p_min: float = 1.0,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        p = finite_float(name, "p", p, positive=True)
        self.kernel_size: Optional[Tuple[int, int]] = None
        self.stride: Optional[Tuple[int, int]] = None
        if kernel_size is not None:
            self.kernel_size = int_pair(name, "kernel_size", kernel_size, 1)
            self.stride = self.kernel_size if stride is None else int_pair(name, "stride", stride, 1)
        elif stride is not None:
            raise ValueError(f"{name}: stride={stride!r} needs a kernel_size (global pooling has no stride)")
        self.learnable = learnable
        self.eps = finite_float(name, "eps", eps, positive=True)
        p_min = finite_float(name, "p_min", p_min, positive=True)
        self.p_min: Optional[float] = p_min if learnable else None
        if learnable:
            if not p > p_min:
                raise ValueError(f"{name}: a learnable p must be > p_min = {p_min} (p = p_min + softplus(p_raw)), "
                                 f"got p={p}; lower p_min or use learnable=False")
            self.p_raw = nn.Parameter(gem_exponent_inverse(p, p_min).to(torch.get_default_dtype()))
        else:
            self.register_buffer("p_fixed", torch.tensor(p))

    @property
    def p(self) -> Tensor:
        """The effective exponent, detached: ``p_min + softplus(p_raw)`` (learnable) or the fixed value."""
        if self.p_min is None:
            return self.p_fixed.detach()
        return gem_exponent_fwd(self.p_raw.detach(), self.p_min)

    def _p_param(self) -> Tensor:
        return self.p_fixed if self.p_min is None else self.p_raw

    def _load_from_state_dict(self, state_dict: Dict[str, Any], prefix: str, local_metadata: Dict[str, Any],
                              strict: bool, missing_keys: List[str], unexpected_keys: List[str],
                              error_msgs: List[str]) -> None:
        # The former layout stored the exponent itself as "p" (a Parameter or a buffer); convert it.
        legacy = state_dict.get(prefix + "p")
        own = prefix + ("p_fixed" if self.p_min is None else "p_raw")
        if isinstance(legacy, Tensor) and own not in state_dict:
            del state_dict[prefix + "p"]
            if self.p_min is None:
                state_dict[own] = legacy
            elif not bool((legacy > self.p_min).all()):
                error_msgs.append(f"{prefix}p = {float(legacy)} is not above this GeMPool2d's p_min = {self.p_min}: "
                                  "load it into GeMPool2d(p_min=...) with a lower floor, or learnable=False")
                return
            else:
                state_dict[own] = gem_exponent_inverse(legacy, self.p_min).to(legacy.dtype)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def forward(self, x: Tensor) -> Tensor:
        check_4d(x, "GeMPool2d")
        if self.kernel_size is not None:
            check_window(x, self.kernel_size, "GeMPool2d")
        return self._run(GeMPoolFunction, gem_pool_param_fwd, x, self._p_param(), self.p_min, self.kernel_size,
                         self.stride, self.eps)

    def extra_repr(self) -> str:
        k = "global" if self.kernel_size is None else f"kernel_size={self.kernel_size}, stride={self.stride}"
        floor = "" if self.p_min is None else f", p_min={self.p_min:.4g}"
        return f"{k}, p={float(self.p):.4g}, learnable={self.learnable}{floor}, eps={self.eps}"


# --------------------------------------------------------------------------- #
# Mixed max/avg pooling
# --------------------------------------------------------------------------- #
class MixedPoolForward(NamedTuple):
    y: Tensor     # pooled output
    idx: Tensor   # flat H*W argmax of each window (from max_pool2d)
    mx: Tensor    # max pool
    av: Tensor    # average pool


def mixed_pool_fwd(x: Tensor, a: Tensor, kernel_size: Tuple[int, int], stride: Tuple[int, int]) -> MixedPoolForward:
    r"""Learnable mix of max and average pooling (Lee et al. 2016, "mixed" pooling), ``a`` 0-dim.

    ``alpha = sigmoid(a)``, no padding, floor mode::

        y = alpha * maxpool(x) + (1 - alpha) * avgpool(x)
    """
    mx, idx = F.max_pool2d(x, kernel_size, stride, return_indices=True)
    av = F.avg_pool2d(x, kernel_size, stride)
    alpha = torch.sigmoid(a)
    return MixedPoolForward(torch.lerp(av, mx, alpha), idx, mx, av)  # av + alpha (mx - av)


def mixed_pool_bwd(grad_y: Tensor, x: Optional[Tensor], idx: Optional[Tensor], diff: Optional[Tensor], a: Tensor,
                   kernel_size: Tuple[int, int], stride: Tuple[int, int], needs: Sequence[bool]) -> Grads:
    r"""Backward of :func:`mixed_pool_fwd`, with ``G = dL/dy`` and ``diff = maxpool(x) - avgpool(x)``::

        dL/dx = scatter_add(argmax indices, alpha * G) + AvgPool^T((1 - alpha) * G)
        dL/da = alpha (1 - alpha) * sum G * diff

    The max-pool part uses scatter_add on the flat H*W indices from
    ``F.max_pool2d(..., return_indices=True)`` rather than ``F.max_unpool2d``:
    unpool *assigns*, so with overlapping windows (stride < kernel) an input that
    wins two windows would get only one of the two gradients.  ``x`` only gives
    the shape and memory format.
    """
    need_x, need_a = needs
    alpha = torch.sigmoid(a)
    grad_x = grad_a = None
    if need_x:
        n, c, h, w = x.shape
        grad_max = torch.zeros(n, c, h * w, dtype=grad_y.dtype, device=grad_y.device)
        # flatten(2), not reshape(n, c, -1): -1 is ambiguous for an empty batch (n = 0)
        grad_max.scatter_add_(2, idx.flatten(2), (alpha * grad_y).flatten(2))
        grad_x = grad_max.view(n, c, h, w) + avg_pool2d_adjoint((1 - alpha) * grad_y, x, kernel_size, stride)
    if need_a:
        grad_a = ((grad_y * diff).sum() * alpha * (1 - alpha)).reshape(a.shape)
    return grad_x, grad_a


class MixedPoolFunction(torch.autograd.Function):
    """Mixed pooling with the backward of :func:`mixed_pool_bwd`; ``apply(x, a, kernel_size, stride)``."""

    @staticmethod
    @fp32_forward
    def forward(ctx: FunctionCtx, x: Tensor, a: Tensor, kernel_size: Tuple[int, int],
                stride: Tuple[int, int]) -> Tensor:
        need_x, need_a = ctx.needs_input_grad[:2]
        out = mixed_pool_fwd(x, a, kernel_size, stride)
        ctx.pool = (kernel_size, stride)  # type: ignore[attr-defined]
        ctx.save_for_backward(
            x if need_x else None,  # shape / memory format for the avg-pool adjoint
            out.idx if need_x else None,
            (out.mx - out.av) if need_a else None,  # pooled-size; the only thing dL/da needs
            a,
        )
        return out.y

    @staticmethod
    @first_order_backward
    def backward(ctx: FunctionCtx, grad_y: Tensor) -> Grads:
        grads = mixed_pool_bwd(grad_y, *ctx.saved_tensors, *ctx.pool,  # type: ignore[attr-defined]
                               needs=ctx.needs_input_grad[:2])
        return (*grads, None, None)


class MixedPool2d(AutogradSwitch, nn.Module):
    """Mixed pooling ``y = sigmoid(a) * max_pool(x) + (1 - sigmoid(a)) * avg_pool(x)``.

    ``a`` is a learnable scalar logit; ``sigmoid(a) = 1`` gives max pooling and
    ``0`` gives average pooling.

    Shape:
        ``(N, C, H, W)`` -> ``(N, C, H_out, W_out)`` as ``F.max_pool2d(x, kernel_size, stride)``
        (no padding, floor mode).

    Args:
        kernel_size: window.
        stride: defaults to ``kernel_size``.
        alpha_init: initial mixing weight ``sigmoid(a)`` in (0, 1); ``a = logit(alpha_init)``.

    Raises:
        ValueError: a kernel size or stride that is not a positive integer (or pair), an
        ``alpha_init`` outside (0, 1); in forward, an input that is not 4-D or smaller than the window.
    """

    def __init__(self, kernel_size: size_2_t, stride: Optional[size_2_t] = None, alpha_init: float = 0.5) -> None:
        super().__init__()
        name = type(self).__name__
        alpha_init = finite_float(name, "alpha_init", alpha_init)
        if not 0.0 < alpha_init < 1.0:
            raise ValueError(f"{name}: alpha_init must be in (0, 1), got {alpha_init}")
        self.kernel_size: Tuple[int, int] = int_pair(name, "kernel_size", kernel_size, 1)
        self.stride: Tuple[int, int] = self.kernel_size if stride is None else int_pair(name, "stride", stride, 1)
        self.a = nn.Parameter(torch.tensor(math.log(alpha_init / (1.0 - alpha_init))))

    @property
    def alpha(self) -> Tensor:
        """Current mixing weight of the max-pool branch, ``sigmoid(a)``."""
        return torch.sigmoid(self.a.detach())

    def forward(self, x: Tensor) -> Tensor:
        check_4d(x, "MixedPool2d")
        check_window(x, self.kernel_size, "MixedPool2d")
        return self._run(MixedPoolFunction, mixed_pool_fwd, x, self.a, self.kernel_size, self.stride)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, alpha={float(self.alpha):.4g}"
