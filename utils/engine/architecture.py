"""A canonical, structural description of a built model: what a run's identity hashes.

The rule (one generic rule, no per-class code, so a new layer needs nothing to take part):

* the model is walked with ``named_modules()`` (registration order, the module tree's names);
* each module contributes its name, its class's qualified name (``__qualname__``, without the
  module path, so moving a class to another file keeps the hash), the shape of each of its *own*
  parameters and buffers (``None`` for a registered-but-absent one such as ``bias=False``: bias
  presence is structural) and, for a scalar (0-dim) one, its value as built (a constructor
  argument kept as a tensor: Swish's ``beta``, GeM's ``p``; no scalar is randomly initialised, so
  the value is the same on every build), and its *registered hyper-parameters*: every public
  plain attribute of the instance (``vars(module)``, names not starting with ``_``) whose value is
  a number, bool, string, ``None``, a tuple/list of those, or a class / function (by qualified
  name). ``training`` is left out: it is state, not structure.

For the standard layers that attribute set is exactly what their constructor takes (Conv2d:
in/out_channels, kernel_size, stride, padding, dilation, groups, padding_mode; BatchNorm: num_features,
eps, momentum, affine, track_running_stats; Dropout: p; MaxPool2d: kernel_size, stride, padding,
dilation, ceil_mode; Linear: in/out_features), and the package's custom layers and models store their
constructor arguments as public attributes in the same way. Nothing textual takes part: a docstring,
``extra_repr`` or ``__repr__`` edit changes no description, hence no run's hash; a width, kernel,
stride, a layer added or a class swapped does.
"""

from __future__ import annotations

import hashlib
import json
import numbers
from typing import Any

import torch
from torch import nn

__all__ = ["describe_architecture", "architecture_digest"]

_STATE_NOT_STRUCTURE = frozenset({"training"})


def _qualname(obj: Any) -> str:
    return getattr(obj, "__qualname__", type(obj).__qualname__)


def _plain(value: Any) -> tuple[bool, Any]:
    """``(True, json-able value)`` for a hyper-parameter value, ``(False, None)`` for anything else."""
    if value is None or isinstance(value, (bool, str)):
        return True, value
    if isinstance(value, numbers.Integral):
        return True, int(value)
    if isinstance(value, numbers.Real):
        return True, float(value)
    if isinstance(value, (tuple, list)):
        items = [_plain(v) for v in value]
        if all(ok for ok, _ in items):
            return True, [v for _, v in items]
        return False, None
    if isinstance(value, torch.dtype):
        return True, str(value)
    if isinstance(value, type) or callable(value) and hasattr(value, "__qualname__"):
        return True, _qualname(value)
    return False, None


def _tensor(t: torch.Tensor | None) -> Any:
    if t is None:
        return None
    if t.dim() == 0:
        return {"shape": [], "value": t.item()}
    return list(t.shape)


def describe_architecture(model: nn.Module) -> list[dict[str, Any]]:
    """One entry per module of ``model`` (see the module docstring for the rule)."""
    out = []
    for name, module in model.named_modules():
        hparams = {}
        for key, value in sorted(vars(module).items()):
            if key.startswith("_") or key in _STATE_NOT_STRUCTURE:
                continue
            ok, plain = _plain(value)
            if ok:
                hparams[key] = plain
        out.append({"name": name, "class": _qualname(type(module)),
                    "params": {k: _tensor(p) for k, p in module._parameters.items()},
                    "buffers": {k: _tensor(b) for k, b in module._buffers.items()},
                    "hparams": hparams})
    return out


def architecture_digest(model: nn.Module) -> str:
    """A short hash of :func:`describe_architecture` (for logs and tests)."""
    text = json.dumps(describe_architecture(model), sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:16]
