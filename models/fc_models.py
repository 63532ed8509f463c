"""Fully-connected (multi-layer perceptron) classifiers for image data."""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


class FullyConnectedNet(nn.Module):
    """An MLP over flattened images.

    Input ``(N, C, H, W)`` (or already flat ``(N, in_features)``) -> logits ``(N, num_classes)``.
    Each hidden layer is ``Linear -> [BatchNorm1d] -> activation -> [Dropout]``; the depth of the
    net is ``len(hidden) + 1`` linear layers. Parameters: sum over layers of ``(fan_in + 1) * fan_out``
    plus ``2 * width`` per BatchNorm.
    """

    def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int = 10, activation: str = "relu",
                 batch_norm: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose from {sorted(ACTIVATIONS)}")
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            # The bias is redundant right before BatchNorm (its shift absorbs it).
            layers.append(nn.Linear(width, h, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)
        self.hidden = tuple(hidden)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
