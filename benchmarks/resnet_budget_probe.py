"""Budget probe: do task 1's three CIFAR-10 models, with one recipe, reach the 88 % target with more epochs?

    python -m benchmarks.resnet_budget_probe --data-dir ./data    # writes results/probes/resnet_budget.json
    python -m benchmarks.resnet_budget_probe --smoke --data-dir D  # tiny, for CI: checks it runs, writes nothing

The CIFAR-10 comparison (``homework_cnn_vs_fc_comparison.py``, standard profile) ends with the regularised
ResNet below ``TARGET_TEST_ACC`` at ``cifar_epochs`` and still improving (no final run plateaued). This
probe trains the headline's three models (``MODELS``: deep FC, residual CNN, regularised residual CNN)
with the same recipe, split and shared lr (``lr`` of ``results/cifar_comparison/analysis.json``; not
re-tuned for the longer schedule) for ``--epochs`` instead, over ``PROBE_SEEDS``: neither pilot
(1000+k) nor final (0, 1, ...) seeds, so no probe run enters the study. It reports, per model, the test
accuracy over seeds, each run's plateau verdicts and the training PFLOP; the regularised ResNet's mean
against the target; and the headline's differences at the probe's budget, paired by seed (the probe's
runs share seeds and machine). Before any training it checks that each model's config differs from the
study's run only in epochs and seed. Runs are seed-major (a stopped probe has every model at its first
seeds). Run records go to
``results/probes/resnet_budget/`` (the runner resumes and skips finished runs); a probe is outside the
study's design and its standard-profile budget (``utils/report/compute.py`` does not count it).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import tempfile
from pathlib import Path

import homework_cnn_vs_fc_comparison as task1
from utils.comparison_utils import difference_with_verdict, variant_key
from utils.engine.cli import VAL_SEED, UsageError, cache_dir_from, check_writable, positive_int, run_cli
from utils.engine.data_files import load_dataset, resolve_data_dir
from utils.engine.files import read_json, write_json
from utils.engine.runner import run_experiment
from utils.engine.runtime import resolve_runtime, threads_from_env
from utils.studies.cnn_vs_fc.numbers import COMPARED, variant_entry

log = logging.getLogger("resnet_budget_probe")
PROBE_SEEDS = (2000, 2001, 2002)
STUDY = Path(__file__).resolve().parents[1] / "results" / "cifar_comparison" / "analysis.json"
MODELS = ("deep_fc", "residual_cnn", "residual_cnn_regularised")   # the headline's three, as named there
MODEL = MODELS[-1]                                                     # the one the target is read on
# the headline's differences (a - b) the probe re-measures at its budget
PAIRS = (("residual_cnn", "deep_fc"), ("residual_cnn_regularised", "residual_cnn"),
         ("residual_cnn_regularised", "deep_fc"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None, help="default: $HOMEWORK_DATA_DIR, else ./data")
    p.add_argument("--cache-dir", default=None, help="default: $HOMEWORK_CACHE_DIR, else ./data/cache")
    p.add_argument("--study", default=str(STUDY), help="the CIFAR-10 comparison's analysis.json (its lr)")
    p.add_argument("--epochs", type=positive_int, default=24, help="the probe's budget (the study's: 16)")
    p.add_argument("--out", default="results/probes")
    p.add_argument("--smoke", action="store_true", help="1 epoch on 600 images (CI): writes nothing")
    args = p.parse_args(argv)
    runtime = resolve_runtime(threads=threads_from_env())
    data_dir, cache_dir = resolve_data_dir(args.data_dir), cache_dir_from(args.cache_dir)
    if not Path(args.study).is_file():
        raise UsageError(f"--study {args.study} does not exist; run homework_cnn_vs_fc_comparison.py first")
    study = read_json(Path(args.study))
    out = Path(args.out)
    if not args.smoke:
        check_writable("output", out)
    records_dir = Path(tempfile.mkdtemp()) if args.smoke else out   # smoke writes nothing under --out
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    profile = task1.PROFILES["standard"]
    data = load_dataset("cifar10", data_dir, cache_dir=cache_dir)
    data = data.with_validation(min(profile.val_size, len(data.train) // 5), seed=VAL_SEED)
    if args.smoke:
        data = data.subsample(600, 200, seed=0)
    epochs = 1 if args.smoke else args.epochs
    cfg = task1.CIFAR_CONFIG.replace(lr=study["lr"], epochs=epochs, eval_points=profile.eval_points,
                                     plateau_points=profile.plateau_points)
    specs = {s.name: s for s in task1.headline_specs(*data.image_shape[:2], data.num_classes) if s.name in MODELS}
    if not args.smoke:
        for name, spec in specs.items():
            reference = read_json(Path(args.study).parent / f"{name}_seed0.json")
            mine = {**dataclasses.asdict(spec.config_for(cfg)), "epochs": reference["config"]["epochs"], "seed": 0}
            if reference["data"] != data.describe() or reference["config"] != mine:
                raise UsageError(f"the probe's data or config differ from {name}'s in {args.study} in more than "
                                 "epochs and seed: it would not compare like with like")
    seeds = PROBE_SEEDS[:1] if args.smoke else PROBE_SEEDS
    named = {name: [dataclasses.replace(spec, name=f"probe_{name}_{epochs}ep", group="probe").with_seed(k)
                    for k in seeds] for name, spec in specs.items()}
    order = [(name, i) for i in range(len(seeds)) for name in MODELS]              # seed-major
    jobs = [named[name][i] for name, i in order]
    records = run_experiment("resnet_budget", jobs, data, cfg, runtime, records_dir,
                             title=f"CIFAR-10 headline budget probe ({epochs} epochs)").records
    runs = {name: [r for (owner, _), r in zip(order, records) if owner == name] for name in MODELS}
    variants = {name: variant_entry(rs) for name, rs in runs.items()}
    in_study = {name: variant_key(s.group, s.variant) for name, s in specs.items()}   # the study's analysis keys
    mean = variants[MODEL]["test_acc"].get("mean")
    result = {
        "question": f"do the headline's models, with one recipe, reach {task1.TARGET_TEST_ACC:.0%} test accuracy "
                    f"(the regularised ResNet) with more epochs, and do its differences hold?",
        "epochs": epochs, "study_epochs": study["target"]["epochs"], "seeds": list(seeds), "data": data.describe(),
        "lr": study["lr"], "target": task1.TARGET_TEST_ACC, "target_model": MODEL, "models": list(MODELS),
        "reached": bool(mean is not None and mean >= task1.TARGET_TEST_ACC),
        "variants": variants,
        "differences": {f"{a} vs {b}": difference_with_verdict(runs[a], runs[b], COMPARED) for a, b in PAIRS},
        "study": {"test_acc": {name: study["variants"][key]["test_acc"] for name, key in in_study.items()},
                  "differences": {f"{a} vs {b}": d["test_acc"] for a, b in PAIRS
                                  if (d := study["differences"].get(f"{in_study[a]} vs {in_study[b]}"))},
                  "target": study["target"]},
        "rule": "per model: mean test accuracy over the probe seeds with its 95 % interval (bootstrap over seeds and "
                "test images), the target read on the regularised ResNet's mean; differences paired by seed "
                "(paired bootstrap over seeds and test images); the study's runs used other seeds and another "
                "machine, so probe and study are compared side by side, not paired",
    }
    if not args.smoke:
        write_json(out / "resnet_budget.json", result)
    t = variants[MODEL]["test_acc"]
    log.info("%s at %d epochs: test acc %.2f %% [%.2f, %.2f] (n=%d) against the %.0f %% target", MODEL, epochs,
             100 * (t.get("mean") or float("nan")), 100 * (t.get("ci95_low") or float("nan")),
             100 * (t.get("ci95_high") or float("nan")), t.get("n", 0), 100 * task1.TARGET_TEST_ACC)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, interrupted_message="interrupted: probe stopped; finished runs are kept"))
