"""CIFAR-10 sources: the .npz pool (real subset in ../shared/data/cifar10 and files written here), the
official-batches path's errors, and data=cifar10 end to end through Hydra and sft.train."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from sft.data.cifar10 import LABEL_NAMES, Cifar10Source, read_npz
from sft.data.image import ImageDataModule, with_image_size
from sft.errors import ConfigError, DataError
from tests.conftest import FAST, SHARED_DATA

CIFAR_DIR = SHARED_DATA / "cifar10"
needs_cifar = pytest.mark.skipif(not (CIFAR_DIR / "cifar10_test_first846.npz").is_file(),
                                 reason=f"CIFAR-10 subset not found at {CIFAR_DIR} (the ../shared/data folder is absent)")


def write_npz(path: Path, n: int = 60, classes: int = 3, planar: bool = True, **extra) -> Path:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(n) % classes
    arrays = {"data": data.transpose(0, 3, 1, 2).reshape(n, 3072) if planar else data, "labels": labels}
    arrays.update(extra)
    np.savez(path, **arrays)
    return path


def digest(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


@needs_cifar
def test_real_subset_is_split_stratified_and_keeps_every_image():
    splits = Cifar10Source(str(CIFAR_DIR)).load()
    assert splits.label_names == list(LABEL_NAMES)
    sizes = [len(splits.train), len(splits.val), len(splits.test)]
    assert sum(sizes) == 846 and sizes[2] == round(0.2 * 846)
    for rows in (splits.train, splits.val, splits.test):
        assert {label for _, label in rows} == set(LABEL_NAMES)  # every class in every split
    with np.load(CIFAR_DIR / "cifar10_test_first846.npz") as npz:
        originals = npz["data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        expected = sorted((digest(img), LABEL_NAMES[y]) for img, y in zip(originals, npz["labels"], strict=True))
    got = sorted((digest(img), label) for rows in (splits.train, splits.val, splits.test) for img, label in rows)
    assert got == expected  # same pixels, same labels, nothing lost or duplicated
    # The README: the first test image is a cat.
    first = next(label for img, label in splits.train + splits.val + splits.test if digest(img) == digest(originals[0]))
    assert first == "cat"
    assert Cifar10Source(str(CIFAR_DIR)).load().fingerprint() == splits.fingerprint()


def test_npz_layouts_names_and_fingerprint(tmp_path):
    planar = read_npz(write_npz(tmp_path / "planar.npz"))
    hwc = read_npz(write_npz(tmp_path / "hwc.npz", planar=False))
    assert planar[0].shape == (60, 32, 32, 3) and np.array_equal(planar[0], hwc[0])
    named = Cifar10Source(str(write_npz(tmp_path / "named.npz", label_names=np.array(["a", "b", "c"]))),
                          val_size=6, test_size=12).load()
    assert named.label_names == ["a", "b", "c"]
    assert (len(named.train), len(named.val), len(named.test)) == (42, 6, 12)
    other = Cifar10Source(str(write_npz(tmp_path / "other.npz", n=61, label_names=np.array(["a", "b", "c"]))),
                          val_size=6, test_size=12).load()
    assert other.fingerprint() != named.fingerprint()


@pytest.mark.parametrize("arrays, message", [
    ({"data": np.zeros((4, 3072), np.uint8)}, r"no \['labels'\] array"),
    ({"data": np.zeros((4, 3072), np.float32), "labels": np.zeros(4, int)}, "dtype float32"),
    ({"data": np.zeros((4, 100), np.uint8), "labels": np.zeros(4, int)}, r"shape \(4, 100\)"),
    ({"data": np.zeros((4, 3072), np.uint8), "labels": np.zeros(3, int)}, "4 images but 3 labels"),
    ({"data": np.zeros((4, 3072), np.uint8), "labels": np.array([0, 1, 12, 2])}, "image 2 has label 12, outside"),
])
def test_malformed_npz_is_a_clear_error(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=message):
        Cifar10Source(str(path)).load()


def test_path_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        Cifar10Source(str(tmp_path / "nowhere")).load()
    write_npz(tmp_path / "a.npz")
    write_npz(tmp_path / "b.npz")
    with pytest.raises(DataError, match="holds 2 .npz files"):
        Cifar10Source(str(tmp_path)).load()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="set data.download=true"):
        Cifar10Source(str(empty), download=False).load()
    with pytest.raises(ConfigError, match="data.val_size"):
        Cifar10Source(str(empty), val_size=0)


def test_corrupt_official_batches_are_named(tmp_path):
    """Files with the official names but other bytes fail torchvision's md5 check: a DataError, not a crash."""
    batches = tmp_path / "cifar-10-batches-py"
    batches.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        (batches / name).write_bytes(b"not a pickle")
    with pytest.raises(DataError, match=f"CIFAR-10 is not available at {tmp_path}"):
        Cifar10Source(str(tmp_path), download=False).load()


def test_image_size_scales_resize_with_crop():
    base = {"resize": 256, "crop": 224, "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear"}
    assert with_image_size(base, None) == base
    assert with_image_size(base, 112) == {**base, "crop": 112, "resize": 128}
    with pytest.raises(ConfigError, match="data.image_size"):
        with_image_size(base, 4)


def test_datamodule_batches_in_memory_images(tmp_path):
    source = Cifar10Source(str(write_npz(tmp_path / "pool.npz")), val_size=6, test_size=12)
    preprocess = {"resize": 256, "crop": 224, "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear"}
    dm = ImageDataModule(source, preprocess, batch_size=8, image_size=32, eval_batch_size=5)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["pixel_values"].shape == (8, 3, 32, 32) and batch["labels"].dtype.is_floating_point is False
    val = next(iter(dm.val_dataloader()))
    assert val["pixel_values"].shape == (5, 3, 32, 32)
    assert val["pixel_values"].min() >= -1 and val["pixel_values"].max() <= 1  # mean = std = 0.5


@needs_cifar
def test_cifar10_config_trains_and_evaluates(compose_cfg, tmp_path):
    import json

    from sft.eval import evaluate
    from sft.pipeline.train import train

    out = tmp_path / "run"
    cfg = compose_cfg("model=resnet18", "model.weights=none", "data=cifar10", f"data.path={CIFAR_DIR}",
                      "data.image_size=32", f"output_dir={out}", *FAST, "optimizer.lr=1e-3")
    metrics = train(cfg)
    assert metrics["fit/epochs"] == 1
    info = json.loads((out / "export" / "model.json").read_text())
    assert info["label_names"] == list(LABEL_NAMES) and info["preprocess"]["crop"] == 32
    again = evaluate(out, "test")
    assert again["test/samples"] == 169
    assert again["test/acc"] == pytest.approx(metrics["test/acc"], abs=1e-6)
    assert again["test/loss"] == pytest.approx(metrics["test/loss"], rel=1e-4)
