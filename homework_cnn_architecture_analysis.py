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
          Kaiming init, each at a learning rate chosen on validation by pilot runs with the
          finals' budget (kept as ``depth_nobn_pilots/pilot_*.json``; the chosen one is the
          finals' first seed; ``--lr`` does not apply to them): residual connections rescuing
          training vs a bad init.
  init    gradients at initialisation, no training: first/last conv gradient-norm ratio and per-layer
          norms of plain nets (PyTorch default init, Kaiming, Kaiming + BN) and BN ResNets at depths
          8/20/56 on one fixed batch of 256 training images, several seeds, beside the
          variance-propagation prediction (``utils.analysis.signal_propagation``). Seconds of CPU.

Every choice is read on a validation split held out of the training set; the test set is evaluated
once at the end of each run. Writes ``results/architecture_analysis/<experiment>/`` (a JSON per run,
summary.csv/md, analysis.json/md) and ``plots/architecture_analysis/``.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from models.cnn_models import BasicBlock, KernelSizeCNN, PlainCNN, ResNet, resnet_like_plain
from utils.studies.architecture import numbers
from utils.studies.architecture import figures as arch_plots
from utils.studies.architecture.analysis import analyse_depth, analyse_kernels, analyse_nobn, data_title
from utils.engine.cli import (apply_cli_overrides, build_parser, load_data, prepare_output_dirs, run_cli,
                       setup_logging)
from utils.engine.data import BatchLoader, DatasetSplits
from utils.engine.executors import Executor, executor_from_args
from utils.engine.experiment import ExperimentConfig, ModelSpec
from utils.engine.files import write_json
from utils.engine.model_stats import (count_parameters, relative_param_gap, solve_width_for_params,
                               within_tolerance)
from utils.engine.records import write_summary
from utils.engine.runner import ExperimentRun, load_records, run_experiment, run_reusing
from utils.engine.runtime import Runtime, resolve_runtime
from utils.analysis.signal_propagation import REGIME_SPECS, REGIMES, run_init_study, summarise_init_study

log = logging.getLogger("architecture_analysis")
EXPERIMENTS = ("kernel", "depth", "nobn", "init")   # in this order ("nobn" reads the BN nets of "depth")
# where each experiment's training runs are (the init study trains nothing)
RUN_FOLDERS = {"kernel": ("kernel_size",), "depth": ("depth",), "nobn": ("depth_nobn_pilots", "depth_nobn"),
               "init": ()}
PARAM_TOLERANCE = 0.02


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
    zero_init_seeds: int          # the zero-init-residual control at the middle depth (0: none)
    nobn_lrs: tuple[float, ...]   # pilot learning rates of each no-normalisation net
    nobn_seeds: int
    analysis_images: int          # test images averaged for the ERF
    eval_points: int = 12         # evaluations per run (the plateau verdict needs >= 3 in the last 20 %)
    val_size: int = 5000          # held out of the training set; every choice is read on it


PROFILES = {
    "quick": Profile(train_subset=1000, test_subset=300, kernel_width=16, kernel_epochs=1, kernel_seeds=1,
                     depth_epochs=1, depth_seeds=1, depths=(8, 20), zero_init_seeds=1, nobn_lrs=(0.01, 0.05),
                     nobn_seeds=2, analysis_images=16, eval_points=4, val_size=300),
    # Sized from the first v2 runs on the 2-core AVX-512-bf16 EPYC (bf16 autocast, 2 threads, 6 epochs,
    # evaluation in batches of 1000): training seconds per run of 60k images were plain3 10, plain5 8,
    # plain8 14, resnet8 16, plain20 34, resnet20 37, plain44 77, resnet44 80; no-BN plain20 / resnet20
    # ~29 / ~31; the kernel nets ~15 each. Those 6-epoch curves were all still rising and 2 seeds gave
    # intervals of +-15 pp (t = 12.7 at n = 2), so the standard profile trains 10 epochs (780 steps)
    # for the depth study, its no-BN control and the kernel study, 3 seeds of every depth net and of
    # the zero-init control, and evaluates in batches of 256 (benchmarks/eval_batch.py: 1.5-1.9x
    # faster here than 1000):
    #   depth  3 seeds x 276 s (the 8 nets of one seed at 6 epochs) x 10/6 + zero-init 3 x 62 s = 1570 s
    #   no-BN  pilots 12 x 10 epochs (the finals' budget; the chosen one is the finals' seed 0)
    #          + finals' seed 1: 4 x 10 epochs, ~50 s each                     =  600 + 200 s
    #   kernel 3 seeds x 4 nets x 10 epochs                                      =  300 s
    # = ~2670 s of training steps; evaluation (12 points x 3000 images + 10k test once + inference
    # timing per run) ~15 % of that at batch 256; + data, init study, ERF, feature maps and figures
    # (~3 min) => ~55 min here. fp32 on the AVX2-only EPYC is 2.5-3x slower: ~2.3-2.8 h there, over
    # the 75-min budget; --epochs 4 and fewer seeds would be needed there.
    "standard": Profile(train_subset=10_000, test_subset=None, kernel_width=32, kernel_epochs=10, kernel_seeds=3,
                        depth_epochs=10, depth_seeds=3, depths=(8, 20, 44), zero_init_seeds=3,
                        nobn_lrs=(0.002, 0.01, 0.05), nobn_seeds=2, analysis_images=64),
    "full": Profile(train_subset=None, test_subset=None, kernel_width=48, kernel_epochs=30, kernel_seeds=3,
                    depth_epochs=30, depth_seeds=3, depths=(20, 32, 56), zero_init_seeds=3,
                    nobn_lrs=(0.002, 0.005, 0.01, 0.02, 0.05), nobn_seeds=3,
                    analysis_images=256, eval_points=20),
}

# One config for every study, fixed before any result was seen: He et al.'s CIFAR recipe as far as
# a CPU budget allows (SGD-Nesterov, batch 128, weight decay 1e-4, no augmentation, so that the
# training error measures fitting alone), one-cycle at peak lr 0.05. Kaiming init (the engine's
# default), zero-init residual off. No gradient clipping: divergence must stay visible. Curves on
# fixed 2000 validation / 1000 training images (the profile's number of points per run); the test
# set once at the end.
ARCH_CONFIG = ExperimentConfig(batch_size=128, lr=0.05, optimizer="sgd", schedule="onecycle", weight_decay=1e-4,
                               grad_sample_every=25, val_eval_samples=2000, train_eval_samples=1000,
                               eval_batch_size=256)

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
              keep_models: bool = True, executor: Executor | None = None) -> ExperimentRun:
    """:func:`run_experiment` for each ``(config changes, specs)`` part into one experiment folder,
    then one summary of all of them. Why parts: the init scheme and zero-init are experiment-wide
    config fields (recorded in every run), so the runs that differ in them run as separate parts."""
    merged = ExperimentRun([])
    for changes, specs in parts:
        if specs:
            run = run_experiment(experiment, specs, data, cfg.replace(**changes), runtime, results, force=force,
                                 keep_models=keep_models, title=title, executor=executor)
            merged.records += run.records
            merged.models.update(run.models)
    write_summary(merged.records, results / experiment, title)
    return merged


def run_nobn(args, data: DatasetSplits, cfg: ExperimentConfig, runtime: Runtime, results: Path, plots: Path,
             profile: Profile, suffix: str, executor: Executor | None = None) -> None:
    """Pilots (seed 0, every candidate lr, the finals' whole budget), the choice on validation, then
    the finals at the chosen lr over seeds; the chosen pilot is the finals' seed-0 run.

    Why pilots as long as the finals: an unnormalised net that learns at an lr for a short pilot can
    still die once the one-cycle schedule holds that lr longer (the first v2 run: plain-20 with
    Kaiming init chose 0.05 on 2-epoch pilots and sat at chance after 6 epochs)."""
    in_ch, classes, title = data.image_shape[0], data.num_classes, data_title(data)
    keys = [f"{net}{NOBN_DEPTH}_nobn/{init}" for net in ("plain", "resnet") for init in INITS]
    pilot_specs = nobn_specs(in_ch, classes, {k: profile.nobn_lrs for k in keys}, 1, pilot=True)
    pilots = run_parts(f"depth_nobn_pilots{suffix}", [({"init": i}, s) for i, s in pilot_specs.items()], data,
                       cfg, runtime, results, args.force, f"No-BN lr pilots, read on validation ({title})",
                       keep_models=False, executor=executor)
    choice = numbers.choose_lr(pilots.records)
    write_json(results / f"depth_nobn_pilots{suffix}" / "analysis.json", numbers.json_safe(choice))
    chosen = {k: (choice["choices"][k]["chosen_lr"],) for k in keys}
    final_specs = nobn_specs(in_ch, classes, chosen, profile.nobn_seeds, pilot=False)
    experiment = f"depth_nobn{suffix}"
    finals = ExperimentRun([])
    for init, specs in final_specs.items():
        finals.records += run_reusing(experiment, specs, pilots.records, data, cfg.replace(init=init), runtime,
                                      results, args.force, f"Without normalisation: default vs Kaiming init ({title})",
                                      executor=executor)
    write_summary(finals.records, results / experiment, f"Without normalisation: default vs Kaiming init ({title})")
    # the BN nets of the same depth from the depth study, if it ran on the same data and budget
    same_budget = [r for r in load_records(results / f"depth{suffix}")
                   if r.config.get("epochs") == cfg.epochs and r.config.get("batch_size") == cfg.batch_size
                   and r.data == data.describe()]
    reference = [r for r in same_budget
                 if (r.group, r.variant) in {("plain", str(NOBN_DEPTH)), ("residual", str(NOBN_DEPTH))}]
    analyse_nobn(pilots, finals, choice, reference, data, results / experiment, plots, f"{experiment}_", NOBN_DEPTH,
                 tuple(INITS), depth_runs=same_budget)


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
    """Gradients at initialisation, measured and predicted (``utils.analysis.signal_propagation``): one
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
                       "main path; prediction and its two readings: utils/analysis/signal_propagation.py",
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
def main(argv: list[str] | None = None) -> int:
    parser = build_parser(__doc__.splitlines()[0], EXPERIMENTS, default_plots="plots/architecture_analysis")
    parser.add_argument("--dataset", choices=("cifar10", "mnist"), default="cifar10",
                        help="data set of every study (CIFAR-10 separates the variants; MNIST is too easy)")
    args = parser.parse_args(argv)
    dirs = prepare_output_dirs(args)
    results = dirs.results / "architecture_analysis"
    setup_logging(results / "architecture_analysis.log", args.verbose)
    runtime = resolve_runtime(args.device, args.precision)
    executor = executor_from_args(args)
    profile = PROFILES[args.profile]
    log.info("profile %s, dataset %s, runtime %s", args.profile, args.dataset, runtime.describe())
    t0 = time.perf_counter()
    data = load_data(args, dirs, args.dataset, profile.train_subset, profile.test_subset, profile.val_size)
    in_ch, classes, title = data.image_shape[0], data.num_classes, data_title(data)
    cfg = apply_cli_overrides(ARCH_CONFIG.replace(eval_points=profile.eval_points), args)
    depth_cfg = cfg.replace(epochs=args.epochs or profile.depth_epochs)
    suffix = "" if args.dataset == "cifar10" else f"_{args.dataset}"   # MNIST never overwrites CIFAR results
    timing = {"profile": args.profile, "dataset": args.dataset, "only": args.only, "experiments": {}}
    for name in args.only or EXPERIMENTS:
        t1 = time.perf_counter()
        if name == "kernel":
            experiment = f"kernel_size{suffix}"
            matching = match_kernel_widths(profile.kernel_width, in_ch, classes)
            write_json(results / experiment / "param_matching.json", matching)
            specs = kernel_specs(matching, in_ch, classes, profile.kernel_seeds)
            kernel_cfg = cfg.replace(epochs=args.epochs or profile.kernel_epochs)
            run = run_experiment(experiment, specs, data, kernel_cfg, runtime, results, force=args.force,
                                 keep_models=True, title=f"Kernel size at equal parameters ({title})",
                                 executor=executor)
            analyse_kernels(run, specs, matching, data, kernel_cfg, runtime, results / experiment, dirs.plots,
                            f"{experiment}_", profile.analysis_images, PARAM_TOLERANCE)
        elif name == "depth":
            experiment = f"depth{suffix}"
            zero_depth = profile.depths[len(profile.depths) // 2]
            parts = [({}, depth_specs(profile.depths, profile.depth_seeds, in_ch, classes)),
                     ({"zero_init_residual": True}, zero_init_specs(zero_depth, profile.zero_init_seeds, in_ch,
                                                                    classes))]
            run = run_parts(experiment, parts, data, depth_cfg, runtime, results, args.force,
                            f"Depth: plain vs residual ({title})", executor=executor)
            analyse_depth(run, data, runtime, results / experiment, dirs.plots, f"{experiment}_", cfg.batch_size)
        elif name == "nobn":
            experiment = f"depth_nobn{suffix}"
            run_nobn(args, data, depth_cfg, runtime, results, dirs.plots, profile, suffix, executor)
        elif name == "init":
            experiment = f"init_study{suffix}"
            init = INIT_PROFILES[args.profile]
            run_init_experiment(data, init, results / experiment, dirs.plots,
                                list(range(args.seed, args.seed + init.seeds)), name=experiment)
        log.info("%s done in %.0f s: results in %s, figures in %s", name, time.perf_counter() - t1,
                 results / experiment, dirs.plots)
        runs = [r for folder in RUN_FOLDERS[name] for r in load_records(results / f"{folder}{suffix}")]
        timing["experiments"][name] = {"wall_s": time.perf_counter() - t1, **numbers.timing_summary(runs)}
    wall = time.perf_counter() - t0
    train = sum(t["train_s"] for t in timing["experiments"].values())
    # The script's wall time is that of a whole invocation: one of a part (--only) does not replace it.
    write_json(results / (f"timing{suffix}.json" if args.only is None else f"timing_partial{suffix}.json"), {
        **timing, "wall_s": wall, "train_s_of_runs": train, "train_share_of_wall": train / wall,
        "runtime": runtime.describe(),
        "note": "wall_s is this invocation (data loading, every experiment, analyses and figures); train_s counts "
                "every run of the experiments at the time it was made, so the share is the script's only when "
                "every run was trained in this invocation"})
    log.info("total wall time %.0f s, %.0f %% of it in training steps", wall, 100 * train / wall)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
