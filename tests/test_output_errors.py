"""Every failure to write an output file is one OutputError: one line on stderr naming the path, the
cause and the fix, exit code 2, no traceback; the results written before it stay on disk and the
same command resumes from them."""

from __future__ import annotations

import errno
import io
import logging
import os
import shutil
from pathlib import Path

import pytest

import homework_cnn_vs_fc_comparison as task1
import utils.engine.executors as executors
from tests.test_cli import _single_error_line
from utils.engine import files
from utils.engine.cli import run_cli
from utils.engine.errors import OutputError

# the quick profile's MNIST runs, in the order they train (seed-major)
MNIST_RUNS = [f"{model}_seed{seed}" for seed in range(2) for model in ("fc", "simple_cnn", "residual_cnn")]


def _task1(tmp_path: Path, data_dir: Path) -> int:
    return run_cli(task1.main, ["--data-dir", str(data_dir), "--results-dir", str(tmp_path / "results"),
                                "--plots-dir", str(tmp_path / "plots"), "--cache-dir", str(tmp_path / "cache"),
                                "--profile", "quick", "--only", "mnist", "--precision", "fp32"])


def _records(tmp_path: Path) -> dict[Path, int]:
    """The run records on disk, with their modification times."""
    return {p: p.stat().st_mtime_ns for p in (tmp_path / "results" / "mnist_comparison").glob("*_seed*.json")}


def _assert_resumes(tmp_path: Path, data_dir: Path, kept: dict[Path, int], capsys, monkeypatch) -> None:
    """The same command again: exit 0, the kept records untouched (skipped), every run recorded."""
    capsys.readouterr()
    assert _task1(tmp_path, data_dir) == 0
    now = _records(tmp_path)
    assert {p: now[p] for p in kept} == kept
    assert sorted(p.stem for p in now) == sorted(MNIST_RUNS)
    # the script's log goes to stderr (setup_logging replaces the root handlers, caplog's included)
    assert capsys.readouterr().err.count("finished result with the same config found, skipping") == len(kept)
    assert not list((tmp_path / "results").rglob("*.tmp"))         # no temp file left behind


def test_log_file_path_that_is_a_folder_is_one_line_and_exit_2(tmp_path, fake_data_dir, capsys):
    log_path = tmp_path / "results" / "cnn_vs_fc_comparison.log"
    log_path.mkdir(parents=True)
    assert _task1(tmp_path, fake_data_dir) == 2
    line = _single_error_line(capsys)
    assert f"the log file {log_path} is not writable (Is a directory); it is a folder" in line


def test_full_disk_mid_run_keeps_the_finished_runs_and_a_rerun_resumes(tmp_path, fake_data_dir, capsys, monkeypatch):
    real = files._write_temp
    failing = tmp_path / "results" / "mnist_comparison" / f"{MNIST_RUNS[2]}.json"

    def disk_full_at_the_third_record(tmp: Path, write) -> None:
        if tmp.name.startswith(f".{failing.name}."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(tmp, write)

    monkeypatch.setattr(files, "_write_temp", disk_full_at_the_third_record)
    assert _task1(tmp_path, fake_data_dir) == 2
    line = _single_error_line(capsys)
    assert f"{failing} is not writable (No space left on device); free space on that disk" in line
    assert "run the same command again" in line
    kept = _records(tmp_path)
    assert sorted(p.stem for p in kept) == sorted(MNIST_RUNS[:2])
    monkeypatch.setattr(files, "_write_temp", real)
    _assert_resumes(tmp_path, fake_data_dir, kept, capsys, monkeypatch)


def test_results_subfolder_replaced_by_a_file_mid_run(tmp_path, fake_data_dir, capsys, monkeypatch):
    real, calls = executors.train_model, []
    weights = tmp_path / "results" / "mnist_comparison" / "checkpoints"

    def train_then_block_the_weights_folder(*args, **kwargs):
        calls.append(1)
        out = real(*args, **kwargs)
        if len(calls) == 3:                      # the third run's weights have nowhere to go
            shutil.rmtree(weights)
            weights.write_text("not a folder")
        return out

    monkeypatch.setattr(executors, "train_model", train_then_block_the_weights_folder)
    assert _task1(tmp_path, fake_data_dir) == 2
    line = _single_error_line(capsys)
    assert f"{weights} is not writable (File exists); a file occupies that path" in line
    kept = _records(tmp_path)
    assert sorted(p.stem for p in kept) == sorted(MNIST_RUNS[:3])    # the third run's record came before its weights
    weights.unlink()                             # the fix the line names
    monkeypatch.setattr(executors, "train_model", real)
    _assert_resumes(tmp_path, fake_data_dir, kept, capsys, monkeypatch)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_results_subfolder_is_one_line_and_exit_2(tmp_path, fake_data_dir, capsys):
    folder = tmp_path / "results" / "mnist_comparison"
    folder.mkdir(parents=True)
    folder.chmod(0o500)
    try:
        assert _task1(tmp_path, fake_data_dir) == 2
    finally:
        folder.chmod(0o700)
    assert "(Permission denied); give yourself write permission" in _single_error_line(capsys)


@pytest.mark.parametrize("write", [
    lambda p: files.write_json(p, {"a": 2}), lambda p: files.atomic_write_text(p, "b"),
    lambda p: files.save_torch(p, {"a": 2}),
], ids=["json", "text", "torch"])
def test_every_write_helper_raises_output_error_and_keeps_the_old_file(write, tmp_path, monkeypatch):
    path = tmp_path / "out"
    path.write_text("old")

    def disk_full(tmp, fill):
        Path(tmp).write_bytes(b"half")           # what a full disk leaves: part of the file
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files, "_write_temp", disk_full)
    with pytest.raises(OutputError, match="No space left on device") as exc:
        write(path)
    assert exc.value.path == path and exc.value.cause.errno == errno.ENOSPC
    assert path.read_text() == "old" and list(tmp_path.iterdir()) == [path]   # temp file removed


def test_a_file_in_place_of_a_folder_is_an_output_error(tmp_path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(OutputError, match="a file occupies that path"):
        files.make_dir(tmp_path / "a_file")
    with pytest.raises(OutputError, match=f"{tmp_path / 'a_file' / 'sub'} is not writable"):
        files.write_json(tmp_path / "a_file" / "sub" / "r.json", {})


def test_log_file_that_fails_mid_run_ends_the_run_once(tmp_path):
    class FullDisk(io.StringIO):
        def write(self, text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    handler = files.open_log_file(tmp_path / "run.log")
    handler.setStream(FullDisk())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with pytest.raises(OutputError, match=f"the log file {tmp_path / 'run.log'} is not writable"):
            logging.getLogger("test").warning("a line the disk has no room for")
        assert handler not in root.handlers      # later records (the report itself) do not fail again
    finally:
        root.removeHandler(handler)
