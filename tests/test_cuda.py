"""The engine on a CUDA GPU: a training run (steps, evaluation, record), bf16 autocast,
channels_last, and a checkpoint written and resumed on the GPU, through the package's own
functions and :class:`Runtime`. Skipped on machines without CUDA (the CPU path is covered by
tests/test_training.py); run them with ``pytest -m cuda``.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from models.cnn_models import SimpleCNN
from tests.data_files import class_pattern_images
from tests.fakes import interrupted_at
from utils.engine.checkpoints import load_checkpoint, save_checkpoint
from utils.engine.data import ArrayDataset, BatchLoader, DatasetSplits
from utils.engine.experiment import ExperimentConfig, ModelSpec
from utils.engine.records import GradStats, History
from utils.engine.runner import run_experiment
from utils.engine.runtime import Runtime, resolve_runtime
from utils.training_utils import evaluate, make_optimizer, train_model

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CFG = ExperimentConfig(epochs=2, batch_size=32, lr=0.05, eval_points=4, grad_sample_every=2,
                       train_eval_samples=40, eval_batch_size=64)


def _splits() -> DatasetSplits:
    def split(n, seed):
        images, labels = class_pattern_images(n, 10, (16, 16, 3), seed)
        return ArrayDataset(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels).long())
    return DatasetSplits("toy", split(200, 0), split(60, 1), tuple("abcdefghij"), "generated").with_validation(40)


def _cnn(cfg: ExperimentConfig) -> nn.Module:
    return SimpleCNN(3, 10, (8, 16), image_size=16, hidden=32, dropout=cfg.dropout)


def _runtime(precision: str) -> Runtime:
    return resolve_runtime("cuda", precision)


def _conv_weight(model: nn.Module) -> torch.Tensor:
    return next(m.weight for m in model.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_run_trains_and_evaluates_on_the_gpu(precision):
    runtime = _runtime(precision)
    assert runtime.device.type == "cuda" and runtime.precision == precision and runtime.channels_last
    record, model = train_model(ModelSpec("cnn", _cnn), _splits(), CFG, runtime, experiment="cuda")
    assert record.status == "completed" and record.runtime["device"].startswith("cuda")
    assert record.runtime["precision"] == precision
    assert len(record.history.val_acc) == CFG.eval_points and all(math.isfinite(v) for v in record.step_loss)
    assert record.history.train_loss[-1] < record.history.train_loss[0]
    assert record.test_acc is not None and len(record.predictions) == 60
    weight = _conv_weight(model)
    assert weight.is_cuda and weight.is_contiguous(memory_format=torch.channels_last)


def test_bf16_autocast_and_channels_last_batches():
    runtime = _runtime("bf16")
    data = _splits()
    loader = BatchLoader(data.test, 16, data.mean, data.std, device=runtime.device,
                         channels_last=runtime.channels_last)
    x, y = next(iter(loader))
    assert x.is_cuda and y.is_cuda and x.dtype == torch.float32
    assert x.is_contiguous(memory_format=torch.channels_last)
    model = _cnn(CFG).to(runtime.device, memory_format=torch.channels_last)
    with runtime.autocast():
        assert model(x).dtype == torch.bfloat16
    with _runtime("fp32").autocast():
        assert model(x).dtype == torch.float32


def test_gpu_evaluation_matches_the_cpu(monkeypatch):
    """The same weights evaluated on the GPU (fp32, TF32 convolutions off) and the CPU: the same
    predictions (one near-tie may flip) and the same loss to float precision."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    data, cuda = _splits(), _runtime("fp32")
    cpu = Runtime(torch.device("cpu"), "fp32", channels_last=False, threads=torch.get_num_threads())
    torch.manual_seed(0)
    model = _cnn(CFG)
    results = []
    for runtime in (cpu, cuda):
        loader = BatchLoader(data.test, 64, data.mean, data.std, device=runtime.device,
                             channels_last=runtime.channels_last)
        placed = model.to(runtime.device, memory_format=torch.channels_last if runtime.channels_last
                          else torch.contiguous_format)
        results.append(evaluate(placed, loader, runtime))
    on_cpu, on_gpu = results
    assert on_gpu.preds.device.type == "cpu" and len(on_gpu.preds) == len(data.test)
    assert (on_cpu.preds == on_gpu.preds).float().mean() >= 1 - 1.5 / len(data.test)
    assert on_cpu.loss == pytest.approx(on_gpu.loss, rel=1e-4)


def test_checkpoint_round_trip_on_the_gpu(tmp_path):
    runtime = _runtime("fp32")
    model = _cnn(CFG).to(runtime.device, memory_format=torch.channels_last)
    optimizer = make_optimizer(model, CFG)
    model(torch.zeros(2, 3, 16, 16, device=runtime.device)).sum().backward()
    optimizer.step()    # momentum buffers exist, on the GPU
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, "h", model, optimizer, scheduler, History(), GradStats(), epoch=1,
                    extra={"epoch_time_s": [1.0], "step_loss": [0.5]})
    state = load_checkpoint(path, "h")
    assert state is not None and state["epoch"] == 1 and load_checkpoint(path, "other") is None
    fresh = _cnn(CFG).to(runtime.device, memory_format=torch.channels_last)
    fresh.load_state_dict(state["model"])
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
    fresh_opt = make_optimizer(fresh, CFG)
    fresh_opt.load_state_dict(state["optimizer"])
    buffers = [s["momentum_buffer"] for s in fresh_opt.state.values()]
    assert buffers and all(b.is_cuda for b in buffers)


def test_an_interrupted_gpu_run_resumes_from_its_checkpoint(tmp_path):
    """Interrupted in epoch 2 of 2, resumed from the epoch-1 checkpoint: it completes, with the
    first epoch's curve points of the checkpoint kept, and leaves no checkpoint behind."""
    runtime = _runtime("fp32")
    spec = ModelSpec("cnn", interrupted_at(_cnn, 7))     # 5 steps per epoch: inside epoch 2
    with pytest.raises(KeyboardInterrupt):
        run_experiment("cuda", [spec], _splits(), CFG, runtime, tmp_path)
    ckpt = tmp_path / "cuda" / "checkpoints" / "cnn.pt"
    saved = load_checkpoint(ckpt, torch.load(ckpt, weights_only=False)["config_hash"])
    assert saved["epoch"] == 1
    record = run_experiment("cuda", [spec], _splits(), CFG, runtime, tmp_path).records[0]
    assert record.status == "completed" and len(record.epoch_time_s) == 2
    assert record.history.step[:len(saved["history"]["step"])] == saved["history"]["step"]
    assert not ckpt.exists() and (tmp_path / "cuda" / "checkpoints" / "cnn.final.pt").exists()
