"""Run an experiment: every spec trained (or its finished result reused), one JSON per run, and the
experiment's summary tables.

A run's identity is its ``config_hash`` (configuration, architecture as built, data, precision): a
finished result with the same hash is skipped, a checkpoint with the same hash is resumed.

Planning (which runs to train, their identity and output paths), executing (an
:mod:`~utils.engine.executors` executor: this process, or a Ray cluster) and writing the outcomes
(here, in the driver, as each arrives) are separate steps, so where a run trains changes no file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from utils.engine.architecture import describe_architecture
from utils.engine.data import DatasetSplits
from utils.engine.executors import Executor, JobOutcome, LocalExecutor, RunPaths, RunsFailed, TrainJob
from utils.engine.experiment import ExperimentConfig, ModelSpec
from utils.engine.files import make_dir, read_json, remove_file, save_torch, write_json
from utils.engine.records import SCHEMA_VERSION, RecordFormatError, RunRecord, summarise, write_summary
from utils.engine.runtime import Runtime

log = logging.getLogger(__name__)


@dataclass
class ExperimentRun:
    """The records of an experiment, in spec order, and (if asked for) the trained models by name."""

    records: list[RunRecord]
    models: dict[str, nn.Module] = field(default_factory=dict)
    trained: list[str] = field(default_factory=list)    # runs trained by this call (the rest were re-used)


def config_hash(spec: ModelSpec, cfg: ExperimentConfig, data: DatasetSplits, runtime: Runtime) -> str:
    """Identity of a run: config, the architecture as built, the data used, and precision.

    The architecture enters as its structural description (:func:`describe_architecture`: per
    module its name, class, parameter/buffer shapes and hyper-parameters), never as text, so a
    repr or docstring edit keeps every finished run recognised.
    """
    run_cfg = spec.config_for(cfg)
    key = json.dumps({"schema": SCHEMA_VERSION, "config": dataclasses.asdict(run_cfg),
                      "arch": describe_architecture(spec.build(run_cfg)), "data": data.describe(),
                      "precision": runtime.precision, "device": runtime.device.type}, sort_keys=True)
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def run_experiment(experiment: str, specs: Sequence[ModelSpec], data: DatasetSplits, cfg: ExperimentConfig,
                   runtime: Runtime, results_dir: Path, *, force: bool = False, title: str | None = None,
                   keep_models: bool = False, executor: Executor | None = None) -> ExperimentRun:
    """Train (or reuse) every spec; write one JSON per run and the experiment's summary.

    A finished run whose ``config_hash`` is unchanged is skipped (``force`` retrains). With
    ``keep_models`` the trained models are returned too (reloaded from ``checkpoints/<model>.final.pt``
    for skipped runs, retrained if those weights are gone). The runs to train go to ``executor``
    (default: :class:`LocalExecutor`, this process); each outcome is written here as it arrives.
    Runs that fail on the executor raise :class:`RunsFailed` once every other run is written.
    """
    out_dir = make_dir(Path(results_dir) / experiment)
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"{experiment}: two specs share a name: {sorted(n for n in names if names.count(n) > 1)}")
    result = ExperimentRun([])
    records: dict[str, RunRecord] = {}
    jobs = []
    for spec in specs:
        job = plan_job(experiment, spec, data, cfg, runtime, out_dir)
        reused = None if force else _reuse(job, runtime, keep_models)
        if reused is not None:
            records[spec.name], model = reused
            if keep_models:
                result.models[spec.name] = model
            continue
        if force:
            remove_file(job.paths.checkpoint)
        jobs.append(job)
    failures, trained = [], set()
    for outcome in (executor or LocalExecutor()).run(jobs, data, runtime):
        if outcome.failed:
            log.error("%s failed: %s", outcome.job.name, outcome.error)
            failures.append(outcome)
            continue
        write_outcome(outcome)
        records[outcome.job.spec.name] = outcome.record
        trained.add(outcome.job.spec.name)
        if keep_models:
            result.models[outcome.job.spec.name] = outcome.model or _model_from_weights(outcome.job, runtime,
                                                                                        outcome.weights)
    if failures:
        raise RunsFailed(experiment, failures, len(jobs))
    result.records = [records[name] for name in names]
    result.trained = [name for name in names if name in trained]
    result.models = {name: result.models[name] for name in names if name in result.models}
    write_summary(result.records, out_dir, title or experiment)
    return result


def plan_job(experiment: str, spec: ModelSpec, data: DatasetSplits, cfg: ExperimentConfig, runtime: Runtime,
             out_dir: Path) -> TrainJob:
    """The job of one spec: its identity and where its outputs belong."""
    checkpoints = out_dir / "checkpoints"
    return TrainJob(experiment, spec, cfg, data.describe(), spec.config_for(cfg).seed,
                    config_hash(spec, cfg, data, runtime),
                    RunPaths(out_dir / f"{spec.name}.json", checkpoints / f"{spec.name}.final.pt",
                             checkpoints / f"{spec.name}.pt"))


def _reuse(job: TrainJob, runtime: Runtime, keep_models: bool) -> tuple[RunRecord, nn.Module | None] | None:
    """The finished record of ``job`` (and, with ``keep_models``, its model from the final weights),
    or None when the run must train."""
    record = _finished_record(job.paths.record, job.config_hash)
    if record is None:
        return None
    model = _load_final_weights(job, runtime) if keep_models else None
    if keep_models and model is None:
        log.info("%s: result found but its weights are not; retraining for the analyses", job.name)
        return None
    log.info("%s: finished result with the same config found, skipping (use --force to retrain)", job.name)
    fresh = summarise(record)    # the summary is derived data: re-derive it with today's code
    if fresh != record.summary:
        record.summary = fresh
        write_json(job.paths.record, record.to_dict())
    return record, model


def write_outcome(outcome: JobOutcome) -> None:
    """A finished run's files, wherever it trained: its record, its final weights, and no
    checkpoint (the run is done)."""
    paths = outcome.job.paths
    write_json(paths.record, outcome.record.to_dict())
    save_torch(paths.weights, outcome.weights)
    remove_file(paths.checkpoint)


def _finished_record(path: Path, config_hash: str) -> RunRecord | None:
    raw = read_json(path)
    if raw is None or raw.get("config_hash") != config_hash:
        return None
    try:
        return RunRecord.from_dict(raw)
    except RecordFormatError as exc:
        log.info("%s is of another record format (%s); re-running", path, exc)
        return None


def _load_final_weights(job: TrainJob, runtime: Runtime) -> nn.Module | None:
    path = job.paths.weights
    if not path.is_file():
        return None
    try:
        weights = torch.load(path, weights_only=True, map_location="cpu")   # a GPU run read on any machine
        return _model_from_weights(job, runtime, weights)
    except Exception as exc:
        log.warning("ignoring unreadable weights %s (%s)", path, exc)
        return None


def _model_from_weights(job: TrainJob, runtime: Runtime, weights: dict) -> nn.Module:
    """The spec's model with ``weights``, placed as training places it (device, memory format)."""
    model = job.spec.build(job.spec.config_for(job.config))
    model.load_state_dict(weights)
    model = model.to(runtime.device)
    return model.to(memory_format=torch.channels_last) if runtime.channels_last else model


def load_records(out_dir: Path) -> list[RunRecord]:
    """Every run record of an experiment folder (files of another format are skipped)."""
    records = []
    for path in sorted(Path(out_dir).glob("*.json")):
        raw = read_json(path)
        if isinstance(raw, dict) and "config_hash" in raw:
            try:
                records.append(RunRecord.from_dict(raw))
            except RecordFormatError:
                log.info("skipping %s: not a run record of this schema", path)
    return records


def run_reusing(experiment: str, specs: Sequence[ModelSpec], pool: Sequence[RunRecord], data: DatasetSplits,
                cfg: ExperimentConfig, runtime: Runtime, results_dir: Path, force: bool = False,
                title: str | None = None, executor: Executor | None = None) -> list[RunRecord]:
    """:func:`run_experiment` for the specs whose run is not in ``pool`` already (a record with the same
    config hash: same config, architecture, data and precision, whatever its name or experiment); the
    others are the pool's records, which keep the experiment that made them."""
    known = {r.config_hash: r for r in pool}
    hashes = {s.name: config_hash(s, cfg, data, runtime) for s in specs}
    fresh = [s for s in specs if hashes[s.name] not in known]
    done = {r.model: r for r in run_experiment(experiment, fresh, data, cfg, runtime, results_dir, force=force,
                                               title=title, executor=executor).records} if fresh else {}
    for s in specs:
        if s.name not in done:
            log.info("%s/%s: the same run as %s/%s, reused", experiment, s.name, known[hashes[s.name]].experiment,
                     known[hashes[s.name]].model)
    return [done[s.name] if s.name in done else known[hashes[s.name]] for s in specs]
