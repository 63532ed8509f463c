"""One way to run a model in eval mode temporarily."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the ``with`` block, then give every submodule back its own flag.

    Restores each module's ``training`` flag individually (not ``model.train(old)``), so a model
    that was deliberately half in eval mode (e.g. frozen BN layers in a training model) comes back
    exactly as it was, also when the block raises.
    """
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield model
    finally:
        for m, flag in flags:
            m.training = flag
