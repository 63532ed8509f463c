"""What an experiment is: one :class:`ExperimentConfig` shared by a list of :class:`ModelSpec`.

"Same hyper-parameters" holds by construction: a spec may change only the regularisation fields
(the regularisation studies) or, as a declared field, the learning rate (an lr study). Everything
that says where a run belongs in a comparison (group, variant, seed) is a field of its spec, so no
code ever parses it back out of a name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from torch import nn

# engine -> models is the allowed direction (models import nothing from utils), so no cycle
from models.init import INIT_SCHEMES

REGULARISATION_FIELDS = ("weight_decay", "label_smoothing", "augment", "dropout")


@dataclass(frozen=True)
class ExperimentConfig:
    """Hyper-parameters shared by every model of one experiment."""

    epochs: int = 5
    batch_size: int = 128
    optimizer: str = "sgd"            # "sgd" (Nesterov momentum) | "adamw"
    lr: float = 0.05                  # peak learning rate
    momentum: float = 0.9
    weight_decay: float = 0.0         # not applied to biases and norm layers
    schedule: str = "onecycle"        # "onecycle" (linear up, linear down) | "cosine" | "constant"
    warmup_fraction: float = 0.2
    label_smoothing: float = 0.0
    augment: bool = False             # random crop (pad 4) + horizontal flip, batch-level
    dropout: float = 0.0              # read by model builders that take it
    grad_clip: float | None = None    # max global grad norm; None = off
    flip_tta: bool = False            # average logits of x and its mirror image at test time
    seed: int = 0
    grad_sample_every: int = 25       # record per-layer gradient stats every k steps
    # Initialisation is a recorded choice (models/init.py): He/Kaiming fan_in for the ReLU nets by
    # default, PyTorch's default init as a named control; zero-init of each residual branch's end
    # (Goyal et al. 2017) only as a labelled control.
    init: str = "kaiming"             # "kaiming" | "pytorch_default"
    zero_init_residual: bool = False
    # Evaluation cadence: the validation curve (and the clean train curve) at ``eval_points``
    # evenly spaced moments of the run, on fixed subsets; the test set once, at the end. The
    # plateau verdict reads only the run's last 20 %: ``plateau_points`` more points spread over
    # that window give it its >= 8 points at about half the evaluations of 40 evenly spaced ones.
    eval_points: int = 20
    plateau_points: int = 0
    val_eval_samples: int | None = None   # None: the whole validation split
    train_eval_samples: int = 2000        # clean (eval-mode) train accuracy on a fixed subset
    # Evaluation batch. On the 2-core bf16 EPYC batch 256 evaluates 1.5-2.8x faster than 1000 (the
    # activations of 1000 images overflow the caches); 1000 is what the first v2 runs used.
    eval_batch_size: int = 1000

    def __post_init__(self) -> None:
        if min(self.epochs, self.batch_size, self.eval_points, self.eval_batch_size) <= 0 or not self.lr > 0:
            raise ValueError("epochs, batch sizes, lr and eval_points must be positive")
        if self.plateau_points < 0:
            raise ValueError(f"plateau_points must be >= 0, got {self.plateau_points}")
        if self.init not in INIT_SCHEMES:
            raise ValueError(f"unknown init {self.init!r}; choose from {INIT_SCHEMES}")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"unknown optimizer {self.optimizer!r}")
        if self.schedule not in ("onecycle", "cosine", "constant"):
            raise ValueError(f"unknown schedule {self.schedule!r}")

    def replace(self, **changes: Any) -> "ExperimentConfig":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class ModelSpec:
    """One run of an experiment: what to build, and where it sits in the comparison.

    ``name`` names the result file; ``group`` is the comparison the run belongs to, ``variant`` what
    differs inside that group, ``seed`` is added to the experiment's base seed, ``lr`` (if set)
    replaces the experiment's peak learning rate for a deliberate lr study. ``tracked_params``
    names parameters (``named_parameters()`` names) whose mean ``|value|`` the engine samples with
    the gradient statistics (:class:`~utils.engine.records.GradStats`), e.g. BN scales that start
    at zero; it is an observation, so it is not part of the run's identity.
    """

    name: str
    build: Callable[[ExperimentConfig], nn.Module]
    description: str = ""
    group: str = ""
    variant: str = ""
    seed: int = 0
    lr: float | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)   # regularisation fields only
    tracked_params: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        bad = set(self.overrides) - set(REGULARISATION_FIELDS)
        if bad:
            raise ValueError(f"{self.name}: overrides may change only regularisation {REGULARISATION_FIELDS}; "
                             f"got {sorted(bad)} (an lr study sets ModelSpec.lr)")

    def config_for(self, base: ExperimentConfig) -> ExperimentConfig:
        lr = {} if self.lr is None else {"lr": self.lr}
        return base.replace(**self.overrides, **lr, seed=base.seed + self.seed)

    def with_seed(self, seed: int) -> "ModelSpec":
        """The same run under another seed; the file name says the seed, the fields say it too."""
        return dataclasses.replace(self, name=f"{self.name}_seed{seed}", seed=seed)


def with_seeds(specs: list[ModelSpec], seeds: int) -> list[ModelSpec]:
    """Every spec for seeds ``0..seeds-1`` (one seed keeps the plain names)."""
    if seeds <= 1:
        return list(specs)
    return [s.with_seed(k) for s in specs for k in range(seeds)]
