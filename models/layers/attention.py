"""Attention: channel attention (squeeze-and-excitation, or CBAM's avg + max), CBAM spatial attention, CBAM."""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx
from torch.nn import init

from models.layers._common import AutogradSwitch, Grads, check_4d, first_order_backward, fp32_forward, positive_int

__all__ = ["POOL_TYPES",
           "channel_attention_fwd", "channel_attention_bwd", "ChannelAttentionFunction", "ChannelAttention",
           "spatial_attention_fwd", "spatial_attention_bwd", "SpatialAttentionFunction", "SpatialAttention", "CBAM"]


# --------------------------------------------------------------------------- #
# Channel attention: squeeze-and-excitation (avg) and CBAM's channel stage (avg + max)
# --------------------------------------------------------------------------- #
POOL_TYPES = ("avg", "max")


class ChannelAttentionForward(NamedTuple):
    y: Tensor               # (N, C, H, W)
    s: Tensor               # (P, N, C) the P pooled descriptors, in pool_types order
    h: Tensor               # (P, N, Cr) hidden pre-activation of each descriptor
    w: Tensor               # (N, C) attention weights
    idx: Optional[Tensor]   # (N, C) flat H*W argmax of each channel ("max" pooling only)


def channel_attention_fwd(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor,
                          pool_types: Sequence[str] = ("avg",)) -> ChannelAttentionForward:
    r"""Channel attention with a shared MLP over pooled descriptors, ``w1: (Cr, C)``, ``w2: (C, Cr)``::

        s_avg = mean_{h,w} x,   s_max = max_{h,w} x                         (N, C)    squeeze
        h_p = s_p W1^T + b1,  a_p = relu(h_p)                               (N, Cr)   for p in pool_types
        z = sum_p (a_p W2^T + b2),  w = sigmoid(z)                          (N, C)    excitation
        y = x * w[:, :, None, None]

    ``pool_types=("avg",)`` is squeeze-and-excitation (Hu et al. 2018); ``("avg", "max")`` is
    CBAM's channel attention (Woo et al. 2018, eq. 2: ``sigmoid(MLP(AvgPool) + MLP(MaxPool))``, the
    MLP with its biases applied to each descriptor, so ``b2`` enters once per descriptor, as in
    timm's ``ChannelAttn``).  The max is ``max(dim)`` over the flattened H*W, whose index routes
    the max's gradient to one position per channel (see :func:`channel_attention_bwd`).
    """
    descriptors = []
    idx: Optional[Tensor] = None
    for kind in pool_types:
        if kind == "avg":
            descriptors.append(x.mean(dim=(2, 3)))
        else:
            mx, idx = x.flatten(2).max(dim=2)
            descriptors.append(mx)
    s = torch.stack(descriptors)
    h = F.linear(s, w1, b1)
    z = F.linear(F.relu(h), w2, b2).sum(dim=0)
    w = torch.sigmoid(z)
    return ChannelAttentionForward(x * w[:, :, None, None], s, h, w, idx)


def channel_attention_bwd(grad_y: Tensor, x: Tensor, s: Tensor, h: Tensor, w: Tensor, idx: Optional[Tensor],
                          w1: Tensor, w2: Tensor, pool_types: Sequence[str], needs: Sequence[bool]) -> Grads:
    r"""Backward of :func:`channel_attention_fwd`, with ``G = dL/dy``; returns grads of ``(x, W1, b1, W2, b2)``::

        dL/dz   = (sum_{h,w} G * x) * w * (1 - w)                   (the same for every descriptor's branch)
        dL/dW2  = dL/dz^T sum_p a_p,   dL/db2 = P * sum_n dL/dz,   dL/da_p = dL/dz W2
        dL/dh_p = dL/da_p * [h_p > 0]
        dL/dW1  = sum_p dL/dh_p^T s_p,   dL/db1 = sum_{p,n} dL/dh_p,   dL/ds_p = dL/dh_p W1
        dL/dx   = G * w  +  dL/ds_avg / (H * W)  +  onehot(argmax_{h,w} x) * dL/ds_max

    The direct path, the average's path (each pixel gets ``1 / (H W)``) and the max's path, which
    goes only to the argmax position of each (sample, channel): the sub-gradient ``max(dim)``
    uses; ties go to the index ``torch.max`` returned (``amax`` would split them evenly).
    ``a_p = relu(h_p)`` is recomputed rather than saved.
    """
    need_x, need_w1, need_b1, need_w2, need_b2 = needs
    grad_x = grad_w1 = grad_b1 = grad_w2 = grad_b2 = None

    grad_z = (grad_y * x).sum(dim=(2, 3)) * w * (1 - w)  # sigmoid' = w (1 - w)
    if need_w2:
        grad_w2 = grad_z.t() @ F.relu(h).sum(dim=0)
    if need_b2:
        grad_b2 = grad_z.sum(0) * len(pool_types)
    if need_x or need_w1 or need_b1:
        grad_h = (grad_z @ w2) * (h > 0)  # (P, N, Cr); relu' = 1[h > 0]
        if need_w1:
            grad_w1 = grad_h.flatten(0, 1).t() @ s.flatten(0, 1)
        if need_b1:
            grad_b1 = grad_h.sum(dim=(0, 1))
        if need_x:
            grad_s = grad_h @ w1  # (P, N, C)
            grad_x = grad_y * w[:, :, None, None]
            for p, kind in enumerate(pool_types):
                if kind == "avg":
                    grad_x = grad_x + (grad_s[p] / (x.shape[2] * x.shape[3]))[:, :, None, None]
                else:
                    assert idx is not None
                    n, c, _, width = x.shape
                    # index_put_ on (n, c, row, col) works for any strides (channels_last, views)
                    n_i = torch.arange(n, device=x.device).view(n, 1).expand(n, c)
                    c_i = torch.arange(c, device=x.device).view(1, c).expand(n, c)
                    grad_x = grad_x.index_put_((n_i, c_i, idx // width, idx % width), grad_s[p], accumulate=True)
    return grad_x, grad_w1, grad_b1, grad_w2, grad_b2


class ChannelAttentionFunction(torch.autograd.Function):
    """Channel attention with the backward of :func:`channel_attention_bwd`.

    ``apply(x, w1, b1, w2, b2, pool_types)``, ``pool_types`` a tuple of ``"avg"`` / ``"max"``.
    """

    @staticmethod
    @fp32_forward
    def forward(ctx: FunctionCtx, x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor,
                pool_types: Tuple[str, ...]) -> Tensor:
        out = channel_attention_fwd(x, w1, b1, w2, b2, pool_types)
        ctx.pool_types = pool_types  # type: ignore[attr-defined]
        # All saved tensors except x are (P, N, C) / (P, N, Cr) / (N, C) / weights: tiny.
        ctx.save_for_backward(x, out.s, out.h, out.w, out.idx, w1, w2)
        return out.y

    @staticmethod
    @first_order_backward
    def backward(ctx: FunctionCtx, grad_y: Tensor) -> Grads:
        saved = ctx.saved_tensors  # type: ignore[attr-defined]
        grads = channel_attention_bwd(grad_y, *saved, ctx.pool_types,  # type: ignore[attr-defined]
                                      needs=ctx.needs_input_grad[:5])
        return (*grads, None)


def _pool_types(layer: str, value: Any) -> Tuple[str, ...]:
    """A non-empty selection of ("avg", "max"), as a tuple in that canonical order."""
    chosen = (value,) if isinstance(value, str) else tuple(value) if isinstance(value, (tuple, list)) else ()
    if not chosen or len(set(chosen)) != len(chosen) or not set(chosen) <= set(POOL_TYPES):
        raise ValueError(f"{layer}: pool_types must be a non-empty selection of {POOL_TYPES} without repeats, "
                         f"got {value!r}")
    return tuple(kind for kind in POOL_TYPES if kind in chosen)


class ChannelAttention(AutogradSwitch, nn.Module):
    """Channel attention: squeeze-and-excitation by default, CBAM's channel stage with ``("avg", "max")``.

    ``y = x * sigmoid(sum_p FC2(relu(FC1(pool_p(x)))))``, one weight per (sample, channel), the
    two FC layers shared by the descriptors.

    * ``pool_types=("avg",)`` (default): squeeze-and-excitation (Hu et al. 2018),
      ``x * sigmoid(FC2(relu(FC1(avgpool(x)))))``.
    * ``pool_types=("avg", "max")``: CBAM's channel attention (Woo et al. 2018), the
      average- and max-pooled descriptors through the shared MLP, summed before the sigmoid.

    Shape:
        x: ``(N, C, H, W)`` -> y: ``(N, C, H, W)``.

    Args:
        channels: C (positive).
        reduction: hidden width is ``max(1, channels // reduction)`` (positive).
        pool_types: which global poolings feed the MLP, a non-empty selection of ``"avg"`` and
            ``"max"`` (a single string is one of them); kept in that canonical order.

    Raises:
        ValueError: a non-positive ``channels`` or ``reduction``, a bad ``pool_types``; in forward,
        an input that is not 4-D or has not ``channels`` channels.
    """

    def __init__(self, channels: int, reduction: int = 16, pool_types: Sequence[str] = ("avg",)) -> None:
        super().__init__()
        self.channels = positive_int(type(self).__name__, "channels", channels)
        self.reduction = positive_int(type(self).__name__, "reduction", reduction)
        self.pool_types = _pool_types(type(self).__name__, pool_types)
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
                         x, self.fc1_weight, self.fc1_bias, self.fc2_weight, self.fc2_bias, self.pool_types)

    def extra_repr(self) -> str:
        # pool_types only when not SE's: an SE layer's repr (part of a run's config hash) is as before
        pools = "" if self.pool_types == ("avg",) else f", pool_types={self.pool_types}"
        return f"{self.channels}, reduction={self.reduction}, hidden={self.hidden}{pools}"


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
    """Convolutional Block Attention Module (Woo et al. 2018): channel attention, then spatial attention.

    As published (and as timm's ``CbamModule``): the channel stage is
    ``ChannelAttention(channels, reduction, pool_types=("avg", "max"))`` (average- and
    max-pooled descriptors through one shared MLP, summed before the sigmoid), then the
    spatial stage ``SpatialAttention(kernel_size)`` (a k x k conv over the channel-mean and
    channel-max maps; 7 x 7 by default, as in the paper).  Either stage can be switched off
    to use the other alone.  Difference from the paper: the spatial conv has a bias and no
    BatchNorm (see :class:`SpatialAttention`).

    Shape:
        x: ``(N, C, H, W)`` -> y: ``(N, C, H, W)``.

    Args:
        channels: C.
        reduction: reduction ratio of the channel stage's MLP.
        kernel_size: spatial-attention kernel (odd).
        use_channel, use_spatial: enable each stage (at least one).
        pool_types: the channel stage's descriptors; the default ``("avg", "max")`` is CBAM's,
            ``("avg",)`` gives squeeze-and-excitation followed by spatial attention.

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
        pool_types: Sequence[str] = POOL_TYPES,
    ) -> None:
        super().__init__()
        if not (use_channel or use_spatial):
            raise ValueError("CBAM needs use_channel or use_spatial (use nn.Identity for neither)")
        self.channel: Optional[ChannelAttention] = (ChannelAttention(channels, reduction, pool_types) if use_channel
                                                    else None)
        self.spatial: Optional[SpatialAttention] = SpatialAttention(kernel_size) if use_spatial else None

    def forward(self, x: Tensor) -> Tensor:
        if self.channel is not None:
            x = self.channel(x)
        if self.spatial is not None:
            x = self.spatial(x)
        return x

    def extra_repr(self) -> str:
        return f"use_channel={self.channel is not None}, use_spatial={self.spatial is not None}"
