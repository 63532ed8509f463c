"""Synthetic :class:`~utils.records.RunRecord` objects for fast tests of analyses and figures."""

from __future__ import annotations

from utils.records import GradStats, History, RunRecord, summarise


def fake_record(model: str = "m", *, group: str = "", variant: str = "", seed: int = 0,
                test_acc: tuple[float, ...] = (0.4, 0.5), train_loss: tuple[float, ...] | None = None,
                test_loss: tuple[float, ...] | None = None, lr: float = 0.1, status: str = "completed",
                grad_l2: list[list[float]] | None = None, n_classes: int = 3) -> RunRecord:
    """A record with per-epoch curves ``test_acc`` (one value per epoch); a diverged record keeps only
    its first epoch and has no predictions or inference timings."""
    n = len(test_acc)
    train_loss = train_loss or tuple(2.0 - 0.5 * i for i in range(n))
    test_loss = test_loss or tuple(1.8 - 0.4 * i for i in range(n))
    hist = History(epoch=list(range(1, n + 1)), train_loss=list(train_loss), train_acc=[0.5] * n,
                   train_eval_loss=[1.5 - 0.3 * i for i in range(n)], train_eval_acc=[0.5 + 0.1 * i for i in range(n)],
                   test_loss=list(test_loss), test_acc=list(test_acc), epoch_time_s=[1.0] * n, lr=[lr] * n)
    completed = status == "completed"
    if not completed:
        hist = History(**{k: v[:1] for k, v in vars(hist).items()})
    labels = [i % n_classes for i in range(12)]
    rec = RunRecord(
        experiment="exp", model=model, description=f"{model} (synthetic)", group=group, variant=variant, seed=seed,
        status=status, diverged_at=None if completed else {"epoch": 2, "step": 9, "reason": "loss became nan"},
        config={"seed": seed, "lr": lr}, config_overrides={}, config_hash="0" * 16, data={"dataset": "toy"},
        runtime={"precision": "fp32"}, architecture="Sequential()",
        params={"total": 10, "trainable": 10, "per_layer": {"0.weight": 8, "0.bias": 2}}, flops_per_image=1_000_000,
        history=hist, train_time_s=float(sum(hist.epoch_time_s)),
        inference={"latency_ms_batch1": 1.0, "throughput_img_s": 100.0, "throughput_batch": 512} if completed else {},
        grad_stats=GradStats(names=["a", "b"], step=[0, 4, 8],
                             l2=grad_l2 or [[3.0, 4.0], [1.0, 1.0], [2.0, 1.0]],
                             mean_abs=[[0.1, 0.1]] * len(grad_l2 or [0, 0, 0])),
        predictions=[(l + (i % 4 == 0)) % n_classes for i, l in enumerate(labels)] if completed else None,
        labels=labels, class_names=[f"c{k}" for k in range(n_classes)], summary=None)  # type: ignore[arg-type]
    rec.summary = summarise(rec)
    return rec
