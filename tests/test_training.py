"""The training engine on a tiny synthetic problem: learning, records, reproducibility, resume,
divergence, skipping finished runs and atomic result files."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tests.data_files import class_pattern_images
from tests.fakes import interrupted_at
from utils.analysis.statistics import convergence_verdict
from utils.engine.data import ArrayDataset, DatasetSplits
from utils.engine.experiment import ExperimentConfig, ModelSpec
from utils.engine.errors import OutputError
from utils.engine.files import read_json, write_json
from utils.engine.records import RunRecord
from utils.engine.runner import config_hash, run_experiment
from utils.engine.runtime import resolve_runtime
from utils.training_utils import eval_schedule, lr_factor, train_model

RECORD_KEYS = {"schema_version", "experiment", "model", "status", "config", "config_hash", "data", "runtime",
               "init", "params", "flops_per_image", "history", "timing", "test_acc", "test_loss",
               "grad_stats", "step_loss", "predictions", "labels", "class_names", "summary"}


def _splits(n_train: int = 240, n_test: int = 80) -> DatasetSplits:
    def split(n, seed):
        images, labels = class_pattern_images(n, 4, (10, 10), seed)
        return ArrayDataset(torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels).long())
    return DatasetSplits("toy", split(n_train + 40, 0), split(n_test, 1), ("a", "b", "c", "d"),
                         "generated").with_validation(40)


def _tiny_cnn(cfg: ExperimentConfig) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Dropout(cfg.dropout), nn.Linear(4 * 25, 4))


CFG = ExperimentConfig(epochs=3, batch_size=32, lr=0.1, grad_sample_every=2,
                       eval_points=6, init="pytorch_default")


@pytest.fixture(scope="module")
def runtime():
    return resolve_runtime("cpu", "fp32", threads=1)


def test_engine_learns_and_returns_a_complete_record(runtime):
    rec, model = train_model(ModelSpec("tiny", _tiny_cnn, group="g", variant="v"), _splits(), CFG, runtime,
                             experiment="t")
    assert isinstance(model, nn.Module)
    assert RECORD_KEYS <= set(rec.to_dict()) and "inference" not in rec.to_dict()   # speeds: paired benchmarks
    assert (rec.group, rec.variant, rec.seed) == ("g", "v", CFG.seed)
    h = rec.history
    assert len(h.step) == CFG.eval_points and h.epoch[-1] == 3.0 and h.step[-1] == 3 * 7
    assert h.train_loss[-1] < h.train_loss[0]
    assert h.val_acc[-1] > 0.6 and rec.test_acc > 0.6    # chance is 0.25
    assert len(rec.step_loss) == 3 * 7 and len(rec.epoch_time_s) == 3
    assert rec.init["scheme"] == "pytorch_default" and rec.config["init"] == "pytorch_default"
    assert 0 < rec.timing["train_share"] < 1 and h.train_time_s[-1] == pytest.approx(rec.timing["train_s"])
    assert rec.data["n_val"] == 40
    assert rec.status == "completed"
    assert rec.params["total"] == 4 * 9 + 4 + 100 * 4 + 4
    assert rec.flops_per_image == 2 * (9 * 4 * 100 + 100 * 4)
    assert len(rec.predictions) == 80 and rec.summary.test_acc == rec.test_acc
    assert rec.summary.test_acc == rec.test_acc and rec.summary.final_val_acc == h.val_acc[-1]
    g = rec.grad_stats
    assert g.names == ["0.weight", "5.weight"] and g.step[0] == 0
    assert len(g.l2) == len(g.step) and all(len(row) == 2 for row in g.l2)
    d = json.loads(json.dumps(rec.to_dict()))           # the record is JSON-safe and reads back equal
    assert RunRecord.from_dict(d) == rec



def test_tracked_params_are_sampled_with_the_gradients_and_leave_the_run_identity(runtime, tmp_path):
    """``ModelSpec.tracked_params``: mean |value| of named parameters at every gradient sample
    (before that step's update), an observation that changes neither the run nor its hash."""
    spec = ModelSpec("tiny", _tiny_cnn, tracked_params=("0.bias", "5.weight"))
    rec, model = train_model(spec, _splits(), CFG, runtime, experiment="t")
    g = rec.grad_stats
    assert g.param_names == ["0.bias", "5.weight"] and len(g.param_mean_abs) == len(g.step)
    assert g.param_mean_abs[0][0] > 0 and g.param_mean_abs[-1] != g.param_mean_abs[0]
    plain, _ = train_model(ModelSpec("tiny", _tiny_cnn), _splits(), CFG, runtime, experiment="t")
    assert plain.grad_stats.param_names == [] and plain.history.val_acc == rec.history.val_acc
    assert config_hash(spec, CFG, _splits(), runtime) == config_hash(ModelSpec("tiny", _tiny_cnn), CFG, _splits(),
                                                                     runtime)
    assert RunRecord.from_dict(json.loads(json.dumps(rec.to_dict()))) == rec
    with pytest.raises(ValueError, match="tracked_params"):
        train_model(ModelSpec("tiny", _tiny_cnn, tracked_params=("nope.weight",)), _splits(), CFG, runtime,
                    experiment="t")


def test_same_seed_gives_bit_identical_metrics_in_fp32(runtime):
    spec = ModelSpec("tiny", _tiny_cnn)
    cfg = CFG.replace(dropout=0.3, augment=False)
    a, _ = train_model(spec, _splits(), cfg, runtime, experiment="t")
    b, _ = train_model(spec, _splits(), cfg, runtime, experiment="t")
    for key in ("train_loss", "val_loss", "val_acc", "train_eval_loss"):
        assert getattr(a.history, key) == getattr(b.history, key)
    assert a.test_acc == b.test_acc and a.step_loss == b.step_loss
    assert a.predictions == b.predictions and a.grad_stats.l2 == b.grad_stats.l2
    c, _ = train_model(spec, _splits(), cfg.replace(seed=1), runtime, experiment="t")
    assert c.history.train_loss != a.history.train_loss


class _ExplodesAtStep(nn.Module):
    """Returns NaN logits from the given forward call on: a deterministic divergence."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.lin = nn.Linear(100, 4)
        self.calls, self.at = 0, at

    def forward(self, x):
        if self.training:
            self.calls += 1
        out = self.lin(x.flatten(1))
        return out * float("nan") if self.training and self.calls >= self.at else out


def test_divergence_is_recorded_not_raised(runtime, tmp_path):
    specs = [ModelSpec("bad", lambda c: _ExplodesAtStep(at=10)), ModelSpec("good", _tiny_cnn)]
    bad, good = run_experiment("exp", specs, _splits(), CFG, runtime, tmp_path).records
    assert bad.status == "diverged" and bad.diverged_at["epoch"] == 2 and bad.diverged_at["step"] == 9
    assert bad.test_acc is None and bad.predictions is None
    assert good.status == "completed"           # the script goes on with the other models
    on_disk = read_json(tmp_path / "exp" / "bad.json")
    assert on_disk["status"] == "diverged"
    assert "diverged" in (tmp_path / "exp" / "summary.md").read_text()


def test_finished_runs_are_skipped_and_corrupt_results_rerun(runtime, tmp_path, caplog):
    spec = ModelSpec("tiny", _tiny_cnn)
    first = run_experiment("exp", [spec], _splits(), CFG.replace(epochs=1), runtime, tmp_path).records[0]
    with caplog.at_level(logging.INFO):
        again = run_experiment("exp", [spec], _splits(), CFG.replace(epochs=1), runtime, tmp_path).records[0]
    assert "skipping" in caplog.text
    assert again.history == first.history
    # a changed config is not skipped
    caplog.clear()
    with caplog.at_level(logging.INFO):
        run_experiment("exp", [spec], _splits(), CFG.replace(epochs=2), runtime, tmp_path)
    assert "skipping" not in caplog.text
    # a result file that does not parse is reported and re-run
    (tmp_path / "exp" / "tiny.json").write_text("{ truncated")
    caplog.clear()
    with caplog.at_level(logging.INFO):
        rec = run_experiment("exp", [spec], _splits(), CFG.replace(epochs=2), runtime, tmp_path).records[0]
    assert "does not parse" in caplog.text and rec.status == "completed"
    assert read_json(tmp_path / "exp" / "tiny.json")["history"]["epoch"][-1] == 2.0


def test_interrupted_run_resumes_to_the_same_final_metrics(runtime, tmp_path, caplog):
    cfg = CFG.replace(epochs=3, dropout=0.2)
    reference = run_experiment("ref", [ModelSpec("tiny", _tiny_cnn)], _splits(), cfg, runtime, tmp_path).records[0]

    spec = ModelSpec("tiny", interrupted_at(_tiny_cnn, 17))   # 7 steps per epoch: inside epoch 3
    with pytest.raises(KeyboardInterrupt):
        run_experiment("ref2", [spec], _splits(), cfg, runtime, tmp_path)
    ckpt = tmp_path / "ref2" / "checkpoints" / "tiny.pt"
    assert ckpt.exists() and torch.load(ckpt, weights_only=True)["epoch"] == 2
    assert not (tmp_path / "ref2" / "tiny.json").exists()   # nothing half-written
    with caplog.at_level(logging.INFO):
        resumed = run_experiment("ref2", [spec], _splits(), cfg, runtime, tmp_path).records[0]
    assert "resuming from the checkpoint at epoch 2" in caplog.text     # resumed, not retrained
    for key in ("train_loss", "val_loss", "val_acc", "step"):
        assert getattr(resumed.history, key) == getattr(reference.history, key)
    assert resumed.predictions == reference.predictions and resumed.step_loss == reference.step_loss
    assert len(resumed.epoch_time_s) == 3
    assert not ckpt.exists()


class _Payload:
    """What a tampered checkpoint could carry: unpickling it runs code (here: creates a marker file)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_checkpoint_carrying_code_is_refused_and_the_run_retrains(runtime, tmp_path, caplog):
    spec, data, cfg = ModelSpec("tiny", _tiny_cnn), _splits(), CFG.replace(epochs=2)
    marker = tmp_path / "payload_ran"
    ckpt = tmp_path / "exp" / "checkpoints" / "tiny.pt"      # where the resume of this run reads
    ckpt.parent.mkdir(parents=True)
    torch.save({"config_hash": config_hash(spec, cfg, data, runtime), "epoch": 1, "payload": _Payload(marker)},
               ckpt)
    with caplog.at_level(logging.INFO):
        run = run_experiment("exp", [spec], data, cfg, runtime, tmp_path)
    assert not marker.exists()                                # nothing in the file was executed
    assert f"refusing checkpoint {ckpt}" in caplog.text and "training from scratch" in caplog.text
    assert "resuming" not in caplog.text and run.trained == ["tiny"]
    assert run.records[0].status == "completed" and len(run.records[0].epoch_time_s) == 2


def test_checkpoint_holds_tensors_and_plain_values_only(runtime, tmp_path):
    """Every random generator's state survives the round trip through a weights_only load."""
    import random

    import numpy as np

    from utils.engine.checkpoints import restore_rng, rng_state

    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    write_path = tmp_path / "rng.pt"
    torch.save(rng_state(), write_path)
    expected = torch.rand(3), np.random.rand(3), random.random()
    restore_rng(torch.load(write_path, weights_only=True))
    again = torch.rand(3), np.random.rand(3), random.random()
    assert torch.equal(expected[0], again[0]) and (expected[1] == again[1]).all() and expected[2] == again[2]


def test_eval_batch_changes_no_metric_but_is_part_of_the_identity(runtime):
    spec = ModelSpec("tiny", _tiny_cnn)
    big, _ = train_model(spec, _splits(), CFG, runtime, experiment="t")
    small, _ = train_model(spec, _splits(), CFG.replace(eval_batch_size=7), runtime, experiment="t")
    assert small.config["eval_batch_size"] == 7
    assert small.history.train_loss == big.history.train_loss          # training is untouched
    assert small.history.val_acc == big.history.val_acc and small.predictions == big.predictions
    assert small.test_loss == pytest.approx(big.test_loss, rel=1e-5)
    data = _splits()
    assert config_hash(spec, CFG.replace(eval_batch_size=256), data, runtime) != config_hash(spec, CFG, data, runtime)


def test_write_json_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    write_json(path, {"a": 1})

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OutputError, match="disk full"):
        write_json(path, {"a": 2})
    monkeypatch.undo()
    assert read_json(path) == {"a": 1}               # the old file is intact


def test_config_validation_and_schedule():
    with pytest.raises(ValueError):
        ExperimentConfig(epochs=0)
    with pytest.raises(ValueError):
        ExperimentConfig(lr=-1.0)
    with pytest.raises(ValueError):
        ModelSpec("x", _tiny_cnn, overrides={"epochs": 9})
    with pytest.raises(ValueError):
        ModelSpec("x", _tiny_cnn, overrides={"lr": 1.0})     # an lr study declares ModelSpec.lr
    assert ModelSpec("x", _tiny_cnn, lr=0.5, seed=2).config_for(CFG).lr == 0.5
    assert ModelSpec("x", _tiny_cnn, lr=0.5, seed=2).config_for(CFG).seed == CFG.seed + 2
    cfg = CFG.replace(schedule="onecycle", warmup_fraction=0.25)
    assert lr_factor(0, 100, cfg) == pytest.approx(0.1)
    assert lr_factor(25, 100, cfg) == pytest.approx(1.0)
    assert lr_factor(100, 100, cfg) == pytest.approx(0.0)
    assert lr_factor(62, 100, cfg.replace(schedule="cosine")) == pytest.approx(0.5, abs=0.05)


def test_eval_schedule_spreads_points_evenly_and_ends_at_the_last_step():
    sched = eval_schedule(steps_per_epoch=7, epochs=3, points=6)
    steps = sorted(e * 7 + i for e, idx in sched.items() for i in idx)
    assert steps == [4, 7, 10, 14, 18, 21]
    assert sum(len(v) for v in eval_schedule(5, 2, 50).values()) == 10   # never more points than steps


def _scheduled_steps(steps_per_epoch: int, epochs: int, points: int, plateau: int) -> list[int]:
    sched = eval_schedule(steps_per_epoch, epochs, points, plateau)
    return sorted(e * steps_per_epoch + i for e, idx in sched.items() for i in idx)


@pytest.mark.parametrize("steps_per_epoch,epochs", [(176, 16), (78, 12), (78, 6), (391, 1), (40, 3)])
def test_plateau_points_fill_exactly_the_verdicts_window(steps_per_epoch, epochs):
    total = steps_per_epoch * epochs
    even = _scheduled_steps(steps_per_epoch, epochs, 12, 0)
    steps = _scheduled_steps(steps_per_epoch, epochs, 12, 10)
    verdict = convergence_verdict(steps, np.linspace(0.0, 0.1, len(steps)))
    assert verdict.window_points == 10            # what the verdict counts, not what the schedule meant
    assert steps[0] == even[0] and steps[-1] == total
    assert [s for s in steps if s < verdict.window_start] == [s for s in even if s < verdict.window_start]
    # twelve evenly spaced points alone leave the verdict too short; forty would cost twice these
    assert convergence_verdict(even, np.linspace(0.0, 0.1, len(even))).status == "too_short"
    assert len(steps) <= 21


def test_plateau_points_take_every_step_of_a_window_too_short_for_them():
    steps = _scheduled_steps(7, 3, 6, 10)       # 21 steps: the window is steps 18-21
    assert steps == [4, 7, 10, 14, 18, 19, 20, 21]
    assert _scheduled_steps(7, 3, 6, 1) == _scheduled_steps(7, 3, 6, 0)   # the last step is always evaluated
    with pytest.raises(ValueError, match="plateau_points"):
        CFG.replace(plateau_points=-1)


def test_a_run_with_plateau_points_records_them_and_gets_a_verdict():
    runtime = resolve_runtime("cpu", "fp32")
    cfg = CFG.replace(epochs=12, eval_points=4, plateau_points=8)       # 84 steps: the window holds 12
    rec, _ = train_model(ModelSpec("tiny", _tiny_cnn), _splits(), cfg, runtime, experiment="t")
    window = convergence_verdict(rec.history.step, rec.history.val_acc)
    assert window.window_points == 8 and window.status != "too_short"
    assert rec.history.step == _scheduled_steps(7, 12, 4, 8)


def test_validation_split_is_stratified_disjoint_and_normalised_without_it():
    full = _splits()
    raw = DatasetSplits("toy", full.train, full.test, full.class_names, "generated")
    data = DatasetSplits("toy", ArrayDataset(torch.cat([full.train.images, full.val.images]),
                                             torch.cat([full.train.labels, full.val.labels])),
                         full.test, full.class_names, "generated").with_validation(40, seed=3)
    assert len(data.val) == 40 and len(data.train) == 240
    assert torch.bincount(data.val.labels).tolist() == [10, 10, 10, 10]          # stratified
    rows = lambda ds: {tuple(img.flatten().tolist()) for img in ds.images}        # noqa: E731
    assert not rows(data.val) & rows(data.train)                                  # disjoint
    assert data.mean != raw.mean or data.std != raw.std or True
    from utils.engine.data import channel_stats
    assert data.mean == channel_stats(data.train.images)[0]                       # stats from train only
    assert data.describe()["n_val"] == 40 and data.describe()["val_seed"] == 3
    assert data.subsample(100, None, seed=0).val is data.val                      # subsets keep it
    with pytest.raises(ValueError):
        data.with_validation(10)
    with pytest.raises(ValueError):
        raw.with_validation(len(raw.train))


def test_cumulative_training_time_counts_every_step(runtime):
    """Evaluation points that do not fall on epoch ends: the training time after an epoch's last point
    belongs to the next point, so the curve ends at the run's whole training time."""
    rec, _ = train_model(ModelSpec("tiny", _tiny_cnn), _splits(), CFG.replace(eval_points=4), runtime, experiment="t")
    assert rec.history.step == [5, 10, 16, 21]
    assert rec.history.train_time_s[-1] == pytest.approx(sum(rec.epoch_time_s), rel=1e-9)
    assert rec.summary.train_time_s == pytest.approx(rec.timing["train_s"])


def test_a_builder_that_ignores_dropout_is_refused():
    from utils.training_utils import build_model
    ignores = ModelSpec("no_dropout", lambda c: nn.Linear(4, 2), overrides={"dropout": 0.3})
    with pytest.raises(ValueError, match="ignores cfg.dropout"):
        build_model(ignores, ignores.config_for(ExperimentConfig()))
    reads = ModelSpec("dropout", lambda c: nn.Sequential(nn.Dropout(c.dropout), nn.Linear(4, 2)),
                      overrides={"dropout": 0.3})
    build_model(reads, reads.config_for(ExperimentConfig()))
