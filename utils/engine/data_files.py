"""Reading the data sets from disk into :class:`utils.engine.data.DatasetSplits`.

Where the files come from, in order:
  * MNIST: ``torchvision.datasets.MNIST`` under ``<data-dir>/MNIST/raw`` (downloaded if absent).
  * CIFAR-10: the official pickle batches ``<data-dir>/cifar-10-batches-py`` via
    ``torchvision.datasets.CIFAR10``; else an image-folder copy
    ``<data-dir>/CIFAR-10-images/{train,test}/<class>/*.{png,jpg}`` via ``ImageFolder``; else a
    torchvision download. Every result records which source was used (``DatasetSplits.source``).

Every failure to read them (missing, truncated, corrupt, wrong layout) is one :class:`DataError`
line naming the file or folder and the fix.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from utils.engine.data import CIFAR10_CLASSES, DATASETS, MNIST_CLASSES, ArrayDataset, DataError, DatasetSplits
from utils.engine.errors import one_line
from utils.engine.files import save_torch

log = logging.getLogger(__name__)

DATA_DIR_ENV = "HOMEWORK_DATA_DIR"
DEFAULT_DATA_DIR = "data"


def resolve_data_dir(cli_value: str | None) -> Path:
    """``--data-dir``, else ``$HOMEWORK_DATA_DIR``, else ``./data``.

    A folder named explicitly must exist: a mistyped path is reported instead of being created
    and filled by a download. Only the default ./data is created when the data sets are downloaded.
    """
    env = os.environ.get(DATA_DIR_ENV, "").strip()
    origin = "--data-dir" if cli_value else f"${DATA_DIR_ENV}" if env else "the default data folder"
    path = Path(cli_value or env or DEFAULT_DATA_DIR).expanduser()
    if path.exists() and not path.is_dir():
        raise DataError(f"{origin} {path} is a file, not a folder; point it at the folder holding the data sets")
    if not path.exists() and (cli_value or env):
        raise DataError(f"{origin} {path} does not exist; check the path, or create the folder (mkdir -p {path}) "
                        f"to have the data sets downloaded into it")
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
                            + f" (download failed: {one_line(exc)})") from None
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
    return DatasetSplits("mnist", train, test, MNIST_CLASSES, "torchvision MNIST (IDX files, lossless)")


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
        detail = type(exc).__name__ + (f": {one_line(exc)}" if str(exc).strip() else "")
        raise DataError(f"{what} ({detail}); {fix}") from None


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
                        + f" (download failed: {one_line(exc)})") from None
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
                         "torchvision CIFAR10 (official pickle batches, lossless)")


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
                         f"image-folder copy CIFAR-10-images ({fmt})")


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
        raise DataError(f"cannot list the image folder {split_dir} ({one_line(exc)}); check that it is "
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
            log.info("CIFAR-10 %s: %d images from cache %s", split, len(blob["labels"]), cache_file.name)
            return ArrayDataset(blob["images"], blob["labels"])
        except Exception as exc:  # a broken cache is never trusted: decode again
            log.warning("ignoring unreadable cache %s (%s)", cache_file, one_line(exc))

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
        save_torch(cache_file, {"images": images, "labels": labels})
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

