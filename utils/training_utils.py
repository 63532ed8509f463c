"""The training loop: ``train_one_epoch`` and ``evaluate`` (pytorch/examples ``mnist/main.py``
style), and ``train_model``, which runs them for one :class:`~utils.engine.experiment.ModelSpec` and returns
its :class:`~utils.engine.records.RunRecord` beside the trained model.

Hashing, skipping finished runs and writing result files live in :mod:`utils.engine.runner`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from models.init import InitRecord, init_weights
from utils.analysis.statistics import PLATEAU_WINDOW
from utils.engine.checkpoints import load_checkpoint, restore_rng, save_checkpoint
from utils.engine.gradients import weight_tensor_names
from utils.engine.model_stats import count_flops, count_parameters
from utils.engine.data import BatchLoader, DatasetSplits, stratified_subset
from utils.engine.experiment import ExperimentConfig, ModelSpec
from utils.engine.records import GradStats, History, RunRecord, summarise
from utils.engine.runtime import Runtime, seed_everything

log = logging.getLogger(__name__)

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
    tracked: list[Tensor]       # parameters whose mean |value| is sampled with the gradients
    step_loss: list[float]
    step: int = 0
    unreported_s: float = 0.0   # training seconds since the last evaluation point (crosses epochs)


@dataclass
class Segment:
    """Training since the previous evaluation point: running loss/accuracy and training seconds."""

    loss: float
    acc: float
    seconds: float


def train_one_epoch(t: Trainer, loader: BatchLoader, desc: str, eval_after: set[int],
                    on_eval: Callable[[Segment], None]) -> float:
    """One pass over ``loader``; after batch ``i`` in ``eval_after`` (1-based) it calls ``on_eval``
    (whose time is not counted). Returns the epoch's training seconds. Raises
    :class:`TrainingDiverged` on a non-finite loss or gradient norm."""
    t.model.train()
    # accumulated where the batches live, so a GPU step never waits for a copy to the host
    loss_sum = torch.zeros((), dtype=torch.float64, device=t.runtime.device)
    correct = torch.zeros((), dtype=torch.long, device=t.runtime.device)
    seen, train_s, t0 = 0, 0.0, time.perf_counter()
    bar = tqdm(loader, desc=desc, leave=False, disable=None, mininterval=1.0)
    try:
        for i, (x, y) in enumerate(bar, 1):
            with t.runtime.autocast():
                logits = t.model(x)
                loss = t.criterion(logits.float(), y)
            loss_value = loss.item()   # free on CPU (synchronous); also the divergence guard
            if not math.isfinite(loss_value):
                raise TrainingDiverged(f"loss became {loss_value}")
            t.step_loss.append(loss_value)
            t.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if t.step % t.cfg.grad_sample_every == 0:
                _record_grads(t.grads, t.step, t.grad_params, t.tracked)
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
            if i in eval_after:
                seconds = time.perf_counter() - t0
                train_s += seconds
                on_eval(Segment(float(loss_sum) / seen, int(correct) / seen, t.unreported_s + seconds))
                t.unreported_s = 0.0
                t.model.train()
                loss_sum.zero_()
                correct.zero_()
                seen, t0 = 0, time.perf_counter()
    finally:
        bar.close()
    tail = time.perf_counter() - t0 if seen else 0.0   # after the epoch's last evaluation point
    t.unreported_s += tail
    return train_s + tail


def _record_grads(grads: GradStats, step: int, params: list[Tensor], tracked: list[Tensor]) -> None:
    gs = [p.grad.detach().float() if p.grad is not None else torch.zeros(1) for p in params]
    grads.step.append(step)
    grads.l2.append([float(v) for v in torch._foreach_norm(gs, 2)])
    grads.mean_abs.append([float(v) / g.numel() for v, g in zip(torch._foreach_norm(gs, 1), gs)])
    grads.weight_l2.append([float(v) for v in torch._foreach_norm([p.detach().float() for p in params], 2)])
    if tracked:
        grads.param_mean_abs.append([float(p.detach().float().abs().mean()) for p in tracked])


@dataclass
class Loaders:
    train: BatchLoader          # shuffled, augmented as configured
    val: BatchLoader            # fixed subset of the validation split (curves, choices)
    train_eval: BatchLoader     # fixed subset of the training set, eval mode (clean train accuracy)
    test: BatchLoader           # the test set, evaluated once at the end


def make_loaders(data: DatasetSplits, cfg: ExperimentConfig, runtime: Runtime) -> Loaders:
    if data.val is None:
        raise ValueError("the run needs a validation split: DatasetSplits.with_validation(n)")
    where = dict(device=runtime.device, channels_last=runtime.channels_last)

    def fixed(ds, n):   # the same images at every evaluation point, for every model of the study
        return BatchLoader(stratified_subset(ds, n, seed=0), cfg.eval_batch_size, data.mean, data.std, **where)

    return Loaders(BatchLoader(data.train, cfg.batch_size, data.mean, data.std, shuffle=True, augment=cfg.augment,
                               seed=cfg.seed, drop_last=True, **where),
                   fixed(data.val, cfg.val_eval_samples), fixed(data.train, cfg.train_eval_samples),
                   BatchLoader(data.test, cfg.eval_batch_size, data.mean, data.std, **where))


def eval_schedule(steps_per_epoch: int, epochs: int, points: int, plateau_points: int = 0) -> dict[int, set[int]]:
    """Which batches (1-based, per epoch index) end an evaluation segment: ``points`` evenly spaced
    over the run's steps, the last one at the very end. With ``plateau_points`` > 1 the plateau
    verdict's window (:func:`~utils.analysis.statistics.convergence_verdict`: steps ``>= last -
    PLATEAU_WINDOW * (last - first)``) holds exactly that many instead, evenly spaced from its start
    to the last step (all of its steps where it has fewer)."""
    total = steps_per_epoch * epochs
    at = {max(1, round(total * k / points)) for k in range(1, points + 1)}
    if plateau_points > 1:      # one is the run's last step, always evaluated
        first = min(at)
        start = max(first, math.ceil(total - PLATEAU_WINDOW * (total - first)))
        tail = (set(range(start, total + 1)) if total - start < plateau_points else
                {start + round((total - start) * k / (plateau_points - 1)) for k in range(plateau_points)})
        at = {step for step in at if step < start} | tail     # the window's points: evenly spaced, exactly these
    out: dict[int, set[int]] = {e: set() for e in range(epochs)}
    for step in sorted(at):
        out[(step - 1) // steps_per_epoch].add((step - 1) % steps_per_epoch + 1)
    return out


def build_model(spec: ModelSpec, cfg: ExperimentConfig) -> tuple[nn.Module, InitRecord]:
    """The model of ``spec`` exactly as its run starts: seeded, built, initialised with the run's
    recorded choice (``cfg`` = the run's config). Analyses that need the untrained network (e.g.
    the ERF at initialisation) call this too."""
    seed_everything(cfg.seed)
    model = spec.build(cfg)
    check_dropout_applied(model, cfg.dropout, spec.name)
    return model, init_weights(model, cfg.init, cfg.zero_init_residual)


def check_dropout_applied(model: nn.Module, p: float, name: str) -> None:
    """A run configured with dropout must have a dropout layer of that rate: a builder that ignores
    ``cfg.dropout`` would otherwise label an unregularised run "dropout" without a word.

    Raises:
        ValueError: ``p > 0`` and no ``nn.Dropout*`` module of the model has rate ``p``.
    """
    if p > 0 and not any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p == p for m in model.modules()):
        raise ValueError(f"{name}: the config asks for dropout {p:g} but the model has no dropout layer of that "
                         "rate; its builder ignores cfg.dropout")




def train_model(spec: ModelSpec, data: DatasetSplits, base_cfg: ExperimentConfig, runtime: Runtime, *,
                experiment: str, checkpoint_path: Path | None = None,
                config_hash: str = "") -> tuple[RunRecord, nn.Module]:
    """Train one model; return its result record and the trained model."""
    wall0 = time.perf_counter()
    cfg = spec.config_for(base_cfg)
    model, init = build_model(spec, cfg)
    params, flops = count_parameters(model), count_flops(model, data.image_shape)
    model = model.to(runtime.device, memory_format=torch.channels_last if runtime.channels_last else
                     torch.contiguous_format)
    optimizer = make_optimizer(model, cfg)
    loaders = make_loaders(data, cfg, runtime)
    steps_per_epoch = len(loaders.train)
    total_steps = steps_per_epoch * cfg.epochs
    grad_names = weight_tensor_names(model)
    named = dict(model.named_parameters())
    unknown = sorted(set(spec.tracked_params) - set(named))
    if unknown:
        raise ValueError(f"{spec.name}: tracked_params not in the model: {unknown}")
    t = Trainer(model, optimizer,
                torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, cfg)),
                nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing), runtime, cfg,
                [named[n] for n in grad_names], GradStats(names=grad_names, param_names=list(spec.tracked_params)),
                [named[n] for n in spec.tracked_params], [])
    history, epoch_times, start_epoch = History(), [], 0
    state = load_checkpoint(checkpoint_path, config_hash) if checkpoint_path is not None else None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        t.scheduler.load_state_dict(state["scheduler"])
        history, t.grads, start_epoch = History(**state["history"]), GradStats(**state["grads"]), state["epoch"]
        epoch_times, t.step_loss = state["epoch_time_s"], state["step_loss"]
        restore_rng(state["rng"])
        log.info("%s/%s: resuming from the checkpoint at epoch %d", experiment, spec.name, start_epoch)
    log.info("%s/%s: %s params, %.1f MFLOPs/image, init %s, %s", experiment, spec.name, f"{params['total']:,}",
             flops / 1e6, init.scheme + (" + zero-init residual" if init.zero_init_residual else ""),
             spec.description)

    def on_eval(seg: Segment) -> None:
        tr = evaluate(model, loaders.train_eval, runtime)
        va = evaluate(model, loaders.val, runtime, flip_tta=cfg.flip_tta)
        if not (math.isfinite(va.loss) and math.isfinite(tr.loss)):
            # the training loss can stay finite for a few steps while the weights already overflow
            raise TrainingDiverged(f"evaluation loss became {va.loss if not math.isfinite(va.loss) else tr.loss}")
        done = (history.train_time_s[-1] if history.train_time_s else 0.0) + seg.seconds
        history.append(step=t.step, epoch=t.step / steps_per_epoch, train_loss=seg.loss, train_acc=seg.acc,
                       train_eval_loss=tr.loss, train_eval_acc=tr.acc, val_loss=va.loss, val_acc=va.acc,
                       lr=t.scheduler.get_last_lr()[0], train_time_s=done)

    schedule = eval_schedule(steps_per_epoch, cfg.epochs, cfg.eval_points, cfg.plateau_points)
    t.step = start_epoch * steps_per_epoch
    status, diverged_at = "completed", None
    for epoch in range(start_epoch, cfg.epochs):
        loaders.train.set_epoch(epoch)
        try:
            epoch_times.append(train_one_epoch(t, loaders.train, f"{spec.name} {epoch + 1}/{cfg.epochs}",
                                               schedule[epoch], on_eval))
        except TrainingDiverged as exc:
            status, diverged_at = "diverged", {"epoch": epoch + 1, "step": t.step, "reason": str(exc)}
            log.warning("%s/%s diverged at epoch %d step %d: %s", experiment, spec.name, epoch + 1, t.step, exc)
            break
        if schedule[epoch] and history.val_acc:
            log.info("%s/%s epoch %d/%d: train loss %.4f | val loss %.4f acc %.4f | %.1fs", experiment, spec.name,
                     epoch + 1, cfg.epochs, history.train_loss[-1], history.val_loss[-1], history.val_acc[-1],
                     epoch_times[-1])
        else:   # no evaluation point in this epoch: repeating the last one would read as a stalled run
            log.info("%s/%s epoch %d/%d: trained, not evaluated | %.1fs", experiment, spec.name,
                     epoch + 1, cfg.epochs, epoch_times[-1])
        if checkpoint_path is not None and epoch + 1 < cfg.epochs:
            save_checkpoint(checkpoint_path, config_hash, model, optimizer, t.scheduler, history, t.grads,
                            epoch + 1, extra={"epoch_time_s": epoch_times, "step_loss": t.step_loss})

    completed = status == "completed"
    test = evaluate(model, loaders.test, runtime, flip_tta=cfg.flip_tta) if completed else None
    total_s = time.perf_counter() - wall0
    train_s = float(sum(epoch_times))
    record = RunRecord(
        experiment=experiment, model=spec.name, description=spec.description, group=spec.group,
        variant=spec.variant, seed=cfg.seed, status=status, diverged_at=diverged_at,
        config=dataclasses.asdict(cfg), config_overrides=dict(spec.overrides), config_hash=config_hash,
        data=data.describe(), runtime=runtime.describe(), init=init.as_dict(), architecture=str(model),
        params=params, flops_per_image=flops, history=history, epoch_time_s=epoch_times,
        timing={"train_s": train_s, "total_s": total_s, "eval_and_other_s": total_s - train_s,
                "train_share": train_s / total_s if total_s > 0 else None},
        test_loss=test.loss if test else None, test_acc=test.acc if test else None,
        grad_stats=t.grads, step_loss=t.step_loss,
        predictions=test.preds.tolist() if test else None, labels=data.test.labels.tolist(),
        class_names=list(data.class_names), summary=None)  # type: ignore[arg-type]
    record.summary = summarise(record)
    return record, model
