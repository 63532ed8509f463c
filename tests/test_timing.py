"""Tests for utils/analysis/paired_timing.py (no timed assertions: only the fields and the turn order)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from utils.analysis.paired_timing import paired_ratios, rotated, time_forward_backward, time_training_steps


def test_rotated_puts_every_item_first_once_per_cycle():
    names = ["a", "b", "c"]
    assert [rotated(names, r) for r in range(4)] == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"],
                                                    ["a", "b", "c"]]
    assert rotated([], 3) == []


def test_time_forward_backward_fields():
    x = torch.randn(2, 4, 8, 8)
    t = time_forward_backward({"a": nn.Conv2d(4, 4, 3, padding=1), "b": nn.ReLU()}, x, repeats=3, warmup=1)
    assert set(t) == {"a", "b"}
    for v in t.values():
        assert len(v["times_ms"]) == 3
        assert 0 < v["min_ms"] <= v["median_ms"]
    with pytest.raises(ValueError):
        time_forward_backward({}, x)
    with pytest.raises(ValueError):
        time_forward_backward({"a": nn.ReLU()}, x, repeats=0)


def test_time_forward_backward_leaves_no_gradients_on_the_input():
    x = torch.randn(1, 2, 4, 4)
    conv = nn.Conv2d(2, 2, 3)
    time_forward_backward({"conv": conv}, x, repeats=1, warmup=0)
    assert x.grad is None and not x.requires_grad      # timed on a copy


def test_training_steps_train_and_report_spread():
    torch.manual_seed(0)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    a, b = nn.Linear(6, 3), nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    before = a.weight.detach().clone()
    t = time_training_steps({"a": a, "b": b}, x, y, repeats=5, warmup=1)
    assert not torch.equal(before, a.weight)                       # a real step: the optimizer moved it
    assert [len(v) for v in t["rounds_ms"].values()] == [5, 5] and t["batch"] == 8
    s = t["step_ms"]["b"]
    assert s["n"] == 5 and s["min"] <= s["q25"] <= s["median"] <= s["q75"] <= s["max"]
    with pytest.raises(ValueError):
        time_training_steps({}, x, y)


def test_training_steps_run_under_the_given_autocast():
    seen = []

    class Probe(nn.Linear):
        def forward(self, x):
            seen.append(torch.is_autocast_enabled("cpu"))
            return super().forward(x)

    time_training_steps({"p": Probe(4, 2)}, torch.randn(2, 4), torch.tensor([0, 1]), repeats=1, warmup=0,
                        autocast=lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    assert seen == [True]


def test_paired_ratios_are_per_round():
    rounds = {"ref": [10.0, 20.0, 40.0], "m": [20.0, 40.0, 80.0]}     # the machine slowed 4x; m is always 2x
    r = paired_ratios(rounds, "ref")
    assert r["m"]["median"] == 2.0 and r["m"]["q25"] == r["m"]["q75"] == 2.0 and r["ref"]["median"] == 1.0
    with pytest.raises(KeyError):
        paired_ratios(rounds, "missing")
    with pytest.raises(ValueError):
        paired_ratios({"ref": [1.0], "m": [1.0, 2.0]}, "ref")
