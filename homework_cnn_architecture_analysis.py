"""Task 2: CNN architecture analysis: kernel size and depth, on CIFAR-10 by default.

    python homework_cnn_architecture_analysis.py                       # standard profile, both studies
    python homework_cnn_architecture_analysis.py --only kernel --profile quick
    python homework_cnn_architecture_analysis.py --dataset mnist       # MNIST (too easy to separate them)

Experiments (``--only``):
  kernel  3x3 vs 5x5 vs 7x7 vs 1x1+3x3 convolutions at the same parameter count (each within
          +-2 % of the 3x3 reference, widths solved here), with theoretical receptive fields
          layer by layer, the empirical effective receptive field (ERF) of the trained models,
          first-layer activations and filters.
  depth   plain CNNs with 2, 4 and 8 convolutions (BatchNorm), and a 20-layer family on the CIFAR
          ResNet-20 widths: plain vs residual, each with and without BatchNorm. Per-layer gradient
          norms at initialisation and during training (vanishing gradients), degradation curves,
          feature maps at several depths.
  init    gradients at initialisation, no training: first/last conv gradient-norm ratio and per-layer
          norms of plain nets (PyTorch default init, Kaiming, Kaiming + BN) and BN ResNets at depths
          8/20/56 on one fixed batch of 256 training images, several seeds, beside the
          variance-propagation prediction (``utils.signal_propagation``). Seconds of CPU.

Writes ``results/architecture_analysis/{kernel_size,depth}/`` (a JSON per model, summary.csv/md,
``param_matching.json``, ``analysis.json`` and ``analysis.md``) and ``plots/architecture_analysis/``.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from models.cnn_models import BasicBlock, KernelSizeCNN, PlainCNN, ResNet, resnet_like_plain
from utils import visualization_utils as viz
from utils import plots_architecture as arch_plots
from utils.cli import (apply_cli_overrides, build_parser, load_data, prepare_output_dirs, run_cli,
                       setup_logging)
from utils.activations import collect_activations
from utils.gradient_stats import gradient_flow_summary
from utils.markdown import markdown_table
from utils.model_stats import (conv_layer_costs, count_parameters, relative_param_gap, solve_width_for_params,
                               within_tolerance)
from utils.erf import effective_receptive_field, erf_extent_at
from utils.receptive_field import layer_specs_from_module, receptive_field
from utils.timing import time_forward_backward
from utils.data import BatchLoader, DatasetSplits
from utils.experiment import ExperimentConfig, ModelSpec
from utils.files import atomic_write_text, write_json
from utils.records import GradStats, RunRecord
from utils.runner import ExperimentRun, run_experiment
from utils.runtime import Runtime, resolve_runtime
from utils.signal_propagation import REGIME_SPECS, REGIMES, run_init_study, summarise_init_study
from utils.training_utils import build_model

log = logging.getLogger("architecture_analysis")
EXPERIMENTS = ("kernel", "depth", "init")
PARAM_TOLERANCE = 0.02
ERF_MASS = 0.95


@dataclass(frozen=True)
class Profile:
    epochs: int
    train_subset: int | None
    test_subset: int | None
    kernel_width: int        # width of the 3x3 reference model: sets the common parameter target
    analysis_images: int     # test images averaged for the ERF
    val_size: int = 5000     # held out of the training set; every choice is read on it


PROFILES = {
    "quick": Profile(epochs=1, train_subset=1000, test_subset=300, kernel_width=16, analysis_images=16, val_size=300),
    # 11 models in <= 25 min on 2 CPU cores: 8k stratified train images x 4 epochs (250 SGD steps
    # per model) + the full 10k test set after every epoch, which costs about as much as the
    # training itself (the engine evaluates in batches of 1000, where a forward pass per image
    # costs ~0.8x a training step at batch 128 on this CPU). Estimate for 2 threads: ~20 ms per
    # training image and ~16 ms per evaluated image summed over the 11 models -> ~22 min.
    # The measured wall time of the committed run is in results/study_run.json (scripts[1]).
    "standard": Profile(epochs=4, train_subset=8000, test_subset=None, kernel_width=48, analysis_images=64),
    "full": Profile(epochs=15, train_subset=None, test_subset=None, kernel_width=64, analysis_images=256),
}

# One config for both studies, fixed before any result was seen: SGD-Nesterov + one-cycle at the
# usual batch-128 learning rate, light weight decay, no augmentation (4 epochs are too few for it
# to pay off). No gradient clipping: exploding gradients must stay visible. Gradient statistics
# every 10 steps give ~25 samples per run; clean train accuracy on a fixed 1000-image subset.
ARCH_CONFIG = ExperimentConfig(batch_size=128, lr=0.05, optimizer="sgd", schedule="onecycle", weight_decay=5e-4,
                               grad_sample_every=10, train_eval_samples=1000)

KERNEL_NAMES = {"3x3": "conv3x3", "5x5": "conv5x5", "7x7": "conv7x7", "1x1+3x3": "conv1x1_3x3"}
# variant label -> KernelSizeCNN arguments
KERNEL_VARIANTS = {"3x3": {"kernel_size": 3}, "5x5": {"kernel_size": 5}, "7x7": {"kernel_size": 7},
                   "1x1+3x3": {"kernel_size": 3, "reduce_1x1": True}}


def kernel_cnn(kernel: str, width: int, in_ch: int = 3, classes: int = 10,
               stage_widths: tuple[int, ...] | None = None) -> KernelSizeCNN:
    """The kernel study's model for the variant labelled ``kernel`` (a key of ``KERNEL_VARIANTS``)."""
    return KernelSizeCNN(width=width, in_channels=in_ch, num_classes=classes, stage_widths=stage_widths,
                         **KERNEL_VARIANTS[kernel])


# ------------------------------------------------------------------------------ kernel study
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


def kernel_specs(matching: dict, in_ch: int, classes: int) -> list[ModelSpec]:
    specs = []
    for kernel, v in matching["variants"].items():
        widths = tuple(v["stage_widths"])

        def build(c: ExperimentConfig, kernel=kernel, widths=widths) -> nn.Module:
            return kernel_cnn(kernel, widths[0], in_ch, classes, stage_widths=widths)

        layout = "1x1 (w/2) + 3x3 (w)" if kernel == "1x1+3x3" else f"{kernel} conv"
        specs.append(ModelSpec(v["name"], build, f"3 stages of {layout}-BN-ReLU-maxpool, widths "
                                                 f"{'-'.join(map(str, widths))}, GAP, linear",
                               group="kernel_size", variant=kernel))
    return specs


def _erf_layer(model: KernelSizeCNN) -> tuple[nn.Module, int]:
    """The ReLU before the last max-pool (the deepest full-resolution-of-its-stage map) and the
    number of conv/pool specs up to it (for the theoretical RF rows)."""
    feats = list(model.features)
    last_pool = max(i for i, m in enumerate(feats) if isinstance(m, nn.MaxPool2d))
    n_specs = sum(isinstance(m, (nn.Conv2d, nn.MaxPool2d)) for m in feats[:last_pool])
    return feats[last_pool - 1], n_specs


def _fixed_test_images(data: DatasetSplits, n: int, seed: int = 0) -> torch.Tensor:
    """The same ``n`` test images (uint8) for every model and every run."""
    idx = torch.randperm(len(data.test), generator=torch.Generator().manual_seed(seed))[:n]
    return data.test.images[idx]


def side_by_side_step_times(models: dict[str, nn.Module], image_shape: tuple[int, ...], batch: int,
                            runtime: Runtime, repeats: int = 9) -> dict:
    """Forward+backward time of one training batch per model, measured round-robin.

    Why next to the engine's training time: that one is wall time per model, measured at
    different moments, so any other load on the machine lands on some models only. Here the
    models take turns (``utils.timing.time_forward_backward`` rotates the order every
    round), so a background load hits all of them alike and the ratios stay fair. Deep copies in
    train mode: the BN running statistics of the trained models are not touched.
    """
    copies = {name: copy.deepcopy(m).train() for name, m in models.items()}
    x = torch.randn((batch, *image_shape), generator=torch.Generator().manual_seed(0)).to(runtime.device)
    if runtime.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    times = time_forward_backward(copies, x, repeats=repeats, warmup=2)  # median of `repeats` rounds
    return {name: {"batch": batch, "median_ms_per_batch": t["median_ms"], "img_per_s": 1000.0 * batch / t["median_ms"]}
            for name, t in times.items()}


def _normaliser(data: DatasetSplits, runtime: Runtime) -> Callable[[torch.Tensor], torch.Tensor]:
    loader = BatchLoader(data.test, 1, data.mean, data.std, device=runtime.device, channels_last=runtime.channels_last)
    return loader.normalise


def analyse_kernels(run: ExperimentRun, specs: list[ModelSpec], matching: dict, data: DatasetSplits,
                    cfg: ExperimentConfig, runtime: Runtime, out_dir: Path, plots: Path, prefix: str,
                    n_images: int) -> dict:
    """Receptive fields (theoretical + ERF at init and trained), FLOP breakdown, first-layer
    activations and filters; writes ``analysis.json`` / ``analysis.md`` and the figures."""
    images = _fixed_test_images(data, n_images)
    x = _normaliser(data, runtime)(images)
    records = run.records
    rf_variants, table, first_acts, first_filters = [], {}, {}, {}
    for spec, rec in zip(specs, records):
        model = run.models[rec.model]
        init_model = build_model(spec, spec.config_for(cfg))[0].to(runtime.device)   # as its run started
        layer, n_specs = _erf_layer(model)
        specs_all = layer_specs_from_module(model.features)
        rows = receptive_field(specs_all)
        unit_row = rows[n_specs - 1]
        fmap = collect_activations(model, x[:1], {"erf": layer})["erf"]
        h = fmap.shape[-2]
        center = (unit_row.center(h // 2), unit_row.center(fmap.shape[-1] // 2))
        erfs = {}
        for tag, net in (("init", init_model), ("trained", model)):
            init_layer = _erf_layer(net)[0]
            erfs[tag] = effective_receptive_field(net, x, layer=init_layer).float().cpu()
        extents = {tag: {str(m): erf_extent_at(e, center, m) for m in (0.5, 0.9, ERF_MASS)} for tag, e in erfs.items()}
        # RMS distance of the gradient mass from the RF centre: unlike the 95 % square it is not
        # capped by the image border, so it still orders ERFs larger than the image.
        h_in, w_in = erfs["init"].shape
        yy, xx = torch.meshgrid(torch.arange(h_in, dtype=torch.float64), torch.arange(w_in, dtype=torch.float64),
                                indexing="ij")
        rms = {tag: float(torch.sqrt((e.double() * ((yy - center[0]) ** 2 + (xx - center[1]) ** 2)).sum()))
               for tag, e in erfs.items()}
        kernel = spec.variant
        costs = conv_layer_costs(model, data.image_shape)
        flops_by_res: dict[str, int] = {}
        params_by_res: dict[str, int] = {}
        for c in costs:
            key = f"{c['out_hw'][0]}x{c['out_hw'][1]}"
            flops_by_res[key] = flops_by_res.get(key, 0) + c["flops"]
            params_by_res[key] = params_by_res.get(key, 0) + c["params"]
        s = rec.summary
        table[spec.name] = {
            "kernel": kernel, "stage_widths": matching["variants"][kernel]["stage_widths"],
            "params": s.params, "param_gap": matching["variants"][kernel]["relative_gap"], "mflops": s.mflops,
            "status": s.status, "final_test_acc": s.test_acc, "best_val_acc": s.best_val_acc,
            "final_train_acc": s.final_train_acc, "train_time_s": s.train_time_s,
            "epoch_time_s": s.epoch_time_s, "throughput_img_s": s.throughput_img_s,
            "rf_layers": [{"layer": r.name, "size": r.size, "jump": r.jump, "start": r.start} for r in rows],
            "erf_layer": f"features.{unit_row.name} (last conv, before the last max-pool)",
            "erf_map_size": [int(fmap.shape[-2]), int(fmap.shape[-1])], "input_size": h_in,
            "theoretical_rf": unit_row.size, "theoretical_rf_final": rows[-1].size, "erf_center": list(center),
            "erf_extent_init": extents["init"], "erf_extent_trained": extents["trained"],
            "erf_rms_radius_init": rms["init"], "erf_rms_radius_trained": rms["trained"],
            "erf_center_share_trained": float(erfs["trained"][int(center[0]), int(center[1])]),
            "conv_costs": costs, "flops_by_resolution": flops_by_res, "params_by_resolution": params_by_res,
        }
        rf_variants.append({"name": f"{spec.name} ({kernel})",
                            "rf_layers": [(r.name, r.size) for r in rows[:n_specs]], "rf": unit_row.size,
                            "center": center, "erf_init": erfs["init"].numpy(), "erf_trained": erfs["trained"].numpy(),
                            "extent_init": extents["init"][str(ERF_MASS)],
                            "extent_trained": extents["trained"][str(ERF_MASS)]})
        first_conv = next(m for m in model.features if isinstance(m, nn.Conv2d))
        first_relu = next(m for m in model.features if isinstance(m, nn.ReLU))
        first_acts[f"{spec.name}"] = collect_activations(model, x[:3], {"a": first_relu})["a"].numpy()
        first_filters[f"{spec.name}"] = first_conv.weight.detach().float().cpu().numpy()

    steps = side_by_side_step_times(run.models, data.image_shape, cfg.batch_size, runtime)
    for name, t in steps.items():
        table[name]["step_time"] = t
    analysis = {"param_matching": {k: v for k, v in matching.items() if k != "variants"}, "erf_mass": ERF_MASS,
                "analysis_images": n_images, "models": table}
    write_json(out_dir / "analysis.json", analysis)
    atomic_write_text(out_dir / "analysis.md", kernel_markdown(analysis))
    title = _data_title(data)
    arch_plots.plot_architecture_bars(records, plots / f"{prefix}comparison.png",
                               f"Kernel size at equal parameters ({title})", matching["target_params"], PARAM_TOLERANCE,
                               step_ms={n: t["median_ms_per_batch"] for n, t in steps.items()})
    viz.plot_learning_curves(records, plots / f"{prefix}learning_curves.png", f"Kernel size: learning curves ({title})")
    arch_plots.plot_receptive_fields(rf_variants, plots / f"{prefix}receptive_fields.png",
                              f"Receptive fields of the last conv layer: theoretical vs empirical ERF "
                              f"(mean |gradient| over {n_images} test images)")
    arch_plots.plot_first_layer_activations(images[:3].numpy(), first_acts, plots / f"{prefix}first_layer_activations.png",
                                     "First conv layer activations (after BN+ReLU), 8 most active channels per model")
    arch_plots.plot_first_layer_filters(first_filters, plots / f"{prefix}first_layer_filters.png",
                                 "Learned first-layer filters (16 of largest norm, RGB, each scaled to its range)")
    return analysis


def kernel_markdown(analysis: dict) -> str:
    pm = analysis["param_matching"]
    lines = ["# Kernel size at equal parameters\n",
             f"Target: {pm['target_params']:,} parameters ({pm['reference']}), tolerance ±{100 * pm['tolerance']:.0f} %, "
             f"worst gap {100 * pm['max_relative_gap']:.2f} %. ERF extent = side of the centred square holding "
             f"{100 * analysis['erf_mass']:.0f} % of the mean |d unit / d input| over {analysis['analysis_images']} "
             f"test images.\n"]
    m95 = str(analysis["erf_mass"])
    rows = []
    for name, t in analysis["models"].items():
        acc = "–" if t["final_test_acc"] is None else f"{100 * t['final_test_acc']:.2f} %"
        tt = "–" if t["train_time_s"] is None else f"{t['train_time_s']:.0f} s"
        rows.append([name, "-".join(map(str, t["stage_widths"])), f"{t['params']:,}", f"{100 * t['param_gap']:+.2f} %",
                     f"{t['mflops']:.1f}", acc, tt, f"{t['step_time']['median_ms_per_batch']:.0f} ms",
                     f"{t['theoretical_rf']} px", f"{t['erf_extent_init'][m95]} px", f"{t['erf_extent_trained'][m95]} px",
                     f"{t['erf_rms_radius_init']:.1f} / {t['erf_rms_radius_trained']:.1f} px"])
    lines.append(markdown_table(["model", "stage widths", "params", "gap", "MFLOPs/img", "test acc", "train time",
                                 "fwd+bwd per batch (side by side)", "theoretical RF", "ERF95 init", "ERF95 trained",
                                 "ERF RMS radius init / trained"], rows))
    resolutions = list(next(iter(analysis["models"].values()))["flops_by_resolution"])
    rows = [[name] + [f"{t['flops_by_resolution'][k] / 1e6:.1f} / {t['params_by_resolution'][k]:,}"
                      for k in t["flops_by_resolution"]] for name, t in analysis["models"].items()]
    lines += ["", "FLOPs by the resolution the convolutions run at (MFLOPs / parameters):", "",
              markdown_table(["model", *resolutions], rows)]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------- depth study
def depth_specs(in_ch: int, classes: int) -> list[ModelSpec]:
    def plain(widths, **kw):
        return lambda c: PlainCNN(widths, in_channels=in_ch, num_classes=classes, **kw)

    def resnet(**kw):
        return lambda c: ResNet(BasicBlock, (16, 32, 64), (3, 3, 3), in_channels=in_ch, num_classes=classes, **kw)

    p20 = resnet_like_plain(3)
    return [
        ModelSpec("depth_2", plain([32, 64]), "plain, 2 conv3x3 (32, 64 stride 2), BN, GAP, linear",
                  group="depth_plain", variant="2"),
        ModelSpec("depth_4", plain([32, 32, 64, 64]), "plain, 4 conv3x3 (32-32-64-64), BN, GAP, linear",
                  group="depth_plain", variant="4"),
        ModelSpec("depth_8", plain([32, 32, 32, 64, 64, 64, 128, 128]),
                  "plain, 8 conv3x3 (3x32, 3x64, 2x128), BN, GAP, linear", group="depth_plain", variant="8"),
        ModelSpec("plain20_bn", plain(p20), "plain, 19 conv3x3 on ResNet-20 widths (16/32/64), BN, Kaiming init",
                  group="depth20", variant="plain_bn"),
        ModelSpec("resnet20_bn", resnet(), "ResNet-20: stem + 9 BasicBlocks (16/32/64), BN, Kaiming init",
                  group="depth20", variant="resnet_bn"),
        ModelSpec("plain20_nobn", plain(p20, norm=False, init="default"),
                  "plain, 19 conv3x3 on ResNet-20 widths, NO normalisation, PyTorch default init",
                  group="depth20", variant="plain_nobn"),
        ModelSpec("resnet20_nobn", resnet(norm=False, init="default"),
                  "ResNet-20 without normalisation, PyTorch default init", group="depth20",
                  variant="resnet_nobn"),
    ]


def _grad_view(record: RunRecord) -> RunRecord:
    """The record with projection-shortcut weights left out of its gradient statistics, so layer
    index = position along the main path (same x axis for plain and residual nets)."""
    g = record.grad_stats
    keep = [i for i, n in enumerate(g.names) if "shortcut" not in n]
    return dataclasses.replace(record, grad_stats=GradStats(
        names=[g.names[i] for i in keep], step=g.step, l2=[[row[i] for i in keep] for row in g.l2],
        mean_abs=[[row[i] for i in keep] for row in g.mean_abs]))


def _zeros_as_nan(view: RunRecord) -> RunRecord:
    """For log-scale plots: an exactly-zero gradient (ResNet blocks start as the identity because
    their last BN scale is zero-initialised, so their convs get no gradient at step 0) is drawn
    as a gap, not as a line down to -inf."""
    g = view.grad_stats
    return dataclasses.replace(view, grad_stats=dataclasses.replace(
        g, l2=[[v if v > 0 else float("nan") for v in row] for row in g.l2]))


def gradient_numbers(record: RunRecord) -> dict:
    """First/last layer gradient ratio at initialisation and during training, per-layer norms."""
    g = _grad_view(record).grad_stats
    if not g.l2:
        return {"samples": 0}
    norms = np.asarray(g.l2, dtype=float)
    finite = np.all(np.isfinite(norms), axis=1)
    summ = gradient_flow_summary(g.names, np.where(np.isfinite(norms), norms, np.nan))
    ratio = summ["first_last_ratio"]
    later = ratio[1:][np.isfinite(ratio[1:])]
    return {"samples": int(norms.shape[0]), "layers": g.names, "steps": g.step,
            "ratio_first_last_init": float(ratio[0]),
            "ratio_first_last_median_training": float(np.median(later)) if later.size else None,
            "ratio_first_last_final": float(ratio[-1]),
            "norm_first_init": float(norms[0, 0]), "norm_last_init": float(norms[0, -1]),
            "init_norms": norms[0].tolist(), "median_norms": summ["median_norm"].tolist(),
            "max_norm_seen": float(np.nanmax(np.where(np.isfinite(norms), norms, np.nan))),
            "non_finite_samples": int((~finite).sum())}


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


def analyse_depth(run: ExperimentRun, data: DatasetSplits, runtime: Runtime, out_dir: Path, plots: Path,
                  prefix: str, batch: int) -> dict:
    """Gradient ratios, theoretical RFs and feature maps; writes ``analysis.json/md`` + figures."""
    image = _fixed_test_images(data, 1)
    x = _normaliser(data, runtime)(image)
    records = run.records
    table, maps = {}, {}
    for rec in records:
        model, s = run.models[rec.model], rec.summary
        rf = receptive_field(layer_specs_from_module(model))
        n_convs = sum(isinstance(m, nn.Conv2d) for n, m in model.named_modules() if "shortcut" not in n)
        table[rec.model] = {
            "description": rec.description, "status": s.status, "diverged_at": rec.diverged_at,
            "conv_layers": n_convs, "params": s.params, "mflops": s.mflops,
            "final_test_acc": s.test_acc, "best_val_acc": s.best_val_acc,
            "final_train_acc": s.final_train_acc,
            "final_train_loss": rec.history.train_loss[-1] if rec.history.train_loss else None,
            "train_time_s": s.train_time_s, "epoch_time_s": s.epoch_time_s,
            "theoretical_rf_final": rf[-1].size if rf else None,
            "gradients": gradient_numbers(rec),
        }
        acts = collect_activations(model, x, dict((label, m) for label, m in _probe_layers(model)))
        # signal size along the depth (one test image): shrinks layer by layer when nothing keeps it up
        table[rec.model]["feature_map_mean_activation"] = {label: float(a.mean()) for label, a in acts.items()}
        if all(torch.isfinite(a).all() for a in acts.values()):
            maps[rec.model] = [(f"{label}\nmean {a.mean():.2g}", a[0].numpy()) for label, a in acts.items()]
        else:
            log.warning("%s: non-finite activations (diverged weights); left out of the feature-map figure",
                        rec.model)
    steps = side_by_side_step_times(run.models, data.image_shape, batch, runtime)
    for name, t in steps.items():
        table[name]["step_time"] = t
    analysis = {"models": table}
    write_json(out_dir / "analysis.json", analysis)
    atomic_write_text(out_dir / "analysis.md", depth_markdown(analysis))

    title = _data_title(data)
    by_name = {r.model: r for r in records}
    grads = [_grad_view(r) for r in records]
    arch_plots.plot_architecture_bars(records, plots / f"{prefix}comparison.png", f"Depth: size, cost and accuracy ({title})",
                               step_ms={n: t["median_ms_per_batch"] for n, t in steps.items()})
    viz.plot_learning_curves(records, plots / f"{prefix}learning_curves.png", f"Depth: learning curves ({title})")
    viz.plot_gradient_norms_per_layer([_zeros_as_nan(g) for g in grads], plots / f"{prefix}gradient_norms_per_layer.png",
                                      "Gradient L2 norm per layer (main path; shortcut projections left out)")
    arch_plots.plot_gradient_ratio(grads, plots / f"{prefix}gradient_ratio.png",
                            "Vanishing gradients: first-conv / last-layer gradient norm during training")
    family = [g for g in grads if g.group == "depth20"]
    shallow = [g for g in grads if g.group == "depth_plain"]
    if family:
        viz.plot_gradient_flow(family, plots / f"{prefix}gradient_flow_20_layers.png",
                               "Gradient flow over training, 20-layer networks")
    if shallow:
        viz.plot_gradient_flow(shallow, plots / f"{prefix}gradient_flow_shallow.png",
                               "Gradient flow over training, 2/4/8-layer plain networks")
    groups = [(t, [by_name[n] for n in names if n in by_name]) for t, names in
              (("with BatchNorm", ("depth_8", "plain20_bn", "resnet20_bn")),
               ("without normalisation", ("plain20_nobn", "resnet20_nobn")))]
    groups = [g for g in groups if g[1]]
    if groups:
        arch_plots.plot_plain_vs_residual(groups, plots / f"{prefix}plain_vs_residual.png",
                                   f"Plain vs residual at the same depth ({title})")
    if maps:
        arch_plots.plot_feature_maps_by_depth(image[0].numpy(), maps, plots / f"{prefix}feature_maps.png",
                                       "Feature maps at several depths (4 most active channels; "
                                       "'mean' = mean activation of the layer)")
    return analysis


def depth_markdown(analysis: dict) -> str:
    rows = []
    for name, t in analysis["models"].items():
        g = t["gradients"]
        acc = "–" if t["final_test_acc"] is None else f"{100 * t['final_test_acc']:.2f} %"
        loss = "–" if t["final_train_loss"] is None else f"{t['final_train_loss']:.3f}"
        tt = "–" if t["train_time_s"] is None else f"{t['train_time_s']:.0f} s"
        med = g.get("ratio_first_last_median_training")
        rows.append([name, t["conv_layers"], f"{t['params']:,}", f"{t['mflops']:.1f}", t["status"], acc, loss, tt,
                     f"{t['step_time']['median_ms_per_batch']:.0f} ms", f"{t['theoretical_rf_final']} px",
                     f"{g.get('ratio_first_last_init', float('nan')):.3g}", "–" if med is None else f"{med:.3g}"])
    table = markdown_table(["model", "convs", "params", "MFLOPs/img", "status", "test acc", "train loss (last epoch)",
                            "train time", "fwd+bwd per batch (side by side)", "theoretical RF", "grad ratio at init",
                            "grad ratio, median in training"], rows)
    return "\n".join(["# Depth and residual connections\n",
                      "Gradient ratio = ‖grad first conv weight‖ / ‖grad last (linear) layer weight‖; < 1: gradients "
                      "shrink towards the input.\n", table]) + "\n"


# ------------------------------------------------------------------------------ init study
@dataclass(frozen=True)
class InitStudyProfile:
    depths: tuple[int, ...]   # weighted layers, 6n+2
    seeds: int                # nets per (regime, depth): seeds --seed, --seed + 1, ...
    images: int = 256         # the one fixed batch of training images


INIT_PROFILES = {"quick": InitStudyProfile((8, 20), 2), "standard": InitStudyProfile((8, 20, 56), 5),
                 "full": InitStudyProfile((8, 20, 56), 5)}


def run_init_experiment(data: DatasetSplits, profile: InitStudyProfile, results_dir: Path, plots_dir: Path,
                        seeds: Sequence[int], name: str = "init_study") -> list[dict]:
    """Gradients at initialisation, measured and predicted (``utils.signal_propagation``): one
    forward/backward per net on a fixed batch of training images, on the CPU; writes
    ``<results_dir>/<name>.json`` (summary per regime and depth, and every net) and
    ``<plots_dir>/<name>.png``. Returns the summary."""
    t0 = time.perf_counter()
    n = min(profile.images, len(data.train))
    idx = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))[:n]
    images = BatchLoader(data.train, n, data.mean, data.std).normalise(data.train.images[idx])
    rows = run_init_study(images, data.train.labels[idx], profile.depths, REGIMES, seeds, num_classes=data.num_classes)
    summary = summarise_init_study(rows)
    wall = time.perf_counter() - t0
    write_json(results_dir / f"{name}.json", {
        "description": "gradient norms at initialisation, one forward/backward per net in train mode (mean "
                       "cross-entropy), no training; ratio = ||dL/dW first conv|| / ||dL/dW last conv|| along the "
                       "main path; prediction and its two readings: utils/signal_propagation.py",
        "data": data.describe(), "batch": {"images": n, "split": "train", "index_seed": 0},
        "regimes": {r: {"description": REGIME_SPECS[r].description, "init_scheme": REGIME_SPECS[r].scheme,
                        "batchnorm": REGIME_SPECS[r].norm, "residual": REGIME_SPECS[r].residual,
                        "dtype": str(REGIME_SPECS[r].dtype).removeprefix("torch.")} for r in REGIMES},
        "depths": list(profile.depths), "seeds": list(seeds), "device": "cpu", "threads": torch.get_num_threads(),
        "wall_time_s": round(wall, 2), "summary": summary, "rows": [r.as_dict() for r in rows]})
    title = f"Gradients at initialisation ({data.display_name}, one fixed batch of {n} training images)"
    arch_plots.plot_init_study(summary, plots_dir / f"{name}.png", title)
    for s in summary:
        log.info("init %-16s depth %2d: log10 ratio measured %.2f [%.2f, %.2f], predicted %.2f (zero-mean %.2f)",
                 s["regime"], s["depth"], s["log10_ratio"]["mean"], s["log10_ratio_min"], s["log10_ratio_max"],
                 s["predicted_log10_ratio"], s["predicted_log10_ratio_zero_mean"])
    log.info("init study: %d nets in %.1f s", len(rows), wall)
    return summary


# ------------------------------------------------------------------------------------- main
def _data_title(data: DatasetSplits) -> str:
    return f"{'CIFAR-10' if data.name == 'cifar10' else 'MNIST'}, {len(data.train)} train / {len(data.test)} test"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(__doc__.splitlines()[0], EXPERIMENTS, default_plots="plots/architecture_analysis")
    parser.add_argument("--dataset", choices=("cifar10", "mnist"), default="cifar10",
                        help="data set of both studies (CIFAR-10 separates the variants; MNIST is too easy)")
    args = parser.parse_args(argv)
    dirs = prepare_output_dirs(args)
    results = dirs.results / "architecture_analysis"
    setup_logging(results / "architecture_analysis.log", args.verbose)
    runtime = resolve_runtime(args.device, args.precision)
    profile = PROFILES[args.profile]
    log.info("profile %s, dataset %s, runtime %s", args.profile, args.dataset, runtime.describe())
    t0 = time.perf_counter()
    data = load_data(args, dirs, args.dataset, profile.train_subset, profile.test_subset, profile.val_size)
    in_ch, classes = data.image_shape[0], data.num_classes
    cfg = apply_cli_overrides(ARCH_CONFIG.replace(epochs=profile.epochs), args)
    suffix = "" if args.dataset == "cifar10" else f"_{args.dataset}"   # MNIST never overwrites CIFAR results
    for name in args.only or EXPERIMENTS:
        if name == "init":
            experiment = f"init_study{suffix}"
            init = INIT_PROFILES[args.profile]
            run_init_experiment(data, init, results / experiment, dirs.plots,
                                list(range(args.seed, args.seed + init.seeds)), name=experiment)
        elif name == "kernel":
            experiment = f"kernel_size{suffix}"
            matching = match_kernel_widths(profile.kernel_width, in_ch, classes)
            write_json(results / experiment / "param_matching.json", matching)
            for v in matching["variants"].values():
                log.info("kernel %-8s stage widths %-14s %s params (%+.2f %% vs target %s)", v["kernel"],
                         "-".join(map(str, v["stage_widths"])), f"{v['params']:,}", 100 * v["relative_gap"],
                         f"{matching['target_params']:,}")
            specs = kernel_specs(matching, in_ch, classes)
            run = run_experiment(experiment, specs, data, cfg, runtime, results, force=args.force,
                                 keep_models=True, title=f"Kernel size at equal parameters ({_data_title(data)})")
            analyse_kernels(run, specs, matching, data, cfg, runtime, results / experiment, dirs.plots,
                            f"{experiment}_", profile.analysis_images)
        else:
            experiment = f"depth{suffix}"
            run = run_experiment(experiment, depth_specs(in_ch, classes), data, cfg, runtime, results,
                                 force=args.force, keep_models=True,
                                 title=f"Depth and residual connections ({_data_title(data)})")
            analyse_depth(run, data, runtime, results / experiment, dirs.plots, f"{experiment}_", cfg.batch_size)
        log.info("%s done: results in %s, figures in %s", name, results / experiment, dirs.plots)
    log.info("total wall time %.0f s", time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
