"""Custom CNN layers with hand-written backward passes (the public API of :mod:`models.layers`).

Each layer follows timm's ``layers/activations_me.py`` shape: pure forward and
backward functions (``*_fwd`` / ``*_bwd``, the maths is in their docstrings), a
thin :class:`torch.autograd.Function` that only decides what to save and calls
them, and a thin :class:`torch.nn.Module` that owns the parameters.  One
module per concept under ``models/layers/``.

Layers
    * :class:`CustomConv2d`     conv2d + optional Weight Standardization + per-channel gate
    * :class:`ChannelAttention` channel attention: squeeze-and-excitation (``pool_types=("avg",)``, the
                                default) or CBAM's avg + max descriptors (``pool_types=("avg", "max")``)
    * :class:`SpatialAttention` CBAM spatial attention
    * :class:`CBAM`             CBAM as published: avg + max channel attention, then spatial attention
    * :class:`Swish`            x * sigmoid(beta * x), beta learnable or fixed
    * :class:`GeMPool2d`        generalised-mean pooling, p fixed or learnable (kept >= p_min:
                                ``p = p_min + softplus(p_raw)``)
    * :class:`MixedPool2d`      learnable mix of max and average pooling

Autograd reference
    :func:`autograd_reference` returns a copy of a layer (or of a whole model)
    whose custom layers run the *same* ``*_fwd`` function under autograd, so
    autograd derives the backward.  Tests compare the hand-written backward
    against it, and the speed study times one against the other.

Common conventions
    * Inputs are ``N x C x H x W`` (any strides: contiguous, channels_last,
      transposed or sliced views all work; ``N = 0`` works).  :class:`CustomConv2d`
      also takes unbatched ``C x H x W`` and :class:`Swish` any shape.
    * Bad constructor arguments (non-positive sizes, non-finite or non-positive
      ``p`` / ``eps``, ...) and inputs of the wrong rank or channel count raise one
      ``ValueError`` that names the layer.
    * float32 and float64 are supported.  Under ``torch.autocast`` every
      layer runs as an *fp32 island* (see :func:`models.layers._common.run_fp32`).
    * The hand-written ``backward`` is first order only.  Whenever autograd would
      build a graph through it (``create_graph=True``: double backward, gradient
      penalties, Hessian-vector products) it raises a ``RuntimeError`` instead of
      silently dropping the second-order terms.  For second-order use, run the
      model through :func:`autograd_reference`, which supports it.
    * Only the tensors ``backward`` actually needs are saved, and gradients that
      ``ctx.needs_input_grad`` marks as unneeded are neither saved for nor computed.
"""

from __future__ import annotations

import copy

from torch import nn

from models.layers._common import AutogradSwitch
from models.layers.activation import Swish, SwishFunction, swish_bwd, swish_fwd
from models.layers.attention import (CBAM, ChannelAttention, ChannelAttentionFunction, SpatialAttention,
                                     SpatialAttentionFunction, channel_attention_bwd, channel_attention_fwd,
                                     spatial_attention_bwd, spatial_attention_fwd)
from models.layers.conv import CustomConv2d, CustomConv2dFunction, conv2d_ws_bwd, conv2d_ws_fwd
from models.layers.pooling import (GeMPool2d, GeMPoolFunction, MixedPool2d, MixedPoolFunction, gem_exponent_bwd,
                                   gem_exponent_fwd, gem_pool_bwd, gem_pool_fwd, mixed_pool_bwd, mixed_pool_fwd)

__all__ = [
    "CustomConv2d", "CustomConv2dFunction", "conv2d_ws_fwd", "conv2d_ws_bwd",
    "ChannelAttention", "ChannelAttentionFunction", "channel_attention_fwd", "channel_attention_bwd",
    "SpatialAttention", "SpatialAttentionFunction", "spatial_attention_fwd", "spatial_attention_bwd",
    "CBAM",
    "Swish", "SwishFunction", "swish_fwd", "swish_bwd",
    "GeMPool2d", "GeMPoolFunction", "gem_pool_fwd", "gem_pool_bwd", "gem_exponent_fwd", "gem_exponent_bwd",
    "MixedPool2d", "MixedPoolFunction", "mixed_pool_fwd", "mixed_pool_bwd",
    "autograd_reference",
]


def autograd_reference(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` in which every custom layer runs its forward function under autograd.

    Same parameter values (copies, not shared tensors), same forward maths op for op,
    but the backward is derived by autograd instead of the hand-written ``backward``.
    Works on a single layer, on :class:`CBAM` and on a whole model; ``module`` itself
    is not changed.
    """
    reference = copy.deepcopy(module)
    for m in reference.modules():
        if isinstance(m, AutogradSwitch):
            m.use_autograd = True
    return reference
