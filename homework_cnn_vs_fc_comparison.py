"""Task 1: fully-connected vs convolutional networks on MNIST and CIFAR-10.

    python homework_cnn_vs_fc_comparison.py                      # standard profile, both data sets
    python homework_cnn_vs_fc_comparison.py --only mnist --profile quick

Experiments (``--only``):
  mnist  FC (4 linear layers) vs simple CNN (2 conv) vs residual CNN, one ExperimentConfig.
  cifar  deep FC (7 linear layers) vs residual CNN vs the same residual CNN regularised
         (dropout, weight decay, crop+flip augmentation, label smoothing), one ExperimentConfig.

Writes ``results/{mnist,cifar}_comparison/`` (a JSON per model, summary.csv/md) and
``plots/cnn_vs_fc/*.png``.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from models.cnn_models import SimpleCNN, ResNet, BasicBlock
from models.fc_models import FullyConnectedNet
import numpy as np

from utils import visualization_utils as viz
from utils.classification import classification_summary
from utils.gradient_stats import gradient_flow_summary
from utils.cli import (apply_cli_overrides, build_parser, load_data, prepare_output_dirs, run_cli,
                       setup_logging)
from utils.experiment import ExperimentConfig, ModelSpec
from utils.files import write_json
from utils.records import RunRecord
from utils.runner import run_experiment
from utils.runtime import resolve_runtime

log = logging.getLogger("cnn_vs_fc")
EXPERIMENTS = ("mnist", "cifar")


@dataclass(frozen=True)
class Profile:
    mnist_epochs: int
    cifar_epochs: int
    train_subset: int | None = None
    test_subset: int | None = None
    val_size: int = 5000      # held out of the training set; every choice is read on it


PROFILES = {
    "quick": Profile(mnist_epochs=1, cifar_epochs=1, train_subset=2000, test_subset=500, val_size=500),
    "standard": Profile(mnist_epochs=5, cifar_epochs=6),
    "full": Profile(mnist_epochs=12, cifar_epochs=30),
}

# Hyper-parameters are fixed before looking at any test accuracy (SGD-Nesterov + one-cycle, the
# usual strong default for both MLPs and ResNets at this batch size); every model of an
# experiment shares them.
MNIST_CONFIG = ExperimentConfig(batch_size=128, lr=0.05, optimizer="sgd", schedule="onecycle")
CIFAR_CONFIG = ExperimentConfig(batch_size=256, lr=0.1, optimizer="sgd", schedule="onecycle", flip_tta=False)
# What the regularised residual CNN adds on top of the shared config (and nothing else):
CIFAR_REGULARISATION = {"weight_decay": 5e-4, "augment": True, "label_smoothing": 0.1, "dropout": 0.2}


def mnist_specs(in_ch: int, size: int, classes: int) -> list[ModelSpec]:
    return [
        ModelSpec("fc", lambda c: FullyConnectedNet(in_ch * size * size, (512, 256, 128), classes),
                  "MLP 784-512-256-128-10, ReLU (4 linear layers)", group="mnist", variant="fc"),
        ModelSpec("simple_cnn", lambda c: SimpleCNN(in_ch, classes, (32, 64), image_size=size),
                  "2 x (conv3x3-ReLU-maxpool) 32-64, FC 128", group="mnist", variant="simple_cnn"),
        ModelSpec("residual_cnn", lambda c: ResNet(BasicBlock, (32, 64, 128), (1, 1, 1), in_channels=in_ch,
                                                   num_classes=classes, stem_channels=32, stem_pool=True),
                  "stem conv 32 + maxpool, BasicBlocks 32-64-128 (stride 2 in the last two), GAP, linear",
                  group="mnist", variant="residual_cnn"),
    ]


def cifar_specs(in_ch: int, size: int, classes: int) -> list[ModelSpec]:
    def resnet(c: ExperimentConfig) -> ResNet:
        # Widths 16-32-64-128 (0.31 M params): sized so that two ResNets x 6 epochs fit the 30-minute
        # budget on this CPU (~800 training images/s with 2 threads, ~450 with 1, in fp32).
        return ResNet(BasicBlock, (16, 32, 64, 128), (1, 1, 1, 1), in_channels=in_ch, num_classes=classes,
                      dropout=c.dropout)

    return [
        ModelSpec("deep_fc", lambda c: FullyConnectedNet(in_ch * size * size, (1024, 512, 512, 256, 256, 128),
                                                         classes, batch_norm=True),
                  "MLP 3072-1024-512-512-256-256-128-10 with BatchNorm (7 linear layers)", group="cifar",
                  variant="deep_fc"),
        ModelSpec("residual_cnn", resnet, "ResNet: stem 16 + 4 BasicBlocks 16-32-64-128, GAP, linear",
                  group="cifar", variant="residual_cnn"),
        ModelSpec("residual_cnn_regularised", resnet,
                  "same ResNet + dropout 0.2 before the classifier, weight decay 5e-4, crop+flip "
                  "augmentation, label smoothing 0.1", group="cifar", variant="residual_cnn_regularised",
                  overrides=dict(CIFAR_REGULARISATION)),
    ]


def analysis_numbers(records: list[RunRecord], baseline: str) -> dict:
    """What README's analysis quotes beyond the summary table: errors, confusions, overfitting and
    gradient flow per model, and each model's error relative to the ``baseline`` variant (pure
    function of the records)."""
    out: dict = {}
    for r in records:
        if not r.completed:
            out[r.model] = {"status": r.status, "diverged_at": r.diverged_at}
            continue
        h, g = r.history, r.grad_stats
        gap = np.asarray(h.train_eval_acc) - np.asarray(h.val_acc)
        flow = gradient_flow_summary(g.names, np.asarray(g.l2))
        ratio = flow["first_last_ratio"]
        out[r.model] = {
            **classification_summary(r.labels, r.predictions, r.class_names),
            "gap_per_epoch": gap.tolist(), "final_gap": float(gap[-1]), "max_gap": float(gap.max()),
            "val_loss_min_epoch": h.epoch[int(np.argmin(h.val_loss))],
            "val_loss_rise_after_min": float(h.val_loss[-1] - min(h.val_loss)),
            "grad_first_last_ratio_init": float(ratio[0]),
            "grad_first_last_ratio_median": flow["median_first_last_ratio"],
            "grad_layers": len(g.names),
        }
    base = next((r.model for r in records if r.variant == baseline and "error_rate" in out[r.model]), None)
    if base is not None:
        for m, v in out.items():
            if m != base and "error_rate" in v:
                v["error_ratio_fc_over_this"] = out[base]["error_rate"] / v["error_rate"]
    return out


def analyse(records: list[RunRecord], plots_dir: Path, tag: str, title: str, cifar: bool, out_dir: Path) -> None:
    write_json(out_dir / "analysis.json", analysis_numbers(records, baseline="deep_fc" if cifar else "fc"))
    viz.plot_learning_curves(records, plots_dir / f"{tag}_learning_curves.png", f"{title}: learning curves")
    viz.plot_accuracy_vs_cost(records, plots_dir / f"{tag}_accuracy_vs_cost.png",
                              f"{title}: test accuracy vs size and cost")
    viz.plot_parameter_breakdown(records, plots_dir / f"{tag}_parameters.png", f"{title}: parameters per layer")
    viz.plot_timing(records, plots_dir / f"{tag}_timing.png", f"{title}: training and inference time")
    viz.plot_confusion_matrices(records, plots_dir / f"{tag}_confusion.png",
                                f"{title}: confusion matrices (row-normalised, %)")
    viz.plot_generalisation_gap(records, plots_dir / f"{tag}_overfitting.png",
                                f"{title}: generalisation gap per epoch")
    viz.plot_gradient_flow(records, plots_dir / f"{tag}_gradient_flow.png", f"{title}: gradient flow")
    if cifar:
        viz.plot_per_class_accuracy(records, plots_dir / f"{tag}_per_class.png", f"{title}: per-class test accuracy")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(__doc__.splitlines()[0], EXPERIMENTS, default_plots="plots/cnn_vs_fc")
    args = parser.parse_args(argv)
    dirs = prepare_output_dirs(args)
    setup_logging(dirs.results / "cnn_vs_fc_comparison.log", args.verbose)
    runtime = resolve_runtime(args.device, args.precision)
    profile = PROFILES[args.profile]
    log.info("profile %s, runtime %s", args.profile, runtime.describe())
    for name in args.only or EXPERIMENTS:
        dataset = "mnist" if name == "mnist" else "cifar10"
        data = load_data(args, dirs, dataset, profile.train_subset, profile.test_subset, profile.val_size)
        shape = (data.image_shape[0], data.image_shape[1], data.num_classes)
        if name == "mnist":
            cfg = apply_cli_overrides(MNIST_CONFIG.replace(epochs=profile.mnist_epochs), args)
            specs, title = mnist_specs(*shape), "MNIST"
        else:
            cfg = apply_cli_overrides(CIFAR_CONFIG.replace(epochs=profile.cifar_epochs), args)
            specs, title = cifar_specs(*shape), "CIFAR-10"
        records = run_experiment(f"{name}_comparison", specs, data, cfg, runtime, dirs.results, force=args.force,
                                 title=f"{title}: FC vs CNN ({data.source}, {len(data.train)} train / "
                                       f"{len(data.test)} test)").records
        analyse(records, dirs.plots, name, title, cifar=name == "cifar", out_dir=dirs.results / f"{name}_comparison")
        log.info("%s done: results in %s, figures in %s", name, dirs.results / f"{name}_comparison", dirs.plots)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
