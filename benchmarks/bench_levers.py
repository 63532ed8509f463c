"""Which CPU levers pay for the engine's training step, and which do not.

    python -m benchmarks.bench_levers                 # writes results/benchmarks/levers.json
    python -m benchmarks.bench_levers --smoke         # tiny, for CI (no compile, no bf16)

The step is the engine's (forward, cross-entropy, ``loss.item()`` divergence guard, backward,
SGD-Nesterov) on the project's MNIST CNN (batch 128) and CIFAR-10 ResNet (batch 256), on a fixed
random batch so that only the step is timed (the data path is what ``bench_training.py`` measures).
Variants change one thing each against the engine's setting (fp32, channels_last, ``foreach`` SGD,
all cores, oneDNN on); they run in turns (order rotated each repeat), ``--repeats`` times, medians reported:

* ``nchw``            — default contiguous layout instead of channels_last;
* ``one_thread``      — ``torch.set_num_threads(1)`` (how well the step uses the second core);
* ``mkldnn_off``      — ``torch.backends.mkldnn`` disabled (ATen's own convolution);
* ``sgd_for_loop`` / ``sgd_fused`` — per-tensor SGD / the fused SGD kernel instead of ``foreach``;
* ``no_item``         — no ``loss.item()`` per step (the host sync the divergence guard costs);
* ``compile``         — ``torch.compile(model)``; its one-off (cold, caches disabled) compile time is
  reported separately, with the number of steps it takes to pay it back where it is faster;
* ``bf16_autocast``   — bf16 autocast (what ``--precision auto`` picks where the CPU has bf16).

Inference: ``torch.inference_mode`` vs ``torch.no_grad`` vs autograd left on, batch 512.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn


from homework_cnn_vs_fc_comparison import headline_specs, mnist_specs
from utils.engine.cli import check_writable, positive_int, run_cli
from utils.engine.experiment import ExperimentConfig
from utils.engine.files import write_json
from utils.engine.runtime import resolve_runtime, threads_from_env
from utils.training_utils import make_optimizer
from utils.analysis.paired_timing import rotated

log = logging.getLogger("bench_levers")


@dataclass
class Variant:
    name: str
    description: str
    channels_last: bool = True
    threads: int | None = None          # None = the runtime's
    mkldnn: bool = True
    sgd_impl: str = "foreach"           # "foreach" | "for_loop" | "fused"
    item_per_step: bool = True
    compile: bool = False
    bf16: bool = False
    slow: bool = False                  # time fewer steps (bf16 is very slow without hardware support)


VARIANTS = (
    Variant("engine", "the engine's setting: fp32, channels_last, foreach SGD, all cores, oneDNN"),
    Variant("nchw", "contiguous NCHW layout", channels_last=False),
    Variant("one_thread", "one torch thread", threads=1),
    Variant("mkldnn_off", "torch.backends.mkldnn disabled", mkldnn=False),
    Variant("sgd_for_loop", "per-tensor SGD loop", sgd_impl="for_loop"),
    Variant("sgd_fused", "fused SGD kernel", sgd_impl="fused"),
    Variant("no_item", "no loss.item() host sync per step", item_per_step=False),
    Variant("compile", "torch.compile(model), steady state", compile=True),
    Variant("bf16_autocast", "bf16 autocast", bf16=True, slow=True),
)


class StepRunner:
    """One model + optimizer in one variant's setting; ``steps(k)`` returns seconds for k steps."""

    def __init__(self, build: Callable[[], nn.Module], variant: Variant, x: torch.Tensor, y: torch.Tensor,
                 cfg: ExperimentConfig) -> None:
        torch.manual_seed(0)
        self.v = variant
        model = build()
        fmt = torch.channels_last if variant.channels_last else torch.contiguous_format
        self.model = model.to(memory_format=fmt)
        self.x, self.y = x.contiguous(memory_format=fmt), y
        self.opt = _optimizer(self.model, cfg, variant.sgd_impl)
        if variant.compile:
            # a cold compile, as a user's first run pays it (no inductor/FX cache from earlier runs)
            import torch._inductor.config as inductor_config
            inductor_config.force_disable_caches = True
        self.forward = torch.compile(self.model) if variant.compile else self.model
        self.criterion = nn.CrossEntropyLoss()
        self.compile_s = None
        if variant.compile:   # the first two steps compile forward and backward graphs
            self.compile_s = self.steps(2)

    @contextlib.contextmanager
    def _setting(self):
        threads, mkldnn = torch.get_num_threads(), torch.backends.mkldnn.enabled
        if self.v.threads:
            torch.set_num_threads(self.v.threads)
        torch.backends.mkldnn.enabled = self.v.mkldnn
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.v.bf16):
                yield
        finally:
            torch.set_num_threads(threads)
            torch.backends.mkldnn.enabled = mkldnn

    def steps(self, k: int) -> float:
        self.model.train()
        with self._setting():
            t0 = time.perf_counter()
            for _ in range(k):
                loss = self.criterion(self.forward(self.x).float(), self.y)
                if self.v.item_per_step:
                    loss.item()
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                self.opt.step()
            loss.item()
            return time.perf_counter() - t0


def _optimizer(model: nn.Module, cfg: ExperimentConfig, impl: str) -> torch.optim.Optimizer:
    if impl == "foreach":
        return make_optimizer(model, cfg)    # exactly what the engine uses
    groups = make_optimizer(model, cfg).param_groups
    params = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in groups]
    kw = {"foreach": False} if impl == "for_loop" else {"fused": True}
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=True, **kw)


def _infer(model: nn.Module, x: torch.Tensor, mode: str, repeats: int) -> float:
    model.eval()
    ctx = {"inference_mode": torch.inference_mode, "no_grad": torch.no_grad,
           "autograd_on": torch.enable_grad}[mode]
    times = []
    with ctx():
        model(x)
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return x.shape[0] / statistics.median(times)


def bench_model(label: str, build: Callable[[], nn.Module], shape: tuple[int, ...], cfg: ExperimentConfig,
                variants: tuple[Variant, ...], steps: int, repeats: int, infer_batch: int) -> dict:
    x = torch.randn(cfg.batch_size, *shape)
    y = torch.randint(0, 10, (cfg.batch_size,))
    runners: dict[str, StepRunner] = {}
    unsupported: dict[str, str] = {}
    for v in variants:
        try:
            runners[v.name] = StepRunner(build, v, x, y, cfg)
            runners[v.name].steps(1)                         # warm-up
        except (RuntimeError, ValueError) as exc:   # e.g. a fused kernel this build lacks
            unsupported[v.name] = str(exc).splitlines()[0][:200]
            runners.pop(v.name, None)
            log.warning("%s/%s: not available (%s)", label, v.name, unsupported[v.name])
    times: dict[str, list[float]] = {n: [] for n in runners}
    names = list(runners)
    for r in range(repeats):
        # in turns, the order rotated every repeat: load drifts and "first in the round" effects
        # hit every variant alike
        for name in rotated(names, r):
            runner = runners[name]
            k = max(1, steps // 4) if runner.v.slow else steps
            times[name].append(k * cfg.batch_size / runner.steps(k))
        log.info("%s repeat %d: %s", label, r + 1, ", ".join(f"{n} {t[-1]:.0f}" for n, t in times.items()))
    base = statistics.median(times["engine"])
    rows = []
    for v in variants:
        if v.name in unsupported:
            rows.append({"variant": v.name, "description": v.description, "unsupported": unsupported[v.name]})
            continue
        img_s = statistics.median(times[v.name])
        row = {"variant": v.name, "description": v.description, "train_img_s": img_s, "train_img_s_all": times[v.name],
               "vs_engine": img_s / base}
        if v.compile:
            c = runners[v.name].compile_s
            saved_per_step = cfg.batch_size / base - cfg.batch_size / img_s
            row.update({"compile_s": c, "steps_to_repay_compile": (c / saved_per_step) if saved_per_step > 0 else None})
        rows.append(row)
    model = runners["engine"].model
    xi = torch.randn(infer_batch, *shape).contiguous(memory_format=torch.channels_last)
    inference = {m: _infer(model, xi, m, max(3, repeats)) for m in ("inference_mode", "no_grad", "autograd_on")}
    return {"model": label, "batch_size": cfg.batch_size, "steps_per_repeat": steps, "repeats": repeats,
            "variants": {r["variant"]: r for r in rows}, "inference_batch": infer_batch, "inference_img_s": inference}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="results/benchmarks")
    p.add_argument("--steps", type=positive_int, default=8, help="training steps per variant per repeat")
    p.add_argument("--repeats", type=positive_int, default=6)
    p.add_argument("--smoke", action="store_true", help="tiny sizes, no compile/bf16 (CI): checks it runs")
    args = p.parse_args(argv)
    runtime = resolve_runtime(threads=threads_from_env())
    if not args.smoke:
        check_writable("output", Path(args.out))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    variants = tuple(v for v in VARIANTS if not (args.smoke and (v.compile or v.bf16)))
    steps, repeats = (1, 1) if args.smoke else (args.steps, args.repeats)
    rows = []
    for label, specs_fn, shape, cfg, model_name in (
            ("mnist/simple_cnn", mnist_specs, (1, 28, 28), ExperimentConfig(batch_size=128, lr=0.05),
             ("mnist", "simple_cnn")),
            ("cifar10/residual_cnn", headline_specs, (3, 32, 32),
             ExperimentConfig(batch_size=256, lr=0.1), ("resnet", "none"))):
        cfg = cfg.replace(batch_size=8) if args.smoke else cfg
        spec = next(s for s in specs_fn(shape[0], shape[1], 10) if (s.group, s.variant) == model_name)
        rows.append(bench_model(label, lambda: spec.build(cfg), shape, cfg, variants, steps, repeats,
                                infer_batch=16 if args.smoke else 512))
    result = {"runtime": runtime.describe(), "rows": rows}
    print(f"\nruntime: {runtime.describe()}")
    print(f"{'model':22s} {'variant':15s} {'train img/s':>12s} {'vs engine':>10s}  note")
    for r in rows:
        for v in r["variants"].values():
            if "unsupported" in v:
                print(f"{r['model']:22s} {v['variant']:15s} {'-':>12s} {'-':>10s}  unsupported: {v['unsupported']}")
                continue
            note = (f"compile {v['compile_s']:.1f} s" if v.get("compile_s") is not None else "")
            print(f"{r['model']:22s} {v['variant']:15s} {v['train_img_s']:12.0f} {v['vs_engine']:9.2f}x  {note}")
        print(f"{r['model']:22s} inference img/s: " +
              ", ".join(f"{k} {val:.0f}" for k, val in r["inference_img_s"].items()))
    if not args.smoke:
        write_json(Path(args.out) / "levers.json", result)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, interrupted_message="interrupted: benchmark stopped, nothing was written"))
