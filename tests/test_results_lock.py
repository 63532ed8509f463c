"""One writer per results folder: a second invocation on a folder another process writes to stops at
once with one line naming that process (exit 2); the lock of a killed process is taken over; the
scripts run_study.py starts write under its lock."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import run_study
from utils.engine import lock
from utils.engine.lock import LOCK_NAME, acquire_results_lock, release_results_locks

ROOT = Path(__file__).resolve().parent.parent
HOLD = ("import sys, time\nfrom pathlib import Path\nfrom utils.engine.lock import acquire_results_lock\n"
        "acquire_results_lock(Path(sys.argv[1]))\nprint('locked', flush=True)\ntime.sleep(120)\n")


def _env() -> dict[str, str]:
    return {**os.environ, "HOMEWORK_THREADS": "1", "HOMEWORK_DATA_DIR": "", "PYTHONPATH": str(ROOT)}


@pytest.fixture
def holder(tmp_path):
    """A process holding the lock of ``tmp_path / "results"`` (until killed)."""
    folder = tmp_path / "results"
    folder.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True, env=_env())
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("script", ["homework_cnn_vs_fc_comparison.py", "run_study.py"])
def test_second_invocation_on_a_locked_folder_stops_with_one_line(script, holder, tmp_path, fake_data_dir):
    out = subprocess.run([sys.executable, str(ROOT / script), "--profile", "quick", "--data-dir", str(fake_data_dir),
                          "--results-dir", str(tmp_path / "results")], cwd=tmp_path, env=_env(),
                         capture_output=True, text=True, timeout=120)    # without the lock it would train
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert lines[0].startswith(f"error: another run (process {holder.pid}) is writing to {tmp_path / 'results'}")
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == [LOCK_NAME]    # nothing else written


def test_lock_of_a_killed_process_is_taken_over(holder, tmp_path, caplog):
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    lock_file = tmp_path / "results" / LOCK_NAME
    assert lock_file.read_text().strip() == str(holder.pid)      # what a killed process leaves behind
    try:
        with caplog.at_level(logging.INFO):
            acquire_results_lock(tmp_path / "results")
        assert f"from process {holder.pid}, which has ended" in caplog.text
        assert lock_file.read_text().strip() == str(os.getpid())
    finally:
        release_results_locks()
    assert lock_file.read_text() == ""                          # released: no holder to name


def test_a_lock_is_released_for_the_next_invocation(tmp_path):
    acquire_results_lock(tmp_path)
    acquire_results_lock(tmp_path)                # this process holds it already: no conflict with itself
    release_results_locks()
    out = subprocess.run([sys.executable, "-c", HOLD.replace("time.sleep(120)", ""), str(tmp_path)], env=_env(),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "locked", out.stderr


def test_a_child_takes_its_parents_lock_only_when_named_and_its_parent(tmp_path, monkeypatch):
    path = acquire_results_lock(tmp_path)
    try:
        take = HOLD.replace("time.sleep(120)", "")
        child = subprocess.run([sys.executable, "-c", take, str(tmp_path)], env={**_env(), **lock.child_env(path)},
                               capture_output=True, text=True, timeout=120)
        assert child.returncode == 0 and child.stdout.strip() == "locked", child.stderr
        # a grandchild (not the holder's child) naming the lock does not get in
        nested = (f"import subprocess, sys\nsys.exit(subprocess.run([sys.executable, '-c', {take!r}, "
                  f"{str(tmp_path)!r}]).returncode)\n")
        grandchild = subprocess.run([sys.executable, "-c", nested], env={**_env(), **lock.child_env(path)},
                                    capture_output=True, text=True, timeout=120)
        assert grandchild.returncode != 0 and f"another run (process {os.getpid()})" in grandchild.stderr
    finally:
        release_results_locks()


def test_run_study_scripts_write_under_the_studys_lock(tmp_path):
    """run_study.py copied next to three stand-in scripts that each take the results folder's lock
    as the real ones do: none is stopped by the study's own lock."""
    study = tmp_path / "study"
    study.mkdir()
    shutil.copy(ROOT / "run_study.py", study)
    take = ("import sys\nfrom pathlib import Path\nfrom utils.engine.lock import acquire_results_lock\n"
            "acquire_results_lock(Path(sys.argv[sys.argv.index('--results-dir') + 1]))\n")
    for name in run_study.SCRIPTS:
        (study / name).write_text(take)
    out = subprocess.run([sys.executable, str(study / "run_study.py"), "--profile", "quick", "--results-dir",
                          str(tmp_path / "r"), "--no-readme"], cwd=tmp_path, env=_env(), capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    assert (tmp_path / "r" / LOCK_NAME).read_text() == ""       # released at the end
