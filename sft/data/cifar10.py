"""CIFAR-10 as :class:`~sft.data.image_sources.ImageSplits` of in-memory images (torch-free but for the download).

Three ways in, chosen by ``data.path``:

* a folder holding the official ``cifar-10-batches-py/`` (all six batches): read with torchvision's
  ``CIFAR10``, which checks every file's md5; the official test batch is the test split and ``val_size``
  is carved from train (stratified, seeded);
* an ``.npz`` file (or a folder holding exactly one) with ``data`` (N x 3072 in CIFAR's channel-planar
  layout, or N x 32 x 32 x 3) uint8, ``labels`` (N,) ints and optionally ``label_names``: one pool of
  images, split into train / val / test by ``test_size`` and ``val_size`` (e.g. the 846-image subset of
  the official test batch in ``../shared/data/cifar10``);
* nothing (``data.path=null``): torchvision downloads CIFAR-10 to ``~/.cache/sft/datasets/cifar10``
  (``$SFT_DATA`` overrides the parent folder) when online.

Images stay uint8 HWC arrays; the DataModule turns each into a PIL image before the transforms.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sft.data.image_sources import ImageExample, ImageSplits
from sft.data.sources import stratified_split
from sft.errors import ConfigError, DataError

LABEL_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
BATCH_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
NPZ_HINT = ("an .npz with 'data' (N x 3072 uint8, CIFAR layout, or N x 32 x 32 x 3) and 'labels' (N,) "
            "(optionally 'label_names')")


def default_root() -> Path:
    return Path(os.environ.get("SFT_DATA", Path.home() / ".cache" / "sft" / "datasets")).expanduser() / "cifar10"


def has_official_batches(folder: Path) -> bool:
    return all((folder / "cifar-10-batches-py" / name).is_file() for name in BATCH_FILES)


def read_npz(path: Path) -> tuple[Any, Any, list[str]]:
    """``(images N x 32 x 32 x 3 uint8, labels (N,), label names)`` from a CIFAR-style .npz, checked."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError) as e:
        raise DataError(f"data.path={str(path)!r}: cannot read it as .npz ({e}). Expected {NPZ_HINT}.") from None
    missing = [key for key in ("data", "labels") if key not in arrays]
    if missing:
        raise DataError(f"data.path={str(path)!r} has no {missing} array (it has {sorted(arrays)}). Expected {NPZ_HINT}.")
    data, labels = arrays["data"], arrays["labels"].reshape(-1)
    if data.dtype != np.uint8:
        raise DataError(f"{path}: 'data' has dtype {data.dtype}; expected uint8 pixel values 0..255.")
    if data.ndim == 2 and data.shape[1] == 3072:
        data = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # channel planes -> HWC
    elif not (data.ndim == 4 and data.shape[3] == 3):
        raise DataError(f"{path}: 'data' has shape {data.shape}; expected (N, 3072) or (N, H, W, 3).")
    if len(data) != len(labels):
        raise DataError(f"{path}: {len(data)} images but {len(labels)} labels.")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: 'labels' has dtype {labels.dtype}; expected integer class indices.")
    names = [str(n) for n in arrays["label_names"]] if "label_names" in arrays else list(LABEL_NAMES)
    bad = np.flatnonzero((labels < 0) | (labels >= len(names)))
    if len(bad):
        i = int(bad[0])
        raise DataError(f"{path}: image {i} has label {int(labels[i])}, outside the {len(names)} classes "
                        f"0..{len(names) - 1} ({', '.join(names)}).")
    return np.ascontiguousarray(data), labels, names


def _rows(images: Any, labels: Any, names: list[str]) -> list[ImageExample]:
    return [(image, names[int(label)]) for image, label in zip(images, labels, strict=True)]


class Cifar10Source:
    """CIFAR-10 from the official batches, an .npz, or a download (see the module docstring)."""

    def __init__(self, path: str | None = None, download: bool = True, val_size: float | int = 0.1,
                 test_size: float | int = 0.2, split_seed: int = 0):
        for name, size in (("val_size", val_size), ("test_size", test_size)):
            if not (isinstance(size, (int, float)) and size > 0):
                raise ConfigError(f"data.{name}={size!r}: give a fraction in (0, 1) or a positive count.")
        self.path = None if path is None else Path(path).expanduser()
        self.download, self.val_size, self.test_size, self.split_seed = bool(download), val_size, test_size, split_seed

    def _npz_file(self) -> Path | None:
        if self.path is None:
            return None
        if self.path.is_file():
            return self.path
        found = sorted(self.path.glob("*.npz")) if self.path.is_dir() else []
        if len(found) > 1:
            raise DataError(f"data.path={str(self.path)!r} holds {len(found)} .npz files "
                            f"({', '.join(p.name for p in found)}): point data.path at one of them.")
        return found[0] if found else None

    def load(self) -> ImageSplits:
        if self.path is not None and not self.path.exists():
            raise DataError(f"data.path={str(self.path)!r} does not exist. Give a folder holding "
                            f"cifar-10-batches-py/, or {NPZ_HINT}; or data.path=null to download.")
        root = self.path or default_root()
        if not has_official_batches(root):
            npz = self._npz_file()
            if npz is not None:
                return self._from_npz(npz)
        return self._from_torchvision(root)

    def _from_npz(self, npz: Path) -> ImageSplits:
        images, labels, names = read_npz(npz)
        pool = _rows(images, labels, names)
        rest, test = stratified_split(pool, self.test_size, self.split_seed)
        train, val = stratified_split(rest, self.val_size, self.split_seed)
        origin = {"train": f"{npz} (carved)", "val": f"{npz} (carved, val_size={self.val_size})",
                  "test": f"{npz} (carved, test_size={self.test_size})"}
        return ImageSplits(train, val, test, label_names=names, origin=origin).validate()

    def _from_torchvision(self, root: Path) -> ImageSplits:
        from torchvision.datasets import CIFAR10

        download = self.download and not has_official_batches(root)
        try:
            train_set = CIFAR10(str(root), train=True, download=download)
            test_set = CIFAR10(str(root), train=False, download=False)
        except Exception as e:  # network failure, or files missing / corrupt (md5)
            raise DataError(
                f"CIFAR-10 is not available at {root} ({type(e).__name__}: {str(e).strip() or 'no details'}). "
                f"{'Offline? ' if self.download else ''}Set data.path to a folder holding the official "
                f"cifar-10-batches-py/, or to {NPZ_HINT}, e.g. data.path=../shared/data/cifar10"
                f"{'' if self.download else ', or set data.download=true'}."
            ) from None
        names = list(train_set.classes)
        train, val = stratified_split(_rows(train_set.data, train_set.targets, names), self.val_size, self.split_seed)
        test = _rows(test_set.data, test_set.targets, names)
        batches = root / "cifar-10-batches-py"
        origin = {"train": f"{batches} (data_batch_1..5)", "val": f"{batches} (carved, val_size={self.val_size})",
                  "test": f"{batches}/test_batch"}
        return ImageSplits(train, val, test, label_names=names, origin=origin).validate()
