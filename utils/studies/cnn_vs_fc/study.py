"""Task 1's session state: one call of the script (options, folders, runtime, profile), the data it
loaded and what its experiments produced in memory, with the config and run helpers every
experiment uses."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from utils.analysis.protocol import Selection
from utils.engine.cli import apply_cli_overrides, load_data
from utils.engine.data import DatasetSplits
from utils.engine.executors import Executor
from utils.engine.experiment import ExperimentConfig, ModelSpec
from utils.engine.files import read_json, write_json
from utils.engine.invocation import ExperimentCost
from utils.engine.records import RunRecord, write_summary
from utils.engine.runner import ExperimentRun, run_experiment
from utils.studies.cnn_vs_fc.probes import test_calibration

log = logging.getLogger("cnn_vs_fc")
CALIBRATION_FILE = "calibration.json"


@dataclass
class Study:
    """One call of the script: its options, output folders, runtime, profile, the loaded data
    and what its experiments produced in memory (so experiments share runs through the runner,
    never through each other's files)."""

    args: object
    dirs: object
    runtime: object
    profile: object       # the script's Profile: subsets, validation size, evaluation points
    choose_lr: Callable[[Study], float]   # the CIFAR-10 lr selection (the cifar_lr pilots)
    data: dict[str, DatasetSplits] = field(default_factory=dict)
    lr: float | None = None
    lr_selection: Selection | None = None
    pilots: list[RunRecord] = field(default_factory=list)
    numbers: dict[str, dict] = field(default_factory=dict)
    executor: Executor | None = None
    cost: ExperimentCost | None = None    # the invocation log's entry of the experiment being run

    def dataset(self, name: str) -> DatasetSplits:
        if name not in self.data:
            p = self.profile
            self.data[name] = load_data(self.args, self.dirs, name, p.train_subset, p.test_subset, p.val_size)
        return self.data[name]

    def shape(self, name: str) -> tuple[int, int, int]:
        d = self.dataset(name)
        return d.image_shape[0], d.image_shape[1], d.num_classes

    def config(self, base: ExperimentConfig, epochs: int, **changes) -> ExperimentConfig:
        p = self.profile
        cfg = apply_cli_overrides(base.replace(epochs=epochs, eval_points=p.eval_points, plateau_points=p.plateau_points),
                                  self.args).replace(**changes)
        if p.train_eval_samples is not None:
            cfg = cfg.replace(train_eval_samples=p.train_eval_samples)
        return cfg

    def pilot_config(self, base: ExperimentConfig, epochs: int, **changes) -> ExperimentConfig:
        """A selection run's config: only its final validation accuracy (on every validation image)
        is read, so a few evenly spaced points and no plateau window."""
        return self.config(base, epochs, eval_points=self.profile.pilot_eval_points, plateau_points=0,
                           val_eval_samples=None, **changes)

    def run(self, experiment: str, specs: Sequence[ModelSpec], data: DatasetSplits, cfg: ExperimentConfig,
            title: str, keep_models: bool = False) -> ExperimentRun:
        run = run_experiment(experiment, specs, data, cfg, self.runtime, self.dirs.results, force=self.args.force,
                             title=title, keep_models=keep_models, executor=self.executor)
        self.count(run)
        return run

    def count(self, run: ExperimentRun) -> None:
        if self.cost is not None:
            self.cost.add(run.records, run.trained)

    def calibrations(self, experiment: str, specs: Sequence[ModelSpec], records: Sequence[RunRecord],
                     data: DatasetSplits, cfg: ExperimentConfig, title: str) -> dict[str, dict]:
        """Test-set calibration of each completed run, measured once on its trained model and kept
        in ``<experiment>/calibration.json`` (keyed by the run's config hash), so re-deriving the
        analysis never needs the weights again; a run not measured yet has its final weights
        loaded by the runner (retrained only if they are gone)."""
        path = self.dirs.results / experiment / CALIBRATION_FILE
        cache = {} if self.args.force else (read_json(path) or {})
        done = {r.model: r for r in records if r.completed}
        todo = [s for s in specs
                if s.name in done and cache.get(s.name, {}).get("config_hash") != done[s.name].config_hash]
        if todo:
            run = run_experiment(experiment, todo, data, cfg, self.runtime, self.dirs.results, keep_models=True,
                                 executor=self.executor)
            self.count(run)
            for r in run.records:
                if r.completed:
                    cache[r.model] = {"config_hash": r.config_hash,
                                      **test_calibration(run.models[r.model], data, cfg, self.runtime)}
            write_json(path, cache)
            # the runner's summary tables were just written for the re-loaded runs only
            write_summary(records, self.dirs.results / experiment, title)
        return {m: {k: v for k, v in cache[m].items() if k != "config_hash"} for m in done if m in cache}

    def shared_lr(self) -> float:
        """The CIFAR-10 lr of every model (``--lr`` replaces the choice)."""
        if self.lr is None:
            if self.args.lr is not None:
                self.lr = self.args.lr
                log.info("CIFAR-10 lr %g from --lr (no pilots)", self.lr)
            else:
                self.lr = self.choose_lr(self)
        return self.lr

    def plot(self, name: str) -> Path:
        return self.dirs.plots / name


def epochs(n: int) -> str:
    """``"1 epoch"``, ``"16 epochs"``: for figure titles."""
    return f"{n} epoch{'s' * (n != 1)}"


def source_of(data: DatasetSplits) -> str:
    return f"{data.source}, {len(data.train)} train / {len(data.val)} val / {len(data.test)} test"
