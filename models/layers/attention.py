"""Attention: squeeze-and-excitation (ChannelAttention), CBAM spatial attention, CBAM."""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx
from torch.nn import init

from models.layers._common import AutogradSwitch, Grads, check_4d, first_order_backward, fp32_forward, positive_int

__all__ = ["channel_attention_fwd", "channel_attention_bwd", "ChannelAttentionFunction", "ChannelAttention",
           "spatial_attention_fwd", "spatial_attention_bwd", "SpatialAttentionFunction", "SpatialAttention", "CBAM"]


# --------------------------------------------------------------------------- #
# Squeeze-and-excitation
# --------------------------------------------------------------------------- #
class ChannelAttentionForward(NamedTuple):
    y: Tensor   # (N, C, H, W)
    s: Tensor   # (N, C) squeeze
    h: Tensor   # (N, Cr) hidden pre-activation
    w: Tensor   # (N, C) excitation weights


def channel_attention_fwd(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> ChannelAttentionForward:
    r"""Squeeze-and-excitation channel attention, ``w1: (Cr, C)``, ``w2: (C, Cr)``::

        s = mean_{h,w} x                        (N, C)     squeeze
        h = s W1^T + b1,  a = relu(h)           (N, Cr)
        z = a W2^T + b2,  w = sigmoid(z)        (N, C)     excitation
        y = x * w[:, :, None, None]
    """
    s = x.mean(dim=(2, 3))
    h = F.linear(s, w1, b1)
    z = F.linear(F.relu(h), w2, b2)
    w = torch.sigmoid(z)
    return ChannelAttentionForward(x * w[:, :, None, None], s, h, w)


def channel_attention_bwd(grad_y: Tensor, x: Tensor, s: Tensor, h: Tensor, w: Tensor, w1: Tensor, w2: Tensor,
                          needs: Sequence[bool]) -> Grads:
    r"""Backward of :func:`channel_attention_fwd`, with ``G = dL/dy``; returns grads of ``(x, W1, b1, W2, b2)``::

        dL/dw  = sum_{h,w} G * x
        dL/dz  = dL/dw * w * (1 - w)
        dL/dW2 = dL/dz^T a,   dL/db2 = sum_n dL/dz,   dL/da = dL/dz W2
        dL/dh  = dL/da * [h > 0]
        dL/dW1 = dL/dh^T s,   dL/db1 = sum_n dL/dh,   dL/ds = dL/dh W1
        dL/dx  = G * w + dL/ds / (H * W)          (direct path + path through the squeeze)

    ``a = relu(h)`` is recomputed rather than saved.
    """
    need_x, need_w1, need_b1, need_w2, need_b2 = needs
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


class ChannelAttentionFunction(torch.autograd.Function):
    """SE with the backward of :func:`channel_attention_bwd`; ``apply(x, w1, b1, w2, b2)``."""

    @staticmethod
    @fp32_forward
    def forward(ctx: FunctionCtx, x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
        out = channel_attention_fwd(x, w1, b1, w2, b2)
        # All saved tensors except x are (N, C) / (N, Cr) / weights: tiny.
        ctx.save_for_backward(x, out.s, out.h, out.w, w1, w2)
        return out.y

    @staticmethod
    @first_order_backward
    def backward(ctx: FunctionCtx, grad_y: Tensor) -> Grads:
        saved = ctx.saved_tensors  # type: ignore[attr-defined]
        return channel_attention_bwd(grad_y, *saved, needs=ctx.needs_input_grad[:5])


class ChannelAttention(AutogradSwitch, nn.Module):
    """Squeeze-and-excitation channel attention (Hu et al. 2018).

    ``y = x * sigmoid(FC2(relu(FC1(avgpool(x)))))``, one weight per (sample, channel).

    Shape:
        x: ``(N, C, H, W)`` -> y: ``(N, C, H, W)``.

    Args:
        channels: C (positive).
        reduction: hidden width is ``max(1, channels // reduction)`` (positive).

    Raises:
        ValueError: a non-positive ``channels`` or ``reduction``; in forward, an input
        that is not 4-D or has not ``channels`` channels.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.channels = positive_int(type(self).__name__, "channels", channels)
        self.reduction = positive_int(type(self).__name__, "reduction", reduction)
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
        check_4d(x, "ChannelAttention", self.channels)
        return self._run(ChannelAttentionFunction, channel_attention_fwd,
                         x, self.fc1_weight, self.fc1_bias, self.fc2_weight, self.fc2_bias)

    def extra_repr(self) -> str:
        return f"{self.channels}, reduction={self.reduction}, hidden={self.hidden}"


# --------------------------------------------------------------------------- #
# CBAM spatial attention
# --------------------------------------------------------------------------- #
class SpatialAttentionForward(NamedTuple):
    y: Tensor     # (N, C, H, W)
    m: Tensor     # (N, 2, H, W) [mean_c x, max_c x]
    idx: Tensor   # (N, 1, H, W) argmax over channels
    s: Tensor     # (N, 1, H, W) attention map


def spatial_attention_fwd(x: Tensor, weight: Tensor, bias: Tensor, padding: int) -> SpatialAttentionForward:
    r"""CBAM spatial attention, ``weight: (1, 2, k, k)``, ``bias: (1,)``, ``padding = k // 2``::

        m = cat([mean_c x, max_c x], dim=1)          (N, 2, H, W)
        z = conv2d(m, Wc, bc, padding=p)              (N, 1, H, W)
        s = sigmoid(z)
        y = x * s                                     (s broadcast over channels)
    """
    avg = x.mean(dim=1, keepdim=True)
    mx, idx = x.max(dim=1, keepdim=True)
    m = torch.cat([avg, mx], dim=1)
    s = torch.sigmoid(F.conv2d(m, weight, bias, padding=padding))
    return SpatialAttentionForward(x * s, m, idx, s)


def spatial_attention_bwd(grad_y: Tensor, x: Tensor, m: Tensor, idx: Tensor, s: Tensor, weight: Tensor,
                          padding: int, needs: Sequence[bool]) -> Grads:
    r"""Backward of :func:`spatial_attention_fwd`, with ``G = dL/dy``; returns grads of ``(x, Wc, bc)``::

        dL/ds  = sum_c G * x
        dL/dz  = dL/ds * s * (1 - s)
        dL/dWc = conv2d_weight(m, dL/dz),   dL/dbc = sum dL/dz
        dL/dm  = conv2d_input(dL/dz, Wc)
        dL/dx  = G * s + dL/dm[:, 0] / C  +  onehot(argmax_c x) * dL/dm[:, 1]

    The max is routed to the argmax channel only (same sub-gradient PyTorch
    uses for ``max(dim)``; ties go to the index ``torch.max`` returns).
    """
    need_x, need_w, need_b = needs
    grad_x = grad_w = grad_b = None

    grad_z = (grad_y * x).sum(dim=1, keepdim=True) * s * (1 - s)
    if need_w:
        grad_w = torch.nn.grad.conv2d_weight(m, weight.shape, grad_z, padding=padding)
    if need_b:
        grad_b = grad_z.sum().reshape(1)
    if need_x:
        grad_m = torch.nn.grad.conv2d_input(m.shape, weight, grad_z, padding=padding)
        # direct path + mean path (each channel gets 1/C of the mean's grad)
        grad_x = grad_y * s + grad_m[:, 0:1] / x.shape[1]
        # max path: only the argmax channel receives the max's grad
        grad_x = grad_x.scatter_add(1, idx, grad_m[:, 1:2])
    return grad_x, grad_w, grad_b


class SpatialAttentionFunction(torch.autograd.Function):
    """CBAM spatial attention with the backward of :func:`spatial_attention_bwd`.

    ``apply(x, weight, bias, padding)`` with ``weight: (1, 2, k, k)``, ``bias: (1,)``.
    """

    @staticmethod
    @fp32_forward
    def forward(ctx: FunctionCtx, x: Tensor, weight: Tensor, bias: Tensor, padding: int) -> Tensor:
        out = spatial_attention_fwd(x, weight, bias, padding)
        ctx.padding = padding  # type: ignore[attr-defined]
        # x: for dL/ds; m: for dL/dWc (recomputing it would cost a pass over x);
        # idx: argmax routing; s: sigmoid' and the direct path.
        ctx.save_for_backward(x, out.m, out.idx, out.s, weight)
        return out.y

    @staticmethod
    @first_order_backward
    def backward(ctx: FunctionCtx, grad_y: Tensor) -> Grads:
        grads = spatial_attention_bwd(grad_y, *ctx.saved_tensors, ctx.padding,  # type: ignore[attr-defined]
                                      needs=ctx.needs_input_grad[:3])
        return (*grads, None)


class SpatialAttention(AutogradSwitch, nn.Module):
    """CBAM spatial attention (Woo et al. 2018), one weight per (sample, pixel).

    ``y = x * sigmoid(conv_kxk([mean_c(x), max_c(x)]))``.  The conv has a bias
    (the paper follows it with BatchNorm instead; there is no BN here).

    Shape:
        x: ``(N, C, H, W)`` -> y: ``(N, C, H, W)``.

    Args:
        kernel_size: odd positive k; padding ``k // 2`` keeps H x W.

    Raises:
        ValueError: ``kernel_size`` not a positive odd integer; in forward, an input that is not 4-D.
    """

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        if positive_int(type(self).__name__, "kernel_size", kernel_size) % 2 != 1:
            raise ValueError(f"{type(self).__name__}: kernel_size must be odd to preserve H x W, got {kernel_size}")
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
        check_4d(x, "SpatialAttention")
        return self._run(SpatialAttentionFunction, spatial_attention_fwd, x, self.weight, self.bias,
                         self.kernel_size // 2)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"


# --------------------------------------------------------------------------- #
# CBAM
# --------------------------------------------------------------------------- #
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

    Raises:
        ValueError: neither stage, or an invalid argument of an enabled stage (see the stages).
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
