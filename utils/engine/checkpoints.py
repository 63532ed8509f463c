"""Per-epoch checkpoints of a run in progress, so an interrupted study resumes where it stopped.

A checkpoint belongs to one ``config_hash``: a checkpoint of another configuration is ignored.
It holds tensors and plain values only (numbers, strings, lists, dicts, None), so it is read with
``torch.load(weights_only=True)``, which executes nothing: a file that needs more (a pickle carrying
code) is refused and the run trains from scratch.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils.engine.errors import one_line
from utils.engine.files import save_torch

log = logging.getLogger(__name__)


def save_checkpoint(path: Path, config_hash: str, model, optimizer, scheduler, history, grads, epoch: int,
                    extra: dict | None = None) -> None:
    save_torch(path, {"config_hash": config_hash, "epoch": epoch, "model": model.state_dict(),
                      "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                      "history": dataclasses.asdict(history), "grads": dataclasses.asdict(grads),
                      "rng": rng_state(), **(extra or {})})


def load_checkpoint(path: Path, config_hash: str) -> dict | None:
    """The checkpoint's state, or None if there is none, it is unreadable or refused, or of another config."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, weights_only=True)
    except Exception as exc:
        log.warning("refusing checkpoint %s: it does not load as tensors and plain values (%s); "
                    "training from scratch", path, one_line(exc)[:300])
        return None
    if not isinstance(state, dict) or state.get("config_hash") != config_hash:
        log.info("checkpoint %s belongs to another config; starting afresh", path)
        return None
    if not isinstance(state.get("rng"), dict):
        log.info("checkpoint %s has no random-generator states of this layout; starting afresh", path)
        return None
    return state


def rng_state() -> dict[str, Any]:
    """Every random generator a run draws from, as tensors and plain values (see the module docstring):
    torch's (CPU, and CUDA where present), numpy's global one and Python's ``random``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {"torch": torch.get_rng_state(),
                             "numpy": [str(kind), keys.tolist(), int(pos), int(has_gauss), float(cached)],
                             "python": [version, list(internal), gauss]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Put every generator back where :func:`rng_state` found it."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
