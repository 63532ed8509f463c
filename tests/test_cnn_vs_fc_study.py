"""Task 1's own analysis: pixel shuffle, the layers before BatchNorm, the effective learning
rate, the shared-lr score, training compute and the task's figures (hand computations on fake
records from tests/fakes.py)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from homework_cnn_vs_fc_comparison import deep_fc, in_range, merged, RESNET_REGULARISERS
from models.fc_models import FullyConnectedNet
from tests.fakes import fake_record
from utils.analysis.protocol import select_bracketed
from utils.comparison_utils import advantage_change
from utils.engine.data import ArrayDataset, DatasetSplits
from utils.engine.experiment import ExperimentConfig
from utils.engine.runtime import resolve_runtime
from utils.studies.cnn_vs_fc import figures
from utils.studies.cnn_vs_fc.numbers import (effective_lr_curve, mean_score, paired_difference, pilot_table,
                                             ratio_over_seeds, training_pflop)
from utils.studies.cnn_vs_fc.probes import paired_timing, permute_pixels, pixel_permutation, shuffled_splits, \
    weights_before_norm


def _images(n: int = 5, c: int = 3, h: int = 4, w: int = 4) -> ArrayDataset:
    g = torch.Generator().manual_seed(0)
    return ArrayDataset(torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8), torch.arange(n) % 10)


def test_permute_pixels_moves_every_pixel_the_same_way_and_keeps_colours():
    ds = _images()
    perm = pixel_permutation(4, 4, seed=3)
    out = permute_pixels(ds, perm)
    flat_in, flat_out = ds.images.reshape(5, 3, 16), out.images.reshape(5, 3, 16)
    assert torch.equal(flat_out, flat_in[:, :, perm])                       # one permutation for all
    assert not torch.equal(out.images, ds.images)
    for i in range(5):                                                      # each image keeps its pixels
        assert sorted(map(tuple, flat_in[i].T.tolist())) == sorted(map(tuple, flat_out[i].T.tolist()))
    assert torch.equal(out.labels, ds.labels)
    with pytest.raises(ValueError):
        permute_pixels(ds, torch.arange(15))


def test_shuffled_splits_shuffles_every_split_and_says_so_in_the_source():
    ds = _images()
    data = DatasetSplits("cifar10", ds, _images(), ("a",) * 10, "test copy", val=_images())
    out = shuffled_splits(data, seed=0)
    perm = pixel_permutation(4, 4, 0)
    for split in ("train", "val", "test"):
        a, b = getattr(data, split).images.reshape(5, 3, 16), getattr(out, split).images.reshape(5, 3, 16)
        assert torch.equal(b, a[:, :, perm])
    assert out.describe() != data.describe() and "shuffled" in out.source
    assert out.mean == data.mean                                             # a permutation keeps the statistics


def test_weights_before_norm_are_the_hidden_layers_not_the_head():
    with_bn = FullyConnectedNet(12, (8, 6), 3, batch_norm=True, dropout=0.2)
    assert weights_before_norm(with_bn) == ["net.1.weight", "net.5.weight"]      # dropout shifts the indices
    assert weights_before_norm(FullyConnectedNet(12, (8, 6), 3)) == []


def _wd_record(norms: list[list[float]], lr: float = 0.1) -> object:
    r = fake_record("mlp", epochs=2)
    r.config = dataclasses.asdict(ExperimentConfig(lr=lr, schedule="constant"))
    r.grad_stats.names = ["a.weight", "b.weight", "head.weight"]
    r.grad_stats.step = [0, 10, 20]
    r.grad_stats.weight_l2 = norms
    return r


def test_effective_lr_by_hand():
    # layers a, b before BN; the head is not. Constant lr 0.1: eff = 0.1 / ||w||^2, geometric mean
    r = _wd_record([[1.0, 2.0, 5.0], [0.5, 1.0, 5.0], [0.5, 0.5, 5.0]])
    out = effective_lr_curve(r, ["a.weight", "b.weight"])
    assert out["effective_lr"] == pytest.approx([0.1 / (1 * 2), 0.1 / (0.5 * 1), 0.1 / (0.5 * 0.5)])
    assert out["weight_norm_rel"] == pytest.approx([1.0, 0.5, math.sqrt(0.5 * 0.25)])
    assert out["final_weight_norm_rel"] == pytest.approx(math.sqrt(0.125))
    assert out["epoch"] == pytest.approx([0, 10 / r.history.step[-1] * r.history.epoch[-1],
                                          20 / r.history.step[-1] * r.history.epoch[-1]])
    assert effective_lr_curve(r, ["nope.weight"]) is None
    r.grad_stats.weight_l2 = []
    assert effective_lr_curve(r, ["a.weight"]) is None                      # a record without weight norms


def test_ratio_over_seeds_by_hand():
    out = ratio_over_seeds({0: 4.0, 1: 8.0, 2: 2.0}, {0: 1.0, 1: 2.0, 2: 0.5})
    assert out["ratio"] == pytest.approx(4.0) and out["n"] == 3 and out["excludes_one"]
    assert out["ci95_low"] == pytest.approx(4.0) and out["ci95_high"] == pytest.approx(4.0)   # no spread
    d = paired_difference({0: 0.1, 1: 0.2, 2: 0.3, 3: 0.4}, {0: 0.0, 1: 0.1, 2: 0.25})
    assert d["mean_difference"] == pytest.approx((0.1 + 0.1 + 0.05) / 3) and d["n_pairs_dropped"] == 1


def test_shared_lr_is_the_best_mean_over_models_and_the_grid_brackets_it():
    # per-model validation scores: no model alone peaks where the mean does (model b peaks at 0.2,
    # c at 1.6); the mean peaks at 0.8, beyond the grid's top, so the grid must extend.
    score = {"a": {0.2: 0.50, 0.4: 0.60, 0.8: 0.70, 1.6: 0.71, 3.2: 0.2},
             "b": {0.2: 0.90, 0.4: 0.88, 0.8: 0.86, 1.6: 0.70, 3.2: 0.1},
             "c": {0.2: 0.60, 0.4: 0.62, 0.8: 0.66, 1.6: 0.67, 3.2: 0.3}}
    seen = []

    def run_pilots(points):
        seen.extend(points)
        records = [fake_record(f"pilot_{m}_lr{p:g}", group=f"pilot_{m}", lr=p, acc=score[m][p]) for p in points
                   for m in score]
        table = pilot_table(records)
        return {p: mean_score([cells[f"{p:g}"]["mean"] for cells in table.values()]) for p in points}

    sel = select_bracketed((0.2, 0.4, 0.8), run_pilots)
    assert seen == [0.2, 0.4, 0.8, 1.6] and sel.winner == 0.8 and sel.edge is None
    # a diverged model rules its grid point out
    assert mean_score([0.9, None, 0.8]) is None


def test_training_pflop_by_hand():
    r = fake_record("mlp", epochs=4)
    r.config["batch_size"] = 100
    assert training_pflop(r) == pytest.approx(3 * r.flops_per_image * r.history.step[-1] * 100 / 1e15)


def test_regularisers_and_strength_ranges():
    assert set(merged(RESNET_REGULARISERS)) == {"dropout", "weight_decay", "augment", "label_smoothing"}
    with pytest.raises(ValueError):
        merged({"dropout": {"dropout": 0.1}})
    assert in_range("dropout", 0.8) and not in_range("dropout", 1.6) and not in_range("label_smoothing", 1.0)
    assert in_range("weight_decay", 10.0)


def test_paired_timing_measures_every_model_in_turns(tmp_path):
    runtime = resolve_runtime("cpu", "fp32")
    builds = {"mlp": lambda: deep_fc(3 * 8 * 8, 10)(ExperimentConfig()),
              "tiny": lambda: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 10))}
    out = paired_timing(builds, (3, 8, 8), runtime, batch=4, repeats=3, warmup=1)
    assert out["reference"] == "mlp" and out["repeats"] == 3
    for m in builds:
        for what, rounds in (("train_step", 3), ("inference", 3), ("latency", out["latency_repeats"])):
            t = out["models"][m][what]
            assert t["ms"]["n"] == rounds and t["ms"]["min"] <= t["ms"]["median"] <= t["ms"]["max"]
            assert t["images_per_s"]["median"] > 0
    assert out["latency_repeats"] > 3
    latency = out["models"]["tiny"]["latency"]
    assert latency["images_per_s"]["median"] == pytest.approx(1000 / latency["ms"]["median"])   # one image a call
    ref = out["models"]["mlp"]
    assert all(ref[w]["ratio_to_reference"]["median"] == 1.0 for w in ("train_step", "inference", "latency"))
    assert figures.plot_paired_timing(out, tmp_path / "timing.png", "t").exists()


def test_task_figures_draw(tmp_path):
    d = {"mean_difference": 0.01, "ci95_low": -0.005, "ci95_high": 0.02}
    rows = {"dropout": {"MLP": {"test_acc": d, "gap": d}, "ResNet": None},
            "all": {"MLP": {"test_acc": d, "gap": d}, "ResNet": {"test_acc": d, "gap": d}}}
    assert figures.plot_regularisation_ablation(rows, tmp_path / "a.png", "t").exists()
    r = _wd_record([[1.0, 2.0, 5.0], [0.5, 1.0, 5.0], [0.5, 0.5, 5.0]])
    curve = effective_lr_curve(r, ["a.weight", "b.weight"])
    assert figures.plot_effective_lr({"none": [curve], "weight_decay": [curve]}, tmp_path / "e.png", "t").exists()
    lr = {"pilots": {"pilot_a": {"0.2": {"mean": 0.5}, "0.4": {"mean": 0.6}}}, "chosen_lr": 0.4,
          "selection": {"scores": {"0.2": 0.5, "0.4": 0.6}}}
    assert figures.plot_lr_selection(lr, tmp_path / "l.png", "t").exists()
    assert figures.plot_gradient_rms([fake_record("mlp")], tmp_path / "g.png", "t").exists()
    v = {"mlp/none": {"training_pflop": 0.01, "test_acc": {"mean": 0.6, "half_width": 0.01, "n": 3}}}
    assert figures.plot_accuracy_vs_compute(v, tmp_path / "c.png", "t").exists()


def _figure(monkeypatch, module, plot, *args, **kwargs):
    """The figure ``plot(*args)`` draws, caught before it is saved and closed."""
    figs = []
    monkeypatch.setattr(module, "save_figure", lambda fig, path: figs.append(fig) or path)
    plot(*args, **kwargs)
    return figs[0]


def test_accuracy_vs_compute_dodges_equal_compute_and_draws_the_target(monkeypatch, tmp_path):
    """The ResNet with and without regularisers costs the same PFLOP: their points must not sit on
    one another, and the target accuracy is a line of its own in the legend."""
    t = {"mean": 0.8, "half_width": 0.01, "n": 3}
    v = {"resnet/none": {"training_pflop": 0.5, "test_acc": t}, "resnet/all": {"training_pflop": 0.5, "test_acc": t},
         "mlp/none": {"training_pflop": 0.01, "test_acc": {**t, "mean": 0.55}}}
    fig = _figure(monkeypatch, figures, figures.plot_accuracy_vs_compute, v, tmp_path / "c.png", "t", target=0.88)
    ax = fig.axes[0]
    xs = sorted({round(float(line.get_xdata()[0]), 6) for line in ax.get_lines() if len(line.get_xdata()) == 1})
    assert len(xs) == 3 and xs[0] == 0.01 and all(0.45 < x < 0.55 for x in xs[1:]), xs
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "target 88 %" in labels and len(labels) == 4
    assert any(line.get_linestyle() == "--" and set(line.get_ydata()) == {88.0} for line in ax.get_lines())


def test_gradient_rms_puts_nets_of_different_depth_on_one_relative_axis(monkeypatch, tmp_path):
    recs = [fake_record("mlp"), fake_record("resnet")]
    fig = _figure(monkeypatch, figures, figures.plot_gradient_rms, recs, tmp_path / "g.png", "t")
    lines = [line for line in fig.axes[0].get_lines() if len(line.get_xdata())]
    assert lines and all(line.get_xdata()[0] == 0 and line.get_xdata()[-1] == 1 for line in lines)
    assert "relative depth" in fig.axes[0].get_xlabel()


def test_regularisation_ablation_legend_sits_outside_the_panels(monkeypatch, tmp_path):
    d = {"mean_difference": 0.01, "ci95_low": -0.005, "ci95_high": 0.02}
    rows = {"dropout": {"MLP": {"test_acc": d, "gap": d}, "ResNet": {"test_acc": d, "gap": d}}}
    fig = _figure(monkeypatch, figures, figures.plot_regularisation_ablation, rows, tmp_path / "a.png", "t")
    assert all(ax.get_legend() is None for ax in fig.axes)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["MLP", "ResNet"]


def test_shuffle_control_plots_each_cell_at_its_interval_and_skips_cells_not_run(monkeypatch, tmp_path):
    def acc(mean):
        return {"test_acc": {"mean": mean, "ci95_low": mean - 0.01, "ci95_high": mean + 0.02}}
    v = {"original/mlp": acc(0.54), "shuffled/mlp": acc(0.545), "original/resnet": acc(0.77)}
    fig = _figure(monkeypatch, figures, figures.plot_shuffle_control, v, tmp_path / "s.png", "t")
    ax = fig.axes[0]
    points = sorted(round(float(x), 3) for line in ax.get_lines()     # the dots, not the interval caps
                    if line.get_marker() not in (None, "None", "", "|") for x in line.get_xdata())
    assert points == [54.0, 54.5, 77.0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["original pixels", "pixels shuffled"]
    caps = sorted(round(float(x), 3) for c in ax.collections for seg in c.get_segments() for x, _ in seg)
    assert min(caps) == 53.0 and max(caps) == 79.0     # the interval is drawn, asymmetric as given


def test_reliability_figure_draws(tmp_path):
    from utils.analysis.classification import calibration

    rng = np.random.default_rng(0)
    conf = rng.uniform(0.1, 1, 500)
    cal = [calibration(conf, rng.random(500) < conf ** 2)]
    assert figures.plot_reliability({"none": cal, "label_smoothing": cal}, tmp_path / "r.png", "t").exists()


def test_advantage_change_is_the_difference_of_the_two_paired_differences():
    labels = [0, 1] * 20

    def runs(group, variant, right):   # right[seed]: how many of the 40 test images the run gets right (the first k)
        out = []
        for seed, k in enumerate(right):
            r = fake_record(group=group, variant=variant, seed=seed)
            r.labels, r.predictions = labels, [y if i < k else 1 - y for i, y in enumerate(labels)]
            r.test_acc = k / len(labels)
            out.append(r)
        return out

    out = advantage_change(runs("s", "cnn", [20, 20, 30]), runs("s", "mlp", [20, 20, 20]),
                           runs("o", "cnn", [40, 40, 40]), runs("o", "mlp", [20, 20, 20]))
    # (cnn - mlp) shuffled: 0, 0, 0.25; original: 0.5 each -> change -0.5, -0.5, -0.25
    assert out["n"] == 3 and out["mean_difference"] == pytest.approx(-5 / 12)
    assert out["ci95_high"] < 0 and out["verdict"] == "real"
    missing = advantage_change(runs("s", "cnn", [20]), [], runs("o", "cnn", [40]), runs("o", "mlp", [20]))
    assert missing["n"] == 0 and "missing" in missing["verdict"]
