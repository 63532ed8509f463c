"""The analyses of the architecture study (task 2) that need the trained models: receptive fields
and ERFs, FLOPs by resolution, side-by-side step times, feature maps, gradient ratios; each
``analyse_*`` writes its experiment's ``analysis.json`` / ``analysis.md`` and figures.

The numbers that follow from run records alone (over seeds, differences, verdicts, markdown) are in
:mod:`utils.studies.architecture.numbers`; the experiments themselves (models, specs, profiles) in
``homework_cnn_architecture_analysis.py``. Every analysis also runs when runs diverged: it reports
the divergence and writes what it can (sizes, costs, curves up to the divergence, the ERF at init).
"""

from __future__ import annotations

import copy
import functools
import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from models.cnn_models import ResNet
from utils.studies.architecture import numbers
from utils.studies.architecture import figures as arch_plots
from utils.studies.architecture import depth_figures as plots_depth
from utils import visualization_utils as viz
from utils.comparison_utils import by_variant
from utils.analysis.feature_maps import collect_activations
from utils.engine.data import BatchLoader, DatasetSplits
from utils.analysis.erf import erf_growth, last_map_before_pool, unit_erf
from utils.engine.experiment import ExperimentConfig, ModelSpec
from utils.engine.files import atomic_write_text, write_json
from utils.engine.model_stats import conv_layer_costs
from utils.analysis.receptive_field import layer_specs_from_module, receptive_field
from utils.engine.records import RunRecord
from utils.engine.runner import ExperimentRun
from utils.engine.runtime import Runtime
from utils.analysis.paired_timing import time_forward_backward
from utils.training_utils import build_model

log = logging.getLogger("architecture_analysis")
ERF_MASS = 0.95
MASSES = (0.5, 0.9, ERF_MASS)   # ERF squares recorded beside the flat box's


def data_title(data: DatasetSplits) -> str:
    return (f"{'CIFAR-10' if data.name == 'cifar10' else 'MNIST'}, {len(data.train)} train / "
            f"{len(data.val) if data.val is not None else 0} val / {len(data.test)} test")



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
    models take turns (``utils.analysis.paired_timing.time_forward_backward`` rotates the order every round), so
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
                    n_images: int, tolerance: float) -> dict:
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
        "analysis_images": n_images, "divergence": divergence, "timing": numbers.timing_summary(run.records),
        "over_seeds": numbers.kernel_numbers(run.records),
        "variants": table}, numbers.kernel_markdown)

    title = data_title(data)
    arch_plots.plot_variants_over_seeds(analysis["over_seeds"]["variants"], plots / f"{prefix}comparison.png",
                                        f"Kernel size at equal parameters ({title})", matching["target_params"],
                                        tolerance)
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
    """Degradation numbers over seeds (``utils.studies.architecture.numbers.depth_numbers``); per variant
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
    analysis = _write_analysis(out_dir, {"divergence": divergence, "timing": numbers.timing_summary(run.records),
                                         **depth, "models": table}, numbers.depth_markdown)

    title = data_title(data)
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
INIT_LABELS = {"pytorch_default": "PyTorch default init", "kaiming": "Kaiming init"}


def run_label(r: RunRecord, net_norm: dict[str, str]) -> str:
    """A run as the no-BN figures name it: net and normalisation (``net_norm``: group -> words), init, lr."""
    status = "" if r.completed else f" ({r.status})"
    return f"{net_norm[r.group]}, {INIT_LABELS.get(r.init['scheme'], r.init['scheme'])}, lr {r.config['lr']:g}{status}"


def analyse_nobn(pilots: ExperimentRun, finals: ExperimentRun, choice: dict, reference: list[RunRecord],
                 data: DatasetSplits, out_dir: Path, plots: Path, prefix: str, depth: int,
                 inits: tuple[str, ...] = ("pytorch_default", "kaiming"),
                 depth_runs: Sequence[RunRecord] = ()) -> dict:
    """The no-BN nets over seeds beside the BN nets of the same depth (``reference``), the lr each
    pilot sweep chose, gradient ratios; writes ``analysis.json/md`` and the figures (with
    ``depth_runs``, the depth study's runs on the same budget, also the summary against depth)."""
    divergence = {"pilots": numbers.divergence_report(pilots.records),
                  "finals": numbers.divergence_report(finals.records)}
    _log_divergence(out_dir.name, divergence["finals"])
    d = str(depth)
    plain, res = f"plain{d}_nobn", f"resnet{d}_nobn"
    net_norm = {plain: "plain, no BN", res: "ResNet, no BN", "plain": "plain, BN", "residual": "ResNet, BN"}
    label = functools.partial(run_label, net_norm=net_norm)
    pairs = ([((net, "kaiming"), (net, "pytorch_default")) for net in (plain, res)]
             + [((res, init), (plain, init)) for init in inits]
             + [(("plain", d), (plain, "kaiming")), (("residual", d), (res, "kaiming"))])
    ctrl = numbers.controls_numbers(finals.records, pairs, reference)
    grads = {r.model: numbers.gradient_numbers(r) for r in numbers.first_seed([*finals.records, *reference])}
    analysis = _write_analysis(out_dir, {"divergence": divergence, "lr_choice": choice, **ctrl, "gradients": grads,
                                         "timing": {"pilots": numbers.timing_summary(pilots.records),
                                                    "finals": numbers.timing_summary(
                                                        [r for r in finals.records if r.experiment == out_dir.name])}},
                               numbers.nobn_markdown)

    title = data_title(data)
    plots_depth.plot_lr_pilots(analysis["lr_choice"]["choices"], plots / f"{prefix}pilots.png",
                               f"No-normalisation nets: learning-rate pilots on validation ({title})")
    first = numbers.first_seed([*reference, *finals.records])
    groups = [(f"{name} (first seed)", [r for r in first if (r.group, r.variant) in keys])
              for name, keys in ((f"plain-{d}", {("plain", d), (plain, "kaiming"), (plain, "pytorch_default")}),
                                 (f"ResNet-{d}", {("residual", d), (res, "kaiming"), (res, "pytorch_default")}))]
    arch_plots.plot_plain_vs_residual([g for g in groups if g[1]], plots / f"{prefix}curves.png",
                                      f"With and without BatchNorm, PyTorch default vs Kaiming init ({title})",
                                      label=label)
    if depth_runs:           # the task's summary: the depth study's BN nets with these controls beside them
        series = {f"{net_norm[group]}, Kaiming init": {d: numbers.variant_numbers(runs) for d, runs
                                                      in _by_depth(list(depth_runs), group).items()}
                  for group in ("plain", "residual")}
        for runs in by_variant(finals.records).values():
            series[label(runs[0])] = {depth: numbers.variant_numbers(runs)}
        plots_depth.plot_depth_summary(series, plots / f"{prefix}summary.png",
                                       f"Depth with and without BN, default vs Kaiming init (mean ± 95 % CI "
                                       f"over seeds; {title})")
    arch_plots.plot_gradient_ratio([numbers.grad_view(r) for r in first], plots / f"{prefix}gradient_ratio.png",
                                   "First-conv / last-layer gradient norm during training (first seed)",
                                   label=label)
    return analysis
