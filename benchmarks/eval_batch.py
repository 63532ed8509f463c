"""How fast the engine evaluates at different evaluation batch sizes (``ExperimentConfig.eval_batch_size``).

    python -m benchmarks.eval_batch              # writes results/benchmarks/eval_batch.json
    python -m benchmarks.eval_batch --smoke      # tiny, for CI: checks it runs

Evaluation is a forward pass in eval mode under ``torch.inference_mode`` with the engine's runtime
(channels_last, bf16 autocast where the CPU has bf16). Each net of tasks 2 and 3 is timed on a fixed
random batch of ``--images`` images cut into batches of each size, sizes in turns (order rotated
each repeat); per net and size the median img/s and the paired speed-up against the first size
(per-round ratios: median, quartiles, extremes over the rounds). Why it matters: on a 2-core CPU the activations of 1000 images
overflow the caches, and the fixed per-run evaluation decides whether >= 80 % of a script's wall
time goes to training steps.
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


from models.cnn_models import (BasicBlock, BottleneckBlock, PlainCNN, ResNet, SwappableCNN,
                               resnet_like_plain)
from utils.engine.cli import check_writable, positive_int, run_cli
from utils.engine.files import write_json
from utils.engine.runtime import Runtime, resolve_runtime, threads_from_env
from utils.analysis.paired_timing import paired_ratios, rotated

log = logging.getLogger("eval_batch")
BATCH_SIZES = (1000, 512, 256, 128)


def nets() -> dict[str, nn.Module]:
    """One net per family the task-2 and task-3 scripts evaluate (ResNet-CIFAR widths 16-32-64)."""
    return {"plain-20": PlainCNN(resnet_like_plain(3, (16, 32, 64))),
            "ResNet-20 (basic)": ResNet(BasicBlock, (16, 32, 64), (3, 3, 3)),
            "ResNet (bottleneck)": ResNet(BottleneckBlock, (16, 32, 64), (1, 1, 1)),
            "SwappableCNN 32": SwappableCNN(32)}


def images_per_second(net: nn.Module, x: torch.Tensor, batch: int, runtime: Runtime) -> float:
    t0 = time.perf_counter()
    with torch.inference_mode(), runtime.autocast():
        for i in range(0, len(x), batch):
            net(x[i:i + batch])
    return len(x) / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="results/benchmarks")
    p.add_argument("--images", type=positive_int, default=2000)
    p.add_argument("--repeats", type=positive_int, default=5)
    p.add_argument("--smoke", action="store_true", help="tiny sizes (CI): checks it runs, writes nothing")
    args = p.parse_args(argv)
    runtime = resolve_runtime(threads=threads_from_env())
    if not args.smoke:
        check_writable("output", Path(args.out))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    n_images, repeats, sizes = (16, 1, (8, 4)) if args.smoke else (args.images, args.repeats, BATCH_SIZES)
    x = torch.randn(n_images, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    x = x.to(runtime.device, memory_format=torch.channels_last if runtime.channels_last else torch.contiguous_format)
    rows = []
    for name, net in nets().items():
        net = net.to(runtime.device, memory_format=torch.channels_last if runtime.channels_last
                     else torch.contiguous_format).eval()
        images_per_second(net, x[:sizes[0]], sizes[0], runtime)          # warm-up
        timings: dict[int, list[float]] = {b: [] for b in sizes}
        for r in range(repeats):
            for b in rotated(sizes, r):
                timings[b].append(images_per_second(net, x, b, runtime))
        median = {b: statistics.median(v) for b, v in timings.items()}
        # the paired statistic: per-round speed-ups against the first size (same round, same drift)
        times = {b: [1.0 / v for v in timings[b]] for b in sizes}
        speedup = {b: {k: (1.0 / v if k in ("median", "q25", "q75", "min", "max") else v)
                       for k, v in ratio.items()} for b, ratio in paired_ratios(times, sizes[0]).items()}
        for r in speedup.values():     # the inverse swaps the quartiles and the extremes
            r["q25"], r["q75"], r["min"], r["max"] = r["q75"], r["q25"], r["max"], r["min"]
        rows.append({"model": name, "img_s": median, "vs_first": {b: speedup[b]["median"] for b in sizes},
                     "speedup_vs_first": speedup})
        print(f"{name:22s} " + "  ".join(f"batch {b}: {median[b]:8.0f} img/s (x{speedup[b]['median']:.2f}, "
                                          f"quartiles {speedup[b]['q25']:.2f}-{speedup[b]['q75']:.2f})"
                                          for b in sizes))
    print(f"runtime: {runtime.describe()}")
    if not args.smoke:
        write_json(Path(args.out) / "eval_batch.json", {"runtime": runtime.describe(), "images": n_images,
                                                          "repeats": repeats, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, interrupted_message="interrupted: benchmark stopped, nothing was written"))
