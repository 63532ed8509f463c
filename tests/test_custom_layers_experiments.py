"""Tests for task 3 (homework_custom_layers_experiments.py) and the helpers it added.

Run from the repo root:  HOMEWORK_THREADS=1 python3 -m pytest tests/test_custom_layers_experiments.py -q

What is checked
  * the blocks analysis on synthetic records (the helpers have their own test files);
  * the speed study's autograd twins run the custom layers' own forward under autograd;
  * output shape and a hand-computed parameter count of BasicBlock, BottleneckBlock and WideBlock,
    with and without a projection shortcut;
  * the script end to end (``--profile quick``) on a generated CIFAR-10 image folder.
"""

from __future__ import annotations

import json

import pytest

from tests.fakes import fake_record
import torch
from torch import nn

from models.cnn_models import BasicBlock, BottleneckBlock, WideBlock


def test_speed_cases_autograd_twin_is_the_custom_forward_under_autograd():
    """The "custom vs autograd" ratio compares like with like: the twin computes the custom layer's forward op for
    op (bit-identical output with the custom layer's parameters loaded, as run_speed does) but its backward is
    autograd's, not the hand-written Function's. (Equality of the gradients: tests/test_custom_layers.py.)"""
    import homework_custom_layers_experiments as hw

    cases = [c for c in hw.speed_cases(8) if c.autograd is not None]
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


# ----------------------------------------------------------------------------- aggregation
def test_analyse_blocks_on_synthetic_records(tmp_path):
    """The blocks analysis aggregates seeds (mean ± std) and reads the high-lr run, incl. a diverged one."""
    import homework_custom_layers_experiments as hw

    def record(model, group, variant, seed, acc, lr=0.1, status="completed"):
        return fake_record(model, group=group, variant=variant, seed=seed, acc=acc, lr=lr, epochs=1,
                           val_loss=[1.8, 1.4 + seed / 10], status=status,
                           grad_l2=[[3.0, 4.0], [1.0, 1.0], [2.0, 1.0]])

    recs = [record(f"{b}_seed{s}", "seeds", b, s, acc) for b in hw.BLOCK_ARCHS for s, acc in enumerate((0.5, 0.6, 0.7))]
    recs += [record("basic_lr_high", "high_lr", "basic", 0, 0.55, lr=0.8),
             record("bottleneck_lr_high", "high_lr", "bottleneck", 0, 0.0, lr=0.8, status="diverged")]
    out = hw.analyse_blocks(recs, tmp_path, tmp_path, 0.1, 0.8)
    basic = out["blocks"]["basic"]
    assert basic["test_acc"]["mean"] == pytest.approx(0.6) and basic["test_acc"]["std"] == pytest.approx(0.1)
    assert basic["grad_norm"]["at_init"]["mean"] == pytest.approx(5.0)
    assert basic["high_lr"]["delta_vs_same_seed_pp"] == pytest.approx(5.0)
    assert out["blocks"]["bottleneck"]["high_lr"]["status"] == "diverged"
    assert "high_lr" not in out["blocks"]["wide"]
    saved = json.loads((tmp_path / "blocks_stability.json").read_text())
    assert saved["blocks"]["basic"]["test_acc"]["n"] == 3
    assert (tmp_path / "blocks_loss_bands.png").stat().st_size > 0


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


def test_block_nets_share_one_skeleton():
    import homework_custom_layers_experiments as hw

    nets = {n: hw.build_block_net(a, 10)(None) for n, a in hw.BLOCK_ARCHS.items()}
    for n, net in nets.items():
        assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
        assert net.stem[0].out_channels == hw.STEM
        assert [len(s) for s in net.stages] == [1, 1, 1]
    # bottleneck: outputs 4x basic, 3x3 inner width = basic width; wide: basic width x 2
    basic_w = [s[0].conv1.out_channels for s in nets["basic"].stages]
    assert [s[0].conv2.out_channels for s in nets["bottleneck"].stages] == basic_w
    assert [s[0].conv3.out_channels for s in nets["bottleneck"].stages] == [4 * w for w in basic_w]
    assert [s[0].conv1.out_channels for s in nets["wide"].stages] == [2 * w for w in basic_w]


# ------------------------------------------------------------------------------------- CLI
@pytest.mark.e2e
def test_cli_quick_end_to_end(fake_cifar_folder, tmp_path, monkeypatch):
    import homework_custom_layers_experiments as hw

    monkeypatch.setenv("HOMEWORK_THREADS", "1")
    results, plots = tmp_path / "results", tmp_path / "plots"
    args = ["--profile", "quick", "--data-dir", str(fake_cifar_folder), "--cache-dir", str(tmp_path / "cache"),
            "--results-dir", str(results), "--plots-dir", str(plots),
            "--batch-size", "32"]  # the fake folder has 120 training images; batches drop_last
    assert hw.main(args) == 0
    out = results / "custom_layers"
    speed = json.loads((out / "layer_speed.json").read_text())
    assert len(speed["rows"]) == len(hw.speed_cases(32))
    for row in speed["rows"]:
        assert row["custom_ms"] > 0
        if row["max_abs_diff_vs_reference"] is not None:
            assert row["max_abs_diff_vs_reference"] < 1e-4
    layers = json.loads((out / "layers_comparison.json").read_text())
    assert {r["model"] for r in layers["rows"]} >= {"base", "conv_ws", "attn_cbam", "act_swish", "pool_mixed",
                                                    "head_gem"}
    assert layers["base_test_acc"]["n"] == hw.PROFILES["quick"].base_seeds
    blocks = json.loads((out / "blocks_stability.json").read_text())
    assert set(blocks["blocks"]) == set(hw.BLOCK_ARCHS)
    for b in blocks["blocks"].values():
        assert b["test_acc"]["n"] == hw.PROFILES["quick"].block_seeds
        assert "high_lr" in b
    for name in ("layer_speed", "layers_swap_summary", "layers_learning_curves", "blocks_loss_bands",
                 "blocks_grad_norms", "blocks_accuracy_cost", "blocks_high_lr", "blocks_gradient_flow"):
        assert (plots / f"{name}.png").stat().st_size > 10_000, name
    # a second run reuses every finished model and the speed measurements (no retraining)
    before = {p: p.stat().st_mtime_ns for p in (out / "blocks").glob("*.json") if p.name != "summary.json"}
    assert hw.main(args + ["--only", "speed", "blocks"]) == 0
    assert {p: p.stat().st_mtime_ns for p in before} == before
