"""Learning rate per variant by protocol v3: pilots on a bracketing grid, read on validation, then
final seeds disjoint from the pilots (``utils.analysis.protocol``).

Generic over what is trained: the caller passes one base :class:`ModelSpec` per variant and a
``train(specs) -> records`` function (normally :func:`utils.engine.runner.run_experiment` bound to an
experiment folder and a config), so the runner's cache makes a re-run free.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Callable, Sequence

from utils.analysis.protocol import (MAX_GRID_EXTENSIONS, Selection, check_disjoint, final_seeds, pilot_seeds,
                                     select_bracketed)
from utils.comparison_utils import variant_key
from utils.engine.experiment import ModelSpec
from utils.engine.records import RunRecord

log = logging.getLogger(__name__)

Train = Callable[[list[ModelSpec]], list[RunRecord]]


@dataclass
class Tuned:
    """One variant's selection (grid, validation scores, winner, edge, cap) and its runs."""

    key: str                                   # "group/variant"
    selection: Selection
    pilots: list[RunRecord] = field(default_factory=list)
    finals: list[RunRecord] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {**self.selection.as_dict(), "chosen_lr": self.selection.winner,
                "pilot_models": [r.model for r in self.pilots], "final_models": [r.model for r in self.finals]}


def pilot_spec(spec: ModelSpec, lr: float, seed: int) -> ModelSpec:
    """The selection run of ``spec`` at ``lr`` (its own name, a pilot seed)."""
    return dataclasses.replace(spec, name=f"pilot_{spec.name}_lr{lr:g}", lr=lr, seed=seed)


def final_specs(spec: ModelSpec, lr: float, seeds: int) -> list[ModelSpec]:
    """The report runs of ``spec`` at the chosen ``lr``, seeds ``0..seeds-1``."""
    chosen = dataclasses.replace(spec, lr=lr)
    return [chosen.with_seed(k) for k in final_seeds(seeds)]


def val_score(record: RunRecord) -> float | None:
    """What a pilot is chosen on: final validation accuracy; None for a diverged run."""
    return record.summary.final_val_acc if record.completed else None


def select_lr(spec: ModelSpec, grid: Sequence[float], train: Train,
              max_added: int = MAX_GRID_EXTENSIONS) -> tuple[Selection, list[RunRecord]]:
    """The bracketed lr selection of one variant: one pilot seed per grid point (extended while
    the winner is at an edge). Where every pilot diverged (no finite score, no direction to
    extend in) the smallest lr is taken and the selection says ``edge="low"``."""
    seed = pilot_seeds(1)[0]
    pilots: list[RunRecord] = []

    def run_pilots(points: list[float]) -> dict[float, float | None]:
        records = train([pilot_spec(spec, lr, seed) for lr in points])
        pilots.extend(records)
        return {float(r.config["lr"]): val_score(r) for r in records}

    try:
        selection = select_bracketed(grid, run_pilots, max_added)
    except ValueError:
        scores = {float(r.config["lr"]): None for r in pilots}
        selection = Selection(sorted(scores), scores, min(scores), "low", [], False, max_added,
                              rule="every pilot diverged: the smallest lr, unbracketed")
    log.info("%s: lr %g chosen from %s (edge %s, hit cap %s)", variant_key(spec.group, spec.variant),
             selection.winner, {f"{k:g}": v for k, v in selection.scores.items()}, selection.edge, selection.hit_cap)
    return selection, pilots


def tune_and_run(specs: Sequence[ModelSpec], grid: Sequence[float], seeds: int, train_pilots: Train,
                 train_finals: Train, max_added: int = MAX_GRID_EXTENSIONS) -> list[Tuned]:
    """For each base spec: :func:`select_lr`, then ``seeds`` final runs at the winner, checked
    disjoint from the pilots (:func:`~utils.analysis.protocol.check_disjoint`)."""
    out = []
    for spec in specs:
        selection, pilots = select_lr(spec, grid, train_pilots, max_added)
        finals = train_finals(final_specs(spec, selection.winner, seeds))
        check_disjoint(finals, pilots)
        out.append(Tuned(variant_key(spec.group, spec.variant), selection, pilots, finals))
    return out
