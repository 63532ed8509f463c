"""Measurements task 1 makes beyond the run records: the pixel-shuffle control's data, test-set
confidences of a trained model (for calibration), which weights sit right before a BatchNorm, and
the paired timing of the compared models."""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import torch
from torch import nn

from utils.analysis.classification import calibration
from utils.analysis.paired_timing import paired_ratios, time_forward, time_training_steps
from utils.engine.data import ArrayDataset, BatchLoader, DatasetSplits
from utils.engine.experiment import ExperimentConfig
from utils.engine.runtime import Runtime

NORM_LAYERS = (nn.BatchNorm1d, nn.BatchNorm2d)
WEIGHT_LAYERS = (nn.Linear, nn.Conv2d)


# ------------------------------------------------------------------------- pixel-shuffle control
def pixel_permutation(height: int, width: int, seed: int) -> torch.Tensor:
    """One fixed permutation of the ``height * width`` pixel positions (seeded)."""
    return torch.randperm(height * width, generator=torch.Generator().manual_seed(seed))


def permute_pixels(ds: ArrayDataset, perm: torch.Tensor) -> ArrayDataset:
    """``ds`` with the pixel positions of every image reordered by ``perm`` (the same for every
    image and every channel, so a pixel keeps its colour): spatial neighbourhoods are destroyed,
    the multiset of pixels of each image and its label are kept."""
    n, c, h, w = ds.images.shape
    if perm.numel() != h * w:
        raise ValueError(f"a permutation of {perm.numel()} positions for {h}x{w} images")
    images = ds.images.reshape(n, c, h * w)[:, :, perm].reshape(n, c, h, w).contiguous()
    return ArrayDataset(images, ds.labels.clone())


def shuffled_splits(data: DatasetSplits, seed: int = 0) -> DatasetSplits:
    """Train, validation and test of ``data`` under one fixed pixel permutation. The source text
    says so (it enters every run's config hash through ``DatasetSplits.describe``); the channel
    statistics are unchanged by a permutation, so they are kept."""
    _, h, w = data.image_shape
    perm = pixel_permutation(h, w, seed)
    return dataclasses.replace(
        data, train=permute_pixels(data.train, perm), test=permute_pixels(data.test, perm),
        val=permute_pixels(data.val, perm) if data.val is not None else None,
        source=f"{data.source}, pixels shuffled by one fixed permutation (seed {seed})")


# ------------------------------------------------------------------------------- calibration
@torch.inference_mode()
def test_calibration(model: nn.Module, data: DatasetSplits, cfg: ExperimentConfig, runtime: Runtime) -> dict:
    """Calibration of ``model``'s top-1 predictions on the test set, scored exactly as the run's
    test accuracy was (same normalisation, the run's flip test-time augmentation: averaged logits)."""
    loader = BatchLoader(data.test, cfg.eval_batch_size, data.mean, data.std, device=runtime.device,
                         channels_last=runtime.channels_last)
    model.eval()
    conf, correct = [], []
    for x, y in loader:
        with runtime.autocast():
            logits = model(x).float()
            if cfg.flip_tta:
                logits = 0.5 * (logits + model(x.flip(3)).float())
        p, pred = torch.softmax(logits, 1).max(1)
        conf.append(p.cpu())
        correct.append((pred == y).cpu())
    return calibration(torch.cat(conf).numpy(), torch.cat(correct).numpy())


# ------------------------------------------------------------------------ scale-invariant layers
def weights_before_norm(model: nn.Module) -> list[str]:
    """Names of the ``weight`` tensors of linear/conv layers that a BatchNorm follows directly
    inside an ``nn.Sequential``. Such a layer's output is re-normalised, so the loss does not
    change when its weights are scaled: weight decay then changes the effective learning rate
    ``lr / ||w||^2``, not the function class."""
    out = []
    for prefix, module in model.named_modules():
        if isinstance(module, nn.Sequential):
            children = list(module.named_children())
            for (name, layer), (_, nxt) in zip(children, children[1:]):
                if isinstance(layer, WEIGHT_LAYERS) and isinstance(nxt, NORM_LAYERS):
                    out.append(f"{prefix}.{name}.weight" if prefix else f"{name}.weight")
    return out


# -------------------------------------------------------------------------------- paired timing
LATENCY_ROUND_FACTOR = 3   # batch-1 calls are short and noisy: three times the rounds of the batch timings


def paired_timing(builds: Mapping[str, Callable[[], nn.Module]], image_shape: tuple[int, int, int],
                  runtime: Runtime, batch: int, repeats: int, warmup: int = 2) -> dict:
    """Training step, inference (forward, eval mode) and batch-1 latency of the models, measured
    side by side in rotating rounds (:mod:`utils.analysis.paired_timing`) on one random batch (its
    first image for the latency), in the precision the runs train in (the runtime's autocast). Per
    model and kind: the spread of ms per call and of images/s over the rounds, and the per-round
    ratio to the first model (the paired statistic)."""
    torch.manual_seed(0)
    models = {}
    for name, build in builds.items():
        m = build().to(runtime.device)
        models[name] = m.to(memory_format=torch.channels_last) if runtime.channels_last else m
    x = torch.randn(batch, *image_shape, device=runtime.device)
    if runtime.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=runtime.device)
    train = time_training_steps(models, x, y, repeats=repeats, warmup=warmup, autocast=runtime.autocast)
    for m in models.values():
        m.eval()
    with runtime.autocast():
        infer = time_forward(models, x, repeats=repeats, warmup=warmup)
        latency = time_forward(models, x[:1], repeats=LATENCY_ROUND_FACTOR * repeats, warmup=warmup + 3)
    first = next(iter(models))
    timed = {"train_step": (train, "step_ms"), "inference": (infer, "forward_ms"), "latency": (latency, "forward_ms")}
    out = {name: {kind: {"ms": t[ms][name], "images_per_s": t["images_per_s"][name],
                         "ratio_to_reference": paired_ratios(t["rounds_ms"], first)[name]}
                  for kind, (t, ms) in timed.items()}
           for name in models}
    return {"models": out, "reference": first, "batch": batch, "repeats": repeats, "warmup": warmup,
            "latency_repeats": LATENCY_ROUND_FACTOR * repeats,
            "runtime": runtime.describe(),
            "method": "interleaved rounds in rotating order, one process, the training precision; median and "
                      "quartiles of the rounds; ratios per round to the reference, then their median"}
