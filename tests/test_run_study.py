"""run_study.py end to end: the three scripts in turn on generated data, timings recorded."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import run_study
from tests.data_files import write_fake_mnist
from utils.engine.cli import run_cli

ROOT = Path(__file__).resolve().parent.parent


def _run_study(cwd: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOMEWORK_THREADS": "1", "HOMEWORK_DATA_DIR": ""}
    return subprocess.run([sys.executable, str(ROOT / "run_study.py"), *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.mark.e2e
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
    compute = json.loads((tmp_path / "results" / "quick" / "study_compute.json").read_text())
    assert compute["runs"] > 0 and compute["training_pflop"] > 0 and len(compute["gpu_estimate"]) == 2
    # quick results and figures land beside, never over, the standard ones
    assert (tmp_path / "results" / "quick" / "mnist_comparison" / "summary.csv").is_file()
    assert list((tmp_path / "plots" / "quick").rglob("*.png"))
    assert not (tmp_path / "results" / "mnist_comparison").exists()


@pytest.mark.e2e
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


# ------------------------------------------------------------------------------- interruptions
# run_study.py copied next to three stand-in scripts (named like the real ones): the real signal
# handling is exercised in a process of its own, without any training.
FINISHES = "import sys\nsys.exit(0)\n"
MUST_NOT_RUN = "from pathlib import Path\nPath('third_script_ran').touch()\n"
CTRL_C = """import os, signal, sys, time
try:
    os.killpg(0, signal.SIGINT)          # a terminal's Ctrl-C: the whole process group gets it
    time.sleep(60)
except KeyboardInterrupt:
    sys.exit(130)                        # what run_cli does once the finished work is saved
sys.exit(99)
"""
SIGTERM_TO_RUN_STUDY_ONLY = """import os, signal, sys, time
signal.signal(signal.SIGTERM, lambda *a: sys.exit(130))
os.kill(os.getppid(), signal.SIGTERM)    # e.g. `kill <run_study pid>`: this script is not told
time.sleep(60)
sys.exit(99)                             # reached only if run_study did not pass the SIGTERM on
"""


def _study_with_stand_ins(tmp_path: Path, second_script: str) -> subprocess.CompletedProcess:
    study = tmp_path / "study"
    study.mkdir()
    shutil.copy(ROOT / "run_study.py", study)
    for name, text in zip(run_study.SCRIPTS, (FINISHES, second_script, MUST_NOT_RUN)):
        (study / name).write_text(text)
    env = {**os.environ, "HOMEWORK_THREADS": "1", "HOMEWORK_DATA_DIR": "", "PYTHONPATH": str(ROOT)}
    # a session of its own: the stand-in's Ctrl-C must not reach pytest; SIGINT restored to its default
    # because a test run started in the background inherits it ignored (POSIX shells do that)
    return subprocess.run([sys.executable, str(study / "run_study.py"), "--profile", "quick", "--results-dir",
                           str(tmp_path / "r"), "--no-readme"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120, start_new_session=True,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _assert_interrupted_after_first_script(tmp_path: Path, out: subprocess.CompletedProcess) -> None:
    assert out.returncode == 130, out.stderr
    assert "Traceback" not in out.stderr
    assert [line for line in out.stderr.splitlines() if line.startswith("interrupted:")]
    record = json.loads((tmp_path / "r" / "study_run.json").read_text())
    assert record["status"] == "interrupted" and record["total_wall_s"] > 0
    first, second = record["scripts"]
    assert first["exit_code"] == 0 and "interrupted" not in first
    assert second["exit_code"] == 130 and second["interrupted"] is True   # the script saved and exited itself
    assert not (tmp_path / "third_script_ran").exists()


def test_ctrl_c_writes_the_record_of_the_scripts_so_far(tmp_path):
    _assert_interrupted_after_first_script(tmp_path, _study_with_stand_ins(tmp_path, CTRL_C))


def test_sigterm_is_passed_on_to_the_running_script_and_recorded(tmp_path):
    _assert_interrupted_after_first_script(tmp_path, _study_with_stand_ins(tmp_path, SIGTERM_TO_RUN_STUDY_ONLY))


def test_interrupt_between_scripts_is_recorded(tmp_path, monkeypatch, capsys):
    calls = []

    def fake_run_script(path, args, env=None):
        calls.append(path.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return 0, False

    monkeypatch.setattr(run_study, "run_script", fake_run_script)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    assert run_cli(run_study.main, ["--results-dir", str(tmp_path / "r"), "--no-readme"]) == 130
    record = json.loads((tmp_path / "r" / "study_run.json").read_text())
    assert record["status"] == "interrupted" and [s["script"] for s in record["scripts"]] == [calls[0]]
    assert "Traceback" not in capsys.readouterr().err
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers   # restored


def test_tasks_runs_only_the_chosen_scripts_in_task_order(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(run_study, "run_script", lambda path, args, env=None: (calls.append(path.name), (0, False))[1])
    assert run_cli(run_study.main, ["--results-dir", str(tmp_path / "r"), "--no-readme", "--tasks", "3", "1"]) == 0
    assert calls == [run_study.SCRIPTS[0], run_study.SCRIPTS[2]]
    record = json.loads((tmp_path / "r" / "study_run.json").read_text())
    assert record["tasks"] == [1, 3] and [s["script"] for s in record["scripts"]] == calls
    assert record["status"] == "completed"


@pytest.mark.parametrize("argv", [["--tasks", "4"], ["--tasks"], ["--tasks", "two"]])
def test_unknown_tasks_are_refused_before_anything_runs(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(run_study, "run_script", lambda *a, **k: pytest.fail("a script ran"))
    with pytest.raises(SystemExit) as exc:
        run_cli(run_study.main, ["--results-dir", str(tmp_path / "r"), *argv])
    assert exc.value.code == 2 and "--tasks" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
