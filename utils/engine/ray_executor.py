"""Train the jobs of an experiment as Ray tasks, on a local Ray instance or a cluster.

Why Ray tasks and not a job queue on a shared disk: the data splits go to the cluster once
(``ray.put``), every job is one task that returns its record and final weights, and the driver
writes each outcome as it arrives (:func:`utils.engine.runner.run_experiment`), so the workers need
no access to the results folder and an interrupted study loses only the runs still in flight.

Ray is imported inside the functions that use it, so the package works without it (``--executor
ray`` without Ray installed is refused by :func:`utils.engine.executors.make_executor`).

A worker trains without checkpoints (its disk is not the driver's): a run interrupted on a worker
starts afresh next time. Every machine of a cluster needs this package at the same path, with the
same environment, as the driver (Ray adds the driver's folder to the workers' ``sys.path``).
"""

from __future__ import annotations

import logging
import os
import traceback
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch

from utils.engine.data import DatasetSplits
from utils.engine.errors import UsageError
from utils.engine.executors import JobOutcome, TrainJob
from utils.engine.runtime import THREADS_ENV, Runtime
from utils.training_utils import train_model

log = logging.getLogger(__name__)
# A run whose worker or node is lost gets this many more tries (a preempted machine should not
# cost the run); an exception raised by the run itself is never retried (it would raise again).
WORKER_LOSS_RETRIES = 1


@dataclass(frozen=True)
class TaskResources:
    """What one job asks of the Ray scheduler: the run's threads as CPUs, and a whole GPU when
    it trains on CUDA (so two runs never share one GPU's memory)."""

    num_cpus: int
    num_gpus: int

    @classmethod
    def of(cls, runtime: Runtime) -> "TaskResources":
        return cls(num_cpus=runtime.threads, num_gpus=1 if runtime.device.type == "cuda" else 0)


def train_on_worker(job: TrainJob, data: DatasetSplits, runtime: Runtime) -> JobOutcome:
    """The body of one Ray task: the driver's thread count on this worker, then the run.

    The outcome carries the weights as CPU tensors (the driver may have no GPU); an exception
    propagates to the driver as Ray's task error, whose cause the driver reports.
    """
    os.environ[THREADS_ENV] = str(runtime.threads)
    torch.set_num_threads(runtime.threads)
    if not logging.getLogger().handlers:   # the run's progress lines reach the driver's console via Ray
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    record, model = train_model(job.spec, data, job.config, runtime, experiment=job.experiment,
                                checkpoint_path=None, config_hash=job.config_hash)
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return JobOutcome(job, record, weights=weights)


def describe_failure(exc: BaseException) -> str:
    """One line for a failed task: the run's own exception (``ValueError: ...``) when it raised,
    else Ray's reason (a worker or node that died, a cancelled task)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        exc = cause
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


class RayExecutor:
    """Jobs as Ray tasks. ``address``: a running cluster (``ray start --head`` prints it; ``auto``
    finds one on this machine); None starts a local Ray instance for this process. A Ray instance
    already initialised by the caller is used as it is and left running.

    The connection lasts from the first experiment to the end of the process (Ray shuts it down
    at exit), so the experiments of one script share it; an interrupted run shuts it down at once.
    """

    def __init__(self, address: str | None = None) -> None:
        self.address = address
        self._started_here = False

    def run(self, jobs: Sequence[TrainJob], data: DatasetSplits, runtime: Runtime) -> Iterator[JobOutcome]:
        if not jobs:
            return
        import ray

        self._connect(ray)
        resources = TaskResources.of(runtime)
        self._check_fits(ray, resources)
        task = ray.remote(train_on_worker)
        options = dict(num_cpus=resources.num_cpus, num_gpus=resources.num_gpus, max_retries=WORKER_LOSS_RETRIES)
        shared = ray.put(data)
        pending: dict[Any, TrainJob] = {task.options(name=job.name, **options).remote(job, shared, runtime): job
                                        for job in jobs}
        log.info("%d runs submitted to Ray (%d CPU%s%s each)", len(jobs), resources.num_cpus,
                 "s" if resources.num_cpus > 1 else "", ", 1 GPU" if resources.num_gpus else "")
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                job = pending.pop(done[0])
                log.info("%s: back from Ray (%d of %d runs still running or queued)", job.name, len(pending),
                         len(jobs))
                yield self._outcome(ray, done[0], job)
        except BaseException:   # Ctrl-C / SIGTERM, or the driver failing to write: stop the rest
            self._cancel(ray, pending)
            raise

    @staticmethod
    def _outcome(ray, ref, job: TrainJob) -> JobOutcome:
        try:
            return ray.get(ref)
        except ray.exceptions.RayError as exc:
            log.debug("%s failed on Ray:\n%s", job.name, "".join(traceback.format_exception(exc)))
            return JobOutcome(job, error=describe_failure(exc))

    def _connect(self, ray) -> None:
        if ray.is_initialized():
            return
        try:
            ray.init(address=self.address, include_dashboard=False)
        except ConnectionError as exc:
            raise UsageError(f"could not connect to the Ray cluster at --ray-address {self.address} ({exc}); "
                             f"start it with `ray start --head`, or leave --ray-address out for a local "
                             f"instance") from None
        self._started_here = True
        log.info("Ray: %s, resources %s", self.address or "local instance", ray.cluster_resources())

    @staticmethod
    def _check_fits(ray, resources: TaskResources) -> None:
        """Warn when no node can hold one task: Ray would keep it pending for ever."""
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        if not any(n.get("CPU", 0) >= resources.num_cpus and n.get("GPU", 0) >= resources.num_gpus for n in nodes):
            log.warning("no Ray node has %d CPUs%s for one run; the runs wait until such a node joins (set %s "
                        "to fewer threads per run)", resources.num_cpus, " and a GPU" if resources.num_gpus else "",
                        THREADS_ENV)

    def _cancel(self, ray, pending: dict[Any, TrainJob]) -> None:
        if pending:
            log.info("cancelling %d unfinished Ray runs: %s", len(pending), ", ".join(j.name for j in pending.values()))
        for ref in pending:
            try:
                ray.cancel(ref, force=True)
            except Exception as exc:   # already finished or its worker gone: nothing left to stop
                log.debug("cancel %s: %s", pending[ref].name, exc)
        pending.clear()
        self.close()

    def close(self) -> None:
        """Shut down the Ray instance this executor started (a caller's own is left running)."""
        if self._started_here:
            import ray

            ray.shutdown()
            self._started_here = False
