"""The theoretical receptive field (RF) of a network, layer by layer.

:class:`LayerSpec` (geometry of one conv/pool), :func:`receptive_field` (the recurrence over a
chain of them), :func:`layer_specs_from_module` (the chain of a real network: it knows the
package's own layers, follows residual blocks, and refuses what it cannot compute). The empirical
effective receptive field is in :mod:`utils.analysis.erf`.

Coordinate convention (RF ``start``)
------------------------------------
We follow Araujo, Norris & Sim, "Computing Receptive Fields of Convolutional Neural Networks",
Distill 2019 (https://distill.pub/2019/computing-receptive-fields/): input pixels are indexed
0, 1, 2, ... and the centre of pixel ``i`` is at coordinate ``i`` (0-based centres, *not* the
0.5, 1.5, ... convention of some blog posts). A negative ``start`` means the first output unit's
RF reaches into the zero padding. In that convention the "effective padding" reported by the
paper's library is ``P = (size - 1) / 2 - start``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from torch import nn

from models.cnn_models import KernelSizeCNN, PlainCNN, ResidualBlock, ResNet, SimpleCNN, SwappableCNN
from models.custom_layers import CBAM, ChannelAttention, CustomConv2d, GeMPool2d, MixedPool2d, SpatialAttention, Swish
from models.fc_models import FullyConnectedNet
from utils.engine.model_stats import square_geometry

__all__ = [
    "LayerSpec",
    "ReceptiveFieldRow",
    "receptive_field",
    "layer_specs_from_module",
]


@dataclass(frozen=True)
class LayerSpec:
    """Geometry of one spatial layer (convolution or pooling), square kernels only.

    Only the geometry matters for the RF, so channels, bias, activation etc. are not recorded.
    ``padding`` is the padding on the *leading* (top/left) side, which is what moves ``start``;
    for symmetric padding that is simply the layer's ``padding`` argument.
    """

    name: str
    kernel_size: int
    stride: int = 1
    padding: int = 0
    dilation: int = 1

    def __post_init__(self) -> None:
        # Validate here so a bad spec fails at construction, not deep inside a recurrence.
        if self.kernel_size < 1 or self.stride < 1 or self.dilation < 1 or self.padding < 0:
            raise ValueError(f"invalid layer geometry: {self}")

    @property
    def effective_kernel(self) -> int:
        """Span of a dilated kernel in input pixels: ``dilation * (kernel_size - 1) + 1``."""
        return self.dilation * (self.kernel_size - 1) + 1


@dataclass(frozen=True)
class ReceptiveFieldRow:
    """RF of the output of one layer, expressed in input pixels (one spatial axis; square).

    Fields
    ------
    name:  the layer's name (from its :class:`LayerSpec`).
    size:  RF side length in input pixels (``r``), i.e. how many input pixels along one axis can
           influence one output unit. Counts the span, including holes of dilated kernels.
    jump:  effective stride (``j``): distance in input pixels between the RF centres of two
           adjacent output units; the product of all strides so far.
    start: input coordinate of the RF centre of the first output unit (index 0), with 0-based
           pixel centres (Distill 2019 convention, see module docstring). Can be negative or
           fractional (even kernels give half-pixel offsets).
    """

    name: str
    size: int
    jump: int
    start: float

    @property
    def effective_padding(self) -> int:
        """Distill's effective padding ``P_L = sum_l p_l * prod_{i<l} s_i = (size - 1)/2 - start``.

        This is the number the paper's library (google-research/receptive_field) reports as
        "effective padding"; the first output unit's RF covers input coordinates
        ``[-P, -P + size - 1]``.
        """
        return int(round((self.size - 1) / 2 - self.start))

    def center(self, index: int) -> float:
        """Input coordinate of the RF centre of output unit ``index`` (0-based)."""
        return self.start + index * self.jump


def receptive_field(layers: Sequence[LayerSpec]) -> list[ReceptiveFieldRow]:
    """Theoretical RF after each layer of a single-path (chain) network.

    Recurrences (Distill 2019, single-path case), starting from the input with
    ``r_0 = 1, j_0 = 1, start_0 = 0``::

        k_eff     = dilation * (k - 1) + 1
        r_out     = r_in + (k_eff - 1) * j_in
        j_out     = j_in * stride
        start_out = start_in + ((k_eff - 1) / 2 - padding) * j_in

    Args:
        layers: the conv/pool layers in forward order. Layers that do not change geometry
            (activations, batch norm, 1x1 stride-1 convs) may be included or omitted.

    Returns:
        One :class:`ReceptiveFieldRow` per input layer, same order (empty list for no layers).
        The network's RF is ``rows[-1].size``.
    """
    rows: list[ReceptiveFieldRow] = []
    size, jump, start = 1, 1, 0.0
    for spec in layers:
        k_eff = spec.effective_kernel
        # start must use the *incoming* jump, so update it before jump.
        start = start + ((k_eff - 1) / 2 - spec.padding) * jump
        size = size + (k_eff - 1) * jump
        jump = jump * spec.stride
        rows.append(ReceptiveFieldRow(name=spec.name, size=size, jump=jump, start=start))
    return rows


def _conv_leading_padding(padding: int | tuple[int, ...] | str, k: int, d: int, name: str) -> int:
    """Leading-side padding of a convolution, resolving the string forms 'valid' and 'same'."""
    if isinstance(padding, str):
        if padding == "valid":
            return 0
        # PyTorch 'same' (stride 1 only) pads d*(k-1) in total and puts the odd pixel at the end,
        # so the leading side gets the floor half.
        return d * (k - 1) // 2
    return square_geometry(padding, "padding", name)


# ------------------------------------------------------------------------ networks -> specs
# Layers that act on each pixel on its own (or on channels only): they leave the RF unchanged.
_POINTWISE = (
    nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.GroupNorm, nn.LayerNorm,
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid,
    nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, Swish,
    nn.modules.dropout._DropoutNd, nn.Identity,
    # Squeeze-and-excitation scales each channel by a gate computed from the global average of
    # the map: like the global pooling of a classifier head, that global context is not counted,
    # so the RF reported is that of the local (convolutional) path.
    ChannelAttention,
)
# The classifier head: after these there is no spatial map left (global pooling makes the RF the
# whole image; adaptive pools depend on the input size). A spatial layer after them is refused.
_HEAD = (nn.Flatten, nn.Linear, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
# Containers whose forward applies their children in registration order.
_CHAINS = (nn.Sequential, SimpleCNN, ResNet, PlainCNN, KernelSizeCNN, SwappableCNN, FullyConnectedNet, CBAM)
_FOREIGN_CHAINS = {"torchvision.models.alexnet.AlexNet", "torchvision.models.vgg.VGG",
                   "torchvision.models.resnet.ResNet"}
# torchvision's residual blocks: (residual branch in forward order, shortcut attribute).
_FOREIGN_BLOCKS = {
    "torchvision.models.resnet.BasicBlock": (("conv1", "bn1", "relu", "conv2", "bn2"), "downsample"),
    "torchvision.models.resnet.Bottleneck": (("conv1", "bn1", "relu", "conv2", "bn2", "relu", "conv3", "bn3"),
                                             "downsample"),
}


def _class_path(module: nn.Module) -> str:
    return f"{type(module).__module__}.{type(module).__name__}"


def _spatial_spec(name: str, m: nn.Module) -> LayerSpec | None:
    """The geometry of a conv/pool layer, or None when ``m`` is not one."""
    if isinstance(m, (nn.Conv2d, CustomConv2d)):
        k = square_geometry(m.kernel_size, "kernel_size", name)
        d = square_geometry(getattr(m, "dilation", 1), "dilation", name)
        s = square_geometry(m.stride, "stride", name)
        return LayerSpec(name, k, s, _conv_leading_padding(getattr(m, "padding", 0), k, d, name), d)
    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d, MixedPool2d)) or (isinstance(m, GeMPool2d) and m.kernel_size):
        k = square_geometry(m.kernel_size, "kernel_size", name)
        # stride=None means stride=kernel_size (the modules mostly resolve that themselves)
        s = square_geometry(m.stride if m.stride is not None else k, "stride", name)
        p = square_geometry(getattr(m, "padding", 0), "padding", name)
        d = square_geometry(getattr(m, "dilation", 1), "dilation", name)
        return LayerSpec(name, k, s, p, d)
    if isinstance(m, SpatialAttention):
        # y = x * sigmoid(conv_k(pool_c(x))), stride 1, padding k // 2: each output pixel depends on
        # the k x k window of the gate's conv (which contains the pixel itself): a k x k 'same' conv.
        return LayerSpec(name, m.kernel_size, 1, m.kernel_size // 2, 1)
    return None


def _branches(m: nn.Module) -> tuple[list[nn.Module], list[nn.Module]] | None:
    """(residual branch, shortcut branch) of a residual block, in forward order; None otherwise."""
    if isinstance(m, ResidualBlock):
        return m.residual_branch(), m.shortcut_branch()
    layout = _FOREIGN_BLOCKS.get(_class_path(m))
    if layout is not None:
        names, shortcut = layout
        short = getattr(m, shortcut)
        return [getattr(m, n) for n in names if hasattr(m, n)], [] if short is None else [short]
    return None


def _relative_rf(specs: list[LayerSpec]) -> ReceptiveFieldRow:
    """RF of a branch relative to its own input (the identity for no specs)."""
    rows = receptive_field(specs)
    return rows[-1] if rows else ReceptiveFieldRow("identity", 1, 1, 0.0)


class _Walk:
    """Depth-first walk of a module tree in forward order, collecting :class:`LayerSpec`."""

    def __init__(self) -> None:
        self.head: str | None = None   # the first head layer met, if any

    def module(self, name: str, m: nn.Module) -> list[LayerSpec]:
        label = name or "<root>"
        spec = _spatial_spec(name, m)
        if spec is not None:
            if self.head is not None:
                raise ValueError(f"receptive field: spatial layer {label} ({type(m).__name__}) comes after "
                                 f"the head layer {self.head}; there is no spatial map left")
            return [spec]
        if isinstance(m, _HEAD) or (isinstance(m, GeMPool2d) and not m.kernel_size):
            self.head = self.head or label
            return []
        if isinstance(m, _POINTWISE):
            return []
        branches = _branches(m)
        if branches is not None:
            return self.residual(name, m, *branches)
        if isinstance(m, _CHAINS) or _class_path(m) in _FOREIGN_CHAINS:
            return self.chain(name, list(m.named_children()))
        what = "container" if next(m.children(), None) is not None else "layer"
        raise ValueError(f"receptive field: unsupported {what} {label} ({type(m).__name__}); only chains "
                         "(nn.Sequential and the package's models), residual blocks, convolutions, pooling and "
                         "pointwise layers are supported (branching nets such as Inception or DenseNet are not)")

    def chain(self, prefix: str, children: list[tuple[str, nn.Module]]) -> list[LayerSpec]:
        specs: list[LayerSpec] = []
        for child_name, child in children:
            specs += self.module(f"{prefix}.{child_name}" if prefix else child_name, child)
        return specs

    def residual(self, name: str, block: nn.Module, main: list[nn.Module], shortcut: list[nn.Module]) -> list[LayerSpec]:
        """The RF of ``residual + shortcut`` is the union of the two branches' RFs. When the
        shortcut's interval lies inside the residual branch's (same total stride), the union is
        the residual branch, so the block is that chain; anything else is refused."""
        label = name or "<root>"
        if self.head is not None:
            raise ValueError(f"receptive field: block {label} comes after the head layer {self.head}")
        local_names = {id(mod): n for n, mod in block.named_modules() if n}

        def specs_of(branch: list[nn.Module]) -> list[LayerSpec]:
            return _Walk().chain(name, [(local_names[id(mod)], mod) for mod in branch])

        main_specs, short_specs = specs_of(main), specs_of(shortcut)
        a, b = _relative_rf(main_specs), _relative_rf(short_specs)
        if a.jump != b.jump:
            raise ValueError(f"receptive field: in block {label} the residual branch has stride {a.jump} and "
                             f"the shortcut {b.jump}; their outputs cannot be added")
        lo_a, hi_a = a.start - (a.size - 1) / 2, a.start + (a.size - 1) / 2
        lo_b, hi_b = b.start - (b.size - 1) / 2, b.start + (b.size - 1) / 2
        if lo_b < lo_a or hi_b > hi_a:
            raise ValueError(f"receptive field: in block {label} the shortcut sees input pixels the residual branch "
                             f"does not (shortcut [{lo_b:g}, {hi_b:g}] vs residual [{lo_a:g}, {hi_a:g}] relative to "
                             "the block input); the union of the two paths is not a chain")
        return main_specs


def layer_specs_from_module(model: nn.Module) -> list[LayerSpec]:
    """The conv/pool layers along the longest path of ``model``, in forward order, as :class:`LayerSpec`.

    What the walk understands, and how:

    * **Chains**: ``nn.Sequential``, the package's models (their ``forward`` applies their
      children in registration order), CBAM, and torchvision's AlexNet, VGG and ResNet.
    * **Spatial layers**: ``nn.Conv2d`` (incl. ``'same'``/``'valid'`` padding), the package's
      ``CustomConv2d``; ``nn.MaxPool2d``, ``nn.AvgPool2d``, ``MixedPool2d``, windowed ``GeMPool2d``;
      ``SpatialAttention(k)`` counts as a ``k x k`` stride-1 'same' conv (its gate looks at a
      ``k x k`` window).
    * **Pointwise layers** (no effect): normalisation, activations (incl. ``Swish``), dropout,
      identity, and squeeze-and-excitation ``ChannelAttention`` (its global gate is not counted,
      like a classifier's global pooling).
    * **Head** (ignored, and nothing spatial may follow): flatten, linear, adaptive and global
      (``GeMPool2d(None)``) pooling. So ``receptive_field(...)[-1]`` is the RF of the last
      conv/pool output.
    * **Residual blocks**: the package's ``ResidualBlock`` subclasses (which declare their
      branches) and torchvision's ``BasicBlock``/``Bottleneck``. The RF of ``residual + shortcut``
      is the union of both branches' RFs; when the shortcut's lies inside the residual branch's
      (identity, or a 1x1 projection with the block's stride), that is the residual branch, whose
      layers are returned. Walking the shortcut as part of the chain instead would apply the
      stage's stride twice.

    Anything else (Inception-style branching, DenseNet's concatenations, ``ModuleList``, unknown
    layers) raises a ``ValueError`` naming the module rather than returning a wrong RF.

    Args:
        model: the network; only module attributes are read (works on the meta device).

    Returns:
        The specs, each named by the layer's qualified name in ``model``.

    Raises:
        ValueError: an unsupported module or block (named in the message), a non-square geometry,
            or a spatial layer after the head.
    """
    return _Walk().module("", model)
