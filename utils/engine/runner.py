"""Run an experiment: every spec trained (or its finished result reused), one JSON per run, and the
experiment's summary tables.

A run's identity is its ``config_hash`` (configuration, architecture as built, data, precision): a
finished result with the same hash is skipped, a checkpoint with the same hash is resumed.
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
from utils.engine.experiment import ExperimentConfig, ModelSpec
from utils.engine.files import make_dir, read_json, remove_file, save_torch, write_json
from utils.engine.records import SCHEMA_VERSION, RecordFormatError, RunRecord, summarise, write_summary
from utils.engine.runtime import Runtime
from utils.training_utils import train_model

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
                   keep_models: bool = False) -> ExperimentRun:
    """Train (or reuse) every spec; write one JSON per run and the experiment's summary.

    A finished run whose ``config_hash`` is unchanged is skipped (``force`` retrains). With
    ``keep_models`` the trained models are returned too (reloaded from ``checkpoints/<model>.final.pt``
    for skipped runs, retrained if those weights are gone).
    """
    out_dir = make_dir(Path(results_dir) / experiment)
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"{experiment}: two specs share a name: {sorted(n for n in names if names.count(n) > 1)}")
    result = ExperimentRun([])
    for spec in specs:
        h = config_hash(spec, cfg, data, runtime)
        path = out_dir / f"{spec.name}.json"
        weights = out_dir / "checkpoints" / f"{spec.name}.final.pt"
        old = None if force else _finished_record(path, h)
        model = _load_final_weights(spec, cfg, runtime, weights) if old is not None and keep_models else None
        if old is not None and (model is not None or not keep_models):
            log.info("%s/%s: finished result with the same config found, skipping (use --force to retrain)",
                     experiment, spec.name)
            record = old
            fresh = summarise(record)    # the summary is derived data: re-derive it with today's code
            if fresh != record.summary:
                record.summary = fresh
                write_json(path, record.to_dict())
        else:
            if old is not None:
                log.info("%s/%s: result found but its weights are not; retraining for the analyses",
                         experiment, spec.name)
            ckpt = out_dir / "checkpoints" / f"{spec.name}.pt"
            if force:
                remove_file(ckpt)
            record, model = train_model(spec, data, cfg, runtime, experiment=experiment, checkpoint_path=ckpt,
                                        config_hash=h)
            result.trained.append(spec.name)
            write_json(path, record.to_dict())
            save_torch(weights, model.state_dict())
            remove_file(ckpt)
        result.records.append(record)
        if keep_models:
            result.models[spec.name] = model
    write_summary(result.records, out_dir, title or experiment)
    return result


def _finished_record(path: Path, config_hash: str) -> RunRecord | None:
    raw = read_json(path)
    if raw is None or raw.get("config_hash") != config_hash:
        return None
    try:
        return RunRecord.from_dict(raw)
    except RecordFormatError as exc:
        log.info("%s is of another record format (%s); re-running", path, exc)
        return None


def _load_final_weights(spec: ModelSpec, cfg: ExperimentConfig, runtime: Runtime, path: Path) -> nn.Module | None:
    if not path.is_file():
        return None
    model = spec.build(spec.config_for(cfg))
    try:
        model.load_state_dict(torch.load(path, weights_only=True))
    except Exception as exc:
        log.warning("ignoring unreadable weights %s (%s)", path, exc)
        return None
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
                title: str | None = None) -> list[RunRecord]:
    """:func:`run_experiment` for the specs whose run is not in ``pool`` already (a record with the same
    config hash: same config, architecture, data and precision, whatever its name or experiment); the
    others are the pool's records, which keep the experiment that made them."""
    known = {r.config_hash: r for r in pool}
    hashes = {s.name: config_hash(s, cfg, data, runtime) for s in specs}
    fresh = [s for s in specs if hashes[s.name] not in known]
    done = {r.model: r for r in run_experiment(experiment, fresh, data, cfg, runtime, results_dir, force=force,
                                               title=title).records} if fresh else {}
    for s in specs:
        if s.name not in done:
            log.info("%s/%s: the same run as %s/%s, reused", experiment, s.name, known[hashes[s.name]].experiment,
                     known[hashes[s.name]].model)
    return [done[s.name] if s.name in done else known[hashes[s.name]] for s in specs]
