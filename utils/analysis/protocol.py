"""Protocol v3: the pre-registered rules every study follows, in code.

1. **Validation chooses, test reports.** Every choice (learning rate, width, schedule) reads the
   validation split of *pilot* runs; the test set is read once per *final* run and only reports.
   A difference between two variants is *real* when its paired 95 % interval on the test set
   (:func:`utils.comparison_utils.compare`: a paired bootstrap over seeds and test images)
   excludes zero. Validation never vetoes a test result, and every interval carries ``n``,
   ``df`` and its ``interval_method``.
2. **Grids bracket** (:func:`bracket`, :func:`select_bracketed`): a winner at the edge of its grid
   is not a choice; the grid is extended geometrically in that direction until the winner is
   interior or :data:`MAX_GRID_EXTENSIONS` points were added (then ``hit_cap``).
3. **Selection and report runs are disjoint** (:func:`pilot_seeds`, :func:`final_seeds`,
   :func:`check_disjoint`): pilots use seeds ``PILOT_SEED_OFFSET + k``, finals ``0..n-1``; a
   final run whose config hash equals a pilot's is an error, never a re-use.
4. **Seeds by rule** (:func:`seeds_needed`): at least :data:`MIN_SEEDS` per compared variant,
   :data:`MORE_SEEDS` where a 3-seed interval straddles zero and a run is cheap.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

MAX_GRID_EXTENSIONS = 3          # grid points a selection may add beyond its pre-registered grid, in total
PILOT_SEED_OFFSET = 1000         # pilot seeds: 1000, 1001, ...; final seeds: 0, 1, ...
MIN_SEEDS = 3                    # every compared variant
MORE_SEEDS = 5                   # where 3 seeds left the interval straddling zero and a run is cheap
CHEAP_RUN_S = 120.0              # "cheap": a run under about 2 minutes


# ------------------------------------------------------------------------------- grids
@dataclass(frozen=True)
class Bracket:
    """Where a grid's winner sits. ``edge``: ``"low"`` / ``"high"`` / None (interior, or a
    one-point grid... see :func:`bracket`); ``next_points``: what to add next (empty when interior
    or the cap is reached); ``step``: the geometric ratio of the grid at that edge."""

    winner: float
    edge: str | None
    next_points: list[float]
    step: float | None


def bracket(grid: Sequence[float], scores: Mapping[float, float | None], added: int = 0,
            max_added: int = MAX_GRID_EXTENSIONS) -> Bracket:
    """Does the validation winner of ``grid`` sit at an edge, and which point comes next?

    ``scores[g]`` is the validation score of grid value ``g`` (higher is better; None or NaN: the
    pilot diverged, never a winner). Ties go to the smaller value. The winner is at the ``"low"``
    (``"high"``) edge when it is the smallest (largest) grid value; the next point is one
    geometric step beyond it, the step being the ratio of the two values at that edge (a grid
    of one value cannot say its step: no extension). ``added`` points were added before; none
    is proposed once ``added >= max_added``.

    Raises:
        ValueError: an empty grid, a non-positive value, or no finite score at all.
    """
    values = sorted(float(g) for g in grid)
    if not values or values[0] <= 0:
        raise ValueError(f"need a non-empty grid of positive values, got {grid}")
    finite = {g: float(s) for g in values if (s := scores.get(g)) is not None and math.isfinite(s)}
    if not finite:
        raise ValueError("no grid point has a finite validation score")
    winner = max(sorted(finite), key=lambda g: finite[g])
    if len(values) < 2 or values[0] < winner < values[-1]:
        return Bracket(winner, None, [], None)
    if winner == values[0]:
        edge, step = "low", values[0] / values[1]
    else:
        edge, step = "high", values[-1] / values[-2]
    nxt = [] if added >= max_added else [float(f"{winner * step:.4g}")]
    return Bracket(winner, edge, nxt, step)


@dataclass
class Selection:
    """What :func:`select_bracketed` did: the final grid, its scores, the winner, the points it
    added, and whether it stopped at the cap with the winner still at an edge."""

    grid: list[float]
    scores: dict[float, float | None]
    winner: float
    edge: str | None
    added: list[float] = field(default_factory=list)
    hit_cap: bool = False
    max_added: int = MAX_GRID_EXTENSIONS
    rule: str = "highest validation score (ties: smaller value); grid extended geometrically while the winner is at an edge"

    def as_dict(self) -> dict:
        return {**asdict(self), "scores": {f"{g:g}": s for g, s in self.scores.items()}}


def select_bracketed(grid: Sequence[float], run_pilots: Callable[[list[float]], Mapping[float, float | None]],
                     max_added: int = MAX_GRID_EXTENSIONS) -> Selection:
    """Run the pilots of ``grid`` (``run_pilots(points) -> {point: validation score}``), then
    extend the grid one point at a time toward the winning edge until the winner is interior or
    ``max_added`` points were added (``hit_cap``). ``run_pilots`` is called with the new points
    only (the runner's cache makes a repeated call cheap anyway)."""
    points = sorted(float(g) for g in grid)
    scores: dict[float, float | None] = dict(run_pilots(points))
    added: list[float] = []
    while True:
        b = bracket(points, scores, len(added), max_added)
        if not b.next_points:
            return Selection(points, dict(sorted(scores.items())), b.winner, b.edge, added,
                             hit_cap=b.edge is not None and len(added) >= max_added, max_added=max_added)
        new = [p for p in b.next_points if p not in scores]
        if not new:     # the proposed point is known already (a rounding collision): nothing more to learn
            return Selection(points, dict(sorted(scores.items())), b.winner, b.edge, added, False, max_added)
        scores.update(run_pilots(new))
        added += new
        points = sorted(points + new)


# ------------------------------------------------------------------------------- seeds
def pilot_seeds(n: int, offset: int = PILOT_SEED_OFFSET) -> list[int]:
    """The seeds of ``n`` selection (pilot) runs: ``offset, offset + 1, ...``."""
    return list(range(offset, offset + n))


def final_seeds(n: int) -> list[int]:
    """The seeds of ``n`` report (final) runs: ``0..n-1``; never a pilot seed (``n <= offset``)."""
    if n > PILOT_SEED_OFFSET:
        raise ValueError(f"{n} final seeds would reach the pilot seeds from {PILOT_SEED_OFFSET}")
    return list(range(n))


class SelectionLeak(ValueError):
    """A final (report) run is the same run as a selection pilot."""


def check_disjoint(finals: Iterable, pilots: Iterable) -> None:
    """Raise :class:`SelectionLeak` when a final run's config hash equals a pilot's (records or
    anything with ``config_hash`` and ``model``): the run that chose cannot also report."""
    seen = {p.config_hash: p.model for p in pilots}
    leaks = [(f.model, seen[f.config_hash]) for f in finals if f.config_hash in seen]
    if leaks:
        raise SelectionLeak(f"final runs that are pilots: {leaks}")


def seeds_needed(straddles_zero: bool | None, run_cost_s: float) -> int:
    """Seeds a compared variant gets: :data:`MIN_SEEDS` always; :data:`MORE_SEEDS` when the
    3-seed interval of its comparison straddles zero (``straddles_zero``; None = not yet measured)
    and one run costs under :data:`CHEAP_RUN_S` seconds."""
    if straddles_zero and run_cost_s < CHEAP_RUN_S:
        return MORE_SEEDS
    return MIN_SEEDS
