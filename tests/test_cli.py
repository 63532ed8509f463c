"""The shared command line: argument validation, the error policy, and task 1 end to end."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import pytest
import torch

import homework_cnn_architecture_analysis as task2
import run_study
from benchmarks import bench_levers, bench_training
import homework_cnn_vs_fc_comparison as task1
import homework_custom_layers_experiments as task3
from tests.data_files import write_fake_cifar_folder, write_fake_mnist
from utils.analysis.statistics import MIN_WINDOW_POINTS
from utils.engine.cli import UsageError, build_parser, load_data, prepare_output_dirs, run_cli
from utils.engine import runtime as runtime_module
from utils.report import readme as report
from utils.report.compute import write_study_compute
from utils.engine.runtime import has_native_bf16, resolve_runtime, threads_from_env

SCRIPTS = {"task1": task1, "task2": task2, "task3": task3}


def _parse(*argv: str):
    return build_parser("test", ("a", "b"), default_plots="plots/x").parse_args(list(argv))


@pytest.mark.parametrize("argv", [
    ("--epochs", "0"), ("--epochs", "-3"), ("--batch-size", "0"), ("--lr", "0"), ("--lr", "-0.1"),
    ("--lr", "abc"), ("--only", "nope"), ("--device", "tpu"), ("--precision", "fp8"), ("--profile", "huge"),
    ("--seed", "-1"), ("--seed", "2147483648"), ("--seed", "4294967296"), ("--seed", "1e3"), ("--batch-size", "1"),
])
def test_invalid_arguments_exit_with_code_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        _parse(*argv)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_valid_arguments_parse():
    args = _parse("--epochs", "3", "--lr", "0.01", "--only", "a", "b", "--precision", "fp32")
    assert args.epochs == 3 and args.lr == 0.01 and args.only == ["a", "b"] and args.profile == "standard"
    assert _parse("--seed", "2147483647").seed == 2**31 - 1 and _parse("--batch-size", "2").batch_size == 2


def test_repeated_experiment_names_run_once():
    assert _parse("--only", "b", "a", "b").only == ["b", "a"]


LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d )?\d\d:\d\d:\d\d(,\d+)? (DEBUG|INFO|WARNING) ")


def _single_error_line(capsys) -> str:
    """The user-facing contract: one line on stderr, starting with "error:", no traceback (the
    progress log, which also goes to stderr, is not part of it)."""
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if not LOG_LINE.match(line)]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def test_interrupt_exits_130_and_restores_the_signal_handlers(capsys):
    def interrupted(argv):
        raise KeyboardInterrupt

    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    assert run_cli(interrupted, [], interrupted_message="interrupted: test") == 130
    err = capsys.readouterr().err
    assert err.strip() == "interrupted: test"
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers


# ------------------------------------------------------------------------- environment variables
@pytest.mark.parametrize("value", ["abc", "0", "-2", "1.5", "99999999"])
def test_bad_thread_count_in_env_is_one_line_before_any_work(value, tmp_path, fake_data_dir, capsys, monkeypatch):
    monkeypatch.setenv("HOMEWORK_THREADS", value)
    code = run_cli(task1.main, ["--data-dir", str(fake_data_dir), "--results-dir", str(tmp_path / "r"),
                                "--profile", "quick", "--only", "mnist"])
    assert code == 2
    line = _single_error_line(capsys)
    assert f"HOMEWORK_THREADS={value!r}" in line and "unset it" in line
    assert not (tmp_path / "r").exists()          # refused before anything was written


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_script_validates_the_environment(script, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HOMEWORK_THREADS", "two")
    code = run_cli(SCRIPTS[script].main, ["--results-dir", str(tmp_path / "r"), "--profile", "quick"])
    assert code == 2 and "HOMEWORK_THREADS" in _single_error_line(capsys)


@pytest.mark.parametrize("flags, native", [({"avx2", "fma"}, False), ({"avx512f", "avx512_vnni"}, False),
                                          ({"avx512f", "avx512_bf16"}, True), ({"amx_tile", "amx_bf16"}, True)])
def test_native_bf16_needs_the_instructions_not_only_avx512(flags, native):
    assert has_native_bf16(flags) is native


@pytest.mark.parametrize("native", [False, True])
def test_auto_precision_takes_bf16_only_where_the_cpu_has_it_natively(native, monkeypatch):
    # oneDNN emulates bf16 on any AVX-512 CPU; auto must not pick the slower emulation.
    monkeypatch.setattr(runtime_module, "cpu_supports_bf16", lambda: True)
    monkeypatch.setattr(runtime_module, "cpu_capabilities", lambda: {"bf16_native": native})
    threads = torch.get_num_threads()
    try:
        assert resolve_runtime("cpu", "auto").precision == ("bf16" if native else "fp32")
        assert resolve_runtime("cpu", "bf16").precision == "bf16"      # asked for: emulation is allowed
        assert resolve_runtime("cpu", "fp32").precision == "fp32"
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("script", [task1, task2, task3], ids=["task1", "task2", "task3"])
def test_reported_runs_give_the_plateau_verdict_its_points_and_pilots_none(script):
    for name in ("standard", "full"):
        p = script.PROFILES[name]
        assert p.plateau_points >= MIN_WINDOW_POINTS, name
        assert p.pilot_eval_points < p.eval_points, name      # a pilot is read at its end only
    assert script.PROFILES["quick"].plateau_points == 0        # a smoke test: 3 points, no verdict


def test_task2_pilots_are_read_on_every_validation_image_without_a_plateau_window():
    p = task2.PROFILES["standard"]
    cfg = task2.ARCH_CONFIG.replace(eval_points=p.eval_points, plateau_points=p.plateau_points, val_eval_samples=2000)
    pilot = task2.pilot_config(cfg, p)
    assert (pilot.eval_points, pilot.plateau_points, pilot.val_eval_samples) == (p.pilot_eval_points, 0, None)


def test_thread_count_from_env(monkeypatch):
    monkeypatch.setenv("HOMEWORK_THREADS", " 3 ")
    assert threads_from_env() == 3
    monkeypatch.setenv("HOMEWORK_THREADS", "")
    assert threads_from_env() is None
    monkeypatch.delenv("HOMEWORK_THREADS")
    assert threads_from_env() is None
    monkeypatch.setenv("HOMEWORK_THREADS", "-1")
    with pytest.raises(UsageError):
        threads_from_env()


@pytest.mark.parametrize("variable", ["HOMEWORK_DATA_DIR", "HOMEWORK_CACHE_DIR"])
def test_folder_env_var_pointing_at_a_file_is_refused(variable, tmp_path, capsys, monkeypatch):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    monkeypatch.setenv(variable, str(a_file))
    code = run_cli(task1.main, ["--results-dir", str(tmp_path / "r"), "--profile", "quick", "--only", "mnist"])
    assert code == 2
    line = _single_error_line(capsys)
    assert f"${variable} {a_file} is a file" in line
    assert not (tmp_path / "r").exists()


# ----------------------------------------------------- arguments that are valid only for the data
@pytest.mark.parametrize("argv, expected", [
    (("--train-subset", "5"), "--train-subset 5 is smaller than the 10 classes of MNIST"),
    (("--test-subset", "9"), "--test-subset 9 is smaller than the 10 classes of MNIST"),
    (("--train-subset", "100000"), "--train-subset 100000 is larger than the 160 training images of MNIST"),
    (("--test-subset", "61"), "--test-subset 61 is larger than the 60 test images of MNIST"),
])
def test_subset_sizes_are_checked_against_the_data(argv, expected, tmp_path, fake_data_dir, capsys):
    code = _run(tmp_path, fake_data_dir, "--only", "mnist", *argv)
    assert code == 2
    assert expected in _single_error_line(capsys)
    assert not (tmp_path / "results" / "mnist_comparison").exists()   # no model was trained


# ------------------------------------------------------------------- data errors from torchvision
def test_garbage_idx_header_is_one_line_and_exit_2(tmp_path, capsys):
    root = write_fake_mnist(tmp_path / "data", n_train=30, n_test=10)
    bad = root / "MNIST" / "raw" / "train-images-idx3-ubyte"
    bad.write_bytes(b"\xff" * 64)                    # torchvision: AssertionError
    assert _run(tmp_path, root, "--only", "mnist") == 2
    assert f"{bad} is not an MNIST IDX file" in _single_error_line(capsys)


def test_empty_class_folder_is_one_line_and_exit_2(tmp_path, capsys):
    root = write_fake_cifar_folder(tmp_path / "data", n_train_per_class=2, n_test_per_class=1)
    for image in (root / "CIFAR-10-images" / "train" / "frog").iterdir():
        image.unlink()                               # torchvision: FileNotFoundError
    assert _run(tmp_path, root, "--only", "cifar") == 2
    assert "train/frog holds no images" in _single_error_line(capsys)


def test_largest_seed_gives_stratified_subsets(tmp_path, fake_data_dir):
    args = _parse("--data-dir", str(fake_data_dir), "--results-dir", str(tmp_path / "r"), "--seed", "2147483647",
                  "--train-subset", "50", "--test-subset", "59")
    data = load_data(args, prepare_output_dirs(args), "mnist")
    assert data.train.labels.bincount().tolist() == [5] * 10
    assert sorted(data.test.labels.bincount().tolist()) == [5] + [6] * 9     # 59 of 60: one class gives one


def _run(tmp_path, data_dir, *extra: str) -> int:
    return run_cli(task1.main, ["--data-dir", str(data_dir), "--results-dir", str(tmp_path / "results"),
                                "--plots-dir", str(tmp_path / "plots"), "--cache-dir", str(tmp_path / "cache"),
                                "--profile", "quick", *extra])


def test_missing_data_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    # no network in CI: make the download fail fast and deterministically
    from torchvision.datasets import MNIST
    monkeypatch.setattr(MNIST, "mirrors", ["http://127.0.0.1:9/"])
    (tmp_path / "empty").mkdir()                    # an existing folder: the data sets are downloaded into it
    code = _run(tmp_path, tmp_path / "empty", "--only", "mnist")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 or all("Downloading" in line or "Failed" in line or line.startswith("error")
                                 or "INFO" in line for line in err)
    assert any(line.startswith("error: MNIST not found") for line in err)
    assert "Traceback" not in "\n".join(err)


def test_mistyped_data_dir_is_refused_and_not_created(tmp_path, capsys):
    code = _run(tmp_path, tmp_path / "dtaa", "--only", "mnist")
    assert code == 2
    assert f"--data-dir {tmp_path / 'dtaa'} does not exist" in _single_error_line(capsys)
    assert not (tmp_path / "dtaa").exists() and not (tmp_path / "results").exists()


@pytest.mark.parametrize("argv, results, plots", [
    ((), "results", "plots/x"),
    (("--profile", "quick"), "results/quick", "plots/quick/x"),
    (("--results-dir", "results"), "results", "plots/x"),                  # the default, named explicitly
    (("--results-dir", "results/quick", "--profile", "quick"), "results/quick", "plots/quick/x"),
    (("--results-dir", "mine"), "mine", "mine/plots/x"),                   # figures follow the results
    (("--results-dir", "mine", "--profile", "full"), "mine", "mine/plots/x"),
    (("--results-dir", "mine", "--plots-dir", "figs"), "mine", "figs"),
])
def test_figures_follow_a_results_dir_of_your_own(argv, results, plots, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HOMEWORK_DATA_DIR", raising=False)
    dirs = prepare_output_dirs(_parse(*argv))
    assert (dirs.results, dirs.plots) == (Path(results), Path(plots))


def test_unwritable_results_folder_is_refused_before_training(tmp_path, fake_data_dir, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    code = run_cli(task1.main, ["--data-dir", str(fake_data_dir), "--results-dir", str(blocker / "results"),
                                "--profile", "quick", "--only", "mnist"])
    assert code == 2
    assert "not writable" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_request_without_cuda_exits_2(tmp_path, fake_data_dir, capsys):
    code = _run(tmp_path, fake_data_dir, "--only", "mnist", "--device", "cuda")
    assert code == 2 and "CUDA is not available" in capsys.readouterr().err


@pytest.mark.e2e
def test_task1_quick_profile_end_to_end(tmp_path, fake_data_dir):
    assert _run(tmp_path, fake_data_dir, "--precision", "fp32") == 0
    results = tmp_path / "results"
    for exp, models, runs in (("mnist_comparison", ("fc", "simple_cnn", "residual_cnn"), 3 * 2),
                              ("cifar_comparison", ("deep_fc", "residual_cnn", "residual_cnn_regularised",
                                                    "residual_cnn_augment"), 4 * 2),
                              ("mlp_ablation", ("mlp_none", "mlp_dropout", "mlp_all"), 6 * 2),
                              ("cifar_shuffled", ("shuffled_deep_fc", "shuffled_residual_cnn"), 2 * 2)):
        for m in models:
            rec = json.loads((results / exp / f"{m}_seed1.json").read_text())
            assert rec["status"] == "completed" and rec["data"]["source"] and rec["seed"] == 1
            assert rec["data"]["n_val"] > 0 and rec["test_acc"] is not None and rec["grad_stats"]["weight_l2"]
        assert (results / exp / "summary.csv").read_text().count("\n") == runs + 1
        analysis = json.loads((results / exp / "analysis.json").read_text())
        assert analysis["differences"] and all(d["test_acc"]["verdict"] for d in analysis["differences"].values())
        assert all(d["test_acc"]["n"] == 2 for d in analysis["differences"].values())
    shuffled = json.loads((results / "cifar_shuffled" / "shuffled_residual_cnn_seed0.json").read_text())
    assert "shuffled" in shuffled["data"]["source"] and shuffled["config"]["flip_tta"] is False
    original = json.loads((results / "cifar_shuffled_reference" / "original_residual_cnn_seed1.json").read_text())
    assert original["config"]["epochs"] == shuffled["config"]["epochs"] and "shuffled" not in original["data"]["source"]
    control = json.loads((results / "cifar_shuffled" / "analysis.json").read_text())
    assert control["advantage_change"]["n"] == 2 and control["advantage_change"]["verdict"]
    assert "original/resnet vs original/mlp" in control["differences"]
    reg = json.loads((results / "cifar_comparison" / "residual_cnn_regularised_seed0.json").read_text())
    assert reg["config"]["augment"] and reg["config_overrides"]["weight_decay"] > 0
    assert (reg["group"], reg["variant"]) == ("resnet", "all")
    lr = json.loads((results / "cifar_lr_pilots" / "analysis.json").read_text())
    assert reg["config"]["lr"] == lr["chosen_lr"] and lr["chosen_lr"] in lr["selection"]["grid"]
    assert {r["seed"] for r in map(lambda p: json.loads(p.read_text()),
                                   (results / "cifar_lr_pilots").glob("pilot_*.json"))} == {1000}
    pilot = json.loads(next((results / "cifar_lr_pilots").glob("pilot_*.json")).read_text())["config"]
    assert ((pilot["eval_points"], pilot["plateau_points"], pilot["val_eval_samples"])
            == (task1.PROFILES["quick"].pilot_eval_points, 0, None))
    ablation = json.loads((results / "mlp_ablation" / "analysis.json").read_text())
    assert set(ablation["chosen"]) == {"dropout", "weight_decay", "label_smoothing"}
    assert ablation["effective_lr"]["layers"] and ablation["calibration"]["variants"]["mlp_ablation/none"]["ece"]["n"]
    budget = ablation["budget_control"]
    assert budget["epochs"] == 2 * budget["ablation_epochs"] == 2 * ablation["epochs"]
    assert budget["differences"]["mlp_budget/all vs mlp_ablation/all"]["test_acc"]["n"] == 2   # paired by seed
    longer = json.loads((results / "mlp_ablation_budget" / "mlp_budget_all_seed1.json").read_text())
    assert longer["config"]["epochs"] == budget["epochs"] and longer["config_overrides"]["augment"]
    dropout = json.loads((results / "mlp_ablation" / "mlp_dropout_seed0.json").read_text())
    assert dropout["config"]["dropout"] == ablation["chosen"]["dropout"]
    cifar = json.loads((results / "cifar_comparison" / "analysis.json").read_text())
    assert cifar["timing"]["models"] and cifar["target"]["training_pflop"] > 0
    plots = {p.name for p in (tmp_path / "plots").glob("*.png")}
    assert {"mnist_learning_curves.png", "cifar_confusion.png", "cifar_gradient_rms.png", "cifar_timing.png",
            "cifar_lr_selection.png", "cifar_accuracy_vs_compute.png", "regularisation_ablation.png",
            "mlp_weight_decay_effective_lr.png"} <= plots
    # the live task-1 page reads this run too: every number resolves (with the study's compute
    # bookkeeping, which run_study writes after the scripts), every figure drawn is linked
    write_study_compute(results)
    assert report.staged_problems(report.TEMPLATES / "task1_cnn_vs_fc.md", results, tmp_path / "plots",
                                  folder="cnn_vs_fc") == []
    # a second run finds every finished result and retrains nothing (analysis.json is re-derived)
    def model_files():
        return {p: p.stat().st_mtime_ns for p in results.rglob("*.json")
                if p.name != "analysis.json" and p.parent.name != "invocations"}
    before = model_files()
    assert _run(tmp_path, fake_data_dir, "--precision", "fp32") == 0
    assert before == model_files()
    legs = json.loads((results / "invocations" / "homework_cnn_vs_fc_comparison.json").read_text())["legs"]
    assert [leg["status"] for leg in legs] == ["completed"] * 2 and legs[0]["trained"] > 0 == legs[1]["trained"]
    assert {e["experiment"] for e in legs[0]["experiments"]} == {"mnist", "cifar_lr", "cifar", "shuffled",
                                                                 "mlp_ablation"}
    # calibration was measured once and kept: without the weights (a clean clone) nothing retrains
    assert (results / "mlp_ablation" / "calibration.json").is_file()
    import shutil
    for ckpt in results.rglob("checkpoints"):
        shutil.rmtree(ckpt)
    assert _run(tmp_path, fake_data_dir, "--precision", "fp32") == 0
    assert before == model_files()


@pytest.mark.e2e
def test_task1_every_run_diverging_is_reported_not_a_crash(tmp_path, fake_data_dir):
    assert _run(tmp_path, fake_data_dir, "--precision", "fp32", "--lr", "1e30", "--only", "mnist") == 0
    analysis = json.loads((tmp_path / "results" / "mnist_comparison" / "analysis.json").read_text())
    assert {v["status"] for v in analysis["runs"].values()} == {"diverged"}
    assert "diverged" in (tmp_path / "results" / "mnist_comparison" / "summary.md").read_text()
    assert (tmp_path / "plots" / "mnist_learning_curves.png").exists()


# ------------------------------------------------------------------ run_study and the benchmarks
@pytest.mark.parametrize("main", [run_study.main, bench_training.main, bench_levers.main],
                         ids=["run_study", "bench_training", "bench_levers"])
def test_other_entry_points_validate_the_environment(main, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HOMEWORK_THREADS", "all")
    monkeypatch.chdir(tmp_path)
    assert run_cli(main, []) == 2
    assert "HOMEWORK_THREADS='all'" in _single_error_line(capsys)
    assert not list(tmp_path.iterdir())              # nothing written


@pytest.mark.parametrize("main, argv", [
    (run_study.main, ["--profile", "huge"]), (bench_training.main, ["--images", "0"]),
    (bench_training.main, ["--repeats", "-1"]), (bench_training.main, ["--accuracy-images", "x"]),
    (bench_levers.main, ["--steps", "0"]), (bench_levers.main, ["--repeats", "0"]),
])
def test_other_entry_points_refuse_bad_arguments(main, argv, capsys):
    with pytest.raises(SystemExit) as exc:
        run_cli(main, argv)
    assert exc.value.code == 2 and "error" in capsys.readouterr().err


@pytest.mark.parametrize("main", [run_study.main, bench_training.main], ids=["run_study", "bench_training"])
def test_other_entry_points_refuse_a_missing_data_dir(main, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_cli(main, ["--data-dir", str(tmp_path / "nope")]) == 2
    assert "--data-dir" in _single_error_line(capsys) and not (tmp_path / "nope").exists()
    assert not (tmp_path / "results").exists()       # in particular no study_run.json


@pytest.mark.parametrize("main", [run_study.main, bench_training.main, bench_levers.main],
                         ids=["run_study", "bench_training", "bench_levers"])
def test_other_entry_points_refuse_an_unwritable_output_folder(main, tmp_path, capsys, monkeypatch):
    (tmp_path / "a_file").write_text("x")
    option = "--results-dir" if main is run_study.main else "--out"
    monkeypatch.chdir(tmp_path)
    assert run_cli(main, [option, str(tmp_path / "a_file" / "sub")]) == 2
    assert "is not writable" in _single_error_line(capsys)


def test_training_benchmark_refuses_data_too_small_to_time(fake_data_dir, tmp_path, capsys):
    code = run_cli(bench_training.main, ["--data-dir", str(fake_data_dir), "--cache-dir", str(tmp_path),
                                         "--out", str(tmp_path / "out"), "--images", "64"])
    assert code == 2
    assert "needs --images >= 128 and 256 training images (180 in" in _single_error_line(capsys)   # 20 held out
