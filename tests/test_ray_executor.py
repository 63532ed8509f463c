"""The Ray executor against the local one: the same records from the same seeds, failures reported
by name with the other results kept, and ``--executor ray`` refused in one line without Ray.

The Ray tests share one local Ray instance (2 CPUs, one thread per run); they are skipped where
Ray is not installed (``pip install .[ray]``).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from models.cnn_models import SimpleCNN
from models.fc_models import FullyConnectedNet
from utils.engine import executors
from utils.engine.cli import run_cli
from utils.engine.data_files import load_dataset
from utils.engine.errors import UsageError
from utils.engine.executors import RunsFailed, make_executor
from utils.engine.experiment import ExperimentConfig, ModelSpec, with_seeds
from utils.engine.files import read_json
from utils.engine.runner import run_experiment
from utils.engine.runtime import resolve_runtime

ROOT = Path(__file__).resolve().parents[1]
needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs Ray (pip install .[ray])")

CFG = ExperimentConfig(epochs=2, batch_size=32, lr=0.05, eval_points=4, grad_sample_every=2,
                       train_eval_samples=40, eval_batch_size=64)

# Fields that measure the machine or the clock, not the run: wall-clock seconds (timing, per-epoch
# times, the training time along the curve). Everything else (curves,
# losses, step losses, gradient norms, predictions, config, hash, data, runtime) must be equal.
WALL_CLOCK = ("timing", "epoch_time_s")
WALL_CLOCK_HISTORY = ("train_time_s",)
WALL_CLOCK_SUMMARY = ("train_time_s", "epoch_time_s", "train_share")


def _mlp(cfg: ExperimentConfig) -> nn.Module:
    return FullyConnectedNet(28 * 28, (32,), 10)


def _cnn(cfg: ExperimentConfig) -> nn.Module:
    return SimpleCNN(1, 10, (4, 8), image_size=28)


class Crashing(nn.Module):
    """A model whose forward raises ("raise") or kills its process ("exit"); "none" trains.

    Building it (the driver hashes the architecture) does not fail; the first forward, on the
    worker, does."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.net = FullyConnectedNet(28 * 28, (16,), 10)

    def forward(self, x):
        if self.how == "raise":
            raise ValueError("boom on purpose")
        if self.how == "exit":
            os._exit(3)
        return self.net(x)


def _crashing(how: str):
    return lambda cfg: Crashing(how)


@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray")
    # the workers import this test module and the package, wherever pytest was started from
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def data(fake_data_dir):
    return load_dataset("mnist", fake_data_dir).with_validation(40)


@pytest.fixture(scope="module")
def runtime():
    return resolve_runtime("cpu", "fp32", threads=1)


def _comparable(record: dict) -> dict:
    out = {k: v for k, v in record.items() if k not in WALL_CLOCK}
    out["history"] = {k: v for k, v in record["history"].items() if k not in WALL_CLOCK_HISTORY}
    out["summary"] = {k: v for k, v in record["summary"].items() if k not in WALL_CLOCK_SUMMARY}
    return out


@needs_ray
def test_ray_runs_give_the_records_and_weights_of_local_runs(ray_instance, data, runtime, tmp_path):
    specs = with_seeds([ModelSpec("mlp", _mlp, group="g", variant="mlp"),
                        ModelSpec("cnn", _cnn, group="g", variant="cnn")], 2)
    local = run_experiment("exp", specs, data, CFG, runtime, tmp_path / "local")
    remote = run_experiment("exp", specs, data, CFG, runtime, tmp_path / "ray", executor=make_executor("ray"))
    assert remote.trained == local.trained == [s.name for s in specs]
    for spec in specs:
        a = read_json(tmp_path / "local" / "exp" / f"{spec.name}.json")
        b = read_json(tmp_path / "ray" / "exp" / f"{spec.name}.json")
        assert a["status"] == "completed" and len(a["history"]["val_acc"]) == CFG.eval_points
        assert _comparable(a) == _comparable(b), spec.name
        wa, wb = (torch.load(root / "exp" / "checkpoints" / f"{spec.name}.final.pt", weights_only=True)
                  for root in (tmp_path / "local", tmp_path / "ray"))
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert [r.model for r in remote.records] == [s.name for s in specs]
    left = [p.name for p in (tmp_path / "ray" / "exp" / "checkpoints").glob("*.pt") if not p.name.endswith(".final.pt")]
    assert left == []   # no checkpoint of a run in progress is left
    # the driver wrote everything: a re-run finds it all and trains nothing
    again = run_experiment("exp", specs, data, CFG, runtime, tmp_path / "ray", executor=make_executor("ray"))
    assert again.trained == []


@needs_ray
def test_failed_runs_are_named_the_others_kept_and_only_they_rerun(ray_instance, data, runtime, tmp_path, capsys):
    specs = [ModelSpec("ok_a", _mlp), ModelSpec("raises", _crashing("raise")), ModelSpec("ok_b", _cnn),
             ModelSpec("dies", _crashing("exit"))]
    out = tmp_path / "exp"

    def main(argv):
        run_experiment("exp", specs, data, CFG, runtime, tmp_path, executor=make_executor("ray"))
        return 0

    assert run_cli(main, []) == 2
    err = capsys.readouterr().err
    assert "2 of 4 runs of exp failed" in err and "exp/raises: ValueError: boom on purpose" in err
    assert "exp/dies: " in err and "Traceback" not in err
    assert {p.name for p in out.glob("*.json")} == {"ok_a.json", "ok_b.json"}
    assert not (out / "summary.md").exists()       # no summary of an incomplete experiment
    written = {p: p.stat().st_mtime_ns for p in out.glob("*.json")}

    fixed = [ModelSpec(s.name, _crashing("none")) if s.name in ("raises", "dies") else s for s in specs]
    rerun = run_experiment("exp", fixed, data, CFG, runtime, tmp_path, executor=make_executor("ray"))
    assert rerun.trained == ["raises", "dies"]
    assert {p: p.stat().st_mtime_ns for p in written} == written
    assert [r.model for r in rerun.records] == ["ok_a", "raises", "ok_b", "dies"]
    assert (out / "summary.md").exists()


def test_ray_executor_without_ray_is_one_line(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(executors.importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(UsageError, match=r"pip install \.\[ray\]"):
        make_executor("ray")
    assert isinstance(make_executor("local"), executors.LocalExecutor)


def test_failure_report_names_every_run():
    job = executors.TrainJob("exp", ModelSpec("m", _mlp), CFG, {}, 0, "h",
                             executors.RunPaths(Path("a"), Path("b"), Path("c")))
    exc = RunsFailed("exp", [executors.JobOutcome(job, error="ValueError: x")], total=3)
    assert str(exc).splitlines() == ["1 of 3 runs of exp failed (the other results are saved; the same command "
                                     "retries the failed ones):", "  exp/m: ValueError: x"]
    assert isinstance(exc, UsageError)   # exit code 2 under run_cli


@needs_ray
def test_interrupt_cancels_the_outstanding_runs(ray_instance, data, runtime, tmp_path, monkeypatch):
    from utils.engine import runner

    cancelled = []
    real_cancel = ray_instance.cancel
    monkeypatch.setattr(ray_instance, "cancel", lambda ref, **kw: (cancelled.append(ref), real_cancel(ref, **kw)))

    def interrupted(outcome):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "write_outcome", interrupted)
    specs = [ModelSpec(f"mlp_{k}", _mlp, seed=k) for k in range(3)]
    with pytest.raises(KeyboardInterrupt):
        run_experiment("exp", specs, data, CFG, runtime, tmp_path, executor=make_executor("ray"))
    assert len(cancelled) == 2 and not list((tmp_path / "exp").glob("*.json"))
