"""Weight initialisation as an explicit, recorded choice of the experiment.

Models are built with PyTorch's default init; the experiment then calls :func:`init_weights` with
the scheme it records. Schemes (:data:`INIT_SCHEMES`):

``"kaiming"`` (the default for ReLU nets)
    He et al. 2015, normal, ``fan_in`` mode, ReLU gain: ``W ~ N(0, 2 / fan_in)`` for every conv
    (``nn.Conv*`` and the package's ``CustomConv2d``) and every ``nn.Linear``; their biases 0;
    every BatchNorm / GroupNorm / LayerNorm weight 1 and bias 0. ``fan_in`` keeps the variance
    of the forward signal constant through a ReLU chain, which is what an unnormalised deep net
    needs to learn at all. Other parameters (the attention modules' own MLP and gate, Swish beta,
    GeM p, the mixing weight of mixed pooling, a conv's channel gate) keep their module's own
    init: they are not layers of the ReLU trunk.
``"pytorch_default"`` (the named control)
    Leaves the model as PyTorch built it (conv/linear: Kaiming-uniform with ``a = sqrt(5)``, i.e.
    variance ``1 / (3 fan_in)``). It draws no random numbers, so a model built under a seed and
    "initialised" with it equals a freshly built model under that seed.

``zero_init_residual`` (off by default; Goyal et al. 2017): after the scheme, the "residual end"
of every :class:`~models.cnn_models.ResidualBlock` (its last BN, or the last conv of a
pre-activation branch, as each block class declares) gets weight and bias 0, so every residual
branch outputs exactly zero at init and each block starts as its shortcut. The same rule for every
block type; it draws no random numbers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn

from models.cnn_models import ResidualBlock
from models.custom_layers import CustomConv2d

__all__ = ["INIT_SCHEMES", "InitRecord", "init_weights"]

INIT_SCHEMES = ("kaiming", "pytorch_default")

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


@dataclass(frozen=True)
class InitRecord:
    """What :func:`init_weights` did, for the result record."""

    scheme: str
    zero_init_residual: bool
    layers_initialised: int      # conv / linear / norm layers the scheme set (0 for pytorch_default)
    residual_ends_zeroed: int    # blocks whose residual end was zeroed

    def as_dict(self) -> dict:
        return asdict(self)


def _he_normal_(module: nn.Module) -> None:
    # std = sqrt(2) / sqrt(fan_in), fan_in = in_channels / groups * prod(kernel) (in_features for Linear)
    nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def init_weights(model: nn.Module, scheme: str, zero_init_residual: bool = False) -> InitRecord:
    """Initialise ``model`` in place with ``scheme`` (see the module docstring) and say what was done.

    Modules are visited in ``model.modules()`` order, so the random draws (and hence the weights
    under a given seed) depend only on the model's structure.

    Raises:
        ValueError: unknown scheme; or ``zero_init_residual`` on a model without residual blocks
            (the flag would silently do nothing).
    """
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"unknown init scheme {scheme!r}; choose from {INIT_SCHEMES}")
    initialised = 0
    if scheme == "kaiming":
        for m in model.modules():
            if isinstance(m, (nn.modules.conv._ConvNd, CustomConv2d, nn.Linear)):
                _he_normal_(m)
                initialised += 1
            elif isinstance(m, _NORMS) and getattr(m, "weight", None) is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
                initialised += 1
    zeroed = 0
    if zero_init_residual:
        blocks = [m for m in model.modules() if isinstance(m, ResidualBlock)]
        if not blocks:
            raise ValueError(f"zero_init_residual=True, but {type(model).__name__} has no residual blocks")
        for block in blocks:
            end = block.residual_end()
            nn.init.zeros_(end.weight)
            if getattr(end, "bias", None) is not None:
                nn.init.zeros_(end.bias)
            zeroed += 1
    return InitRecord(scheme, zero_init_residual, initialised, zeroed)
