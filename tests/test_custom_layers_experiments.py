"""Tests for task 3 (homework_custom_layers_experiments.py) and its helpers (utils/analysis/stability.py,
utils/studies/custom_layers/{blocks,speed,figures}.py).

Run from the repo root:  HOMEWORK_THREADS=1 python3 -m pytest tests/test_custom_layers_experiments.py -q

What is checked
  * stability measures on hand-made sequences: loss spikes, gradient-norm statistics, the gradient
    RMS over training without step 0, unstable runs, the divergence frontier;
  * the block nets: each in its shape (ResNet-20 basic, its pre-activation control, a shallower
    wider pre-activation net, a deeper bottleneck net), equal parameters within 5 %, no dropout;
  * the sweep driver on a fake runner: each block's lr brackets (the grid extends past an edge
    winner), the shared lr is the best mean over the blocks and brackets too, each block is
    extended upwards until a pilot is unstable or the cap, pilots are asked for once;
  * the analyses on synthetic records against hand computations (paired t on validation, the
    reference on the b side, finals disjoint from pilots), also when every run diverged, and every
    figure on both;
  * the speed study: autograd twins run the custom forward under autograd; the bf16 wrapper runs
    the forward under autocast with the custom layers as fp32 islands; per-round paired ratios;
  * output shape and a hand-computed parameter count of BasicBlock, BottleneckBlock and WideBlock;
  * the script end to end (``--profile quick``) on a generated CIFAR-10 image folder, normally and
    with ``--lr 1e30`` (every run diverges: exit code 0, the analyses say so).
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

import homework_custom_layers_experiments as hw
from models.cnn_models import BasicBlock, BottleneckBlock, PreActBlock, WideBlock
from models.custom_layers import Swish
from tests.fakes import fake_record
from utils.analysis.stability import (divergence_frontier, grad_norm_stats, grad_rms_distribution,
                                      grad_rms_over_training, is_unstable, loss_spike_events, loss_spike_steps,
                                      spike_counts)
from utils.engine.model_stats import count_parameters
from utils.engine.records import GradStats, History, summarise
from utils.studies.custom_layers import blocks as study
from utils.report import readme as report
from utils.studies.custom_layers import figures as plots_blocks
from utils.studies.custom_layers.speed import Autocast, paired_ratio, speed_cases


# ------------------------------------------------------------------------------- stability
def test_loss_spikes_compare_each_step_with_the_trailing_mean():
    losses = [1.0] * 30 + [1.6, 1.0, 2.5, 2.6] + [1.0] * 10
    # step 30: 60 % above the mean of steps 10..29 (1.0); step 32: +150 %; step 33: 2.6 vs mean of 13..32 = 1.135
    assert loss_spike_steps(losses, window=20, rise=0.5).tolist() == [30, 32, 33]
    assert loss_spike_steps(losses, window=20, rise=1.0).tolist() == [32, 33]
    assert loss_spike_events([30, 32, 33]) == 2 and loss_spike_events([]) == 0
    counts = spike_counts(losses, window=20, rises=(0.5, 1.0))
    assert counts["by_rise"]["50"] == {"steps": 3, "events": 2, "first": 30}
    assert counts["by_rise"]["100"]["steps"] == 2 and counts["steps"] == len(losses)


def test_loss_spikes_need_a_full_window_and_valid_arguments():
    assert loss_spike_steps([1.0, 9.0, 9.0], window=3).size == 0          # no step has 3 predecessors
    assert loss_spike_steps([], window=3).size == 0
    assert loss_spike_steps([1.0, 1.0, 1.0, 1.4], window=3, rise=0.5).size == 0   # +40 % is not +50 %
    assert spike_counts([2.3])["by_rise"]["50"] == {"steps": 0, "events": 0, "first": None}
    with pytest.raises(ValueError):
        loss_spike_steps([1.0] * 5, window=0)
    with pytest.raises(ValueError):
        loss_spike_steps([1.0] * 5, rise=-0.1)


def test_grad_norm_stats_by_hand():
    s = grad_norm_stats([[3.0, 4.0], [1.0, 0.0], [6.0, 8.0]])      # global norms 5, 1, 10
    assert s["samples"] == 3 and s["at_init"] == 5.0 and s["median"] == 5.0 and s["max"] == 10.0
    assert s["max_over_median"] == 2.0 and s["p90"] == pytest.approx(9.0)
    assert grad_norm_stats([])["median"] is None
    nan = grad_norm_stats([[float("nan"), 1.0]])
    assert nan["samples"] == 1 and nan["median"] is None and nan["at_init"] is None


def test_divergence_frontier():
    f = divergence_frontier([0.1, 0.1, 0.4, 0.4, 1.6, 1.6], [False, False, False, True, True, True])
    assert (f.frontier, f.stable_up_to, f.diverged_lrs, f.diverged_runs) == (0.4, 0.1, [0.4, 1.6], 3)
    none = divergence_frontier([0.1, 0.4], [False, False])
    assert none.frontier is None and none.stable_up_to == 0.4
    ragged = divergence_frontier([0.1, 0.4, 1.6], [False, True, False])
    assert ragged.frontier == 0.4 and ragged.completed_above_frontier == [1.6]
    every = divergence_frontier([0.1, 0.4], [True, True])
    assert every.frontier == 0.1 and every.stable_up_to is None
    with pytest.raises(ValueError):
        divergence_frontier([0.1], [True, False])
    with pytest.raises(ValueError):
        divergence_frontier([0.0], [True])


def _rec(model, variant, seed, acc, group="g", lr=0.1, status="completed", **kw):
    """A fake run with its own config hash (as distinct runs have)."""
    r = fake_record(f"{model}_seed{seed}", group=group, variant=variant, seed=seed, acc=acc, lr=lr, status=status,
                    grad_l2=[[3.0, 4.0], [1.0, 1.0], [2.0, 1.0]], **kw)
    return dataclasses.replace(r, config_hash=f"{model}|{variant}|{group}|{seed}|{lr}")


def test_grad_rms_over_training_leaves_out_step_0_and_divides_by_the_parameter_count():
    r = _rec("basic", "basic", 0, 0.7)      # samples at steps 0, 4, 8; tensors layer0, layer1
    r.params["per_layer"] = {"layer0": 16, "layer1": 9}
    rms = grad_rms_over_training(r)
    # step 0 (norms 3, 4) is the initialisation's: left out; then sqrt((1+1)/25), sqrt((4+1)/25)
    assert rms.tolist() == pytest.approx([math.sqrt(2 / 25), math.sqrt(5 / 25)])
    assert grad_rms_over_training(r, skip_steps=0)[0] == pytest.approx(math.sqrt(25 / 25))
    d = grad_rms_distribution([r, r])
    assert d["samples"] == 4 and d["max"] == pytest.approx(math.sqrt(5 / 25)) and d["run_median"]["n"] == 2
    r.params["per_layer"] = {"layer0": 16}                  # a tensor of unknown size: no number, not a guess
    assert grad_rms_over_training(r).size == 0


def test_unstable_means_diverged_or_never_learned():
    assert not is_unstable(_rec("a", "a", 0, 0.7), 0.2)
    assert is_unstable(_rec("a", "a", 0, 0.7, status="diverged"), 0.2)
    never = _rec("a", "a", 0, 0.1)                           # completed; final clean-train accuracy 7.5 %
    assert never.completed and is_unstable(never, 0.2) and not is_unstable(never, 0.05)


# ------------------------------------------------------------------------ experiment design
def test_each_block_net_has_the_shape_that_is_its_point_at_equal_parameters():
    units = hw.block_units(10)
    nets = {b: hw.block_net(b, u, 10) for b, u in units.items()}
    sizes = hw.block_sizes(units, 10)
    blocks_per_stage = {b: [len(s) for s in net.stages] for b, net in nets.items()}
    basic, preact, wide, bott = (sizes[b] for b in ("basic", "preact", "wide", "bottleneck"))
    assert blocks_per_stage["basic"] == [3, 3, 3] and basic["widths"] == [16, 32, 64] and basic["depth"] == 20
    assert all(isinstance(blk, PreActBlock) for s in nets["preact"].stages for blk in s)
    assert (preact["widths"], preact["depth"]) == (basic["widths"], basic["depth"])       # only the ordering differs
    assert all(type(blk) is WideBlock for s in nets["wide"].stages for blk in s)
    assert max(blocks_per_stage["wide"]) < 3 and wide["width_factor_vs_reference"] > 1.5  # fewer blocks, wider
    assert all(isinstance(blk, BottleneckBlock) for s in nets["bottleneck"].stages for blk in s)
    assert min(blocks_per_stage["bottleneck"]) >= 3 and bott["depth"] > basic["depth"]     # deeper for the cost
    assert [s[0].conv3.out_channels for s in nets["bottleneck"].stages] == [4 * s[0].conv2.out_channels
                                                                           for s in nets["bottleneck"].stages]
    for b, net in nets.items():
        assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
        assert abs(sizes[b]["param_gap_vs_reference"]) <= hw.MATCH_TOL, b
        assert sizes[b]["params"] == count_parameters(net)["total"] and sizes[b]["mflops"] > 0
        assert not [m for m in net.modules() if isinstance(m, (nn.Dropout, nn.Dropout2d)) and m.p > 0]
    cfg = hw.BASE_CONFIG
    assert cfg.init == "kaiming" and cfg.zero_init_residual is False and cfg.dropout == 0.0


def test_pilot_and_final_specs_differ_only_in_seed_and_group():
    pilot = hw.block_spec("wide", 30, 10, 0.4, 1000, "pilot")
    final = hw.block_spec("wide", 30, 10, 0.4, 0, "final")
    cfg = hw.BASE_CONFIG
    assert pilot.config_for(cfg).lr == final.config_for(cfg).lr == 0.4
    assert pilot.config_for(cfg).seed != final.config_for(cfg).seed and pilot.name != final.name
    assert (pilot.variant, pilot.group, final.group) == ("wide", "pilot", "final")
    grid, cap = hw.lr_grid(hw.PROFILES["standard"], cfg.replace(lr=1.0))    # --lr moves the grid
    assert grid == [1.6, 4.0, 10.0] and cap == 160.0


def test_layer_specs_every_variant_over_the_same_seeds():
    specs = hw.layer_specs(10, 3)
    assert len(specs) == 3 * len(hw.LAYER_VARIANTS)
    for v in hw.LAYER_VARIANTS:
        assert sorted(s.seed for s in specs if s.variant == v.name) == [0, 1, 2]
    assert len({(s.group, s.variant) for s in specs}) == len(hw.LAYER_VARIANTS)   # one key per variant
    assert {v.name for v in hw.LAYER_VARIANTS if v.custom} == {"conv_ws", "attn_se", "attn_cbam", "act_swish",
                                                                "pool_mixed", "head_gem"}


# ----------------------------------------------------------------------------- the sweep driver
def _fake_sweep(best: dict[str, float], unstable_from: dict[str, float], seeds=(1000, 1001, 1002)):
    """A runner whose pilots score 0.7 - 0.1 * |log2(lr / best[b])| on validation and are unstable
    (diverged) from ``unstable_from[b]`` on; it records every call."""
    calls = []

    def run_points(points):
        calls.append(list(points))
        out = {}
        for b, lr in points:
            bad = lr >= unstable_from[b]
            acc = 0.775 - 0.1 * abs(math.log2(lr / best[b]))    # fake final val acc = acc - 0.075
            out[(b, lr)] = [_rec(f"{b}_lr{lr:g}", b, s, max(acc, 0.3), group="pilot", lr=lr,
                                 status="diverged" if bad else "completed") for s in seeds]
        return out
    return run_points, calls


def test_sweep_brackets_each_block_and_the_shared_lr_and_extends_upwards_to_the_frontier():
    grid = [0.16, 0.4, 1.0]
    run_points, calls = _fake_sweep({"a": 0.05, "b": 0.4}, {"a": 2.5, "b": 6.25})
    r = study.run_sweep(["a", "b"], grid, run_points, lr_cap=16.0, min_train_acc=0.2)
    # a's best (0.05) lies below the grid: the grid extends down (0.064, then 0.0256) until it brackets
    assert r.own["a"].winner == 0.064 and r.own["a"].edge is None and r.own["a"].added == [0.064, 0.0256]
    assert r.own["b"].winner == 0.4 and r.own["b"].added == []
    # shared: the mean of a and b is best at 0.16 (0.5875 + 0.5428..) -> interior after one step down
    means = {lr: np.mean([0.7 - 0.1 * abs(math.log2(lr / m)) for m in (0.05, 0.4)]) for lr in (0.064, 0.16, 0.4)}
    assert r.shared.winner == max(means, key=means.get) and r.shared.edge is None
    # upwards: a is unstable at 2.5 (stop there), b at 6.25
    lrs = {b: sorted(lr for (x, lr) in r.runs if x == b) for b in ("a", "b")}
    assert lrs["a"][-1] == 2.5 and lrs["b"][-1] == 6.25 and r.upward["a"]["stopped"] == "unstable pilot found"
    flat = [p for c in calls for p in c]
    assert len(flat) == len(set(flat)) == len(r.runs)                # every point run once, all in memory
    n = study.sweep_numbers(r)
    assert n["blocks"]["a"]["frontier"]["frontier"] == 2.5 and n["blocks"]["a"]["highest_stable_lr"] == 1.0
    assert n["blocks"]["b"]["highest_stable_lr"] == 2.5 and n["shared_lr"]["winner"] == r.shared.winner


def test_sweep_stops_at_the_cap_and_never_chooses_an_unstable_lr():
    run_points, _ = _fake_sweep({"a": 1.0, "b": 1.0}, {"a": 1e9, "b": 0.4})
    r = study.run_sweep(["a", "b"], [0.16, 0.4, 1.0], run_points, lr_cap=6.3, min_train_acc=0.2)
    assert sorted(lr for (x, lr) in r.runs if x == "a")[-1] == 6.25 and r.upward["a"]["stopped"].startswith("cap")
    assert r.own["b"].winner == 0.16 and r.shared.winner == 0.16     # 0.4 and 1.0 are unstable for b
    n = study.sweep_numbers(r)
    assert n["blocks"]["a"]["frontier"]["frontier"] is None and n["blocks"]["a"]["highest_stable_lr"] == 6.25
    every, _ = _fake_sweep({"a": 1.0}, {"a": 0.0})
    r = study.run_sweep(["a"], [0.16, 0.4, 1.0], every, lr_cap=6.3, min_train_acc=0.2)
    assert r.own["a"] is None and r.shared is None and r.notes


def test_an_lr_too_small_to_learn_is_not_the_stability_frontier():
    """The lowest lr never learns (unstable below the good region): the upward search and the
    frontier start from the chosen lr, so the frontier is the diverging lr above it."""
    diverging, _ = _fake_sweep({"a": 0.4}, {"a": 2.5})

    def run_points(points):
        out = diverging(points)
        for (b, lr) in points:
            if lr < 0.1:        # final clean-train accuracy 7.5 %: never learned
                out[(b, lr)] = [_rec(f"{b}_lr{lr:g}", b, s, 0.1, group="pilot", lr=lr) for s in (1000, 1001, 1002)]
        return out
    r = study.run_sweep(["a"], [0.064, 0.16, 0.4], run_points, lr_cap=16.0, min_train_acc=0.2)
    assert r.own["a"].winner == 0.4 and r.upward["a"]["stopped"] == "unstable pilot found"
    assert sorted(lr for (_, lr) in r.runs)[-1] == 2.5          # searched up to the diverging lr
    a = study.sweep_numbers(r)["blocks"]["a"]
    assert a["frontier_searched_from_lr"] == 0.4 and a["frontier"]["frontier"] == 2.5
    assert a["highest_stable_lr"] == 1.0 and a["points"][0]["did_not_learn"] == 3


# ------------------------------------------------------------------------------- analyses
def test_finals_numbers_against_a_hand_computation():
    val = {"basic": (0.60, 0.62, 0.65), "wide": (0.66, 0.70, 0.69)}
    own = [_rec(f"{b}_lr{0.4 if b == 'basic' else 1.0}", b, s, a + 0.075, group="final", lr=0.4 if b == "basic"
                else 1.0) for b, accs in val.items() for s, a in enumerate(accs)]
    shared = [r for r in own if r.variant == "basic"] + [_rec("wide_lr0.4", "wide", s, a + 0.07, group="final",
                                                              lr=0.4) for s, a in enumerate(val["wide"])]
    pilots = [_rec("basic_lr0.4", "basic", 1000, 0.6, group="pilot", lr=0.4)]
    n = study.finals_numbers({"own_lr": own, "shared_lr": shared}, "basic", pilots)
    row = next(r for r in n["differences"] if r["setting"] == "own_lr")
    assert (row["a"], row["b"]) == ("wide", "basic")                 # the reference on the b side
    d = np.subtract(val["wide"], val["basic"])
    half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / math.sqrt(3)
    v = row["final_val_acc"]
    assert v["mean_difference"] == pytest.approx(d.mean()) and v["ci95_low"] == pytest.approx(d.mean() - half)
    assert v["df"] == 2 and v["verdict"] == ("real" if d.mean() - half > 0 else "within noise")
    assert row["test_acc"]["interval_method"] != v["interval_method"]  # test: bootstrap over images too
    assert n["variants"]["own_lr/wide"]["test_acc"]["n"] == 3 and n["runs"] == 9
    across = {r["block"]: r for r in n["setting_vs_setting"]}
    assert across["basic"]["same_runs"] and not across["wide"]["same_runs"]
    assert n["finals_disjoint_from_pilots"] and n["pilot_seeds"] == [1000] and n["final_seeds"] == [0, 1, 2]
    sizes = hw.block_sizes(hw.block_units(10), 10)
    md = hw.finals_markdown(n, sizes)
    assert "wide" in md and "(n=3, df=2)" in md


def test_layers_numbers_against_a_hand_computation(tmp_path):
    base, swap = (0.5, 0.6, 0.7), (0.55, 0.62, 0.78)
    recs = [_rec("base", "base", s, a, group="none") for s, a in enumerate(base)]
    recs += [_rec("attn_se", "attn_se", s, a, group="attention") for s, a in enumerate(swap)]
    n = hw.layers_numbers(recs, {"attn_se_seed0": {"gem_p": [3.1]}})
    se = n["variants"]["attention/attn_se"]
    assert se["test_acc"]["mean"] == pytest.approx(np.mean(swap)) and se["runs"] == 3 and se["diverged"] == 0
    d = np.subtract(swap, base)                   # paired by seed (final val acc = acc - 0.075 in the fakes)
    half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / math.sqrt(3)
    row = n["vs_base"][0]
    assert (row["a"], row["b"]) == ("attention/attn_se", "none/base")
    assert row["final_val_acc"]["mean_difference"] == pytest.approx(d.mean())
    assert row["final_val_acc"]["ci95_low"] == pytest.approx(d.mean() - half)
    assert row["final_val_acc"]["verdict"] == "within noise"
    assert row["test_acc"]["mean_difference"] == pytest.approx(d.mean(), abs=0.02)   # fakes' predictions
    assert se["learned"]["attn_se_seed0"] == {"gem_p": [3.1]} and not n["all_diverged"]
    hw.write_analysis(n, hw.layers_markdown(n), tmp_path, "layers")
    assert json.loads((tmp_path / "analysis.json").read_text())["variants"]["none/base"]["test_acc"]["n"] == 3
    assert "within noise" in (tmp_path / "analysis.md").read_text()
    plots_blocks.plot_layer_swaps(n, tmp_path / "swaps.png", "t")


def _diverged_before_any_evaluation(r):
    """What ``--lr 1e30`` gives: non-finite loss at the second step, before the first evaluation point."""
    r = dataclasses.replace(r, history=History(), step_loss=[2.3], epoch_time_s=[],
                            grad_stats=GradStats(names=["w"], step=[0], l2=[[1.5]], mean_abs=[[0.1]]),
                            diverged_at={"epoch": 1, "step": 1, "reason": "loss became nan"})
    return dataclasses.replace(r, summary=summarise(r))


def test_sweep_and_finals_figures_on_synthetic_records(tmp_path):
    run_points, _ = _fake_sweep({"basic": 0.4, "wide": 1.0}, {"basic": 2.5, "wide": 6.25})
    r = study.run_sweep(["basic", "wide"], [0.16, 0.4, 1.0], run_points, 16.0, 0.2)
    n = study.sweep_numbers(r)
    point = n["blocks"]["basic"]["points"][0]
    assert point["n"] == 3 and point["grad_rms"]["skip_steps"] == 1 and point["loss_spike_steps"]["50"]["n"] == 3
    assert "first unstable lr 2.5" in hw.sweep_markdown(n)
    plots_blocks.plot_stability(n, tmp_path / "stability.png", "t")
    stable = {b: v["highest_stable_lr"] for b, v in n["blocks"].items()}
    plots_blocks.plot_loss_at_lr(study.loss_curves_at(r, stable), tmp_path / "loss.png", "t")
    finals = [_rec(f"{b}_final", b, s, 0.6 + 0.05 * (b == "wide") + 0.01 * s, group="final", lr=0.4)
              for b in ("basic", "wide") for s in range(3)]
    fn = study.finals_numbers({"shared_lr": finals}, "basic", r.records())
    sizes = {b: {"widths": [16, 32, 64], "blocks_per_stage": 3, "params": 272_000, "mflops": 81.6}
             for b in ("basic", "wide")}
    plots_blocks.plot_block_finals(fn, sizes, tmp_path / "finals.png", "t")
    for name in ("stability", "loss", "finals"):
        assert (tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG"


def test_every_analysis_survives_an_experiment_in_which_every_run_diverged(tmp_path):
    """With every run diverged the analyses and figures still write what they can, and say so."""
    layers = [_diverged_before_any_evaluation(_rec(v.name, v.name, s, 0.5, group=v.layer, status="diverged"))
              for s in range(2) for v in hw.LAYER_VARIANTS]
    ln = hw.layers_numbers(layers, {r.model: {"swish_beta": [float("nan")]} for r in layers})

    def run_points(points):
        return {(b, lr): [_diverged_before_any_evaluation(_rec(f"{b}_lr{lr:g}", b, 1000, 0.5, lr=lr,
                                                               status="diverged"))] for b, lr in points}
    r = study.run_sweep(list(hw.BLOCK_DESIGNS), [1e29, 1e30], run_points, 1e31, 0.2)
    sn = study.sweep_numbers(r)
    for n, md, name in ((ln, hw.layers_markdown(ln), "layers"), (sn, hw.sweep_markdown(sn), "sweep")):
        assert n["all_diverged"] and n["diverged_runs"] == n["runs"] > 0
        assert "Every run diverged" in md
        hw.write_analysis(n, md, tmp_path / name, name)
        saved = json.loads((tmp_path / name / "analysis.json").read_text())   # strict JSON: no NaN
        assert saved["all_diverged"] is True
    assert ln["vs_base"][0]["test_acc"]["verdict"].startswith("diverged or missing")
    assert sn["blocks"]["basic"]["frontier"]["frontier"] == 1e29 and sn["shared_lr"] is None
    plots_blocks.plot_layer_swaps(ln, tmp_path / "swaps.png", "t")
    plots_blocks.plot_stability(sn, tmp_path / "stability.png", "t")
    plots_blocks.plot_loss_at_lr({}, tmp_path / "loss.png", "t")
    assert all((tmp_path / f"{n}.png").stat().st_size > 2000 for n in ("swaps", "stability", "loss"))


def _legends(monkeypatch, plot, *args) -> list[list[str]]:
    """The legend texts of each panel of the figure ``plot(*args)`` draws."""
    figs = []
    monkeypatch.setattr(plots_blocks, "save_figure", lambda fig, path: figs.append(fig) or path)
    plot(*args)
    return [[t.get_text() for t in ax.get_legend().get_texts()] if ax.get_legend() else [] for ax in figs[0].axes]


def test_stability_legend_names_only_what_each_panel_draws(monkeypatch, tmp_path):
    """A block with no finite accuracy is named by its crosses ("no stable lr"), not by an empty line;
    a panel with nothing drawn (no gradient sample after step 0) has no legend."""
    def run_points(points):
        return {(b, lr): [_diverged_before_any_evaluation(_rec(f"{b}_lr{lr:g}", b, 1000, 0.5, lr=lr,
                                                               status="diverged"))] for b, lr in points}
    sn = study.sweep_numbers(study.run_sweep(["basic", "wide"], [1e29, 1e30], run_points, 1e31, 0.2))
    acc, grad, spikes = _legends(monkeypatch, plots_blocks.plot_stability, sn, tmp_path / "s.png", "t")
    assert acc == ["basic: no stable lr", "wide: no stable lr", "an unstable run at this lr"]
    assert grad == [] and spikes == ["basic", "wide"]     # spike counts up to the divergence exist
    run_points, _ = _fake_sweep({"basic": 0.4, "wide": 1.0}, {"basic": 2.5, "wide": 6.25})
    sn = study.sweep_numbers(study.run_sweep(["basic", "wide"], [0.16, 0.4, 1.0], run_points, 16.0, 0.2))
    acc, grad, spikes = _legends(monkeypatch, plots_blocks.plot_stability, sn, tmp_path / "s.png", "t")
    assert acc == ["basic", "wide", "an unstable run at this lr"] and spikes == ["basic", "wide"]


def test_training_cost_legend_does_not_call_every_net_custom(monkeypatch, tmp_path):
    ratio = {"median": 1.2, "q25": 1.1, "q75": 1.3}
    training = {"fp32": {"nets": {"base": {"ratio_vs_base": ratio}, "act_swish": {"ratio_vs_base": ratio},
                                  "act_swish_autograd": {"ratio_vs_base": ratio}}}}
    [texts] = _legends(monkeypatch, plots_blocks.plot_training_cost, training, tmp_path / "c.png", "t")
    assert texts == ["fp32: the net as trained", "fp32: its custom layers under autograd"]


# ------------------------------------------------------------------------------------- speed
def test_bf16_wrapper_runs_the_forward_under_autocast_with_custom_layers_as_fp32_islands():
    seen = {}
    net = nn.Sequential(nn.Conv2d(3, 4, 3), Swish(1.0), nn.Conv2d(4, 2, 1))
    net[1].register_forward_hook(lambda m, i, o: seen.update(swish=o.dtype))
    net[2].register_forward_hook(lambda m, i, o: seen.update(conv=o.dtype))
    y = Autocast(net, "cpu")(torch.randn(1, 3, 6, 6))
    assert y.dtype == torch.float32 and seen == {"swish": torch.float32, "conv": torch.bfloat16}


def test_paired_ratio_is_taken_round_by_round():
    times = {"a": {"times_ms": [2.0, 4.0, 6.0]}, "b": {"times_ms": [1.0, 4.0, 2.0]}}
    r = paired_ratio(times, "a", "b")          # per round 2, 1, 3 (the ratio of medians would be 2)
    assert (r["median"], r["min"], r["max"], r["n"]) == (2.0, 1.0, 3.0, 3)


def test_speed_cases_autograd_twin_is_the_custom_forward_under_autograd():
    """The "custom vs autograd" ratio compares like with like: the twin computes the custom layer's forward op for
    op (bit-identical output with the custom layer's parameters loaded, as run_speed does) but its backward is
    autograd's, not the hand-written Function's. (Equality of the gradients: tests/test_custom_layers.py.)"""
    cases = [c for c in speed_cases(8) if c.autograd is not None]
    assert len(cases) == 9
    x = torch.randn(2, 8, 6, 6)
    for case in cases:
        torch.manual_seed(0)
        custom, twin = case.custom(), case.autograd()
        twin.load_state_dict(custom.state_dict())
        xin = (x.relu() + 1e-3 if case.positive_input else x).requires_grad_()
        y, y_twin = custom(xin), twin(xin)
        assert torch.equal(y, y_twin), case.variant
        assert "FunctionBackward" in type(y.grad_fn).__name__, case.variant
        assert "FunctionBackward" not in type(y_twin.grad_fn).__name__, case.variant


# ---------------------------------------------------------------------------------- blocks
def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("cin,cout,stride", [(16, 16, 1), (16, 32, 2), (16, 32, 1)])
def test_basic_block_shape_and_params(cin, cout, stride):
    blk = BasicBlock(cin, cout, stride)
    y = blk(torch.randn(2, cin, 8, 8))
    assert y.shape == (2, cout, 8 // stride, 8 // stride)
    proj = stride != 1 or cin != cout
    # conv3x3 (no bias) + BN(2c) + conv3x3 + BN, projection = conv1x1 + BN
    expected = 9 * cin * cout + 2 * cout + 9 * cout * cout + 2 * cout + (cin * cout + 2 * cout if proj else 0)
    assert _params(blk) == expected
    assert isinstance(blk.shortcut, nn.Sequential) == proj


@pytest.mark.parametrize("cin,cout,stride", [(64, 64, 1), (16, 64, 1), (64, 128, 2)])
def test_bottleneck_block_shape_and_params(cin, cout, stride):
    blk = BottleneckBlock(cin, cout, stride)
    y = blk(torch.randn(2, cin, 8, 8))
    assert y.shape == (2, cout, 8 // stride, 8 // stride)
    mid = cout // 4
    proj = stride != 1 or cin != cout
    expected = (cin * mid + 2 * mid) + (9 * mid * mid + 2 * mid) + (mid * cout + 2 * cout) \
        + (cin * cout + 2 * cout if proj else 0)
    assert _params(blk) == expected


@pytest.mark.parametrize("cin,cout,stride", [(32, 32, 1), (16, 32, 1), (32, 64, 2)])
def test_wide_block_shape_and_params(cin, cout, stride):
    blk = WideBlock(cin, cout, stride, dropout=0.3)
    y = blk(torch.randn(2, cin, 8, 8))
    assert y.shape == (2, cout, 8 // stride, 8 // stride)
    proj = stride != 1 or cin != cout
    # BN(in) + conv3x3 + BN(out) + conv3x3 with bias; projection = bare conv1x1 (no BN, no bias)
    expected = 2 * cin + 9 * cin * cout + 2 * cout + 9 * cout * cout + cout + (cin * cout if proj else 0)
    assert _params(blk) == expected
    assert (blk.shortcut is not None) == proj
    assert any(isinstance(m, nn.Dropout) and m.p == 0.3 for m in blk.modules())


# ------------------------------------------------------------------------------------- CLI
def _cli_args(fake_cifar_folder, tmp_path):
    results, plots = tmp_path / "results", tmp_path / "plots"
    return results, plots, ["--profile", "quick", "--data-dir", str(fake_cifar_folder), "--cache-dir",
                            str(tmp_path / "cache"), "--results-dir", str(results), "--plots-dir", str(plots),
                            "--batch-size", "32"]  # the fake folder has 120 training images; batches drop_last


@pytest.mark.e2e
def test_cli_quick_end_to_end(fake_cifar_folder, tmp_path):
    results, plots, args = _cli_args(fake_cifar_folder, tmp_path)
    assert hw.main(args) == 0
    out = results / "custom_layers"
    speed = json.loads((out / "layer_speed.json").read_text())
    assert len(speed["rows"]) == 2 * len(speed_cases(32)) and {r["precision"] for r in speed["rows"]} == {"fp32",
                                                                                                          "bf16"}
    for row in speed["rows"]:
        assert row["custom_ms"] > 0
        if row["max_abs_diff_vs_reference"] is not None and row["precision"] == "fp32":
            assert row["max_abs_diff_vs_reference"] < 1e-4
    for precision in ("fp32", "bf16"):
        nets = speed["training_cost"][precision]["nets"]
        assert set(nets) == {v.name for v in hw.LAYER_VARIANTS} | {f"{v.name}_autograd" for v in hw.LAYER_VARIANTS
                                                                   if v.custom}
        assert nets["base"]["ratio_vs_base"]["median"] == 1.0 and nets["attn_se"]["ratio_vs_twin"]["n"] >= 2
    quick = hw.PROFILES["quick"]
    layers = json.loads((out / "layers" / "analysis.json").read_text())
    assert len(layers["variants"]) == len(hw.LAYER_VARIANTS) and len(layers["vs_base"]) == len(hw.LAYER_VARIANTS) - 1
    assert all(v["test_acc"]["n"] + v["diverged"] == quick.seeds for v in layers["variants"].values())
    sweep = json.loads((out / "blocks_sweep" / "analysis.json").read_text())
    assert set(sweep["blocks"]) == set(hw.BLOCK_DESIGNS) and sweep["pilot_seeds"] == [1000]
    for b, v in sweep["blocks"].items():
        lrs = [p["lr"] for p in v["points"]]
        assert set(sweep["grid"]) <= set(lrs), b
        assert v["frontier"]["frontier"] is not None or max(lrs) * 2.5 > sweep["lr_cap"], b   # frontier or cap
    finals = json.loads((out / "blocks" / "analysis.json").read_text())
    assert finals["final_seeds"] == [0, 1] and finals["finals_disjoint_from_pilots"]
    assert {k.split("/")[1] for k in finals["variants"]} == set(hw.BLOCK_DESIGNS)
    for b, lr in finals["lrs"]["own_lr"].items():
        assert lr == sweep["blocks"][b]["own_lr"]["winner"]
    assert abs(finals["sizes"]["bottleneck"]["param_gap_vs_reference"]) <= hw.MATCH_TOL
    calls = results / "invocations" / "homework_custom_layers_experiments.json"
    (leg,) = json.loads(calls.read_text())["legs"]
    assert [e["experiment"] for e in leg["experiments"]] == ["speed", "layers", "blocks_sweep", "blocks"]
    assert leg["wall_s"] > 0 and leg["trained"] == sum(e["runs"] for e in leg["experiments"])
    for name in ("layer_speed", "layers_training_cost", "layers_swap_summary", "blocks_stability",
                 "blocks_loss_at_highest_stable_lr", "blocks_finals"):
        assert (plots / f"{name}.png").stat().st_size > 10_000, name
    # the task-3 page reads this run: every number resolves, every figure is linked
    assert report.staged_problems(report.TEMPLATES / "task3_custom_layers.md", results, plots,
                                  folder="custom_layers") == []
    # a second run reuses every finished model and the speed measurements (no retraining)
    before = {p: p.stat().st_mtime_ns for d in ("blocks", "blocks_sweep") for p in (out / d).glob("*_seed*.json")}
    assert hw.main(args + ["--only", "speed", "blocks"]) == 0
    assert {p: p.stat().st_mtime_ns for p in before} == before
    legs = json.loads(calls.read_text())["legs"]     # the partial call is a leg of its own
    assert legs[0] == leg and legs[1]["only"] == ["speed", "blocks"] and legs[1]["trained"] == 0


@pytest.mark.e2e
def test_cli_quick_every_run_diverged(fake_cifar_folder, tmp_path):
    """``--lr 1e30`` makes every run diverge; the script still exits 0 and the analyses say so."""
    results, plots, args = _cli_args(fake_cifar_folder, tmp_path)
    assert hw.main(args + ["--lr", "1e30", "--only", "layers", "blocks"]) == 0
    out = results / "custom_layers"
    for exp in ("layers", "blocks_sweep"):
        analysis = json.loads((out / exp / "analysis.json").read_text())
        assert analysis["all_diverged"] is True and analysis["diverged_runs"] == analysis["runs"] > 0, exp
        assert "Every run diverged" in (out / exp / "analysis.md").read_text()
    assert not (out / "blocks" / "analysis.json").exists()         # no lr was chosen: no final runs
    for name in ("layers_swap_summary", "blocks_stability"):
        assert (plots / f"{name}.png").stat().st_size > 2_000, name
