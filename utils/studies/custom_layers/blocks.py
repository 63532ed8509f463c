"""Task 3's residual-block study: one learning-rate sweep of pilot runs per block does three jobs,
and the final runs are analysed at the lrs it chose.

1. **Each block's own lr** (:func:`run_sweep`): a bracketing grid per block on the mean final
   validation accuracy of its pilot seeds (:func:`utils.analysis.protocol.select_bracketed`).
2. **One shared lr**: the same rule on the validation accuracy averaged over the blocks (also
   bracketing); an lr at which any block has an unstable pilot is never chosen.
3. **Stability**: each block's grid is extended upwards, one geometric step at a time, until one
   of its pilots is unstable (:func:`utils.analysis.stability.is_unstable`) or the stated cap.

Pilot runs are read through a callback that returns the runner's records in memory (``run_points``),
so the choice never comes from a file another experiment wrote. Final runs (other seeds) are
analysed by :func:`finals_numbers`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from utils.analysis.protocol import MAX_GRID_EXTENSIONS, Selection, select_bracketed
from utils.analysis.stability import (SPIKE_RISES, SPIKE_WINDOW, divergence_frontier, grad_rms_distribution,
                                      is_unstable, run_stability)
from utils.analysis.statistics import seed_summary
from utils.comparison_utils import difference_with_verdict, variant_key, variant_numbers
from utils.engine.records import RunRecord

Point = tuple[str, float]                                           # (block, peak lr)
RunPoints = Callable[[list[Point]], Mapping[Point, list[RunRecord]]]  # pilots of each point, every seed

COMPARED = ("test_acc", "final_val_acc")


@dataclass
class SweepResult:
    """What :func:`run_sweep` ran and chose. ``own[b]`` / ``shared`` are None when no lr had a
    stable pilot (``notes`` say why); ``upward[b]``: how block ``b``'s upward extension ended."""

    runs: dict[Point, list[RunRecord]]
    own: dict[str, Selection | None]
    shared: Selection | None
    upward: dict[str, dict]
    lr_cap: float
    min_train_acc: float
    notes: list[str] = field(default_factory=list)

    def records(self) -> list[RunRecord]:
        return [r for runs in self.runs.values() for r in runs]


def pilot_score(runs: Sequence[RunRecord], min_train_acc: float) -> float | None:
    """Mean final validation accuracy of one (block, lr) over its pilot seeds; None when a pilot is
    unstable (diverged or never learned): an lr that fails on some seed is not a choice."""
    if not runs or any(is_unstable(r, min_train_acc) for r in runs):
        return None
    vals = [r.summary.final_val_acc for r in runs]
    return float(np.mean(vals)) if all(v is not None and math.isfinite(v) for v in vals) else None


def run_sweep(blocks: Sequence[str], grid: Sequence[float], run_points: RunPoints, lr_cap: float,
              min_train_acc: float, max_added: int = MAX_GRID_EXTENSIONS) -> SweepResult:
    """Choose each block's lr and the shared lr on pilots, then extend each block upwards (ratio of
    the grid's two top values) until a pilot above its :func:`frontier_floor` is unstable or the
    next lr would pass ``lr_cap``."""
    runs: dict[Point, list[RunRecord]] = {}

    def ensure(points: list[Point]) -> None:
        missing = [p for p in dict.fromkeys(points) if p not in runs]
        if missing:
            got = run_points(missing)
            runs.update({p: list(got[p]) for p in missing})

    def score(b: str, lr: float) -> float | None:
        return pilot_score(runs[(b, lr)], min_train_acc)

    def own_pilots(b: str):
        def run(points: list[float]) -> dict[float, float | None]:
            ensure([(b, p) for p in points])
            return {p: score(b, p) for p in points}
        return run

    def shared_pilots(points: list[float]) -> dict[float, float | None]:
        ensure([(b, p) for p in points for b in blocks])
        out = {}
        for p in points:
            s = [score(b, p) for b in blocks]
            out[p] = float(np.mean(s)) if all(v is not None for v in s) else None
        return out

    notes: list[str] = []
    own: dict[str, Selection | None] = {}
    for b in blocks:
        try:
            own[b] = select_bracketed(grid, own_pilots(b), max_added)
        except ValueError:
            own[b] = None
            notes.append(f"{b}: no lr of the grid had a stable pilot on every seed; no own lr")
    try:
        shared = select_bracketed(grid, shared_pilots, max_added)
    except ValueError:
        shared = None
        notes.append("no lr of the grid had a stable pilot for every block; no shared lr")

    g = sorted(float(x) for x in grid)
    step = g[-1] / g[-2] if len(g) > 1 else 2.0
    upward: dict[str, dict] = {}
    for b in blocks:
        added = []
        floor = frontier_floor(b, own, runs, min_train_acc)
        while True:
            lrs = sorted(lr for (blk, lr) in runs if blk == b)
            if floor is None:
                upward[b] = {"stopped": "no stable lr to search above", "added": added}
                break
            if any(is_unstable(r, min_train_acc) for lr in lrs if lr > floor for r in runs[(b, lr)]):
                upward[b] = {"stopped": "unstable pilot found", "added": added}
                break
            nxt = float(f"{lrs[-1] * step:.4g}")
            if nxt > lr_cap * (1 + 1e-9):
                upward[b] = {"stopped": f"cap (next lr {nxt:g} > {lr_cap:g})", "added": added}
                break
            ensure([(b, nxt)])
            added.append(nxt)
    return SweepResult(runs, own, shared, upward, lr_cap, min_train_acc, notes)


def frontier_floor(block: str, own: Mapping[str, Selection | None], runs: Mapping[Point, Sequence[RunRecord]],
                   min_train_acc: float) -> float | None:
    """The lr above which ``block``'s stability frontier is sought: its own chosen lr, else its
    lowest lr with every pilot stable, else None. An lr too small to learn (unstable *below* the
    good region) is not the frontier the sweep asks for."""
    if own.get(block) is not None:
        return own[block].winner
    stable = sorted(lr for (b, lr), rs in runs.items()
                    if b == block and not any(is_unstable(r, min_train_acc) for r in rs))
    return stable[0] if stable else None


# ------------------------------------------------------------------------------ sweep numbers
def _summary(values) -> dict:
    return seed_summary([math.nan if v is None else float(v) for v in values]).as_dict()


def point_numbers(runs: Sequence[RunRecord], min_train_acc: float) -> dict:
    """One (block, lr) over its seeds: how many runs diverged or never learned, final validation
    accuracy, loss-spike steps per threshold (seed summary), the gradient-RMS distribution over
    training (step 0 left out) and each run's own numbers."""
    stab = [run_stability(r) for r in runs]
    rises = [f"{100 * x:g}" for x in SPIKE_RISES]
    return {"lr": runs[0].config["lr"], "n": len(runs), "seeds": [r.seed for r in runs],
            "diverged": sum(not r.completed for r in runs),
            "did_not_learn": sum(r.completed and is_unstable(r, min_train_acc) for r in runs),
            "unstable": sum(is_unstable(r, min_train_acc) for r in runs),
            "final_val_acc": _summary(s["final_val_acc"] for s in stab),
            "final_train_acc": _summary(r.summary.final_train_acc if r.completed else None for r in runs),
            "loss_spike_steps": {k: _summary(s["spikes"]["by_rise"][k]["steps"] for s in stab) for k in rises},
            "loss_spike_events": {k: _summary(s["spikes"]["by_rise"][k]["events"] for s in stab) for k in rises},
            "grad_rms": grad_rms_distribution(runs),
            "runs": [{k: s[k] for k in ("model", "seed", "status", "diverged_at", "final_val_acc", "plateau")}
                     | {"spike_steps": {k: s["spikes"]["by_rise"][k]["steps"] for k in rises}} for s in stab]}


def highest_stable_lr(points: Sequence[dict], floor: float | None = None) -> float | None:
    """The largest lr at which every run is stable, counting up from ``floor`` (see
    :func:`frontier_floor`; None: from the lowest lr) to the first lr with an unstable run."""
    stable = None
    for p in sorted(points, key=lambda p: p["lr"]):
        if floor is not None and p["lr"] < floor:
            continue
        if p["unstable"]:
            break
        stable = p["lr"]
    return stable


def sweep_numbers(result: SweepResult) -> dict:
    """The sweep as ``analysis.json`` numbers: per block every lr (:func:`point_numbers`), the
    frontier (first lr with an unstable run at or above :func:`frontier_floor`; the NaN-only
    frontier too) and the highest stable lr;
    each block's lr selection and the shared one, with their grids, scores, edges and caps."""
    blocks = {}
    for b in result.own:
        lrs = sorted(lr for (blk, lr) in result.runs if blk == b)
        points = [point_numbers(result.runs[(b, lr)], result.min_train_acc) for lr in lrs]
        floor = frontier_floor(b, result.own, result.runs, result.min_train_acc)
        recs = [r for lr in lrs if floor is None or lr >= floor for r in result.runs[(b, lr)]]
        unstable = divergence_frontier([r.config["lr"] for r in recs],
                                       [is_unstable(r, result.min_train_acc) for r in recs])
        nan_only = divergence_frontier([r.config["lr"] for r in recs], [not r.completed for r in recs])
        sel = result.own[b]
        blocks[b] = {"points": points, "frontier": unstable.as_dict(), "nan_frontier": nan_only.as_dict(),
                     "frontier_searched_from_lr": floor,
                     "highest_stable_lr": highest_stable_lr(points, floor), "upward": result.upward.get(b),
                     "own_lr": None if sel is None else sel.as_dict()}
    all_runs = result.records()
    bad = sum(not r.completed for r in all_runs)
    return {"runs": len(all_runs), "diverged_runs": bad, "all_diverged": bool(all_runs) and bad == len(all_runs),
            "blocks": blocks, "shared_lr": None if result.shared is None else result.shared.as_dict(),
            "lr_cap": result.lr_cap, "notes": result.notes,
            "unstable_rule": f"diverged (non-finite loss or gradient) or final clean-train accuracy below "
                             f"{100 * result.min_train_acc:g} % (never learned)",
            "spike_definition": {"window_steps": SPIKE_WINDOW, "rises_percent": [100 * x for x in SPIKE_RISES],
                                 "rule": "training loss of a step > (1 + rise) x mean of the previous window "
                                         "steps"},
            "grad_rms_definition": "per-parameter gradient RMS sqrt(sum ||g||^2 / sum numel) over the tracked "
                                   "conv/linear tensors, every sample after step 0, pooled over seeds"}


def loss_curves_at(result: SweepResult, lrs: Mapping[str, float | None]) -> dict[str, list[RunRecord]]:
    """``block -> its pilot runs at lrs[block]`` (blocks without an lr left out), for the figure."""
    return {b: result.runs[(b, lr)] for b, lr in lrs.items() if lr is not None and (b, lr) in result.runs}


# ------------------------------------------------------------------------------ final runs
def finals_numbers(finals: Mapping[str, Sequence[RunRecord]], reference: str, pilots: Sequence[RunRecord]
                   ) -> dict:
    """The final runs of each setting (``finals``: setting, e.g. "own_lr", -> its records; group =
    setting, variant = block): every block over seeds (``variant_numbers``, keyed ``setting/block``),
    every block against ``reference`` and every pair, paired over seeds (and test images), and per
    block the setting-against-setting difference. ``pilots`` only to state that none is a final."""
    variants, differences = {}, []
    by_setting = {}
    for setting, records in finals.items():
        groups: dict[str, list[RunRecord]] = {}
        for r in records:
            groups.setdefault(r.variant, []).append(r)
        by_setting[setting] = groups
        for b, runs in groups.items():
            variants[variant_key(setting, b)] = variant_numbers(runs)
        names = list(groups)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                x, y = (b, a) if a == reference else (a, b)     # the reference is always the "b" side
                differences.append({"setting": setting, "a": x, "b": y,
                                    **difference_with_verdict(groups[x], groups[y], COMPARED)})
    settings = list(by_setting)
    across = []
    for i, s1 in enumerate(settings):
        for s2 in settings[i + 1:]:
            for b in by_setting[s1]:
                if b in by_setting[s2]:
                    same = {r.config_hash for r in by_setting[s1][b]} == {r.config_hash for r in by_setting[s2][b]}
                    across.append({"block": b, "a": s1, "b": s2, "same_runs": same,
                                   **({} if same else difference_with_verdict(by_setting[s1][b], by_setting[s2][b],
                                                                              COMPARED))})
    all_runs = [r for records in finals.values() for r in records]
    unique = {r.config_hash: r for r in all_runs}
    bad = sum(not r.completed for r in unique.values())
    pilot_hashes = {p.config_hash for p in pilots}
    return {"runs": len(unique), "diverged_runs": bad, "all_diverged": bool(unique) and bad == len(unique),
            "variants": variants, "differences": differences, "setting_vs_setting": across,
            "reference": reference, "final_seeds": sorted({r.seed for r in all_runs}),
            "pilot_seeds": sorted({p.seed for p in pilots}),
            "finals_disjoint_from_pilots": not (set(unique) & pilot_hashes),
            "rule": "validation (pilot seeds) chooses the lrs, test (final seeds) reports; a difference is real "
                    "when its paired 95 % interval excludes zero"}
