"""Protocol v3 rules: bracketing grids, disjoint seeds, seeds by rule."""

from __future__ import annotations

import types

import pytest

from utils.analysis.protocol import (MAX_GRID_EXTENSIONS, PILOT_SEED_OFFSET, SelectionLeak, bracket, check_disjoint,
                                     final_seeds, pilot_seeds, seeds_needed, select_bracketed)

GRID = [0.01, 0.02, 0.04]


def test_bracket_interior_winner_needs_nothing():
    b = bracket(GRID, {0.01: 0.5, 0.02: 0.7, 0.04: 0.6})
    assert (b.winner, b.edge, b.next_points) == (0.02, None, [])


def test_bracket_edges_extend_geometrically():
    high = bracket(GRID, {0.01: 0.5, 0.02: 0.6, 0.04: 0.7})
    assert (high.winner, high.edge, high.next_points, high.step) == (0.04, "high", [0.08], 2.0)
    low = bracket(GRID, {0.01: 0.8, 0.02: 0.6, 0.04: None})          # a diverged pilot is never a winner
    assert (low.edge, low.next_points) == ("low", [0.005])
    assert bracket(GRID, {0.01: 0.5, 0.02: 0.6, 0.04: 0.7}, added=MAX_GRID_EXTENSIONS).next_points == []
    assert bracket(GRID, {0.01: 0.7, 0.02: 0.7, 0.04: 0.6}).winner == 0.01   # ties: the smaller value
    with pytest.raises(ValueError):
        bracket(GRID, {0.01: None})


def test_select_bracketed_extends_until_interior():
    peak = 0.3                                                   # true optimum far above the grid

    def score(lr):
        return -abs(lr - peak)

    calls = []

    def run(points):
        calls.append(list(points))
        return {p: score(p) for p in points}

    sel = select_bracketed(GRID, run, max_added=10)
    assert sel.edge is None and not sel.hit_cap and sel.winner == pytest.approx(0.32)
    assert sel.added == [0.08, 0.16, 0.32, 0.64] and calls[0] == GRID and calls[1] == [0.08]


def test_select_bracketed_records_hit_cap():
    sel = select_bracketed(GRID, lambda pts: {p: p for p in pts})      # always better higher
    assert sel.hit_cap and sel.edge == "high" and len(sel.added) == MAX_GRID_EXTENSIONS
    assert sel.as_dict()["hit_cap"] is True and "0.32" in sel.as_dict()["scores"]


def test_pilot_and_final_seeds_never_collide():
    assert final_seeds(5) == [0, 1, 2, 3, 4]
    assert pilot_seeds(3) == [PILOT_SEED_OFFSET, PILOT_SEED_OFFSET + 1, PILOT_SEED_OFFSET + 2]
    assert not set(final_seeds(50)) & set(pilot_seeds(50))


def test_check_disjoint_raises_on_a_reused_pilot():
    rec = lambda model, h: types.SimpleNamespace(model=model, config_hash=h)   # noqa: E731
    check_disjoint([rec("final0", "a"), rec("final1", "b")], [rec("pilot", "c")])
    with pytest.raises(SelectionLeak, match="pilot"):
        check_disjoint([rec("final0", "a")], [rec("pilot", "a")])


def test_seeds_needed():
    assert seeds_needed(None, 30.0) == 3
    assert seeds_needed(False, 30.0) == 3
    assert seeds_needed(True, 30.0) == 5
    assert seeds_needed(True, 600.0) == 3                      # expensive: 3 seeds, the straddle stays reported
