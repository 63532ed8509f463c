"""Where the runs of an experiment train: the boundary between planning them and executing them.

:func:`utils.engine.runner.run_experiment` plans a list of independent :class:`TrainJob` objects
(what to train, its identity and where its outputs belong), hands them to an :class:`Executor`, and
writes every :class:`JobOutcome` itself as it arrives. An executor therefore never writes a result
file: the driver process is the only writer, so executing elsewhere (a Ray cluster,
:mod:`utils.engine.ray_executor`) needs no shared file system, and a re-run skips every run whose
outcome arrived before an interruption.

:class:`LocalExecutor` trains in this process, one job after the other, with per-epoch checkpoints,
so an interrupted run resumes where it stopped; an exception in a run propagates unchanged.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Protocol, Sequence

from torch import Tensor, nn

from utils.engine.data import DatasetSplits
from utils.engine.errors import UsageError
from utils.engine.experiment import ExperimentConfig, ModelSpec
from utils.engine.records import RunRecord
from utils.engine.runtime import Runtime
from utils.training_utils import train_model

log = logging.getLogger(__name__)

EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class RunPaths:
    """Where the driver writes a run's outputs (``results/<experiment>/...``)."""

    record: Path         # <model>.json
    weights: Path        # checkpoints/<model>.final.pt
    checkpoint: Path     # checkpoints/<model>.pt, the per-epoch checkpoint of a run in progress


@dataclass(frozen=True)
class TrainJob:
    """One run to train, self-contained apart from the data (shared by every job of an experiment,
    so it is sent once, not once per job). ``config`` is the experiment's config; the run's own is
    ``spec.config_for(config)``, whose ``seed`` is :attr:`seed`."""

    experiment: str
    spec: ModelSpec
    config: ExperimentConfig
    data: dict           # DatasetSplits.describe() of the data the run must train on
    seed: int
    config_hash: str
    paths: RunPaths

    @property
    def name(self) -> str:
        """How reports name the run: ``<experiment>/<model>``."""
        return f"{self.experiment}/{self.spec.name}"


@dataclass
class JobOutcome:
    """What came back for a job: its record and final weights, or the error that stopped it.

    ``model`` is the trained module itself when the job ran in this process (so the caller keeps
    exactly the object that trained); from elsewhere only ``weights`` travel.
    """

    job: TrainJob
    record: RunRecord | None = None
    weights: dict[str, Tensor] | None = None
    error: str | None = None
    model: nn.Module | None = field(default=None, repr=False)

    @property
    def failed(self) -> bool:
        return self.error is not None


class Executor(Protocol):
    """Trains jobs and yields one outcome per job, in any order, as each finishes."""

    def run(self, jobs: Sequence[TrainJob], data: DatasetSplits, runtime: Runtime) -> Iterator[JobOutcome]:
        ...


class LocalExecutor:
    """Every job in this process, in order, with per-epoch checkpoints (resumed when present)."""

    def run(self, jobs: Sequence[TrainJob], data: DatasetSplits, runtime: Runtime) -> Iterator[JobOutcome]:
        for job in jobs:
            record, model = train_model(job.spec, data, job.config, runtime, experiment=job.experiment,
                                        checkpoint_path=job.paths.checkpoint, config_hash=job.config_hash)
            yield JobOutcome(job, record, weights=model.state_dict(), model=model)


class RunsFailed(UsageError):
    """Some runs of an experiment raised or lost their worker; the others' results are written.

    Reported the way a usage error is (the message on stderr, exit code 2, no traceback): it lists
    every failed run by name with its error, and running the same command again retries just those.
    """

    def __init__(self, experiment: str, failures: Sequence[JobOutcome], total: int) -> None:
        self.failures = list(failures)
        lines = "".join(f"\n  {f.job.name}: {f.error}" for f in self.failures)
        super().__init__(f"{len(self.failures)} of {total} runs of {experiment} failed (the other results are "
                         f"saved; the same command retries the failed ones):{lines}")


def make_executor(name: str = "local", ray_address: str | None = None) -> Executor:
    """The executor the command line asked for. ``ray`` without Ray installed is a
    :class:`UsageError` (one line, exit code 2) raised before any work."""
    if name == "local":
        if ray_address:
            raise UsageError("--ray-address is for --executor ray; add --executor ray to train on that cluster")
        return LocalExecutor()
    if name != "ray":
        raise UsageError(f"unknown executor {name!r}; choose from {', '.join(EXECUTORS)}")
    if importlib.util.find_spec("ray") is None:
        raise UsageError("--executor ray needs Ray, which is not installed: pip install .[ray]")
    from utils.engine.ray_executor import RayExecutor   # that module imports this one

    return RayExecutor(address=ray_address)


def executor_from_args(args) -> Executor:
    """:func:`make_executor` from the shared command line's ``--executor`` / ``--ray-address``."""
    return make_executor(getattr(args, "executor", "local"), getattr(args, "ray_address", None))
