"""The typed result record of one run, and the summary tables built from records.

A :class:`RunRecord` is what the engine returns and what every analysis, figure and the README
renderer read. It is written as JSON (``results/<experiment>/<model>.json``) with the same field
names; :meth:`RunRecord.from_dict` refuses a file whose fields do not match, so a renamed field fails
in the fast unit tests (``tests/test_training.py``), not three minutes into an end-to-end run.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from utils.engine.files import atomic_write_text
from utils.engine.markdown import markdown_table

SCHEMA_VERSION = 5


class RecordFormatError(ValueError):
    """A result file whose fields are not those of :class:`RunRecord` (an older schema)."""


@dataclass
class History:
    """The run's curves, one entry per evaluation point (``eval_points`` evenly spaced moments).

    ``train_*``: running means over the batches since the previous point (train mode, with the
    run's augmentation); ``train_eval_*``: clean eval-mode numbers on a fixed training subset;
    ``val_*``: the validation split (held out of the training set), which is what every choice
    and every curve-based statement reads. The test set is not in the curves (see
    :attr:`RunRecord.test_acc`).
    """

    step: list[int] = field(default_factory=list)
    epoch: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    train_eval_loss: list[float] = field(default_factory=list)
    train_eval_acc: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    train_time_s: list[float] = field(default_factory=list)   # training seconds so far (no evaluation)

    def append(self, **values: float) -> None:
        for k, v in values.items():
            getattr(self, k).append(v)


@dataclass
class GradStats:
    """Per-layer gradient norms of the weight tensors ``names``, sampled at optimisation ``step``s.

    ``weight_l2``: the L2 norms of those weights at the same steps (a layer followed by a
    normalisation layer is scale-invariant, so its effective learning rate is ``lr / ||w||^2``).
    ``param_names`` / ``param_mean_abs``: the parameters a spec asked to follow
    (:attr:`~utils.engine.experiment.ModelSpec.tracked_params`) and the mean ``|value|`` of each,
    sampled at the same steps (before that step's update); empty when none were asked for.
    """

    names: list[str] = field(default_factory=list)
    step: list[int] = field(default_factory=list)
    l2: list[list[float]] = field(default_factory=list)
    mean_abs: list[list[float]] = field(default_factory=list)
    weight_l2: list[list[float]] = field(default_factory=list)
    param_names: list[str] = field(default_factory=list)
    param_mean_abs: list[list[float]] = field(default_factory=list)


@dataclass
class Summary:
    """The headline numbers of a run (what summary tables show); ``None`` where a run diverged.

    ``final_*`` are at the end of training; ``gap`` = clean train accuracy - validation accuracy
    at the end; ``test_acc`` is the one evaluation of the test set. Whether a curve had plateaued
    is an analysis of ``history`` (:func:`utils.comparison_utils.convergence_of`), not a field.
    """

    model: str
    status: str
    params: int
    mflops: float
    epochs_run: float | None = None
    final_train_acc: float | None = None
    final_train_loss: float | None = None
    final_val_acc: float | None = None
    best_val_acc: float | None = None
    best_val_epoch: float | None = None
    final_val_loss: float | None = None
    gap: float | None = None
    test_acc: float | None = None
    test_loss: float | None = None
    train_time_s: float | None = None
    epoch_time_s: float | None = None
    train_share: float | None = None


@dataclass
class RunRecord:
    """Everything one training run produced (see README "Result files")."""

    experiment: str
    model: str
    description: str
    group: str
    variant: str
    seed: int
    status: str                       # "completed" | "diverged"
    diverged_at: dict | None
    config: dict
    config_overrides: dict
    config_hash: str
    data: dict
    runtime: dict                     # device, precision, threads, CPU capabilities
    init: dict                        # models.init.InitRecord: scheme, zero_init_residual, counts
    architecture: str
    params: dict                      # {"total", "trainable", "per_layer": {name: count}}
    flops_per_image: int
    history: History
    epoch_time_s: list[float]         # training seconds of each epoch (no evaluation)
    timing: dict                      # train_s, eval_s, total_s, train_share of this run's wall time
    test_loss: float | None           # the test set, evaluated once at the end (None if diverged)
    test_acc: float | None
    grad_stats: GradStats
    step_loss: list[float]            # training loss of every optimisation step (spikes, stability)
    predictions: list[int] | None     # test-set predictions
    labels: list[int]
    class_names: list[str]
    summary: Summary
    schema_version: int = SCHEMA_VERSION

    @property
    def completed(self) -> bool:
        return self.status == "completed"

    @property
    def label(self) -> str:
        """The run's name for legends: the model, plus its status when it did not complete."""
        return self.model + ("" if self.completed else f" ({self.status})")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunRecord":
        if d.get("schema_version") != SCHEMA_VERSION:
            raise RecordFormatError(f"schema {d.get('schema_version')} is not {SCHEMA_VERSION}")
        try:
            return cls(**{**d, "history": History(**d["history"]), "grad_stats": GradStats(**d["grad_stats"]),
                          "summary": Summary(**d["summary"])})
        except (TypeError, KeyError) as exc:
            raise RecordFormatError(str(exc)) from None


def summarise(record: RunRecord) -> Summary:
    """The headline numbers of ``record``."""
    h = record.history
    out = Summary(model=record.model, status=record.status, params=record.params["total"],
                  mflops=record.flops_per_image / 1e6, test_acc=record.test_acc, test_loss=record.test_loss,
                  train_share=record.timing.get("train_share"))
    if h.val_acc:
        best = int(np.argmax(h.val_acc))
        out = dataclasses.replace(
            out, epochs_run=h.epoch[-1], final_train_acc=h.train_eval_acc[-1], final_train_loss=h.train_eval_loss[-1],
            final_val_acc=h.val_acc[-1], best_val_acc=h.val_acc[best], best_val_epoch=h.epoch[best],
            final_val_loss=h.val_loss[-1], gap=h.train_eval_acc[-1] - h.val_acc[-1],
            train_time_s=record.timing.get("train_s"),
            epoch_time_s=float(np.mean(record.epoch_time_s)) if record.epoch_time_s else None)
    return out


# ------------------------------------------------------------------------------ summary tables
def write_summary(records: Sequence[RunRecord], out_dir: Path, title: str) -> None:
    """``summary.csv`` and ``summary.md`` of an experiment's records."""
    rows = [dataclasses.asdict(r.summary) for r in records]
    columns = list(dict.fromkeys(k for r in rows for k in r if any(row.get(k) is not None for row in rows)))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: _fmt_csv(r.get(k)) for k in columns})
    atomic_write_text(Path(out_dir) / "summary.csv", buf.getvalue())
    atomic_write_text(Path(out_dir) / "summary.md",
                      f"# {title}\n\n" + summary_markdown([r.summary for r in records]) + "\n")


def _fmt_csv(v: Any) -> Any:
    return f"{v:.6g}" if isinstance(v, float) else v


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.2f} %"


def summary_markdown(summaries: Sequence[Summary]) -> str:
    """The standard results table of runs' summaries (also embedded in README by ``utils.report.readme``)."""
    rows = []
    for s in summaries:
        status = "" if s.status == "completed" else f" ({s.status})"
        rows.append([
            f"{s.model}{status}", f"{s.params:,}", f"{s.mflops:.1f}", _pct(s.final_train_acc), _pct(s.final_val_acc),
            _pct(s.test_acc), "–" if s.gap is None else f"{100 * s.gap:+.2f} pp",
            "–" if s.train_time_s is None else f"{s.train_time_s:.0f} s"])
    return markdown_table(["model", "params", "MFLOPs/img", "train acc (clean)", "val acc", "test acc",
                           "gap train−val", "train time"], rows)
