"""Training compute: of one run, of a whole study, and what that predicts for a GPU.

A run's training compute follows one convention (:data:`FLOP_CONVENTION`): three times the forward
FLOPs per image (forward + backward, the usual estimate) times the training images its optimizer
steps saw. Evaluation passes are not counted.

:func:`gpu_time_estimate` is a model, not a measurement: a training step costs its FLOPs at an
effective throughput plus a fixed overhead per step (kernel launches, the optimizer, the Python
loop). For the small nets of this study the overhead term dominates, which is why a GPU speeds them
up far less than its peak FLOP/s suggest. The constants below are assumptions, each with its source.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable, Mapping

BACKWARD_FACTOR = 3
FLOP_CONVENTION = "3 x forward FLOPs per image x training images seen (forward + backward); evaluation not counted"


def training_flop(flops_per_image: float, steps: int, batch_size: int) -> float:
    """Training FLOPs of a run of ``steps`` optimizer steps of ``batch_size`` images (see
    :data:`FLOP_CONVENTION`)."""
    return float(BACKWARD_FACTOR * flops_per_image * steps * batch_size)


@dataclass(frozen=True)
class GpuAssumption:
    """One end of the GPU estimate: effective throughput of the matmul work and overhead per step."""

    effective_tflops: float
    step_overhead_ms: float
    why: str


#: The optimistic end: airbench94's CIFAR-10 training (about 0.36 PFLOP in 3.83 s on an A100, hand-tuned,
#: fp16, large batches) sustains ~94 TFLOP/s; an eager PyTorch step of a ResNet-20-sized net launches a
#: few hundred kernels at ~10 us each.
OPTIMISTIC = GpuAssumption(100.0, 3.0, "airbench94's sustained ~94 TFLOP/s on an A100; ~3 ms of kernel "
                                       "launches per eager training step")
#: The pessimistic end: an untuned eager loop at batch 128 reaches a small fraction of that, and the
#: per-step Python, optimizer and data-movement overhead is several milliseconds.
PESSIMISTIC = GpuAssumption(20.0, 10.0, "an untuned eager loop at batch 128, a fifth of airbench94's "
                                        "throughput; ~10 ms of overhead per training step")


def gpu_time_estimate(total_flop: float, steps: int,
                      assumptions: Iterable[GpuAssumption] = (OPTIMISTIC, PESSIMISTIC)) -> list[dict]:
    """Seconds of training steps on a GPU under each assumption: ``FLOPs / throughput + steps x overhead``."""
    out = []
    for a in assumptions:
        flop_s = total_flop / (a.effective_tflops * 1e12)
        overhead_s = steps * a.step_overhead_ms / 1e3
        out.append({**asdict(a), "flop_s": flop_s, "overhead_s": overhead_s, "train_s": flop_s + overhead_s})
    return out


@dataclass
class ComputeTotals:
    """Training compute of a set of runs, and the training seconds they took where they ran."""

    runs: int = 0
    steps: int = 0
    training_flop: float = 0.0
    train_s: float = 0.0
    total_s: float = 0.0   # the runs' whole wall time where they ran: training, evaluation, set-up

    def add(self, flop: float, steps: int, train_s: float, total_s: float = 0.0) -> None:
        self.runs += 1
        self.steps += steps
        self.training_flop += flop
        self.train_s += train_s
        self.total_s += total_s

    def as_dict(self) -> dict:
        return {**asdict(self), "training_pflop": self.training_flop / 1e15,
                "achieved_tflops": self.training_flop / self.train_s / 1e12 if self.train_s > 0 else None}


def study_compute(runs: Iterable[Mapping]) -> dict:
    """Totals of run records given as their JSON dicts (``flops_per_image``, ``history.step``,
    ``config.batch_size``, ``timing.train_s``, ``runtime.precision``: fields of every record
    schema), overall and per precision, with the GPU estimate of the whole."""
    total, by_precision, by_experiment = ComputeTotals(), {}, {}
    for r in runs:
        step = (r.get("history") or {}).get("step") or [0]
        steps = int(step[-1])
        flop = training_flop(r.get("flops_per_image") or 0, steps, int(r["config"]["batch_size"]))
        timing = r.get("timing") or {}
        cost = (flop, steps, float(timing.get("train_s") or 0.0), float(timing.get("total_s") or 0.0))
        total.add(*cost)
        by_precision.setdefault(str((r.get("runtime") or {}).get("precision")), ComputeTotals()).add(*cost)
        by_experiment.setdefault(str(r.get("experiment")), ComputeTotals()).add(*cost)
    return {"convention": FLOP_CONVENTION, **total.as_dict(),
            "by_precision": {k: v.as_dict() for k, v in sorted(by_precision.items())},
            # what each experiment's runs cost where they were made, over every session they spanned
            # (an invocation's legs count only the runs trained in that call)
            "by_experiment": {k: v.as_dict() for k, v in sorted(by_experiment.items())},
            "gpu_estimate": gpu_time_estimate(total.training_flop, total.steps),
            "gpu_estimate_note": "estimated from FLOPs and optimizer steps under the stated assumptions, not measured"}
