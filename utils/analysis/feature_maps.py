"""Collecting intermediate activations of a model with forward hooks."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from utils.engine.eval_mode import eval_mode

__all__ = ["collect_activations"]


def collect_activations(model: nn.Module, images: Tensor, layers: "dict[str, nn.Module]") -> "dict[str, Tensor]":
    """Outputs of the given submodules for ``images``, captured with forward hooks.

    Args:
        model: the network; run once in eval mode under ``torch.no_grad()`` (training flags
            restored afterwards), so BN uses its running statistics and images do not interact.
        images: ``(N, C, H, W)`` normalised input on the model's device.
        layers: label -> submodule of ``model``; each must return one tensor. A module called
            several times keeps its first output.

    Returns:
        label -> detached float32 CPU tensor (contiguous, default memory format), e.g.
        ``(N, K, h, w)`` for a conv block.
    """
    captured: dict[str, Tensor] = {}
    handles = []

    def make_hook(label: str):
        def hook(_m: nn.Module, _inp: object, out: object) -> None:
            if not isinstance(out, Tensor):
                raise ValueError(f"layer {label!r} must return one Tensor, got {type(out).__name__}")
            # clone: in-place ops later in the forward (ReLU(inplace=True)) must not change it
            captured.setdefault(label, out.detach().float().cpu().contiguous().clone())
        return hook

    try:
        for label, module in layers.items():
            handles.append(module.register_forward_hook(make_hook(label)))
        with eval_mode(model), torch.no_grad():
            model(images)
    finally:
        for h in handles:
            h.remove()
    missing = set(layers) - set(captured)
    if missing:
        raise ValueError(f"layers never called during the forward pass: {sorted(missing)}")
    return {label: captured[label] for label in layers}


