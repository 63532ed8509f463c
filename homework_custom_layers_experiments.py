"""Task 3: custom layers vs their standard analogues, and residual block variants compared.

    python homework_custom_layers_experiments.py                      # standard profile (~20 min, 2 CPU cores)
    python homework_custom_layers_experiments.py --only speed layers --profile quick

Experiments (``--only``):
  speed   forward+backward time of every custom layer (models/custom_layers.py, hand-written
          backward) against the standard PyTorch layer and against the same forward function run
          under autograd (models.custom_layers.autograd_reference), timed side by side.
  layers  one small CNN (models.cnn_models.SwappableCNN) trained on CIFAR-10 with one layer swapped
          at a time: conv -> weight-standardised CustomConv2d, + SE / CBAM attention, ReLU -> Swish
          (and native SiLU), max pool -> MixedPool2d (and native avg pool), average head -> GeM.
          The base CNN runs with several seeds, so the seed noise is known.
  blocks  one ResNet skeleton with Basic, Bottleneck and Wide residual blocks (written from scratch
          in models/cnn_models.py), several seeds each plus one run at a higher learning rate:
          accuracy mean +- std, parameters, FLOPs, time, loss-curve spread and gradient norms.

Writes ``results/custom_layers/`` (``layer_speed.json``, ``layers/``, ``layers_comparison.{json,md}``,
``blocks/``, ``blocks_stability.{json,md}``) and ``plots/custom_layers/*.png``.
"""

from __future__ import annotations

import functools
import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from models.cnn_models import BasicBlock, BottleneckBlock, ResNet, SwappableCNN, WideBlock
from models.custom_layers import (CBAM, ChannelAttention, CustomConv2d, GeMPool2d, MixedPool2d, Swish,
                                  autograd_reference)
from utils import visualization_utils as viz
from utils import plots_blocks as block_plots
from utils.cli import (apply_cli_overrides, build_parser, load_data, prepare_output_dirs, run_cli,
                       setup_logging)
from utils.experiment import ExperimentConfig, ModelSpec
from utils.files import atomic_write_text, read_json, write_json
from utils.records import RunRecord
from utils.runner import ExperimentRun, run_experiment
from utils.runtime import Runtime, resolve_runtime
from utils.gradient_stats import total_grad_norm
from utils.markdown import markdown_table
from utils.statistics import curve_band, relative_spread, seed_statistics
from utils.timing import time_forward_backward

log = logging.getLogger("custom_layers")
EXPERIMENTS = ("speed", "layers", "blocks")
SUBDIR = "custom_layers"


@dataclass(frozen=True)
class Profile:
    layers_epochs: int
    blocks_epochs: int
    train_subset: int | None
    test_subset: int | None
    block_seeds: int          # seeds per residual block (stability needs >= 3 in the real runs)
    base_seeds: int           # seeds of the base CNN of the layer study (the noise yardstick)
    speed_batch: int          # batch of the speed benchmark's feature maps
    speed_repeats: int
    grad_sample_every: int    # gradient norms recorded every k optimisation steps
    val_size: int = 5000      # held out of the training set; every choice is read on it


PROFILES = {
    "quick": Profile(layers_epochs=1, blocks_epochs=1, train_subset=600, test_subset=200, block_seeds=2,
                     base_seeds=2, speed_batch=8, speed_repeats=2, grad_sample_every=2, val_size=200),
    # Sized for ~20 min on 2 CPU cores (fp32): 5000 stratified training images, the full 10k test
    # set (evaluated every epoch), 3 epochs. Estimated from measured throughput (basic ~1000,
    # bottleneck ~360, wide ~280 training images/s): the 12 block runs take ~15 min, the 11
    # layer-swap runs ~5 min, the speed benchmark ~1 min.
    "standard": Profile(layers_epochs=3, blocks_epochs=3, train_subset=5000, test_subset=None, block_seeds=3,
                        base_seeds=3, speed_batch=128, speed_repeats=15, grad_sample_every=4),
    "full": Profile(layers_epochs=15, blocks_epochs=15, train_subset=None, test_subset=None, block_seeds=5,
                    base_seeds=3, speed_batch=128, speed_repeats=15, grad_sample_every=20),
}

# One config for both studies, fixed before any result was seen: SGD-Nesterov + one-cycle (as task 1),
# weight decay 5e-4, no augmentation (3 epochs are too few for it to pay off).
LAYERS_CONFIG = ExperimentConfig(batch_size=128, lr=0.1, optimizer="sgd", schedule="onecycle", weight_decay=5e-4,
                                 train_eval_samples=1000)
HIGH_LR_FACTOR = 8.0   # the stability probe: peak lr 8x the shared one (0.1 -> 0.8)
WIDTH = 32             # SwappableCNN widths 32-64-128 (~95 k parameters, ~21 MFLOPs/image)
SE_REDUCTION = 8       # 32 channels -> hidden 4 in the first stage


# ------------------------------------------------------------------------------------- speed
@dataclass(frozen=True)
class SpeedCase:
    layer: str
    variant: str
    custom: Callable[[], nn.Module]
    autograd: Callable[[], nn.Module] | None      # same forward, autograd backward (autograd_reference)
    standard: Callable[[], nn.Module] | None      # the standard PyTorch layer it replaces
    same_as_standard: bool = False                # custom == standard numerically (extra logic off)
    positive_input: bool = False                  # feed relu(x): GeM sees post-ReLU features


def speed_cases(c: int) -> list[SpeedCase]:
    conv = functools.partial(CustomConv2d, c, c, 3, padding=1, bias=False)
    aconv = lambda **kw: autograd_reference(conv(**kw))  # noqa: E731
    std_conv = lambda: nn.Conv2d(c, c, 3, padding=1, bias=False)  # noqa: E731
    return [
        SpeedCase("CustomConv2d", "options off", conv, None, std_conv, same_as_standard=True),
        SpeedCase("CustomConv2d", "weight standardisation", functools.partial(conv, weight_standardization=True),
                  functools.partial(aconv, weight_standardization=True), std_conv),
        SpeedCase("CustomConv2d", "WS + channel gate",
                  functools.partial(conv, weight_standardization=True, channel_gate=True),
                  functools.partial(aconv, weight_standardization=True, channel_gate=True), std_conv),
        SpeedCase("ChannelAttention (SE)", f"reduction {SE_REDUCTION}", lambda: ChannelAttention(c, SE_REDUCTION),
                  lambda: autograd_reference(ChannelAttention(c, SE_REDUCTION)), None),
        SpeedCase("CBAM", f"SE r={SE_REDUCTION} + 7x7 spatial", lambda: CBAM(c, SE_REDUCTION),
                  lambda: autograd_reference(CBAM(c, SE_REDUCTION)), None),
        SpeedCase("Swish", "beta = 1 fixed (= SiLU)", lambda: Swish(1.0, learnable=False),
                  lambda: autograd_reference(Swish(1.0, learnable=False)), nn.SiLU, same_as_standard=True),
        SpeedCase("Swish", "beta learnable", lambda: Swish(1.0, learnable=True),
                  lambda: autograd_reference(Swish(1.0)), nn.ReLU),
        SpeedCase("GeMPool2d", "global, p = 1 fixed (= avg)", lambda: GeMPool2d(p=1.0, learnable=False),
                  lambda: autograd_reference(GeMPool2d(p=1.0, learnable=False)), lambda: nn.AdaptiveAvgPool2d(1),
                  same_as_standard=True, positive_input=True),
        SpeedCase("GeMPool2d", "global, p learnable", lambda: GeMPool2d(p=3.0),
                  lambda: autograd_reference(GeMPool2d(p=3.0)), lambda: nn.AdaptiveAvgPool2d(1), positive_input=True),
        SpeedCase("MixedPool2d", "2x2, alpha learnable", lambda: MixedPool2d(2),
                  lambda: autograd_reference(MixedPool2d(2)), lambda: nn.MaxPool2d(2)),
    ]


def run_speed(profile: Profile, runtime: Runtime, out_dir: Path, plots_dir: Path, force: bool) -> dict:
    """Time every :class:`SpeedCase`; reuse ``layer_speed.json`` when the settings are unchanged."""
    channels, size = 32, 32
    settings = {"batch": profile.speed_batch, "channels": channels, "size": size, "repeats": profile.speed_repeats,
                "warmup": 2, "threads": runtime.threads, "device": str(runtime.device),
                "channels_last": runtime.channels_last, "dtype": "float32",
                "cases": [f"{c.layer} | {c.variant}" for c in speed_cases(channels)]}
    path = out_dir / "layer_speed.json"
    old = None if force else read_json(path)
    if old is not None and old.get("settings") == settings:
        log.info("speed: measurements with the same settings found in %s, re-plotting only", path)
        result = old
    else:
        fmt = torch.channels_last if runtime.channels_last else torch.contiguous_format
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(profile.speed_batch, channels, size, size, generator=gen).to(runtime.device,
                                                                                    memory_format=fmt)
        rows = []
        for case in speed_cases(channels):
            torch.manual_seed(0)
            mods: dict[str, nn.Module] = {"custom": case.custom()}
            if case.autograd is not None:
                mods["autograd"] = case.autograd()
                mods["autograd"].load_state_dict(mods["custom"].state_dict())  # identical parameters
            if case.standard is not None:
                mods["standard"] = case.standard()
                if case.same_as_standard:
                    mods["standard"].load_state_dict(mods["custom"].state_dict(), strict=False)
            for m in mods.values():
                m.to(runtime.device, memory_format=fmt)
            xin = x.relu() + 1e-3 if case.positive_input else x
            t = time_forward_backward(mods, xin, repeats=profile.speed_repeats, warmup=2)
            with torch.no_grad():
                y = mods["custom"](xin)
                ref = mods.get("autograd") or (mods["standard"] if case.same_as_standard else None)
                diff = float((y - ref(xin)).abs().max()) if ref is not None else None
            row = {"layer": case.layer, "variant": case.variant, "same_as_standard": case.same_as_standard,
                   "custom_ms": t["custom"]["median_ms"],
                   "autograd_ms": t["autograd"]["median_ms"] if "autograd" in t else None,
                   "standard_ms": t["standard"]["median_ms"] if "standard" in t else None,
                   "standard_layer": type(mods["standard"]).__name__ if "standard" in mods else None,
                   "max_abs_diff_vs_reference": diff, "times_ms": {k: v["times_ms"] for k, v in t.items()}}
            row["ratio_vs_autograd"] = row["custom_ms"] / row["autograd_ms"] if row["autograd_ms"] else None
            row["ratio_vs_standard"] = row["custom_ms"] / row["standard_ms"] if row["standard_ms"] else None
            log.info("speed %-22s %-28s custom %.2f ms | autograd %s | standard %s", case.layer, case.variant,
                     row["custom_ms"], _ms(row["autograd_ms"]), _ms(row["standard_ms"]))
            rows.append(row)
        result = {"settings": settings, "input_shape": list(x.shape),
                  "what": "median forward+backward wall time per call (ms), modules timed in rotation on the "
                          "same input; ratio = custom / other", "rows": rows}
        write_json(path, result)
    atomic_write_text(out_dir / "layer_speed.md", _speed_markdown(result) + "\n")
    block_plots.plot_layer_speed(result["rows"], plots_dir / "layer_speed.png",
                         f"Custom layers: forward + backward time per batch "
                         f"({settings['batch']}x{channels}x{size}x{size}, {settings['threads']} CPU threads)")
    return result


def _speed_markdown(result: dict) -> str:
    st = result["settings"]

    def ratio(v: float | None) -> str:
        return "-" if v is None else f"×{v:.2f}"

    rows = [[r["layer"], r["variant"], f"{r['custom_ms']:.2f}", _ms(r["autograd_ms"]), ratio(r["ratio_vs_autograd"]),
             r["standard_layer"] or "-", _ms(r["standard_ms"]), ratio(r["ratio_vs_standard"]),
             "-" if r["max_abs_diff_vs_reference"] is None else f"{r['max_abs_diff_vs_reference']:.1e}"]
            for r in result["rows"]]
    table = markdown_table(["layer", "variant", "custom (ms)", "autograd, same maths (ms)", "custom / autograd",
                            "standard layer", "standard (ms)", "custom / standard", "max abs diff"], rows)
    return "\n".join([f"Input {st['batch']}x{st['channels']}x{st['size']}x{st['size']} "
                      f"({'channels_last, ' if st['channels_last'] else ''}{st['dtype']}, {st['threads']} threads, "
                      f"{st['device']}); median of {st['repeats']} side-by-side rounds.", "", table])


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f} ms"


# ------------------------------------------------------------------------------------ layers
def layer_specs(classes: int, base_seeds: int) -> list[ModelSpec]:
    """Base CNN (several seeds) + one spec per swapped layer; everything else identical."""
    def cnn(**swap) -> Callable[[ExperimentConfig], nn.Module]:
        return lambda c: SwappableCNN(WIDTH, 3, classes, **swap)

    base_desc = f"SwappableCNN {WIDTH}-{2 * WIDTH}-{4 * WIDTH}: Conv2d, BN, ReLU, MaxPool2d(2); avg-pool head"
    specs = [ModelSpec("base" if s == 0 else f"base_seed{s}", cnn(), base_desc + (f" (seed +{s})" if s else ""),
                       group="base", variant="base", seed=s) for s in range(base_seeds)]
    # group = the layer swapped; variant = what it is compared against (the base CNN's layer, or
    # the native op with the same maths)
    specs += [
        ModelSpec("conv_ws", cnn(conv=functools.partial(CustomConv2d, weight_standardization=True)),
                  "conv -> CustomConv2d with weight standardisation", group="conv", variant="nn.Conv2d"),
        ModelSpec("attn_se", cnn(attention=lambda ch: ChannelAttention(ch, SE_REDUCTION)),
                  f"+ ChannelAttention (SE, reduction {SE_REDUCTION}) after each activation", group="attention",
                  variant="no attention"),
        ModelSpec("attn_cbam", cnn(attention=lambda ch: CBAM(ch, SE_REDUCTION, kernel_size=7)),
                  f"+ CBAM (SE r={SE_REDUCTION} + 7x7 spatial attention) after each activation", group="attention",
                  variant="no attention"),
        ModelSpec("act_swish", cnn(act=lambda: Swish(1.0, learnable=True)), "ReLU -> Swish, beta learnable (init 1)",
                  group="activation", variant="nn.ReLU"),
        ModelSpec("act_silu_native", cnn(act=nn.SiLU), "ReLU -> nn.SiLU (native Swish with beta = 1)",
                  group="activation", variant="nn.ReLU"),
        ModelSpec("pool_mixed", cnn(pool=lambda: MixedPool2d(2)), "MaxPool2d -> MixedPool2d (alpha learnable, init 0.5)",
                  group="pooling", variant="nn.MaxPool2d"),
        ModelSpec("pool_avg_native", cnn(pool=lambda: nn.AvgPool2d(2)), "MaxPool2d -> nn.AvgPool2d (native)",
                  group="pooling", variant="nn.MaxPool2d"),
        ModelSpec("head_gem", cnn(head_pool=lambda: GeMPool2d(p=3.0)), "avg-pool head -> GeMPool2d (p learnable, init 3)",
                  group="head pooling", variant="nn.AdaptiveAvgPool2d"),
    ]
    return specs


def _nan(v: float | None) -> float:
    return np.nan if v is None else v


def learned_scalars(model: nn.Module | None) -> dict:
    """The custom layers' own learned parameters at the end of training (one entry per layer)."""
    if model is None:
        return {}
    out: dict[str, list] = {}
    for m in model.modules():
        if isinstance(m, Swish):
            out.setdefault("swish_beta", []).append(float(m.beta.detach()))
        elif isinstance(m, MixedPool2d):
            out.setdefault("mixed_pool_alpha", []).append(float(m.alpha))
        elif isinstance(m, GeMPool2d):
            out.setdefault("gem_p", []).append(float(m.p.detach()))
        elif isinstance(m, CustomConv2d) and m.gate is not None:
            out.setdefault("conv_gate_mean", []).append(float(m.gate.detach().mean()))
    return out


def analyse_layers(run: ExperimentRun, out_dir: Path, plots_dir: Path) -> dict:
    """Compare every swap with the base CNN; write ``layers_comparison.{json,md}`` and the figures."""
    records = run.records
    base = [r for r in records if r.group == "base"]
    base_acc = seed_statistics([_nan(r.summary.test_acc) for r in base])
    base_epoch = seed_statistics([_nan(r.summary.epoch_time_s) for r in base])
    rows = []
    for r in records:
        s = r.summary
        kind, vs = ("base", "-") if r.group == "base" else (r.group, r.variant)
        acc = _nan(s.test_acc)
        rows.append({
            "model": r.model, "swapped": kind, "compared_with": vs, "description": r.description,
            "status": r.status, "test_acc": acc, "best_val_acc": _nan(s.best_val_acc),
            "train_acc": _nan(s.final_train_acc),
            "delta_vs_base_mean_pp": 100 * (acc - base_acc["mean"]),
            "delta_vs_base_mean": acc - base_acc["mean"],   # the same as a fraction (README's "pp" format)
            "params": s.params, "extra_params_vs_base": s.params - base[0].summary.params,
            "mflops": s.mflops, "epoch_time_s": _nan(s.epoch_time_s),
            "epoch_time_ratio_vs_base": _nan(s.epoch_time_s) / base_epoch["mean"],
            "throughput_img_s": _nan(s.throughput_img_s),
            "learned": learned_scalars(run.models.get(r.model)),
        })
    summary = {"base_test_acc": base_acc, "base_epoch_time_s": base_epoch, "rows": rows,
               "data": records[0].data, "config": records[0].config,
               "note": "delta_vs_base_mean_pp = test accuracy minus the mean over the base CNN's seeds, in "
                       "percentage points; compare it with base_test_acc.std (seed noise)."}
    write_json(out_dir / "layers_comparison.json", summary)
    atomic_write_text(out_dir / "layers_comparison.md", _layers_markdown(summary) + "\n")
    block_plots.plot_layer_swap(rows, base_acc, plots_dir / "layers_swap_summary.png",
                        "CIFAR-10, one layer swapped at a time: test accuracy and training cost vs the base CNN")
    viz.plot_learning_curves([r for r in records if r.group != "base" or r.seed == 0],
                             plots_dir / "layers_learning_curves.png", "Layer swaps: learning curves")
    viz.plot_accuracy_vs_cost(records, plots_dir / "layers_accuracy_vs_cost.png",
                              "Layer swaps: test accuracy vs size and cost")
    return summary


def _layers_markdown(summary: dict) -> str:
    b = summary["base_test_acc"]
    rows = []
    for r in summary["rows"]:
        learned = "; ".join(f"{k} " + ", ".join(f"{v:.3f}" for v in vals) for k, vals in r["learned"].items())
        rows.append([r["model"], r["swapped"], r["compared_with"], f"{100 * r['test_acc']:.2f} %",
                     f"{r['delta_vs_base_mean_pp']:+.2f} pp", f"{r['params']:,} ({r['extra_params_vs_base']:+,})",
                     f"{r['mflops']:.1f}", f"{r['epoch_time_s']:.1f}", f"{r['epoch_time_ratio_vs_base']:.2f}", learned])
    table = markdown_table(["model", "swapped", "vs", "test acc", "Δ vs base mean", "params (+extra)", "MFLOPs",
                            "s/epoch", "×base time", "learned"], rows)
    return "\n".join([f"Base CNN over {b['n']} seeds: test accuracy {100 * b['mean']:.2f} ± {100 * b['std']:.2f} % "
                      f"(mean ± std).", "", table])


# ------------------------------------------------------------------------------------ blocks
@dataclass(frozen=True)
class BlockArch:
    block: type[nn.Module]
    widths: tuple[int, ...]
    description: str
    block_dropout: float = 0.0


# One skeleton: stem conv 16 -> 3 stages x 1 block (stride 2 in stages 2, 3) -> GAP -> linear.
# Bottleneck: output widths 4x basic, inner (3x3) widths = basic's. Wide: basic widths x k=2 and
# dropout 0.3 between the two convs (WRN-style pre-activation block).
BLOCK_ARCHS = {
    "basic": BlockArch(BasicBlock, (16, 32, 64), "BasicBlock 3x3-3x3, widths 16-32-64"),
    "bottleneck": BlockArch(BottleneckBlock, (64, 128, 256),
                            "BottleneckBlock 1x1-3x3-1x1 (x4), inner 16-32-64, out 64-128-256"),
    "wide": BlockArch(WideBlock, (32, 64, 128), "WideBlock (pre-act), k=2: widths 32-64-128, dropout 0.3",
                      block_dropout=0.3),
}
STEM = 16


def build_block_net(arch: BlockArch, classes: int) -> Callable[[ExperimentConfig], nn.Module]:
    return lambda c: ResNet(arch.block, arch.widths, (1,) * len(arch.widths), num_classes=classes,
                            stem_channels=STEM, block_dropout=arch.block_dropout)


def block_specs(classes: int, seeds: int, high_lr: float) -> list[ModelSpec]:
    """``<block>_seed<k>`` for every seed (seed-major order, so a partial run covers all blocks),
    then ``<block>_lr_high`` (seed 0, peak lr ``high_lr``)."""
    specs = [ModelSpec(f"{name}_seed{s}", build_block_net(a, classes), a.description, group="seeds", variant=name,
                       seed=s) for s in range(seeds) for name, a in BLOCK_ARCHS.items()]
    specs += [ModelSpec(f"{name}_lr_high", build_block_net(a, classes), f"{a.description}; peak lr {high_lr:g}",
                        group="high_lr", variant=name, lr=high_lr) for name, a in BLOCK_ARCHS.items()]
    return specs


def analyse_blocks(records: list[RunRecord], out_dir: Path, plots_dir: Path, base_lr: float, high_lr: float) -> dict:
    """Per block: accuracy mean ± std over seeds, costs, loss spread, gradient norms, high-lr behaviour."""
    groups = {name: [r for r in records if r.group == "seeds" and r.variant == name] for name in BLOCK_ARCHS}
    high = {name: next((r for r in records if r.group == "high_lr" and r.variant == name), None)
            for name in BLOCK_ARCHS}
    blocks = {}
    for name, runs in groups.items():
        if not runs:
            continue
        s0 = runs[0].summary
        final = [_nan(r.summary.test_acc) for r in runs]
        grad_tot = [total_grad_norm(r.grad_stats.l2) for r in runs if r.grad_stats.l2]
        after_init = np.concatenate([g[1:] for g in grad_tot] + [np.array([np.nan])])  # NaN: never empty
        blocks[name] = {
            "description": runs[0].description, "seeds": [r.seed for r in runs],
            "status": [r.status for r in runs],
            "test_acc": seed_statistics(final),
            "best_val_acc": seed_statistics([_nan(r.summary.best_val_acc) for r in runs]),
            "train_acc": seed_statistics([_nan(r.summary.final_train_acc) for r in runs]),
            "final_test_loss": seed_statistics([_nan(r.summary.test_loss) for r in runs]),
            "params": s0.params, "mflops": s0.mflops,
            "train_time_s": seed_statistics([_nan(r.summary.train_time_s) for r in runs]),
            "epoch_time_s": seed_statistics([_nan(r.summary.epoch_time_s) for r in runs]),
            "throughput_img_s": seed_statistics([_nan(r.summary.throughput_img_s) for r in runs]),
            "val_loss_band": curve_band([r.history.val_loss for r in runs]),
            "train_loss_band": curve_band([r.history.train_loss for r in runs]),
            "val_acc_band": curve_band([r.history.val_acc for r in runs]),
            "final_val_loss_rel_spread": relative_spread([r.history.val_loss[-1] for r in runs
                                                             if r.history.val_loss]),
            "grad_norm": {
                "at_init": seed_statistics([g[0] for g in grad_tot]),
                "median_after_init": _nan_stat(np.nanmedian, after_init),
                "max_after_init": _nan_stat(np.nanmax, after_init),
                # variability of the global gradient norm along training (std/mean over recorded steps)
                "cv_along_training": seed_statistics([float(np.std(g[1:]) / np.mean(g[1:]))
                                                         for g in grad_tot if len(g) > 2]),
            },
        }
        h = high[name]
        if h is not None:
            hs = h.summary
            hg = total_grad_norm(h.grad_stats.l2) if h.grad_stats.l2 else np.array([np.nan])
            hg = np.append(hg, np.nan)  # so hg[1:] is never empty; NaN is ignored by the nan-reductions
            same_seed = next((r for r in runs if r.seed == h.seed), runs[0]).summary
            both = hs.test_acc is not None and same_seed.test_acc is not None
            blocks[name]["high_lr"] = {
                "lr": h.config["lr"], "status": h.status, "diverged_at": h.diverged_at,
                "test_acc": hs.test_acc, "best_val_acc": hs.best_val_acc,
                "delta_vs_same_seed_pp": 100 * (hs.test_acc - same_seed.test_acc) if both else None,
                "delta_vs_seed_mean_pp": (100 * (hs.test_acc - blocks[name]["test_acc"]["mean"])
                                          if hs.test_acc is not None else None),
                # the two deltas as fractions, for the README's "pp" format
                "delta_vs_same_seed": hs.test_acc - same_seed.test_acc if both else None,
                "delta_vs_seed_mean": (hs.test_acc - blocks[name]["test_acc"]["mean"]
                                       if hs.test_acc is not None else None),
                "val_loss": h.history.val_loss, "train_loss": h.history.train_loss,
                "grad_norm_median_after_init": _nan_stat(np.nanmedian, hg[1:]),
                "grad_norm_max_after_init": _nan_stat(np.nanmax, hg[1:]),
            }
    summary = {"base_lr": base_lr, "high_lr": high_lr, "blocks": blocks, "data": records[0].data,
               "config": {k: v for k, v in records[0].config.items() if k != "seed"},
               "note": "test_acc etc.: mean / sample std (ddof=1) / min / max over seeds at the base lr; "
                       "grad norms: global L2 norm of all conv/linear weight gradients, step 0 = initialisation."}
    write_json(out_dir / "blocks_stability.json", summary)
    atomic_write_text(out_dir / "blocks_stability.md", _blocks_markdown(summary) + "\n")

    seed0 = [runs[0] for runs in groups.values() if runs]
    block_plots.plot_seed_bands(groups, plots_dir / "blocks_loss_bands.png",
                        f"Residual blocks: loss and accuracy per epoch, mean and min-max over seeds (lr {base_lr:g})")
    block_plots.plot_grad_norm_traces(groups, high, plots_dir / "blocks_grad_norms.png",
                              "Residual blocks: global gradient norm during training (mean and min-max over seeds)")
    block_plots.plot_seed_accuracy(summary["blocks"], plots_dir / "blocks_accuracy_cost.png",
                           "Residual blocks: test accuracy over seeds, size and cost")
    block_plots.plot_high_lr(groups, high, plots_dir / "blocks_high_lr.png",
                     f"Residual blocks at a higher learning rate: peak lr {high_lr:g} vs {base_lr:g}")
    viz.plot_gradient_flow(seed0, plots_dir / "blocks_gradient_flow.png", "Residual blocks: gradient flow (seed 0)")
    viz.plot_learning_curves(seed0, plots_dir / "blocks_learning_curves.png", "Residual blocks: learning curves (seed 0)")
    return summary


def _nan_stat(fn: Callable, values: np.ndarray) -> float:
    """``fn`` (a NaN-ignoring numpy reduction) of ``values``, NaN when nothing finite is left."""
    return float(fn(values)) if np.isfinite(values).any() else float("nan")


def _pm(st: dict, scale: float = 100.0, unit: str = " %") -> str:
    return f"{scale * st['mean']:.2f} ± {scale * st['std']:.2f}{unit}"


def _blocks_markdown(summary: dict) -> str:
    rows = []
    for name, b in summary["blocks"].items():
        hl = b.get("high_lr")
        if hl is None:
            high = "-"
        elif hl["status"] != "completed":
            high = f"{hl['status']} at epoch {hl['diverged_at']['epoch']}"
        else:
            high = f"{100 * hl['test_acc']:.2f} % ({hl['delta_vs_same_seed_pp']:+.2f} pp)"
        rows.append([name, f"{b['params']:,}", f"{b['mflops']:.1f}", f"{_pm(b['test_acc'])} (n={b['test_acc']['n']})",
                     f"{100 * b['test_acc']['min']:.2f}–{100 * b['test_acc']['max']:.2f} %", _pm(b["train_acc"]),
                     f"{b['epoch_time_s']['mean']:.1f}", f"{b['grad_norm']['at_init']['mean']:.3g}",
                     f"{b['grad_norm']['cv_along_training']['mean']:.2f}", high])
    return markdown_table(["block", "params", "MFLOPs/img", "test acc (mean ± std)", "min-max", "train acc", "s/epoch",
                           "grad norm at init", "grad-norm CV", f"lr {summary['high_lr']:g}: test acc (Δ same seed)"],
                          rows)


# -------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = build_parser(__doc__.splitlines()[0], EXPERIMENTS, default_plots="plots/custom_layers")
    args = parser.parse_args(argv)
    dirs = prepare_output_dirs(args)
    out_dir = dirs.results / SUBDIR
    out_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(out_dir / "custom_layers_experiments.log", args.verbose)
    runtime = resolve_runtime(args.device, args.precision)
    profile = PROFILES[args.profile]
    todo = args.only or EXPERIMENTS
    log.info("profile %s (%s), runtime %s", args.profile, asdict(profile), runtime.describe())

    if "speed" in todo:
        run_speed(profile, runtime, out_dir, dirs.plots, args.force)
    if not {"layers", "blocks"} & set(todo):
        return 0
    data = load_data(args, dirs, "cifar10", profile.train_subset, profile.test_subset, profile.val_size)
    classes = data.num_classes
    source = f"{data.source}, {len(data.train)} train / {len(data.test)} test"
    if "layers" in todo:
        cfg = apply_cli_overrides(LAYERS_CONFIG.replace(epochs=profile.layers_epochs,
                                                        grad_sample_every=profile.grad_sample_every), args)
        run = run_experiment(f"{SUBDIR}/layers", layer_specs(classes, profile.base_seeds), data, cfg, runtime,
                             dirs.results, force=args.force, keep_models=True,
                             title=f"CIFAR-10 layer swaps ({source})")
        analyse_layers(run, out_dir, dirs.plots)
        log.info("layers done: %s", out_dir / "layers_comparison.md")
    if "blocks" in todo:
        cfg = apply_cli_overrides(LAYERS_CONFIG.replace(epochs=profile.blocks_epochs,
                                                        grad_sample_every=profile.grad_sample_every), args)
        high_lr = HIGH_LR_FACTOR * cfg.lr
        records = run_experiment(f"{SUBDIR}/blocks", block_specs(classes, profile.block_seeds, high_lr), data,
                                 cfg, runtime, dirs.results, force=args.force,
                                 title=f"CIFAR-10 residual blocks ({source})").records
        analyse_blocks(records, out_dir, dirs.plots, cfg.lr, high_lr)
        log.info("blocks done: %s", out_dir / "blocks_stability.md")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
