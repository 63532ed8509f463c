"""The one training engine every experiment script uses.

An experiment is a list of :class:`ModelSpec` trained under one :class:`ExperimentConfig`
(``run_experiment``), so "same hyper-parameters" holds by construction; a spec may override only
the regularisation fields (weight decay, label smoothing, augmentation), and the record says so.

Each finished model gives one JSON record under ``results/<experiment>/<model>.json`` (schema in
README, "Result files"): per-epoch curves, times, parameter counts, FLOPs, gradient statistics,
test-set predictions, run environment, and a ``config_hash`` that lets a re-run skip it.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from utils.gradient_stats import weight_tensor_names
from utils.model_stats import count_flops, count_parameters
from utils.data import BatchLoader, DatasetSplits, stratified_subset

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
REGULARISATION_FIELDS = ("weight_decay", "label_smoothing", "augment", "dropout")


# ------------------------------------------------------------------------------------ config
@dataclass(frozen=True)
class ExperimentConfig:
    """Hyper-parameters shared by every model of one experiment."""

    epochs: int = 5
    batch_size: int = 128
    optimizer: str = "sgd"            # "sgd" (Nesterov momentum) | "adamw"
    lr: float = 0.05                  # peak learning rate
    momentum: float = 0.9
    weight_decay: float = 0.0         # not applied to biases and norm layers
    schedule: str = "onecycle"        # "onecycle" (linear up, linear down) | "cosine" | "constant"
    warmup_fraction: float = 0.2
    label_smoothing: float = 0.0
    augment: bool = False             # random crop (pad 4) + horizontal flip, batch-level
    dropout: float = 0.0              # read by model builders that take it
    grad_clip: float | None = None    # max global grad norm; None = off
    flip_tta: bool = False            # average logits of x and its mirror image at test time
    seed: int = 0
    device: str = "auto"              # "auto" | "cpu" | "cuda"
    precision: str = "auto"           # "auto" | "fp32" | "bf16"
    grad_sample_every: int = 25       # record per-layer gradient stats every k steps
    train_eval_samples: int = 5000    # clean (eval-mode) train accuracy on a fixed subset per epoch

    def __post_init__(self) -> None:
        if self.epochs <= 0 or self.batch_size <= 0 or not self.lr > 0:
            raise ValueError("epochs, batch size and lr must be positive")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"unknown optimizer {self.optimizer!r}")
        if self.schedule not in ("onecycle", "cosine", "constant"):
            raise ValueError(f"unknown schedule {self.schedule!r}")

    def replace(self, **changes: Any) -> "ExperimentConfig":
        return dataclasses.replace(self, **changes)


@dataclass
class ModelSpec:
    """One model of an experiment: a name, a builder and what it is."""

    name: str
    build: Callable[[ExperimentConfig], nn.Module]
    description: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)   # regularisation fields only
    seed_offset: int = 0                                      # for multi-seed studies

    def config_for(self, base: ExperimentConfig) -> ExperimentConfig:
        bad = set(self.overrides) - set(REGULARISATION_FIELDS) - {"lr"}
        if bad:
            raise ValueError(f"{self.name}: overrides may change only regularisation (or a deliberate lr "
                             f"study); got {sorted(bad)}")
        return base.replace(**self.overrides, seed=base.seed + self.seed_offset)


# -------------------------------------------------------------------------------- runtime env
@dataclass(frozen=True)
class Runtime:
    device: torch.device
    precision: str               # "fp32" | "bf16"
    channels_last: bool
    threads: int

    def autocast(self):
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return torch.autocast(device_type=self.device.type, enabled=False)

    def describe(self) -> dict:
        return {"device": str(self.device), "precision": self.precision, "channels_last": self.channels_last,
                "threads": self.threads, "torch": torch.__version__, "python": platform.python_version(),
                "cpu": platform.processor() or platform.machine()}


class RuntimeUnavailable(RuntimeError):
    """The requested device or precision does not exist on this machine (a user error)."""


def cpu_supports_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_runtime(device: str = "auto", precision: str = "auto", threads: int | None = None) -> Runtime:
    """Pick device and precision. ``auto`` precision = bf16 autocast where the hardware has it."""
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeUnavailable("--device cuda was requested but CUDA is not available on this machine")
    dev = torch.device("cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu")
    if dev.type == "cpu":
        # HOMEWORK_THREADS lets a second job share the machine without oversubscribing it.
        torch.set_num_threads(threads or int(os.environ.get("HOMEWORK_THREADS", 0)) or os.cpu_count() or 1)
    bf16_ok = torch.cuda.is_bf16_supported() if dev.type == "cuda" else cpu_supports_bf16()
    if precision == "bf16" and not bf16_ok:
        raise RuntimeUnavailable(f"--precision bf16 was requested but {dev.type} has no bf16 support")
    prec = "bf16" if precision == "bf16" or (precision == "auto" and bf16_ok) else "fp32"
    # channels_last (NHWC) lets oneDNN / cuDNN pick their fastest conv kernels (measured on the
    # 2-core AVX2 CPU: results/benchmarks/levers.json, variant "nchw").
    return Runtime(dev, prec, channels_last=True, threads=torch.get_num_threads())


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


# --------------------------------------------------------------------------------- evaluation
@torch.inference_mode()
def evaluate(model: nn.Module, loader: BatchLoader, runtime: Runtime, flip_tta: bool = False,
             label_smoothing: float = 0.0) -> dict:
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
    return {"loss": loss_sum / n, "acc": correct / n, "preds": torch.cat(preds)}


@torch.inference_mode()
def measure_inference(model: nn.Module, loader: BatchLoader, runtime: Runtime, batch: int = 512,
                      repeats: int = 5, latency_samples: int = 30) -> dict:
    """Batch-1 latency (median ms) and large-batch throughput (median images/s), after warm-up."""
    model.eval()
    x_all = loader.normalise(loader.ds.images[:max(batch, latency_samples)])
    big = x_all[:batch]
    with runtime.autocast():
        for _ in range(2):
            model(big)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(big)
            _sync(runtime)
            times.append(time.perf_counter() - t0)
        throughput = big.shape[0] / float(np.median(times))
        for i in range(5):
            model(x_all[i:i + 1])
        lat = []
        for i in range(latency_samples):
            t0 = time.perf_counter()
            model(x_all[i:i + 1])
            _sync(runtime)
            lat.append(time.perf_counter() - t0)
    return {"latency_ms_batch1": 1000 * float(np.median(lat)), "throughput_img_s": throughput,
            "throughput_batch": int(big.shape[0])}


def _sync(runtime: Runtime) -> None:
    if runtime.device.type == "cuda":
        torch.cuda.synchronize()


# -------------------------------------------------------------------------------- optimisation
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
        return 0.1 + 0.9 * step / warm
    frac = (step - warm) / max(1, total - warm)
    if cfg.schedule == "onecycle":
        return max(0.0, 1.0 - frac)
    return 0.5 * (1.0 + math.cos(math.pi * frac))


class TrainingDiverged(RuntimeError):
    pass


# ---------------------------------------------------------------------------------- training
def train_model(spec: ModelSpec, data: DatasetSplits, base_cfg: ExperimentConfig, runtime: Runtime, *,
                experiment: str, checkpoint_path: Path | None = None, config_hash: str = "") -> dict:
    """Train one model and return its result record (see README "Result files")."""
    cfg = spec.config_for(base_cfg)
    seed_everything(cfg.seed)
    model = spec.build(cfg)
    params = count_parameters(model)
    flops = count_flops(model, data.image_shape)
    model = model.to(runtime.device)
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, cfg)
    train_loader = BatchLoader(data.train, cfg.batch_size, data.mean, data.std, shuffle=True, augment=cfg.augment,
                               seed=cfg.seed, drop_last=True, device=runtime.device,
                               channels_last=runtime.channels_last)
    eval_bs = 1000
    test_loader = BatchLoader(data.test, eval_bs, data.mean, data.std, device=runtime.device,
                              channels_last=runtime.channels_last)
    train_eval = BatchLoader(stratified_subset(data.train, cfg.train_eval_samples, seed=0), eval_bs, data.mean,
                             data.std, device=runtime.device, channels_last=runtime.channels_last)
    steps_per_epoch, total_steps = len(train_loader), len(train_loader) * cfg.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, cfg))
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    grad_names = weight_tensor_names(model)
    named = dict(model.named_parameters())
    grad_params = [named[n] for n in grad_names]

    history: dict[str, list] = {k: [] for k in ("epoch", "train_loss", "train_acc", "train_eval_loss",
                                                "train_eval_acc", "test_loss", "test_acc", "epoch_time_s", "lr")}
    grads: dict[str, list] = {"step": [], "l2": [], "mean_abs": []}
    start_epoch, status, diverged_at = 0, "completed", None

    if checkpoint_path is not None and checkpoint_path.is_file():
        state = _load_checkpoint(checkpoint_path, config_hash)
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            history, grads, start_epoch = state["history"], state["grads"], state["epoch"]
            torch.set_rng_state(state["rng"])
            log.info("%s/%s: resuming from the checkpoint at epoch %d", experiment, spec.name, start_epoch)

    log.info("%s/%s: %s params, %.1f MFLOPs/image, %s", experiment, spec.name, f"{params['total']:,}",
             flops / 1e6, spec.description)
    step = start_epoch * steps_per_epoch
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        train_loader.set_epoch(epoch)
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), dtype=torch.float64)
        correct = torch.zeros((), dtype=torch.long)
        seen = 0
        bar = tqdm(train_loader, desc=f"{spec.name} {epoch + 1}/{cfg.epochs}", leave=False, disable=None,
                   mininterval=1.0)
        try:
            for x, y in bar:
                with runtime.autocast():
                    logits = model(x)
                    loss = criterion(logits.float(), y)
                loss_value = loss.item()   # free on CPU (synchronous); also the divergence guard
                if not math.isfinite(loss_value):
                    raise TrainingDiverged(f"loss became {loss_value}")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if step % cfg.grad_sample_every == 0:
                    _record_grads(grads, step, grad_params)
                if cfg.grad_clip is not None:
                    total_norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    if not torch.isfinite(total_norm):
                        raise TrainingDiverged(f"gradient norm became {float(total_norm)}")
                optimizer.step()
                scheduler.step()
                step += 1
                loss_sum += loss.detach().double() * y.shape[0]
                correct += (logits.detach().argmax(1) == y).sum()
                seen += y.shape[0]
                if step % 20 == 0:
                    bar.set_postfix(loss=f"{loss_value:.3f}", acc=f"{int(correct) / seen:.3f}")
        except TrainingDiverged as exc:
            status, diverged_at = "diverged", {"epoch": epoch + 1, "step": step, "reason": str(exc)}
            log.warning("%s/%s diverged at epoch %d step %d: %s", experiment, spec.name, epoch + 1, step, exc)
            break
        finally:
            bar.close()
        epoch_time = time.perf_counter() - t0
        tr = evaluate(model, train_eval, runtime, label_smoothing=0.0)
        te = evaluate(model, test_loader, runtime, flip_tta=cfg.flip_tta)
        for k, v in (("epoch", epoch + 1), ("train_loss", float(loss_sum) / seen), ("train_acc", int(correct) / seen),
                     ("train_eval_loss", tr["loss"]), ("train_eval_acc", tr["acc"]), ("test_loss", te["loss"]),
                     ("test_acc", te["acc"]), ("epoch_time_s", epoch_time), ("lr", scheduler.get_last_lr()[0])):
            history[k].append(v)
        log.info("%s/%s epoch %d/%d: train loss %.4f acc %.4f | test loss %.4f acc %.4f | %.1fs",
                 experiment, spec.name, epoch + 1, cfg.epochs, history["train_loss"][-1], history["train_acc"][-1],
                 te["loss"], te["acc"], epoch_time)
        if checkpoint_path is not None and epoch + 1 < cfg.epochs:
            _save_checkpoint(checkpoint_path, config_hash, model, optimizer, scheduler, history, grads, epoch + 1)

    final = evaluate(model, test_loader, runtime, flip_tta=cfg.flip_tta) if status == "completed" else None
    timing = measure_inference(model, test_loader, runtime) if status == "completed" else {}
    record = {
        "schema_version": SCHEMA_VERSION,
        "experiment": experiment,
        "model": spec.name,
        "description": spec.description,
        "status": status,
        "diverged_at": diverged_at,
        "config": dataclasses.asdict(cfg),
        "config_overrides": spec.overrides,
        "config_hash": config_hash,
        "data": data.describe(),
        "runtime": runtime.describe(),
        "architecture": str(model),
        "params": params,
        "flops_per_image": flops,
        "history": history,
        "train_time_s": float(sum(history["epoch_time_s"])),
        "inference": timing,
        "grad_stats": {"names": grad_names, **grads},
        "predictions": final["preds"].tolist() if final else None,
        "labels": data.test.labels.tolist(),
        "class_names": list(data.class_names),
    }
    record["summary"] = summarise(record)
    # The caller keeps the trained model for analyses (feature maps, ERF); the record stays JSON-safe.
    record["_model"] = model
    return record


def _record_grads(grads: dict, step: int, params: list[Tensor]) -> None:
    gs = [p.grad.detach().float() if p.grad is not None else torch.zeros(1) for p in params]
    grads["step"].append(step)
    grads["l2"].append([float(v) for v in torch._foreach_norm(gs, 2)])
    grads["mean_abs"].append([float(v) / g.numel() for v, g in zip(torch._foreach_norm(gs, 1), gs)])


def summarise(record: dict) -> dict:
    """The headline numbers of a record (what summary tables show)."""
    h = record["history"]
    out: dict[str, Any] = {"model": record["model"], "status": record["status"],
                           "params": record["params"]["total"], "mflops": record["flops_per_image"] / 1e6}
    if h["test_acc"]:
        best = int(np.argmax(h["test_acc"]))
        out.update({
            "epochs_run": len(h["epoch"]),
            "final_train_acc": h["train_eval_acc"][-1], "final_test_acc": h["test_acc"][-1],
            "best_test_acc": h["test_acc"][best], "best_epoch": best + 1,
            "final_train_loss": h["train_eval_loss"][-1], "final_test_loss": h["test_loss"][-1],
            "gap": h["train_eval_acc"][-1] - h["test_acc"][-1],
            "train_time_s": float(sum(h["epoch_time_s"])), "epoch_time_s": float(np.mean(h["epoch_time_s"])),
        })
    out.update({k: v for k, v in record.get("inference", {}).items() if k != "throughput_batch"})
    return out


# ------------------------------------------------------------------------------- checkpoints
def _save_checkpoint(path: Path, config_hash: str, model, optimizer, scheduler, history, grads, epoch: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"config_hash": config_hash, "epoch": epoch, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "history": history, "grads": grads, "rng": torch.get_rng_state()}, tmp)
    os.replace(tmp, path)


def _load_checkpoint(path: Path, config_hash: str) -> dict | None:
    try:
        state = torch.load(path, weights_only=False)
    except Exception as exc:
        log.warning("ignoring unreadable checkpoint %s (%s)", path, exc)
        return None
    if state.get("config_hash") != config_hash:
        log.info("checkpoint %s belongs to another config; starting afresh", path)
        return None
    return state


# --------------------------------------------------------------------------- result files I/O
def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file + rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def read_json(path: Path) -> dict | None:
    """A result JSON, or None (with a warning) if it is missing or does not parse."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        log.warning("result file %s does not parse (%s); it will be re-run", path, exc)
        return None


def config_hash(spec: ModelSpec, cfg: ExperimentConfig, data: DatasetSplits, runtime: Runtime) -> str:
    """Identity of a run: config, the architecture as built, the data used, and precision."""
    model = spec.build(spec.config_for(cfg))
    key = json.dumps({"schema": SCHEMA_VERSION, "config": dataclasses.asdict(spec.config_for(cfg)),
                      "arch": str(model), "data": data.describe(), "precision": runtime.precision,
                      "device": runtime.device.type}, sort_keys=True)
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def write_summary(records: Sequence[dict], out_dir: Path, title: str) -> None:
    """``summary.csv`` and ``summary.md`` of an experiment's records."""
    rows = [r["summary"] for r in records]
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    for r in rows:
        writer.writerow({k: _fmt_csv(r.get(k)) for k in columns})
    atomic_write_text(out_dir / "summary.csv", buf.getvalue())
    atomic_write_text(out_dir / "summary.md", f"# {title}\n\n" + summary_markdown(records) + "\n")


def _fmt_csv(v: Any) -> Any:
    return f"{v:.6g}" if isinstance(v, float) else v


def summary_markdown(records: Sequence[dict]) -> str:
    """The standard results table (also embedded in README by ``utils.report``)."""
    head = ("| model | params | MFLOPs/img | train acc | test acc (final) | test acc (best @ep) | gap | "
            "train time | s/epoch | latency b=1 | throughput |")
    lines = [head, "|" + "|".join(["---"] * 11) + "|"]
    for r in records:
        s = r["summary"]
        if s["status"] != "completed" and "final_test_acc" not in s:
            lines.append(f"| {s['model']} | {s['params']:,} | {s['mflops']:.1f} | {s['status']} | | | | | | | |")
            continue
        status = "" if s["status"] == "completed" else f" ({s['status']})"
        lines.append(
            f"| {s['model']}{status} | {s['params']:,} | {s['mflops']:.1f} | {100 * s['final_train_acc']:.2f} % | "
            f"{100 * s['final_test_acc']:.2f} % | {100 * s['best_test_acc']:.2f} % @{s['best_epoch']} | "
            f"{100 * s['gap']:+.2f} pp | {s['train_time_s']:.0f} s | {s['epoch_time_s']:.1f} | "
            f"{s.get('latency_ms_batch1', float('nan')):.2f} ms | {s.get('throughput_img_s', float('nan')):,.0f} img/s |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- experiment run
def run_experiment(experiment: str, specs: Sequence[ModelSpec], data: DatasetSplits, cfg: ExperimentConfig,
                   runtime: Runtime, results_dir: Path, *, force: bool = False, title: str | None = None,
                   keep_models: bool = False) -> list[dict]:
    """Train (or reuse) every spec; write one JSON per model and the experiment's summary.

    A finished model whose ``config_hash`` is unchanged is skipped (``force`` retrains). With
    ``keep_models`` every returned record carries the trained model under ``_model`` (reloaded from
    ``checkpoints/<model>.final.pt`` for skipped runs, retrained if those weights are gone).
    """
    out_dir = Path(results_dir) / experiment
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for spec in specs:
        h = config_hash(spec, cfg, data, runtime)
        path = out_dir / f"{spec.name}.json"
        weights = out_dir / "checkpoints" / f"{spec.name}.final.pt"
        old = None if force else read_json(path)
        if old is not None and old.get("config_hash") == h:
            model = _load_final_weights(spec, cfg, runtime, weights) if keep_models else None
            if not keep_models or model is not None:
                log.info("%s/%s: finished result with the same config found, skipping (use --force to retrain)",
                         experiment, spec.name)
                if model is not None:
                    old["_model"] = model
                records.append(old)
                continue
            log.info("%s/%s: result found but its weights are not; retraining for the analyses",
                     experiment, spec.name)
        ckpt = out_dir / "checkpoints" / f"{spec.name}.pt"
        if force and ckpt.exists():
            ckpt.unlink()
        record = train_model(spec, data, cfg, runtime, experiment=experiment, checkpoint_path=ckpt, config_hash=h)
        model = record.pop("_model")
        write_json(path, record)
        weights.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), weights)
        if ckpt.exists():
            ckpt.unlink()
        if keep_models:
            record["_model"] = model
        records.append(record)
    write_summary([{k: v for k, v in r.items() if k != "_model"} for r in records], out_dir, title or experiment)
    return records


def _load_final_weights(spec: ModelSpec, cfg: ExperimentConfig, runtime: Runtime, path: Path) -> nn.Module | None:
    if not path.is_file():
        return None
    model = spec.build(spec.config_for(cfg))
    try:
        model.load_state_dict(torch.load(path, weights_only=True))
    except Exception as exc:
        log.warning("ignoring unreadable weights %s (%s)", path, exc)
        return None
    model = model.to(runtime.device)
    return model.to(memory_format=torch.channels_last) if runtime.channels_last else model
