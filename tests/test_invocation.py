"""The invocation log: legs appended per call, training share of the runs trained in the call, and
run_study's per-script cost read back from it."""

from __future__ import annotations

import json

import pytest

import run_study
from tests.fakes import fake_record
from utils.engine.invocation import InvocationLog, legs_since, read_legs

RUNTIME = {"precision": "bf16", "cpu_capabilities": {"model": "Test CPU", "flags": {"avx512_bf16": True}}}


def _records(times):
    out = []
    for i, t in enumerate(times):
        r = fake_record(f"m{i}", seed=i)
        r.timing = {**r.timing, "train_s": t}
        out.append(r)
    return out


def test_a_leg_counts_only_the_runs_trained_in_the_call(tmp_path):
    records = _records([10.0, 20.0, 30.0])
    with InvocationLog(tmp_path, "script", "quick", RUNTIME, only=["a"]) as log:
        with log.experiment("a") as cost:
            cost.add(records, trained=["m1"])            # m0 and m2 were re-used
    (leg,) = read_legs(tmp_path / "invocations" / "script.json")
    (exp,) = leg["experiments"]
    assert (exp["runs"], exp["trained"], exp["train_s"], exp["train_s_all"]) == (3, 1, 20.0, 60.0)
    assert leg["train_s"] == 20.0 and leg["status"] == "completed" and leg["only"] == ["a"]
    assert leg["train_share"] == pytest.approx(20.0 / leg["wall_s"])
    assert leg["runtime"]["precision"] == "bf16"
    assert ", 1 runs trained, " in log.describe() and log.describe().endswith("% of the time in their training")


def test_a_run_read_twice_in_one_experiment_is_counted_once(tmp_path):
    records = _records([10.0, 20.0])
    with InvocationLog(tmp_path, "script", "quick", RUNTIME) as log:
        with log.experiment("a") as cost:
            cost.add(records, trained=["m0"])             # first pass: m0 trains
            cost.add(records, trained=[])                 # second pass reads both back
    (exp,) = read_legs(tmp_path / "invocations" / "script.json")[0]["experiments"]
    assert (exp["runs"], exp["trained"], exp["train_s"], exp["train_s_all"]) == (2, 1, 10.0, 30.0)


def test_legs_are_appended_and_an_interrupted_call_is_kept(tmp_path):
    with InvocationLog(tmp_path, "s", "standard", RUNTIME):
        pass
    with pytest.raises(KeyboardInterrupt):
        with InvocationLog(tmp_path, "s", "standard", RUNTIME) as log:
            with log.experiment("x") as cost:
                cost.add(_records([5.0]), trained=["m0"])
                raise KeyboardInterrupt
    legs = read_legs(tmp_path / "invocations" / "s.json")
    assert [leg["status"] for leg in legs] == ["completed", "interrupted"]
    assert legs[1]["experiments"][0]["train_s"] == 5.0          # the experiment in progress is counted
    assert legs_since(tmp_path, "s", "9999") == [] and len(legs_since(tmp_path, "s", "")) == 2


def test_a_write_failure_at_close_does_not_mask_the_error_that_ended_the_call(tmp_path):
    (tmp_path / "invocations").write_text("a file where the folder should be")
    with pytest.raises(ValueError, match="the real error"):
        with InvocationLog(tmp_path, "s", "quick", RUNTIME):
            raise ValueError("the real error")


def test_run_study_reads_each_scripts_cost_from_its_legs(tmp_path):
    with InvocationLog(tmp_path, "homework_x", "quick", RUNTIME) as log:
        with log.experiment("e") as cost:
            cost.add(_records([4.0, 6.0]), trained=["m0", "m1"])
    started = read_legs(tmp_path / "invocations" / "homework_x.json")[0]["started"]
    cost = run_study.script_cost(tmp_path, "homework_x.py", started)
    assert cost["train_s"] == 10.0 and cost["runs_trained"] == 2
    assert cost["precision"] == ["bf16"] and cost["cpu"] == ["Test CPU"]
    assert cost["cpu_flags"] == [{"avx512_bf16": True}]
    assert run_study.script_cost(tmp_path, "homework_y.py", started)["train_share"] is None   # no leg: no share


def test_study_record_keeps_earlier_runs(tmp_path):
    path = tmp_path / "study_run.json"
    path.write_text(json.dumps({"scripts": [], "started": "a", "earlier_runs": [{"scripts": [], "started": "0"}]}))
    assert [r["started"] for r in run_study._earlier_runs(path)] == ["0", "a"]
    assert run_study._earlier_runs(tmp_path / "missing.json") == []
