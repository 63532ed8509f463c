"""Data sets as in-memory uint8 tensors, and a fast batch loader over them.

Why not the usual ``Dataset`` + ``DataLoader`` with PIL transforms: every model in this package sees
each image dozens of times; turning a uint8 array into a PIL image and back for every sample costs
far more than the small networks themselves on a 2-core CPU (see ``benchmarks/bench_training.py``).
So each split is decoded once (by torchvision's own dataset classes), kept as one uint8 tensor
``(N, C, H, W)`` plus int64 labels, and batches are cut, augmented and normalised as whole tensors.

Where the files come from, in order:
  * MNIST: ``torchvision.datasets.MNIST`` under ``<data-dir>/MNIST/raw`` (downloaded if absent).
  * CIFAR-10: the official pickle batches ``<data-dir>/cifar-10-batches-py`` via
    ``torchvision.datasets.CIFAR10``; else an image-folder copy
    ``<data-dir>/CIFAR-10-images/{train,test}/<class>/*.{png,jpg}`` via ``ImageFolder``; else a
    torchvision download. Every result records which source was used (``DatasetSplits.source``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

log = logging.getLogger(__name__)

DATA_DIR_ENV = "HOMEWORK_DATA_DIR"
DEFAULT_DATA_DIR = "data"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
MNIST_CLASSES = tuple(str(d) for d in range(10))
DATASETS = ("mnist", "cifar10")
DISPLAY_NAMES = {"mnist": "MNIST", "cifar10": "CIFAR-10"}
# Seeds are 0 .. 2**31 - 1: with the small offsets of multi-seed studies they stay inside what every
# consumer accepts (numpy's legacy seed and sklearn's random_state take < 2**32; BatchLoader's
# seed * 100_003 + epoch stays far below torch's 2**64).
MAX_SEED = 2**31 - 1


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
    root: str
    mean: tuple[float, ...] = field(default=())   # per channel, in [0, 1], from the train split
    std: tuple[float, ...] = field(default=())

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
                "n_test": len(self.test), "image_shape": list(self.image_shape),
                "mean": [round(m, 4) for m in self.mean], "std": [round(s, 4) for s in self.std]}

    def subsample(self, train_subset: int | None, test_subset: int | None, seed: int) -> "DatasetSplits":
        """Stratified, seeded subsets (None or >= N keeps the split whole)."""
        train = stratified_subset(self.train, train_subset, seed)
        test = stratified_subset(self.test, test_subset, seed)
        return DatasetSplits(self.name, train, test, self.class_names, self.source, self.root,
                             self.mean, self.std)


def channel_stats(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images ``(N, C, H, W)``, scaled to [0, 1]."""
    x = images.double().div_(255.0)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3))
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def stratified_subset(ds: ArrayDataset, n: int | None, seed: int) -> ArrayDataset:
    """A class-balanced random subset of ``n`` samples (sklearn's stratified split)."""
    if n is None or n >= len(ds):
        return ds
    from sklearn.model_selection import train_test_split

    n_classes = int(ds.labels.max()) + 1
    if n < n_classes:
        raise ValueError(f"a stratified subset needs at least {n_classes} samples, got {n}")
    try:
        idx, _ = train_test_split(np.arange(len(ds)), train_size=n, stratify=ds.labels.numpy(),
                                  random_state=seed)
    except ValueError:  # too few samples left out (or in a class) to stratify: plain seeded draw
        idx = np.random.default_rng(seed).permutation(len(ds))[:n]
    return ds.subset(np.sort(idx))


def resolve_data_dir(cli_value: str | None) -> Path:
    """``--data-dir``, else ``$HOMEWORK_DATA_DIR``, else ``./data``; a file there is refused."""
    env = os.environ.get(DATA_DIR_ENV, "").strip()
    origin = "--data-dir" if cli_value else f"${DATA_DIR_ENV}" if env else "the default data folder"
    path = Path(cli_value or env or DEFAULT_DATA_DIR).expanduser()
    if path.exists() and not path.is_dir():
        raise DataError(f"{origin} {path} is a file, not a folder; point it at the folder holding the data sets")
    return path


# --------------------------------------------------------------------------------------- MNIST
MNIST_LAYOUT = "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte"
_REDOWNLOAD = "delete it and run again to download a fresh copy, or replace it with the original file"


def load_mnist(root: Path, download: bool = True) -> DatasetSplits:
    from torchvision import datasets

    root = Path(root)
    raw = root / "MNIST" / "raw"
    if not all((raw / f"{prefix}-{kind}-ubyte").is_file() for prefix in ("train", "t10k")
               for kind in ("images-idx3", "labels-idx1")):
        if not download:
            raise DataError(_missing_msg("MNIST", root, MNIST_LAYOUT))
        try:
            datasets.MNIST(str(root), train=True, download=True)
        except Exception as exc:  # network, disk and archive errors come in many types
            raise DataError(_missing_msg("MNIST", root, MNIST_LAYOUT)
                            + f" (download failed: {_one_line(exc)})") from None
    # torchvision asserts on a bad header and misreads a truncated file: check each file first, so the
    # message names it.
    for prefix in ("train", "t10k"):
        n_images = _check_idx_file(raw / f"{prefix}-images-idx3-ubyte", (28, 28))
        n_labels = _check_idx_file(raw / f"{prefix}-labels-idx1-ubyte", ())
        if n_images != n_labels:
            raise DataError(f"{raw / f'{prefix}-images-idx3-ubyte'} holds {n_images} images but "
                            f"{raw / f'{prefix}-labels-idx1-ubyte'} {n_labels} labels; delete both and run again "
                            f"to download fresh copies, or replace them with the original files")
    with _read_errors(f"cannot read the MNIST files under {raw}", _REDOWNLOAD):
        splits = [datasets.MNIST(str(root), train=t, download=False) for t in (True, False)]
        train, test = (ArrayDataset(s.data.unsqueeze(1).contiguous(), s.targets) for s in splits)
    for prefix, split in (("train", train), ("t10k", test)):
        _check_labels(raw / f"{prefix}-labels-idx1-ubyte", split, len(MNIST_CLASSES))
    _check_counts("MNIST", root, train, test, (60000, 10000))
    return DatasetSplits("mnist", train, test, MNIST_CLASSES, "torchvision MNIST (IDX files, lossless)", str(root))


def _check_idx_file(path: Path, item_shape: tuple[int, ...]) -> int:
    """Number of items in an IDX file of uint8 (magic 0x0000 08 <ndim>, big-endian dims, data), after
    checking its header, item shape and size."""
    ndim = 1 + len(item_shape)
    try:
        with open(path, "rb") as fh:
            header = fh.read(4 + 4 * ndim)
            size = os.fstat(fh.fileno()).st_size
    except OSError as exc:
        raise DataError(f"cannot read {path} ({exc.strerror or exc}); {_REDOWNLOAD}") from None
    if len(header) < 4 + 4 * ndim or header[:4] != bytes((0, 0, 0x08, ndim)):
        raise DataError(f"{path} is not an MNIST IDX file (header {header[:4].hex() or 'empty'}, expected "
                        f"{bytes((0, 0, 0x08, ndim)).hex()}); {_REDOWNLOAD}")
    dims = struct.unpack(f">{ndim}I", header[4:])
    if dims[1:] != item_shape:
        raise DataError(f"{path} holds items of shape {list(dims[1:])}, expected {list(item_shape)}; {_REDOWNLOAD}")
    expected = 4 + 4 * ndim + math.prod(dims)
    if size != expected:
        raise DataError(f"{path} is truncated or has extra bytes ({size} bytes; its header announces {expected}); "
                        f"{_REDOWNLOAD}")
    return dims[0]


def _check_labels(where: Path, ds: ArrayDataset, n_classes: int) -> None:
    if len(ds) and not (0 <= int(ds.labels.min()) and int(ds.labels.max()) < n_classes):
        raise DataError(f"{where} has labels outside 0..{n_classes - 1} (found {int(ds.labels.min())}.."
                        f"{int(ds.labels.max())}); the file is corrupt: {_REDOWNLOAD}")


@contextlib.contextmanager
def _read_errors(what: str, fix: str) -> Iterator[None]:
    """Turn any failure of torchvision / pickle / PIL while reading files into one DataError line.

    Those libraries report a bad file with whatever the failing step raises (AssertionError,
    EOFError, UnpicklingError, ValueError, RuntimeError, ...), so the net is deliberately wide.
    """
    try:
        yield
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{what} ({type(exc).__name__}: {_one_line(exc)}); {fix}") from None


# ------------------------------------------------------------------------------------ CIFAR-10
CIFAR_IMAGE_SHAPE = (32, 32, 3)    # HWC, as decoded
CIFAR_LAYOUT = "cifar-10-batches-py/ or CIFAR-10-images/{train,test}/<class>/*.png"


def load_cifar10(root: Path, download: bool = True, cache_dir: Path | None = None) -> DatasetSplits:
    root = Path(root)
    if (root / "cifar-10-batches-py").is_dir():
        return _load_cifar10_batches(root)
    folder = root / "CIFAR-10-images"
    if (folder / "train").is_dir() and (folder / "test").is_dir():
        return _load_cifar10_image_folder(folder, cache_dir)
    if not download:
        raise DataError(_missing_msg("CIFAR-10", root, CIFAR_LAYOUT))
    from torchvision import datasets
    try:
        datasets.CIFAR10(str(root), train=True, download=True)
    except Exception as exc:  # network, disk and archive errors come in many types
        raise DataError(_missing_msg("CIFAR-10", root, CIFAR_LAYOUT)
                        + f" (download failed: {_one_line(exc)})") from None
    return _load_cifar10_batches(root)


def _load_cifar10_batches(root: Path) -> DatasetSplits:
    from torchvision import datasets

    folder = root / "cifar-10-batches-py"
    # torchvision checks every batch file's md5 first, so truncated/corrupt files are caught.
    with _read_errors(f"the CIFAR-10 batches under {folder} are corrupt or incomplete",
                      "delete the folder and run again to download a fresh copy"):
        splits = [datasets.CIFAR10(str(root), train=t, download=False) for t in (True, False)]
        train, test = (ArrayDataset(torch.from_numpy(s.data).permute(0, 3, 1, 2).contiguous(),
                                    torch.as_tensor(s.targets)) for s in splits)
    for split in (train, test):
        _check_labels(folder, split, len(CIFAR10_CLASSES))
    _check_counts("CIFAR-10", root, train, test, (50000, 10000))
    return DatasetSplits("cifar10", train, test, CIFAR10_CLASSES,
                         "torchvision CIFAR10 (official pickle batches, lossless)", str(root))


def _load_cifar10_image_folder(folder: Path, cache_dir: Path | None) -> DatasetSplits:
    imgs: dict[str, ArrayDataset] = {}
    extensions: set[str] = set()
    for split in ("train", "test"):
        ds = _image_folder(folder / split)
        extensions |= {Path(p).suffix.lower() for p, _ in ds.samples[:50]}
        imgs[split] = _decode_image_folder(ds, cache_dir, split)
    _check_counts("CIFAR-10", folder, imgs["train"], imgs["test"], (50000, 10000))
    fmt = "JPEG, lossy" if extensions & {".jpg", ".jpeg"} else "PNG, lossless"
    return DatasetSplits("cifar10", imgs["train"], imgs["test"], CIFAR10_CLASSES,
                         f"image-folder copy CIFAR-10-images ({fmt})", str(folder.parent))


def _image_folder(split_dir: Path):
    """torchvision's ImageFolder over ``split_dir``, with its failures reported in one line."""
    from torchvision import datasets
    from torchvision.datasets.folder import IMG_EXTENSIONS

    try:
        ds = datasets.ImageFolder(str(split_dir))
    except FileNotFoundError:  # torchvision's word for "a class folder holds no image"
        empty = [d for d in sorted(p for p in split_dir.iterdir() if p.is_dir())
                 if not any(f.suffix.lower() in IMG_EXTENSIONS for f in d.iterdir())]
        raise DataError(f"class folder {empty[0] if empty else split_dir} holds no images "
                        f"({', '.join(IMG_EXTENSIONS[:3])}, ...); copy the class's images into it") from None
    except Exception as exc:
        raise DataError(f"cannot list the image folder {split_dir} ({_one_line(exc)}); check that it is "
                        f"readable and holds one folder per class") from None
    if tuple(ds.classes) != CIFAR10_CLASSES:
        raise DataError(f"{split_dir} has class folders {ds.classes}; expected the 10 CIFAR-10 classes "
                        f"{list(CIFAR10_CLASSES)}")
    return ds


def _decode_image_folder(ds, cache_dir: Path | None, split: str) -> ArrayDataset:
    """Decode every file of an ImageFolder once; reuse a cache keyed on the file manifest."""
    manifest = hashlib.sha1()
    for path, label in ds.samples:
        try:
            st = os.stat(path)
        except OSError as exc:
            raise DataError(f"cannot read {path} ({exc.strerror or exc})") from None
        # relative names: the same folder reached by another path reuses the same cache
        manifest.update(f"{os.path.relpath(path, ds.root)}|{label}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    key = manifest.hexdigest()[:16]
    cache_file = Path(cache_dir) / f"imagefolder_{split}_{key}.pt" if cache_dir else None
    if cache_file is not None and cache_file.is_file():
        try:
            blob = torch.load(cache_file, weights_only=True)
            log.info("CIFAR-10 %s: %d images from cache %s", split, len(blob["labels"]), cache_file)
            return ArrayDataset(blob["images"], blob["labels"])
        except Exception as exc:  # a broken cache is never trusted: decode again
            log.warning("ignoring unreadable cache %s (%s)", cache_file, _one_line(exc))

    def decode(item: tuple[str, int]) -> np.ndarray:
        from PIL import Image

        path = item[0]
        # PIL reports a bad file with many exception types (OSError, SyntaxError, ValueError, ...)
        with _read_errors(f"cannot decode the image {path}", "replace it with the original image or delete it"):
            with Image.open(path) as im:
                array = np.asarray(im.convert("RGB"), dtype=np.uint8)
        if array.shape != CIFAR_IMAGE_SHAPE:
            raise DataError(f"{path} is {array.shape[1]}x{array.shape[0]} pixels; CIFAR-10 images are 32x32: "
                            f"replace it with the original image or delete it")
        return array

    log.info("decoding %d images of %s (once; cached afterwards)", len(ds.samples), split)
    # PIL releases the GIL while decoding, so threads use both cores.
    pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 2)
    try:
        arrays = list(pool.map(decode, ds.samples, chunksize=256))
    finally:  # on a bad file (or Ctrl-C) stop at once instead of decoding the rest first
        pool.shutdown(cancel_futures=True)
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    labels = torch.as_tensor([label for _, label in ds.samples], dtype=torch.long)
    if cache_file is not None:
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_suffix(".tmp")
            torch.save({"images": images, "labels": labels}, tmp)
            os.replace(tmp, cache_file)
        except OSError as exc:
            log.warning("could not write cache %s (%s); continuing without it", cache_file, _one_line(exc))
    return ArrayDataset(images, labels)


def load_dataset(name: str, data_dir: Path, download: bool = True, cache_dir: Path | None = None) -> DatasetSplits:
    """Load ``mnist`` or ``cifar10`` from ``data_dir`` (see module docstring for the search order)."""
    if name == "mnist":
        return load_mnist(data_dir, download)
    if name == "cifar10":
        return load_cifar10(data_dir, download, cache_dir)
    raise ValueError(f"unknown dataset {name!r}; choose from {DATASETS}")


def _check_counts(name: str, root: Path, train: ArrayDataset, test: ArrayDataset, full: tuple[int, int]) -> None:
    if (len(train), len(test)) != full:
        # Not an error: tests and users may point at smaller copies; results record the counts.
        log.warning("%s under %s has %d train / %d test samples (the full set has %d / %d)",
                    name, root, len(train), len(test), *full)


def _missing_msg(name: str, root: Path, layout: str) -> str:
    return (f"{name} not found in {Path(root).resolve()} (expected {layout}); pass --data-dir or set "
            f"{DATA_DIR_ENV} to a folder holding it, or allow the torchvision download")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


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
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        n = len(self.ds)
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            images = self.ds.images[idx]
            if self.augment:
                images = random_crop_flip(images, pad=4, generator=gen)
            yield self.normalise(images), self.ds.labels[idx].to(self.device, non_blocking=True)
