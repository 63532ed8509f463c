"""Per-epoch checkpoints of a run in progress, so an interrupted study resumes where it stopped.

A checkpoint belongs to one ``config_hash``: a checkpoint of another configuration is ignored.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def save_checkpoint(path: Path, config_hash: str, model, optimizer, scheduler, history, grads, epoch: int,
                    extra: dict | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"config_hash": config_hash, "epoch": epoch, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "history": dataclasses.asdict(history), "grads": dataclasses.asdict(grads),
                "rng": torch.get_rng_state(), **(extra or {})}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, config_hash: str) -> dict | None:
    """The checkpoint's state, or None if there is none, it is unreadable, or of another config."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, weights_only=False)
    except Exception as exc:
        log.warning("ignoring unreadable checkpoint %s (%s)", path, exc)
        return None
    if state.get("config_hash") != config_hash:
        log.info("checkpoint %s belongs to another config; starting afresh", path)
        return None
    return state
