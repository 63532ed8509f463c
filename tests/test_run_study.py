"""run_study.py end to end: the three scripts in turn on generated data, timings recorded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import write_fake_mnist

ROOT = Path(__file__).resolve().parent.parent


def _run_study(cwd: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOMEWORK_THREADS": "1", "HOMEWORK_DATA_DIR": ""}
    return subprocess.run([sys.executable, str(ROOT / "run_study.py"), *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


def test_quick_study_runs_all_three_scripts_and_records_times(tmp_path, fake_data_dir):
    out = _run_study(tmp_path, "--data-dir", str(fake_data_dir), "--profile", "quick")
    assert out.returncode == 0, out.stderr[-2000:]
    record = json.loads((tmp_path / "results" / "quick" / "study_run.json").read_text())
    assert record["status"] == "completed" and record["profile"] == "quick"
    assert [s["script"] for s in record["scripts"]] == ["homework_cnn_vs_fc_comparison.py",
                                                        "homework_cnn_architecture_analysis.py",
                                                        "homework_custom_layers_experiments.py"]
    assert all(s["exit_code"] == 0 and s["wall_s"] > 0 for s in record["scripts"])
    assert record["total_wall_s"] >= sum(s["wall_s"] for s in record["scripts"])
    # quick results and figures land beside, never over, the standard ones
    assert (tmp_path / "results" / "quick" / "mnist_comparison" / "summary.csv").is_file()
    assert list((tmp_path / "plots" / "quick").rglob("*.png"))
    assert not (tmp_path / "results" / "mnist_comparison").exists()


def test_study_stops_at_the_first_failing_script(tmp_path):
    # a truncated MNIST file (present, so nothing is downloaded): the first script fails with exit 2
    root = write_fake_mnist(tmp_path / "data", n_train=30, n_test=10)
    images = root / "MNIST" / "raw" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:1000])
    out = _run_study(tmp_path, "--data-dir", str(root), "--profile", "quick", "--results-dir", str(tmp_path / "r"))
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and "is truncated" in out.stderr
    record = json.loads((tmp_path / "r" / "study_run.json").read_text())
    assert len(record["scripts"]) == 1 and record["scripts"][0]["exit_code"] == 2
    assert record["status"].startswith("stopped")
