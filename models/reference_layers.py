"""The custom layers of :mod:`models.custom_layers`, written with standard PyTorch ops (autograd backward).

Each class subclasses its custom counterpart and only overrides ``forward``: same constructor,
same parameter names, shapes and initialisation, same maths, but the backward pass is derived by
autograd from the standard ops instead of the hand-written ``autograd.Function``. Two uses:

* the speed study times "hand-written backward" against "autograd backward" of the *same*
  computation, so the ratio isolates the cost (or gain) of writing the Function by hand;
* a state dict of a custom layer loads into its reference twin (and back), so the outputs and
  gradients can be compared number for number.

These are what torchvision/timm would do (e.g. ``torchvision.ops.SqueezeExcitation`` is the SE
reference here), so they are also the "standard implementation" of layers PyTorch has no
built-in module for (weight-standardised conv, SE, CBAM, learnable Swish, GeM, mixed pooling).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from models.custom_layers import CBAM, ChannelAttention, CustomConv2d, GeMPool2d, MixedPool2d, SpatialAttention, Swish

__all__ = ["AutogradConv2d", "AutogradChannelAttention", "AutogradSpatialAttention", "AutogradCBAM",
           "AutogradSwish", "AutogradGeMPool2d", "AutogradMixedPool2d"]


class AutogradConv2d(CustomConv2d):
    """``g * conv2d(x, WS(W)) + b`` with standard ops (see :class:`CustomConv2d`)."""

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight
        if self.weight_standardization:
            wf = w.flatten(1)
            var, mean = torch.var_mean(wf, dim=1, correction=0, keepdim=True)
            w = ((wf - mean) * torch.rsqrt(var + self.eps)).view_as(w)
        if self.gate is None:
            return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation)
        y = F.conv2d(x, w, None, self.stride, self.padding, self.dilation) * self.gate.view(1, -1, 1, 1)
        return y if self.bias is None else y + self.bias.view(1, -1, 1, 1)


class AutogradChannelAttention(ChannelAttention):
    """Squeeze-and-excitation with standard ops (as ``torchvision.ops.SqueezeExcitation``)."""

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean(dim=(2, 3))
        z = F.linear(F.relu(F.linear(s, self.fc1_weight, self.fc1_bias)), self.fc2_weight, self.fc2_bias)
        return x * torch.sigmoid(z)[:, :, None, None]


class AutogradSpatialAttention(SpatialAttention):
    """CBAM spatial attention with standard ops."""

    def forward(self, x: Tensor) -> Tensor:
        desc = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(F.conv2d(desc, self.weight, self.bias, padding=self.kernel_size // 2))


class AutogradCBAM(CBAM):
    """CBAM whose two stages are the standard-op versions (same sub-module names as :class:`CBAM`)."""

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7, use_channel: bool = True,
                 use_spatial: bool = True) -> None:
        super().__init__(channels, reduction, kernel_size, use_channel, use_spatial)
        # Rebuilt after the parent so the RNG draws (and hence the initial weights) match CBAM's.
        if self.channel is not None:
            state = self.channel.state_dict()
            self.channel = AutogradChannelAttention(channels, reduction)
            self.channel.load_state_dict(state)
        if self.spatial is not None:
            state = self.spatial.state_dict()
            self.spatial = AutogradSpatialAttention(kernel_size)
            self.spatial.load_state_dict(state)


class AutogradSwish(Swish):
    """``x * sigmoid(beta * x)`` with standard ops."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(self.beta * x)


class AutogradGeMPool2d(GeMPool2d):
    """``avg_pool(max(x, eps)^p)^(1/p)`` with standard ops."""

    def forward(self, x: Tensor) -> Tensor:
        u = x.clamp(min=self.eps).pow(self.p)
        m = u.mean(dim=(2, 3), keepdim=True) if self.kernel_size is None else F.avg_pool2d(u, self.kernel_size,
                                                                                           self.stride)
        return m.pow(1.0 / self.p)


class AutogradMixedPool2d(MixedPool2d):
    """``sigmoid(a) * max_pool(x) + (1 - sigmoid(a)) * avg_pool(x)`` with standard ops."""

    def forward(self, x: Tensor) -> Tensor:
        alpha = torch.sigmoid(self.a)
        return torch.lerp(F.avg_pool2d(x, self.kernel_size, self.stride),
                          F.max_pool2d(x, self.kernel_size, self.stride), alpha)
