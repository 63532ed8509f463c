"""Task 3: custom layers vs their standard analogues, and residual blocks compared at matched size,
in their canonical configurations and along a learning-rate sweep.

    python homework_custom_layers_experiments.py                      # standard profile (see PROFILES)
    python homework_custom_layers_experiments.py --only speed layers --profile quick

Experiments (``--only``):
  speed     forward+backward time of every custom layer (hand-written backward) against the standard
            layer and against the same forward run under autograd (``autograd_reference``).
  layers    a small CNN (SwappableCNN) on CIFAR-10 with one layer swapped at a time (custom conv, SE,
            CBAM, Swish / native SiLU, mixed / native average pooling, GeM head), every variant over
            the same seeds, each compared with the base CNN (difference of means, 95 % interval).
  blocks    one ResNet skeleton with Basic, Bottleneck and Wide blocks, ``canonical`` (basic 16-32-64,
            bottleneck x4 with inner 16-32-64, wide k=2) and ``matched`` (every block at the canonical
            bottleneck's parameter count, within 5 %), every block over the same seeds.
  lr_sweep  the matched nets at five peak lrs over 40x: accuracy, loss spikes, gradient norms,
            divergence and the divergence frontier per block.
  blocks_tuned  the matched nets again over the same seeds, at the one peak lr (for every block) that
            the sweep's validation accuracy, averaged over the blocks, chose; the sweep's run at that
            lr is seed 0 (reused). Reads the sweep's results when run on its own.

Every block: Kaiming init, zero-init of residual ends off, no dropout. A run identical to one already
made (same config hash: the matched bottleneck is the canonical one, the sweep's base-lr point is the
matched run) is reused. Writes ``results/custom_layers/{layers,blocks_matched,blocks_canonical,
lr_sweep,blocks_tuned}/`` (run JSONs, summary, analysis.json/md), ``layer_speed.{json,md}``, ``timing.json`` and
``plots/custom_layers/*.png``.
"""

from __future__ import annotations

import functools
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from torch import nn

from models.cnn_models import BasicBlock, BottleneckBlock, ResNet, SwappableCNN, WideBlock
from models.custom_layers import CBAM, ChannelAttention, CustomConv2d, GeMPool2d, MixedPool2d, Swish
from utils.studies.custom_layers import figures as block_plots
from utils.comparison_utils import METRICS, compare, convergence_of, json_safe, summarise_runs, verdict
from utils.engine.cli import (UsageError, apply_cli_overrides, build_parser, load_data, prepare_output_dirs, run_cli,
                       setup_logging)
from utils.engine.data import DatasetSplits
from utils.engine.executors import executor_from_args
from utils.engine.experiment import ExperimentConfig, ModelSpec
from utils.engine.files import atomic_write_text, make_dir, read_json, write_json
from utils.studies.custom_layers.speed import SE_REDUCTION, run_speed
from utils.engine.markdown import markdown_table
from utils.engine.model_stats import count_parameters, relative_param_gap, solve_width_for_params
from utils.engine.records import RunRecord
from utils.engine.runner import load_records, run_experiment, run_reusing
from utils.engine.runtime import Runtime, resolve_runtime
from utils.analysis.stability import SPIKE_RISES, SPIKE_WINDOW, stability_over_seeds, sweep_points

log = logging.getLogger("custom_layers")
EXPERIMENTS = ("speed", "layers", "blocks", "lr_sweep", "blocks_tuned")
SUBDIR = "custom_layers"


@dataclass(frozen=True)
class Profile:
    layers_epochs: int
    blocks_epochs: int        # both block regimes and the lr sweep (its base-lr point is the matched run)
    train_subset: int | None
    test_subset: int | None
    seeds: int                # seeds of every layer variant and of every block in both regimes
    sweep_seeds: int          # seeds of every (block, lr) point of the sweep
    eval_points: int          # validation curve points per run (>= 11: 3 in the plateau window)
    val_eval_samples: int | None
    train_eval_samples: int
    speed_batch: int          # batch of the speed benchmark's feature maps
    speed_repeats: int
    grad_sample_every: int    # gradient norms recorded every k optimisation steps
    val_size: int = 5000      # held out of the training set; every curve is read on it


PROFILES = {
    "quick": Profile(layers_epochs=1, blocks_epochs=1, train_subset=600, test_subset=200, seeds=2, sweep_seeds=1,
                     eval_points=3, val_eval_samples=None, train_eval_samples=200, speed_batch=8, speed_repeats=2,
                     grad_sample_every=2, val_size=200),
    # Standard: 10,000 stratified training images (2x the v1 study's 5k; 22 % of the 45k training
    # split), 6 epochs for the layer swaps (468 steps), 9 for the blocks and the sweep (702 steps),
    # every variant x 3 seeds, the sweep x 1 seed; 12 evaluation points on 2,000 validation and 500
    # training images; the test set once, on a 5,000-image stratified subset. 54 runs (the matched
    # bottleneck and the sweep's base-lr points are reused runs).
    # Sizing from a probe (a few bf16 training steps / batch-1000 evaluations, 2 threads, throughput
    # relative to ResNet(Basic,16-32-64-128) = 3,200 img/s here): training img/s basic 3,740,
    # bottleneck 1,410, wide k=2 1,550, matched basic / wide (24-40-80) 2,080 / 2,330; base CNN 5,440,
    # CustomConv2d-WS 2,620, SE 3,680, CBAM 1,440, Swish 2,720, SiLU 4,900, MixedPool 2,050, AvgPool
    # 5,340, GeM 5,090. Evaluation (batch 1000): 2,100 (bottleneck) .. 19,500 img/s.
    #   training: layers 3 seeds x 60k images x sum(1/v) = 8.9 min; regimes 3 x 90k x (1/3740 + 1/1410
    #     + 1/1550 + 1/2080 + 1/2330) = 11.4 min; sweep 4 lrs x 90k x (1/2080 + 1/1410 + 1/2330) = 9.7 min
    #     -> 30 min
    #   evaluation: 54 runs x (12 x 2,500 + 5,000 test + 3,600 inference images) = 8.8 min in batches
    #   of 1000, ~4 min in batches of 256 (1.9-2.8x faster for these nets: benchmarks/eval_batch.py)
    #   + speed study ~0.5 min + data / figures ~0.5 min  => ~36 min on this 2-core AVX-512-bf16 EPYC,
    #   training ~85 % of the runs' wall time (measured: 35.3 min, 86 %). blocks_tuned adds 6 runs
    #   (seeds 1-2 of the matched nets at the chosen lr; seed 0 is the sweep's): measured 5.5 min.
    # fp32 on the 2-core AVX2 EPYC: the v1 records (results/custom_layers: fp32 under precision
    # "auto", so a CPU without bf16) trained basic 935, bottleneck 307, wide 243, base CNN 1,240,
    # custom layers 670-1,260 img/s at batch 128: 3-5x slower than bf16 here (not 2.5-3x) -> ~126 min
    # training + ~25 min evaluation = ~150 min there. 75 min there would need 3 epochs for both
    # studies (~21 min here, ~55 % of it training: the fixed per-run evaluation then dominates).
    "standard": Profile(layers_epochs=6, blocks_epochs=9, train_subset=10_000, test_subset=5000, seeds=3,
                        sweep_seeds=1, eval_points=12, val_eval_samples=2000, train_eval_samples=500,
                        speed_batch=128, speed_repeats=15, grad_sample_every=5),
    "full": Profile(layers_epochs=15, blocks_epochs=20, train_subset=None, test_subset=None, seeds=5, sweep_seeds=3,
                    eval_points=20, val_eval_samples=None, train_eval_samples=2000, speed_batch=128,
                    speed_repeats=15, grad_sample_every=20),
}

# One recipe for every run of the task, fixed before any result was seen: SGD-Nesterov + one-cycle
# (as task 1), weight decay 5e-4, no augmentation; He init, no zero-init of residual ends, no dropout.
# Evaluation in batches of 256: 1.5-2.8x faster than 1000 on the bf16 EPYC (benchmarks/eval_batch.py).
BASE_CONFIG = ExperimentConfig(batch_size=128, lr=0.1, optimizer="sgd", schedule="onecycle", weight_decay=5e-4,
                               init="kaiming", zero_init_residual=False, dropout=0.0, eval_batch_size=256)
WIDTH = 32             # SwappableCNN widths 32-64-128 (~95 k parameters, ~21 MFLOPs/image)


# ------------------------------------------------------------------------------------ layers
@dataclass(frozen=True)
class LayerVariant:
    name: str
    layer: str                # the base CNN's layer that is swapped ("-" for the base CNN itself)
    description: str
    swap: dict                # SwappableCNN keyword arguments


LAYER_VARIANTS = (
    LayerVariant("base", "-", f"SwappableCNN {WIDTH}-{2 * WIDTH}-{4 * WIDTH}: Conv2d, BN, ReLU, MaxPool2d(2); "
                 "avg-pool head", {}),
    LayerVariant("conv_ws", "conv", "conv -> CustomConv2d with weight standardisation",
                 {"conv": functools.partial(CustomConv2d, weight_standardization=True)}),
    LayerVariant("attn_se", "attention", f"+ ChannelAttention (SE, reduction {SE_REDUCTION}) after each activation",
                 {"attention": lambda ch: ChannelAttention(ch, SE_REDUCTION)}),
    LayerVariant("attn_cbam", "attention", f"+ CBAM (SE r={SE_REDUCTION} + 7x7 spatial attention) after each "
                 "activation", {"attention": lambda ch: CBAM(ch, SE_REDUCTION, kernel_size=7)}),
    LayerVariant("act_swish", "activation", "ReLU -> Swish, beta learnable (init 1)",
                 {"act": lambda: Swish(1.0, learnable=True)}),
    LayerVariant("act_silu_native", "activation", "ReLU -> nn.SiLU (native Swish with beta = 1)", {"act": nn.SiLU}),
    LayerVariant("pool_mixed", "pooling", "MaxPool2d -> MixedPool2d (alpha learnable, init 0.5)",
                 {"pool": lambda: MixedPool2d(2)}),
    LayerVariant("pool_avg_native", "pooling", "MaxPool2d -> nn.AvgPool2d (native)", {"pool": lambda: nn.AvgPool2d(2)}),
    LayerVariant("head_gem", "head pooling", "avg-pool head -> GeMPool2d (p learnable, init 3)",
                 {"head_pool": lambda: GeMPool2d(p=3.0)}),
)
# Besides every variant against the base CNN: each custom layer against its native twin.
NATIVE_PAIRS = (("act_swish", "act_silu_native"), ("pool_mixed", "pool_avg_native"), ("attn_cbam", "attn_se"))


def _swappable(classes: int, swap: dict) -> Callable[[ExperimentConfig], nn.Module]:
    return lambda c: SwappableCNN(WIDTH, 3, classes, **swap)


def layer_specs(classes: int, seeds: int) -> list[ModelSpec]:
    """Every variant for seeds ``0..seeds-1``, seed-major (a partial run covers every variant);
    group = the layer swapped, variant = the variant's name."""
    specs = [ModelSpec(v.name, _swappable(classes, v.swap), v.description, group=v.layer, variant=v.name)
             for v in LAYER_VARIANTS]
    return [s.with_seed(k) for k in range(seeds) for s in specs]


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


# ------------------------------------------------------------------------------------ blocks
BLOCK_TYPES = {"basic": BasicBlock, "bottleneck": BottleneckBlock, "wide": WideBlock}
STEM = 16                 # stem conv width of every net (CIFAR ResNet / WRN)
BLOCKS_PER_STAGE = 1      # 3 stages x 1 block: what fits the budget 3 seeds x 2 regimes + the sweep
WIDEN = 2                 # the wide block's canonical widen factor k on the basic widths
CANONICAL_WIDTHS = {"basic": (16, 32, 64), "bottleneck": (64, 128, 256),   # bottleneck: inner 16-32-64, x4
                    "wide": (16 * WIDEN, 32 * WIDEN, 64 * WIDEN)}
MATCH_TARGET = "bottleneck"   # matched regime: every block at the canonical bottleneck's parameter count
MATCH_TOL = 0.05
WIDTH_STEP = 8            # widths are multiples of 8: a 21-wide net trained 2x slower than a 16-wide one here
# The sweep: peak lr = factor x the recipe's lr (0.04 .. 1.6 at lr 0.1: five values over 40x);
# factor 1 is the matched regime's own run (reused).
SWEEP_FACTORS = (0.4, 1.0, 2.5, 6.3, 16.0)


def block_net(block: str, widths: Sequence[int], classes: int) -> nn.Module:
    """The skeleton every block is compared in: stem conv -> 3 stages (stride 2 in stages 2, 3) -> GAP -> linear."""
    return ResNet(BLOCK_TYPES[block], tuple(widths), (BLOCKS_PER_STAGE,) * len(widths), num_classes=classes,
                  stem_channels=STEM, block_dropout=0.0)


def scaled_widths(base: Sequence[int], k: int) -> tuple[int, ...]:
    """``base`` scaled by ``k / 64``, each width rounded to a multiple of :data:`WIDTH_STEP`."""
    return tuple(max(WIDTH_STEP, WIDTH_STEP * int(w * k / (64 * WIDTH_STEP) + 0.5)) for w in base)


def block_widths(regime: str, classes: int) -> dict[str, tuple[int, ...]]:
    """Stage widths per block: the canonical ones, or the canonical ones scaled by one factor per block
    (solved with ``solve_width_for_params``) so every net has the target block's parameter count."""
    if regime == "canonical":
        return dict(CANONICAL_WIDTHS)
    target = count_parameters(block_net(MATCH_TARGET, CANONICAL_WIDTHS[MATCH_TARGET], classes))["total"]
    out = {}
    for block, base in CANONICAL_WIDTHS.items():
        k, params = solve_width_for_params(lambda k, b=block, w=base: block_net(b, scaled_widths(w, k), classes),
                                           target, lo=8, hi=512)
        if relative_param_gap([params], target) > MATCH_TOL:
            raise RuntimeError(f"{block}: no width within {MATCH_TOL:.0%} of {target:,} parameters ({params:,})")
        out[block] = scaled_widths(base, k)
    return out


def _block_build(block: str, widths: tuple[int, ...], classes: int) -> Callable[[ExperimentConfig], nn.Module]:
    return lambda c: block_net(block, widths, classes)


def block_description(block: str, widths: Sequence[int], regime: str) -> str:
    inner = f" (inner {'-'.join(str(w // 4) for w in widths)})" if block == "bottleneck" else ""
    return (f"{BLOCK_TYPES[block].__name__} x{BLOCKS_PER_STAGE} per stage, widths {'-'.join(map(str, widths))}"
            f"{inner}, stem {STEM}; {regime}")


def block_specs(regime: str, widths: dict[str, tuple[int, ...]], classes: int, seeds: int) -> list[ModelSpec]:
    """Every block of ``regime`` for seeds ``0..seeds-1`` (seed-major); group = regime, variant = block."""
    specs = [ModelSpec(f"{b}_{regime}", _block_build(b, w, classes), block_description(b, w, regime), group=regime,
                       variant=b) for b, w in widths.items()]
    return [s.with_seed(k) for k in range(seeds) for s in specs]


def sweep_specs(widths: dict[str, tuple[int, ...]], classes: int, base_lr: float, seeds: int) -> list[ModelSpec]:
    """The matched nets at every lr of the sweep (group ``lr_sweep``, variant = block, ``lr`` set)."""
    lrs = [base_lr if f == 1 else float(f"{f * base_lr:.4g}") for f in SWEEP_FACTORS]   # 0.04, not 0.0400..01
    specs = [ModelSpec(f"{b}_lr{lr:g}", _block_build(b, w, classes), f"{block_description(b, w, 'matched')}; "
                       f"peak lr {lr:g}", group="lr_sweep", variant=b, lr=lr) for lr in lrs for b, w in widths.items()]
    return [s.with_seed(k) for k in range(seeds) for s in specs]


# ---------------------------------------------------------------------------------- analysis


def _mean(values: Sequence[float | None]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def experiment_timing(records: Sequence[RunRecord], experiment: str) -> dict:
    """Training seconds and wall seconds of the runs made by ``experiment`` (reused runs count where made)."""
    own = [r for r in records if r.experiment == experiment]
    train, total = sum(r.timing.get("train_s", 0.0) for r in own), sum(r.timing.get("total_s", 0.0) for r in own)
    return {"runs": len(own), "train_s": train, "total_s": total, "train_share": train / total if total else None}


def variant_numbers(runs: Sequence[RunRecord]) -> dict:
    """A variant over its seeds: every metric's mean and 95 % interval, plateau verdicts, size and cost."""
    return {**summarise_runs(runs, METRICS), "models": [r.model for r in runs], "runs": len(runs),
            "diverged": sum(not r.completed for r in runs), "diverged_at": [r.diverged_at for r in runs],
            "plateau_status": [convergence_of(r).get("val_acc", {}).get("status") for r in runs],
            "description": runs[0].description, "made_in": sorted({r.experiment for r in runs}),
            "params": runs[0].params["total"], "mflops": runs[0].flops_per_image / 1e6,
            "epoch_time_s": _mean([r.summary.epoch_time_s for r in runs]),
            "throughput_img_s": _mean([r.summary.throughput_img_s for r in runs]),
            "train_share": _mean([r.timing.get("train_share") for r in runs]),
            "per_seed": {"seed": [r.seed for r in runs], "test_acc": [r.test_acc for r in runs],
                         "final_val_acc": [METRICS["final_val_acc"](r) for r in runs]}}


def difference_row(a: str, runs_a: Sequence[RunRecord], b: str, runs_b: Sequence[RunRecord]) -> dict:
    """``a - b`` of test and final validation accuracy with 95 % intervals and the README's verdict."""
    row: dict = {"a": a, "b": b}
    for metric in ("test_acc", "final_val_acc"):
        d = compare(runs_a, runs_b, METRICS[metric])
        row[metric] = {**d.as_dict(), "verdict": verdict(d)}
    return row


def _by_variant(records: Sequence[RunRecord]) -> dict[str, list[RunRecord]]:
    """``variant -> runs`` whatever their group (a reused run keeps the group of the experiment that made it)."""
    return {v: [r for r in records if r.variant == v] for v in dict.fromkeys(r.variant for r in records)}


def _status(records: Sequence[RunRecord]) -> dict:
    bad = sum(not r.completed for r in records)
    return {"runs": len(records), "diverged_runs": bad, "all_diverged": bool(records) and bad == len(records)}


def layers_numbers(records: Sequence[RunRecord], learned: dict[str, dict] | None = None) -> dict:
    """Every layer variant over seeds, each against the base CNN and each custom layer against its native twin."""
    groups, learned = _by_variant(records), learned or {}
    base = groups.get("base", [])
    base_time = _mean([r.summary.epoch_time_s for r in base])
    variants = {}
    for name, runs in groups.items():
        v = variant_numbers(runs)
        variants[name] = {**v, "layer": runs[0].group, "extra_params_vs_base": v["params"] - base[0].params["total"]
                          if base else None, "epoch_time_ratio_vs_base": v["epoch_time_s"] / base_time,
                          "learned": {r.model: learned.get(r.model, {}) for r in runs}}
    return {**_status(records), "variants": variants,
            "vs_base": [difference_row(n, runs, "base", base) for n, runs in groups.items() if n != "base" and base],
            "custom_vs_native": [difference_row(a, groups[a], b, groups[b]) for a, b in NATIVE_PAIRS
                                 if a in groups and b in groups],
            "timing": experiment_timing(records, f"{SUBDIR}/layers"),
            "data": records[0].data if records else {}, "config": records[0].config if records else {},
            "note": "differences: mean(a) - mean(b), fractions, 95 % t interval, paired by seed; 'real' only when "
                    "the interval excludes zero"}


def blocks_numbers(records: Sequence[RunRecord], regime: str, widths: dict[str, tuple[int, ...]]) -> dict:
    """The blocks of one regime over seeds, every pair of blocks compared, params matched or not."""
    groups = _by_variant(records)
    blocks = {b: {**variant_numbers(runs), **stability_over_seeds(runs), "widths": list(widths.get(b, ()))}
              for b, runs in groups.items()}
    params, names = {b: v["params"] for b, v in blocks.items()}, list(groups)
    gap = relative_param_gap(list(params.values()), params[MATCH_TARGET]) if MATCH_TARGET in params else None
    return {**_status(records), "regime": regime, "blocks": blocks, "params": params, "param_gap_vs_target": gap,
            "match_target": MATCH_TARGET, "match_tol": MATCH_TOL,
            "differences": [difference_row(a, groups[a], b, groups[b]) for i, a in enumerate(names)
                            for b in names[i + 1:]],
            "timing": experiment_timing(records, f"{SUBDIR}/blocks_{regime}"),
            "config": {k: v for k, v in records[0].config.items() if k != "seed"} if records else {},
            "data": records[0].data if records else {}}


def choose_common_lr(sweep: dict) -> dict:
    """One peak lr for every block (equal hyper-parameters), read on validation only: the sweep lr
    with the highest final validation accuracy averaged over the blocks; an lr at which any block
    diverged or has no finished run is ruled out. ``sweep``: :func:`sweep_numbers`' output."""
    by_block = {b: {p["lr"]: p for p in v["points"]} for b, v in sweep["blocks"].items()}
    lrs = sorted({lr for points in by_block.values() for lr in points})
    scores: dict[float, float | None] = {}
    for lr in lrs:
        points = [points.get(lr) for points in by_block.values()]
        vals = [p["final_val_acc"]["mean"] if p and not p["diverged"] else None for p in points]
        ok = bool(vals) and all(v is not None and math.isfinite(v) for v in vals)
        scores[lr] = float(np.mean(vals)) if ok else None
    valid = {lr: v for lr, v in scores.items() if v is not None}
    chosen = max(valid, key=valid.get) if valid else None
    return {"rule": "highest final validation accuracy averaged over the blocks (test set not read); an lr at "
                    "which a block diverged is ruled out",
            "mean_val_acc_by_lr": {f"{lr:g}": v for lr, v in scores.items()}, "chosen_lr": chosen,
            "at_grid_edge": chosen is not None and chosen in (lrs[0], lrs[-1])}


def sweep_numbers(records: Sequence[RunRecord], base_lr: float) -> dict:
    """Per block and lr: accuracies over seeds, divergence, spikes, gradient norms; the frontier per block."""
    blocks = {b: {**sweep_points(runs), "params": runs[0].params["total"]} for b, runs in _by_variant(records).items()}
    return {**_status(records), "base_lr": base_lr, "factors": list(SWEEP_FACTORS), "blocks": blocks,
            "spike_definition": {"window_steps": SPIKE_WINDOW, "rises_percent": [100 * x for x in SPIKE_RISES],
                                 "rule": "training loss of a step > (1 + rise) x mean of the previous window steps"},
            "timing": experiment_timing(records, f"{SUBDIR}/lr_sweep")}


# ---------------------------------------------------------------------------- tables, files
def _pct(s: dict) -> str:
    if s["n"] == 0:
        return "–"
    half = "" if math.isnan(s["half_width"]) else f" ± {100 * s['half_width']:.2f}"
    return f"{100 * s['mean']:.2f}{half} % (n={s['n']})"


def _diff(row: dict, metric: str = "test_acc") -> str:
    d = row[metric]
    if math.isnan(d["mean_difference"]):
        return f"– ({d['verdict']})"
    ci = "" if math.isnan(d["ci95_low"]) else f" [{100 * d['ci95_low']:+.2f}, {100 * d['ci95_high']:+.2f}]"
    return f"{100 * d['mean_difference']:+.2f} pp{ci}: {d['verdict']}"


def _num(v: float | None, fmt: str = ".3g") -> str:
    return "–" if v is None or not math.isfinite(v) else format(v, fmt)


def _runs_note(n: dict) -> str:
    if n["all_diverged"]:
        return f"**Every run diverged ({n['diverged_runs']} of {n['runs']}).**"
    return f"{n['runs']} runs, {n['diverged_runs']} diverged."


def _diff_table(rows: Sequence[dict]) -> str:
    return markdown_table(["a", "b", "test acc a − b [95 % CI]", "final val acc a − b [95 % CI]"],
                          [[r["a"], r["b"], _diff(r), _diff(r, "final_val_acc")] for r in rows])


def layers_markdown(n: dict) -> str:
    rows = [[name, v["layer"], f"{v['params']:,}", _num(v["mflops"], ".1f"), _pct(v["test_acc"]),
             _pct(v["final_val_acc"]), f"{v['converged']}/{v['runs']}", _num(v["epoch_time_s"], ".1f"),
             _num(v["epoch_time_ratio_vs_base"], ".2f")] for name, v in n["variants"].items()]
    return "\n\n".join([_runs_note(n), markdown_table(
        ["variant", "layer swapped", "params", "MFLOPs/img", "test acc (95 % CI)", "final val acc (95 % CI)",
         "val plateaued", "s/epoch", "× base time"], rows), _diff_table(n["vs_base"] + n["custom_vs_native"])]) + "\n"


def blocks_markdown(n: dict) -> str:
    rows = [[b, "-".join(map(str, v["widths"])), f"{v['params']:,}", _num(v["mflops"], ".1f"), _pct(v["test_acc"]),
             _pct(v["final_val_acc"]), f"{v['converged']}/{v['runs']}", _num(v["epoch_time_s"], ".1f"),
             _num(v["grad_norm_median"]["mean"])] for b, v in n["blocks"].items()]
    gap = "–" if n["param_gap_vs_target"] is None else f"{100 * n['param_gap_vs_target']:.1f} %"
    return "\n\n".join([f"Regime **{n['regime']}**; largest parameter gap to the {n['match_target']} net: {gap}. "
                        + _runs_note(n), markdown_table(
                            ["block", "widths", "params", "MFLOPs/img", "test acc (95 % CI)", "final val acc (95 % CI)",
                             "val plateaued", "s/epoch", "median grad norm"], rows),
                        _diff_table(n["differences"])]) + "\n"


def sweep_markdown(n: dict) -> str:
    rises = [f"{x:g}" for x in n["spike_definition"]["rises_percent"]]
    rows = [[b, f"{p['lr']:g}", f"{p['n'] - p['diverged']}/{p['n']}", _pct(p["final_val_acc"]), _pct(p["test_acc"])]
            + [_num(p["loss_spike_steps"][r], ".1f") for r in rises]
            + [_num(p["grad_norm_median"]), _num(p["grad_norm_max"])]
            for b, v in n["blocks"].items() for p in v["points"]]
    frontier = [f"- {b}: " + (f"diverges from lr {v['frontier']['frontier']:g}" if v["frontier"]["frontier"] else
                              "no divergence in the sweep")
                + f"; best lr by validation: {_num(v['best_lr_by_val'], 'g')}" for b, v in n["blocks"].items()]
    return "\n\n".join([_runs_note(n) + f" Spike: a step's training loss > (1 + x) × the mean of the previous "
                        f"{n['spike_definition']['window_steps']} steps.", markdown_table(
                            ["block", "peak lr", "completed", "final val acc", "test acc"]
                            + [f"spike steps (x={r} %)" for r in rises] + ["grad norm median", "grad norm max"], rows),
                        "\n".join(frontier)]) + "\n"


def _read_sweep(path: Path) -> dict:
    """The lr sweep's analysis, for ``--only blocks_tuned``; a clear error when the sweep has not run."""
    if not path.is_file():
        raise UsageError(f"blocks_tuned needs the lr sweep's results ({path}): run --only lr_sweep first")
    return read_json(path)


def write_analysis(numbers: dict, markdown: str, exp_dir: Path, what: str) -> None:
    write_json(exp_dir / "analysis.json", json_safe(numbers))
    atomic_write_text(exp_dir / "analysis.md", markdown)
    if numbers["all_diverged"]:
        log.warning("%s: every run diverged (%d runs); the analysis says so in %s", what, numbers["runs"], exp_dir)


# -------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = build_parser(__doc__.splitlines()[0], EXPERIMENTS, default_plots="plots/custom_layers")
    args = parser.parse_args(argv)
    dirs = prepare_output_dirs(args)
    out_dir = make_dir(dirs.results / SUBDIR)
    setup_logging(out_dir / "custom_layers_experiments.log", args.verbose)
    runtime = resolve_runtime(args.device, args.precision)
    executor = executor_from_args(args)
    profile = PROFILES[args.profile]
    todo = args.only or EXPERIMENTS
    log.info("profile %s (%s), runtime %s", args.profile, asdict(profile), runtime.describe())
    wall0, timing = time.perf_counter(), {"profile": args.profile, "only": list(todo), "experiments": {}}

    if "speed" in todo:
        run_speed(profile.speed_batch, profile.speed_repeats, runtime, out_dir, dirs.plots, args.force)
        timing["speed_s"] = time.perf_counter() - wall0
    if set(todo) - {"speed"}:
        data = load_data(args, dirs, "cifar10", profile.train_subset, profile.test_subset, profile.val_size)
        classes = data.num_classes
        source = f"{data.source}, {len(data.train)} train / {len(data.val)} val / {len(data.test)} test"
        base = BASE_CONFIG.replace(eval_points=profile.eval_points, val_eval_samples=profile.val_eval_samples,
                                   train_eval_samples=profile.train_eval_samples,
                                   grad_sample_every=profile.grad_sample_every)
    if "layers" in todo:
        cfg = apply_cli_overrides(base.replace(epochs=profile.layers_epochs), args)
        run = run_experiment(f"{SUBDIR}/layers", layer_specs(classes, profile.seeds), data, cfg, runtime, dirs.results,
                             force=args.force, keep_models=True, title=f"CIFAR-10 layer swaps ({source})",
                             executor=executor)
        numbers = layers_numbers(run.records, {name: learned_scalars(m) for name, m in run.models.items()})
        write_analysis(numbers, layers_markdown(numbers), out_dir / "layers", "layers")
        block_plots.plot_layer_swaps(numbers, dirs.plots / "layers_swap_summary.png",
                                     f"CIFAR-10, one layer of the base CNN swapped at a time ({source})")
        timing["experiments"]["layers"] = numbers["timing"]
    pool: list[RunRecord] = []
    if {"blocks", "lr_sweep", "blocks_tuned"} & set(todo):
        cfg = apply_cli_overrides(base.replace(epochs=profile.blocks_epochs), args)
    if "blocks" in todo:
        regimes = {}
        for regime in ("canonical", "matched"):
            widths = block_widths(regime, classes)
            records = run_reusing(f"{SUBDIR}/blocks_{regime}", block_specs(regime, widths, classes, profile.seeds),
                                  pool, data, cfg, runtime, dirs.results, args.force,
                                  f"CIFAR-10 residual blocks, {regime} ({source})", executor=executor)
            pool += records
            regimes[regime] = blocks_numbers(records, regime, widths)
            write_analysis(regimes[regime], blocks_markdown(regimes[regime]), out_dir / f"blocks_{regime}",
                           f"blocks ({regime})")
            block_plots.plot_seed_bands(_by_variant(records), dirs.plots / f"blocks_{regime}_curves.png",
                                        f"Residual blocks, {regime} configurations: mean and min-max over seeds "
                                        f"(peak lr {cfg.lr:g})")
            timing["experiments"][f"blocks_{regime}"] = regimes[regime]["timing"]
        block_plots.plot_block_regimes(regimes, dirs.plots / "blocks_regimes.png",
                                       f"Residual blocks on CIFAR-10 ({source})")
    if "lr_sweep" in todo:
        if not pool and not args.force:   # the sweep's base-lr runs may exist from an earlier invocation
            pool = [r for regime in ("canonical", "matched") for r in load_records(out_dir / f"blocks_{regime}")]
        records = run_reusing(f"{SUBDIR}/lr_sweep", sweep_specs(block_widths("matched", classes), classes, cfg.lr,
                                                                 profile.sweep_seeds),
                              pool, data, cfg, runtime, dirs.results, args.force,
                              f"CIFAR-10 residual blocks, lr sweep ({source})", executor=executor)
        numbers = sweep_numbers(records, cfg.lr)
        write_analysis(numbers, sweep_markdown(numbers), out_dir / "lr_sweep", "lr sweep")
        block_plots.plot_lr_sweep(numbers, dirs.plots / "blocks_lr_sweep.png",
                                  f"Residual blocks (matched size) along a learning-rate sweep ({source})")
        timing["experiments"]["lr_sweep"] = numbers["timing"]
    if "blocks_tuned" in todo:
        sweep = numbers if "lr_sweep" in todo else _read_sweep(out_dir / "lr_sweep" / "analysis.json")
        choice = choose_common_lr(sweep)
        if choice["chosen_lr"] is None:
            log.warning("blocks_tuned: no sweep lr at which every block finished; nothing to run")
        else:
            pool = [r for exp in ("lr_sweep", "blocks_matched", "blocks_canonical")
                    for r in load_records(out_dir / exp)] if not args.force else []
            widths = block_widths("matched", classes)
            tuned_cfg = cfg.replace(lr=choice["chosen_lr"])
            records = run_reusing(f"{SUBDIR}/blocks_tuned", block_specs("tuned", widths, classes, profile.seeds),
                                  pool, data, tuned_cfg, runtime, dirs.results, args.force,
                                  f"CIFAR-10 residual blocks, matched, lr chosen on the sweep ({source})",
                                  executor=executor)
            tuned = {**blocks_numbers(records, "tuned", widths), "lr_choice": choice}
            write_analysis(tuned, f"Peak lr {choice['chosen_lr']:g} for every block: {choice['rule']} "
                                  f"(grid edge: {choice['at_grid_edge']}).\n\n" + blocks_markdown(tuned),
                           out_dir / "blocks_tuned", "blocks (tuned lr)")
            block_plots.plot_seed_bands(_by_variant(records), dirs.plots / "blocks_tuned_curves.png",
                                        f"Residual blocks, matched size, at the lr chosen on the sweep: mean and "
                                        f"min-max over seeds (peak lr {choice['chosen_lr']:g})")
            timing["experiments"]["blocks_tuned"] = tuned["timing"]
    wall = time.perf_counter() - wall0
    train = sum(t["train_s"] for t in timing["experiments"].values())
    # The script's wall time is that of a whole invocation: one of a part (--only) does not replace it.
    write_json(out_dir / ("timing.json" if args.only is None else "timing_partial.json"), json_safe({
        **timing, "wall_s": wall, "train_s_of_runs_made": train, "train_share_of_wall": train / wall,
        "runtime": runtime.describe(),
        "note": "wall_s is this invocation; train_s counts every run of the experiments at the time it was made, "
                "so the share is the script's only when every run was trained in this invocation"}))
    log.info("done in %.1f min: results in %s, figures in %s", wall / 60, out_dir, dirs.plots)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
