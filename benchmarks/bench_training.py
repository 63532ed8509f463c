"""Training and inference throughput: the textbook PyTorch loop vs this package's engine.

    python -m benchmarks.bench_training --data-dir ./data            # writes results/benchmarks/
    python -m benchmarks.bench_training --smoke                      # tiny, for CI

(a) textbook: a Dataset that, like torchvision's MNIST/CIFAR10 classes, keeps the uint8 arrays and
    turns every sample into a PIL image, then ``ToTensor`` + ``Normalize``; ``DataLoader(shuffle=True)``
    with ``num_workers`` 0 and 2 (the faster is reported); fp32, NCHW.
(b) engine: ``utils.training_utils.train_model`` exactly as the scripts call it (in-memory uint8
    batches, channels_last, precision ``auto``).
Same model, optimizer (SGD-Nesterov), batch size and number of images; the two are run
alternately, ``--repeats`` times (default :data:`~utils.analysis.paired_timing.MIN_REPEATS`); medians are
reported, and the training speed-up also as the paired per-round ratio (``train_speedup_paired``).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset


from homework_cnn_vs_fc_comparison import headline_specs, mnist_specs
from utils.engine.cli import UsageError, cache_dir_from, check_writable, positive_int, run_cli
from utils.engine.model_stats import count_flops
from utils.engine.data import DatasetSplits
from utils.engine.data_files import load_dataset, resolve_data_dir
from utils.engine.experiment import ExperimentConfig
from utils.engine.files import write_json
from utils.engine.runtime import resolve_runtime, threads_from_env
from utils.analysis.paired_timing import MIN_REPEATS, spread
from utils.training_utils import evaluate, lr_factor, train_model
from utils.engine.data import BatchLoader

log = logging.getLogger("bench")


class TextbookDataset(Dataset):
    """What torchvision's MNIST/CIFAR10 do per sample: uint8 array -> PIL image -> transform."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean, std) -> None:
        from torchvision import transforms

        self.images = images.permute(0, 2, 3, 1).squeeze(-1).numpy()  # HWC / HW, as torchvision stores it
        self.labels = labels.tolist()
        self.transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def textbook_train(build, data: DatasetSplits, cfg: ExperimentConfig, n_images: int,
                   workers: int) -> tuple[float, nn.Module]:
    """Images/s of the plain loop over ``n_images`` training images (after one warm-up batch), and
    the model it trained (same lr schedule as the engine, so accuracies are comparable)."""
    torch.manual_seed(cfg.seed)
    model = build(cfg)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True)
    total_steps = n_images // cfg.batch_size + 1
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total_steps, cfg))
    ds = TextbookDataset(data.train.images, data.train.labels, data.mean, data.std)
    loader = DataLoader(ds, batch_size=cfg.batch_size, shuffle=True, num_workers=workers, drop_last=True,
                        persistent_workers=False)
    model.train()
    seen, t0 = 0, None
    for x, y in loader:
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if t0 is None:           # the first batch pays for worker start-up and allocator warm-up
            t0 = time.perf_counter()
            continue
        seen += y.shape[0]
        if seen >= n_images:
            break
    return seen / (time.perf_counter() - t0), model


@torch.inference_mode()
def textbook_inference(model: nn.Module, data: DatasetSplits, batch: int = 512) -> float:
    model.eval()
    ds = TextbookDataset(data.test.images, data.test.labels, data.mean, data.std)
    loader = DataLoader(ds, batch_size=batch, num_workers=0)
    t0, seen = time.perf_counter(), 0
    for x, _ in loader:
        model(x)
        seen += x.shape[0]
    return seen / (time.perf_counter() - t0)


@torch.inference_mode()
def engine_inference(model: nn.Module, data: DatasetSplits, runtime, batch: int = 512) -> float:
    """The engine's evaluation pass over the test set (pre-decoded tensors, the runtime's precision
    and memory format), in images/s: what :func:`textbook_inference` does the textbook way."""
    loader = BatchLoader(data.test, batch, data.mean, data.std, device=runtime.device,
                         channels_last=runtime.channels_last)
    t0 = time.perf_counter()
    evaluate(model, loader, runtime)
    return len(data.test) / (time.perf_counter() - t0)


def engine_train(spec, data: DatasetSplits, cfg: ExperimentConfig, runtime, n_images: int) -> tuple[float, nn.Module]:
    # one evaluation point on small subsets: the benchmark times the training epoch itself
    rec, model = train_model(spec, data, cfg.replace(epochs=1, train_eval_samples=100, val_eval_samples=100,
                                                     eval_points=1), runtime, experiment="bench")
    return rec.epoch_time_s[0], model


def bench_one(label: str, spec, data: DatasetSplits, cfg: ExperimentConfig, runtime, n_images: int,
              repeats: int) -> dict:
    flops = count_flops(spec.build(cfg), data.image_shape)
    text = {0: [], 2: []}
    eng = []
    for r in range(repeats):                       # alternate, so drifts in machine load hit both
        for w in text:
            text[w].append(textbook_train(spec.build, data, cfg, n_images, w)[0])
        seconds, model = engine_train(spec, data, cfg, runtime, n_images)
        eng.append((len(data.train) // cfg.batch_size) * cfg.batch_size / seconds)
        log.info("%s repeat %d: textbook %.0f / %.0f img/s (workers 0 / 2), engine %.0f img/s", label, r + 1,
                 text[0][-1], text[2][-1], eng[-1])
    best_workers = max(text, key=lambda w: statistics.median(text[w]))
    tb = statistics.median(text[best_workers])
    en = statistics.median(eng)
    eng_inf = engine_inference(model, data, runtime)
    tb_inf = textbook_inference(spec.build(cfg).float(), data)
    return {"model": label, "params": sum(p.numel() for p in model.parameters()), "forward_mflops": flops / 1e6,
            "batch_size": cfg.batch_size, "images_per_repeat": n_images, "repeats": repeats,
            "textbook_train_img_s": tb, "textbook_best_num_workers": best_workers,
            "textbook_train_img_s_all": {str(k): v for k, v in text.items()},
            "engine_train_img_s": en, "engine_train_img_s_all": eng, "train_speedup": en / tb,
            # the paired statistic: per-round speed-ups (both loops timed in the same round)
            "train_speedup_paired": spread([e / t for e, t in zip(eng, text[best_workers])]),
            "textbook_infer_img_s": tb_inf, "engine_infer_img_s": eng_inf, "infer_speedup": eng_inf / tb_inf,
            # training costs ~3x the forward FLOPs (forward + two backward matmuls)
            "engine_train_gflops_s": 3 * flops * en / 1e9, "textbook_train_gflops_s": 3 * flops * tb / 1e9}


def accuracy_check(spec, data: DatasetSplits, cfg: ExperimentConfig, runtime, n_images: int) -> dict:
    """One epoch over the same ``n_images`` each way; both models scored by the same evaluator."""
    _, textbook_model = textbook_train(spec.build, data, cfg, n_images, workers=0)
    _, engine_model = engine_train(spec, data, cfg, runtime, n_images)
    test = BatchLoader(data.test, 1000, data.mean, data.std, device=runtime.device)
    return {"images": n_images, "textbook_test_acc": evaluate(textbook_model, test, runtime).acc,
            "engine_test_acc": evaluate(engine_model, test, runtime).acc}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None, help="default: $HOMEWORK_DATA_DIR, else ./data")
    p.add_argument("--cache-dir", default=None, help="default: $HOMEWORK_CACHE_DIR, else ./data/cache")
    p.add_argument("--out", default="results/benchmarks")
    p.add_argument("--images", type=positive_int, default=6144, help="training images per timed repeat")
    p.add_argument("--repeats", type=positive_int, default=MIN_REPEATS)
    p.add_argument("--accuracy-images", type=positive_int, default=20000,
                   help="MNIST images for the one-epoch accuracy check of both loops")
    p.add_argument("--smoke", action="store_true", help="tiny sizes (CI): checks the benchmark runs")
    args = p.parse_args(argv)
    runtime = resolve_runtime(threads=threads_from_env())
    data_dir, cache_dir = resolve_data_dir(args.data_dir), cache_dir_from(args.cache_dir)
    if not args.smoke:
        check_writable("output", Path(args.out))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    n, repeats = (256, 1) if args.smoke else (args.images, args.repeats)
    rows = []
    for name, specs_fn, cfg, model_name in (
            ("mnist", mnist_specs, ExperimentConfig(batch_size=128, lr=0.05), ("mnist", "simple_cnn")),
            ("cifar10", headline_specs, ExperimentConfig(batch_size=256, lr=0.1),
             ("resnet", "none"))):
        cfg = cfg.replace(batch_size=16) if args.smoke else cfg
        full = load_dataset(name, data_dir, cache_dir=cache_dir)
        # the engine needs a validation split; a small one leaves the timed images untouched
        full = full.with_validation(max(full.num_classes, min(1000, len(full.train) // 10)))
        # Both loops see the same class-balanced sample (the image-folder order is sorted by class).
        n_train = min(n + cfg.batch_size, len(full.train))
        if n_train < 2 * cfg.batch_size:   # one warm-up batch, then at least one timed batch
            raise UsageError(f"the {name} benchmark times batches of {cfg.batch_size} after a warm-up batch: it needs "
                             f"--images >= {cfg.batch_size} and {2 * cfg.batch_size} training images "
                             f"({len(full.train)} in {data_dir})")
        data = full.subsample(n_train, min(2000, len(full.test)), seed=0)
        shape = (data.image_shape[0], data.image_shape[1], data.num_classes)
        spec = next(s for s in specs_fn(*shape) if (s.group, s.variant) == model_name)
        rows.append(bench_one(f"{name}/{spec.name}", spec, data, cfg, runtime, n_train - cfg.batch_size, repeats))
        if name == "mnist":
            n_acc = 64 if args.smoke else args.accuracy_images
            rows[-1]["accuracy_check"] = accuracy_check(spec, full.subsample(n_acc + cfg.batch_size, None, seed=0),
                                                        cfg, runtime, n_acc)
            log.info("accuracy check: %s", rows[-1]["accuracy_check"])
    result = {"runtime": runtime.describe(), "rows": rows}
    print(f"\nruntime: {runtime.describe()}")
    print(f"{'model':24s} {'textbook img/s':>15s} {'engine img/s':>13s} {'speed-up':>9s} {'engine GFLOP/s':>15s} "
          f"{'infer speed-up':>15s}")
    for r in rows:
        print(f"{r['model']:24s} {r['textbook_train_img_s']:15.0f} {r['engine_train_img_s']:13.0f} "
              f"{r['train_speedup']:8.2f}x {r['engine_train_gflops_s']:15.1f} {r['infer_speedup']:14.2f}x")
    if not args.smoke:
        write_json(Path(args.out) / "bench_training.json", result)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, interrupted_message="interrupted: benchmark stopped, nothing was written"))
