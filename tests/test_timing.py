"""Tests for utils/analysis/paired_timing.py (no timed assertions: only the fields and the turn order)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from utils.analysis.paired_timing import rotated, time_forward_backward


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
