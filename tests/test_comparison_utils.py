"""The shared comparison library: pairing rule, bootstrap for test accuracy, formatters, json_safe."""

import json
import math
import numpy as np

from tests.fakes import fake_record
from utils.analysis.statistics import BOOTSTRAP, T_PAIRED
from utils.comparison_utils import (MIXED_PRECISION, NO_PAIRS, compare_paired, runtime_of, difference_with_verdict, format_difference,
                                    format_mean_ci, grad_rms_of, is_number, json_safe, pair_by_seed, variant_numbers)


def _runs(variant, acc, seeds=(0, 1, 2), diverged=()):
    return [fake_record(f"{variant}_s{s}", seed=s, acc=acc, variant=variant, group="g",
                        status="diverged" if s in diverged else "completed") for s in seeds]


def test_pairing_drops_a_pair_with_a_diverged_side_and_counts_it():
    a, b = _runs("a", 0.9, diverged=(1,)), _runs("b", 0.7)
    pairs, dropped = pair_by_seed(a, b)
    assert [x.seed for x, _ in pairs] == [0, 2] and dropped == 1
    d = compare_paired(a, b, "final_val_acc")
    assert d.paired and d.n == 2 and d.n_pairs_dropped == 1 and d.interval_method == T_PAIRED


def test_test_acc_uses_the_paired_bootstrap():
    d = compare_paired(_runs("a", 0.9), _runs("b", 0.5), "test_acc")
    assert d.interval_method == BOOTSTRAP and d.n == 3 and d.df == 2.0 and d.n_test_images == 300


def test_no_pairs_verdict():
    row = difference_with_verdict(_runs("a", 0.9, diverged=(0, 1, 2)), _runs("b", 0.7), ["test_acc"])
    assert row["test_acc"]["verdict"] == NO_PAIRS and row["test_acc"]["n_pairs_dropped"] == 3


def test_formatters_and_json_safe():
    assert format_mean_ci({"mean": 0.8512, "half_width": 0.005, "n": 3}) == "85.12 ± 0.50 % (n=3, df=2)"
    assert format_mean_ci({"mean": 0.8512, "half_width": math.nan, "n": 1}) == "85.12 % (n=1)"
    assert format_difference({"mean_difference": 0.0123, "ci95_low": 0.005, "ci95_high": 0.02, "n": 3,
                              "df": 2.0}) == "+1.23 pp [+0.50, +2.00] (n=3, df=2)"
    v = json_safe(variant_numbers(_runs("a", 0.9)))
    json.dumps(v, allow_nan=False)
    assert v["convergence"][0]["val_acc"]["window_points"] >= 0          # the verdict carries its window
    assert len(grad_rms_of(_runs("a", 0.9)[0])["rms"]) > 0


def _on(runs, precision, cpu="CPU A"):
    for r in runs:
        r.runtime = {"device": "cpu", "precision": precision, "cpu_capabilities": {"model": cpu}}
    return runs


def test_runs_of_different_precisions_get_no_verdict():
    a, b = _on(_runs("a", 0.9), "bf16"), _on(_runs("b", 0.5), "fp32")
    row = difference_with_verdict(a, b, ["test_acc"])["test_acc"]
    assert row["verdict"] == MIXED_PRECISION and row["excludes_zero"]      # the interval alone would call it real
    assert row["runtimes"] == ["bf16 on cpu (CPU A)", "fp32 on cpu (CPU A)"]


def test_one_precision_on_two_machines_keeps_its_verdict_and_names_both():
    a, b = _on(_runs("a", 0.9), "bf16", "CPU A"), _on(_runs("b", 0.5), "bf16", "CPU B")
    row = difference_with_verdict(a, b, ["test_acc"])["test_acc"]
    assert row["verdict"] == "real" and len(row["runtimes"]) == 2
    assert runtime_of(a[0]) == "bf16 on cpu (CPU A)"


def test_is_number_rejects_what_json_safe_writes_for_nan_and_infinities():
    assert is_number(0.0) and is_number(3) and is_number(np.float32(1.5))
    assert not any(is_number(v) for v in (None, math.nan, math.inf, -math.inf))
