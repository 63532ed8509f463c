"""Gradients at initialisation (utils/analysis/signal_propagation.py): the regimes build the nets and inits
they name, the variance-propagation prediction has the per-layer gains it derives, the measurement
shows vanishing gradients under PyTorch's default init and not under Kaiming, and the figure is
written."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from models.cnn_models import ResNet
from utils.studies.architecture import figures as plots_architecture
from utils.analysis.signal_propagation import (REGIMES, convs_per_stage, gradient_norms_at_init, init_regime_model,
                                      main_path_convs, predicted_log10_ratio, predicted_profile, run_init_study,
                                      summarise_init_study)

LOG10_SQRT6 = 0.5 * math.log10(6)


def _batch(n: int = 16, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.randint(0, 10, (n,), generator=g)


def _built(regime: str, depth: int, seed: int = 0):
    torch.manual_seed(seed)
    return init_regime_model(regime, depth)


@pytest.mark.parametrize("depth,n", [(8, 1), (20, 3), (56, 9)])
def test_depth_is_the_resnet_6n_plus_2_layout(depth, n):
    assert convs_per_stage(depth) == n
    for regime in REGIMES:
        model, _ = _built(regime, depth)
        convs = main_path_convs(model)
        assert len(convs) == depth - 1                       # + the classifier = depth weighted layers
        assert [m.out_channels for _, m in convs][-1] == 64
    residual, _ = _built("residual", depth)
    assert isinstance(residual, ResNet)
    all_convs = [m for m in residual.modules() if isinstance(m, nn.Conv2d)]
    assert len(all_convs) == depth - 1 + 2                   # the two projection shortcuts are left out


@pytest.mark.parametrize("bad", [7, 10, 2, 8.0, True])
def test_depth_that_is_not_6n_plus_2_is_refused(bad):
    with pytest.raises(ValueError, match="6n\\+2"):
        convs_per_stage(bad)


def test_unknown_regime_is_refused():
    with pytest.raises(ValueError, match="unknown regime"):
        init_regime_model("xavier", 8)
    with pytest.raises(ValueError, match="unknown regime"):
        predicted_log10_ratio("xavier", 8)


@pytest.mark.parametrize("regime,scheme,std_of_fan_in,has_bn", [
    ("pytorch_default", "pytorch_default", lambda n: math.sqrt(1 / (3 * n)), False),
    ("kaiming", "kaiming", lambda n: math.sqrt(2 / n), False),
    ("kaiming_bn", "kaiming", lambda n: math.sqrt(2 / n), True),
    ("residual", "kaiming", lambda n: math.sqrt(2 / n), True),
])
def test_regimes_use_the_init_they_name(regime, scheme, std_of_fan_in, has_bn):
    model, record = _built(regime, 20)
    assert record.scheme == scheme and not record.zero_init_residual and record.residual_ends_zeroed == 0
    _, last = main_path_convs(model)[-1]                     # 64 x 64 x 3 x 3: 36,864 weights
    fan_in = last.in_channels * 9
    assert last.weight.std().item() == pytest.approx(std_of_fan_in(fan_in), rel=0.03)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bool(bns) == has_bn
    assert all(torch.all(bn.weight == 1) for bn in bns)       # zero-init residual is off: no zero gammas


def test_kaiming_prediction_is_the_hand_derivation():
    # depth 8: stem 3->16 at 32x32 and last conv 64->64 at 8x8; Var[grad] at the stem's output is
    # (64/16) / (2^2 * 2^2) = 1/4 of the last conv's (two stride-2 width doublings); E[x^2] = 1.
    # Per-parameter RMS: positions x Var[grad] x E[x^2], whatever the tensor's size.
    first = 32 * 32 * 0.25
    last = 8 * 8 * 1.0
    assert predicted_log10_ratio("kaiming", 8) == pytest.approx(0.5 * math.log10(first / last), abs=1e-12)


def test_prediction_per_layer_gains():
    default = np.asarray(predicted_profile("pytorch_default", 56)[0])
    kaiming = np.asarray(predicted_profile("kaiming", 56)[0])
    bn = np.asarray(predicted_profile("kaiming_bn", 56)[0])
    stage2 = slice(22, 36)                                   # stride-1 convs at width 32
    # default init: the gradient norm shrinks by sqrt(6) per conv (variance 6x), once the biases
    # hold the forward signal at its floor
    assert np.diff(default[stage2]) == pytest.approx(np.full(13, LOG10_SQRT6), abs=0.01)
    # Kaiming: gain 1 wherever the width is constant; the ratio does not depend on depth
    assert np.diff(kaiming[stage2]) == pytest.approx(np.zeros(13), abs=1e-12)
    assert {round(predicted_log10_ratio("kaiming", d), 9) for d in (8, 20, 56)} == {round(kaiming[0], 9)}
    # BN (ReLU-mean reading): sqrt(pi/(pi-1)) growth per conv towards the input; He's zero-mean
    # reading gives the Kaiming profile
    assert -np.diff(bn[stage2]) == pytest.approx(np.full(13, 0.5 * math.log10(math.pi / (math.pi - 1))), abs=1e-9)
    assert predicted_log10_ratio("kaiming_bn", 56, relu_mean=False) == pytest.approx(kaiming[0])
    # slope over depth: 36 more convs cost ~36 x log10(sqrt 6) under the default init
    slope = (predicted_log10_ratio("pytorch_default", 56) - predicted_log10_ratio("pytorch_default", 20)) / 36
    assert slope == pytest.approx(-LOG10_SQRT6, abs=0.01)


def test_default_init_forward_signal_settles_at_the_bias_floor():
    # E[y^2] = E[y^2]_prev / 6 + 1/(3n) -> 6/(5*3n) = 2/(5n) at fan_in n = 9 * 64 in the last stage
    _, mean_square = predicted_profile("pytorch_default", 56)
    assert mean_square[-1] == pytest.approx(2 / (5 * 9 * 64), rel=1e-3)


def test_measured_default_ratio_is_orders_of_magnitude_below_kaiming():
    x, y = _batch()
    ratios = {}
    for regime in ("pytorch_default", "kaiming"):
        model, _ = _built(regime, 20)
        ratios[regime] = gradient_norms_at_init(model.double(), x.double(), y)["ratio_first_last_conv"]
    assert ratios["pytorch_default"] < 1e-4 * ratios["kaiming"]
    for regime, r in ratios.items():                        # and the prediction is within a decade
        assert abs(math.log10(r) - predicted_log10_ratio(regime, 20)) < 1.0


@pytest.mark.parametrize("regime", ["kaiming_bn", "residual"])
def test_bn_and_residual_regimes_give_finite_ratios(regime):
    x, y = _batch()
    model, _ = _built(regime, 20)
    m = gradient_norms_at_init(model, x, y)
    norms, rms = np.asarray(m["grad_norms"]), np.asarray(m["grad_rms"])
    assert norms.shape == (19,) and np.all(np.isfinite(norms)) and np.all(norms > 0)
    assert math.isfinite(m["ratio_first_last_conv"]) and math.isfinite(m["ratio_first_classifier"])
    numel = np.array([conv.weight.numel() for _, conv in main_path_convs(model)])
    assert rms == pytest.approx(norms / np.sqrt(numel))                 # per-parameter RMS, not the L2 norm
    assert m["ratio_first_last_conv"] == pytest.approx(rms[0] / rms[-1])
    assert m["ratio_first_last_conv"] != pytest.approx(norms[0] / norms[-1])   # 3x16x9 vs 64x64x9 entries
    assert len(m["forward_mean_square"]) == 19 and all(v > 0 for v in m["forward_mean_square"])
    assert not any(c._forward_hooks for _, c in main_path_convs(model))     # hooks removed


def test_forward_mean_square_is_the_conv_output_mean_square():
    x, y = _batch(n=4, size=8)
    model, _ = _built("kaiming", 8)
    stem = main_path_convs(model)[0][1]
    with torch.no_grad():
        expected = float(stem(x).pow(2).mean())
    assert gradient_norms_at_init(model, x, y)["forward_mean_square"][0] == pytest.approx(expected, rel=1e-5)


@pytest.fixture(scope="module")
def tiny_study():
    x, y = _batch(n=8)
    return run_init_study(x, y, depths=(8, 14), seeds=(0, 1))


def test_study_rows_and_summary(tiny_study):
    rows = tiny_study
    assert len(rows) == len(REGIMES) * 2 * 2
    assert {r.dtype for r in rows if r.regime == "pytorch_default"} == {"float64"}
    assert {r.dtype for r in rows if r.regime != "pytorch_default"} == {"float32"}
    summary = summarise_init_study(rows)
    assert [(s["regime"], s["depth"]) for s in summary] == [(r, d) for r in REGIMES for d in (8, 14)]
    for s in summary:
        mine = [r for r in rows if (r.regime, r.depth) == (s["regime"], s["depth"])]
        logs = [math.log10(r.measured_ratio) for r in mine]
        assert s["log10_ratio"]["n"] == 2 and s["log10_ratio"]["mean"] == pytest.approx(np.mean(logs))
        assert s["log10_ratio_min"] == pytest.approx(min(logs)) and s["log10_ratio_max"] == pytest.approx(max(logs))
        assert s["predicted_log10_ratio"] == pytest.approx(predicted_log10_ratio(s["regime"], s["depth"]))
        assert len(s["log10_relative_grad"]) == len(s["predicted_log10_relative_grad"]) == s["depth"] - 1
        assert s["log10_relative_grad"][-1] == 0.0


def test_plot_init_study_writes_a_png(tiny_study, tmp_path):
    path = plots_architecture.plot_init_study(summarise_init_study(tiny_study), tmp_path / "init.png", "init study")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_study_leaves_the_global_rng_alone():
    x, y = _batch(n=4, size=8)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    run_init_study(x, y, depths=(8,), regimes=("kaiming",), seeds=(0,))
    assert torch.equal(torch.rand(3), expected)
