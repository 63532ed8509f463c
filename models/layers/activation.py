"""Swish with a learnable (or fixed) slope, memory-efficient like timm's ``SwishMe``."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx

from models.layers._common import AutogradSwitch, Grads, finite_float, first_order_backward, fp32_forward

__all__ = ["swish_fwd", "swish_bwd", "SwishFunction", "Swish"]


def swish_fwd(x: Tensor, beta: Tensor) -> Tensor:
    r"""Swish / SiLU with a scalar slope: ``y = x * sigma(beta x)``, ``sigma`` = sigmoid, ``beta`` 0-dim."""
    return x * torch.sigmoid(beta * x)


def swish_bwd(grad_y: Tensor, x: Tensor, beta: Tensor, needs: Sequence[bool]) -> Grads:
    r"""Backward of :func:`swish_fwd`, with ``G = dL/dy`` and ``sg = sigma(beta x)``::

        dL/dx    = G * sg * (1 + beta x (1 - sg))
        dL/dbeta = sum G * x^2 * sg * (1 - sg)

    ``sg`` is recomputed here (one sigmoid is cheaper than keeping an
    activation-sized tensor alive), as in timm's memory-efficient Swish.
    """
    need_x, need_beta = needs
    sg = torch.sigmoid(beta * x)
    grad_x = grad_beta = None
    if need_x:
        grad_x = grad_y * sg * (1 + beta * x * (1 - sg))
    if need_beta:
        grad_beta = (grad_y * x * x * sg * (1 - sg)).sum().reshape(beta.shape)
    return grad_x, grad_beta


class SwishFunction(torch.autograd.Function):
    """Swish with the backward of :func:`swish_bwd`; only ``x`` and ``beta`` are saved. ``apply(x, beta)``."""

    @staticmethod
    @fp32_forward
    def forward(ctx: FunctionCtx, x: Tensor, beta: Tensor) -> Tensor:
        ctx.save_for_backward(x, beta)
        return swish_fwd(x, beta)

    @staticmethod
    @first_order_backward
    def backward(ctx: FunctionCtx, grad_y: Tensor) -> Grads:
        return swish_bwd(grad_y, *ctx.saved_tensors, needs=ctx.needs_input_grad[:2])  # type: ignore[attr-defined]


class Swish(AutogradSwitch, nn.Module):
    """Swish activation ``y = x * sigmoid(beta * x)`` (Ramachandran et al. 2017).

    ``beta=1`` is SiLU (``F.silu``).  With ``learnable=True`` beta is a scalar
    ``nn.Parameter``; otherwise a (non-trainable) buffer, so it still follows
    ``.to()`` / ``.double()`` and is saved in the state dict.

    Shape:
        any ``(*)`` -> same shape (works for 2-D and 4-D activations alike).

    Raises:
        ValueError: a non-finite ``beta``.
    """

    def __init__(self, beta: float = 1.0, learnable: bool = True) -> None:
        super().__init__()
        self.learnable = learnable
        beta_t = torch.tensor(finite_float(type(self).__name__, "beta", beta))
        if learnable:
            self.beta = nn.Parameter(beta_t)
        else:
            self.register_buffer("beta", beta_t)

    def forward(self, x: Tensor) -> Tensor:
        return self._run(SwishFunction, swish_fwd, x, self.beta)

    def extra_repr(self) -> str:
        return f"beta={float(self.beta.detach()):.4g}, learnable={self.learnable}"
