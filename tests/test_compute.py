"""Training compute of runs and of a study (utils/analysis/compute.py, utils/report/compute.py), by hand."""

from __future__ import annotations

import json

import pytest

from utils.analysis.compute import GpuAssumption, gpu_time_estimate, study_compute, training_flop
from utils.report.compute import OUTPUT, run_dicts, write_study_compute


def _run(flops: int, steps: int, batch: int, train_s: float, precision: str = "bf16") -> dict:
    return {"config_hash": "x", "flops_per_image": flops, "history": {"step": list(range(1, steps + 1))},
            "config": {"batch_size": batch}, "timing": {"train_s": train_s}, "runtime": {"precision": precision}}


def test_training_flop_is_three_forwards_per_image_seen():
    assert training_flop(1_000, steps=10, batch_size=4) == 3 * 1_000 * 40


def test_gpu_estimate_is_flops_at_the_throughput_plus_overhead_per_step():
    (e,) = gpu_time_estimate(2e12, 100, [GpuAssumption(1.0, 5.0, "test")])
    assert e["flop_s"] == pytest.approx(2.0) and e["overhead_s"] == pytest.approx(0.5)
    assert e["train_s"] == pytest.approx(2.5) and e["why"] == "test"


def test_study_compute_sums_runs_and_splits_by_precision():
    runs = [_run(1e6, 10, 8, 2.0), _run(2e6, 5, 8, 1.0, "fp32"), _run(0, 0, 8, 0.0)]
    out = study_compute(runs)
    assert out["runs"] == 3 and out["steps"] == 15
    assert out["training_flop"] == pytest.approx(3 * 8 * (1e6 * 10 + 2e6 * 5))
    assert out["achieved_tflops"] == pytest.approx(out["training_flop"] / 3.0 / 1e12)
    assert set(out["by_precision"]) == {"bf16", "fp32"} and out["by_precision"]["fp32"]["runs"] == 1
    assert out["gpu_estimate"][0]["train_s"] < out["gpu_estimate"][1]["train_s"]


def test_study_compute_of_no_runs_has_no_throughput():
    out = study_compute([])
    assert out["runs"] == 0 and out["achieved_tflops"] is None


def test_report_counts_run_records_only_outside_superseded_and_other_profiles(tmp_path):
    for folder in ("exp", "exp/superseded/old", "quick/exp", "archive/2026-01-01/exp", "exp2"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "run.json").write_text(json.dumps(_run(1e6, 2, 4, 1.0)))
    (tmp_path / "exp" / "analysis.json").write_text(json.dumps({"not": "a run"}))
    assert len(list(run_dicts(tmp_path))) == 2
    out = write_study_compute(tmp_path)
    assert json.loads((tmp_path / OUTPUT).read_text()) == json.loads(json.dumps(out)) and out["runs"] == 2


def test_study_compute_splits_by_experiment_with_the_runs_whole_wall_time():
    runs = [{**_run(1e6, 10, 8, 2.0), "experiment": "a", "timing": {"train_s": 2.0, "total_s": 3.0}},
            {**_run(1e6, 10, 8, 4.0), "experiment": "a", "timing": {"train_s": 4.0, "total_s": 5.5}},
            {**_run(1e6, 10, 8, 1.0), "experiment": "b"}]
    by = study_compute(runs)["by_experiment"]
    assert set(by) == {"a", "b"} and by["a"]["runs"] == 2
    assert by["a"]["train_s"] == pytest.approx(6.0) and by["a"]["total_s"] == pytest.approx(8.5)
    assert by["b"]["total_s"] == 0.0
