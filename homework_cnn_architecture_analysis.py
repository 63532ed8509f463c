"""Task 2: CNN architecture analysis: kernel size and depth, on CIFAR-10 by default.

    python homework_cnn_architecture_analysis.py                       # standard profile, every study
    python homework_cnn_architecture_analysis.py --only kernel --profile quick
    python homework_cnn_architecture_analysis.py --dataset mnist       # MNIST (too easy to separate them)

Experiments (``--only``):
  kernel  3x3 vs 5x5 vs 7x7 vs 1x1+3x3 convolutions at the same parameter count (each within
          +-2 % of the 3x3 reference, widths solved here), three seeds each; theoretical receptive
          fields, the effective receptive field (ERF) of the trained nets checked against a flat
          box over the theoretical RF, ERF growth layer by layer, first-layer activations/filters.
  depth   plain vs residual nets (BN, Kaiming init) at three depths of the CIFAR ResNet (6n+2)
          layout, plus plain nets with 2 and 4 convolutions, over seeds: the degradation problem
          read on training accuracy (He et al. 2016, Fig. 1/6), accuracy and training time against
          depth, feature maps; a zero-init-residual control.
  nobn    plain-20 and ResNet-20 without normalisation, under PyTorch's default init and under
          Kaiming init, each at a learning rate chosen on validation by pilot runs (kept as
          ``depth_nobn_pilots/pilot_*.json``): residual connections rescuing training vs a bad init.

Every choice is read on a validation split held out of the training set; the test set is evaluated
once at the end of each run. Writes ``results/architecture_analysis/<experiment>/`` (a JSON per run,
summary.csv/md, analysis.json/md) and ``plots/architecture_analysis/``.
"""

from __future__ import annotations

import copy
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from models.cnn_models import BasicBlock, KernelSizeCNN, PlainCNN, ResNet, resnet_like_plain
from utils import architecture_numbers as numbers
from utils import plots_architecture as arch_plots
from utils import plots_depth
from utils import visualization_utils as viz
from utils.activations import collect_activations
from utils.cli import (apply_cli_overrides, build_parser, load_data, prepare_output_dirs, run_cli,
                       setup_logging)
from utils.data import BatchLoader, DatasetSplits
from utils.erf import erf_growth, last_map_before_pool, unit_erf
from utils.experiment import ExperimentConfig, ModelSpec
from utils.files import atomic_write_text, write_json
from utils.model_stats import (conv_layer_costs, count_parameters, relative_param_gap, solve_width_for_params,
                               within_tolerance)
from utils.receptive_field import layer_specs_from_module, receptive_field
from utils.records import RunRecord, write_summary
from utils.runner import ExperimentRun, load_records, run_experiment
from utils.runtime import Runtime, resolve_runtime
from utils.timing import time_forward_backward
from utils.training_utils import build_model

log = logging.getLogger("architecture_analysis")
EXPERIMENTS = ("kernel", "depth", "nobn")
PARAM_TOLERANCE = 0.02
ERF_MASS = 0.95
MASSES = (0.5, 0.9, ERF_MASS)   # ERF squares recorded beside the flat box's


@dataclass(frozen=True)
class Profile:
    train_subset: int | None      # stratified training images (after the validation hold-out)
    test_subset: int | None
    kernel_width: int             # width of the 3x3 reference model: sets the common parameter target
    kernel_epochs: int
    kernel_seeds: int
    depth_epochs: int             # the depth study and its no-normalisation control
    depth_seeds: int
    depths: tuple[int, ...]       # weighted layers (6n+2) of the plain and residual families
    nobn_lrs: tuple[float, ...]   # pilot learning rates of each no-normalisation net
    nobn_pilot_epochs: int
    nobn_seeds: int
    analysis_images: int          # test images averaged for the ERF
    val_size: int = 5000          # held out of the training set; every choice is read on it


PROFILES = {
    "quick": Profile(train_subset=1000, test_subset=300, kernel_width=16, kernel_epochs=1, kernel_seeds=1,
                     depth_epochs=1, depth_seeds=1, depths=(8, 20), nobn_lrs=(0.01, 0.05), nobn_pilot_epochs=1,
                     nobn_seeds=1, analysis_images=16, val_size=300),
    # SIZING (measured throughputs are in the README's appendix; batch 128, bf16 autocast, 2 threads):
    # TODO(sizing) filled in from the probe below.
    "standard": Profile(train_subset=10_000, test_subset=None, kernel_width=32, kernel_epochs=10, kernel_seeds=3,
                        depth_epochs=10, depth_seeds=2, depths=(8, 20, 44), nobn_lrs=(0.002, 0.01, 0.05),
                        nobn_pilot_epochs=4, nobn_seeds=2, analysis_images=64),
    "full": Profile(train_subset=None, test_subset=None, kernel_width=48, kernel_epochs=30, kernel_seeds=3,
                    depth_epochs=30, depth_seeds=3, depths=(20, 32, 56), nobn_lrs=(0.002, 0.005, 0.01, 0.02, 0.05),
                    nobn_pilot_epochs=10, nobn_seeds=3, analysis_images=256),
}

# One config for every study, fixed before any result was seen: He et al.'s CIFAR recipe as far as
# a CPU budget allows (SGD-Nesterov, batch 128, weight decay 1e-4, no augmentation so that the
# training error measures optimisation alone), one-cycle at peak lr 0.05. Kaiming init (the
# engine's default), zero-init residual off. No gradient clipping: divergence must stay visible.
# Curves at 16 points of each run on fixed 2000 validation / 1000 training images (the plateau
# verdict then has 3-4 points in the last 20 % of a run); the test set once at the end.
ARCH_CONFIG = ExperimentConfig(batch_size=128, lr=0.05, optimizer="sgd", schedule="onecycle", weight_decay=1e-4,
                               grad_sample_every=25, eval_points=16, val_eval_samples=2000, train_eval_samples=1000)
PILOT_EVAL_POINTS = 6   # pilots need only their final validation accuracy

KERNEL_NAMES = {"3x3": "conv3x3", "5x5": "conv5x5", "7x7": "conv7x7", "1x1+3x3": "conv1x1_3x3"}
# variant label -> KernelSizeCNN arguments
KERNEL_VARIANTS = {"3x3": {"kernel_size": 3}, "5x5": {"kernel_size": 5}, "7x7": {"kernel_size": 7},
                   "1x1+3x3": {"kernel_size": 3, "reduce_1x1": True}}

RESNET_WIDTHS = (16, 32, 64)           # the CIFAR ResNet of He et al. (2016), Sec. 4.2
SHALLOW_PLAIN = {3: (32, 64), 5: (16, 32, 64, 64)}   # weighted layers -> conv widths (2 and 4 convs)
NOBN_DEPTH = 20
INITS = {"pytorch_default": "default_init", "kaiming": "kaiming"}   # init scheme -> name part


def kernel_cnn(kernel: str, width: int, in_ch: int = 3, classes: int = 10,
               stage_widths: tuple[int, ...] | None = None) -> KernelSizeCNN:
    """The kernel study's model for the variant labelled ``kernel`` (a key of ``KERNEL_VARIANTS``)."""
    return KernelSizeCNN(width=width, in_channels=in_ch, num_classes=classes, stage_widths=stage_widths,
                         **KERNEL_VARIANTS[kernel])


# ------------------------------------------------------------------------------------ specs
def match_kernel_widths(reference_width: int, in_ch: int = 3, classes: int = 10,
                        tol: float = PARAM_TOLERANCE) -> dict:
    """Stage widths giving every kernel variant the parameter count of the 3x3 model at
    ``reference_width`` (within ``tol``).

    Two steps: the base width ``w`` (stages ``w, 2w, 4w``) closest to the target, then the last
    stage's width alone, which holds most of the parameters: at ``w ~ 21`` (7x7) one base-width
    step moves the count by ~10 %, one last-stage channel by ~1 %.

    Raises:
        RuntimeError: a variant is outside the tolerance (the comparison would be unfair).
    """
    target = count_parameters(kernel_cnn("3x3", reference_width, in_ch, classes))["total"]
    variants = {}
    for kernel in KERNEL_VARIANTS:
        w, _ = solve_width_for_params(lambda x: kernel_cnn(kernel, x, in_ch, classes), target)
        w3, params = solve_width_for_params(
            lambda x: kernel_cnn(kernel, w, in_ch, classes, stage_widths=(w, 2 * w, x)), target, lo=w, hi=16 * w)
        variants[kernel] = {"kernel": kernel, "name": KERNEL_NAMES[kernel], "base_width": w,
                            "stage_widths": [w, 2 * w, w3], "params": params,
                            "relative_gap": (params - target) / target}
    counts = [v["params"] for v in variants.values()]
    if not within_tolerance(counts, target, tol):
        raise RuntimeError(f"parameter matching failed: counts {counts} vs target {target} "
                           f"(worst gap {100 * relative_param_gap(counts, target):.2f} % > {100 * tol:.0f} %)")
    return {"reference": f"3x3 at width {reference_width}", "target_params": target, "tolerance": tol,
            "max_relative_gap": relative_param_gap(counts, target), "variants": variants}


def kernel_specs(matching: dict, in_ch: int, classes: int, seeds: int) -> list[ModelSpec]:
    """Every kernel variant (``group="kernel_size"``, ``variant`` = its label) for seeds
    ``0..seeds-1``, seed-major (a study stopped half-way has every variant at its first seed)."""
    base = []
    for kernel, v in matching["variants"].items():
        widths = tuple(v["stage_widths"])

        def build(c: ExperimentConfig, kernel=kernel, widths=widths) -> nn.Module:
            return kernel_cnn(kernel, widths[0], in_ch, classes, stage_widths=widths)

        layout = "1x1 (w/2) + 3x3 (w)" if kernel == "1x1+3x3" else f"{kernel} conv"
        base.append(ModelSpec(v["name"], build, f"3 stages of {layout}-BN-ReLU-maxpool, widths "
                                                f"{'-'.join(map(str, widths))}, GAP, linear",
                              group="kernel_size", variant=kernel))
    return [s.with_seed(k) for k in range(seeds) for s in base]


def _plain(widths, in_ch: int, classes: int, norm: bool = True) -> Callable[[ExperimentConfig], nn.Module]:
    return lambda c: PlainCNN(list(widths), in_channels=in_ch, num_classes=classes, norm=norm)


def _resnet(depth: int, in_ch: int, classes: int, norm: bool = True) -> Callable[[ExperimentConfig], nn.Module]:
    n = blocks_per_stage(depth)
    return lambda c: ResNet(BasicBlock, RESNET_WIDTHS, (n,) * 3, in_channels=in_ch, num_classes=classes, norm=norm)


def blocks_per_stage(depth: int) -> int:
    """``n`` of a CIFAR ResNet with ``depth = 6n + 2`` weighted layers (He et al. 2016, Sec. 4.2)."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"depth {depth} is not of the form 6n + 2 (8, 14, 20, 32, 44, 56, ...)")
    return (depth - 2) // 6


def depth_specs(depths: tuple[int, ...], seeds: int, in_ch: int, classes: int) -> list[ModelSpec]:
    """Plain (``group="plain"``) and residual (``group="residual"``) nets at each depth of the
    6n+2 layout (``variant`` = weighted layers), plus plain nets with 2 and 4 convolutions, for
    seeds ``0..seeds-1``, seed-major. Both families: widths 16/32/64, BN; the plain net is the
    ResNet without its shortcuts (same convs, same strides)."""
    widths = "/".join(map(str, RESNET_WIDTHS))
    base = [ModelSpec(f"plain{d}", _plain(w, in_ch, classes), f"plain, {len(w)} conv3x3 ({'-'.join(map(str, w))}), "
                      "BN, GAP, linear", group="plain", variant=str(d)) for d, w in SHALLOW_PLAIN.items()]
    for d in depths:
        n = blocks_per_stage(d)
        base.append(ModelSpec(f"plain{d}", _plain(resnet_like_plain(n, RESNET_WIDTHS), in_ch, classes),
                              f"plain-{d}: {d - 1} conv3x3 ({widths}, {2 * n} per stage + stem), BN, GAP, linear",
                              group="plain", variant=str(d)))
        base.append(ModelSpec(f"resnet{d}", _resnet(d, in_ch, classes),
                              f"ResNet-{d}: stem + {3 * n} BasicBlocks ({widths}), BN, GAP, linear",
                              group="residual", variant=str(d)))
    return [s.with_seed(k) for k in range(seeds) for s in base]


def zero_init_specs(depth: int, seeds: int, in_ch: int, classes: int) -> list[ModelSpec]:
    """The labelled control: ResNet-``depth`` run with zero-init of each block's last BN gamma."""
    spec = ModelSpec(f"resnet{depth}_zero_init", _resnet(depth, in_ch, classes),
                     f"ResNet-{depth} as in the depth study, last BN gamma of every block zero-initialised",
                     group="residual_zero_init", variant=str(depth))
    return [spec.with_seed(k) for k in range(seeds)]


def nobn_specs(in_ch: int, classes: int, lrs: dict[str, tuple[float, ...]], seeds: int,
               pilot: bool) -> dict[str, list[ModelSpec]]:
    """Plain-20 and ResNet-20 without normalisation (``group`` = net, ``variant`` = init scheme,
    ``lr`` = the spec's learning rate), by init scheme. ``lrs``: ``"<group>/<init>"`` -> the lrs
    to run (pilots: the candidates, one seed; finals: the one chosen, ``seeds`` seeds)."""
    nets = {f"plain{NOBN_DEPTH}_nobn": (_plain(resnet_like_plain(blocks_per_stage(NOBN_DEPTH), RESNET_WIDTHS), in_ch,
                                               classes, norm=False), f"plain-{NOBN_DEPTH} without normalisation"),
            f"resnet{NOBN_DEPTH}_nobn": (_resnet(NOBN_DEPTH, in_ch, classes, norm=False),
                                         f"ResNet-{NOBN_DEPTH} without normalisation")}
    out: dict[str, list[ModelSpec]] = {init: [] for init in INITS}
    for init, part in INITS.items():
        for net, (build, desc) in nets.items():
            for lr in lrs[f"{net}/{init}"]:
                name = f"pilot_{net}_{part}_lr{lr:g}" if pilot else f"{net}_{part}"
                spec = ModelSpec(name, build, f"{desc}, init {init}, lr {lr:g}", group=net, variant=init, lr=lr)
                out[init] += [spec] if pilot else [spec.with_seed(k) for k in range(seeds)]
    return out


def run_parts(experiment: str, parts: list[tuple[dict, list[ModelSpec]]], data: DatasetSplits,
              cfg: ExperimentConfig, runtime: Runtime, results: Path, force: bool, title: str,
              keep_models: bool = True) -> ExperimentRun:
    """:func:`run_experiment` for each ``(config changes, specs)`` part into one experiment folder,
    then one summary of all of them. Why parts: the init scheme and zero-init are experiment-wide
    config fields (recorded in every run), so the runs that differ in them run as separate parts."""
    merged = ExperimentRun([])
    for changes, specs in parts:
        if specs:
            run = run_experiment(experiment, specs, data, cfg.replace(**changes), runtime, results, force=force,
                                 keep_models=keep_models, title=title)
            merged.records += run.records
            merged.models.update(run.models)
    write_summary(merged.records, results / experiment, title)
    return merged


# ----------------------------------------------------------------------- analysis helpers
def _fixed_test_images(data: DatasetSplits, n: int, seed: int = 0) -> torch.Tensor:
    """The same ``n`` test images (uint8) for every model and every run."""
    idx = torch.randperm(len(data.test), generator=torch.Generator().manual_seed(seed))[:n]
    return data.test.images[idx]


def _normaliser(data: DatasetSplits, runtime: Runtime) -> Callable[[torch.Tensor], torch.Tensor]:
    loader = BatchLoader(data.test, 1, data.mean, data.std, device=runtime.device, channels_last=runtime.channels_last)
    return loader.normalise


def side_by_side_step_times(models: dict[str, nn.Module], image_shape: tuple[int, ...], batch: int,
                            runtime: Runtime, repeats: int = 9) -> dict:
    """Forward+backward time of one training batch per model, measured round-robin.

    Why next to the engine's training time: that one is wall time per model, measured at
    different moments, so any other load on the machine lands on some models only. Here the
    models take turns (``utils.timing.time_forward_backward`` rotates the order every round), so
    a background load hits all of them alike and the ratios stay fair. Deep copies in train mode:
    the BN running statistics of the trained models are not touched.
    """
    copies = {name: copy.deepcopy(m).train() for name, m in models.items()}
    x = torch.randn((batch, *image_shape), generator=torch.Generator().manual_seed(0)).to(runtime.device)
    if runtime.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    times = time_forward_backward(copies, x, repeats=repeats, warmup=2)
    return {name: {"batch": batch, "median_ms_per_batch": t["median_ms"], "img_per_s": 1000.0 * batch / t["median_ms"]}
            for name, t in times.items()}


def _write_analysis(out_dir: Path, analysis: dict, to_markdown: Callable[[dict], str]) -> dict:
    """``analysis.json`` (NaN written as null) and ``analysis.md`` rendered from the same dict."""
    analysis = numbers.json_safe(analysis)
    write_json(out_dir / "analysis.json", analysis)
    atomic_write_text(out_dir / "analysis.md", to_markdown(analysis))
    return analysis


def _log_divergence(experiment: str, report: dict) -> None:
    if report["all_diverged"]:
        log.warning("%s: every run diverged (%s); no trained model to analyse, writing sizes, costs and the "
                    "curves up to the divergence", experiment, ", ".join(report["diverged"]))
    elif report["diverged"]:
        log.warning("%s: diverged runs: %s", experiment, ", ".join(report["diverged"]))


# ---------------------------------------------------------------------------- kernel study
def analyse_kernels(run: ExperimentRun, specs: list[ModelSpec], matching: dict, data: DatasetSplits,
                    cfg: ExperimentConfig, runtime: Runtime, out_dir: Path, plots: Path, prefix: str,
                    n_images: int) -> dict:
    """Over seeds: accuracy, time, differences vs 3x3. On the first seed of each variant:
    receptive fields (theoretical; ERF at init and trained, beside a flat box; growth per layer),
    FLOPs by resolution, first-layer activations and filters. Writes ``analysis.json/md`` + figures."""
    images = _fixed_test_images(data, n_images)
    x = _normaliser(data, runtime)(images)
    divergence = numbers.divergence_report(run.records)
    _log_divergence(out_dir.name, divergence)
    first = numbers.first_seed(run.records)
    spec_of = {s.name: s for s in specs}
    table, rf_variants, growth_variants, first_acts, first_filters = {}, [], [], {}, {}
    for rec in first:
        model, kernel = run.models[rec.model], rec.variant
        layer, n_specs = last_map_before_pool(model.features)
        rows = receptive_field(layer_specs_from_module(model.features))
        unit = rows[n_specs - 1]
        hw = tuple(collect_activations(model, x[:1], {"erf": layer})["erf"].shape[-2:])
        center = (unit.center(hw[0] // 2), unit.center(hw[1] // 2))
        init_model = build_model(spec_of[rec.model], spec_of[rec.model].config_for(cfg))[0].to(runtime.device)
        erfs = {"init": unit_erf(init_model, x, last_map_before_pool(init_model.features)[0], unit, hw, MASSES),
                "trained": unit_erf(model, x, layer, unit, hw, MASSES) if rec.completed else None}
        costs = conv_layer_costs(model, data.image_shape)
        by_res: dict[str, dict[str, int]] = {"flops": {}, "params": {}}
        for c in costs:
            key = f"{c['out_hw'][0]}x{c['out_hw'][1]}"
            for k in by_res:
                by_res[k][key] = by_res[k].get(key, 0) + c[k]
        v = matching["variants"][kernel]
        table[kernel] = {
            "model": rec.model, "stage_widths": v["stage_widths"], "params": rec.params["total"],
            "param_gap": v["relative_gap"], "mflops": rec.flops_per_image / 1e6, "status": rec.status,
            "rf_layers": [{"layer": r.name, "size": r.size, "jump": r.jump, "start": r.start} for r in rows],
            "erf_layer": f"features.{unit.name} (last conv, before the last max-pool)", "erf_map_size": list(hw),
            "theoretical_rf": unit.size, "theoretical_rf_final": rows[-1].size, "erf_center": list(center),
            "erf_init": erfs["init"][0] if erfs["init"] else None,
            "erf_trained": erfs["trained"][0] if erfs["trained"] else None,
            "rf_growth": erf_growth(model, model.features, x) if rec.completed else [],
            "conv_costs": costs, "flops_by_resolution": by_res["flops"], "params_by_resolution": by_res["params"]}
        if erfs["init"] and erfs["trained"]:
            rf_variants.append({"name": f"{rec.model} ({kernel})", "rf_layers": [(r.name, r.size) for r in rows[:n_specs]],
                                "rf": unit.size, "center": center, "erf_init": erfs["init"][1].numpy(),
                                "erf_trained": erfs["trained"][1].numpy(),
                                "extent_init": erfs["init"][0]["erf_extent"][str(ERF_MASS)],
                                "extent_trained": erfs["trained"][0]["erf_extent"][str(ERF_MASS)]})
        if table[kernel]["rf_growth"]:
            growth_variants.append({"name": kernel, "growth": table[kernel]["rf_growth"]})
        if rec.completed:
            first_conv = next(m for m in model.features if isinstance(m, nn.Conv2d))
            first_relu = next(m for m in model.features if isinstance(m, nn.ReLU))
            first_acts[rec.model] = collect_activations(model, x[:3], {"a": first_relu})["a"].numpy()
            first_filters[rec.model] = first_conv.weight.detach().float().cpu().numpy()
    steps = side_by_side_step_times({r.model: run.models[r.model] for r in first}, data.image_shape,
                                    cfg.batch_size, runtime)
    for rec in first:
        table[rec.variant]["step_time"] = steps[rec.model]
    analysis = _write_analysis(out_dir, {
        "param_matching": {k: v for k, v in matching.items() if k != "variants"}, "erf_mass": ERF_MASS,
        "analysis_images": n_images, "divergence": divergence, "over_seeds": numbers.kernel_numbers(run.records),
        "variants": table}, numbers.kernel_markdown)

    title = _data_title(data)
    arch_plots.plot_variants_over_seeds(analysis["over_seeds"]["variants"], plots / f"{prefix}comparison.png",
                                        f"Kernel size at equal parameters ({title})", matching["target_params"],
                                        PARAM_TOLERANCE)
    viz.plot_learning_curves(first, plots / f"{prefix}learning_curves.png",
                             f"Kernel size: learning curves, first seed ({title})")
    if rf_variants:
        arch_plots.plot_receptive_fields(rf_variants, plots / f"{prefix}receptive_fields.png",
                                         f"Receptive fields of the last conv layer: theoretical vs ERF "
                                         f"(mean |gradient| over {n_images} test images; each map on its own scale)",
                                         layer_panel=False)
    if growth_variants:
        arch_plots.plot_rf_growth(growth_variants, plots / f"{prefix}rf_growth.png",
                                  "ERF of the trained nets layer by layer against the theoretical RF",
                                  image_size=data.image_shape[-1])
    if first_acts:
        arch_plots.plot_first_layer_activations(images[:3].numpy(), first_acts,
                                                plots / f"{prefix}first_layer_activations.png",
                                                "First conv layer activations (after BN+ReLU), 8 most active "
                                                "channels per model")
        arch_plots.plot_first_layer_filters(first_filters, plots / f"{prefix}first_layer_filters.png",
                                            "Learned first-layer filters (16 of largest norm, RGB, each scaled "
                                            "to its range)")
    return analysis


# ----------------------------------------------------------------------------- depth study
def _probe_layers(model: nn.Module, n: int = 5) -> list[tuple[str, nn.Module]]:
    """~``n`` evenly spaced block outputs from input to output side, labelled by conv depth."""
    if isinstance(model, ResNet):
        points = [("conv 1 (stem)", model.stem)]
        depth = 1
        for block in (b for stage in model.stages for b in stage):
            depth += 2
            points.append((f"conv {depth} (block)", block))
    else:
        points = [(f"conv {i + 1}", blk) for i, blk in enumerate(model.features)]
    idx = sorted(set(np.linspace(0, len(points) - 1, min(n, len(points))).round().astype(int).tolist()))
    return [points[i] for i in idx]


def _by_depth(records: list[RunRecord], group: str) -> dict[int, list[RunRecord]]:
    out: dict[int, list[RunRecord]] = {}
    for r in records:
        if r.group == group:
            out.setdefault(int(r.variant), []).append(r)
    return dict(sorted(out.items()))


def analyse_depth(run: ExperimentRun, data: DatasetSplits, runtime: Runtime, out_dir: Path, plots: Path,
                  prefix: str, batch: int) -> dict:
    """Degradation numbers over seeds (``utils.architecture_numbers.depth_numbers``); per variant
    (first seed): conv layers, theoretical RF, gradient ratios, side-by-side step time, feature
    maps. Writes ``analysis.json/md`` and the figures."""
    divergence = numbers.divergence_report(run.records)
    _log_divergence(out_dir.name, divergence)
    first = numbers.first_seed(run.records)
    image = _fixed_test_images(data, 1)
    x = _normaliser(data, runtime)(image)
    timed = [r for r in first if r.group != "residual_zero_init"]   # the same net as the residual one
    steps = side_by_side_step_times({r.model: run.models[r.model] for r in timed}, data.image_shape, batch, runtime)
    table, maps = {}, {}
    for rec in first:
        model = run.models[rec.model]
        rf = receptive_field(layer_specs_from_module(model))
        acts = collect_activations(model, x, dict(_probe_layers(model)))
        table[f"{rec.group}/{rec.variant}"] = {
            "model": rec.model, "description": rec.description, "status": rec.status,
            "conv_layers": sum(isinstance(m, nn.Conv2d) for n, m in model.named_modules() if "shortcut" not in n),
            "theoretical_rf_final": rf[-1].size if rf else None, "gradients": numbers.gradient_numbers(rec),
            "step_time": steps.get(rec.model),
            "feature_map_mean_activation": {label: float(a.mean()) for label, a in acts.items()}}
        if rec.group != "residual_zero_init" and all(torch.isfinite(a).all() for a in acts.values()):
            maps[rec.model] = [(f"{label}\nmean {a.mean():.2g}", a[0].numpy()) for label, a in acts.items()]
    zero_init = sorted({r.variant for r in run.records if r.group == "residual_zero_init"})
    depth = numbers.depth_numbers(run.records, controls=[(("residual_zero_init", v), ("residual", v)) for v in zero_init])
    analysis = _write_analysis(out_dir, {"divergence": divergence, **depth, "models": table}, numbers.depth_markdown)

    title = _data_title(data)
    families = [("plain", {d: r for d, r in _by_depth(run.records, "plain").items() if d in depth["degradation_depths"]}),
                ("resnet", _by_depth(run.records, "residual"))]
    plots_depth.plot_degradation(families, plots / f"{prefix}plain_vs_residual.png",
                                 f"Plain vs residual nets (BN, Kaiming init), mean over seeds ({title})")
    series = {"plain, BN": {d: analysis["variants"][f"plain/{d}"] for d in depth["families"]["plain"]},
              "residual, BN": {d: analysis["variants"][f"residual/{d}"] for d in depth["families"]["residual"]}}
    zero = {int(k.split("/")[1]): v for k, v in analysis["variants"].items() if k.startswith("residual_zero_init/")}
    if zero:
        series["residual, BN, zero-init γ (control)"] = zero
    plots_depth.plot_depth_summary(series, plots / f"{prefix}summary.png",
                                   f"Accuracy and training time against depth (mean ± 95 % CI over seeds; {title})")
    arch_plots.plot_architecture_bars(first, plots / f"{prefix}comparison.png",
                                      f"Depth: size, cost and accuracy, first seed ({title})",
                                      step_ms={n: t["median_ms_per_batch"] for n, t in steps.items()})
    if maps:
        arch_plots.plot_feature_maps_by_depth(image[0].numpy(), maps, plots / f"{prefix}feature_maps.png",
                                              "Feature maps at several depths, trained nets (4 most active channels; "
                                              "'mean' = mean activation of the layer)")
    return analysis


# ------------------------------------------------------------------- no-normalisation control
def analyse_nobn(pilots: ExperimentRun, finals: ExperimentRun, choice: dict, reference: list[RunRecord],
                 data: DatasetSplits, out_dir: Path, plots: Path, prefix: str) -> dict:
    """The no-BN nets over seeds beside the BN nets of the same depth (``reference``), the lr each
    pilot sweep chose, gradient ratios; writes ``analysis.json/md`` and the figures."""
    divergence = {"pilots": numbers.divergence_report(pilots.records),
                  "finals": numbers.divergence_report(finals.records)}
    _log_divergence(out_dir.name, divergence["finals"])
    d = str(NOBN_DEPTH)
    plain, res = f"plain{d}_nobn", f"resnet{d}_nobn"
    pairs = ([((net, "kaiming"), (net, "pytorch_default")) for net in (plain, res)]
             + [((res, init), (plain, init)) for init in INITS]
             + [(("plain", d), (plain, "kaiming")), (("residual", d), (res, "kaiming"))])
    ctrl = numbers.controls_numbers(finals.records, pairs, reference)
    grads = {r.model: numbers.gradient_numbers(r) for r in numbers.first_seed([*finals.records, *reference])}
    analysis = _write_analysis(out_dir, {"divergence": divergence, "lr_choice": choice, **ctrl, "gradients": grads},
                               numbers.nobn_markdown)

    title = _data_title(data)
    plots_depth.plot_lr_pilots(analysis["lr_choice"]["choices"], plots / f"{prefix}pilots.png",
                               f"No-normalisation nets: learning-rate pilots on validation ({title})")
    first = numbers.first_seed([*reference, *finals.records])
    groups = [(f"{name} (first seed)", [r for r in first if (r.group, r.variant) in keys])
              for name, keys in ((f"plain-{d}", {("plain", d), (plain, "kaiming"), (plain, "pytorch_default")}),
                                 (f"ResNet-{d}", {("residual", d), (res, "kaiming"), (res, "pytorch_default")}))]
    arch_plots.plot_plain_vs_residual([g for g in groups if g[1]], plots / f"{prefix}curves.png",
                                      f"With and without BatchNorm, PyTorch default vs Kaiming init ({title})")
    arch_plots.plot_gradient_ratio([numbers.grad_view(r) for r in first], plots / f"{prefix}gradient_ratio.png",
                                   "First-conv / last-layer gradient norm during training (first seed)")
    return analysis


def run_nobn(args, data: DatasetSplits, cfg: ExperimentConfig, runtime: Runtime, results: Path, plots: Path,
             profile: Profile, suffix: str) -> None:
    """Pilots (one seed, ``nobn_pilot_epochs``, every candidate lr), the choice on validation, then
    the finals at the chosen lr over seeds."""
    in_ch, classes, title = data.image_shape[0], data.num_classes, _data_title(data)
    keys = [f"{net}{NOBN_DEPTH}_nobn/{init}" for net in ("plain", "resnet") for init in INITS]
    pilot_specs = nobn_specs(in_ch, classes, {k: profile.nobn_lrs for k in keys}, 1, pilot=True)
    pilot_cfg = cfg.replace(epochs=args.epochs or profile.nobn_pilot_epochs, eval_points=PILOT_EVAL_POINTS)
    pilots = run_parts(f"depth_nobn_pilots{suffix}", [({"init": i}, s) for i, s in pilot_specs.items()], data,
                       pilot_cfg, runtime, results, args.force, f"No-BN lr pilots, read on validation ({title})",
                       keep_models=False)
    choice = numbers.choose_lr(pilots.records)
    write_json(results / f"depth_nobn_pilots{suffix}" / "analysis.json", numbers.json_safe(choice))
    chosen = {k: (choice["choices"][k]["chosen_lr"],) for k in keys}
    final_specs = nobn_specs(in_ch, classes, chosen, profile.nobn_seeds, pilot=False)
    experiment = f"depth_nobn{suffix}"
    finals = run_parts(experiment, [({"init": i}, s) for i, s in final_specs.items()], data, cfg, runtime, results,
                       args.force, f"Without normalisation: default vs Kaiming init ({title})")
    # the BN nets of the same depth from the depth study, if it ran on the same data and budget
    reference = [r for r in load_records(results / f"depth{suffix}")
                 if (r.group, r.variant) in {("plain", str(NOBN_DEPTH)), ("residual", str(NOBN_DEPTH))}
                 and r.config.get("epochs") == cfg.epochs and r.config.get("batch_size") == cfg.batch_size
                 and r.data == data.describe()]
    analyse_nobn(pilots, finals, choice, reference, data, results / experiment, plots, f"{experiment}_")


# ------------------------------------------------------------------------------------- main
def _data_title(data: DatasetSplits) -> str:
    return (f"{'CIFAR-10' if data.name == 'cifar10' else 'MNIST'}, {len(data.train)} train / "
            f"{len(data.val) if data.val is not None else 0} val / {len(data.test)} test")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(__doc__.splitlines()[0], EXPERIMENTS, default_plots="plots/architecture_analysis")
    parser.add_argument("--dataset", choices=("cifar10", "mnist"), default="cifar10",
                        help="data set of every study (CIFAR-10 separates the variants; MNIST is too easy)")
    args = parser.parse_args(argv)
    dirs = prepare_output_dirs(args)
    results = dirs.results / "architecture_analysis"
    setup_logging(results / "architecture_analysis.log", args.verbose)
    runtime = resolve_runtime(args.device, args.precision)
    profile = PROFILES[args.profile]
    log.info("profile %s, dataset %s, runtime %s", args.profile, args.dataset, runtime.describe())
    t0 = time.perf_counter()
    data = load_data(args, dirs, args.dataset, profile.train_subset, profile.test_subset, profile.val_size)
    in_ch, classes, title = data.image_shape[0], data.num_classes, _data_title(data)
    cfg = apply_cli_overrides(ARCH_CONFIG, args)
    depth_cfg = cfg.replace(epochs=args.epochs or profile.depth_epochs)
    suffix = "" if args.dataset == "cifar10" else f"_{args.dataset}"   # MNIST never overwrites CIFAR results
    for name in args.only or EXPERIMENTS:
        t1 = time.perf_counter()
        if name == "kernel":
            experiment = f"kernel_size{suffix}"
            matching = match_kernel_widths(profile.kernel_width, in_ch, classes)
            write_json(results / experiment / "param_matching.json", matching)
            specs = kernel_specs(matching, in_ch, classes, profile.kernel_seeds)
            kernel_cfg = cfg.replace(epochs=args.epochs or profile.kernel_epochs)
            run = run_experiment(experiment, specs, data, kernel_cfg, runtime, results, force=args.force,
                                 keep_models=True, title=f"Kernel size at equal parameters ({title})")
            analyse_kernels(run, specs, matching, data, kernel_cfg, runtime, results / experiment, dirs.plots,
                            f"{experiment}_", profile.analysis_images)
        elif name == "depth":
            experiment = f"depth{suffix}"
            zero_depth = profile.depths[len(profile.depths) // 2]
            parts = [({}, depth_specs(profile.depths, profile.depth_seeds, in_ch, classes)),
                     ({"zero_init_residual": True}, zero_init_specs(zero_depth, profile.depth_seeds, in_ch, classes))]
            run = run_parts(experiment, parts, data, depth_cfg, runtime, results, args.force,
                            f"Depth: plain vs residual ({title})")
            analyse_depth(run, data, runtime, results / experiment, dirs.plots, f"{experiment}_", cfg.batch_size)
        else:
            experiment = f"depth_nobn{suffix}"
            run_nobn(args, data, depth_cfg, runtime, results, dirs.plots, profile, suffix)
        log.info("%s done in %.0f s: results in %s, figures in %s", name, time.perf_counter() - t1,
                 results / experiment, dirs.plots)
    log.info("total wall time %.0f s", time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
