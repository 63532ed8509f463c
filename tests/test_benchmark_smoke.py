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
