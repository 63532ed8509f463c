"""CustomConv2d: conv2d with optional Weight Standardization and a per-output-channel gate."""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx
from torch.nn import init

from models.layers._common import (AutogradSwitch, Grads, channel_view, check_4d, finite_float, first_order_backward,
                                   fp32_forward, int_pair, positive_int, size_2_t)

__all__ = ["conv2d_ws_fwd", "conv2d_ws_bwd", "CustomConv2dFunction", "CustomConv2d"]


class ConvForward(NamedTuple):
    y: Tensor                 # the output
    w_hat: Tensor             # the weight actually convolved (standardised or not)
    rstd: Optional[Tensor]    # (C_out, 1) 1 / sqrt(var + eps), WS only
    y0: Optional[Tensor]      # conv output before gate and bias, gated layers only


def conv2d_ws_fwd(
    x: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    gate: Optional[Tensor],
    stride: Tuple[int, int],
    padding: Tuple[int, int],
    dilation: Tuple[int, int],
    groups: int,
    standardize: bool,
    eps: float,
) -> ConvForward:
    r"""Forward of :class:`CustomConv2dFunction` (``o`` = output channel, ``n = C_in / groups * kh * kw``)::

        W_hat[o] = (W[o] - mean(W[o])) * rstd[o],  rstd[o] = 1 / sqrt(var(W[o]) + eps)   (WS; var biased)
        W_hat    = W                                                                     (no WS)
        y0       = conv2d(x, W_hat)
        y        = g[o] * y0 + b[o]                   (g == 1 without gate, b == 0 without bias)
    """
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
        return ConvForward(F.conv2d(x, w_hat, bias, stride, padding, dilation, groups), w_hat, rstd, None)
    y0 = F.conv2d(x, w_hat, None, stride, padding, dilation, groups)
    y = y0 * channel_view(gate)
    if bias is not None:
        y = y + channel_view(bias)
    return ConvForward(y, w_hat, rstd, y0)


def conv2d_ws_bwd(
    grad_y: Tensor,
    x: Optional[Tensor],
    w_hat: Optional[Tensor],
    rstd: Optional[Tensor],
    y0: Optional[Tensor],
    gate: Optional[Tensor],
    x_shape: Sequence[int],
    w_shape: Sequence[int],
    stride: Tuple[int, int],
    padding: Tuple[int, int],
    dilation: Tuple[int, int],
    groups: int,
    standardize: bool,
    needs: Sequence[bool],
) -> Grads:
    r"""Backward of :func:`conv2d_ws_fwd`, with ``G = dL/dy``; returns ``(dL/dx, dL/dW, dL/db, dL/dg)``::

        dL/db     = sum_{n,h,w} G
        dL/dg     = sum_{n,h,w} G * y0
        G0        = g * G                                        (= dL/dy0)
        dL/dx     = conv2d_input(G0, W_hat)                      (transposed convolution)
        dL/dW_hat = conv2d_weight(x, G0)                         (correlation of x with G0)
        dL/dW[o]  = rstd[o] * (D - mean(D) - W_hat[o] * mean(D * W_hat[o])),  D = dL/dW_hat[o]   (WS)
        dL/dW     = dL/dW_hat                                    (no WS)

    The WS rule is the LayerNorm backward without affine: the two mean terms
    project out the directions along which standardisation is invariant
    (shifting W[o], and scaling it).  ``needs`` = which of the four to compute;
    the tensors only an unneeded gradient uses may be ``None``.
    """
    need_x, need_w, need_b, need_g = needs
    grad_x = grad_w = grad_b = grad_g = None

    if need_b:
        grad_b = grad_y.sum(dim=(0, 2, 3))
    if need_g:
        grad_g = (grad_y * y0).sum(dim=(0, 2, 3))

    if need_x or need_w:
        # Chain rule through the gate: dL/dy0 = g * dL/dy.
        grad_y0 = grad_y if gate is None else grad_y * channel_view(gate)
        if need_x:
            grad_x = torch.nn.grad.conv2d_input(x_shape, w_hat, grad_y0, stride, padding, dilation, groups)
        if need_w:
            grad_w_hat = torch.nn.grad.conv2d_weight(x, w_shape, grad_y0, stride, padding, dilation, groups)
            if standardize:
                d = grad_w_hat.reshape(grad_w_hat.shape[0], -1)
                wh = w_hat.reshape(w_hat.shape[0], -1)
                grad_w = rstd * (d - d.mean(dim=1, keepdim=True) - wh * (d * wh).mean(dim=1, keepdim=True))
                grad_w = grad_w.view(w_shape)
            else:
                grad_w = grad_w_hat
    return grad_x, grad_w, grad_b, grad_g


class CustomConv2dFunction(torch.autograd.Function):
    """Conv2d + optional WS + gate with the backward of :func:`conv2d_ws_bwd` (maths: :func:`conv2d_ws_fwd`).

    ``apply(x, weight, bias, gate, stride, padding, dilation, groups, standardize, eps)`` with
    ``x`` 4-D and ``padding`` a pair (zero padding); ``bias`` and ``gate`` may be ``None``.
    """

    @staticmethod
    @fp32_forward
    def forward(ctx: FunctionCtx, x: Tensor, weight: Tensor, bias: Optional[Tensor], gate: Optional[Tensor],
                stride: Tuple[int, int], padding: Tuple[int, int], dilation: Tuple[int, int], groups: int,
                standardize: bool, eps: float) -> Tensor:
        need_x, need_w, _, need_g = ctx.needs_input_grad[:4]
        out = conv2d_ws_fwd(x, weight, bias, gate, stride, padding, dilation, groups, standardize, eps)
        ctx.conv_args = (x.shape, weight.shape, stride, padding, dilation, groups,  # type: ignore[attr-defined]
                         standardize)
        ctx.save_for_backward(
            x if need_w else None,  # only dL/dW correlates with x
            out.w_hat if (need_x or need_w) else None,  # dL/dx uses W_hat; the WS backward uses it too
            out.rstd if need_w else None,
            out.y0 if need_g else None,  # y0 only enters dL/dg
            gate,  # (C_out,) - tiny, needed for G0
        )
        return out.y

    @staticmethod
    @first_order_backward
    def backward(ctx: FunctionCtx, grad_y: Tensor) -> Grads:
        grads = conv2d_ws_bwd(grad_y, *ctx.saved_tensors, *ctx.conv_args,  # type: ignore[attr-defined]
                              needs=ctx.needs_input_grad[:4])
        return (*grads, None, None, None, None, None, None)


_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


class CustomConv2d(AutogradSwitch, nn.Module):
    """2-D convolution with optional Weight Standardization and a learnable output gate.

    ``y = g * conv2d(x, WS(W)) + b``.  With ``weight_standardization=False`` and
    ``channel_gate=False`` this is numerically ``nn.Conv2d`` (same parameter
    shapes, same initialisation scheme and RNG consumption, same output and
    gradients), including ``groups``, ``padding_mode``, ``padding='same'/'valid'``
    and unbatched input.

    Shape:
        x: ``(N, in_channels, H, W)`` or unbatched ``(in_channels, H, W)`` ->
        y: ``(N, out_channels, H_out, W_out)`` (or ``(out_channels, H_out, W_out)``) with
        ``H_out = floor((H + 2 * padding - dilation * (kernel - 1) - 1) / stride) + 1``
        (same as ``nn.Conv2d``).

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, bias, groups,
        padding_mode, device, dtype:
            as in ``nn.Conv2d`` (``groups``, ``padding_mode``, ``device`` and ``dtype``
            are keyword-only here).  Padding other than symmetric zeros (another
            ``padding_mode``, or ``'same'`` with an even total padding) is done by
            ``F.pad`` before the hand-written conv, exactly as ``nn.Conv2d`` does.
        weight_standardization: standardise each output filter over
            ``in_channels / groups * kh * kw`` before convolving (Qiao et al. 2019).
        channel_gate: learnable per-output-channel multiplier ``g`` (init 1).
        eps: added to the (biased) filter variance in WS (finite, > 0).

    Raises:
        ValueError: at construction for a non-positive channel count, kernel size,
        stride, dilation or group count, negative padding, channels not divisible by
        ``groups``, an unknown padding string or mode, ``'same'`` with a stride, or a
        non-finite / non-positive ``eps``; in forward for an input that is not
        3-D or 4-D or has the wrong number of channels.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: size_2_t,
        stride: size_2_t = 1,
        padding: Union[str, size_2_t] = 0,
        dilation: size_2_t = 1,
        bias: bool = True,
        weight_standardization: bool = False,
        channel_gate: bool = False,
        eps: float = 1e-5,
        *,
        groups: int = 1,
        padding_mode: str = "zeros",
        device: Optional[Union[torch.device, str]] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.in_channels = positive_int(name, "in_channels", in_channels)
        self.out_channels = positive_int(name, "out_channels", out_channels)
        self.groups = positive_int(name, "groups", groups)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"{name}: in_channels ({in_channels}) and out_channels ({out_channels}) must be "
                             f"divisible by groups ({groups})")
        self.kernel_size = int_pair(name, "kernel_size", kernel_size, 1)
        self.stride = int_pair(name, "stride", stride, 1)
        self.dilation = int_pair(name, "dilation", dilation, 1)
        if padding_mode not in _PADDING_MODES:
            raise ValueError(f"{name}: padding_mode must be one of {_PADDING_MODES}, got {padding_mode!r}")
        self.padding_mode = padding_mode
        # nn.Conv2d's convention: ``padding`` is the string or the pair, as given.
        self.padding: Union[str, Tuple[int, int]]
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"{name}: padding must be 'same', 'valid', an int or a pair, got {padding!r}")
            if padding == "same" and self.stride != (1, 1):
                raise ValueError(f"{name}: padding='same' is not supported for strided convolutions "
                                 f"(stride={self.stride}), as in nn.Conv2d")
            self.padding = padding
        else:
            self.padding = int_pair(name, "padding", padding, 0)
        self._conv_padding, self._pre_pad = self._split_padding()
        self.weight_standardization = bool(weight_standardization)
        self.eps = finite_float(name, "eps", eps, positive=True)
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size, **factory))
        self.bias: Optional[nn.Parameter] = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.gate: Optional[nn.Parameter] = (nn.Parameter(torch.empty(out_channels, **factory)) if channel_gate
                                             else None)
        self.reset_parameters()

    def _split_padding(self) -> Tuple[Tuple[int, int], Optional[Tuple[int, int, int, int]]]:
        """(padding inside the conv, F.pad amounts before it or None).

        Symmetric zero padding goes into the conv; everything else (another
        padding mode, the asymmetric split of ``'same'``) is an ``F.pad`` first.
        """
        if self.padding == "valid":
            (top, bottom), (left, right) = (0, 0), (0, 0)
        elif self.padding == "same":  # total d * (k - 1) per dim, the odd pixel at the end, as nn.Conv2d
            (top, bottom), (left, right) = [(d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2)
                                            for d, k in zip(self.dilation, self.kernel_size)]
        else:
            assert isinstance(self.padding, tuple)
            (top, bottom), (left, right) = [(p, p) for p in self.padding]
        if self.padding_mode == "zeros" and top == bottom and left == right:
            return (top, left), None
        return (0, 0), (left, right, top, bottom)

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
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        check_4d(x, "CustomConv2d (or 3-D C x H x W)", self.in_channels)
        if self._pre_pad is not None:
            x = F.pad(x, self._pre_pad, mode="constant" if self.padding_mode == "zeros" else self.padding_mode)
        y = self._run(CustomConv2dFunction, conv2d_ws_fwd, x, self.weight, self.bias, self.gate, self.stride,
                      self._conv_padding, self.dilation, self.groups, self.weight_standardization, self.eps)
        return y.squeeze(0) if unbatched else y

    def extra_repr(self) -> str:
        extra = "" if self.groups == 1 else f", groups={self.groups}"
        extra += "" if self.padding_mode == "zeros" else f", padding_mode={self.padding_mode}"
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}{extra}, bias={self.bias is not None}, "
            f"ws={self.weight_standardization}, gate={self.gate is not None}"
        )
