"""Set-up probe: is task 3's bottleneck deficit a matter of budget or of initialisation?

    python -m benchmarks.bottleneck_probe --data-dir ./data    # writes results/probes/bottleneck.json
    python -m benchmarks.bottleneck_probe --smoke --data-dir D  # tiny, for CI: checks it runs, writes nothing

The block study (``homework_custom_layers_experiments.py``, standard profile) finds the parameter-matched
bottleneck net (29 weighted layers) well below ResNet-20 and under-fitting, at 6 epochs with He init and
no zero-init of the residual ends. He et al. train bottlenecks far longer, and Goyal et al. 2017 zero the
last BatchNorm γ of every residual branch so that a deep net starts as a shallow one. This probe isolates
the two set-up causes, one factor at a time, each net at the peak lr its own pilots chose
(``lrs.own_lr`` of ``results/custom_layers/blocks/analysis.json``; not re-tuned):

- **init**: the bottleneck net with zero-init residual ends against the same net without, at the study's
  budget;
- **budget**: bottleneck − basic at the study's budget and at ``BUDGET_FACTOR`` times it, and the change
  of that gap (does more training close it?).

All runs use the study's split and recipe over ``PROBE_SEEDS``, neither pilot (1000+k) nor final
(0, 1, ...) seeds, and all train on one machine, so every comparison here is internal to the probe (the
study's own runs enter only as context). Run records go to ``results/probes/bottleneck/`` (the runner
resumes and skips finished runs); a probe is outside the study's design and its standard-profile budget
(``utils/report/compute.py`` does not count it).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import tempfile
from pathlib import Path

import homework_custom_layers_experiments as task3
from utils.comparison_utils import advantage_change, convergence_of, difference_with_verdict, summarise_runs
from utils.engine.cli import VAL_SEED, UsageError, cache_dir_from, check_writable, run_cli
from utils.engine.data_files import load_dataset, resolve_data_dir
from utils.engine.files import read_json, write_json
from utils.engine.runner import run_experiment
from utils.engine.runtime import resolve_runtime, threads_from_env

log = logging.getLogger("bottleneck_probe")
PROBE_SEEDS = (2000, 2001, 2002)
BUDGET_FACTOR = 2
BLOCK, REFERENCE = "bottleneck", task3.REFERENCE
COMPARED = ("test_acc", "final_train_acc", "final_train_loss")
STUDY = Path(__file__).resolve().parents[1] / "results" / "custom_layers" / "blocks" / "analysis.json"


@dataclasses.dataclass(frozen=True)
class ProbeRun:
    """One probe variant: a block net trained for ``epochs`` with or without zero-init residual ends."""
    block: str
    epochs: int
    zero_init: bool = False

    @property
    def key(self) -> str:
        return f"{self.block}_{self.epochs}ep" + ("_zero_init" if self.zero_init else "")


def probe_runs(epochs: int) -> dict[str, ProbeRun]:
    """The five variants: bottleneck, bottleneck zero-init and basic at ``epochs``; bottleneck and basic
    at ``BUDGET_FACTOR`` times ``epochs``."""
    runs = [ProbeRun(BLOCK, epochs), ProbeRun(BLOCK, epochs, zero_init=True), ProbeRun(REFERENCE, epochs),
            ProbeRun(BLOCK, BUDGET_FACTOR * epochs), ProbeRun(REFERENCE, BUDGET_FACTOR * epochs)]
    return {r.key: r for r in runs}


def comparison(records: dict, a: str, b: str) -> dict:
    return {"a": a, "b": b, **difference_with_verdict(records[a], records[b], COMPARED)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None, help="default: $HOMEWORK_DATA_DIR, else ./data")
    p.add_argument("--cache-dir", default=None, help="default: $HOMEWORK_CACHE_DIR, else ./data/cache")
    p.add_argument("--study", default=str(STUDY), help="the block study's analysis.json (its lrs)")
    p.add_argument("--out", default="results/probes")
    p.add_argument("--smoke", action="store_true", help="1 and 2 epochs on 600 images (CI): writes nothing")
    args = p.parse_args(argv)
    runtime = resolve_runtime(threads=threads_from_env())
    data_dir, cache_dir = resolve_data_dir(args.data_dir), cache_dir_from(args.cache_dir)
    if not Path(args.study).is_file():
        raise UsageError(f"--study {args.study} does not exist; run homework_custom_layers_experiments.py first")
    study = read_json(Path(args.study))
    out = Path(args.out)
    if not args.smoke:
        check_writable("output", out)
    records_dir = Path(tempfile.mkdtemp()) if args.smoke else out   # smoke writes nothing under --out
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    profile = task3.PROFILES["standard"]
    data = load_dataset("cifar10", data_dir, cache_dir=cache_dir)
    data = data.with_validation(min(profile.val_size, len(data.train) // 5), seed=VAL_SEED)
    data = data.subsample(600 if args.smoke else profile.train_subset, 200 if args.smoke else profile.test_subset,
                          seed=0)                                  # the study's split (its --seed 0)
    lrs = {b: study["lrs"]["own_lr"][b] for b in (BLOCK, REFERENCE)}
    reference = read_json(Path(args.study).parent / f"{BLOCK}_lr{lrs[BLOCK]:g}_seed0.json")
    if not args.smoke and reference["data"] != data.describe():
        raise UsageError(f"the data in {data_dir} is not the split of {args.study}: the probe would not compare "
                         "like with like")
    epochs = 1 if args.smoke else profile.blocks_epochs
    base = task3.BASE_CONFIG.replace(eval_points=profile.eval_points, plateau_points=profile.plateau_points,
                                     val_eval_samples=profile.val_eval_samples,
                                     train_eval_samples=profile.train_eval_samples,
                                     grad_sample_every=profile.grad_sample_every)
    units = task3.block_units(data.num_classes)
    seeds = PROBE_SEEDS[:1] if args.smoke else PROBE_SEEDS
    variants = probe_runs(epochs)
    records = {}
    for key, v in variants.items():
        cfg = base.replace(epochs=v.epochs, zero_init_residual=v.zero_init)
        specs = [dataclasses.replace(s, name=f"probe_{key}_seed{s.seed}", variant=key)
                 for s in (task3.block_spec(v.block, units[v.block], data.num_classes, lrs[v.block], k, "probe")
                           for k in seeds)]
        records[key] = run_experiment("bottleneck", specs, data, cfg, runtime, records_dir,
                                      title=f"Bottleneck probe: {key}").records
    short, long = (f"{b}_{e}ep" for b, e in ((BLOCK, epochs), (BLOCK, BUDGET_FACTOR * epochs)))
    ref_short, ref_long = f"{REFERENCE}_{epochs}ep", f"{REFERENCE}_{BUDGET_FACTOR * epochs}ep"
    result = {
        "question": "is the parameter-matched bottleneck net's deficit against the basic net budget or init?",
        "epochs": epochs, "long_epochs": BUDGET_FACTOR * epochs, "seeds": list(seeds), "data": data.describe(),
        "lr": lrs, "units": {b: units[b] for b in lrs}, "design": {k: dataclasses.asdict(v) for k, v in variants.items()},
        "variants": {k: {**summarise_runs(v), "convergence": [convergence_of(r) for r in v]}
                     for k, v in records.items()},
        "init": comparison(records, f"{short}_zero_init", short),
        "budget": {"short": comparison(records, short, ref_short), "long": comparison(records, long, ref_long),
                   "gap_change": advantage_change(records[long], records[ref_long], records[short],
                                                  records[ref_short])},
        "study_difference": next(d for d in study["differences"]
                                 if (d["setting"], d["a"], d["b"]) == ("own_lr", BLOCK, REFERENCE)),
        "rule": "paired by seed; real when the paired 95 % interval excludes zero (test accuracy: bootstrap over "
                "seeds and test images; gap_change: (a − b) long − (a − b) short on test accuracy)",
    }
    if not args.smoke:
        write_json(out / "bottleneck.json", result)
    for name, d in (("zero-init − standard init", result["init"]),
                    ("bottleneck − basic, short", result["budget"]["short"]),
                    ("bottleneck − basic, long", result["budget"]["long"])):
        t = d["test_acc"]
        log.info("%s: test acc %+.2f pp [%+.2f, %+.2f] (%s)", name, 100 * t["mean_difference"],
                 100 * t["ci95_low"], 100 * t["ci95_high"], t["verdict"])
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, interrupted_message="interrupted: probe stopped; finished runs are kept"))
