"""Task 2 (homework_cnn_architecture_analysis.py): parameter matching, helpers, and the CLI end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import homework_cnn_architecture_analysis as arch
from models.cnn_models import KernelSizeCNN
from utils.model_stats import count_parameters
from utils.erf import effective_receptive_field
from utils.receptive_field import layer_specs_from_module, receptive_field


@pytest.mark.parametrize("reference_width", [16, 48, 64])
def test_kernel_variants_match_the_parameter_target_within_2_percent(reference_width):
    m = arch.match_kernel_widths(reference_width)
    target = count_parameters(arch.kernel_cnn("3x3", reference_width))["total"]
    assert m["target_params"] == target
    assert set(m["variants"]) == set(arch.KERNEL_VARIANTS)
    for kernel, v in m["variants"].items():
        # exact count of the model the experiment builds, not the solver's bookkeeping
        built = arch.kernel_cnn(kernel, v["base_width"], stage_widths=v["stage_widths"])
        params = count_parameters(built)["total"]
        assert params == v["params"]
        assert abs(params - target) / target <= 0.02, (kernel, params, target)
    assert m["variants"]["3x3"]["stage_widths"] == [reference_width, 2 * reference_width, 4 * reference_width]
    assert m["max_relative_gap"] <= 0.02


def test_standard_profile_widths_need_the_last_stage_step():
    """At width 48 the 7x7 base-width grid alone misses +-2 % (the reason for ``stage_widths``)."""
    target = count_parameters(KernelSizeCNN(3, 48))["total"]
    best = min((abs(count_parameters(KernelSizeCNN(7, w))["total"] - target) / target for w in range(15, 30)))
    assert best > 0.02
    assert arch.match_kernel_widths(48)["variants"]["7x7"]["relative_gap"] <= 0.02


def test_stage_widths_default_is_unchanged():
    a, b = KernelSizeCNN(5, 20), KernelSizeCNN(5, 20, stage_widths=(20, 40, 80))
    assert str(a) == str(b)
    assert count_parameters(a)["total"] == count_parameters(b)["total"]


def test_kernel_size_is_a_number():
    plain, reduced = KernelSizeCNN(5, 8), KernelSizeCNN(5, 8, reduce_1x1=True)
    assert [m.kernel_size for m in plain.features if isinstance(m, nn.Conv2d)] == [(5, 5)] * 3
    assert [m.kernel_size for m in reduced.features if isinstance(m, nn.Conv2d)] == [(1, 1), (5, 5)] * 3
    for bad in ("3x3", 4, 0, True):
        with pytest.raises(ValueError, match="kernel_size"):
            KernelSizeCNN(bad, 8)


def test_erf_centre_of_kernel_model_is_its_rf_centre():
    """The analysed unit's RF centre (from receptive_field) is where the gradient mass is centred."""
    torch.manual_seed(0)
    model = KernelSizeCNN(3, 8)
    layer, n_specs = arch._erf_layer(model)
    row = receptive_field(layer_specs_from_module(model.features))[n_specs - 1]
    erf = effective_receptive_field(model, torch.randn(8, 3, 32, 32), layer=layer)
    ys, xs = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    centre = row.center(4)                        # 8x8 map, middle unit 4
    assert centre == 17.5 and row.size == 18
    assert abs(float((erf * torch.as_tensor(ys)).sum()) - centre) < 1.5
    assert abs(float((erf * torch.as_tensor(xs)).sum()) - centre) < 1.5
    assert float(erf[:, :9].sum()) == 0 and float(erf[:9, :].sum()) == 0   # nothing outside the RF


@pytest.mark.e2e
@pytest.mark.filterwarnings("ignore:All-NaN slice encountered:RuntimeWarning")
def test_cli_quick_end_to_end(fake_cifar_folder, tmp_path):
    results, plots = tmp_path / "results", tmp_path / "plots"
    code = arch.main(["--profile", "quick", "--data-dir", str(fake_cifar_folder), "--results-dir", str(results),
                      "--plots-dir", str(plots), "--cache-dir", str(tmp_path / "cache"), "--train-subset", "80",
                      "--batch-size", "25"])
    assert code == 0
    root = results / "architecture_analysis"
    kernel_files = ["conv3x3", "conv5x5", "conv7x7", "conv1x1_3x3"]
    depth_files = ["depth_2", "depth_4", "depth_8", "plain20_bn", "resnet20_bn", "plain20_nobn", "resnet20_nobn"]
    for sub, names in (("kernel_size", kernel_files), ("depth", depth_files)):
        for n in names:
            rec = json.loads((root / sub / f"{n}.json").read_text())
            for key in ("model", "status", "config", "params", "flops_per_image", "history", "grad_stats", "summary"):
                assert key in rec
            assert rec["status"] in ("completed", "diverged")
            assert rec["grad_stats"]["step"][0] == 0
        assert (root / sub / "summary.md").is_file()
        assert (root / sub / "analysis.md").is_file()
    matching = json.loads((root / "kernel_size" / "param_matching.json").read_text())
    assert matching["max_relative_gap"] <= 0.02
    kernel = json.loads((root / "kernel_size" / "analysis.json").read_text())
    for name in kernel_files:
        m = kernel["models"][name]
        assert m["theoretical_rf"] >= 3 and m["erf_extent_trained"]["0.95"] >= 1
    assert kernel["models"]["conv7x7"]["theoretical_rf"] > kernel["models"]["conv3x3"]["theoretical_rf"]
    depth = json.loads((root / "depth" / "analysis.json").read_text())
    for name in depth_files:
        g = depth["models"][name]["gradients"]
        assert g["samples"] >= 1 and np.isfinite(g["ratio_first_last_init"])
    for png in ("kernel_size_comparison", "kernel_size_learning_curves", "kernel_size_receptive_fields",
                "kernel_size_first_layer_activations", "kernel_size_first_layer_filters", "depth_comparison",
                "depth_learning_curves", "depth_gradient_norms_per_layer", "depth_gradient_ratio",
                "depth_gradient_flow_20_layers", "depth_gradient_flow_shallow", "depth_plain_vs_residual",
                "depth_feature_maps"):
        data = (plots / f"{png}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", png


def test_init_experiment_from_the_command_line(fake_cifar_folder, tmp_path):
    results, plots = tmp_path / "results", tmp_path / "plots"
    code = arch.main(["--only", "init", "--profile", "quick", "--data-dir", str(fake_cifar_folder), "--seed", "3",
                      "--results-dir", str(results), "--plots-dir", str(plots), "--cache-dir", str(tmp_path / "cache"),
                      "--train-subset", "20"])
    assert code == 0
    out = json.loads((results / "architecture_analysis" / "init_study" / "init_study.json").read_text())
    quick = arch.INIT_PROFILES["quick"]
    assert out["seeds"] == [3, 4] and out["depths"] == list(quick.depths) and out["batch"]["images"] == 20
    assert [(s["regime"], s["depth"]) for s in out["summary"]] == [(r, d) for r in out["regimes"] for d in quick.depths]
    assert len(out["rows"]) == 4 * len(quick.depths) * 2
    assert out["regimes"]["pytorch_default"]["init_scheme"] == "pytorch_default"
    assert out["regimes"]["pytorch_default"]["dtype"] == "float64"
    assert all(np.isfinite(s["log10_ratio"]["mean"]) for s in out["summary"])
    assert (plots / "init_study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
