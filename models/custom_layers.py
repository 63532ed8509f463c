"""Custom CNN layers with hand-written backward passes.

Every layer is a :class:`torch.autograd.Function` whose ``backward`` is derived
by hand (no autograd of the forward inside ``backward``), wrapped in a small
:class:`torch.nn.Module` that owns the parameters.  Layout follows timm
``layers/``: one focused module per concept, docstrings give the shape contract.

Layers
    * :class:`CustomConv2d`     conv2d + optional Weight Standardization + per-channel gate
    * :class:`ChannelAttention` squeeze-and-excitation channel attention
    * :class:`SpatialAttention` CBAM spatial attention
    * :class:`CBAM`             channel attention followed by spatial attention
    * :class:`Swish`            x * sigmoid(beta * x), beta learnable or fixed
    * :class:`GeMPool2d`        generalised-mean pooling, p learnable or fixed
    * :class:`MixedPool2d`      learnable mix of max and average pooling

Common conventions
    * Inputs are ``N x C x H x W`` (any strides: contiguous, channels_last,
      transposed or sliced views all work).
    * float32 and float64 are supported.  Under ``torch.autocast`` every
      Function runs as an *fp32 island* (see :func:`_fp32_forward`).
    * ``backward`` is ``@once_differentiable``: double backward (e.g. gradient
      penalties) is not supported and raises instead of silently being wrong.
    * Only the tensors ``backward`` actually needs are saved, and gradients that
      ``ctx.needs_input_grad`` marks as unneeded are neither saved for nor computed.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx, once_differentiable
from torch.nn import init
from torch.nn.modules.utils import _pair

__all__ = [
    "CustomConv2d",
    "CustomConv2dFunction",
    "ChannelAttention",
    "ChannelAttentionFunction",
    "SpatialAttention",
    "SpatialAttentionFunction",
    "CBAM",
    "Swish",
    "SwishFunction",
    "GeMPool2d",
    "GeMPoolFunction",
    "MixedPool2d",
    "MixedPoolFunction",
]

_size_2_t = Union[int, Tuple[int, int]]
_Grads = Tuple[Optional[Tensor], ...]


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


def _fp32_forward(fwd: Callable[..., Any]) -> Callable[..., Any]:
    """If autocast is on for the inputs' device, cast them to fp32 and run with autocast off."""

    @functools.wraps(fwd)
    def wrapper(ctx: FunctionCtx, *args: Any) -> Any:
        device_type = _device_type(args)
        ctx.autocast_device = device_type  # type: ignore[attr-defined]
        if not torch.is_autocast_enabled(device_type):
            return fwd(ctx, *args)
        with torch.autocast(device_type=device_type, enabled=False):
            return fwd(ctx, *(_to_fp32(a) for a in args))

    return wrapper


def _fp32_backward(bwd: Callable[..., Any]) -> Callable[..., Any]:
    """Run backward with autocast off (it may be on if ``.backward()`` is called inside the context)."""

    @functools.wraps(bwd)
    def wrapper(ctx: FunctionCtx, *grads: Tensor) -> Any:
        with torch.autocast(device_type=ctx.autocast_device, enabled=False):  # type: ignore[attr-defined]
            return bwd(ctx, *grads)

    return wrapper


# --------------------------------------------------------------------------- #
# Shared helpers
# --------------------------------------------------------------------------- #
def _check_4d(x: Tensor, name: str) -> None:
    if x.dim() != 4:
        raise ValueError(f"{name} expects a 4-D input N x C x H x W, got shape {tuple(x.shape)}")


def _avg_pool2d_adjoint(grad_out: Tensor, x: Tensor, kernel_size: Tuple[int, int], stride: Tuple[int, int]) -> Tensor:
    """Adjoint (transpose) of ``F.avg_pool2d(x, kernel_size, stride)`` (padding 0, floor mode).

    Average pooling is linear, so its backward is its adjoint: every input pixel
    receives ``grad / (kh * kw)`` from each window it belongs to.  The aten kernel
    implements exactly that; ``x`` only provides the shape and memory format.
    """
    return torch.ops.aten.avg_pool2d_backward(grad_out, x, list(kernel_size), list(stride), [0, 0], False, True, None)


def _channel_view(t: Tensor) -> Tensor:
    """Reshape a per-channel vector (C,) to (1, C, 1, 1) for broadcasting against N x C x H x W."""
    return t.view(1, -1, 1, 1)


# --------------------------------------------------------------------------- #
# 1. CustomConv2d
# --------------------------------------------------------------------------- #
class CustomConv2dFunction(torch.autograd.Function):
    r"""Conv2d with optional Weight Standardization and per-output-channel gate (groups=1).

    Forward (``o`` = output channel, ``n = C_in * kh * kw``)::

        W_hat[o] = (W[o] - mean(W[o])) * rstd[o],  rstd[o] = 1 / sqrt(var(W[o]) + eps)   (WS; var biased)
        W_hat    = W                                                                     (no WS)
        y0       = conv2d(x, W_hat)
        y        = g[o] * y0 + b[o]                   (g == 1 without gate, b == 0 without bias)

    Backward, with ``G = dL/dy``::

        dL/db     = sum_{n,h,w} G
        dL/dg     = sum_{n,h,w} G * y0
        G0        = g * G                                        (= dL/dy0)
        dL/dx     = conv2d_input(G0, W_hat)                      (transposed convolution)
        dL/dW_hat = conv2d_weight(x, G0)                         (correlation of x with G0)
        dL/dW[o]  = rstd[o] * (D - mean(D) - W_hat[o] * mean(D * W_hat[o])),  D = dL/dW_hat[o]   (WS)
        dL/dW     = dL/dW_hat                                    (no WS)

    The WS rule is the LayerNorm backward without affine: the two mean terms
    project out the directions along which standardisation is invariant
    (shifting W[o], and scaling it).

    ``apply(x, weight, bias, gate, stride, padding, dilation, standardize, eps)``;
    ``bias`` and ``gate`` may be ``None``.
    """

    @staticmethod
    @_fp32_forward
    def forward(
        ctx: FunctionCtx,
        x: Tensor,
        weight: Tensor,
        bias: Optional[Tensor],
        gate: Optional[Tensor],
        stride: Tuple[int, int],
        padding: Tuple[int, int],
        dilation: Tuple[int, int],
        standardize: bool,
        eps: float,
    ) -> Tensor:
        need_x, need_w, _, need_g = ctx.needs_input_grad[:4]

        rstd: Optional[Tensor] = None
        if standardize:
            w_flat = weight.reshape(weight.shape[0], -1)
            var, mean = torch.var_mean(w_flat, dim=1, correction=0, keepdim=True)
            rstd = torch.rsqrt(var + eps)
            w_hat = ((w_flat - mean) * rstd).view_as(weight)
        else:
            w_hat = weight

        if gate is None:
            # Fast path: bias folded into the conv call, y0 is never needed.
            y0: Optional[Tensor] = None
            y = F.conv2d(x, w_hat, bias, stride, padding, dilation)
        else:
            y0 = F.conv2d(x, w_hat, None, stride, padding, dilation)
            y = y0 * _channel_view(gate)
            if bias is not None:
                y = y + _channel_view(bias)

        ctx.conv_args = (stride, padding, dilation)  # type: ignore[attr-defined]
        ctx.x_shape = x.shape  # type: ignore[attr-defined]
        ctx.w_shape = weight.shape  # type: ignore[attr-defined]
        ctx.standardize = standardize  # type: ignore[attr-defined]
        ctx.save_for_backward(
            x if need_w else None,  # only dL/dW correlates with x
            w_hat if (need_x or need_w) else None,  # dL/dx uses W_hat; the WS backward uses it too
            rstd if need_w else None,
            y0 if need_g else None,  # y0 only enters dL/dg
            gate,  # (C_out,) - tiny, needed for G0
        )
        return y

    @staticmethod
    @once_differentiable
    @_fp32_backward
    def backward(ctx: FunctionCtx, grad_y: Tensor) -> _Grads:
        x, w_hat, rstd, y0, gate = ctx.saved_tensors  # type: ignore[attr-defined]
        need_x, need_w, need_b, need_g = ctx.needs_input_grad[:4]
        stride, padding, dilation = ctx.conv_args  # type: ignore[attr-defined]
        grad_x = grad_w = grad_b = grad_g = None

        if need_b:
            grad_b = grad_y.sum(dim=(0, 2, 3))
        if need_g:
            grad_g = (grad_y * y0).sum(dim=(0, 2, 3))

        if need_x or need_w:
            # Chain rule through the gate: dL/dy0 = g * dL/dy.
            grad_y0 = grad_y if gate is None else grad_y * _channel_view(gate)
            if need_x:
                x_shape = ctx.x_shape  # type: ignore[attr-defined]
                grad_x = torch.nn.grad.conv2d_input(x_shape, w_hat, grad_y0, stride, padding, dilation)
            if need_w:
                w_shape = ctx.w_shape  # type: ignore[attr-defined]
                grad_w_hat = torch.nn.grad.conv2d_weight(x, w_shape, grad_y0, stride, padding, dilation)
                if ctx.standardize:  # type: ignore[attr-defined]
                    d = grad_w_hat.reshape(grad_w_hat.shape[0], -1)
                    wh = w_hat.reshape(w_hat.shape[0], -1)
                    grad_w = rstd * (d - d.mean(dim=1, keepdim=True) - wh * (d * wh).mean(dim=1, keepdim=True))
                    grad_w = grad_w.view(w_shape)
                else:
                    grad_w = grad_w_hat

        return grad_x, grad_w, grad_b, grad_g, None, None, None, None, None


class CustomConv2d(nn.Module):
    """2-D convolution with optional Weight Standardization and a learnable output gate.

    ``y = g * conv2d(x, WS(W)) + b``.  With ``weight_standardization=False`` and
    ``channel_gate=False`` this is numerically ``nn.Conv2d`` (same parameter
    shapes, same initialisation scheme and RNG consumption, same output and
    gradients).

    Shape:
        x: ``(N, in_channels, H, W)`` -> y: ``(N, out_channels, H_out, W_out)`` with
        ``H_out = floor((H + 2 * padding - dilation * (kernel - 1) - 1) / stride) + 1``
        (same as ``nn.Conv2d``).

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, bias:
            as in ``nn.Conv2d``. ``padding`` must be int or pair (no 'same'/'valid'),
            zero padding only, ``groups=1`` only.
        weight_standardization: standardise each output filter over
            ``in_channels * kh * kw`` before convolving (Qiao et al. 2019).
        channel_gate: learnable per-output-channel multiplier ``g`` (init 1).
        eps: added to the (biased) filter variance in WS.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: _size_2_t,
        stride: _size_2_t = 1,
        padding: _size_2_t = 0,
        dilation: _size_2_t = 1,
        bias: bool = True,
        weight_standardization: bool = False,
        channel_gate: bool = False,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if isinstance(padding, str):
            raise ValueError("CustomConv2d supports integer padding only (no 'same'/'valid')")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size: Tuple[int, int] = _pair(kernel_size)
        self.stride: Tuple[int, int] = _pair(stride)
        self.padding: Tuple[int, int] = _pair(padding)
        self.dilation: Tuple[int, int] = _pair(dilation)
        self.weight_standardization = weight_standardization
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel_size))
        self.bias: Optional[nn.Parameter] = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.gate: Optional[nn.Parameter] = nn.Parameter(torch.empty(out_channels)) if channel_gate else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Identical to nn.Conv2d.reset_parameters (same RNG draws in the same
        # order), so a seeded CustomConv2d with options off equals a seeded nn.Conv2d.
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in, _ = init._calculate_fan_in_and_fan_out(self.weight)
            if fan_in != 0:
                bound = 1 / math.sqrt(fan_in)
                init.uniform_(self.bias, -bound, bound)
        if self.gate is not None:
            init.ones_(self.gate)  # start as the identity gate (draws no RNG)

    def forward(self, x: Tensor) -> Tensor:
        _check_4d(x, "CustomConv2d")
        return CustomConv2dFunction.apply(
            x, self.weight, self.bias, self.gate, self.stride, self.padding, self.dilation,
            self.weight_standardization, self.eps,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, bias={self.bias is not None}, "
            f"ws={self.weight_standardization}, gate={self.gate is not None}"
        )


# --------------------------------------------------------------------------- #
# 2. Attention: squeeze-and-excitation, CBAM spatial attention, CBAM
# --------------------------------------------------------------------------- #
class ChannelAttentionFunction(torch.autograd.Function):
    r"""Squeeze-and-excitation channel attention.

    Forward (``s, h, a, z, w`` are ``N x C``-ish matrices)::

        s = mean_{h,w} x                        (N, C)     squeeze
        h = s W1^T + b1,  a = relu(h)           (N, Cr)
        z = a W2^T + b2,  w = sigmoid(z)        (N, C)     excitation
        y = x * w[:, :, None, None]

    Backward, with ``G = dL/dy``::

        dL/dw  = sum_{h,w} G * x
        dL/dz  = dL/dw * w * (1 - w)
        dL/dW2 = dL/dz^T a,   dL/db2 = sum_n dL/dz,   dL/da = dL/dz W2
        dL/dh  = dL/da * [h > 0]
        dL/dW1 = dL/dh^T s,   dL/db1 = sum_n dL/dh,   dL/ds = dL/dh W1
        dL/dx  = G * w + dL/ds / (H * W)          (direct path + path through the squeeze)

    ``apply(x, w1, b1, w2, b2)`` with ``w1: (Cr, C)``, ``w2: (C, Cr)``.
    """

    @staticmethod
    @_fp32_forward
    def forward(ctx: FunctionCtx, x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
        s = x.mean(dim=(2, 3))
        h = F.linear(s, w1, b1)
        z = F.linear(F.relu(h), w2, b2)
        w = torch.sigmoid(z)
        # All saved tensors except x are (N, C) / (N, Cr) / weights: tiny.
        # relu(h) is recomputed in backward rather than saved.
        ctx.save_for_backward(x, s, h, w, w1, w2)
        return x * w[:, :, None, None]

    @staticmethod
    @once_differentiable
    @_fp32_backward
    def backward(ctx: FunctionCtx, grad_y: Tensor) -> _Grads:
        x, s, h, w, w1, w2 = ctx.saved_tensors  # type: ignore[attr-defined]
        need_x, need_w1, need_b1, need_w2, need_b2 = ctx.needs_input_grad[:5]
        grad_x = grad_w1 = grad_b1 = grad_w2 = grad_b2 = None

        grad_z = (grad_y * x).sum(dim=(2, 3)) * w * (1 - w)  # sigmoid' = w (1 - w)
        if need_w2:
            grad_w2 = grad_z.t() @ F.relu(h)
        if need_b2:
            grad_b2 = grad_z.sum(0)
        if need_x or need_w1 or need_b1:
            grad_h = (grad_z @ w2) * (h > 0)  # relu' = 1[h > 0]
            if need_w1:
                grad_w1 = grad_h.t() @ s
            if need_b1:
                grad_b1 = grad_h.sum(0)
            if need_x:
                grad_s = grad_h @ w1
                hw = x.shape[2] * x.shape[3]
                grad_x = grad_y * w[:, :, None, None] + (grad_s / hw)[:, :, None, None]
        return grad_x, grad_w1, grad_b1, grad_w2, grad_b2


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation channel attention (Hu et al. 2018).

    ``y = x * sigmoid(FC2(relu(FC1(avgpool(x)))))``, one weight per (sample, channel).

    Shape:
        x: ``(N, C, H, W)`` -> y: ``(N, C, H, W)``.

    Args:
        channels: C.
        reduction: hidden width is ``max(1, channels // reduction)``.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.channels = channels
        self.reduction = reduction
        self.hidden = max(1, channels // reduction)
        self.fc1_weight = nn.Parameter(torch.empty(self.hidden, channels))
        self.fc1_bias = nn.Parameter(torch.empty(self.hidden))
        self.fc2_weight = nn.Parameter(torch.empty(channels, self.hidden))
        self.fc2_bias = nn.Parameter(torch.empty(channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Linear's scheme for both FC layers.
        for w, b in ((self.fc1_weight, self.fc1_bias), (self.fc2_weight, self.fc2_bias)):
            init.kaiming_uniform_(w, a=math.sqrt(5))
            bound = 1 / math.sqrt(w.shape[1])
            init.uniform_(b, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        _check_4d(x, "ChannelAttention")
        return ChannelAttentionFunction.apply(x, self.fc1_weight, self.fc1_bias, self.fc2_weight, self.fc2_bias)

    def extra_repr(self) -> str:
        return f"{self.channels}, reduction={self.reduction}, hidden={self.hidden}"


class SpatialAttentionFunction(torch.autograd.Function):
    r"""CBAM spatial attention.

    Forward (``p = k // 2``)::

        m = cat([mean_c x, max_c x], dim=1)          (N, 2, H, W)
        z = conv2d(m, Wc, bc, padding=p)              (N, 1, H, W)
        s = sigmoid(z)
        y = x * s                                     (s broadcast over channels)

    Backward, with ``G = dL/dy``::

        dL/ds  = sum_c G * x
        dL/dz  = dL/ds * s * (1 - s)
        dL/dWc = conv2d_weight(m, dL/dz),   dL/dbc = sum dL/dz
        dL/dm  = conv2d_input(dL/dz, Wc)
        dL/dx  = G * s + dL/dm[:, 0] / C  +  onehot(argmax_c x) * dL/dm[:, 1]

    The max is routed to the argmax channel only (same sub-gradient PyTorch
    uses for ``max(dim)``; ties go to the index ``torch.max`` returns).

    ``apply(x, weight, bias, padding)`` with ``weight: (1, 2, k, k)``, ``bias: (1,)``.
    """

    @staticmethod
    @_fp32_forward
    def forward(ctx: FunctionCtx, x: Tensor, weight: Tensor, bias: Tensor, padding: int) -> Tensor:
        avg = x.mean(dim=1, keepdim=True)
        mx, idx = x.max(dim=1, keepdim=True)
        m = torch.cat([avg, mx], dim=1)
        s = torch.sigmoid(F.conv2d(m, weight, bias, padding=padding))
        ctx.padding = padding  # type: ignore[attr-defined]
        # x: for dL/ds; m: for dL/dWc (recomputing it would cost a pass over x);
        # idx: argmax routing; s: sigmoid' and the direct path.
        ctx.save_for_backward(x, m, idx, s, weight)
        return x * s

    @staticmethod
    @once_differentiable
    @_fp32_backward
    def backward(ctx: FunctionCtx, grad_y: Tensor) -> _Grads:
        x, m, idx, s, weight = ctx.saved_tensors  # type: ignore[attr-defined]
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        pad = ctx.padding  # type: ignore[attr-defined]
        grad_x = grad_w = grad_b = None

        grad_z = (grad_y * x).sum(dim=1, keepdim=True) * s * (1 - s)
        if need_w:
            grad_w = torch.nn.grad.conv2d_weight(m, weight.shape, grad_z, padding=pad)
        if need_b:
            grad_b = grad_z.sum().reshape(1)
        if need_x:
            grad_m = torch.nn.grad.conv2d_input(m.shape, weight, grad_z, padding=pad)
            # direct path + mean path (each channel gets 1/C of the mean's grad)
            grad_x = grad_y * s + grad_m[:, 0:1] / x.shape[1]
            # max path: only the argmax channel receives the max's grad
            grad_x = grad_x.scatter_add(1, idx, grad_m[:, 1:2])
        return grad_x, grad_w, grad_b, None


class SpatialAttention(nn.Module):
    """CBAM spatial attention (Woo et al. 2018), one weight per (sample, pixel).

    ``y = x * sigmoid(conv_kxk([mean_c(x), max_c(x)]))``.  The conv has a bias
    (the paper follows it with BatchNorm instead; there is no BN here).

    Shape:
        x: ``(N, C, H, W)`` -> y: ``(N, C, H, W)``.

    Args:
        kernel_size: odd k; padding ``k // 2`` keeps H x W.
    """

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd to preserve H x W, got {kernel_size}")
        self.kernel_size = kernel_size
        self.weight = nn.Parameter(torch.empty(1, 2, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Conv2d's scheme.
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1 / math.sqrt(2 * self.kernel_size * self.kernel_size)
        init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        _check_4d(x, "SpatialAttention")
        return SpatialAttentionFunction.apply(x, self.weight, self.bias, self.kernel_size // 2)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"


class CBAM(nn.Module):
    """Convolutional Block Attention Module: channel attention, then spatial attention.

    Order as in the CBAM paper (channel first).  Either stage can be switched off
    to use the other alone.  Note: the channel stage here is SE (avg-pool only),
    as specified for this package; the paper's channel stage also adds a max-pool
    branch through the shared MLP.

    Shape:
        x: ``(N, C, H, W)`` -> y: ``(N, C, H, W)``.

    Args:
        channels: C.
        reduction: SE reduction ratio.
        kernel_size: spatial-attention kernel (odd).
        use_channel, use_spatial: enable each stage (at least one).
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 16,
        kernel_size: int = 7,
        use_channel: bool = True,
        use_spatial: bool = True,
    ) -> None:
        super().__init__()
        if not (use_channel or use_spatial):
            raise ValueError("CBAM needs use_channel or use_spatial (use nn.Identity for neither)")
        self.channel: Optional[ChannelAttention] = ChannelAttention(channels, reduction) if use_channel else None
        self.spatial: Optional[SpatialAttention] = SpatialAttention(kernel_size) if use_spatial else None

    def forward(self, x: Tensor) -> Tensor:
        if self.channel is not None:
            x = self.channel(x)
        if self.spatial is not None:
            x = self.spatial(x)
        return x

    def extra_repr(self) -> str:
        return f"use_channel={self.channel is not None}, use_spatial={self.spatial is not None}"


# --------------------------------------------------------------------------- #
# 3. Swish
# --------------------------------------------------------------------------- #
class SwishFunction(torch.autograd.Function):
    r"""Swish / SiLU with a scalar slope.

    Forward:  ``y = x * sigma(beta x)``, ``sigma`` = sigmoid.

    Backward, with ``G = dL/dy`` and ``sg = sigma(beta x)``::

        dL/dx    = G * sg * (1 + beta x (1 - sg))
        dL/dbeta = sum G * x^2 * sg * (1 - sg)

    Only ``x`` and ``beta`` are saved; ``sg`` is recomputed in backward (one
    sigmoid is cheaper than keeping an activation-sized tensor alive), as in
    timm's memory-efficient Swish.

    ``apply(x, beta)`` with ``beta`` a 0-dim tensor.
    """

    @staticmethod
    @_fp32_forward
    def forward(ctx: FunctionCtx, x: Tensor, beta: Tensor) -> Tensor:
        ctx.save_for_backward(x, beta)
        return x * torch.sigmoid(beta * x)

    @staticmethod
    @once_differentiable
    @_fp32_backward
    def backward(ctx: FunctionCtx, grad_y: Tensor) -> _Grads:
        x, beta = ctx.saved_tensors  # type: ignore[attr-defined]
        need_x, need_beta = ctx.needs_input_grad[:2]
        sg = torch.sigmoid(beta * x)
        grad_x = grad_beta = None
        if need_x:
            grad_x = grad_y * sg * (1 + beta * x * (1 - sg))
        if need_beta:
            grad_beta = (grad_y * x * x * sg * (1 - sg)).sum().reshape(beta.shape)
        return grad_x, grad_beta


class Swish(nn.Module):
    """Swish activation ``y = x * sigmoid(beta * x)`` (Ramachandran et al. 2017).

    ``beta=1`` is SiLU (``F.silu``).  With ``learnable=True`` beta is a scalar
    ``nn.Parameter``; otherwise a (non-trainable) buffer, so it still follows
    ``.to()`` / ``.double()`` and is saved in the state dict.

    Shape:
        any ``(*)`` -> same shape (works for 2-D and 4-D activations alike).
    """

    def __init__(self, beta: float = 1.0, learnable: bool = True) -> None:
        super().__init__()
        self.learnable = learnable
        beta_t = torch.tensor(float(beta))
        if learnable:
            self.beta = nn.Parameter(beta_t)
        else:
            self.register_buffer("beta", beta_t)

    def forward(self, x: Tensor) -> Tensor:
        return SwishFunction.apply(x, self.beta)

    def extra_repr(self) -> str:
        return f"beta={float(self.beta.detach()):.4g}, learnable={self.learnable}"


# --------------------------------------------------------------------------- #
# 4. Pooling: GeM and mixed max/avg
# --------------------------------------------------------------------------- #
class GeMPoolFunction(torch.autograd.Function):
    r"""Generalised-mean pooling (Radenovic et al. 2018).

    Forward (``P`` = average pool over a k x k window, or over H x W if global)::

        xc = max(x, eps),  u = xc^p,  m = P(u),  y = m^(1/p)

    Backward, with ``G = dL/dy``, ``P^T`` the adjoint of ``P`` (spreads each
    window's grad uniformly over its k*k inputs, summing overlaps)::

        Gm     = G * y / (p m)                              (= dL/dm)
        Gu     = P^T(Gm)                                    (= dL/du)
        dL/dx  = Gu * p * u / xc * [x >= eps]               (d xc^p / dxc = p xc^(p-1))
        dL/dp  = sum Gu * u * log(xc)  -  sum G * y * log(m) / p^2

    The ``dL/dp`` form uses ``d m/dp = P(u log xc)`` and ``sum Gm * P(v) = sum P^T(Gm) * v``.

    ``apply(x, p, kernel_size_or_None, stride, eps)`` with ``p`` a 0-dim tensor.
    """

    @staticmethod
    @_fp32_forward
    def forward(
        ctx: FunctionCtx,
        x: Tensor,
        p: Tensor,
        kernel_size: Optional[Tuple[int, int]],
        stride: Optional[Tuple[int, int]],
        eps: float,
    ) -> Tensor:
        u = x.clamp(min=eps).pow(p)
        m = u.mean(dim=(2, 3), keepdim=True) if kernel_size is None else F.avg_pool2d(u, kernel_size, stride)
        y = m.pow(1.0 / p)
        ctx.pool = (kernel_size, stride, eps)  # type: ignore[attr-defined]
        # x (not u): xc and u are recomputed in backward, so only one
        # input-sized tensor is kept alive.  m and y are pooled-size.
        ctx.save_for_backward(x, p, m, y)
        return y

    @staticmethod
    @once_differentiable
    @_fp32_backward
    def backward(ctx: FunctionCtx, grad_y: Tensor) -> _Grads:
        x, p, m, y = ctx.saved_tensors  # type: ignore[attr-defined]
        need_x, need_p = ctx.needs_input_grad[:2]
        kernel_size, stride, eps = ctx.pool  # type: ignore[attr-defined]
        grad_x = grad_p = None

        xc = x.clamp(min=eps)
        u = xc.pow(p)
        grad_m = grad_y * y / (p * m)
        if kernel_size is None:
            grad_u = grad_m.expand_as(x) / (x.shape[2] * x.shape[3])
        else:
            grad_u = _avg_pool2d_adjoint(grad_m, x, kernel_size, stride)
        if need_x:
            # clamp passes the gradient only where it did not clip (x >= eps), like torch.clamp
            grad_x = torch.where(x >= eps, grad_u * p * u / xc, 0.0)
        if need_p:
            grad_p = (grad_u * u * torch.log(xc)).sum() - (grad_y * y * torch.log(m)).sum() / (p * p)
            grad_p = grad_p.reshape(p.shape)
        return grad_x, grad_p, None, None, None


class GeMPool2d(nn.Module):
    """Generalised-mean pooling ``y = avg_pool(max(x, eps)^p)^(1/p)``.

    ``p=1`` is average pooling (for inputs >= eps), ``p -> inf`` tends to max
    pooling.  ``p`` is a learnable scalar or a fixed buffer.

    Shape:
        global (``kernel_size=None``): ``(N, C, H, W)`` -> ``(N, C, 1, 1)``.
        windowed: ``(N, C, H, W)`` -> ``(N, C, H_out, W_out)`` exactly as
        ``F.avg_pool2d(x, kernel_size, stride)`` (no padding, floor mode).

    Args:
        kernel_size: window, or ``None`` for global pooling.
        stride: defaults to ``kernel_size``.
        p: initial exponent (> 0).
        learnable: make ``p`` an ``nn.Parameter``.
        eps: clamp floor; keeps ``xc^p`` and ``log(xc)`` finite.  In fp32,
            ``eps^p`` underflows to 0 once ``p > ~6`` (for eps=1e-6), so an
            all-clamped window then gives ``y = 0`` and non-finite ``dL/dp``.
    """

    def __init__(
        self,
        kernel_size: Optional[_size_2_t] = None,
        stride: Optional[_size_2_t] = None,
        p: float = 3.0,
        learnable: bool = True,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if p <= 0:
            raise ValueError(f"p must be > 0, got {p}")
        self.kernel_size: Optional[Tuple[int, int]] = None if kernel_size is None else _pair(kernel_size)
        if self.kernel_size is None:
            self.stride: Optional[Tuple[int, int]] = None
        else:
            self.stride = self.kernel_size if stride is None else _pair(stride)
        self.learnable = learnable
        self.eps = eps
        p_t = torch.tensor(float(p))
        if learnable:
            self.p = nn.Parameter(p_t)
        else:
            self.register_buffer("p", p_t)

    def forward(self, x: Tensor) -> Tensor:
        _check_4d(x, "GeMPool2d")
        return GeMPoolFunction.apply(x, self.p, self.kernel_size, self.stride, self.eps)

    def extra_repr(self) -> str:
        k = "global" if self.kernel_size is None else f"kernel_size={self.kernel_size}, stride={self.stride}"
        return f"{k}, p={float(self.p.detach()):.4g}, learnable={self.learnable}, eps={self.eps}"


class MixedPoolFunction(torch.autograd.Function):
    r"""Learnable mix of max and average pooling (Lee et al. 2016, "mixed" pooling).

    Forward (``alpha = sigmoid(a)``, no padding, floor mode)::

        y = alpha * maxpool(x) + (1 - alpha) * avgpool(x)

    Backward, with ``G = dL/dy``::

        dL/dx = scatter_add(argmax indices, alpha * G) + AvgPool^T((1 - alpha) * G)
        dL/da = alpha (1 - alpha) * sum G * (maxpool(x) - avgpool(x))

    The max-pool part uses scatter_add on the flat H*W indices from
    ``F.max_pool2d(..., return_indices=True)`` rather than ``F.max_unpool2d``:
    unpool *assigns*, so with overlapping windows (stride < kernel) an input that
    wins two windows would get only one of the two gradients.

    ``apply(x, a, kernel_size, stride)`` with ``a`` a 0-dim tensor.
    """

    @staticmethod
    @_fp32_forward
    def forward(ctx: FunctionCtx, x: Tensor, a: Tensor, kernel_size: Tuple[int, int], stride: Tuple[int, int]) -> Tensor:
        need_x, need_a = ctx.needs_input_grad[:2]
        mx, idx = F.max_pool2d(x, kernel_size, stride, return_indices=True)
        av = F.avg_pool2d(x, kernel_size, stride)
        alpha = torch.sigmoid(a)
        ctx.pool = (kernel_size, stride)  # type: ignore[attr-defined]
        ctx.save_for_backward(
            x if need_x else None,  # shape / memory format for the avg-pool adjoint
            idx if need_x else None,
            (mx - av) if need_a else None,  # pooled-size; the only thing dL/da needs
            a,
        )
        return torch.lerp(av, mx, alpha)  # av + alpha (mx - av)

    @staticmethod
    @once_differentiable
    @_fp32_backward
    def backward(ctx: FunctionCtx, grad_y: Tensor) -> _Grads:
        x, idx, diff, a = ctx.saved_tensors  # type: ignore[attr-defined]
        need_x, need_a = ctx.needs_input_grad[:2]
        kernel_size, stride = ctx.pool  # type: ignore[attr-defined]
        alpha = torch.sigmoid(a)
        grad_x = grad_a = None
        if need_x:
            n, c, h, w = x.shape
            grad_max = torch.zeros(n, c, h * w, dtype=grad_y.dtype, device=grad_y.device)
            grad_max.scatter_add_(2, idx.reshape(n, c, -1), (alpha * grad_y).reshape(n, c, -1))
            grad_x = grad_max.view(n, c, h, w) + _avg_pool2d_adjoint((1 - alpha) * grad_y, x, kernel_size, stride)
        if need_a:
            grad_a = ((grad_y * diff).sum() * alpha * (1 - alpha)).reshape(a.shape)
        return grad_x, grad_a, None, None


class MixedPool2d(nn.Module):
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
    """

    def __init__(self, kernel_size: _size_2_t, stride: Optional[_size_2_t] = None, alpha_init: float = 0.5) -> None:
        super().__init__()
        if not 0.0 < alpha_init < 1.0:
            raise ValueError(f"alpha_init must be in (0, 1), got {alpha_init}")
        self.kernel_size: Tuple[int, int] = _pair(kernel_size)
        self.stride: Tuple[int, int] = self.kernel_size if stride is None else _pair(stride)
        self.a = nn.Parameter(torch.tensor(math.log(alpha_init / (1.0 - alpha_init))))

    @property
    def alpha(self) -> Tensor:
        """Current mixing weight of the max-pool branch, ``sigmoid(a)``."""
        return torch.sigmoid(self.a.detach())

    def forward(self, x: Tensor) -> Tensor:
        _check_4d(x, "MixedPool2d")
        return MixedPoolFunction.apply(x, self.a, self.kernel_size, self.stride)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, alpha={float(self.alpha):.4g}"
