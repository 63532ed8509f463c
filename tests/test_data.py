"""Data loading through the real torchvision code paths, on generated files."""

from __future__ import annotations

import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.data_files import CIFAR_CLASSES, write_fake_cifar_batches, write_fake_cifar_folder, write_fake_mnist
from utils.engine.data import ArrayDataset, BatchLoader, random_crop_flip, stratified_subset
from utils.engine.data_files import DataError, load_cifar10, load_mnist, resolve_data_dir


def test_mnist_idx_files_load_as_uint8_tensors(fake_mnist):
    data = load_mnist(fake_mnist, download=False)
    assert data.train.images.shape == (200, 1, 28, 28) and data.train.images.dtype == torch.uint8
    assert data.test.images.shape == (60, 1, 28, 28)
    assert data.train.labels.dtype == torch.int64
    assert sorted(data.train.labels.unique().tolist()) == list(range(10))
    assert "MNIST" in data.source and data.describe()["n_train"] == 200
    # the stripe pattern written by the fixture survives the round trip
    first = data.train.images[0, 0]
    k = int(data.train.labels[0])
    assert first[k * 2:(k * 2) + 2].float().mean() == 220


def test_cifar_image_folder_is_read_in_official_class_order(tmp_path):
    root = write_fake_cifar_folder(tmp_path, n_train_per_class=3, n_test_per_class=2)
    data = load_cifar10(root, download=False, cache_dir=tmp_path / "cache")
    assert data.class_names == CIFAR_CLASSES
    assert data.train.images.shape == (30, 3, 32, 32) and data.test.images.shape == (20, 3, 32, 32)
    assert data.train.labels.bincount().tolist() == [3] * 10
    assert "PNG, lossless" in data.source
    # a second load comes from the cache and is identical
    cached = load_cifar10(root, download=False, cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache").glob("*.pt"))
    assert torch.equal(cached.train.images, data.train.images)


def test_cifar_cache_is_invalidated_when_the_files_change(tmp_path):
    root = write_fake_cifar_folder(tmp_path, n_train_per_class=2, n_test_per_class=1)
    first = load_cifar10(root, download=False, cache_dir=tmp_path / "cache")
    img = root / "CIFAR-10-images" / "train" / "cat" / "0000.png"
    from PIL import Image
    Image.fromarray(np.full((32, 32, 3), 7, np.uint8)).save(img)
    second = load_cifar10(root, download=False, cache_dir=tmp_path / "cache")
    assert not torch.equal(first.train.images, second.train.images)
    assert (second.train.images == 7).all(dim=(1, 2, 3)).any()


def test_cifar_pickle_batches_load(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    root = write_fake_cifar_batches(tmp_path, n_per_batch=20)
    # torchvision checks the official md5 of every batch; our generated batches cannot match it.
    # (torchvision's own tests patch the check the same way.)
    import torchvision.datasets.cifar as tv_cifar
    monkeypatch.setattr(CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    data = load_cifar10(root, download=False)
    assert data.train.images.shape == (100, 3, 32, 32) and data.test.images.shape == (20, 3, 32, 32)
    assert "pickle" in data.source


def test_missing_data_offline_gives_one_clear_error(tmp_path):
    with pytest.raises(DataError) as err:
        load_mnist(tmp_path / "nothing", download=False)
    msg = str(err.value)
    assert "MNIST not found" in msg and "\n" not in msg and "--data-dir" in msg
    with pytest.raises(DataError, match="CIFAR-10 not found"):
        load_cifar10(tmp_path / "nothing", download=False)


def _idx(ndim_magic: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    return struct.pack(">HBB", 0, 0x08, ndim_magic) + struct.pack(f">{len(dims)}I", *dims) + payload


# Each defect is written in the real IDX format; torchvision itself raises AssertionError,
# RuntimeError or ValueError for them (or loads garbage), never a message naming the file.
MNIST_DEFECTS = {
    "garbage header": ("train-images-idx3-ubyte", lambda b: b"\xde\xad\xbe\xef" * 300, "is not an MNIST IDX file"),
    "empty file": ("t10k-images-idx3-ubyte", lambda b: b"", "is not an MNIST IDX file"),
    "labels header on images": ("train-images-idx3-ubyte", lambda b: _idx(1, (30,), bytes(30)), "not an MNIST IDX"),
    "truncated images": ("train-images-idx3-ubyte", lambda b: b[:1000], "is truncated or has extra bytes"),
    "truncated labels": ("t10k-labels-idx1-ubyte", lambda b: b[:-3], "is truncated or has extra bytes"),
    "wrong image size": ("t10k-images-idx3-ubyte", lambda b: _idx(3, (10, 32, 32), bytes(10 * 32 * 32)),
                         "shape [32, 32], expected [28, 28]"),
    "fewer labels than images": ("t10k-labels-idx1-ubyte", lambda b: _idx(1, (9,), bytes(9)),
                                 "holds 10 images but"),
    "label out of range": ("train-labels-idx1-ubyte", lambda b: _idx(1, (30,), bytes([12] * 30)),
                           "labels outside 0..9"),
}


@pytest.mark.parametrize("defect", sorted(MNIST_DEFECTS))
def test_bad_mnist_file_is_one_line_naming_the_file(defect, tmp_path):
    name, corrupt, expected = MNIST_DEFECTS[defect]
    root = write_fake_mnist(tmp_path, n_train=30, n_test=10)
    f = root / "MNIST" / "raw" / name
    f.write_bytes(corrupt(f.read_bytes()))
    with pytest.raises(DataError) as err:
        load_mnist(root, download=False)
    msg = str(err.value)
    assert expected in msg and str(root / "MNIST" / "raw") in msg and "\n" not in msg
    assert "download a fresh copy" in msg or "download fresh copies" in msg


def _png_of_size(h: int, w: int) -> bytes:
    import io
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


IMAGE_DEFECTS = {
    "not an image": (lambda b: b"not a png", "cannot decode the image"),
    "truncated png": (lambda b: b[:100], "cannot decode the image"),
    "wrong size": (lambda b: _png_of_size(28, 28), "is 28x28 pixels; CIFAR-10 images are 32x32"),
}


@pytest.mark.parametrize("defect", sorted(IMAGE_DEFECTS))
def test_bad_image_in_folder_is_one_line_naming_the_file(defect, tmp_path):
    corrupt, expected = IMAGE_DEFECTS[defect]
    root = write_fake_cifar_folder(tmp_path, n_train_per_class=2, n_test_per_class=1)
    bad = root / "CIFAR-10-images" / "train" / "dog" / "0001.png"
    bad.write_bytes(corrupt(bad.read_bytes()))
    with pytest.raises(DataError) as err:
        load_cifar10(root, download=False, cache_dir=None)
    msg = str(err.value)
    assert expected in msg and str(bad) in msg and "\n" not in msg


def test_files_that_are_not_images_are_ignored_in_class_folders(tmp_path):
    root = write_fake_cifar_folder(tmp_path, n_train_per_class=2, n_test_per_class=1)
    (root / "CIFAR-10-images" / "train" / "dog" / "notes.txt").write_text("a note")
    assert len(load_cifar10(root, download=False).train) == 20


def test_empty_class_folder_is_named(tmp_path):
    root = write_fake_cifar_folder(tmp_path, n_train_per_class=2, n_test_per_class=1)
    cat = root / "CIFAR-10-images" / "test" / "cat"
    shutil.rmtree(cat)
    cat.mkdir()
    with pytest.raises(DataError, match=f"class folder {cat} holds no images"):
        load_cifar10(root, download=False)


def test_corrupt_pickle_batch_is_one_line(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10
    import torchvision.datasets.cifar as tv_cifar

    root = write_fake_cifar_batches(tmp_path, n_per_batch=20)
    (root / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"\x80\x04garbage")
    # past the md5 check (our files cannot match it), torchvision's unpickling raises UnpicklingError
    monkeypatch.setattr(CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    with pytest.raises(DataError, match="cifar-10-batches-py are corrupt or incomplete") as err:
        load_cifar10(root, download=False)
    assert "\n" not in str(err.value)


def test_wrong_class_folders_are_rejected(tmp_path):
    root = write_fake_cifar_folder(tmp_path, n_train_per_class=1, n_test_per_class=1)
    shutil.move(root / "CIFAR-10-images" / "train" / "cat", root / "CIFAR-10-images" / "train" / "kitten")
    with pytest.raises(DataError, match="class folders"):
        load_cifar10(root, download=False)


def test_data_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                     # ./data absent: the default may be created by a download
    monkeypatch.delenv("HOMEWORK_DATA_DIR", raising=False)
    assert resolve_data_dir(None) == Path("data")
    (tmp_path / "env").mkdir()
    (tmp_path / "given").mkdir()
    monkeypatch.setenv("HOMEWORK_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_dir(None) == tmp_path / "env"
    assert resolve_data_dir("given") == Path("given")


@pytest.mark.parametrize("source", ["--data-dir", "$HOMEWORK_DATA_DIR"])
def test_a_data_dir_named_explicitly_must_exist(source, tmp_path, monkeypatch):
    typo = tmp_path / "dta"
    monkeypatch.setenv("HOMEWORK_DATA_DIR", str(typo) if source.startswith("$") else "")
    with pytest.raises(DataError, match=f"{re.escape(source)} {typo} does not exist; check the path, or create"):
        resolve_data_dir(str(typo) if source == "--data-dir" else None)
    assert not typo.exists()


def test_stratified_subset_is_balanced_and_seeded():
    labels = torch.arange(1000) % 10
    ds = ArrayDataset(torch.zeros(1000, 1, 2, 2, dtype=torch.uint8), labels)
    a, b = stratified_subset(ds, 100, seed=3), stratified_subset(ds, 100, seed=3)
    assert a.labels.bincount().tolist() == [10] * 10
    assert torch.equal(a.labels, b.labels)
    assert stratified_subset(ds, None, 0) is ds and stratified_subset(ds, 5000, 0) is ds


@pytest.mark.parametrize("seed", [0, 1, 2**31 - 1, 2**32 - 1])
@pytest.mark.parametrize("n, per_class", [(10, {1}), (100, {10}), (991, {99, 100}), (999, {99, 100})])
def test_stratified_subset_keeps_every_class_share_for_any_valid_seed(seed, n, per_class):
    # 991 and 999 of 1000 leave fewer samples out than there are classes: sklearn refuses to
    # stratify them (the old code then drew without stratification)
    ds = ArrayDataset(torch.zeros(1000, 1, 2, 2, dtype=torch.uint8), torch.arange(1000) % 10)
    sub = stratified_subset(ds, n, seed=seed)
    assert len(sub) == n and set(sub.labels.bincount().tolist()) == per_class
    assert torch.equal(sub.labels, stratified_subset(ds, n, seed=seed).labels)


def test_stratified_subset_with_a_class_of_one_sample_keeps_every_class():
    labels = torch.tensor([0] + [1] * 50 + [2] * 149)
    ds = ArrayDataset(torch.zeros(200, 1, 2, 2, dtype=torch.uint8), labels)
    counts = stratified_subset(ds, 20, seed=5).labels.bincount().tolist()
    assert counts == [1, 5, 14]      # 1 each, the other 17 shared 49 : 148 (4.2 : 12.8)


def test_stratified_subset_is_sklearns_where_sklearn_applies():
    """The subsets behind the committed results must not change."""
    from sklearn.model_selection import train_test_split

    labels = torch.arange(500) % 10
    ds = ArrayDataset(torch.arange(500, dtype=torch.uint8).view(500, 1, 1, 1), labels)
    idx, _ = train_test_split(np.arange(500), train_size=60, stratify=labels.numpy(), random_state=7)
    chosen = stratified_subset(ds, 60, seed=7).images.flatten()
    assert torch.equal(chosen, torch.as_tensor(np.sort(idx), dtype=torch.uint8))


@pytest.mark.parametrize("seed", [-1, 2**32, 2**64, 1.5])
def test_seeds_outside_the_supported_range_are_refused(seed):
    ds = _toy_dataset()
    with pytest.raises(ValueError, match="seed must be a whole number from 0 to 4294967295"):
        stratified_subset(ds, 20, seed=seed)
    with pytest.raises(ValueError, match="seed must be"):
        BatchLoader(ds, 10, (0.5,) * 3, (0.2,) * 3, seed=seed)


def test_largest_cli_seed_plus_a_multi_seed_offset_is_served():
    loader = BatchLoader(_toy_dataset(), 10, (0.5,) * 3, (0.2,) * 3, shuffle=True, augment=True, seed=2**31 - 1 + 4)
    loader.set_epoch(7)
    assert sum(len(y) for _, y in loader) == 50


def _toy_dataset(n: int = 50) -> ArrayDataset:
    g = torch.Generator().manual_seed(0)
    return ArrayDataset(torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g), torch.arange(n) % 10)


def test_batch_loader_normalises_and_covers_every_sample_once():
    ds = _toy_dataset()
    loader = BatchLoader(ds, 16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), shuffle=True, seed=1)
    xs, ys = zip(*loader)
    assert [len(y) for y in ys] == [16, 16, 16, 2] and len(loader) == 4
    x = torch.cat(xs)
    order = torch.cat(ys)
    assert sorted(order.tolist()) == sorted(ds.labels.tolist())
    # value check against the definition (x/255 - mean) / std for one sample
    idx = torch.randperm(50, generator=torch.Generator().manual_seed(1 * 100_003 + 0))
    expected = (ds.images[idx[0]].float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(x[0], expected)


def test_batch_order_depends_only_on_seed_and_epoch():
    ds = _toy_dataset()
    a = BatchLoader(ds, 10, (0.5,) * 3, (0.2,) * 3, shuffle=True, augment=True, seed=4)
    b = BatchLoader(ds, 10, (0.5,) * 3, (0.2,) * 3, shuffle=True, augment=True, seed=4)
    a.set_epoch(2), b.set_epoch(2)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    b.set_epoch(3)
    assert not torch.equal(next(iter(a))[1], next(iter(b))[1])


def test_random_crop_flip_matches_a_per_sample_reference():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (6, 3, 5, 7), dtype=torch.uint8, generator=g)
    out = random_crop_flip(x, pad=2, generator=torch.Generator().manual_seed(9))
    # re-draw the same random numbers and build each sample by hand
    g2 = torch.Generator().manual_seed(9)
    dy = torch.randint(0, 5, (6,), generator=g2)
    dx = torch.randint(0, 5, (6,), generator=g2)
    flip = torch.rand(6, generator=g2) < 0.5
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(6):
        ref = padded[i, :, dy[i]:dy[i] + 5, dx[i]:dx[i] + 7]
        if flip[i]:
            ref = ref.flip(-1)
        assert torch.equal(out[i], ref)
