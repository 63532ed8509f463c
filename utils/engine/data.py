"""Data sets as in-memory uint8 tensors, and a fast batch loader over them.

Why not the usual ``Dataset`` + ``DataLoader`` with PIL transforms: every model in this package sees
each image dozens of times; turning a uint8 array into a PIL image and back for every sample costs
far more than the small networks themselves on a 2-core CPU (see ``benchmarks/bench_training.py``).
So each split is decoded once (by torchvision's own dataset classes), kept as one uint8 tensor
``(N, C, H, W)`` plus int64 labels, and batches are cut, augmented and normalised as whole tensors.
Reading the files from disk: ``utils/engine/data_files.py``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
MNIST_CLASSES = tuple(str(d) for d in range(10))
DATASETS = ("mnist", "cifar10")
DISPLAY_NAMES = {"mnist": "MNIST", "cifar10": "CIFAR-10"}
# Seeds: the command line takes 0 .. MAX_SEED; multi-seed studies add small offsets to it, so the
# library takes up to SEED_LIMIT, the most numpy's legacy seed and sklearn's random_state accept
# (BatchLoader's seed * 100_003 + epoch then stays far below torch's limit of 2**64).
MAX_SEED = 2**31 - 1
SEED_LIMIT = 2**32 - 1
SEED_STRIDE = 100_003     # a prime beyond any epoch count: (seed, epoch) pairs never share a shuffle
CROP_PAD = 4              # random-crop padding of the augmentation (the CIFAR standard)


class DataError(RuntimeError):
    """Data is missing, corrupt or unreadable. The message is one line, meant for the user."""


@dataclass
class ArrayDataset:
    """One split held in memory.

    images: uint8 ``(N, C, H, W)``; labels: int64 ``(N,)``.
    """

    images: Tensor
    labels: Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 (N,C,H,W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError("labels must be (N,) and match images")
        self.labels = self.labels.long()

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, indices: Tensor | np.ndarray) -> "ArrayDataset":
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        return ArrayDataset(self.images[idx].contiguous(), self.labels[idx].clone())


@dataclass
class DatasetSplits:
    """A data set's train and test splits plus what a result must record about them."""

    name: str                       # "mnist" | "cifar10"
    train: ArrayDataset
    test: ArrayDataset
    class_names: tuple[str, ...]
    source: str                     # human-readable origin, e.g. "image-folder copy (JPEG)"
    mean: tuple[float, ...] = field(default=())   # per channel, in [0, 1], from the train split
    std: tuple[float, ...] = field(default=())
    # Held out of the training set (stratified): curves and every choice (lr, epochs, recipe) are
    # read on it; the test set is evaluated once, at the end of a run, for the report.
    val: ArrayDataset | None = None
    val_seed: int | None = None

    def __post_init__(self) -> None:
        if not self.mean:
            self.mean, self.std = channel_stats(self.train.images)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def display_name(self) -> str:
        return DISPLAY_NAMES.get(self.name, self.name)

    def describe(self) -> dict:
        """What every result JSON records about its data."""
        return {"dataset": self.name, "source": self.source, "n_train": len(self.train),
                "n_test": len(self.test), "n_val": len(self.val) if self.val is not None else 0,
                "val_seed": self.val_seed, "image_shape": list(self.image_shape),
                "mean": [round(m, 4) for m in self.mean], "std": [round(s, 4) for s in self.std]}

    def subsample(self, train_subset: int | None, test_subset: int | None, seed: int) -> "DatasetSplits":
        """Stratified, seeded subsets of train and test (None or >= N keeps the split whole); the
        validation split and the normalisation statistics are kept."""
        train = stratified_subset(self.train, train_subset, seed)
        test = stratified_subset(self.test, test_subset, seed)
        return dataclasses.replace(self, train=train, test=test)

    def with_validation(self, n_val: int, seed: int = 0) -> "DatasetSplits":
        """Hold ``n_val`` stratified training images out as the validation split (``seed`` fixes
        which). The normalisation statistics are recomputed on what is left for training, so
        nothing about the validation images reaches the model."""
        if self.val is not None:
            raise ValueError("this data already has a validation split")
        if not 0 < n_val < len(self.train):
            raise ValueError(f"a validation split of {n_val} images needs 0 < n < {len(self.train)} (training size)")
        val_idx = stratified_indices(self.train, n_val, seed)
        keep = np.setdiff1d(np.arange(len(self.train)), val_idx, assume_unique=True)
        train = self.train.subset(keep)
        return dataclasses.replace(self, train=train, val=self.train.subset(val_idx), val_seed=seed,
                                   mean=(), std=())


def channel_stats(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images ``(N, C, H, W)``, scaled to [0, 1]."""
    x = images.double().div_(255.0)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3))
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def check_seed(seed: int) -> int:
    if not (isinstance(seed, (int, np.integer)) and 0 <= seed <= SEED_LIMIT):
        raise ValueError(f"seed must be a whole number from 0 to {SEED_LIMIT}, got {seed!r}")
    return int(seed)


def stratified_subset(ds: ArrayDataset, n: int | None, seed: int) -> ArrayDataset:
    """A class-balanced random subset of ``n`` samples: every class keeps its share of the split to
    within one sample (and at least one sample), for every seed in 0..SEED_LIMIT.

    sklearn's stratified split where it applies (so the subsets of the committed results stay the
    same); where it refuses (fewer than one sample per class left out, or a class of one sample),
    the same proportional allocation drawn per class - never an unstratified draw.
    """
    if n is None or n >= len(ds):
        check_seed(seed)
        return ds
    return ds.subset(stratified_indices(ds, n, seed))


def stratified_indices(ds: ArrayDataset, n: int, seed: int) -> np.ndarray:
    """The sorted indices of :func:`stratified_subset` (``n < len(ds)``)."""
    seed = check_seed(seed)
    labels = ds.labels.numpy()
    counts = np.bincount(labels)
    n_present = int((counts > 0).sum())
    if n < n_present:
        raise ValueError(f"a stratified subset needs at least {n_present} samples (one per class), got {n}")
    if len(ds) - n >= n_present and counts[counts > 0].min() >= 2:
        from sklearn.model_selection import train_test_split

        idx, _ = train_test_split(np.arange(len(ds)), train_size=n, stratify=labels, random_state=seed)
    else:
        idx = _proportional_draw(labels, n, seed)
    return np.sort(idx)


def _proportional_draw(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """One sample of every class, the other ``n - classes`` shared in proportion to the class sizes
    (largest remainders), each class's samples drawn at random."""
    classes, counts = np.unique(labels, return_counts=True)
    share = (counts - 1) * (n - len(classes)) / (len(labels) - len(classes))
    take = 1 + np.floor(share).astype(int)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(classes))          # ties between equal remainders: a seeded draw
    order = order[np.argsort(-(share - np.floor(share))[order], kind="stable")]
    take[order[:n - int(take.sum())]] += 1
    return np.concatenate([rng.choice(np.flatnonzero(labels == c), k, replace=False) for c, k in zip(classes, take)])


# ------------------------------------------------------------------------------ batch loading
def random_crop_flip(images: Tensor, pad: int, generator: torch.Generator, flip: bool = True) -> Tensor:
    """Per-sample random crop (zero padding ``pad``) and horizontal flip of a uint8 batch.

    images: ``(B, C, H, W)`` -> same shape. Done with two ``gather`` calls on the padded batch, so a
    batch costs a few microseconds per image instead of a PIL round trip per sample.
    """
    b, c, h, w = images.shape
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :])                     # (B, H)
    cols = (dx[:, None] + torch.arange(w)[None, :])                     # (B, W)
    if flip:
        flipped = torch.rand(b, generator=generator) < 0.5
        cols = torch.where(flipped[:, None], cols.flip(1), cols)
    out = padded.gather(2, rows[:, None, :, None].expand(b, c, h, w + 2 * pad))
    return out.gather(3, cols[:, None, None, :].expand(b, c, h, w))


class BatchLoader:
    """Serves normalised float batches ``(x, y)`` from an :class:`ArrayDataset`.

    x: float32 ``(B, C, H, W)`` (channels_last memory format if asked); y: int64 ``(B,)``.
    The order (and augmentation) of epoch ``e`` depends only on ``(seed, e)``, so a run resumed at
    epoch ``e`` sees exactly the batches an uninterrupted run would.
    """

    def __init__(self, ds: ArrayDataset, batch_size: int, mean: Sequence[float], std: Sequence[float], *,
                 shuffle: bool = False, augment: bool = False, seed: int = 0, drop_last: bool = False,
                 device: torch.device | str = "cpu", channels_last: bool = False) -> None:
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        check_seed(seed)   # seed * 100_003 + epoch must stay a valid torch seed
        self.ds, self.batch_size, self.shuffle, self.augment = ds, batch_size, shuffle, augment
        self.seed, self.drop_last, self.device = seed, drop_last, torch.device(device)
        self.channels_last = channels_last
        std_t = torch.tensor(std, dtype=torch.float32)
        # x_norm = (x/255 - mean)/std = x * scale + shift, one fused multiply-add per batch
        self.scale = (1.0 / (255.0 * std_t)).view(1, -1, 1, 1).to(self.device)
        self.shift = (-torch.tensor(mean, dtype=torch.float32) / std_t).view(1, -1, 1, 1).to(self.device)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.ds)
        # drop_last never drops everything: a split smaller than one batch is served whole
        return n // self.batch_size if self.drop_last and n >= self.batch_size else -(-n // self.batch_size)

    def normalise(self, images: Tensor) -> Tensor:
        x = images.to(self.device, non_blocking=True).float()
        x = torch.addcmul(self.shift, x, self.scale)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        gen = torch.Generator().manual_seed(self.seed * SEED_STRIDE + self.epoch)
        n = len(self.ds)
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            images = self.ds.images[idx]
            if self.augment:
                images = random_crop_flip(images, pad=CROP_PAD, generator=gen)
            yield self.normalise(images), self.ds.labels[idx].to(self.device, non_blocking=True)
