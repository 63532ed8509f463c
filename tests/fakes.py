"""Synthetic :class:`~utils.engine.records.RunRecord` objects for fast tests of analyses and figures."""

from __future__ import annotations

import numpy as np
from torch import nn

from utils.engine.records import GradStats, History, RunRecord, summarise

CLASSES = [f"class {k}" for k in range(10)]


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(48, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))


def _cnn() -> nn.Module:
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(4, 8, 3, stride=2, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(8)
            self.shortcut = nn.Sequential(nn.Conv2d(4, 8, 1, stride=2, bias=False), nn.BatchNorm2d(8))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 4, 5, padding=2), nn.ReLU())
            self.stages = nn.Sequential(nn.Sequential(Block()))
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))

    return Net()


TEST_SET_SEED = 12345


def fake_record(model: str = "mlp", *, net: str = "mlp", epochs: int = 4, seed: int = 0, lr: float = 0.1,
                status: str = "completed", zero_grads: bool = False, acc: float = 0.8, time_s: float = 2.0,
                group: str | None = None, variant: str = "v", grad_l2: list[list[float]] | None = None,
                val_loss: list[float] | None = None) -> RunRecord:
    """A small but complete :class:`RunRecord`: real architecture string and parameter counts of
    a tiny torch model, plausible curves (two evaluation points per epoch), gradient norms and
    test predictions (``round(300 acc)`` of 300 right; ``test_acc`` is that fraction, so the
    predictions reproduce it).
    ``status="diverged"`` gives what the engine writes for a diverged run (one epoch of curves, no
    test evaluation, no predictions, no inference timings); ``zero_grads`` makes the first layer's
    first two gradient samples exactly 0 (a zero-initialised residual branch); ``grad_l2`` sets the
    gradient norms ``(samples, layers)`` and ``val_loss`` the validation-loss curve."""
    rng = np.random.default_rng(seed)
    module = _mlp() if net == "mlp" else _cnn()
    per_layer = {n: sum(p.numel() for p in m.parameters(recurse=False))
                 for n, m in module.named_modules() if any(True for _ in m.parameters(recurse=False))}
    weights = [n for n, p in module.named_parameters() if n.endswith("weight") and p.dim() > 1]
    diverged = status != "completed"
    n_ep = 1 if diverged else epochs
    ep = np.arange(1, 2 * n_ep + 1) / 2.0
    history = History(step=(ep * 10).astype(int).tolist(), epoch=ep.tolist(), train_loss=list(1.5 / ep),
                      train_acc=list(acc - 0.25 / ep), train_eval_loss=list(1.4 / ep),
                      train_eval_acc=list(acc + 0.05 - 0.3 / ep), val_loss=val_loss or list(1.6 / ep),
                      val_acc=list(acc - 0.3 / ep), lr=[lr] * len(ep), train_time_s=list(time_s * ep / n_ep))
    if grad_l2 is not None:
        l2 = np.asarray(grad_l2, dtype=float)
        weights = [f"layer{i}.weight" for i in range(l2.shape[1])]
        steps = list(range(0, 4 * l2.shape[0], 4))
    else:
        steps = list(range(0, 10 * n_ep, 2))
        l2 = rng.uniform(0.01, 2.0, size=(len(steps), len(weights))) * np.geomspace(0.1, 1, len(weights))
    if zero_grads:
        l2[:2, 0] = 0.0
    labels = np.random.default_rng(TEST_SET_SEED).integers(0, 10, size=300)   # one test set for every run
    # exactly round(300 acc) right, on images drawn by the seed: the predictions reproduce test_acc
    right = np.zeros(300, dtype=bool)
    right[rng.permutation(300)[:round(300 * acc)]] = True
    preds = np.where(right, labels, (labels + 1) % 10)
    record = RunRecord(
        experiment="test", model=model, description="a test model",
        group=model.split("_")[0] if group is None else group, variant=variant,
        seed=seed, status=status, diverged_at={"epoch": 1, "step": 3, "reason": "nan"} if diverged else None,
        config={"lr": lr, "epochs": epochs, "seed": seed}, config_overrides={}, config_hash="0" * 12, data={},
        runtime={}, init={"scheme": "kaiming", "zero_init_residual": False},
        architecture=str(module), params={"total": sum(per_layer.values()), "trainable": sum(per_layer.values()),
                                          "per_layer": per_layer},
        flops_per_image=int(1e5 * (1 + seed)), history=history, epoch_time_s=[time_s / n_ep] * n_ep,
        timing={"train_s": time_s, "total_s": 1.25 * time_s, "eval_and_other_s": 0.25 * time_s, "train_share": 0.8},
        test_loss=None if diverged else 1.6 / epochs, test_acc=None if diverged else round(300 * acc) / 300,
        grad_stats=GradStats(names=weights, step=steps, l2=l2.tolist(), mean_abs=(l2 / 10).tolist()),
        step_loss=list(np.linspace(2.3, 0.5, 10 * n_ep)),
        predictions=None if diverged else preds.tolist(), labels=labels.tolist(), class_names=CLASSES,
        summary=None)  # type: ignore[arg-type]
    record.summary = summarise(record)
    return record


def interrupted_at(build, step: int) -> type:
    """A ``ModelSpec`` build whose net is ``build(cfg)`` but raises ``KeyboardInterrupt`` (Ctrl-C) at
    its ``step``-th training forward. The count is shared by every net it builds, so the same spec
    run again resumes and goes through."""
    calls = {"n": 0}

    class Interrupting(nn.Module):
        def __init__(self, cfg):
            super().__init__()
            self.net = build(cfg)

        def forward(self, x):
            if self.training:
                calls["n"] += 1
                if calls["n"] == step:
                    raise KeyboardInterrupt
            return self.net(x)

    return Interrupting
