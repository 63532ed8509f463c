"""Figures: every figure function runs on small synthetic typed records and writes a PNG; the
pure helpers behind the review's figure fixes (shared gradient colour scale, exact zeros, readable
layer names, error counts, readable cost axes) do what they say."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from matplotlib import colors as mcolors
from matplotlib import pyplot as plt


from utils.studies.architecture import figures as plots_architecture

from utils.studies.custom_layers import figures as plots_blocks
from utils import visualization_utils as viz
from tests.fakes import CLASSES, fake_record
from utils.engine.records import RecordFormatError, RunRecord

@pytest.fixture(scope="module")
def records() -> list[RunRecord]:
    return [fake_record("deep_fc", seed=0, acc=0.7, time_s=3.0),
            fake_record("resnet_small", net="cnn", seed=1, acc=0.85, zero_grads=True, time_s=40.0),
            fake_record("resnet_big", net="cnn", seed=2, acc=0.9, time_s=400.0),
            fake_record("plain_lr_high", seed=3, status="diverged")]


def _assert_png(path) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2_000, path


RECORD_FIGURES = [viz.plot_learning_curves, viz.plot_generalisation_gap, viz.plot_accuracy_vs_cost,
                  viz.plot_parameter_breakdown, viz.plot_confusion_matrices,
                  viz.plot_gradient_flow]


@pytest.mark.parametrize("figure", RECORD_FIGURES, ids=lambda f: f.__name__)
def test_record_figures_write_a_png(figure, records, tmp_path):
    out = figure(records, tmp_path / "fig.png", "A title")
    assert out == tmp_path / "fig.png"
    _assert_png(out)
    assert not list(tmp_path.glob(".*.tmp")), "the temp file of the atomic write is left behind"


def test_array_figures_write_pngs(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(40, 3, 16, 16), dtype=np.uint8)
    labels = rng.integers(0, 10, size=40)
    preds = np.where(rng.random(40) < 0.5, labels, (labels + 1) % 10)
    _assert_png(viz.plot_misclassified(images, labels, preds, CLASSES, tmp_path / "mis.png", "t", n=12))
    _assert_png(viz.plot_misclassified(images[:, :1], labels, labels, CLASSES, tmp_path / "none.png", "t"))
    erf = rng.random((16, 16))
    maps = {f"k{k}": {"theoretical_rf": k + 1, "center": (8, 8), "init": erf / erf.sum(),
                      "trained": erf ** k / (erf ** k).sum(), "extent_init": 9, "extent_trained": 5} for k in (3, 5)}
    _assert_png(plots_architecture.plot_erf_maps(maps, tmp_path / "rf.png", "t"))
    acts = {"a": rng.random((2, 6, 8, 8)), "b": rng.random((2, 4, 8, 8))}
    _assert_png(plots_architecture.plot_first_layer_activations(images[:2], acts, tmp_path / "act.png", "t", 5))
    _assert_png(plots_architecture.plot_first_layer_filters({"a": rng.normal(size=(8, 3, 3, 3))},
                                                            tmp_path / "filt.png", "t", n_filters=6))
    maps = {"a": [("conv1", rng.random((4, 8, 8))), ("conv2", rng.random((6, 4, 4)))]}
    _assert_png(plots_architecture.plot_feature_maps_by_depth(images[0], maps, tmp_path / "maps.png", "t"))


def test_custom_layer_figures_write_pngs(tmp_path):
    rows = [{"layer": "conv", "variant": "3x3", "custom_ms": 2.0, "autograd_ms": 3.0, "standard_ms": 1.0,
             "ratio_vs_autograd": 0.67, "ratio_vs_standard": 2.0, "standard_layer": "nn.Conv2d"},
            {"layer": "swish", "variant": "", "custom_ms": 0.5, "autograd_ms": 0.6, "standard_ms": None,
             "ratio_vs_autograd": 0.83, "ratio_vs_standard": None}]
    _assert_png(plots_blocks.plot_layer_speed(rows, tmp_path / "speed.png", "t"))
    # the layer-swap, block-regime and lr-sweep figures read analysis dicts: tests/test_custom_layers_experiments.py


# ----------------------------------------------------------------------------- the record format
def test_record_round_trips_and_refuses_renamed_or_missing_fields():
    r = fake_record()
    assert RunRecord.from_dict(r.to_dict()) == r
    extra = {**r.to_dict(), "final_acc": 0.9}
    with pytest.raises(RecordFormatError):
        RunRecord.from_dict(extra)
    missing = r.to_dict()
    del missing["grad_stats"]
    with pytest.raises(RecordFormatError):
        RunRecord.from_dict(missing)
    renamed = r.to_dict()
    renamed["history"]["val_accuracy"] = renamed["history"].pop("val_acc")
    with pytest.raises(RecordFormatError):
        RunRecord.from_dict(renamed)


# ---------------------------------------------------------------------------- gradient flow scale
def test_gradient_flow_scale_spans_all_models_and_ignores_zeros_and_nan():
    a = np.array([[0.0, 0.5], [np.nan, 2.0]])
    b = np.array([[1e-4, 30.0]])
    norm = viz.gradient_flow_scale([a, b])
    assert isinstance(norm, mcolors.LogNorm)
    assert (norm.vmin, norm.vmax) == (1e-4, 30.0)
    only_zeros = viz.gradient_flow_scale([np.zeros((2, 2))])
    assert 0 < only_zeros.vmin < only_zeros.vmax


def test_gradient_flow_uses_one_colour_scale_and_shows_zeros_apart(records):
    fig = viz.gradient_flow_figure(records, "t")
    try:
        with_grads = [r for r in records if r.grad_stats.l2]
        heat = [ax for ax in fig.axes if ax.get_label() != "<colorbar>" and ax.collections
                and isinstance(ax.collections[0].norm, mcolors.LogNorm)]
        assert len(heat) == len(with_grads) == 4
        expected = viz.gradient_flow_scale([np.asarray(r.grad_stats.l2) for r in with_grads])
        for ax in heat:
            norm = ax.collections[0].norm
            assert (norm.vmin, norm.vmax) == pytest.approx((expected.vmin, expected.vmax))
        # exact zeros are a separate red layer, not clamped into the colour scale
        zero_layers = [len(ax.collections) - 1 for ax in heat]
        assert zero_layers == [int(bool(np.any(np.asarray(r.grad_stats.l2) == 0))) for r in with_grads]
        assert zero_layers == [0, 1, 0, 0]
        assert np.ma.count_masked(heat[1].collections[0].get_array()) == 2   # the two zero cells
    finally:
        plt.close(fig)


def test_error_counts_drop_the_diagonal():
    cm = viz.error_counts([0, 0, 1, 1, 2], [0, 1, 1, 0, 1], 3)
    assert cm.tolist() == [[0, 1, 0], [1, 0, 0], [0, 1, 0]]


def test_misclassified_images_take_turns_over_the_true_classes():
    labels = [0, 0, 0, 1, 1, 2, 2, 2]
    preds = [1, 1, 0, 0, 1, 0, 0, 2]
    assert viz.misclassified_round_robin(labels, preds).tolist() == [0, 3, 5, 1, 6]


def test_misclassified_refuses_mismatched_inputs(tmp_path):
    with pytest.raises(ValueError, match="N labels"):
        viz.plot_misclassified(np.zeros((3, 1, 8, 8), np.uint8), [0, 1], [0, 1], CLASSES, tmp_path / "x.png", "t")


@pytest.mark.parametrize("values, scale", [([95_000, 105_000], "linear"), ([1e3, 4e6], "log"), ([3e5, 4.2e6], "log"),
                                           ([20.65, 20.9], "linear")])
def test_cost_axis_is_log_only_over_a_decade_and_has_no_minor_labels(values, scale):
    fig, ax = plt.subplots()
    try:
        ax.scatter(values, [1] * len(values))
        viz.cost_axis(ax.xaxis, values)
        assert ax.get_xscale() == scale
        fig.canvas.draw()
        assert not any(t.get_text() for t in ax.xaxis.get_minorticklabels())
        labelled = [t for t in ax.xaxis.get_majorticklabels() if t.get_text()
                    and ax.get_xlim()[0] <= t.get_position()[0] <= ax.get_xlim()[1]]
        assert 2 <= len(labelled) <= 8
    finally:
        plt.close(fig)


def test_importing_the_figure_modules_sets_no_global_style():
    code = ("import matplotlib; before = dict(matplotlib.rcParams); "
            "import utils.visualization_utils, utils.studies.architecture.figures, utils.studies.custom_layers.figures; "
            "changed = sorted(k for k, v in matplotlib.rcParams.items() if before.get(k) != v "
            "and not k.startswith('backend')); print(changed); assert not changed")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(_repo_root()))


def _repo_root():
    from pathlib import Path
    return Path(__file__).resolve().parents[1]
