"""The analyses of the architecture study (task 2) that need trained models or data: ERFs on a
canvas larger than the theoretical RF, first-layer activations, feature-map statistics over many
images, gradient flow and BN scales along the main path. Each ``analyse_*`` writes its
experiment's ``analysis.json`` / ``analysis.md`` and figures.

The numbers that follow from records alone are in :mod:`utils.studies.architecture.numbers`; the
experiments (models, specs, profiles, which groups exist) in ``homework_cnn_architecture_analysis.py``,
which passes every group and variant in (nothing here knows the script's names). Every analysis
also runs when runs diverged: it reports the divergence and writes what it can.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from models.cnn_models import ResidualBlock, ResNet
from utils.analysis.erf import erf_growth, last_map_before_pool, unit_erf
from utils.analysis.feature_maps import collect_activations
from utils.analysis.receptive_field import layer_specs_from_module, receptive_field
from utils.comparison_utils import by_variant, json_safe, variant_key
from utils.engine.data import BatchLoader, DatasetSplits
from utils.engine.experiment import ExperimentConfig, ModelSpec
from utils.engine.files import atomic_write_text, write_json
from utils.engine.invocation import runs_cost
from utils.engine.model_stats import conv_layer_costs
from utils.engine.records import RunRecord
from utils.engine.runtime import Runtime
from utils.studies.architecture import depth_figures, figures, numbers
from utils.studies.architecture.numbers import DepthDesign, Key
from utils.studies.architecture.selection import Tuned
from utils.training_utils import build_model

log = logging.getLogger("architecture_analysis")
ERF_MASSES = (0.5, 0.95)
ERF_MEASURES = ("rms_ratio", "erf_rms_radius", "erf_mass_in_half_rf", "erf_extent", "flat_box_extent",
                "theoretical_rf", "center", "flat_box_rms_radius", "flat_box_mass_in_half_rf")


def data_title(data: DatasetSplits) -> str:
    return (f"{'CIFAR-10' if data.name == 'cifar10' else 'MNIST'}, {len(data.train)} train / "
            f"{len(data.val) if data.val is not None else 0} val / {len(data.test)} test")


def fixed_test_images(data: DatasetSplits, n: int, seed: int = 0) -> torch.Tensor:
    """The same ``n`` test images (uint8) for every model and every run."""
    idx = torch.randperm(len(data.test), generator=torch.Generator().manual_seed(seed))[:min(n, len(data.test))]
    return data.test.images[idx]


def canvas_images(data: DatasetSplits, n: int, tiles: int, seed: int = 1) -> torch.Tensor:
    """``n`` canvases (uint8), each a ``tiles x tiles`` mosaic of distinct test images: real image
    statistics on an input larger than the image, so a fully convolutional trunk's centre unit
    has its whole theoretical RF inside the input (a 32-px image clips the RF of 5x5 and 7x7 nets)."""
    imgs = fixed_test_images(data, n * tiles * tiles, seed)
    reps = -(-n * tiles * tiles // len(imgs))
    imgs = imgs.repeat(reps, 1, 1, 1)[:n * tiles * tiles]
    c, h, w = imgs.shape[1:]
    grid = imgs.reshape(n, tiles, tiles, c, h, w).permute(0, 3, 1, 4, 2, 5)
    return grid.reshape(n, c, tiles * h, tiles * w).contiguous()


def normaliser(data: DatasetSplits, runtime: Runtime) -> Callable[[torch.Tensor], torch.Tensor]:
    return BatchLoader(data.test, 1, data.mean, data.std, device=runtime.device).normalise


def initial_model(spec: ModelSpec, record: RunRecord, runtime: Runtime) -> nn.Module:
    """The run's network before its first step, rebuilt from the record's own config."""
    return build_model(spec, ExperimentConfig(**record.config))[0].to(runtime.device)


def write_analysis(out_dir: Path, analysis: dict, to_markdown: Callable[[dict], str]) -> dict:
    """``analysis.json`` (NaN written as null) and ``analysis.md`` rendered from the same dict."""
    analysis = json_safe(analysis)
    write_json(out_dir / "analysis.json", analysis)
    atomic_write_text(out_dir / "analysis.md", to_markdown(analysis))
    return analysis


def _log_divergence(experiment: str, report: dict) -> None:
    if report["diverged"]:
        log.warning("%s: diverged runs: %s", experiment, ", ".join(report["diverged"]))


# ------------------------------------------------------------------------ model structure
def main_path_convs(model: nn.Module) -> list[str]:
    """Conv weights along the main path, input side first: every conv except those of residual
    blocks' shortcut branches (so a plain net and its ResNet have the same list)."""
    shortcut = {id(m) for b in model.modules() if isinstance(b, ResidualBlock)
                for branch in b.shortcut_branch() for m in branch.modules()}
    return [f"{name}.weight" for name, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and id(m) not in shortcut]


def residual_end_params(model: nn.Module) -> dict[str, list[str]]:
    """Stage label -> the weight (γ of the last BN) of each residual branch's end in that stage,
    for :attr:`ModelSpec.tracked_params`; empty for a net without residual stages."""
    if not isinstance(model, ResNet):
        return {}
    names = {id(m): n for n, m in model.named_modules()}
    return {f"stage {i + 1}": [f"{names[id(b.residual_end())]}.weight" for b in stage]
            for i, stage in enumerate(model.stages)}


def probe_layers(model: nn.Module, n: int = 5) -> list[tuple[str, nn.Module, float]]:
    """~``n`` evenly spaced block outputs, input to output, as ``(label, module, relative depth)``
    (conv index along the main path / number of main-path convs)."""
    if isinstance(model, ResNet):
        points, depth = [("conv 1 (stem)", model.stem, 1)], 1
        for block in (b for stage in model.stages for b in stage):
            depth += 2
            points.append((f"conv {depth} (block)", block, depth))
    else:
        points = [(f"conv {i + 1}", blk, i + 1) for i, blk in enumerate(model.features)]
    total = points[-1][2]
    idx = sorted(set(np.linspace(0, len(points) - 1, min(n, len(points))).round().astype(int).tolist()))
    return [(points[i][0], points[i][1], points[i][2] / total) for i in idx]


@torch.no_grad()
def activation_stats(model: nn.Module, x: torch.Tensor, batch: int = 64) -> dict[str, dict]:
    """Per probed layer, over the images ``x``: mean activation, the 5-95 % range and std of the
    per-image means, and the share of exact zeros (post-ReLU units that are off)."""
    probes = probe_layers(model)
    per_image: dict[str, list[torch.Tensor]] = {label: [] for label, _, _ in probes}
    zeros = {label: 0.0 for label, _, _ in probes}
    count = {label: 0 for label, _, _ in probes}
    for i in range(0, len(x), batch):
        acts = collect_activations(model, x[i:i + batch], {label: m for label, m, _ in probes})
        for label, a in acts.items():
            per_image[label].append(a.flatten(1).mean(1))
            zeros[label] += float((a == 0).sum())
            count[label] += a.numel()
    out = {}
    for label, _, rel in probes:
        m = torch.cat(per_image[label]).numpy()
        out[label] = {"mean": float(m.mean()), "image_std": float(m.std()), "image_p05": float(np.quantile(m, 0.05)),
                      "image_p95": float(np.quantile(m, 0.95)), "zero_share": zeros[label] / count[label],
                      "relative_depth": rel, "images": int(len(m))}
    return out


# ---------------------------------------------------------------------------- kernel study
def erf_of(model: nn.Module, x: torch.Tensor) -> tuple[dict, torch.Tensor] | None:
    """ERF of the centre unit of the last map before the last pool of ``model.features`` on the
    canvases ``x``, beside a flat box over its theoretical RF (threshold-free measures only)."""
    layer, n_specs = last_map_before_pool(model.features)
    unit = receptive_field(layer_specs_from_module(model.features))[n_specs - 1]
    hw = tuple(collect_activations(model, x[:1], {"erf": layer})["erf"].shape[-2:])
    found = unit_erf(model, x, layer, unit, hw, ERF_MASSES)
    if found is None:
        return None
    stats, erf = found
    return {k: stats[k] for k in ERF_MEASURES}, erf


def analyse_kernels(run, specs: Sequence[ModelSpec], matching: dict, reference: Key, data: DatasetSplits,
                    runtime: Runtime, out_dir: Path, plots: Path, prefix: str, erf_canvases: int, tiles: int) -> dict:
    """Over seeds: accuracy, fit and generalisation vs ``reference`` (v3 rule). Over every seed:
    the ERF at initialisation and trained on ``erf_canvases`` mosaics of ``tiles x tiles`` test
    images, trained - init paired by seed. First seed: ERF growth layer by layer, first-layer
    activations and filters (illustrations)."""
    divergence = numbers.divergence_report(run.records)
    _log_divergence(out_dir.name, divergence)
    spec_of = {s.name: s for s in specs}
    norm = normaliser(data, runtime)
    canvas = canvas_images(data, erf_canvases, tiles)
    x = norm(canvas)
    rows, maps, growth = [], {}, []
    first = {r.model for r in numbers.first_seed(run.records)}
    for rec in run.records:
        init = erf_of(initial_model(spec_of[rec.model], rec, runtime), x)
        trained = erf_of(run.models[rec.model], x) if rec.completed else None
        rows.append({"variant": rec.variant, "seed": rec.seed, "model": rec.model,
                     "init": init[0] if init else None, "trained": trained[0] if trained else None})
        if rec.model in first and init and trained:
            maps[rec.variant] = {"init": init[1].numpy(), "trained": trained[1].numpy(), **trained[0],
                                 "extent_init": init[0]["erf_extent"]["0.95"],
                                 "extent_trained": trained[0]["erf_extent"]["0.95"]}
            growth.append({"name": rec.variant, "growth": erf_growth(run.models[rec.model],
                                                                     run.models[rec.model].features, x)})
    table = {}
    for rec in numbers.first_seed(run.records):
        model = run.models[rec.model]
        rf_rows = receptive_field(layer_specs_from_module(model.features))
        table[rec.variant] = {"stage_widths": matching["variants"][rec.variant]["stage_widths"],
                              "params": rec.params["total"], "mflops": rec.flops_per_image / 1e6,
                              "rf_layers": [{"layer": r.name, "size": r.size, "jump": r.jump} for r in rf_rows],
                              "theoretical_rf_final": rf_rows[-1].size,
                              "conv_costs": conv_layer_costs(model, data.image_shape)}
    erf = {"canvas_px": int(canvas.shape[-1]), "tiles": tiles, "images": int(len(canvas)),
           "unit": "centre unit of the last conv map before the last max-pool",
           "measures": "rms_ratio = RMS distance of the ERF from the RF centre / that of a flat box over the "
                       "theoretical RF (1: as spread as the box; < 1: concentrated towards the centre)",
           "variants": numbers.erf_numbers(rows), "per_run": rows}
    analysis = write_analysis(out_dir, {
        "param_matching": {k: v for k, v in matching.items() if k != "variants"}, "divergence": divergence,
        "timing": runs_cost(run.records), "over_seeds": numbers.kernel_numbers(run.records, reference),
        "erf": erf, "variants": table}, numbers.kernel_markdown)

    title = data_title(data)
    ref = variant_key(*reference)
    figures.plot_kernel_comparison(analysis["over_seeds"], plots / f"{prefix}comparison.png",
                                   f"Kernel size at equal parameters ({title})")
    if maps:
        figures.plot_erf_maps(maps, plots / f"{prefix}receptive_fields.png",
                              f"ERF of the centre unit on a {erf['canvas_px']}-px canvas of {tiles}×{tiles} test "
                              f"images (mean |gradient| over {erf['images']} canvases, first seed; each map on its "
                              "own scale)")
        figures.plot_erf_init_vs_trained(analysis["erf"]["variants"], plots / f"{prefix}erf_init_vs_trained.png",
                                         f"ERF spread relative to a flat box over the theoretical RF, at init and "
                                         f"trained (mean ± 95 % CI over seeds; {title})")
    if growth:
        figures.plot_rf_growth(growth, plots / f"{prefix}rf_growth.png",
                               "ERF of the trained nets layer by layer against the theoretical RF (first seed, "
                               f"{erf['canvas_px']}-px canvases)")
    first_recs = [r for r in numbers.first_seed(run.records) if r.completed]
    if first_recs:
        images = fixed_test_images(data, 3)
        xi = norm(images)
        acts, filters = {}, {}
        for rec in first_recs:
            model = run.models[rec.model]
            conv = next(m for m in model.features if isinstance(m, nn.Conv2d))
            relu = next(m for m in model.features if isinstance(m, nn.ReLU))
            acts[rec.variant] = collect_activations(model, xi, {"a": relu})["a"].numpy()
            filters[rec.variant] = conv.weight.detach().float().cpu().numpy()
        figures.plot_first_layer_activations(images.numpy(), acts, plots / f"{prefix}first_layer_activations.png",
                                             "First conv layer activations (after BN+ReLU), 8 most active channels")
        figures.plot_first_layer_filters(filters, plots / f"{prefix}first_layer_filters.png",
                                         "Learned first-layer filters (16 of largest norm, RGB, each scaled to its "
                                         "range)")
    log.info("kernel: reference %s; %d ERF rows", ref, len(rows))
    return analysis


# ----------------------------------------------------------------------------- depth study
def analyse_depth(tuned: Sequence[Tuned], controls: Sequence[RunRecord], models: Mapping[str, nn.Module],
                  design: DepthDesign, gamma_pairs: Sequence[tuple[Key, Key]], data: DatasetSplits,
                  runtime: Runtime, out_dir: Path, plots: Path, prefix: str, feature_images: int) -> dict:
    """Degradation on training error over seeds (``numbers.depth_numbers``), gradient flow along
    the main path during training (per-parameter RMS), the tracked BN scales of ``gamma_pairs``
    (control, its reference), feature-map statistics over ``feature_images`` test images per
    seed. Writes ``analysis.json/md`` and the figures."""
    finals = [r for t in tuned for r in t.finals] + list(controls)
    divergence = numbers.divergence_report(finals)
    _log_divergence(out_dir.name, divergence)
    main_path = {name: main_path_convs(m) for name, m in models.items()}
    gamma_groups = {name: residual_end_params(m) for name, m in models.items()}
    groups = by_variant(finals)
    gamma_runs = {variant_key(*k): groups[k] for pair in gamma_pairs for k in pair if k in groups}
    x = normaliser(data, runtime)(fixed_test_images(data, feature_images))
    feature_stats: dict[Key, dict] = {}
    for key, runs in groups.items():
        per_seed = [activation_stats(models[r.model], x) for r in runs if r.completed and r.model in models]
        if per_seed:
            feature_stats[key] = numbers.feature_map_summary(per_seed)
    depth = numbers.depth_numbers(finals, design)
    analysis = write_analysis(out_dir, {
        "divergence": divergence, "timing": runs_cost(finals),
        "lr_selection": {t.key: t.as_dict() for t in tuned}, **depth,
        "gradient_flow": numbers.gradient_flow_numbers(finals, main_path, design.depth_of),
        "zero_init_gamma": numbers.gamma_numbers(gamma_runs, gamma_groups),
        "feature_maps": {"images": int(len(x)), "seeds_per_variant": "every final seed",
                         "variants": {variant_key(*k): v for k, v in feature_stats.items()}}}, numbers.depth_markdown)

    title = data_title(data)
    plain, res = design.family(finals, design.plain), design.family(finals, design.residual)
    shared = depth["degradation_depths"]
    depth_figures.plot_degradation({design.plain: {d: plain[d] for d in shared}, design.residual: res},
                                   analysis["variants"], design, plots / f"{prefix}plain_vs_residual.png",
                                   f"Plain vs residual nets (BN, Kaiming init, lr tuned per net; {title})")
    if shared:
        deepest = max(shared)
        pair = {f"plain-{deepest}": plain[deepest], f"ResNet-{deepest}": res[deepest]}
        depth_figures.plot_gradient_flow(pair, main_path, plots / f"{prefix}gradient_flow.png",
                                         f"Gradient flow during training at depth {deepest}: per-parameter "
                                         f"gradient RMS of each main-path conv ({title})")
        depth_figures.plot_first_last_ratio(
            {f"{fam}-{d}": runs for fam, runs_by_d in (("plain", plain), ("ResNet", res)) for d, runs in runs_by_d.items()
             if d in shared}, main_path, plots / f"{prefix}gradient_ratio.png",
            f"First / last main-path conv gradient RMS during training (mean over seeds, band: min-max; {title})")
    if gamma_runs:
        depth_figures.plot_gamma(gamma_runs, gamma_groups, plots / f"{prefix}zero_init_gamma.png",
                                 f"Residual branches' last-BN γ and training accuracy, zero-init vs standard "
                                 f"({title})")
    if feature_stats:
        depth_figures.plot_feature_stats({k: v for k, v in feature_stats.items() if design.depth_of.get(k) in shared},
                                         design,
                                         plots / f"{prefix}feature_map_stats.png",
                                         f"Mean activation of block outputs over {len(x)} test images (line: mean "
                                         f"over seeds; band: 5-95 % of per-image means; {title})")
        image = fixed_test_images(data, 1)
        xi = normaliser(data, runtime)(image)
        maps = {}
        for key in [design.key(design.plain, max(shared)), design.key(design.residual, max(shared))] if shared else []:
            rec = next((r for r in groups.get(key, []) if r.completed), None)
            if rec is not None:
                acts = collect_activations(models[rec.model], xi, {lab: m for lab, m, _ in probe_layers(models[rec.model])})
                maps[rec.model] = [(f"{lab}\nmean {a.mean():.2g}", a[0].numpy()) for lab, a in acts.items()]
        if maps:
            figures.plot_feature_maps_by_depth(image[0].numpy(), maps, plots / f"{prefix}feature_maps.png",
                                               "Feature maps of one test image at several depths (illustration; "
                                               "4 most active channels)")
    return analysis


# ------------------------------------------------------------------- no-normalisation control
def analyse_nobn(tuned: Sequence[Tuned], reference: Sequence[RunRecord], pairs: Sequence[tuple[Key, Key]],
                 labels: Mapping[str, str], main_path: Mapping[str, Sequence[str]], data: DatasetSplits,
                 out_dir: Path, plots: Path, prefix: str) -> dict:
    """The no-normalisation nets (lr per net and init from bracketing pilots) over seeds beside
    the BN nets of the same depth and budget (``reference``, from the depth study through the
    runner); ``pairs`` to compare; ``labels``: ``group/variant`` -> legend words."""
    finals = [r for t in tuned for r in t.finals]
    pilots = [r for t in tuned for r in t.pilots]
    divergence = {"pilots": numbers.divergence_report(pilots), "finals": numbers.divergence_report(finals)}
    _log_divergence(out_dir.name, divergence["finals"])
    runs = [*finals, *reference]
    ctrl = numbers.controls_numbers(runs, pairs)
    analysis = write_analysis(out_dir, {
        "divergence": divergence, "lr_selection": {t.key: t.as_dict() for t in tuned}, **ctrl,
        "gradient_flow": numbers.gradient_flow_numbers(runs, main_path),
        "timing": {"pilots": runs_cost(pilots), "finals": runs_cost(finals)}},
        numbers.nobn_markdown)
    title = data_title(data)
    depth_figures.plot_lr_pilots(analysis["lr_selection"], labels, plots / f"{prefix}pilots.png",
                                 f"No-normalisation nets: bracketing lr pilots, final validation accuracy ({title})")
    depth_figures.plot_variant_dots(analysis["variants"], labels, plots / f"{prefix}summary.png",
                                    f"With and without BN, default vs Kaiming init (mean ± 95 % CI over seeds; {title})")
    depth_figures.plot_first_last_ratio({labels.get(variant_key(*k), variant_key(*k)): v
                                         for k, v in by_variant(runs).items()}, main_path,
                                        plots / f"{prefix}gradient_ratio.png",
                                        f"First / last main-path conv gradient RMS during training (mean over seeds, "
                                        f"band: min-max; {title})")
    return analysis
