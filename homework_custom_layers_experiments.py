"""Task 3: custom layers with hand-written backward passes against their standard twins, swapped one
at a time into a small CNN; residual blocks compared at equal parameters, each in the shape that is
its point; and how stably each block trains along a learning-rate sweep.

    python homework_custom_layers_experiments.py                      # standard profile (see PROFILES)
    python homework_custom_layers_experiments.py --only speed layers --profile quick

Experiments (``--only``):
  speed         paired, interleaved benchmarks in fp32 and under the training precision (bf16
                autocast, custom layers as fp32 islands): every custom layer against its autograd
                twin and the standard layer; one training batch of every layer-swap net (and of
                each custom net's autograd twin) against the base CNN.
  layers        SwappableCNN on CIFAR-10 with one layer swapped at a time (custom conv, SE, CBAM,
                Swish / native SiLU, mixed / native average pooling, GeM head), every variant over
                the same final seeds, each against the base CNN and each custom layer against its
                native twin (paired 95 % intervals over seeds and test images).
  blocks_sweep  the pilot runs of the four block nets (pilot seeds): each block's lr and one shared
                lr chosen on validation with bracketing grids, and each block's grid extended
                upwards until a pilot is unstable or the cap (the stability study: frontier, loss
                spikes, gradient RMS over training, loss at the highest stable lr).
  blocks        the final runs (seeds disjoint from the pilots) of every block at its own lr and
                at the shared lr, every block against the basic net. Runs the sweep first through
                the runner (finished pilots are reused by config hash, read in memory).

The block nets (equal parameters within 5 %, FLOPs reported; :data:`BLOCK_DESIGNS`): basic =
ResNet-20 (3 basic blocks per stage at 16-32-64); preact = the same net with pre-activation
blocks (the control that separates pre-activation from width); wide = WRN-style pre-activation
net with 1 block per stage, width solved for the basic net's parameters; bottleneck = 3 bottleneck
blocks (1x1-3x3-1x1, expansion 4) per stage, inner width solved likewise (29 layers: deeper for the
same cost). A "canonical" regime at unequal sizes is not run: every net is already in its
canonical shape, and at unequal sizes a difference says nothing about the block.

Every run: Kaiming init, zero-init of residual ends off, no dropout. Writes
``results/custom_layers/{layers,blocks_sweep,blocks}/`` (run JSONs, summary, analysis.json/md),
``layer_speed.{json,md}`` and ``plots/custom_layers/*.png``; the cost of each call goes to
``results/invocations/homework_custom_layers_experiments.json``.
"""

from __future__ import annotations

import functools
import logging
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from torch import nn

from models.cnn_models import BasicBlock, BottleneckBlock, PreActBlock, ResidualBlock, ResNet, SwappableCNN, WideBlock
from models.custom_layers import CBAM, ChannelAttention, CustomConv2d, GeMPool2d, MixedPool2d, Swish
from utils.analysis.protocol import check_disjoint, final_seeds, pilot_seeds, seeds_needed
from utils.comparison_utils import difference_with_verdict, json_safe, variant_key, variant_numbers
from utils.engine.cli import apply_cli_overrides, build_parser, load_data, prepare_output_dirs, run_cli, setup_logging
from utils.engine.data import DatasetSplits
from utils.engine.executors import Executor, executor_from_args
from utils.engine.experiment import ExperimentConfig, ModelSpec
from utils.engine.files import atomic_write_text, make_dir, write_json
from utils.engine.invocation import ExperimentCost, InvocationLog, runs_cost
from utils.engine.landing import keeps_landed_analysis, write_landing
from utils.engine.model_stats import count_flops, count_parameters, relative_param_gap, solve_width_for_params
from utils.engine.records import RunRecord, write_summary
from utils.engine.runner import ExperimentRun, run_experiment
from utils.engine.runtime import Runtime, resolve_runtime
from utils.studies.custom_layers import blocks as block_study
from utils.studies.custom_layers import figures as block_plots
from utils.studies.custom_layers.markdown import finals_markdown, layers_markdown, sweep_markdown
from utils.studies.custom_layers.speed import SE_REDUCTION, run_speed

log = logging.getLogger("custom_layers")
EXPERIMENTS = ("speed", "layers", "blocks_sweep", "blocks")
SUBDIR = "custom_layers"


@dataclass(frozen=True)
class Profile:
    layers_epochs: int
    blocks_epochs: int        # pilots and finals of the block study (one schedule: the lr chosen is the lr used)
    train_subset: int | None
    test_subset: int | None
    seeds: int                # final seeds of every layer variant and of every block at each lr
    pilot_seeds: int          # pilot seeds of every (block, lr) of the sweep
    eval_points: int          # evenly spaced validation curve points of a final run ...
    pilot_eval_points: int    # of a pilot (only its final validation accuracy chooses)
    val_eval_samples: int | None
    train_eval_samples: int
    speed_batch: int          # batch of the layer benchmark's feature maps
    net_batch: int            # batch of the training-cost benchmark (the training batch)
    speed_repeats: int        # interleaved rounds of every benchmark (>= 5)
    grad_sample_every: int    # gradient norms recorded every k optimisation steps
    lr_grid: tuple[float, ...] = (0.16, 0.4, 1.0)   # pre-registered block lr grid (x2.5), before bracketing
    lr_cap: float = 16.0      # the stability extension's last lr (100x the grid's bottom)
    min_train_acc: float = 0.2   # a completed run below it (2x chance) never learned: unstable
    more_seeds_when_close: bool = True   # protocol.seeds_needed: 5 seeds where 3 straddle zero and runs are cheap
    val_size: int = 5000      # held out of the training set; every curve is read on it
    plateau_points: int = 10  # ... and a final run's points in the plateau verdict's window (last 20 %; >= 8)


PROFILES = {
    "quick": Profile(layers_epochs=1, blocks_epochs=1, train_subset=600, test_subset=200, seeds=2, pilot_seeds=1,
                     eval_points=3, pilot_eval_points=2, val_eval_samples=None, train_eval_samples=200, speed_batch=8,
                     net_batch=16, speed_repeats=2, grad_sample_every=2, lr_cap=2.5, min_train_acc=0.0,
                     more_seeds_when_close=False, val_size=200, plateau_points=0),
    # quick: a smoke test of every code path (4 steps learn nothing, so only divergence is unstable);
    # 2.4 min measured on a 2-core AVX-512 Xeon without bf16 (fp32; 4.0 min while every run still
    # timed its own inference)
    # Standard: 10,000 stratified training images, 6 epochs (468 steps) for the layer swaps and for
    # every block run, 3 final seeds per variant, 3 pilot seeds per (block, lr); finals evaluated at
    # 19 points (12 evenly spaced, 10 in the v3 plateau window) on 1,000 validation / 500 train
    # images, pilots at 4 (only the last chooses); the test set once, on a 5,000-image subset.
    # Cost on the 2-core AVX-512-bf16 EPYC, from the committed bf16 runs (results/custom_layers:
    # timing.train_s of 9-epoch runs on 10k images: 0.96 s per MFLOP/image for basic-block nets,
    # 1.0 for pre-activation, 1.43 for bottleneck nets; evaluation ~6,000 img/s):
    #   one 6-epoch run: basic / preact (81.6 MFLOPs) ~55 s, wide (78.9) ~53 s, bottleneck (83.1)
    #   ~80 s of training; + ~2.5 s evaluation (pilot) or ~6 s (final)  -> pilot ~64 s, final ~67 s.
    #   pilots: 4 blocks x 3 seeds x ~4 lrs trained to the end (grid 0.16/0.4/1.0 + one bracketing or
    #     upward point) = 48 x 64 s = 51 min, + ~18 unstable runs at 2.5-16 (a diverged run stops
    #     early; ~40 % of a run on average) = 8 min;
    #   finals: 4 blocks x 3 seeds at their own lr + the shared lr where it differs (~2 of 4 blocks)
    #     = 18 x 67 s = 20 min; where a block's 3-seed difference to basic straddles zero, 2 more seeds
    #     of it and of basic (protocol.seeds_needed; a run is under 2 min): up to 16 runs, 18 min;
    #   layers: 9 variants x 3 seeds x 6 epochs = 27 runs, 8.9 min of training (committed) + 19-point
    #     evaluation ~1.5 min = 10.5 min; speed: 2 precisions x (10 layer cases + 15 nets) x 15 rounds
    #     ~3 min
    #   => ~93-103 min expected; worst case ~142 min (no block unstable below the cap: 36 more
    #     full-length pilots, 38 min, and every comparison close).
    # 9 epochs for the blocks would cost ~1.45x in the sweep (~140-190 min): over the budget, so the
    # block study trains 6 epochs, pilots and finals alike.
    "standard": Profile(layers_epochs=6, blocks_epochs=6, train_subset=10_000, test_subset=5000, seeds=3,
                        pilot_seeds=3, eval_points=12, pilot_eval_points=4, val_eval_samples=1000,
                        train_eval_samples=500, speed_batch=128, net_batch=128, speed_repeats=15,
                        grad_sample_every=5),
    "full": Profile(layers_epochs=15, blocks_epochs=20, train_subset=None, test_subset=None, seeds=5, pilot_seeds=3,
                    eval_points=12, pilot_eval_points=4, val_eval_samples=None, train_eval_samples=2000,
                    speed_batch=128, net_batch=128, speed_repeats=15, grad_sample_every=20),
}

# One recipe for every run of the task: SGD-Nesterov + one-cycle (as task 1), weight decay 5e-4, no
# augmentation; He init, no zero-init of residual ends, no dropout. The layer swaps train at lr 0.1;
# the block nets at the lrs their pilots chose (the grid is given relative to this lr, so --lr moves it).
BASE_CONFIG = ExperimentConfig(batch_size=128, lr=0.1, optimizer="sgd", schedule="onecycle", weight_decay=5e-4,
                               init="kaiming", zero_init_residual=False, dropout=0.0, eval_batch_size=256)
WIDTH = 32             # SwappableCNN widths 32-64-128 (~95 k parameters, ~21 MFLOPs/image)


# ------------------------------------------------------------------------------------ layers
@dataclass(frozen=True)
class LayerVariant:
    name: str
    layer: str                # the base CNN's layer that is swapped ("none" for the base CNN itself)
    description: str
    swap: dict                # SwappableCNN keyword arguments
    custom: bool = False      # the swapped layer has a hand-written backward (it gets an autograd twin)


LAYER_VARIANTS = (
    LayerVariant("base", "none", f"SwappableCNN {WIDTH}-{2 * WIDTH}-{4 * WIDTH}: Conv2d, BN, ReLU, MaxPool2d(2); "
                 "avg-pool head", {}),
    LayerVariant("conv_ws", "conv", "conv -> CustomConv2d with weight standardisation",
                 {"conv": functools.partial(CustomConv2d, weight_standardization=True)}, custom=True),
    LayerVariant("attn_se", "attention", f"+ ChannelAttention (SE, reduction {SE_REDUCTION}) after each activation",
                 {"attention": lambda ch: ChannelAttention(ch, SE_REDUCTION)}, custom=True),
    LayerVariant("attn_cbam", "attention", f"+ CBAM (channel attention on avg- and max-pooled descriptors, "
                 f"r={SE_REDUCTION}, then 7x7 spatial attention) after each activation",
                 {"attention": lambda ch: CBAM(ch, SE_REDUCTION, kernel_size=7)}, custom=True),
    LayerVariant("act_swish", "activation", "ReLU -> Swish, beta learnable (init 1)",
                 {"act": lambda: Swish(1.0, learnable=True)}, custom=True),
    LayerVariant("act_silu_native", "activation", "ReLU -> nn.SiLU (native Swish with beta = 1)", {"act": nn.SiLU}),
    LayerVariant("pool_mixed", "pooling", "MaxPool2d -> MixedPool2d (alpha learnable, init 0.5)",
                 {"pool": lambda: MixedPool2d(2)}, custom=True),
    LayerVariant("pool_avg_native", "pooling", "MaxPool2d -> nn.AvgPool2d (native)", {"pool": lambda: nn.AvgPool2d(2)}),
    LayerVariant("head_gem", "head pooling", "avg-pool head -> GeMPool2d (p learnable, init 3)",
                 {"head_pool": lambda: GeMPool2d(p=3.0)}, custom=True),
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
@dataclass(frozen=True)
class BlockDesign:
    """One block net: ``block`` repeated ``blocks_per_stage`` times in each of 3 stages whose output
    widths are ``expansion x (u, 2u, 4u)`` for a unit width ``u`` (the 3x3 width); ``unit`` fixed,
    or None: solved for the reference net's parameter count."""

    block: type[ResidualBlock]
    blocks_per_stage: int
    unit: int | None
    description: str


STEM = 16                 # stem conv width of every net (CIFAR ResNet / WRN)
REFERENCE = "basic"       # the net every other one is matched to and compared with
BLOCK_DESIGNS = {
    "basic": BlockDesign(BasicBlock, 3, 16, "ResNet-20 (He et al. 2016): 3 basic blocks per stage at 16-32-64, "
                         "deep and narrow"),
    "preact": BlockDesign(PreActBlock, 3, 16, "control: the basic net's widths and depth with pre-activation "
                          "blocks (He et al. 2016b)"),
    "wide": BlockDesign(WideBlock, 1, None, "wide (Zagoruyko & Komodakis 2016): pre-activation, 1 block per stage, "
                        "width x k solved for the basic net's parameters"),
    "bottleneck": BlockDesign(BottleneckBlock, 3, None, "bottleneck (He et al. 2016): 1x1-3x3-1x1, expansion 4, "
                              "3 blocks per stage, inner width solved for the basic net's parameters"),
}
MATCH_TOL = 0.05


def stage_widths(block: str, unit: int) -> tuple[int, ...]:
    e = BLOCK_DESIGNS[block].block.expansion
    return (e * unit, 2 * e * unit, 4 * e * unit)


def block_net(block: str, unit: int, classes: int) -> nn.Module:
    """Stem conv (16) -> 3 stages (stride 2 in stages 2, 3) of ``block`` -> GAP -> linear; no dropout."""
    d = BLOCK_DESIGNS[block]
    return ResNet(d.block, stage_widths(block, unit), (d.blocks_per_stage,) * 3, num_classes=classes,
                  stem_channels=STEM, block_dropout=0.0)


def weighted_depth(net: ResNet) -> int:
    """Weighted layers on the residual path: the stem conv, every conv of every residual branch, the linear."""
    return 2 + sum(isinstance(m, nn.Conv2d) for stage in net.stages for blk in stage for m in blk.residual_branch())


def block_units(classes: int) -> dict[str, int]:
    """The unit width of every net: fixed, or solved (``solve_width_for_params``) for the reference
    net's parameter count; an error when no width is within :data:`MATCH_TOL`."""
    ref = BLOCK_DESIGNS[REFERENCE]
    target = count_parameters(block_net(REFERENCE, ref.unit, classes))["total"]
    units = {}
    for name, d in BLOCK_DESIGNS.items():
        if d.unit is not None:
            units[name] = d.unit
            continue
        u, params = solve_width_for_params(lambda w, b=name: block_net(b, w, classes), target, lo=4, hi=256)
        if relative_param_gap([params], target) > MATCH_TOL:
            raise RuntimeError(f"{name}: no width within {MATCH_TOL:.0%} of {target:,} parameters ({params:,})")
        units[name] = u
    return units


def block_sizes(units: Mapping[str, int], classes: int) -> dict[str, dict]:
    """Widths, depth, parameters and FLOPs of every net, and their gaps to the reference net."""
    out = {}
    for name, u in units.items():
        net, d = block_net(name, u, classes), BLOCK_DESIGNS[name]
        out[name] = {"block": d.block.__name__, "description": d.description, "unit_width": u,
                     "widths": list(stage_widths(name, u)), "blocks_per_stage": d.blocks_per_stage,
                     "depth": weighted_depth(net), "params": count_parameters(net)["total"],
                     "mflops": count_flops(net, (3, 32, 32)) / 1e6}
    ref = out[REFERENCE]
    for v in out.values():
        v["width_factor_vs_reference"] = v["unit_width"] / ref["unit_width"]
        v["param_gap_vs_reference"] = v["params"] / ref["params"] - 1
        v["flops_gap_vs_reference"] = v["mflops"] / ref["mflops"] - 1
    return out


def _block_build(block: str, unit: int, classes: int) -> Callable[[ExperimentConfig], nn.Module]:
    return lambda c: block_net(block, unit, classes)


def block_spec(block: str, unit: int, classes: int, lr: float, seed: int, group: str) -> ModelSpec:
    """One run of a block net at peak ``lr``; group = "pilot" or "final", variant = block."""
    desc = (f"{BLOCK_DESIGNS[block].description}; widths {'-'.join(map(str, stage_widths(block, unit)))}; "
            f"peak lr {lr:g}")
    return ModelSpec(f"{block}_lr{lr:g}_seed{seed}", _block_build(block, unit, classes), desc, group=group,
                     variant=block, seed=seed, lr=lr)


def lr_grid(profile: Profile, cfg: ExperimentConfig) -> tuple[list[float], float]:
    """The profile's block lr grid and cap, scaled by ``cfg.lr / BASE_CONFIG.lr`` (``--lr`` moves them)."""
    k = cfg.lr / BASE_CONFIG.lr
    return [float(f"{k * x:.4g}") for x in profile.lr_grid], float(f"{k * profile.lr_cap:.4g}")


# ---------------------------------------------------------------------------------- analysis
def experiment_timing(records: Sequence[RunRecord], experiment: str) -> dict:
    """:func:`runs_cost` of the runs made by ``experiment`` (reused runs count where made)."""
    return runs_cost(list({r.config_hash: r for r in records if r.experiment == experiment}.values()))


def _status(records: Sequence[RunRecord]) -> dict:
    bad = sum(not r.completed for r in records)
    return {"runs": len(records), "diverged_runs": bad, "all_diverged": bool(records) and bad == len(records)}


def layers_numbers(records: Sequence[RunRecord], learned: dict[str, dict] | None = None) -> dict:
    """Every layer variant over seeds (keyed ``layer/variant``), each against the base CNN and each
    custom layer against its native twin (paired over seeds and test images)."""
    groups: dict[str, list[RunRecord]] = {}
    for r in records:
        groups.setdefault(variant_key(r.group, r.variant), []).append(r)
    key_of = {runs[0].variant: k for k, runs in groups.items()}
    learned = learned or {}
    base_key = key_of.get("base")
    base = groups.get(base_key, [])
    variants = {}
    for key, runs in groups.items():
        v = variant_numbers(runs)
        variants[key] = {**v, "layer": runs[0].group, "runs": len(runs),
                         "extra_params_vs_base": v["params"] - base[0].params["total"] if base else None,
                         "learned": {r.model: learned.get(r.model, {}) for r in runs}}

    def row(a: str, b: str) -> dict:
        return {"a": a, "b": b, **difference_with_verdict(groups[a], groups[b], ("test_acc", "final_val_acc"))}

    return {**_status(records), "variants": variants, "base_key": base_key,
            "vs_base": [row(k, base_key) for k in groups if k != base_key and base],
            "custom_vs_native": [row(key_of[a], key_of[b]) for a, b in NATIVE_PAIRS if a in key_of and b in key_of],
            "timing": experiment_timing(records, f"{SUBDIR}/layers"),
            "data": records[0].data if records else {}, "config": records[0].config if records else {},
            "rule": "a - b paired by seed (a pair with a diverged side is dropped and counted); test accuracy: "
                    "paired bootstrap over seeds and test images; 'real' when the 95 % interval excludes zero. "
                    "Training cost: layer_speed.json (paired benchmark), not these runs' wall times"}


def write_analysis(numbers: dict, markdown: str, exp_dir: Path, what: str) -> None:
    write_json(exp_dir / "analysis.json", json_safe(numbers))
    atomic_write_text(exp_dir / "analysis.md", markdown)
    if numbers["all_diverged"]:
        log.warning("%s: every run diverged (%d runs); the analysis says so in %s", what, numbers["runs"], exp_dir)


# -------------------------------------------------------------------------------- block study
@dataclass
class BlockContext:
    """What every block run shares: data, runtime, where results go, the classes and net widths."""

    data: DatasetSplits
    runtime: Runtime
    results: Path
    force: bool
    classes: int
    units: dict[str, int]
    source: str
    executor: Executor | None = None
    cost: ExperimentCost | None = None     # the invocation log's entry of the experiment being run

    def run(self, experiment: str, specs: Sequence[ModelSpec], cfg: ExperimentConfig, title: str) -> ExperimentRun:
        run = run_experiment(experiment, specs, self.data, cfg, self.runtime, self.results, force=self.force,
                             title=title, executor=self.executor)
        if self.cost is not None:
            self.cost.add(run.records, run.trained)
        return run


def run_block_sweep(ctx: BlockContext, profile: Profile, cfg: ExperimentConfig, plots
                    ) -> tuple[block_study.SweepResult, dict]:
    """The pilots (lr selection + stability) through the runner; their analysis and figures."""
    pilot_cfg = cfg.replace(eval_points=profile.pilot_eval_points, plateau_points=0)
    experiment = f"{SUBDIR}/blocks_sweep"
    seen: list[RunRecord] = []

    def run_points(points: list[block_study.Point]) -> dict[block_study.Point, list[RunRecord]]:
        specs = {(b, lr): [block_spec(b, ctx.units[b], ctx.classes, lr, s, "pilot")
                           for s in pilot_seeds(profile.pilot_seeds)] for b, lr in points}
        run = ctx.run(experiment, [s for ss in specs.values() for s in ss], pilot_cfg,
                      f"CIFAR-10 residual blocks, pilots ({ctx.source})")
        by_name = {r.model: r for r in run.records}
        seen.extend(run.records)
        return {p: [by_name[s.name] for s in ss] for p, ss in specs.items()}

    grid, cap = lr_grid(profile, cfg)
    result = block_study.run_sweep(list(BLOCK_DESIGNS), grid, run_points, cap, profile.min_train_acc)
    write_summary(result.records(), ctx.results / experiment, f"CIFAR-10 residual blocks, pilots ({ctx.source})")
    numbers = {**block_study.sweep_numbers(result), "grid": grid, "pilot_seeds": pilot_seeds(profile.pilot_seeds),
               "sizes": block_sizes(ctx.units, ctx.classes), "timing": experiment_timing(seen, experiment),
               "config": {k: v for k, v in pilot_cfg.__dict__.items() if k not in ("seed", "lr")}}
    out = ctx.results / SUBDIR / "blocks_sweep"
    write_analysis(numbers, sweep_markdown(numbers), out, "blocks sweep")
    block_plots.plot_stability(numbers, plots / "blocks_stability.png",
                               f"Residual blocks along a learning-rate sweep, {profile.pilot_seeds} pilot seeds per lr "
                               f"({ctx.source})")
    stable = {b: v["highest_stable_lr"] for b, v in numbers["blocks"].items()}
    curves = {f"{b} (lr {stable[b]:g})": runs for b, runs in block_study.loss_curves_at(result, stable).items()}
    block_plots.plot_loss_at_lr(curves, plots / "blocks_loss_at_highest_stable_lr.png",
                                "Training loss at each block's highest stable learning rate")
    return result, numbers


def run_block_finals(ctx: BlockContext, profile: Profile, cfg: ExperimentConfig, sweep: block_study.SweepResult,
                     plots) -> dict | None:
    """Final seeds of every block at its own lr and at the shared lr (a run at the same lr is one run)."""
    own = {b: sel.winner for b, sel in sweep.own.items() if sel is not None}
    shared = sweep.shared.winner if sweep.shared is not None else None
    if not own and shared is None:
        log.warning("blocks: the sweep chose no lr (every pilot unstable); no final runs")
        return None
    settings = {"own_lr": own, "shared_lr": {b: shared for b in BLOCK_DESIGNS} if shared is not None else {}}
    points = list(dict.fromkeys((b, lr) for lrs in settings.values() for b, lr in lrs.items()))
    experiment = f"{SUBDIR}/blocks"

    def run(seeds_of: Mapping[block_study.Point, int]) -> list[RunRecord]:
        specs = [block_spec(b, ctx.units[b], ctx.classes, lr, s, "final")
                 for (b, lr), n in seeds_of.items() for s in final_seeds(n)]
        return ctx.run(experiment, specs, cfg, f"CIFAR-10 residual blocks, final seeds ({ctx.source})").records

    def split(records: Sequence[RunRecord]) -> dict[str, list[RunRecord]]:
        return {setting: [r for r in records if lrs.get(r.variant) == r.config["lr"]]
                for setting, lrs in settings.items() if lrs}

    seeds_of = {p: profile.seeds for p in points}
    records = run(seeds_of)
    if profile.more_seeds_when_close:
        seeds_of = seeds_for_close_calls(block_study.finals_numbers(split(records), REFERENCE, []), settings,
                                         records, seeds_of)
        records = run(seeds_of)
    check_disjoint(records, sweep.records())
    finals = split(records)
    sizes = block_sizes(ctx.units, ctx.classes)
    numbers = {**block_study.finals_numbers(finals, REFERENCE, sweep.records()), "sizes": sizes,
               "lrs": {s: lrs for s, lrs in settings.items()},
               "lr_selection": {"own": {b: None if s is None else s.as_dict() for b, s in sweep.own.items()},
                                "shared": None if sweep.shared is None else sweep.shared.as_dict()},
               "timing": experiment_timing(records, experiment),
               "config": {k: v for k, v in cfg.__dict__.items() if k not in ("seed", "lr")}}
    write_analysis(numbers, finals_markdown(numbers, sizes), ctx.results / experiment, "blocks")
    block_plots.plot_block_finals(numbers, sizes, plots / "blocks_finals.png",
                                  f"Residual blocks at equal parameters, {min(seeds_of.values())}-{max(seeds_of.values())} "
                                  f"final seeds ({ctx.source})")
    return numbers


def seeds_for_close_calls(numbers: dict, settings: Mapping[str, Mapping[str, float]], records: Sequence[RunRecord],
                          seeds_of: Mapping[block_study.Point, int]) -> dict[block_study.Point, int]:
    """Protocol v3 seeds: a block whose test difference to the reference straddles zero at 3 seeds
    gets :func:`seeds_needed` seeds (5 when its runs are cheap), and so does the reference at that
    lr (the pairs need both sides)."""
    cost = {}
    for r in records:
        cost.setdefault((r.variant, r.config["lr"]), []).append(r.timing.get("total_s", 0.0))
    out = dict(seeds_of)
    for row in numbers["differences"]:
        if row["b"] != REFERENCE:
            continue
        d = row["test_acc"]
        straddles = d.get("n", 0) > 0 and not d.get("excludes_zero", False)
        lr = settings[row["setting"]][row["a"]]
        for point in ((row["a"], lr), (REFERENCE, settings[row["setting"]][REFERENCE])):
            n = seeds_needed(straddles, max(cost.get(point, [math.inf])))
            out[point] = max(out[point], n)
    return out


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
    calls = InvocationLog(dirs.results, Path(__file__).stem, args.profile, runtime.describe(), args.only)
    with calls:
        if "speed" in todo:
            with calls.experiment("speed"):
                nets = {v.name: functools.partial(SwappableCNN, WIDTH, 3, 10, **v.swap) for v in LAYER_VARIANTS}
                twins = {f"{v.name}_autograd": v.name for v in LAYER_VARIANTS if v.custom}
                run_speed(profile.speed_batch, profile.speed_repeats, runtime, out_dir, dirs.plots, args.force, nets,
                          twins, profile.net_batch)
        if set(todo) - {"speed"}:
            data = load_data(args, dirs, "cifar10", profile.train_subset, profile.test_subset, profile.val_size)
            classes = data.num_classes
            source = f"{data.source}, {len(data.train)} train / {len(data.val)} val / {len(data.test)} test"
            base = BASE_CONFIG.replace(eval_points=profile.eval_points, plateau_points=profile.plateau_points,
                                       val_eval_samples=profile.val_eval_samples,
                                       train_eval_samples=profile.train_eval_samples,
                                       grad_sample_every=profile.grad_sample_every)
        if "layers" in todo:
            with calls.experiment("layers") as cost:
                cfg = apply_cli_overrides(base.replace(epochs=profile.layers_epochs), args)

                def layer_runs(keep_models: bool) -> ExperimentRun:
                    run = run_experiment(f"{SUBDIR}/layers", layer_specs(classes, profile.seeds), data, cfg, runtime,
                                         dirs.results, force=args.force, keep_models=keep_models,
                                         title=f"CIFAR-10 layer swaps ({source})", executor=executor)
                    cost.add(run.records, run.trained)
                    return run

                # the learned scalars need the trained models: kept as landed where their weights are gone
                if args.force or not keeps_landed_analysis(out_dir / "layers", layer_runs(False).records, dirs.results):
                    run = layer_runs(True)
                    numbers = layers_numbers(run.records, {name: learned_scalars(m) for name, m in run.models.items()})
                    write_analysis(numbers, layers_markdown(numbers), out_dir / "layers", "layers")
                    block_plots.plot_layer_swaps(numbers, dirs.plots / "layers_swap_summary.png",
                                                 f"CIFAR-10, one layer of the base CNN swapped at a time ({source})")
                    write_landing(out_dir / "layers", run.records)
        if {"blocks_sweep", "blocks"} & set(todo):
            cfg = apply_cli_overrides(base.replace(epochs=profile.blocks_epochs), args)
            ctx = BlockContext(data, runtime, dirs.results, args.force, classes, block_units(classes), source,
                               executor)
            # the finals need the sweep's choices: "blocks" alone re-reads the finished pilots through the runner
            with calls.experiment("blocks_sweep") as ctx.cost:
                sweep, _ = run_block_sweep(ctx, profile, cfg, dirs.plots)
            if "blocks" in todo:
                with calls.experiment("blocks") as ctx.cost:
                    run_block_finals(ctx, profile, cfg, sweep, dirs.plots)
    log.info("done: %s; results in %s, figures in %s", calls.describe(), out_dir, dirs.plots)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
