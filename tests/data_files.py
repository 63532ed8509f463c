"""Tiny data sets written in the real on-disk formats (IDX, CIFAR pickle batches, image folders),
so tests go through the same loading code as the real runs."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np

CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def class_pattern_images(n: int, n_classes: int, shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable synthetic images: class k brightens a k-dependent stripe, plus noise (uint8)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % n_classes
    rng.shuffle(labels)
    images = rng.integers(0, 60, size=(n, *shape), dtype=np.uint8)
    h = shape[0]
    band = max(1, h // n_classes)
    for i, k in enumerate(labels):
        images[i, k * band % h:(k * band % h) + band] = 220
    return images, labels.astype(np.uint8)


def _write_idx(path: Path, array: np.ndarray) -> None:
    """IDX format (the MNIST files): magic 0x0000 08 <ndim>, big-endian dims, raw uint8 data."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_fake_mnist(root: Path, n_train: int = 200, n_test: int = 60) -> Path:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = class_pattern_images(n, 10, (28, 28), seed)
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
        # torchvision only needs the unpacked files; the .gz copies mirror the real layout
        for kind in ("images-idx3", "labels-idx1"):
            src = raw / f"{prefix}-{kind}-ubyte"
            with gzip.open(str(src) + ".gz", "wb") as fh:
                fh.write(src.read_bytes())
    return root


def write_fake_cifar_folder(root: Path, n_train_per_class: int = 12, n_test_per_class: int = 4) -> Path:
    from PIL import Image

    for split, per_class, seed in (("train", n_train_per_class, 0), ("test", n_test_per_class, 1)):
        images, labels = class_pattern_images(per_class * 10, 10, (32, 32, 3), seed)
        counters = dict.fromkeys(range(10), 0)
        for img, k in zip(images, labels):
            folder = root / "CIFAR-10-images" / split / CIFAR_CLASSES[k]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(folder / f"{counters[int(k)]:04d}.png")
            counters[int(k)] += 1
    return root


def write_fake_cifar_batches(root: Path, n_per_batch: int = 20) -> Path:
    """The official python-pickle layout (cifar-10-batches-py/data_batch_1..5, test_batch)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for seed, name in enumerate(names):
        images, labels = class_pattern_images(n_per_batch, 10, (32, 32, 3), seed)
        blob = {"data": images.transpose(0, 3, 1, 2).reshape(n_per_batch, -1), "labels": labels.tolist()}
        with open(folder / name, "wb") as fh:
            pickle.dump(blob, fh)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": list(CIFAR_CLASSES)}, fh)
    return root


