"""The training loop: ``train_one_epoch`` and ``evaluate`` (pytorch/examples ``mnist/main.py``
style), and ``train_model``, which runs them for one :class:`~utils.experiment.ModelSpec` and returns
its :class:`~utils.records.RunRecord` beside the trained model.

Hashing, skipping finished runs and writing result files live in :mod:`utils.runner`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from utils.checkpoints import load_checkpoint, save_checkpoint
from utils.gradient_stats import weight_tensor_names
from utils.model_stats import count_flops, count_parameters
from utils.data import BatchLoader, DatasetSplits, stratified_subset
from utils.experiment import ExperimentConfig, ModelSpec
from utils.records import GradStats, History, RunRecord, summarise
from utils.runtime import Runtime, seed_everything

log = logging.getLogger(__name__)

EVAL_BATCH = 1000       # evaluation batch: large is fastest and needs no gradients' memory
WARMUP_START = 0.1      # warm-up starts at this fraction of the peak lr
PROGRESS_EVERY = 20     # steps between progress-bar updates


class TrainingDiverged(RuntimeError):
    pass


# -------------------------------------------------------------------------------- evaluation
@dataclass
class Evaluation:
    loss: float
    acc: float
    preds: Tensor


@torch.inference_mode()
def evaluate(model: nn.Module, loader: BatchLoader, runtime: Runtime, flip_tta: bool = False,
             label_smoothing: float = 0.0) -> Evaluation:
    """Loss, accuracy and predictions of ``model`` over ``loader`` (eval mode)."""
    model.eval()
    loss_sum, correct, preds = 0.0, 0, []
    for x, y in loader:
        with runtime.autocast():
            logits = model(x).float()
            if flip_tta:
                logits = 0.5 * (logits + model(x.flip(3)).float())
        loss_sum += F.cross_entropy(logits, y, reduction="sum", label_smoothing=label_smoothing).item()
        pred = logits.argmax(1)
        correct += int((pred == y).sum())
        preds.append(pred.cpu())
    n = len(loader.ds)
    return Evaluation(loss_sum / n, correct / n, torch.cat(preds))


@torch.inference_mode()
def measure_inference(model: nn.Module, loader: BatchLoader, runtime: Runtime, batch: int = 512,
                      repeats: int = 5, latency_samples: int = 30) -> dict:
    """Batch-1 latency (median ms) and large-batch throughput (median images/s), after warm-up."""
    model.eval()
    x_all = loader.normalise(loader.ds.images[:max(batch, latency_samples)])
    big = x_all[:batch]

    def timed(x: Tensor) -> float:
        t0 = time.perf_counter()
        model(x)
        runtime.sync()
        return time.perf_counter() - t0

    with runtime.autocast():
        for _ in range(2):
            model(big)
        throughput = big.shape[0] / float(np.median([timed(big) for _ in range(repeats)]))
        for i in range(5):
            model(x_all[i:i + 1])
        latency = [timed(x_all[i:i + 1]) for i in range(latency_samples)]
    return {"latency_ms_batch1": 1000 * float(np.median(latency)), "throughput_img_s": throughput,
            "throughput_batch": int(big.shape[0])}


# ------------------------------------------------------------------------------ optimisation
def make_optimizer(model: nn.Module, cfg: ExperimentConfig) -> torch.optim.Optimizer:
    # No weight decay on biases and normalisation parameters (1-d tensors): decaying them only
    # shrinks scales that BatchNorm re-normalises anyway.
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True, foreach=True)
    return torch.optim.AdamW(groups, lr=cfg.lr, foreach=True)


def lr_factor(step: int, total: int, cfg: ExperimentConfig) -> float:
    """Multiplier of the peak lr at optimisation ``step`` of ``total``."""
    if cfg.schedule == "constant":
        return 1.0
    warm = max(1, int(cfg.warmup_fraction * total))
    if step < warm:
        return WARMUP_START + (1.0 - WARMUP_START) * step / warm
    frac = (step - warm) / max(1, total - warm)
    if cfg.schedule == "onecycle":
        return max(0.0, 1.0 - frac)
    return 0.5 * (1.0 + math.cos(math.pi * frac))


# ---------------------------------------------------------------------------------- training
@dataclass
class Trainer:
    """The objects one run trains with (built once, reused by every epoch)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    criterion: nn.Module
    runtime: Runtime
    cfg: ExperimentConfig
    grad_params: list[Tensor]
    grads: GradStats
    step: int = 0


@dataclass
class EpochResult:
    loss: float
    acc: float
    seconds: float


def train_one_epoch(t: Trainer, loader: BatchLoader, desc: str) -> EpochResult:
    """One pass over ``loader``; raises :class:`TrainingDiverged` on a non-finite loss or gradient."""
    t.model.train()
    t0 = time.perf_counter()
    loss_sum = torch.zeros((), dtype=torch.float64)
    correct = torch.zeros((), dtype=torch.long)
    seen = 0
    bar = tqdm(loader, desc=desc, leave=False, disable=None, mininterval=1.0)
    try:
        for x, y in bar:
            with t.runtime.autocast():
                logits = t.model(x)
                loss = t.criterion(logits.float(), y)
            loss_value = loss.item()   # free on CPU (synchronous); also the divergence guard
            if not math.isfinite(loss_value):
                raise TrainingDiverged(f"loss became {loss_value}")
            t.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if t.step % t.cfg.grad_sample_every == 0:
                _record_grads(t.grads, t.step, t.grad_params)
            if t.cfg.grad_clip is not None:
                total_norm = nn.utils.clip_grad_norm_(t.model.parameters(), t.cfg.grad_clip)
                if not torch.isfinite(total_norm):
                    raise TrainingDiverged(f"gradient norm became {float(total_norm)}")
            t.optimizer.step()
            t.scheduler.step()
            t.step += 1
            loss_sum += loss.detach().double() * y.shape[0]
            correct += (logits.detach().argmax(1) == y).sum()
            seen += y.shape[0]
            if t.step % PROGRESS_EVERY == 0:
                bar.set_postfix(loss=f"{loss_value:.3f}", acc=f"{int(correct) / seen:.3f}")
    finally:
        bar.close()
    return EpochResult(float(loss_sum) / seen, int(correct) / seen, time.perf_counter() - t0)


def _record_grads(grads: GradStats, step: int, params: list[Tensor]) -> None:
    gs = [p.grad.detach().float() if p.grad is not None else torch.zeros(1) for p in params]
    grads.step.append(step)
    grads.l2.append([float(v) for v in torch._foreach_norm(gs, 2)])
    grads.mean_abs.append([float(v) / g.numel() for v, g in zip(torch._foreach_norm(gs, 1), gs)])


def _loaders(data: DatasetSplits, cfg: ExperimentConfig, runtime: Runtime) -> tuple[BatchLoader, ...]:
    where = dict(device=runtime.device, channels_last=runtime.channels_last)
    train = BatchLoader(data.train, cfg.batch_size, data.mean, data.std, shuffle=True, augment=cfg.augment,
                        seed=cfg.seed, drop_last=True, **where)
    test = BatchLoader(data.test, EVAL_BATCH, data.mean, data.std, **where)
    train_eval = BatchLoader(stratified_subset(data.train, cfg.train_eval_samples, seed=0), EVAL_BATCH,
                             data.mean, data.std, **where)
    return train, test, train_eval


def build_model(spec: ModelSpec, cfg: ExperimentConfig) -> nn.Module:
    """The model of ``spec`` exactly as its run starts: seeded, built (``cfg`` = the run's config).
    Analyses that need the untrained network (e.g. the ERF at initialisation) call this too."""
    seed_everything(cfg.seed)
    return spec.build(cfg)


def train_model(spec: ModelSpec, data: DatasetSplits, base_cfg: ExperimentConfig, runtime: Runtime, *,
                experiment: str, checkpoint_path: Path | None = None,
                config_hash: str = "") -> tuple[RunRecord, nn.Module]:
    """Train one model; return its result record and the trained model."""
    cfg = spec.config_for(base_cfg)
    model = build_model(spec, cfg)
    params = count_parameters(model)
    flops = count_flops(model, data.image_shape)
    model = model.to(runtime.device)
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, cfg)
    train_loader, test_loader, train_eval = _loaders(data, cfg, runtime)
    total_steps = len(train_loader) * cfg.epochs
    grad_names = weight_tensor_names(model)
    named = dict(model.named_parameters())
    t = Trainer(model, optimizer,
                torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, cfg)),
                nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing), runtime, cfg,
                [named[n] for n in grad_names], GradStats(names=grad_names))
    history, start_epoch = History(), 0
    state = load_checkpoint(checkpoint_path, config_hash) if checkpoint_path is not None else None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        t.scheduler.load_state_dict(state["scheduler"])
        history, t.grads, start_epoch = History(**state["history"]), GradStats(**state["grads"]), state["epoch"]
        torch.set_rng_state(state["rng"])
        log.info("%s/%s: resuming from the checkpoint at epoch %d", experiment, spec.name, start_epoch)
    log.info("%s/%s: %s params, %.1f MFLOPs/image, %s", experiment, spec.name, f"{params['total']:,}",
             flops / 1e6, spec.description)

    t.step = start_epoch * len(train_loader)
    status, diverged_at = "completed", None
    for epoch in range(start_epoch, cfg.epochs):
        train_loader.set_epoch(epoch)
        try:
            ep = train_one_epoch(t, train_loader, f"{spec.name} {epoch + 1}/{cfg.epochs}")
        except TrainingDiverged as exc:
            status, diverged_at = "diverged", {"epoch": epoch + 1, "step": t.step, "reason": str(exc)}
            log.warning("%s/%s diverged at epoch %d step %d: %s", experiment, spec.name, epoch + 1, t.step, exc)
            break
        tr = evaluate(model, train_eval, runtime, label_smoothing=0.0)
        te = evaluate(model, test_loader, runtime, flip_tta=cfg.flip_tta)
        history.append(epoch=epoch + 1, train_loss=ep.loss, train_acc=ep.acc, train_eval_loss=tr.loss,
                       train_eval_acc=tr.acc, test_loss=te.loss, test_acc=te.acc, epoch_time_s=ep.seconds,
                       lr=t.scheduler.get_last_lr()[0])
        log.info("%s/%s epoch %d/%d: train loss %.4f acc %.4f | test loss %.4f acc %.4f | %.1fs", experiment,
                 spec.name, epoch + 1, cfg.epochs, ep.loss, ep.acc, te.loss, te.acc, ep.seconds)
        if checkpoint_path is not None and epoch + 1 < cfg.epochs:
            save_checkpoint(checkpoint_path, config_hash, model, optimizer, t.scheduler, history, t.grads, epoch + 1)

    completed = status == "completed"
    final = evaluate(model, test_loader, runtime, flip_tta=cfg.flip_tta) if completed else None
    record = RunRecord(
        experiment=experiment, model=spec.name, description=spec.description, group=spec.group,
        variant=spec.variant, seed=cfg.seed, status=status, diverged_at=diverged_at,
        config=dataclasses.asdict(cfg), config_overrides=dict(spec.overrides), config_hash=config_hash,
        data=data.describe(), runtime=runtime.describe(), architecture=str(model), params=params,
        flops_per_image=flops, history=history, train_time_s=float(sum(history.epoch_time_s)),
        inference=measure_inference(model, test_loader, runtime) if completed else {}, grad_stats=t.grads,
        predictions=final.preds.tolist() if final else None, labels=data.test.labels.tolist(),
        class_names=list(data.class_names), summary=None)  # type: ignore[arg-type]
    record.summary = summarise(record)
    return record, model
