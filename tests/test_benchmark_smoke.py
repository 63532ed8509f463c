import pytest
"""The benchmark runs end to end on tiny generated data (its speed targets are not tested here)."""

from benchmarks import bench_training


@pytest.mark.e2e
def test_benchmark_smoke(fake_data_dir, tmp_path, capsys):
    assert bench_training.main(["--smoke", "--data-dir", str(fake_data_dir), "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "mnist/simple_cnn" in out and "cifar10/residual_cnn" in out and "speed-up" in out


def test_levers_benchmark_smoke(capsys):
    from benchmarks import bench_levers

    assert bench_levers.main(["--smoke"]) == 0
    out = capsys.readouterr().out
    for variant in ("engine", "nchw", "one_thread", "mkldnn_off", "sgd_for_loop", "no_item"):
        assert variant in out
    assert "inference_mode" in out


def test_eval_batch_benchmark_smoke(capsys):
    from benchmarks import eval_batch

    assert eval_batch.main(["--smoke"]) == 0
    out = capsys.readouterr().out
    assert "ResNet (bottleneck)" in out and "batch 4" in out


@pytest.mark.e2e
def test_mlp_budget_probe_smoke(fake_data_dir, tmp_path, caplog):
    from benchmarks import mlp_budget_probe

    caplog.set_level("INFO")
    out = tmp_path / "out"
    assert mlp_budget_probe.main(["--smoke", "--data-dir", str(fake_data_dir), "--cache-dir", str(tmp_path),
                                  "--out", str(out)]) == 0
    assert not out.exists()                                   # smoke writes nothing
    for name in ("probe_mlp_augment_1ep", "probe_mlp_augment_2ep", "probe_mlp_all_1ep", "probe_mlp_all_2ep"):
        assert name in caplog.text
    from utils.analysis.protocol import final_seeds, pilot_seeds
    assert mlp_budget_probe.PROBE_SEED not in {*final_seeds(5), *pilot_seeds(5)}   # never in a comparison


@pytest.mark.e2e
def test_depth_budget_probe_smoke(fake_data_dir, tmp_path, caplog):
    from benchmarks import depth_budget_probe as probe
    from utils.analysis.protocol import final_seeds, pilot_seeds
    from utils.engine.files import read_json

    caplog.set_level("INFO")
    out = tmp_path / "out"
    assert probe.main(["--smoke", "--data-dir", str(fake_data_dir), "--cache-dir", str(tmp_path), "--out", str(out)]) == 0
    assert not out.exists()                                   # smoke writes nothing
    deeper, shallower = probe.probe_pair(read_json(probe.STUDY))
    assert deeper != shallower and f"{deeper} − {shallower} at 1 epochs" in caplog.text
    assert not set(probe.PROBE_SEEDS) & {*final_seeds(5), *pilot_seeds(5)}   # never in a comparison


def test_depth_budget_probe_needs_the_study(tmp_path):
    from benchmarks import depth_budget_probe as probe
    from utils.engine.cli import UsageError

    with pytest.raises(UsageError, match="does not exist"):
        probe.main(["--smoke", "--study", str(tmp_path / "missing.json"), "--data-dir", str(tmp_path)])


@pytest.mark.e2e
def test_bottleneck_probe_smoke(fake_data_dir, tmp_path, caplog):
    from benchmarks import bottleneck_probe as probe
    from utils.analysis.protocol import final_seeds, pilot_seeds

    caplog.set_level("INFO")
    out = tmp_path / "out"
    assert probe.main(["--smoke", "--data-dir", str(fake_data_dir), "--cache-dir", str(tmp_path), "--out", str(out)]) == 0
    assert not out.exists()                                   # smoke writes nothing
    for name in ("zero-init − standard init", "bottleneck − basic, short", "bottleneck − basic, long"):
        assert name in caplog.text
    assert not set(probe.PROBE_SEEDS) & {*final_seeds(5), *pilot_seeds(5)}   # never in a comparison


def test_bottleneck_probe_design():
    """One factor at a time: the init pair differs only in zero-init, each budget pair only in the block."""
    from benchmarks import bottleneck_probe as probe

    runs = probe.probe_runs(6)
    assert len(runs) == 5 and len({(r.block, r.epochs, r.zero_init) for r in runs.values()}) == 5
    init = [r for r in runs.values() if r.block == probe.BLOCK and r.epochs == 6]
    assert sorted(r.zero_init for r in init) == [False, True]
    for e in (6, 12):
        pair = [r for r in runs.values() if r.epochs == e and not r.zero_init]
        assert sorted(r.block for r in pair) == sorted([probe.BLOCK, probe.REFERENCE])


@pytest.mark.e2e
def test_resnet_budget_probe_smoke(fake_data_dir, tmp_path, caplog):
    from benchmarks import resnet_budget_probe as probe
    from utils.analysis.protocol import final_seeds, pilot_seeds

    caplog.set_level("INFO")
    out = tmp_path / "out"
    assert probe.main(["--smoke", "--data-dir", str(fake_data_dir), "--cache-dir", str(tmp_path), "--out", str(out)]) == 0
    assert not out.exists()                                   # smoke writes nothing
    assert f"{probe.MODEL} at 1 epochs" in caplog.text and "88 % target" in caplog.text
    assert not set(probe.PROBE_SEEDS) & {*final_seeds(5), *pilot_seeds(5)}   # never in a comparison
