"""Tests for task 3 (homework_custom_layers_experiments.py) and its helpers (utils/analysis/stability.py,
utils/studies/custom_layers/speed.py, utils/studies/custom_layers/figures.py).

Run from the repo root:  HOMEWORK_THREADS=1 python3 -m pytest tests/test_custom_layers_experiments.py -q

What is checked
  * stability measures on hand-made sequences: loss spikes, gradient-norm statistics, the divergence
    frontier of an lr sweep;
  * the experiment definitions: one skeleton for every block, the same init and no dropout, matched
    parameter counts within 5 %, the runs that are reused being the same runs (config-hash inputs);
  * the analyses on synthetic records (means and intervals against a hand computation), including
    an experiment in which every run diverged, and every figure on both;
  * the speed study's autograd twins run the custom layers' own forward under autograd;
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
from utils.engine.cli import run_cli
from models.cnn_models import BasicBlock, BottleneckBlock, WideBlock
from tests.fakes import fake_record
from utils.studies.custom_layers import figures as plots_blocks
from utils.engine.experiment import ExperimentConfig
from utils.studies.custom_layers.speed import speed_cases
from utils.engine.model_stats import count_parameters
from utils.engine.records import GradStats, History, summarise
from utils.analysis.stability import (divergence_frontier, grad_norm_stats, loss_spike_events, loss_spike_steps,
                             spike_counts)


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


# ------------------------------------------------------------------------ experiment design
def test_block_nets_share_one_skeleton_init_and_no_dropout():
    nets = {b: hw.block_net(b, w, 10) for b, w in hw.CANONICAL_WIDTHS.items()}
    for net in nets.values():
        assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
        assert net.stem[0].out_channels == hw.STEM
        assert [len(s) for s in net.stages] == [hw.BLOCKS_PER_STAGE] * 3
        assert not [m for m in net.modules() if isinstance(m, (nn.Dropout, nn.Dropout2d)) and m.p > 0]
    basic_w = [s[0].conv1.out_channels for s in nets["basic"].stages]
    assert [s[0].conv2.out_channels for s in nets["bottleneck"].stages] == basic_w      # inner = basic widths
    assert [s[0].conv3.out_channels for s in nets["bottleneck"].stages] == [4 * w for w in basic_w]
    assert [s[0].conv1.out_channels for s in nets["wide"].stages] == [hw.WIDEN * w for w in basic_w]
    cfg = hw.BASE_CONFIG
    assert cfg.init == "kaiming" and cfg.zero_init_residual is False and cfg.dropout == 0.0


def test_matched_widths_are_within_5_percent_and_fast_multiples_of_8():
    widths = hw.block_widths("matched", 10)
    target = count_parameters(hw.block_net("bottleneck", hw.CANONICAL_WIDTHS["bottleneck"], 10))["total"]
    for block, w in widths.items():
        params = count_parameters(hw.block_net(block, w, 10))["total"]
        assert abs(params - target) / target <= 0.05, (block, w, params)
        assert all(x % hw.WIDTH_STEP == 0 for x in w)
    assert widths["bottleneck"] == hw.CANONICAL_WIDTHS["bottleneck"]     # the target is its own match
    assert hw.scaled_widths((16, 32, 64), 64) == (16, 32, 64)


def test_reused_runs_are_the_same_runs():
    """What the config hash is made of agrees: the matched bottleneck builds the canonical bottleneck's
    net, and the sweep's factor-1 spec has the matched run's config (so run_reusing reuses them)."""
    cfg = ExperimentConfig(lr=0.1)
    canonical = {s.name: s for s in hw.block_specs("canonical", hw.block_widths("canonical", 10), 10, 2)}
    matched = {s.name: s for s in hw.block_specs("matched", hw.block_widths("matched", 10), 10, 2)}
    sweep = {s.name: s for s in hw.sweep_specs(hw.block_widths("matched", 10), 10, cfg.lr, 2)}
    a, b = canonical["bottleneck_canonical_seed1"], matched["bottleneck_matched_seed1"]
    assert str(a.build(cfg)) == str(b.build(cfg)) and a.config_for(cfg) == b.config_for(cfg)
    s, m = sweep["wide_lr0.1_seed1"], matched["wide_matched_seed1"]
    assert str(s.build(cfg)) == str(m.build(cfg)) and s.config_for(cfg) == m.config_for(cfg)
    lrs = sorted({x.lr for x in sweep.values()})
    assert len(lrs) == 5 and lrs[-1] / lrs[0] >= 10 and all(x.group == "lr_sweep" for x in sweep.values())


def test_layer_specs_every_variant_over_the_same_seeds():
    specs = hw.layer_specs(10, 3)
    assert len(specs) == 3 * len(hw.LAYER_VARIANTS)
    for v in hw.LAYER_VARIANTS:
        assert sorted(s.seed for s in specs if s.variant == v.name) == [0, 1, 2]
    assert len({(s.group, s.variant) for s in specs}) == len(hw.LAYER_VARIANTS)   # one key per variant


# ------------------------------------------------------------------------------- analyses
def _rec(model, variant, seed, acc, group="g", lr=0.1, status="completed", **kw):
    return fake_record(f"{model}_seed{seed}", group=group, variant=variant, seed=seed, acc=acc, lr=lr,
                       status=status, grad_l2=[[3.0, 4.0], [1.0, 1.0], [2.0, 1.0]], **kw)


def _diverged_before_any_evaluation(r):
    """What ``--lr 1e30`` gives: non-finite loss at the second step, before the first evaluation point."""
    r = dataclasses.replace(r, history=History(), step_loss=[2.3], epoch_time_s=[],
                            grad_stats=GradStats(names=["w"], step=[0], l2=[[1.5]], mean_abs=[[0.1]]),
                            diverged_at={"epoch": 1, "step": 1, "reason": "loss became nan"})
    return dataclasses.replace(r, summary=summarise(r))


def test_layers_numbers_against_a_hand_computation(tmp_path):
    base, swap = (0.5, 0.6, 0.7), (0.55, 0.62, 0.78)
    recs = [_rec("base", "base", s, a, group="base") for s, a in enumerate(base)]
    recs += [_rec("attn_se", "attn_se", s, a, group="attention") for s, a in enumerate(swap)]
    n = hw.layers_numbers(recs, {"attn_se_seed0": {"gem_p": [3.1]}})
    se = n["variants"]["attn_se"]
    assert se["test_acc"]["mean"] == pytest.approx(np.mean(swap)) and se["runs"] == 3 and se["diverged"] == 0
    d = np.subtract(swap, base)                   # paired by seed
    half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / math.sqrt(3)
    row = n["vs_base"][0]["test_acc"]
    assert row["paired"] and row["mean_difference"] == pytest.approx(d.mean())
    assert row["ci95_low"] == pytest.approx(d.mean() - half) and row["verdict"] == "within noise"
    assert se["learned"]["attn_se_seed0"] == {"gem_p": [3.1]} and not n["all_diverged"]
    hw.write_analysis(n, hw.layers_markdown(n), tmp_path, "layers")
    assert json.loads((tmp_path / "analysis.json").read_text())["variants"]["base"]["test_acc"]["n"] == 3
    assert "within noise" in (tmp_path / "analysis.md").read_text()
    plots_blocks.plot_layer_swaps(n, tmp_path / "swaps.png", "t")


def test_blocks_and_sweep_numbers_on_synthetic_records(tmp_path):
    recs = [_rec(f"{b}_matched", b, s, a + 0.01 * s, group="matched") for b, a in
            (("basic", 0.6), ("bottleneck", 0.7), ("wide", 0.65)) for s in range(3)]
    n = hw.blocks_numbers(recs, "matched", {"basic": (24, 40, 80), "bottleneck": (64, 128, 256), "wide": (24, 40, 80)})
    assert n["blocks"]["bottleneck"]["test_acc"]["mean"] == pytest.approx(0.71)
    pair = next(r for r in n["differences"] if (r["a"], r["b"]) == ("basic", "bottleneck"))
    assert pair["test_acc"]["mean_difference"] == pytest.approx(-0.1) and pair["test_acc"]["verdict"] == "real"
    assert n["blocks"]["basic"]["grad_norm_median"]["mean"] == pytest.approx(math.sqrt(5))   # norms 5, sqrt2, sqrt5
    assert n["param_gap_vs_target"] == 0.0     # the fakes share one architecture
    sweep = [_rec(f"basic_lr{lr:g}", "basic", 0, 0.6, group="lr_sweep", lr=lr,
                  status="diverged" if lr >= 0.6 else "completed") for lr in (0.04, 0.25, 0.6, 1.6)]
    sweep.append(recs[0])                                   # the base-lr point, reused from the regime
    sn = hw.sweep_numbers(sweep, 0.1)
    basic = sn["blocks"]["basic"]
    assert [p["lr"] for p in basic["points"]] == [0.04, 0.1, 0.25, 0.6, 1.6]
    assert basic["frontier"]["frontier"] == 0.6 and basic["frontier"]["stable_up_to"] == 0.25
    assert basic["points"][-1]["diverged"] == 1 and basic["points"][-1]["test_acc"]["n"] == 0
    assert basic["points"][-1]["final_val_acc"]["n"] == 0      # not the last validation point before diverging
    assert "diverges from lr 0.6" in hw.sweep_markdown(sn)
    plots_blocks.plot_block_regimes({"canonical": n, "matched": n}, tmp_path / "regimes.png", "t")
    plots_blocks.plot_lr_sweep(sn, tmp_path / "sweep.png", "t")
    plots_blocks.plot_seed_bands(hw._by_variant(recs), tmp_path / "bands.png", "t")
    for name in ("regimes", "sweep", "bands"):
        assert (tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG"


def test_every_analysis_survives_an_experiment_in_which_every_run_diverged(tmp_path):
    """Issue 16: with every run diverged the analyses and figures still write what they can, and say so."""
    layers = [_diverged_before_any_evaluation(_rec(v.name, v.name, s, 0.5, group=v.layer, status="diverged"))
              for s in range(2) for v in hw.LAYER_VARIANTS]
    blocks = [_diverged_before_any_evaluation(_rec(f"{b}_canonical", b, s, 0.5, status="diverged"))
              for b in hw.BLOCK_TYPES for s in range(2)]
    sweep = [_diverged_before_any_evaluation(_rec(f"{b}_lr{lr:g}", b, 0, 0.5, lr=lr, status="diverged"))
             for b in hw.BLOCK_TYPES for lr in (1e29, 1e30)]
    ln = hw.layers_numbers(layers, {r.model: {"swish_beta": [float("nan")]} for r in layers})
    bn = hw.blocks_numbers(blocks, "canonical", hw.CANONICAL_WIDTHS)
    sn = hw.sweep_numbers(sweep, 1e30)
    for n, md, name in ((ln, hw.layers_markdown(ln), "layers"), (bn, hw.blocks_markdown(bn), "blocks"),
                        (sn, hw.sweep_markdown(sn), "sweep")):
        assert n["all_diverged"] and n["diverged_runs"] == n["runs"] > 0
        assert "Every run diverged" in md
        hw.write_analysis(n, md, tmp_path / name, name)
        saved = json.loads((tmp_path / name / "analysis.json").read_text())   # strict JSON: no NaN
        assert saved["all_diverged"] is True
    assert ln["vs_base"][0]["test_acc"]["verdict"] == "not enough seeds to tell"
    half_way = [_rec("base", "base", s, 0.5, group="base", status="diverged") for s in range(2)]   # curves, then NaN
    assert hw.layers_numbers(half_way)["variants"]["base"]["final_val_acc"]["n"] == 0
    assert sn["blocks"]["basic"]["frontier"]["frontier"] == 1e29 and sn["blocks"]["basic"]["best_lr_by_val"] is None
    plots_blocks.plot_layer_swaps(ln, tmp_path / "swaps.png", "t")
    plots_blocks.plot_block_regimes({"canonical": bn}, tmp_path / "regimes.png", "t")
    plots_blocks.plot_lr_sweep(sn, tmp_path / "sweep.png", "t")
    plots_blocks.plot_seed_bands(hw._by_variant(blocks), tmp_path / "bands.png", "t")
    assert all((tmp_path / f"{n}.png").stat().st_size > 2000 for n in ("swaps", "regimes", "sweep", "bands"))


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
    assert len(speed["rows"]) == len(speed_cases(32))
    for row in speed["rows"]:
        assert row["custom_ms"] > 0
        if row["max_abs_diff_vs_reference"] is not None:
            assert row["max_abs_diff_vs_reference"] < 1e-4
    seeds = hw.PROFILES["quick"].seeds
    layers = json.loads((out / "layers" / "analysis.json").read_text())
    assert set(layers["variants"]) == {v.name for v in hw.LAYER_VARIANTS}
    assert all(v["test_acc"]["n"] + v["diverged"] == seeds for v in layers["variants"].values())
    assert len(layers["vs_base"]) == len(hw.LAYER_VARIANTS) - 1
    for regime in ("canonical", "matched"):
        blocks = json.loads((out / f"blocks_{regime}" / "analysis.json").read_text())
        assert set(blocks["blocks"]) == set(hw.BLOCK_TYPES) and blocks["runs"] == 3 * seeds
    matched = json.loads((out / "blocks_matched" / "analysis.json").read_text())
    assert matched["blocks"]["bottleneck"]["made_in"] == ["custom_layers/blocks_canonical"]   # reused
    assert matched["param_gap_vs_target"] <= 0.05
    sweep = json.loads((out / "lr_sweep" / "analysis.json").read_text())
    lr = hw.BASE_CONFIG.lr
    for b in hw.BLOCK_TYPES:
        points = sweep["blocks"][b]["points"]
        assert len(points) == len(hw.SWEEP_FACTORS)
        base_point = next(p for p in points if p["lr"] == pytest.approx(lr))
        assert {r["made_in"] for r in base_point["runs"]} <= {"custom_layers/blocks_matched",
                                                              "custom_layers/blocks_canonical"}
    assert not list((out / "lr_sweep").glob(f"*_lr{lr:g}_seed0.json"))     # not trained twice
    tuned = json.loads((out / "blocks_tuned" / "analysis.json").read_text())
    chosen = tuned["lr_choice"]["chosen_lr"]
    assert chosen == hw.choose_common_lr(sweep)["chosen_lr"] and tuned["runs"] == 3 * seeds
    assert tuned["config"]["lr"] == pytest.approx(chosen)
    for b in hw.BLOCK_TYPES:    # seed 0 at the chosen lr is the sweep's (or the regimes') run, not retrained
        assert tuned["blocks"][b]["made_in"][0] in {"custom_layers/lr_sweep", "custom_layers/blocks_matched",
                                                    "custom_layers/blocks_canonical"}
    assert not list((out / "blocks_tuned").glob("*_seed0.json"))
    timing = json.loads((out / "timing.json").read_text())
    assert timing["wall_s"] > 0 and set(timing["experiments"]) == {"layers", "blocks_canonical", "blocks_matched",
                                                                   "lr_sweep", "blocks_tuned"}
    for name in ("layer_speed", "layers_swap_summary", "blocks_regimes", "blocks_canonical_curves",
                 "blocks_matched_curves", "blocks_lr_sweep", "blocks_tuned_curves"):
        assert (plots / f"{name}.png").stat().st_size > 10_000, name
    # a second run reuses every finished model and the speed measurements (no retraining)
    before = {p: p.stat().st_mtime_ns for p in (out / "blocks_matched").glob("*_seed*.json")}
    assert hw.main(args + ["--only", "speed", "lr_sweep"]) == 0
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert json.loads((out / "timing.json").read_text()) == timing     # a partial run keeps the whole run's timing


def test_common_lr_is_chosen_on_validation_over_every_block():
    def point(lr, val, diverged=0):
        return {"lr": lr, "diverged": diverged, "final_val_acc": {"mean": val}, "test_acc": {"mean": 1.0 - val}}
    sweep = {"blocks": {"basic": {"points": [point(0.1, 0.60), point(0.4, 0.70), point(1.6, 0.72)]},
                        "wide": {"points": [point(0.1, 0.62), point(0.4, 0.69), point(1.6, 0.56)]}}}
    c = hw.choose_common_lr(sweep)
    assert c["chosen_lr"] == 0.4 and not c["at_grid_edge"]              # 0.695 beats 0.61 and 0.64 at 1.6
    assert c["mean_val_acc_by_lr"]["0.4"] == pytest.approx(0.695)
    sweep["blocks"]["wide"]["points"][1] = point(0.4, float("nan"), diverged=1)
    c = hw.choose_common_lr(sweep)
    assert c["chosen_lr"] == 1.6 and c["at_grid_edge"] and c["mean_val_acc_by_lr"]["0.4"] is None
    for p in sweep["blocks"]["wide"]["points"]:
        p["diverged"] = 1
    assert hw.choose_common_lr(sweep)["chosen_lr"] is None


def test_blocks_tuned_without_the_sweep_is_one_clear_line(fake_cifar_folder, tmp_path, capsys):
    results, plots, args = _cli_args(fake_cifar_folder, tmp_path)
    assert run_cli(hw.main, args + ["--only", "blocks_tuned"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "run --only lr_sweep first" in errors[0] and "Traceback" not in err


@pytest.mark.e2e
def test_cli_quick_every_run_diverged(fake_cifar_folder, tmp_path):
    """Issue 16: ``--lr 1e30`` makes every run diverge; the script still exits 0 and the analyses say so."""
    results, plots, args = _cli_args(fake_cifar_folder, tmp_path)
    assert hw.main(args + ["--lr", "1e30", "--only", "layers", "blocks", "lr_sweep"]) == 0
    out = results / "custom_layers"
    for exp in ("layers", "blocks_canonical", "blocks_matched", "lr_sweep"):
        analysis = json.loads((out / exp / "analysis.json").read_text())
        assert analysis["all_diverged"] is True and analysis["diverged_runs"] == analysis["runs"] > 0, exp
        assert "Every run diverged" in (out / exp / "analysis.md").read_text()
    for name in ("layers_swap_summary", "blocks_regimes", "blocks_lr_sweep"):
        assert (plots / f"{name}.png").stat().st_size > 2_000, name
