"""Convolutional networks of the study: simple CNNs, residual blocks and the nets built from them.

Every model maps ``(N, C, H, W)`` images to ``(N, num_classes)`` logits and works for any input
size that survives its down-sampling (global average pooling before the classifier).

Blocks (one class each, in the shape of kuangliu/pytorch-cifar ``models/resnet.py``: a class
attribute ``expansion`` and a ``ResNet`` that builds its stages with ``_make_layer``), written from
scratch. Unlike kuangliu's, a block is given its *output* width ``out_ch``; ``expansion`` is the
ratio of that output width to the width its 3x3 convolution works at:
  * :class:`BasicBlock`      3x3 -> 3x3, identity or 1x1 projection shortcut (He et al. 2016)
  * :class:`BottleneckBlock` 1x1 reduce -> 3x3 -> 1x1 expand (x4), projection when shape changes
  * :class:`WideBlock`       pre-activation 3x3 -> dropout -> 3x3, widened (Zagoruyko & Komodakis 2016)
  * :class:`PreActBlock`     the same pre-activation block without dropout (He et al. 2016b), the
                             control that separates pre-activation from width

BatchNorm or not: every model takes ``norm``; :func:`norm_layer` is the one place that turns it
into a layer (BatchNorm2d, or Identity), and a conv followed by BN has no bias.

Initialisation: constructors leave PyTorch's default init; the experiment applies its recorded
choice afterwards with :func:`models.init.init_weights`. Every block is a :class:`ResidualBlock`
and declares its branches and its "residual end", so neither the initialiser nor the receptive
field calculator has to guess from attribute names.
"""

from __future__ import annotations

from typing import Callable, Sequence

from torch import Tensor, nn


def norm_layer(channels: int, enabled: bool) -> nn.Module:
    """``BatchNorm2d(channels)`` when ``enabled``, else ``Identity``: how every block chooses."""
    return nn.BatchNorm2d(channels) if enabled else nn.Identity()


def conv_bn_act(in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1, norm: bool = True,
                act: bool = True) -> nn.Sequential:
    """``Conv(k, 'same' padding) -> [BatchNorm] -> [ReLU]``; no conv bias when BN follows.

    Switched-off layers are left out of the ``Sequential`` (not Identity placeholders), so the
    indices of the layers, and hence the parameter names, are those of the plain chain.
    """
    layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, kernel_size, stride, kernel_size // 2, bias=not norm)]
    if norm:
        layers.append(norm_layer(out_ch, True))
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class SimpleCNN(nn.Module):
    """2-3 conv layers, each ``conv3x3 -> ReLU -> maxpool2``, then a small MLP head.

    The classic MNIST CNN (pytorch/examples ``mnist/main.py`` family). ``channels`` sets the number
    and width of conv layers.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, channels: Sequence[int] = (32, 64),
                 image_size: int = 28, hidden: int = 128, dropout: float = 0.0, norm: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c, size = in_channels, image_size
        for out in channels:
            layers += [*conv_bn_act(c, out, 3, norm=norm), nn.MaxPool2d(2)]
            c, size = out, size // 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(c * size * size, hidden),
                                        nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


# ------------------------------------------------------------------------------------- blocks
class ResidualBlock(nn.Module):
    """A block computing ``residual(x) + shortcut(x)`` (a ReLU may follow the sum).

    Subclasses declare their structure for code that needs it (``models.init`` and
    ``utils.analysis.receptive_field``):

    * :meth:`residual_branch` / :meth:`shortcut_branch`: the modules of each branch in forward
      order (an empty shortcut is the identity);
    * :meth:`residual_end`: the last affine layer of the residual branch (the last BN, or the last
      conv when there is no BN after it). Setting its weight and bias to zero makes the residual
      branch output exactly zero, so the block starts as its shortcut ("zero-init residual").
    """

    expansion = 1            # output width / width of the block's 3x3 convolution
    pre_activation = False   # True: the block normalises its own input (no BN-ReLU in the stem)

    def residual_branch(self) -> list[nn.Module]:
        raise NotImplementedError

    def shortcut_branch(self) -> list[nn.Module]:
        raise NotImplementedError

    def residual_end(self) -> nn.Module:
        raise NotImplementedError


class BasicBlock(ResidualBlock):
    """``x -> conv3x3(stride) -> BN -> ReLU -> conv3x3 -> BN  (+ shortcut(x)) -> ReLU``.

    ``(N, in_ch, H, W) -> (N, out_ch, H/stride, W/stride)``. The shortcut is the identity when the
    shape is unchanged, else a 1x1 strided convolution (+BN): option B of the ResNet paper.
    """

    expansion = 1
    pre_activation = False

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, norm: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=not norm)
        self.bn1 = norm_layer(out_ch, norm)
        self.drop = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=not norm)
        self.bn2 = norm_layer(out_ch, norm)
        self.shortcut = _projection(in_ch, out_ch, stride, norm)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(self.drop(out)))
        return self.relu(out + self.shortcut(x))

    def residual_branch(self) -> list[nn.Module]:
        return [self.conv1, self.bn1, self.relu, self.drop, self.conv2, self.bn2]

    def shortcut_branch(self) -> list[nn.Module]:
        return [self.shortcut]

    def residual_end(self) -> nn.Module:
        return self.bn2 if isinstance(self.bn2, nn.BatchNorm2d) else self.conv2


class BottleneckBlock(ResidualBlock):
    """``1x1 (out/4) -> 3x3 (out/4, stride) -> 1x1 (out)`` with BN+ReLU, plus shortcut, then ReLU.

    ``(N, in_ch, H, W) -> (N, out_ch, H/stride, W/stride)``; the 3x3 works on ``out_ch // expansion``
    channels, which is what makes the block cheap at a given output width (He et al. 2016, Fig. 5).
    The stride sits on the 3x3 (torchvision's "ResNet v1.5").
    """

    expansion = 4
    pre_activation = False

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, norm: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        mid = max(1, out_ch // self.expansion)
        self.conv1 = nn.Conv2d(in_ch, mid, 1, bias=not norm)
        self.bn1 = norm_layer(mid, norm)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=not norm)
        self.bn2 = norm_layer(mid, norm)
        self.drop = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv3 = nn.Conv2d(mid, out_ch, 1, bias=not norm)
        self.bn3 = norm_layer(out_ch, norm)
        self.shortcut = _projection(in_ch, out_ch, stride, norm)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.drop(out)))
        return self.relu(out + self.shortcut(x))

    def residual_branch(self) -> list[nn.Module]:
        return [self.conv1, self.bn1, self.relu, self.conv2, self.bn2, self.relu, self.drop, self.conv3, self.bn3]

    def shortcut_branch(self) -> list[nn.Module]:
        return [self.shortcut]

    def residual_end(self) -> nn.Module:
        return self.bn3 if isinstance(self.bn3, nn.BatchNorm2d) else self.conv3


class WideBlock(ResidualBlock):
    """Pre-activation wide block: ``BN -> ReLU -> conv3x3(stride) -> BN -> ReLU -> Dropout -> conv3x3``.

    ``(N, in_ch, H, W) -> (N, out_ch, H/stride, W/stride)``; the output is ``residual + shortcut``
    with no ReLU after the addition (the next block's BN-ReLU comes first). The projection shortcut
    is a bare 1x1 conv on the pre-activated input, as in the WRN reference code.

    Residual end: no BN follows the last conv of a pre-activation branch, so the zero-init
    equivalent of "last BN gamma = 0" is ``conv2``'s weight and bias = 0 (as Fixup, Zhang et al.
    2019, zeroes the last layer of each branch): the block then starts as its shortcut, and
    ``conv2`` still gets a gradient at the first step (its input is not zero), so it switches on.
    """

    expansion = 1
    pre_activation = True

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, norm: bool = True, dropout: float = 0.3) -> None:
        super().__init__()
        self.bn1 = norm_layer(in_ch, norm)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=not norm)
        self.bn2 = norm_layer(out_ch, norm)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=True)
        self.relu = nn.ReLU(inplace=False)
        self.shortcut = (nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)
                         if stride != 1 or in_ch != out_ch else None)

    def forward(self, x: Tensor) -> Tensor:
        pre = self.relu(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(self.drop(self.relu(self.bn2(out))))
        # The projection sees the pre-activated input: both paths start from the same normalised x.
        return out + (self.shortcut(pre) if self.shortcut is not None else x)

    def residual_branch(self) -> list[nn.Module]:
        return [self.bn1, self.relu, self.conv1, self.bn2, self.relu, self.drop, self.conv2]

    def shortcut_branch(self) -> list[nn.Module]:
        return [] if self.shortcut is None else [self.bn1, self.relu, self.shortcut]

    def residual_end(self) -> nn.Module:
        return self.conv2


class PreActBlock(WideBlock):
    """Pre-activation basic block (He et al. 2016b, "Identity mappings"): ``BN -> ReLU -> conv3x3 ->
    BN -> ReLU -> conv3x3``, no dropout by default.

    The maths of :class:`WideBlock` (whose width is a property of the net, not of the block); its
    own class so that a pre-activation net at basic widths is named for what it is: the control
    that tells pre-activation apart from width.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, norm: bool = True, dropout: float = 0.0) -> None:
        super().__init__(in_ch, out_ch, stride=stride, norm=norm, dropout=dropout)


def _projection(in_ch: int, out_ch: int, stride: int, norm: bool) -> nn.Module:
    """Identity when the shape is kept, else ``conv1x1(stride) -> [BN]`` (left out like in conv_bn_act)."""
    if stride == 1 and in_ch == out_ch:
        return nn.Identity()
    return conv_bn_act(in_ch, out_ch, 1, stride, norm=norm, act=False)


# --------------------------------------------------------------------------------- networks
class ResNet(nn.Module):
    """Stem -> residual stages -> global average pool -> [Dropout] -> Linear.

    ``stage_channels[i]`` is the output width of stage ``i``, ``blocks_per_stage[i]`` its number of
    blocks; every stage after the first halves the resolution in its first block. For
    pre-activation blocks a final BN-ReLU precedes the pooling. Built with PyTorch's default init;
    ``models.init.init_weights`` applies a scheme afterwards.
    """

    def __init__(self, block: type[ResidualBlock] = BasicBlock, stage_channels: Sequence[int] = (32, 64, 128),
                 blocks_per_stage: Sequence[int] = (1, 1, 1), in_channels: int = 3, num_classes: int = 10,
                 stem_channels: int | None = None, norm: bool = True, dropout: float = 0.0,
                 block_dropout: float = 0.0, stem_pool: bool = False) -> None:
        super().__init__()
        if len(stage_channels) != len(blocks_per_stage):
            raise ValueError("stage_channels and blocks_per_stage must have the same length")
        stem_ch = stem_channels or stage_channels[0]
        pre = block.pre_activation
        stem: list[nn.Module] = [nn.Conv2d(in_channels, stem_ch, 3, 1, 1, bias=not norm or pre)]
        if not pre:  # pre-activation blocks normalise their own input
            stem += [norm_layer(stem_ch, norm), nn.ReLU(inplace=True)]
        if stem_pool:
            stem.append(nn.MaxPool2d(2))
        self.stem = nn.Sequential(*stem)
        self.in_ch = stem_ch
        self.stages = nn.Sequential(*(
            self._make_layer(block, width, n, stride=1 if i == 0 else 2, norm=norm, dropout=block_dropout)
            for i, (width, n) in enumerate(zip(stage_channels, blocks_per_stage))))
        c = self.in_ch
        self.final_act = nn.Sequential(norm_layer(c, norm), nn.ReLU(inplace=True)) if pre else nn.Identity()
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(c, num_classes))

    def _make_layer(self, block: type[ResidualBlock], width: int, num_blocks: int, stride: int, norm: bool,
                    dropout: float) -> nn.Sequential:
        """One stage: ``num_blocks`` blocks of output width ``width``, the first with ``stride``."""
        blocks = []
        for s in [stride if j == 0 else 1 for j in range(num_blocks)]:
            blocks.append(block(self.in_ch, width, stride=s, norm=norm, dropout=dropout))
            self.in_ch = width
        return nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.final_act(self.stages(self.stem(x))))


class PlainCNN(nn.Module):
    """A chain of 3x3 convolutions (``conv -> [BN] -> ReLU``), no shortcuts, then GAP + Linear.

    ``channels[i]`` is the width of conv ``i``; where the width grows the conv has stride 2, so the
    resolution halves exactly where a :class:`ResNet` of the same widths would halve it. This is
    the "plain" network of He et al. (2016), used to show what depth does without residuals.
    Built with PyTorch's default conv init (variance ``1/(3 fan_in)``), under which an
    unnormalised deep chain shrinks its signal and gradients layer by layer; ``models.init``
    gives it He init.
    """

    def __init__(self, channels: Sequence[int], in_channels: int = 3, num_classes: int = 10, norm: bool = True,
                 kernel_size: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        layers, c = [], in_channels
        for i, width in enumerate(channels):
            stride = 2 if (i > 0 and width > c) else 1
            layers.append(conv_bn_act(c, width, kernel_size, stride, norm=norm))
            c = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(c, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def resnet_like_plain(convs_per_stage: int, widths: Sequence[int] = (16, 32, 64)) -> list[int]:
    """Widths of a plain net with the depth of a CIFAR ResNet-(6n+2): stem + 2n convs per stage."""
    return [widths[0]] + [w for w in widths for _ in range(2 * convs_per_stage)]


class KernelSizeCNN(nn.Module):
    """Three stages of ``conv(k) -> BN -> ReLU -> maxpool2`` at widths ``(w, 2w, 4w)``, GAP, Linear.

    ``kernel_size`` is the (odd) size ``k`` of every stage's convolution. With ``reduce_1x1`` every
    stage after the first starts with a 1x1 conv that *reduces* its input's ``c`` channels to
    ``c // 2`` before the ``k x k`` conv to ``w_i`` (the Inception / bottleneck reduction; the
    study's "1x1+3x3" variant is ``k = 3`` with it). The first stage has no reduction: its input
    is the 3-channel image, which a 1x1 conv could only expand. The
    experiment picks ``width`` per variant so all have the same number of parameters
    (``utils.engine.model_stats.solve_width_for_params``).

    ``stage_widths`` (optional) replaces ``(w, 2w, 4w)`` by explicit per-stage widths. Why: for a
    7x7 net the base width is ~21, where one width step changes the parameter count by ~10 %; the
    last stage holds most parameters, so tuning its width alone gives ~1 % steps (see
    ``homework_cnn_architecture_analysis.match_kernel_widths``).
    """

    def __init__(self, kernel_size: int, width: int, in_channels: int = 3, num_classes: int = 10,
                 stage_widths: Sequence[int] | None = None, reduce_1x1: bool = False) -> None:
        super().__init__()
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd int ('same' padding), got {kernel_size!r}")
        widths = tuple(stage_widths) if stage_widths is not None else (width, 2 * width, 4 * width)
        if len(widths) != 3 or min(widths) < 1:
            raise ValueError(f"stage_widths must be 3 positive ints, got {widths}")
        layers, c = [], in_channels
        for i, w in enumerate(widths):
            if reduce_1x1 and i > 0:
                layers += [*conv_bn_act(c, max(1, c // 2), 1), *conv_bn_act(max(1, c // 2), w, kernel_size)]
            else:
                layers += [*conv_bn_act(c, w, kernel_size)]
            layers.append(nn.MaxPool2d(2))
            c = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes))
        self.kernel_size, self.reduce_1x1, self.stage_widths = kernel_size, reduce_1x1, widths

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


class SwappableCNN(nn.Module):
    """A small CNN whose conv, activation, pooling, attention and head pooling are injected.

    Three stages ``conv3x3 -> BN -> act -> [attention] -> pool`` at widths ``(w, 2w, 4w)``, then
    ``head_pool -> Linear``. The custom-layer study swaps one factory at a time, so every
    difference in the results is due to that one layer.
    """

    def __init__(self, width: int = 32, in_channels: int = 3, num_classes: int = 10,
                 conv: Callable[..., nn.Module] = nn.Conv2d, act: Callable[[], nn.Module] = nn.ReLU,
                 pool: Callable[[], nn.Module] = lambda: nn.MaxPool2d(2),
                 attention: Callable[[int], nn.Module] | None = None,
                 head_pool: Callable[[], nn.Module] = lambda: nn.AdaptiveAvgPool2d(1)) -> None:
        super().__init__()
        layers, c = [], in_channels
        for w in (width, 2 * width, 4 * width):
            layers += [conv(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), act()]
            if attention is not None:
                layers.append(attention(w))
            layers.append(pool())
            c = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(head_pool(), nn.Flatten(), nn.Linear(c, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))
