"""The typed result record of one run, and the summary tables built from records.

A :class:`RunRecord` is what the engine returns and what every analysis, figure and the README
renderer read. It is written as JSON (``results/<experiment>/<model>.json``) with the same field
names; :meth:`RunRecord.from_dict` refuses a file whose fields do not match, so a renamed field fails
in the fast unit tests (``tests/test_records.py``), not three minutes into an end-to-end run.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from utils.files import atomic_write_text

SCHEMA_VERSION = 2


class RecordFormatError(ValueError):
    """A result file whose fields are not those of :class:`RunRecord` (an older schema)."""


@dataclass
class History:
    """Per-epoch curves. ``train_*`` are running means over the epoch's batches (train mode);
    ``train_eval_*`` are clean eval-mode numbers on a fixed training subset."""

    epoch: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    train_eval_loss: list[float] = field(default_factory=list)
    train_eval_acc: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)
    epoch_time_s: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)

    def append(self, **values: float) -> None:
        for k, v in values.items():
            getattr(self, k).append(v)


@dataclass
class GradStats:
    """Per-layer gradient norms of the weight tensors ``names``, sampled at optimisation ``step``s."""

    names: list[str] = field(default_factory=list)
    step: list[int] = field(default_factory=list)
    l2: list[list[float]] = field(default_factory=list)
    mean_abs: list[list[float]] = field(default_factory=list)


@dataclass
class Summary:
    """The headline numbers of a run (what summary tables show); ``None`` where a run diverged."""

    model: str
    status: str
    params: int
    mflops: float
    epochs_run: int | None = None
    final_train_acc: float | None = None
    final_test_acc: float | None = None
    best_test_acc: float | None = None
    best_epoch: int | None = None
    final_train_loss: float | None = None
    final_test_loss: float | None = None
    gap: float | None = None
    train_time_s: float | None = None
    epoch_time_s: float | None = None
    latency_ms_batch1: float | None = None
    throughput_img_s: float | None = None


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
    runtime: dict
    architecture: str
    params: dict                      # {"total", "trainable", "per_layer": {name: count}}
    flops_per_image: int
    history: History
    train_time_s: float
    inference: dict                   # latency / throughput; {} if the run diverged
    grad_stats: GradStats
    predictions: list[int] | None
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
                  mflops=record.flops_per_image / 1e6)
    if h.test_acc:
        best = int(np.argmax(h.test_acc))
        out = dataclasses.replace(
            out, epochs_run=len(h.epoch), final_train_acc=h.train_eval_acc[-1], final_test_acc=h.test_acc[-1],
            best_test_acc=h.test_acc[best], best_epoch=best + 1, final_train_loss=h.train_eval_loss[-1],
            final_test_loss=h.test_loss[-1], gap=h.train_eval_acc[-1] - h.test_acc[-1],
            train_time_s=float(sum(h.epoch_time_s)), epoch_time_s=float(np.mean(h.epoch_time_s)))
    inference = {k: v for k, v in record.inference.items() if k in ("latency_ms_batch1", "throughput_img_s")}
    return dataclasses.replace(out, **inference)


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


def summary_markdown(summaries: Sequence[Summary]) -> str:
    """The standard results table of runs' summaries (also embedded in README by ``utils.report``)."""
    head = ("| model | params | MFLOPs/img | train acc | test acc (final) | test acc (best @ep) | gap | "
            "train time | s/epoch | latency b=1 | throughput |")
    lines = [head, "|" + "|".join(["---"] * 11) + "|"]
    for s in summaries:
        if s.final_test_acc is None:
            lines.append(f"| {s.model} | {s.params:,} | {s.mflops:.1f} | {s.status} | | | | | | | |")
            continue
        status = "" if s.status == "completed" else f" ({s.status})"
        lat = s.latency_ms_batch1 if s.latency_ms_batch1 is not None else float("nan")
        thr = s.throughput_img_s if s.throughput_img_s is not None else float("nan")
        lines.append(
            f"| {s.model}{status} | {s.params:,} | {s.mflops:.1f} | {100 * s.final_train_acc:.2f} % | "
            f"{100 * s.final_test_acc:.2f} % | {100 * s.best_test_acc:.2f} % @{s.best_epoch} | "
            f"{100 * s.gap:+.2f} pp | {s.train_time_s:.0f} s | {s.epoch_time_s:.1f} | "
            f"{lat:.2f} ms | {thr:,.0f} img/s |")
    return "\n".join(lines)
