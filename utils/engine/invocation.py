"""Where a script's wall time went: one record per invocation ("leg"), appended, never overwritten.

A study spans sessions and machines (the scripts resume), so its cost is a list of legs, each with
the machine and precision it ran on. A leg lists every experiment of the call with its wall time,
its runs, the runs trained *in this call* and their training seconds; the training share is
``training seconds of the runs trained in this call / wall time of the call``. ``run_study.py``
reads the legs of its own invocation back into ``results/study_run.json``.

The file is ``<results>/invocations/<script>.json``: ``{"script": ..., "legs": [...]}``.
"""

from __future__ import annotations

import datetime as dt
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from utils.engine.files import read_json, write_json
from utils.engine.records import RunRecord

INVOCATIONS_DIR = "invocations"


def runs_cost(records: Sequence[RunRecord]) -> dict:
    """Training and wall seconds of ``records`` as each run recorded them where it was made, and the
    share in training steps (budget bookkeeping, never a speed comparison: those come from the
    paired benchmark)."""
    train = sum(r.timing.get("train_s") or 0.0 for r in records)
    total = sum(r.timing.get("total_s") or 0.0 for r in records)
    return {"runs": len(records), "train_s": train, "total_s": total, "train_share": train / total if total else None}


@dataclass
class ExperimentCost:
    """One experiment of a leg. ``train_s``: training seconds of the runs trained in this call;
    ``train_s_all``: of every run the experiment used (re-used ones carry their original cost). A
    run is counted once however many batches name it (an experiment may read its runs twice: first
    without their models, to see whether its landed analysis still stands, then with them)."""

    experiment: str
    wall_s: float = 0.0
    # (experiment folder, model) -> (trained in this call, its training seconds)
    _runs: dict[tuple[str, str], tuple[bool, float]] = field(default_factory=dict, repr=False)

    def add(self, records: Sequence[RunRecord], trained: Sequence[str]) -> None:
        """Count ``records`` (one experiment's, possibly several batches of them); ``trained``:
        the names of those trained in this call."""
        new = set(trained)
        for r in records:
            key = (r.experiment, r.model)
            before = self._runs.get(key, (False, 0.0))[0]
            self._runs[key] = (before or r.model in new, r.timing.get("train_s") or 0.0)

    @property
    def runs(self) -> int:
        return len(self._runs)

    @property
    def trained(self) -> int:
        return sum(t for t, _ in self._runs.values())

    @property
    def train_s(self) -> float:
        return sum(s for t, s in self._runs.values() if t)

    @property
    def train_s_all(self) -> float:
        return sum(s for _, s in self._runs.values())

    def as_dict(self) -> dict:
        return {"experiment": self.experiment, "wall_s": self.wall_s, "runs": self.runs, "trained": self.trained,
                "train_s": self.train_s, "train_s_all": self.train_s_all}


@dataclass
class Leg:
    """One invocation of a script."""

    script: str
    profile: str
    only: list[str] | None
    runtime: dict                        # Runtime.describe(): device, precision, threads, CPU flags
    started: str = field(default_factory=lambda: dt.datetime.now().isoformat(timespec="seconds"))
    wall_s: float = 0.0
    status: str = "running"              # "completed" | "interrupted" | "failed"
    experiments: list[ExperimentCost] = field(default_factory=list)

    @property
    def train_s(self) -> float:
        return sum(e.train_s for e in self.experiments)

    def as_dict(self) -> dict:
        return {**{k: v for k, v in asdict(self).items() if k != "experiments"},
                "experiments": [e.as_dict() for e in self.experiments], "train_s": self.train_s,
                "train_share": self.train_s / self.wall_s if self.wall_s > 0 else None,
                "trained": sum(e.trained for e in self.experiments)}


class InvocationLog:
    """The leg of the running script: ``with log.experiment(name) as cost: ... cost.add(records,
    trained)``; :meth:`close` appends the leg to the script's file (also on failure or Ctrl-C, with
    that status, when used as a context manager)."""

    def __init__(self, results_dir: Path, script: str, profile: str, runtime: dict,
                 only: Sequence[str] | None = None):
        self.path = Path(results_dir) / INVOCATIONS_DIR / f"{script}.json"
        self.leg = Leg(script, profile, None if only is None else list(only), runtime)
        self._t0 = time.perf_counter()

    @contextmanager
    def experiment(self, name: str) -> Iterator[ExperimentCost]:
        cost = ExperimentCost(name)
        t0 = time.perf_counter()
        try:
            yield cost
        finally:
            cost.wall_s = time.perf_counter() - t0
            self.leg.experiments.append(cost)

    def close(self, status: str = "completed") -> dict:
        self.leg.wall_s = time.perf_counter() - self._t0
        self.leg.status = status
        legs = read_legs(self.path)
        entry = self.leg.as_dict()
        write_json(self.path, {"script": self.leg.script, "legs": legs + [entry]})
        return entry

    def describe(self) -> str:
        """One line for the script's log: the call's wall time, runs trained and their training share."""
        leg = self.leg.as_dict()
        return (f"{leg['wall_s'] / 60:.1f} min, {leg['trained']} runs trained, "
                f"{100 * (leg['train_share'] or 0):.0f} % of the time in their training")

    def __enter__(self) -> "InvocationLog":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close("completed")
            return
        try:     # the leg is worth keeping, but never at the cost of the error that ended the call
            self.close("interrupted" if issubclass(exc_type, KeyboardInterrupt) else f"failed: {exc_type.__name__}")
        except OSError:
            pass


def read_legs(path: Path) -> list[dict]:
    """The legs recorded in ``path`` ([] when the file is missing or not a legs file)."""
    raw = read_json(path)
    return list(raw["legs"]) if isinstance(raw, dict) and isinstance(raw.get("legs"), list) else []


def legs_since(results_dir: Path, script: str, started: str) -> list[dict]:
    """The legs of ``script`` that started at or after ``started`` (an ISO timestamp)."""
    return [leg for leg in read_legs(Path(results_dir) / INVOCATIONS_DIR / f"{script}.json")
            if str(leg.get("started", "")) >= started]
