"""Budget probe: has task 1's CIFAR-10 MLP, regularised, flattened by the end of its ablation budget?

    python -m benchmarks.mlp_budget_probe --data-dir ./data     # writes results/probes/mlp_budget.json
    python -m benchmarks.mlp_budget_probe --smoke --data-dir D   # tiny, for CI: checks it runs, writes nothing

The MLP with augmentation alone and with all four regularisers (the strengths of the archived
ablation: dropout 0.2, weight decay 5e-4, label smoothing 0.1), at the ablation's epochs and at twice
as many, one run each, seed PROBE_SEED: neither a pilot seed (1000+k) nor a final seed (0..4), so a
probe run never enters a comparison. The task-1 CIFAR config at lr 0.4 with the standard evaluation
cadence; per run the v3 plateau verdicts of its validation and clean-train curves and its test
accuracy. What it found set ``MLP_BUDGET_VARIANTS`` (the ablation's budget control) in
``homework_cnn_vs_fc_comparison.py``. One seed per cell: a design probe, not a result.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import homework_cnn_vs_fc_comparison as task1
from utils.comparison_utils import convergence_of
from utils.engine.cli import VAL_SEED, cache_dir_from, check_writable, positive_int, run_cli
from utils.engine.data_files import load_dataset, resolve_data_dir
from utils.engine.experiment import ModelSpec
from utils.engine.files import write_json
from utils.engine.records import RunRecord
from utils.engine.runtime import resolve_runtime, threads_from_env
from utils.training_utils import train_model

log = logging.getLogger("mlp_budget_probe")
PROBE_SEED = 2000
PROBE_LR = 0.4
VARIANTS = {"augment": {"augment": True},
            "all": {"augment": True, "dropout": 0.2, "weight_decay": 5e-4, "label_smoothing": 0.1}}


def probe_numbers(record: RunRecord) -> dict:
    """What the probe reads off one run: the end of its curves, its test accuracy, its verdicts."""
    h = record.history
    return {"model": record.model, "epochs": record.config["epochs"], "seed": record.seed,
            "test_acc": record.test_acc, "final_val_acc": h.val_acc[-1] if h.val_acc else None,
            "final_train_eval_acc": h.train_eval_acc[-1] if h.train_eval_acc else None,
            "train_s": record.timing["train_s"], "runtime": record.runtime, "convergence": convergence_of(record)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None, help="default: $HOMEWORK_DATA_DIR, else ./data")
    p.add_argument("--cache-dir", default=None, help="default: $HOMEWORK_CACHE_DIR, else ./data/cache")
    p.add_argument("--out", default="results/probes")
    p.add_argument("--epochs", type=positive_int, default=task1.PROFILES["standard"].mlp_epochs,
                   help="the shorter budget (default: the standard MLP ablation's); the longer is twice it")
    p.add_argument("--smoke", action="store_true", help="1 and 2 epochs on 600 images (CI): writes nothing")
    args = p.parse_args(argv)
    runtime = resolve_runtime(threads=threads_from_env())
    data_dir, cache_dir = resolve_data_dir(args.data_dir), cache_dir_from(args.cache_dir)
    if not args.smoke:
        check_writable("output", Path(args.out))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    data = load_dataset("cifar10", data_dir, cache_dir=cache_dir)
    data = data.with_validation(min(5000, len(data.train) // 5), seed=VAL_SEED)   # the study's validation images
    epochs = 1 if args.smoke else args.epochs
    if args.smoke:
        data = data.subsample(600, 200, seed=0)
    standard = task1.PROFILES["standard"]
    cfg = task1.CIFAR_CONFIG.replace(lr=PROBE_LR, seed=PROBE_SEED, eval_points=standard.eval_points,
                                     plateau_points=standard.plateau_points)
    fc = task1.deep_fc(data.image_shape[0] * data.image_shape[1] * data.image_shape[2], data.num_classes)
    runs = []
    for name, regs in VARIANTS.items():
        for e in (epochs, task1.MLP_BUDGET_FACTOR * epochs):
            spec = ModelSpec(f"probe_mlp_{name}_{e}ep", fc, task1.MLP_DESC, group="probe", variant=name,
                             overrides=regs)
            record, _ = train_model(spec, data, cfg.replace(epochs=e), runtime, experiment="mlp_budget_probe")
            runs.append({"variant": name, **probe_numbers(record)})
            log.info("%s: test %.4f, clean-train %s", spec.name, record.test_acc or float("nan"),
                     runs[-1]["convergence"].get("train_eval_acc", {}).get("status"))
    if not args.smoke:
        write_json(Path(args.out) / "mlp_budget.json", {"seed": PROBE_SEED, "lr": PROBE_LR, "data": data.describe(),
                                                        "runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, interrupted_message="interrupted: probe stopped, nothing was written"))
