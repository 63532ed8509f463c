"""Task 2: CNN architecture analysis: kernel size and depth, on CIFAR-10 by default.

    python homework_cnn_architecture_analysis.py                       # standard profile, every study
    python homework_cnn_architecture_analysis.py --only kernel --profile quick
    python homework_cnn_architecture_analysis.py --dataset mnist       # MNIST (too easy to separate them)

Experiments (``--only``); every one follows protocol v3 (``utils/analysis/protocol.py``):
  kernel  3x3 vs 5x5 vs 7x7 vs 1x1+3x3 (a 1x1 that halves the channels before each 3x3 after the
          first stage, as in Inception) at the same parameter count (+-2 %), 5 seeds at one
          recipe; differences vs 3x3 on test (paired bootstrap over seeds and test images) and
          on training fit / train-val gap (paired t). The effective receptive field (ERF) on a
          canvas of 3x3 test images, so that every theoretical RF lies well inside the input, at
          initialisation and trained, over every seed (trained - init with its interval); ERF
          growth layer by layer; first-layer activations and filters.
  depth   plain vs residual nets (BN, Kaiming init) at three depths of the CIFAR ResNet (6n+2)
          layout, plus plain nets with 2 and 4 convolutions; the peak lr of every net chosen on
          validation from a bracketing grid by pilot runs (``depth_pilots/``), 3 final seeds
          disjoint from them; degradation read on training error (He et al. 2016) with its
          paired interval and the plateau verdict of every training curve; gradient flow during
          training (per-parameter RMS of every main-path conv); a zero-init-residual control whose
          branches' last-BN γ is recorded during training; feature-map statistics over 256 test
          images per seed.
  nobn    plain-20 and ResNet-20 without normalisation, under PyTorch's default init and under
          Kaiming init, each at an lr chosen on validation from a bracketing grid by pilots with the
          finals' budget, 3 final seeds; compared with the BN nets of the depth study, which it
          gets through the runner (trained there, or reused when finished).
  init    gradients at initialisation, no training: first/last conv gradient ratio and per-layer
          gradients (per-parameter RMS) of plain nets (PyTorch default init, Kaiming, Kaiming + BN) and BN ResNets at depths
          8/20/56 on one fixed batch of 256 training images, several seeds, beside the
          variance-propagation prediction (``utils.analysis.signal_propagation``). Seconds of CPU.

Every choice is read on a validation split held out of the training set; the test set is evaluated
once at the end of each run and only reports. Writes ``results/architecture_analysis/<experiment>/``
(a JSON per run, summary.csv/md, analysis.json/md) and ``plots/architecture_analysis/``.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from models.cnn_models import BasicBlock, KernelSizeCNN, PlainCNN, ResNet, resnet_like_plain
from utils.analysis.protocol import final_seeds
from utils.analysis.signal_propagation import REGIME_SPECS, REGIMES, run_init_study, summarise_init_study
from utils.comparison_utils import variant_key
from utils.engine.cli import (apply_cli_overrides, build_parser, load_data, prepare_output_dirs, run_cli,
                              setup_logging)
from utils.engine.data import BatchLoader, DatasetSplits
from utils.engine.executors import Executor, executor_from_args
from utils.engine.experiment import ExperimentConfig, ModelSpec
from utils.engine.files import write_json
from utils.engine.invocation import ExperimentCost, InvocationLog
from utils.engine.landing import keeps_landed_analysis, write_landing
from utils.engine.model_stats import (count_parameters, relative_param_gap, solve_width_for_params,
                                      within_tolerance)
from utils.engine.records import RunRecord, write_summary
from utils.engine.runner import ExperimentRun, run_experiment
from utils.engine.runtime import Runtime, resolve_runtime
from utils.studies.architecture import figures as arch_plots
from utils.studies.architecture.analysis import (analyse_depth, analyse_kernels, analyse_nobn, data_title,
                                                 main_path_convs, residual_end_params)
from utils.studies.architecture.numbers import DepthDesign
from utils.studies.architecture.selection import Tuned, tune_and_run

log = logging.getLogger("architecture_analysis")
EXPERIMENTS = ("kernel", "depth", "nobn", "init")   # "nobn" needs the BN nets of "depth" (run through the runner)
PARAM_TOLERANCE = 0.02


ARCH_TRAIN_EVAL_SAMPLES = 1000   # fixed training images of every clean-train curve (standard and full)


@dataclass(frozen=True)
class Profile:
    train_subset: int | None      # stratified training images (after the validation hold-out)
    test_subset: int | None
    val_size: int                 # held out of the training set; every choice is read on it
    kernel_width: int             # width of the 3x3 reference model: sets the common parameter target
    kernel_epochs: int
    kernel_seeds: int
    depth_epochs: int             # the depth study and its no-normalisation control (one budget)
    depths: tuple[int, ...]       # weighted layers (6n+2) of the plain and residual families
    depth_seeds: int              # final seeds of every depth net, the zero-init and the no-BN controls
    lr_grid: tuple[float, ...]    # pre-registered pilot grid of the BN nets (extended while an edge wins)
    nobn_lr_grid: tuple[float, ...]
    grid_extensions: int          # points a selection may add (protocol.MAX_GRID_EXTENSIONS in standard)
    erf_canvases: int             # canvases (each tiles x tiles test images) averaged for the ERF
    erf_tiles: int
    feature_images: int           # test images of the feature-map statistics, per seed
    eval_points: int = 12         # evenly spaced evaluations of a final run (its curves) ...
    plateau_points: int = 10      # ... and those of the plateau verdict's window (last 20 %; >= 8)
    pilot_eval_points: int = 4    # a pilot is read at its end only, on every validation image
    curve_val_samples: int | None = 2000   # validation images of the depth/no-BN curves (None: all)
    train_eval_samples: int = ARCH_TRAIN_EVAL_SAMPLES   # fixed training images of the clean-train curves


PROFILES = {
    # Every experiment on 1000 training images, 1 epoch: a smoke test of the whole pipeline (2
    # final seeds and a 2-point grid with one extension, so selection, extension and pairing run).
    # 3 evaluation points on 200 clean training images (evaluation, not training, was ~80 % of the
    # profile at 8 points and 1,000) and no per-run inference timing: 8.3 -> 2.3 min measured on a
    # 2-core AVX-512 Xeon without bf16 (fp32; run_study --profile quick, 7.2 min for all three).
    "quick": Profile(train_subset=1000, test_subset=300, val_size=300, kernel_width=16, kernel_epochs=1,
                     kernel_seeds=2, depth_epochs=1, depths=(8, 20), depth_seeds=2, lr_grid=(0.05, 0.1),
                     nobn_lr_grid=(0.01, 0.03), grid_extensions=1, erf_canvases=8, erf_tiles=3,
                     feature_images=64, eval_points=3, plateau_points=0, pilot_eval_points=2, curve_val_samples=None,
                     train_eval_samples=200),
    # Cost, from the committed bf16 runs (results/architecture_analysis/**: timing.train_s of 780
    # steps at batch 128 on the 2-core AVX-512-bf16 EPYC): seconds per step plain-3/5/8 0.020/0.017/
    # 0.030, ResNet-8 0.034, plain-20 / ResNet-20 0.076 / 0.079, plain-44 / ResNet-44 0.162 / 0.167,
    # no-BN 20-layer nets ~0.065; kernel nets 0.023 (3x3) / 0.029 (5x5, 7x7) / ~0.04 (1x1+3x3).
    # Evaluation (measured: 12 points x 3000 images cost 12 % of 780 steps): 40 evenly spaced points
    # x (2000 val + 1000 train) + the 10k test set once would add ~28 % to a 936-step run; a final
    # run's 19 points (12 evenly spaced, 10 in the plateau window) add ~14 %, a pilot's 4 points on
    # all 5,000 validation images ~7 %; the kernel study's 19 x (5000 + 1000) ~31 %.
    #   depth   12 epochs = 936 steps (10 epochs left plain-44 climbing +5.5 pp): the 8 nets of one
    #           seed 0.583 s/step x 936 = 546 s of training; 3 pilot lrs + ~4 extensions (~310 s)
    #           at x1.07 = 2040 s, 3 final seeds at x1.14 = 1870 s; zero-init ResNet-20 3 x 85 s
    #   no-BN   4 nets x 936 steps x 0.07 s: (3 pilots + ~1.25 extensions) x 1.07 + 3 finals x 1.14
    #           ~ 2110 s
    #   kernel  5 seeds (cheap and close: protocol.seeds_needed) x 4 nets x 780 steps x 0.122/4 s
    #           x 1.31 ~ 630 s
    #   ERF on 64 canvases (init + trained, 20 nets), feature maps on 256 images x 27 nets, init
    #   study, figures ~ 5 min
    # => ~7200 s ~ 120 min on bf16 (within 150; 40 evenly spaced points everywhere: ~139). On the
    # AVX2-only fp32 CPU it is 2.5-3x that. On the 2-core AMX Xeon (bf16) the same nets run 1.34x
    # slower (task 3's ResNet-20, the depth study's resnet20: 0.106 s/step with gradient samples,
    # results/custom_layers/blocks/basic_*), and a first standard run there, interrupted and lost
    # with its checkout, spent 104 min on the kernel study and the depth pilots alone: top-edge
    # winners of a 0.05/0.1/0.2 grid cost extensions (ResNet-44's reached 0.4 and then 0.8, on
    # validation), each a whole 936-step run. The grid is therefore centred one step higher, 0.1/0.2/0.4
    # (He et al.'s 0.1 its low edge; a low-edge winner still extends downwards), which saves one
    # pilot per net wherever the winner is >= 0.2: expected ~150 min on the Xeon. Each experiment
    # lands on its own (utils/engine/landing.py), so a run that outlasts a session loses nothing.
    # Measured there (the committed run, results/study_compute.json by_experiment): training steps of
    # kernel 18.0, depth pilots 60.3, depth finals + zero-init 47.0, no-BN pilots 19.1, no-BN finals
    # 13.3 min = 158 min, 175 min of run time with evaluation, plus ~5 min of ERF, feature maps, init
    # study and figures: ~30 min over the 150-min budget. The excess is the bracketing: plain-3/5/8 and
    # ResNet-8 each won at 1.6 after three added pilots (12 runs, ~9 min) and the depth-44 nets added
    # 0.8 (2 runs, ~8 min). To fit the budget, start the shallow nets' grid higher or run depths
    # (8, 20, 32); either changes the pre-registered design, so it is a new run, not a trim of this one.
    "standard": Profile(train_subset=10_000, test_subset=None, val_size=5000, kernel_width=32, kernel_epochs=10,
                        kernel_seeds=5, depth_epochs=12, depths=(8, 20, 44), depth_seeds=3,
                        lr_grid=(0.1, 0.2, 0.4), nobn_lr_grid=(0.003, 0.01, 0.03), grid_extensions=3,
                        erf_canvases=64, erf_tiles=3, feature_images=256),
    "full": Profile(train_subset=None, test_subset=None, val_size=5000, kernel_width=48, kernel_epochs=30,
                    kernel_seeds=5, depth_epochs=30, depths=(20, 32, 56), depth_seeds=3, lr_grid=(0.05, 0.1, 0.2),
                    nobn_lr_grid=(0.003, 0.01, 0.03), grid_extensions=3, erf_canvases=128, erf_tiles=4,
                    feature_images=512),
}

# One config for every study, fixed before any result was seen: He et al.'s CIFAR recipe as far as
# a CPU budget allows (SGD-Nesterov, batch 128, weight decay 1e-4, no augmentation, so that the
# training error measures fitting alone), one-cycle schedule. Kaiming init (the engine's default),
# zero-init residual off. No gradient clipping: divergence must stay visible. The peak lr of the
# depth and no-BN nets is chosen per net on validation; the kernel study keeps 0.05 for all four
# (its question is the kernel at a common recipe). Curves on a fixed validation subset and 1000
# fixed training images; the test set once at the end.
ARCH_CONFIG = ExperimentConfig(batch_size=128, lr=0.05, optimizer="sgd", schedule="onecycle", weight_decay=1e-4,
                               grad_sample_every=25, train_eval_samples=ARCH_TRAIN_EVAL_SAMPLES,
                               eval_batch_size=256)

KERNEL_NAMES = {"3x3": "conv3x3", "5x5": "conv5x5", "7x7": "conv7x7", "1x1+3x3": "conv1x1_3x3"}
# variant label -> KernelSizeCNN arguments
KERNEL_VARIANTS = {"3x3": {"kernel_size": 3}, "5x5": {"kernel_size": 5}, "7x7": {"kernel_size": 7},
                   "1x1+3x3": {"kernel_size": 3, "reduce_1x1": True}}
KERNEL_GROUP, KERNEL_REFERENCE = "kernel_size", "3x3"

RESNET_WIDTHS = (16, 32, 64)           # the CIFAR ResNet of He et al. (2016), Sec. 4.2
SHALLOW_PLAIN = {3: (32, 64), 5: (16, 32, 64, 64)}   # weighted layers -> conv widths (2 and 4 convs)
PLAIN, RESIDUAL, ZERO_INIT = "plain", "residual", "residual_zero_init"
NOBN_DEPTH = 20
NOBN_NETS = {"plain": "plain20_nobn", "residual": "resnet20_nobn"}   # family -> no-BN group
INITS = {"pytorch_default": "default_init", "kaiming": "kaiming"}   # init scheme -> name part
NOBN_LABELS = {"pytorch_default": "PyTorch default init", "kaiming": "Kaiming init"}


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
    """Every kernel variant (``group=KERNEL_GROUP``, ``variant`` = its label) for final seeds
    ``0..seeds-1``, seed-major (a study stopped half-way has every variant at its first seed)."""
    base = []
    for kernel, v in matching["variants"].items():
        widths = tuple(v["stage_widths"])

        def build(c: ExperimentConfig, kernel=kernel, widths=widths) -> nn.Module:
            return kernel_cnn(kernel, widths[0], in_ch, classes, stage_widths=widths)

        layout = ("3x3 conv in stage 1, then 1x1 (input channels / 2) + 3x3" if kernel == "1x1+3x3"
                  else f"{kernel} conv")
        base.append(ModelSpec(v["name"], build, f"3 stages of {layout}-BN-ReLU-maxpool, widths "
                                                f"{'-'.join(map(str, widths))}, GAP, linear",
                              group=KERNEL_GROUP, variant=kernel))
    return [s.with_seed(k) for k in final_seeds(seeds) for s in base]


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


def _gamma_tracked(build: Callable[[ExperimentConfig], nn.Module]) -> tuple[str, ...]:
    """The residual branches' last-BN scales of the built net (what the zero-init control zeroes)."""
    return tuple(n for names in residual_end_params(build(ARCH_CONFIG)).values() for n in names)


def depth_base_specs(depths: tuple[int, ...], in_ch: int, classes: int) -> list[ModelSpec]:
    """One base spec per depth net: plain (``group=PLAIN``) and residual (``group=RESIDUAL``) at each
    depth of the 6n+2 layout (``variant`` = weighted layers), plus plain nets with 2 and 4
    convolutions. Both families: widths 16/32/64, BN; the plain net is the ResNet without its
    shortcuts (same convs, same strides). The ResNets track their branches' last-BN γ."""
    widths = "/".join(map(str, RESNET_WIDTHS))
    base = [ModelSpec(f"plain{d}", _plain(w, in_ch, classes), f"plain, {len(w)} conv3x3 ({'-'.join(map(str, w))}), "
                      "BN, GAP, linear", group=PLAIN, variant=str(d)) for d, w in SHALLOW_PLAIN.items()]
    for d in depths:
        n = blocks_per_stage(d)
        base.append(ModelSpec(f"plain{d}", _plain(resnet_like_plain(n, RESNET_WIDTHS), in_ch, classes),
                              f"plain-{d}: {d - 1} conv3x3 ({widths}, {2 * n} per stage + stem), BN, GAP, linear",
                              group=PLAIN, variant=str(d)))
        build = _resnet(d, in_ch, classes)
        base.append(ModelSpec(f"resnet{d}", build, f"ResNet-{d}: stem + {3 * n} BasicBlocks ({widths}), BN, GAP, "
                              "linear", group=RESIDUAL, variant=str(d), tracked_params=_gamma_tracked(build)))
    return base


def depth_of_specs(specs: Sequence[ModelSpec]) -> dict[tuple[str, str], int]:
    """(group, variant) -> weighted layers, for every depth-study spec (the layout is data)."""
    return {(s.group, s.variant): int(s.variant) for s in specs}


def zero_init_spec(reference: ModelSpec) -> ModelSpec:
    """The labelled control: ``reference`` (a ResNet spec) with each block's last BN γ zero-initialised
    (the run's config sets ``zero_init_residual``; group ``ZERO_INIT``, same variant)."""
    return dataclasses.replace(reference, name=f"{reference.name}_zero_init", group=ZERO_INIT,
                               description=f"{reference.description}; last BN γ of every block zero-initialised")


def nobn_base_specs(in_ch: int, classes: int) -> list[tuple[str, ModelSpec]]:
    """Plain-20 and ResNet-20 without normalisation under each init scheme, as ``(init, spec)``
    (``group`` = net, ``variant`` = init scheme)."""
    n = blocks_per_stage(NOBN_DEPTH)
    nets = {NOBN_NETS["plain"]: (_plain(resnet_like_plain(n, RESNET_WIDTHS), in_ch, classes, norm=False),
                                 f"plain-{NOBN_DEPTH} without normalisation"),
            NOBN_NETS["residual"]: (_resnet(NOBN_DEPTH, in_ch, classes, norm=False),
                                    f"ResNet-{NOBN_DEPTH} without normalisation")}
    return [(init, ModelSpec(f"{net}_{part}", build, f"{desc}, init {init}", group=net, variant=init))
            for init, part in INITS.items() for net, (build, desc) in nets.items()]


# ------------------------------------------------------------------------------ running
@dataclass
class Context:
    """What every experiment of one invocation shares."""

    data: DatasetSplits
    runtime: Runtime
    results: Path
    plots: Path
    force: bool
    suffix: str                                   # "" for CIFAR-10, "_mnist" for MNIST
    executor: Executor | None = None
    cost: ExperimentCost | None = None            # the invocation log's entry of the experiment being run
    depth_cache: dict = field(default_factory=dict)

    def trainer(self, experiment: str, cfg: ExperimentConfig, title: str, keep_models: bool,
                models: dict | None = None) -> Callable[[list[ModelSpec]], list[RunRecord]]:
        """``specs -> records`` into ``results/<experiment><suffix>`` (the runner skips finished runs);
        trained models are added to ``models`` when kept."""
        def train(specs: list[ModelSpec]) -> list[RunRecord]:
            run = run_experiment(f"{experiment}{self.suffix}", specs, self.data, cfg, self.runtime, self.results,
                                 force=self.force, keep_models=keep_models, title=title, executor=self.executor)
            if self.cost is not None:
                self.cost.add(run.records, run.trained)
            if models is not None:
                models.update(run.models)
            return run.records
        return train


def pilot_config(cfg: ExperimentConfig, profile: Profile) -> ExperimentConfig:
    """A selection run's config: only its final validation accuracy chooses (``val_score``), so a
    few evenly spaced points, no plateau window, and every validation image."""
    return cfg.replace(eval_points=profile.pilot_eval_points, plateau_points=0, val_eval_samples=None)


@dataclass
class DepthRuns:
    tuned: list[Tuned]
    zero_init: list[RunRecord]
    models: dict[str, nn.Module]
    design: DepthDesign
    specs: list[ModelSpec]

    def records(self) -> list[RunRecord]:
        """Every run the depth analysis reads: pilots, finals and the zero-init control."""
        return [r for t in self.tuned for r in (*t.pilots, *t.finals)] + self.zero_init


def run_depth(ctx: Context, cfg: ExperimentConfig, profile: Profile, keep_models: bool = True) -> DepthRuns:
    """The depth study through the runner (cached per invocation, so the no-BN control reuses it):
    per net, bracketing lr pilots on validation (``depth_pilots``), then final seeds at the winner
    (``depth``); the zero-init control at the middle depth at its reference ResNet's chosen lr."""
    if "runs" in ctx.depth_cache and (ctx.depth_cache["runs"].models or not keep_models):
        return ctx.depth_cache["runs"]
    in_ch, classes, title = ctx.data.image_shape[0], ctx.data.num_classes, data_title(ctx.data)
    specs = depth_base_specs(profile.depths, in_ch, classes)
    models: dict[str, nn.Module] = {}
    tuned = tune_and_run(specs, profile.lr_grid, profile.depth_seeds,
                         ctx.trainer("depth_pilots", pilot_config(cfg, profile), f"Depth: lr pilots ({title})", False),
                         ctx.trainer("depth", cfg, f"Depth: plain vs residual ({title})", keep_models, models),
                         profile.grid_extensions)
    zero_depth = profile.depths[len(profile.depths) // 2]
    ref = next(s for s in specs if (s.group, s.variant) == (RESIDUAL, str(zero_depth)))
    chosen = next(t.selection.winner for t in tuned if t.key == variant_key(RESIDUAL, str(zero_depth)))
    zero = [dataclasses.replace(zero_init_spec(ref), lr=chosen).with_seed(k) for k in final_seeds(profile.depth_seeds)]
    zero_runs = ctx.trainer("depth", cfg.replace(zero_init_residual=True), f"Depth: zero-init control ({title})",
                            keep_models, models)(zero)
    finals = [r for t in tuned for r in t.finals] + zero_runs
    write_summary(finals, ctx.results / f"depth{ctx.suffix}", f"Depth: plain vs residual ({title})")
    write_summary([r for t in tuned for r in t.pilots], ctx.results / f"depth_pilots{ctx.suffix}",
                  f"Depth: lr pilots ({title})")
    design = DepthDesign(PLAIN, RESIDUAL, depth_of_specs(specs),
                         controls=[((ZERO_INIT, str(zero_depth)), (RESIDUAL, str(zero_depth)))])
    runs = DepthRuns(tuned, zero_runs, models, design, specs)
    ctx.depth_cache["runs"] = runs
    return runs


def run_nobn(ctx: Context, cfg: ExperimentConfig, profile: Profile) -> dict:
    """Per no-BN net and init: bracketing lr pilots at the finals' budget (an unnormalised net that
    learns at an lr for a short pilot can still die when the schedule holds that lr longer), then
    final seeds disjoint from them. Compared with the BN nets of the same depth and budget, which
    come from the depth study through the runner (trained there, or reused when finished)."""
    in_ch, classes, title = ctx.data.image_shape[0], ctx.data.num_classes, data_title(ctx.data)
    tuned = []
    for init, spec in nobn_base_specs(in_ch, classes):
        part = cfg.replace(init=init)
        tuned += tune_and_run([spec], profile.nobn_lr_grid, profile.depth_seeds,
                              ctx.trainer("depth_nobn_pilots", pilot_config(part, profile), f"No-BN lr pilots ({title})",
                                          False),
                              ctx.trainer("depth_nobn", part, f"Without normalisation ({title})", False),
                              profile.grid_extensions)
    finals = [r for t in tuned for r in t.finals]
    pilots = [r for t in tuned for r in t.pilots]
    write_summary(finals, ctx.results / f"depth_nobn{ctx.suffix}", f"Without normalisation ({title})")
    write_summary(pilots, ctx.results / f"depth_nobn_pilots{ctx.suffix}", f"No-BN lr pilots ({title})")
    depth = run_depth(ctx, cfg, profile, keep_models=False)
    bn = {(PLAIN, str(NOBN_DEPTH)), (RESIDUAL, str(NOBN_DEPTH))}
    reference = [r for t in depth.tuned for r in t.finals if (r.group, r.variant) in bn]
    nets = {fam: NOBN_NETS[fam] for fam in ("plain", "residual")}
    pairs = ([((net, "kaiming"), (net, "pytorch_default")) for net in nets.values()]
             + [((nets["residual"], init), (nets["plain"], init)) for init in INITS]
             + [((PLAIN, str(NOBN_DEPTH)), (nets["plain"], "kaiming")),
                ((RESIDUAL, str(NOBN_DEPTH)), (nets["residual"], "kaiming"))])
    labels = {variant_key(net, init): f"{'plain' if fam == 'plain' else 'ResNet'}-{NOBN_DEPTH}, no BN, "
                                      f"{NOBN_LABELS[init]}" for fam, net in nets.items() for init in INITS}
    labels |= {variant_key(PLAIN, str(NOBN_DEPTH)): f"plain-{NOBN_DEPTH}, BN, Kaiming init",
               variant_key(RESIDUAL, str(NOBN_DEPTH)): f"ResNet-{NOBN_DEPTH}, BN, Kaiming init"}
    main_path = {}
    for spec in [s for _, s in nobn_base_specs(in_ch, classes)] + [s for s in depth.specs
                                                                     if (s.group, s.variant) in bn]:
        convs = main_path_convs(spec.build(cfg))
        main_path |= {r.model: convs for r in [*finals, *reference] if (r.group, r.variant) == (spec.group,
                                                                                                 spec.variant)}
    experiment = f"depth_nobn{ctx.suffix}"
    return analyse_nobn(tuned, reference, pairs, labels, main_path, ctx.data, ctx.results / experiment, ctx.plots,
                        f"{experiment}_")


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
        "description": "gradients at initialisation, one forward/backward per net in train mode (mean "
                       "cross-entropy), no training; ratio = rms(dL/dW first conv) / rms(dL/dW last conv) along "
                       "the main path, rms = ||g|| / sqrt(numel) (whole-tensor norms in rows.grad_norms); "
                       "prediction and its two readings: utils/analysis/signal_propagation.py",
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
def run_kernel(ctx: Context, cfg: ExperimentConfig, profile: Profile) -> dict | None:
    """The kernel study and its analysis; None when its landed analysis is kept (``utils.engine.landing``)."""
    in_ch, classes = ctx.data.image_shape[0], ctx.data.num_classes
    title = f"Kernel size at equal parameters ({data_title(ctx.data)})"
    experiment = f"kernel_size{ctx.suffix}"
    matching = match_kernel_widths(profile.kernel_width, in_ch, classes)
    write_json(ctx.results / experiment / "param_matching.json", matching)
    specs = kernel_specs(matching, in_ch, classes, profile.kernel_seeds)
    if not ctx.force and keeps_landed_analysis(ctx.results / experiment,
                                               ctx.trainer("kernel_size", cfg, title, False)(specs), ctx.results):
        return None
    models: dict[str, nn.Module] = {}
    records = ctx.trainer("kernel_size", cfg, title, True, models)(specs)
    numbers = analyse_kernels(ExperimentRun(records, models), specs, matching, (KERNEL_GROUP, KERNEL_REFERENCE),
                              ctx.data, ctx.runtime, ctx.results / experiment, ctx.plots, f"{experiment}_",
                              profile.erf_canvases, profile.erf_tiles)
    write_landing(ctx.results / experiment, records)
    return numbers


def run_depth_experiment(ctx: Context, cfg: ExperimentConfig, profile: Profile) -> dict | None:
    """The depth study and its analysis; None when its landed analysis is kept (``utils.engine.landing``)."""
    folder = ctx.results / f"depth{ctx.suffix}"
    if not ctx.force and keeps_landed_analysis(folder, run_depth(ctx, cfg, profile, keep_models=False).records(),
                                               ctx.results):
        return None
    depth = run_depth(ctx, cfg, profile)
    zero_key = depth.design.controls[0]
    numbers = analyse_depth(depth.tuned, depth.zero_init, depth.models, depth.design, [zero_key], ctx.data,
                            ctx.runtime, folder, ctx.plots, f"depth{ctx.suffix}_", profile.feature_images)
    write_landing(folder, depth.records())
    return numbers


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
    calls = InvocationLog(dirs.results, Path(__file__).stem, args.profile, runtime.describe(), args.only)
    data = load_data(args, dirs, args.dataset, profile.train_subset, profile.test_subset, profile.val_size)
    cfg = apply_cli_overrides(ARCH_CONFIG.replace(eval_points=profile.eval_points, plateau_points=profile.plateau_points,
                                                  train_eval_samples=profile.train_eval_samples), args)
    kernel_cfg = cfg.replace(epochs=args.epochs or profile.kernel_epochs, val_eval_samples=None)
    depth_cfg = cfg.replace(epochs=args.epochs or profile.depth_epochs, val_eval_samples=profile.curve_val_samples)
    suffix = "" if args.dataset == "cifar10" else f"_{args.dataset}"   # MNIST never overwrites CIFAR results
    ctx = Context(data, runtime, results, dirs.plots, args.force, suffix, executor_from_args(args))
    with calls:
        for name in args.only or EXPERIMENTS:
            with calls.experiment(f"{name}{suffix}") as ctx.cost:
                if name == "kernel":
                    run_kernel(ctx, kernel_cfg, profile)
                elif name == "depth":
                    run_depth_experiment(ctx, depth_cfg, profile)
                elif name == "nobn":
                    run_nobn(ctx, depth_cfg, profile)
                elif name == "init":
                    init = INIT_PROFILES[args.profile]
                    run_init_experiment(data, init, results / f"init_study{suffix}", dirs.plots,
                                        list(range(args.seed, args.seed + init.seeds)), name=f"init_study{suffix}")
            log.info("%s done in %.0f s: results in %s, figures in %s", name, ctx.cost.wall_s, results, dirs.plots)
    log.info("done: %s", calls.describe())
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
