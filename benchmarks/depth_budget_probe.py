"""Budget probe: does task 2's degradation of the deepest plain net survive twice the training budget?

    python -m benchmarks.depth_budget_probe --data-dir ./data    # writes results/probes/depth_budget.json
    python -m benchmarks.depth_budget_probe --smoke --data-dir D  # tiny, for CI: checks it runs, writes nothing

The depth study reads degradation at its budget (``PROFILES["standard"].depth_epochs``), where no
training curve had flattened; He et al. read it at convergence. This probe trains the deepest plain net
and the 20-layer one of the standard profile at ``BUDGET_FACTOR`` times that budget, each at the peak lr
the depth study chose for it (``lr_selection`` of ``results/architecture_analysis/depth/analysis.json``;
not re-tuned for the longer schedule), on the study's split and config, over ``PROBE_SEEDS``: neither
pilot (1000+k) nor final (0, 1, 2) seeds, so no probe run enters the study. It reports deeper −
shallower on clean training accuracy and test accuracy (the study's paired rule) and each run's
plateau verdict, beside the same pair at the study's budget. Run records go to
``results/probes/depth_budget/`` (the runner resumes and skips finished runs); a probe is outside the
study's design and its standard-profile budget (``utils/report/compute.py`` does not count it).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import tempfile
from pathlib import Path

import homework_cnn_architecture_analysis as task2
from utils.comparison_utils import convergence_of, difference_with_verdict, summarise_runs
from utils.engine.cli import VAL_SEED, cache_dir_from, check_writable, run_cli, UsageError
from utils.engine.data_files import load_dataset, resolve_data_dir
from utils.engine.files import read_json, write_json
from utils.engine.runner import run_experiment
from utils.engine.runtime import resolve_runtime, threads_from_env

log = logging.getLogger("depth_budget_probe")
PROBE_SEEDS = (2000, 2001, 2002, 2003, 2004)   # 5: the deep plain net's fit spreads widely over seeds here
BUDGET_FACTOR = 2
COMPARED = ("final_train_acc", "test_acc", "final_train_loss")
STUDY = Path(__file__).resolve().parents[1] / "results" / "architecture_analysis" / "depth" / "analysis.json"


def probe_pair(study: dict) -> tuple[str, str]:
    """(deeper, shallower) variant keys: the study's last plain pair of deeper − shallower."""
    last = study["deeper_vs_shallower"][task2.PLAIN][-1]
    return last["a"], last["b"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None, help="default: $HOMEWORK_DATA_DIR, else ./data")
    p.add_argument("--cache-dir", default=None, help="default: $HOMEWORK_CACHE_DIR, else ./data/cache")
    p.add_argument("--study", default=str(STUDY), help="the depth study's analysis.json (its lrs and pair)")
    p.add_argument("--out", default="results/probes")
    p.add_argument("--smoke", action="store_true", help="1 epoch on 600 images, depths 8 and 20 (CI): writes nothing")
    args = p.parse_args(argv)
    runtime = resolve_runtime(threads=threads_from_env())
    data_dir, cache_dir = resolve_data_dir(args.data_dir), cache_dir_from(args.cache_dir)
    if not Path(args.study).is_file():
        raise UsageError(f"--study {args.study} does not exist; run homework_cnn_architecture_analysis.py first")
    study = read_json(Path(args.study))
    out = Path(args.out)
    if not args.smoke:
        check_writable("output", out)
    records_dir = Path(tempfile.mkdtemp()) if args.smoke else out   # smoke writes nothing under --out
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    profile = task2.PROFILES["standard"]
    data = load_dataset("cifar10", data_dir, cache_dir=cache_dir)
    data = data.with_validation(min(profile.val_size, len(data.train) // 5), seed=VAL_SEED)
    data = data.subsample(600 if args.smoke else profile.train_subset, 200 if args.smoke else profile.test_subset,
                          seed=0)                                  # the study's split (its --seed 0)
    deeper, shallower = probe_pair(study)
    reference = read_json(Path(args.study).parent / f"{study['lr_selection'][deeper]['final_models'][0]}.json")
    if not args.smoke and reference["data"] != data.describe():
        raise UsageError(f"the data in {data_dir} is not the split of {args.study}: the probe would not compare "
                         "like with like")
    epochs = 1 if args.smoke else BUDGET_FACTOR * profile.depth_epochs
    cfg = task2.ARCH_CONFIG.replace(epochs=epochs, eval_points=profile.eval_points,
                                    plateau_points=profile.plateau_points, train_eval_samples=profile.train_eval_samples,
                                    val_eval_samples=profile.curve_val_samples)
    specs = {task2.variant_key(s.group, s.variant): s
             for s in task2.depth_base_specs(profile.depths, data.image_shape[0], data.num_classes)}
    seeds = PROBE_SEEDS[:1] if args.smoke else PROBE_SEEDS
    runs = {}
    for key in (deeper, shallower):
        lr = study["lr_selection"][key]["chosen_lr"]
        base = specs[key]
        named = [dataclasses.replace(base, name=f"probe_{base.name}_{epochs}ep", lr=lr).with_seed(k) for k in seeds]
        runs[key] = run_experiment("depth_budget", named, data, cfg, runtime, records_dir,
                                   title=f"Depth budget probe ({epochs} epochs)").records
    result = {
        "question": "does the deepest plain net's deficit in clean training accuracy survive twice the budget?",
        "epochs": epochs, "study_epochs": profile.depth_epochs, "seeds": list(seeds), "data": data.describe(),
        "lr": {k: study["lr_selection"][k]["chosen_lr"] for k in runs},
        "variants": {k: {**summarise_runs(v), "convergence": [convergence_of(r) for r in v]} for k, v in runs.items()},
        "difference": {"a": deeper, "b": shallower, **difference_with_verdict(runs[deeper], runs[shallower], COMPARED)},
        "study_difference": study["deeper_vs_shallower"][task2.PLAIN][-1],
        "rule": "deeper − shallower, paired by seed; real when the paired 95 % interval excludes zero",
    }
    if not args.smoke:
        write_json(out / "depth_budget.json", result)
    d = result["difference"]["final_train_acc"]
    log.info("%s − %s at %d epochs: clean train acc %+.2f pp [%+.2f, %+.2f] (%s)", deeper, shallower, epochs,
             100 * d["mean_difference"], 100 * d["ci95_low"], 100 * d["ci95_high"], d["verdict"])
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, interrupted_message="interrupted: probe stopped; finished runs are kept"))
