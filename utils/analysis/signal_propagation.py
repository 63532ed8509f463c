"""Vanishing/exploding gradients at initialisation: measured on a real batch, and predicted.

Regimes (:data:`REGIME_SPECS`) on the CIFAR ResNet-(6n+2) layout (stem + 3 stages of 2n 3x3 convs,
stride 2 where the width grows, GAP, linear; depth 8/20/56: n = 1/3/9). Measured and predicted:
``R = rms(dL/dW first conv) / rms(dL/dW last conv)`` along the main path, with the per-parameter
RMS ``||g|| / sqrt(numel)`` (the scale an optimiser step sees; whole-tensor norms of a 432-entry and a
36,864-entry tensor are not comparable), shortcut projections left out, and the classifier too, as its
gradient depends on how confident the random net's outputs are, which no variance argument covers (its
ratio is recorded beside R). Whole-tensor norms are kept in every row (``grad_norms``).

Prediction (He et al. 2015, "Delving deep into rectifiers", Sec. 2.2). Conv ``l``: weight variance
``v``, fan_in ``n = 9 c_in``, input ``x = relu(y)`` of a symmetric ``y``. Forward ``E[y_l^2] = n v
E[x_{l-1}^2] + Var[b]``, ``E[x^2] = E[y^2]/2``; backward ``Var[dx_{l-1}] = (9 c_out / s^2) v Var[dy_l]``
(stride ``s``: an input pixel feeds ``9/s^2`` outputs), ``Var[dy] = Var[dx]/2``. Weight gradients
with independent terms: ``||dL/dW_l||^2 ~ numel * positions * Var[dy_l] * E[x_{l-1}^2]`` (after BN
only the batch variance of ``x`` counts: BN's backward has zero mean per channel), so ``rms_l^2 ~
positions * Var[dy_l] * E[x_{l-1}^2]``; in R the batch size and the loss's gradient cancel. Per conv
(gains of the RMS, which equal those of the norm wherever the width is constant):

* ``pytorch_default``: weights and biases ``U(+-1/sqrt(n))``, ``v = Var[b] = 1/(3n)``: backward
  gain ``(c_out/c_in)/(6 s^2)``, i.e. log10 R falls ~0.39 per conv. The forward signal does not
  vanish: the biases hold ``E[x^2]`` near ``1/(5n)`` (activations stop depending on the input).
* ``kaiming``: ``v = 2/n``: forward gain 1, backward ``(c_out/c_in)/s^2``; R independent of depth.
* ``kaiming_bn``: BN divides the gradient by the batch std of the conv output, ``sigma^2 = n v
  Var[x]``, which sees only the batch *fluctuation* of ``x = relu(z)``: ``Var[x] = (1 - 1/pi)/2``
  while ``E[x^2] = 1/2``. Backward gain ``(c_out/c_in)/s^2 * pi/(pi-1)``: gradients grow by
  ``sqrt(pi/(pi-1)) ~ 1.21`` per conv towards the input, the rate of Yang et al. 2019 ("A mean
  field theory of batch normalization"; mechanism: Paik & Choi 2023). He's zero-mean reading
  (``Var[x] = E[x^2]``, ``relu_mean=False``) gives a depth-independent R instead.
* ``residual``: block ``relu(x + BN(conv(relu(BN(conv x)))))``, projection + BN where the shape
  changes. Gaussian closure: ``x + r`` taken as Gaussian (stream mean, stream variance + 1), so the
  stream variance grows about linearly within a stage and the block's backward gain
  ``P(x + r > 0) * (1 + G_b)`` has a branch share ``G_b = pi/(pi-1) / Var[x_b]`` that shrinks along
  the stage (BN biases blocks towards the identity, De & Smith 2020): no exponential trend.

On CIFAR-10 the plain slopes and the bias floor match; the BN and residual R measured lie between
the two readings (correlated conv features damp the growth, Paik & Choi 2023): both are reported.
Not modelled: finite-width fluctuations (Hanin 2018). Default-init gradients underflow float32 at
depth 56, so that regime runs in float64 (weights drawn in float32, then cast).
"""

from __future__ import annotations

import math
from collections import namedtuple
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.cnn_models import BasicBlock, PlainCNN, ResidualBlock, ResNet, resnet_like_plain
from models.init import InitRecord, init_weights
from utils.engine.gradients import first_last_ratio
from utils.analysis.statistics import seed_summary

__all__ = ["REGIMES", "REGIME_SPECS", "convs_per_stage", "init_regime_model", "main_path_convs", "gradient_norms_at_init",
           "predicted_profile", "predicted_log10_ratio", "InitStudyRow", "run_init_study", "summarise_init_study"]


@dataclass(frozen=True)
class RegimeSpec:
    """How a regime's net is built and initialised, and the dtype its gradients need."""
    residual: bool
    norm: bool
    scheme: str           # models.init scheme
    dtype: torch.dtype
    description: str


REGIME_SPECS = {
    "pytorch_default": RegimeSpec(False, False, "pytorch_default", torch.float64, "plain, no BN, PyTorch default init"),
    "kaiming": RegimeSpec(False, False, "kaiming", torch.float32, "plain, no BN, He normal fan_in"),
    "kaiming_bn": RegimeSpec(False, True, "kaiming", torch.float32, "plain + BN, He normal fan_in"),
    "residual": RegimeSpec(True, True, "kaiming", torch.float32, "BasicBlock ResNet + BN, He, no zero-init residual"),
}
REGIMES = tuple(REGIME_SPECS)


def _spec(regime: str) -> RegimeSpec:
    if regime not in REGIME_SPECS:
        raise ValueError(f"unknown regime {regime!r}; choose from {REGIMES}")
    return REGIME_SPECS[regime]


def convs_per_stage(depth: int) -> int:
    """``n`` of a ResNet-(6n+2) (stem + 6n convs + classifier = ``depth`` weighted layers)."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"depth must be 6n+2 with n >= 1 (8, 14, 20, ..., 56), got {depth!r}")
    return (depth - 2) // 6


def init_regime_model(regime: str, depth: int, in_channels: int = 3, num_classes: int = 10,
                      widths: Sequence[int] = (16, 32, 64)) -> tuple[nn.Module, InitRecord]:
    """The regime's net of ``depth`` weighted layers, built and initialised (seed it beforehand)."""
    spec, n = _spec(regime), convs_per_stage(depth)
    model = (ResNet(BasicBlock, tuple(widths), (n,) * len(widths), in_channels, num_classes, norm=spec.norm)
             if spec.residual else PlainCNN(resnet_like_plain(n, widths), in_channels, num_classes, norm=spec.norm))
    return model, init_weights(model, spec.scheme, zero_init_residual=False)


def main_path_convs(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """Convolutions in forward order, minus those in any residual block's shortcut branch."""
    shortcut = {id(m) for block in model.modules() if isinstance(block, ResidualBlock)
                for branch in block.shortcut_branch() for m in branch.modules()}
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d) and id(m) not in shortcut]


def gradient_norms_at_init(model: nn.Module, images: Tensor, labels: Tensor) -> dict:
    """One forward/backward (train mode, mean cross-entropy): per main-path conv the weight-gradient
    L2 norm, its per-parameter RMS and the mean square of its output (He's forward "variance"
    E[y^2]), the classifier's, and the first/last ratios of the RMS."""
    convs = main_path_convs(model)
    classifier, mean_square = [m for m in model.modules() if isinstance(m, nn.Linear)][-1], []
    hooks = [m.register_forward_hook(lambda _m, _i, out: mean_square.append(float(out.detach().pow(2).mean())))
             for _, m in convs]
    model.train().zero_grad(set_to_none=True)
    try:
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
    finally:
        for h in hooks:
            h.remove()
    norms, head = [float(m.weight.grad.norm()) for _, m in convs], float(classifier.weight.grad.norm())
    rms = [n / math.sqrt(m.weight.numel()) for n, (_, m) in zip(norms, convs)]
    head_rms = head / math.sqrt(classifier.weight.numel())
    return {"layers": [name for name, _ in convs], "grad_norms": norms, "grad_rms": rms,
            "classifier_grad_norm": head, "classifier_grad_rms": head_rms,
            "forward_mean_square": mean_square, "loss": float(loss.detach()),
            "ratio_first_last_conv": float(first_last_ratio([rms])[0]),
            "ratio_first_classifier": float(first_last_ratio([[rms[0], head_rms]])[0])}


# ----------------------------------------------------------------------------- prediction
def _relu_var(relu_mean: bool) -> float:
    """Batch variance of ``relu(z)``, ``z ~ N(0, 1)``: ``1/2 - 1/(2 pi)``; He's zero-mean reading: 1/2."""
    return 0.5 - 1 / (2 * math.pi) if relu_mean else 0.5


def _rectified(mean: float, var: float) -> tuple[float, float, float]:
    """``E[relu(s)]``, ``E[relu(s)^2]``, ``P(s > 0)`` for ``s ~ N(mean, var)``."""
    sd, t = math.sqrt(var), mean / math.sqrt(var)
    cdf, pdf = 0.5 * (1 + math.erf(t / math.sqrt(2))), math.exp(-t * t / 2) / math.sqrt(2 * math.pi)
    return mean * cdf + sd * pdf, (mean * mean + var) * cdf + mean * sd * pdf, cdf


_Conv = namedtuple("_Conv", "c_in c_out stride size_out fan_in weight_var")   # a 3x3 conv; size_out in px


def _conv(c_in: int, c_out: int, stride: int, size_in: int, scheme: str) -> _Conv:
    n = 9 * c_in
    return _Conv(c_in, c_out, stride, -(-size_in // stride), n, 2 / n if scheme == "kaiming" else 1 / (3 * n))


def predicted_profile(regime: str, depth: int, widths: Sequence[int] = (16, 32, 64), in_channels: int = 3,
                      image_size: int = 32, relu_mean: bool = True) -> tuple[list[float], list[float]]:
    """Per main-path conv, the module docstring's predicted ``log10(rms(dL/dW_l) / rms(dL/dW_last conv))``
    and ``E[y_l^2]``. ``relu_mean=False``: He's zero-mean reading (BN's batch variance of a ReLU
    output taken as its second moment; changes only the BN regimes)."""
    spec, n = _spec(regime), convs_per_stage(depth)
    profile = _residual_profile if spec.residual else _plain_profile
    convs, sq, g, inputs = profile(spec, n, widths, in_channels, image_size, relu_mean)
    # weight-gradient energy per parameter ~ positions * Var[grad at conv output] * (second moment of its input)
    log_rms = 0.5 * np.log10([c.size_out ** 2 * gi * ai for c, gi, ai in zip(convs, g, inputs)])
    return (log_rms - log_rms[-1]).tolist(), sq


def predicted_log10_ratio(regime: str, depth: int, widths: Sequence[int] = (16, 32, 64), in_channels: int = 3,
                          image_size: int = 32, relu_mean: bool = True) -> float:
    """Predicted ``log10(rms(dL/dW first conv) / rms(dL/dW last conv))`` (module docstring)."""
    return predicted_profile(regime, depth, widths, in_channels, image_size, relu_mean)[0][0]


def _plain_profile(spec: RegimeSpec, n: int, widths: Sequence[int], in_channels: int, size: int, relu_mean: bool):
    """Convs, predicted E[y^2], Var[grad at conv output] (relative) and input moment per conv."""
    chain, c = [], in_channels
    for i, w in enumerate(resnet_like_plain(n, widths)):
        chain.append(_conv(c, w, 2 if (i > 0 and w > c) else 1, size, spec.scheme))
        c, size = w, chain[-1].size_out
    has_bias = not spec.norm and spec.scheme == "pytorch_default"     # U(+-1/sqrt(n)): variance 1/(3n)
    m2, fluct = 1.0, 1.0          # normalised images: mean 0, variance 1
    sq, sigma2, inputs = [], [], []
    for conv in chain:
        inputs.append(fluct if spec.norm else m2)    # BN's backward has zero mean: only the fluctuation counts
        sq.append(conv.fan_in * conv.weight_var * m2 + has_bias / (3 * conv.fan_in))
        sigma2.append(conv.fan_in * conv.weight_var * fluct if spec.norm else 1.0)
        m2, fluct = (0.5, _relu_var(relu_mean)) if spec.norm else (sq[-1] / 2, sq[-1] / 2)
    g = [0.5 / sigma2[-1]]          # Var[grad at last conv output], for Var[grad at its ReLU output] = 1
    for conv, s2 in zip(chain[:0:-1], sigma2[-2::-1]):
        g.append(0.5 * 9 * conv.c_out * conv.weight_var / conv.stride ** 2 * g[-1] / s2)
    return chain, sq, g[::-1], inputs


def _residual_profile(spec: RegimeSpec, n: int, widths: Sequence[int], in_channels: int, size: int,
                      relu_mean: bool):
    """As :func:`_plain_profile` for the BasicBlock ResNet (He init, BN), Gaussian closure."""
    stem = _conv(in_channels, widths[0], 1, size, "kaiming")
    convs, sq, moments, c = [stem], [stem.fan_in * stem.weight_var], [], widths[0]
    mean, m2 = math.sqrt(1 / (2 * math.pi)), 0.5     # x_0 = relu(BN(stem output)), a rectified unit Gaussian
    for i, w in enumerate(widths):
        for j in range(n):
            stride = 2 if (i > 0 and j == 0) else 1
            c1, c2 = _conv(c, w, stride, size, "kaiming"), _conv(w, w, 1, -(-size // stride), "kaiming")
            var_x = m2 - mean * mean if relu_mean else m2
            s_mean, s_var = (0.0, 2.0) if (stride != 1 or c != w) else (mean, var_x + 1.0)
            moments.append((var_x, stride, c, w, s_mean, s_var))
            convs += [c1, c2]
            sq += [c1.fan_in * c1.weight_var * m2, c2.fan_in * c2.weight_var * 0.5]
            mean, m2, _ = _rectified(s_mean, s_var)
            c, size = w, c1.size_out
    dx, g, inputs = 1.0, [], []         # Var[grad at the last block's output] = 1 (relative)
    for var_x, stride, c_in, c_out, s_mean, s_var in reversed(moments):
        ds = _rectified(s_mean, s_var)[2] * dx
        g_conv2 = ds / (2 * _relu_var(relu_mean))
        g_conv1 = 0.5 * (2 * g_conv2) / (2 * var_x)             # n v = 2 (He), sigma1^2 = 2 Var[x_b]
        branch = 2 * (c_out / c_in) / stride ** 2 * g_conv1
        shortcut = ds if (stride == 1 and c_in == c_out) else (c_out / c_in) / stride ** 2 * ds / var_x
        dx = branch + shortcut
        g, inputs = g + [g_conv2, g_conv1], inputs + [_relu_var(relu_mean), var_x]
    g.append(0.5 * dx / (stem.fan_in * stem.weight_var))       # stem: sigma^2 = n v * Var[image] = 2
    inputs.append(1.0)
    return convs, sq, g[::-1], inputs[::-1]


# ---------------------------------------------------------------------------------- study
@dataclass
class InitStudyRow:
    """One net: first/last-conv gradient-RMS ratio measured and predicted (ReLU-mean and zero-mean
    readings); per main-path conv its gradient RMS and norm and its mean square output (measured,
    predicted)."""
    regime: str
    depth: int
    seed: int
    scheme: str
    dtype: str
    measured_ratio: float
    predicted_ratio: float
    predicted_ratio_zero_mean: float
    measured_ratio_classifier: float      # rms(grad first conv) / rms(grad classifier)
    loss: float
    layers: list[str] = field(default_factory=list)
    grad_rms: list[float] = field(default_factory=list)        # per-parameter RMS ||g|| / sqrt(numel)
    grad_norms: list[float] = field(default_factory=list)      # whole-tensor L2 norms
    forward_mean_square: list[float] = field(default_factory=list)
    predicted_forward_mean_square: list[float] = field(default_factory=list)
    predicted_log10_relative_grad: list[float] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def run_init_study(images: Tensor, labels: Tensor, depths: Sequence[int], regimes: Sequence[str] = REGIMES,
                   seeds: Sequence[int] = (0, 1, 2), widths: Sequence[int] = (16, 32, 64),
                   num_classes: int = 10) -> list[InitStudyRow]:
    """One row per (regime, depth, seed): the net built under ``seed``, one forward/backward on
    ``images`` (normalised, ``(N, C, H, W)``) in the regime's dtype. The global RNG is left as it was."""
    rows, c, size = [], images.shape[1], images.shape[-1]
    for regime, depth in ((r, d) for r in regimes for d in depths):
        dtype = _spec(regime).dtype
        pred_grad, pred_square = predicted_profile(regime, depth, widths, c, size)
        zero_mean = predicted_log10_ratio(regime, depth, widths, c, size, relu_mean=False)
        for seed in seeds:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model, record = init_regime_model(regime, depth, c, num_classes, widths)
            m = gradient_norms_at_init(model.to(dtype), images.to(dtype), labels)
            rows.append(InitStudyRow(regime, depth, seed, record.scheme, str(dtype).removeprefix("torch."),
                                     m["ratio_first_last_conv"], 10 ** pred_grad[0], 10 ** zero_mean,
                                     m["ratio_first_classifier"], m["loss"], m["layers"], m["grad_rms"],
                                     m["grad_norms"], m["forward_mean_square"], pred_square, pred_grad))
    return rows


def _log10(values: Sequence[float]) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    return np.log10(np.where(arr > 0, arr, np.nan))      # 0 (underflow) or NaN -> NaN


def summarise_init_study(rows: Sequence[InitStudyRow]) -> list[dict]:
    """Per (regime, depth), in order of appearance: ``seed_summary`` of log10 of the measured ratio
    (mean, 95 % interval) with its min/max over seeds, the predictions, and the mean per-layer
    profile ``log10(rms(grad conv) / rms(grad last conv))`` beside the predicted one."""
    groups: dict[tuple[str, int], list[InitStudyRow]] = {}
    for r in rows:
        groups.setdefault((r.regime, r.depth), []).append(r)
    out = []
    for (regime, depth), rs in groups.items():
        log_r = _log10([r.measured_ratio for r in rs])
        ok = log_r[np.isfinite(log_r)]
        profiles = np.stack([_log10(r.grad_rms) - _log10(r.grad_rms[-1:]) for r in rs])
        out.append({"regime": regime, "depth": depth, "seeds": [r.seed for r in rs],
                    "log10_ratio": seed_summary(log_r).as_dict(),
                    "log10_ratio_min": float(ok.min()) if ok.size else math.nan,
                    "log10_ratio_max": float(ok.max()) if ok.size else math.nan,
                    "predicted_log10_ratio": math.log10(rs[0].predicted_ratio),
                    "predicted_log10_ratio_zero_mean": math.log10(rs[0].predicted_ratio_zero_mean),
                    "log10_ratio_classifier": seed_summary(_log10([r.measured_ratio_classifier for r in rs])).as_dict(),
                    "layers": rs[0].layers,
                    "log10_relative_grad": [float(col[np.isfinite(col)].mean()) if np.isfinite(col).any() else math.nan
                                            for col in profiles.T],
                    "predicted_log10_relative_grad": rs[0].predicted_log10_relative_grad,
                    "forward_mean_square": np.mean([r.forward_mean_square for r in rs], axis=0).tolist(),
                    "predicted_forward_mean_square": rs[0].predicted_forward_mean_square})
    return out
