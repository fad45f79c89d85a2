"""Image-classification folders (torchvision ImageFolder layout): reading and validation, torch-free.

A split folder holds one subfolder per class (``train/ants/*.jpg``, ``train/bees/*.jpg``). Every source
returns an :class:`ImageSplits`: train / val / test lists of ``(path, label_name)`` plus the sorted class
names. Decoding to tensors, resizing and augmentation live in the DataModule; here only Pillow is used
(imported inside functions), so reading and checking data is fast and usable anywhere.

Conventions follow ``torchvision.datasets.ImageFolder`` so class indices agree with it: classes are the
sorted immediate subfolder names, files are found recursively inside a class folder in sorted order, and
only :data:`IMAGE_EXTENSIONS` count (case-insensitive); other files (a ``.gif``, a ``README``) are ignored
and counted. One difference: hidden folders (``.ipynb_checkpoints``, ``.git``) are not classes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sft.errors import ConfigError, DataError

log = logging.getLogger(__name__)

ImageExample = tuple[Any, str]  # (file path, or an HWC uint8 numpy array; label name)
SPLITS = ("train", "val", "test")
# Exactly torchvision.datasets.folder.IMG_EXTENSIONS; matched case-insensitively, as ImageFolder does.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SKIP_SETTING = "data.skip_bad_images"


def is_image_file(name: str | Path) -> bool:
    return str(name).lower().endswith(IMAGE_EXTENSIONS)


@dataclass
class ImageSplits:
    train: list[ImageExample]
    val: list[ImageExample]
    test: list[ImageExample]
    label_names: list[str]
    origin: dict[str, str] = field(default_factory=dict)  # split -> folder, for messages and fingerprints
    skipped: dict[str, list[str]] = field(default_factory=dict)  # split -> unreadable files left out
    ignored: dict[str, list[str]] = field(default_factory=dict)  # split -> non-image files (by extension)

    def split(self, name: str) -> list[ImageExample]:
        return getattr(self, name)

    def validate(self) -> ImageSplits:
        """Non-empty splits, at least two classes, and the same classes in val / test as in train."""
        train_classes = {label for _, label in self.train}
        train_where = self.origin.get("train", "train")
        for name in SPLITS:
            rows = self.split(name)
            where = self.origin.get(name, name)
            if not rows:
                raise DataError(
                    f"The {name} split ({where}) has no images: it needs one subfolder per class holding "
                    f"image files ({', '.join(IMAGE_EXTENSIONS)})."
                )
            if name == "train":
                continue
            classes = {label for _, label in rows}
            missing, extra = sorted(train_classes - classes), sorted(classes - train_classes)
            if missing:
                label = missing[0]
                raise DataError(
                    f"Class {label!r} is in the train split ({train_where}) but not in the {name} split "
                    f"({where}). Classes must match between splits: add {os.path.join(where, label)} with "
                    f"images of that class, or remove {os.path.join(train_where, label)}."
                )
            if extra:
                label = extra[0]
                raise DataError(
                    f"Class {label!r} is in the {name} split ({where}) but not in the train split "
                    f"({train_where}). Classes must match between splits: add {os.path.join(train_where, label)} "
                    f"with training images of that class, or remove {os.path.join(where, label)}."
                )
        if len(self.label_names) < 2:
            raise DataError(
                f"Only one class ({self.label_names}) in the training data ({train_where}): classification "
                "needs at least two class subfolders."
            )
        return self

    def fingerprint(self) -> str:
        """Cheap content hash: labels plus, per image, its relative path, size and mtime (files; no
        decoding) or its pixel bytes (in-memory arrays, e.g. CIFAR-10).

        Changes when an image is added, removed, renamed, relabelled or rewritten; moving the whole data
        folder elsewhere keeps it (paths are hashed relative to the folder common to all files).
        """
        paths = [os.path.abspath(p) for name in SPLITS for p, _ in self.split(name) if isinstance(p, str)]
        root = os.path.commonpath(paths) if paths else ""
        if paths and os.path.isfile(root):  # a single file: hash its name
            root = os.path.dirname(root)
        digest = hashlib.sha256()
        digest.update(json.dumps(self.label_names).encode())
        for name in SPLITS:
            digest.update(f"\x00{name}\x00".encode())
            for item, label in self.split(name):
                if isinstance(item, str):
                    rel = os.path.relpath(os.path.abspath(item), root)
                    st = os.stat(item)
                    digest.update(f"{rel}\x1f{label}\x1f{st.st_size}\x1f{st.st_mtime_ns}\x1e".encode())
                else:  # an in-memory image (numpy array)
                    digest.update(f"{item.shape}\x1f{label}\x1f".encode())
                    digest.update(item.tobytes())
        return digest.hexdigest()[:16]


# --------------------------------------------------------------------------- reading folders


def scan_image_folder(root: str | Path, setting: str = "data.path") -> tuple[list[ImageExample], list[str]]:
    """``(rows, ignored)``: image files per class subfolder, and the non-image files that were ignored."""
    folder = Path(root).expanduser()
    if not folder.is_dir():
        what = "does not exist" if not folder.exists() else "is not a folder (it is a file)"
        raise DataError(
            f"{setting}={str(folder)!r} {what}. Point {setting} at a folder with one subfolder per class "
            "holding the images (ImageFolder layout, e.g. train/ants/*.jpg, train/bees/*.jpg)."
        )
    classes = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise DataError(
            f"{setting}={str(folder)!r} has no class subfolders. Put the images of each class in its own "
            "subfolder (e.g. ants/*.jpg, bees/*.jpg)."
        )
    rows: list[ImageExample] = []
    ignored: list[str] = []
    for label in classes:
        class_dir = folder / label
        found = 0
        for dirpath, _, fnames in sorted(os.walk(class_dir, followlinks=True)):
            for fname in sorted(fnames):
                path = os.path.join(dirpath, fname)
                if is_image_file(fname):
                    rows.append((path, label))
                    found += 1
                else:
                    ignored.append(path)
        if not found:
            raise DataError(
                f"{setting}: class folder {str(class_dir)!r} has no image files ({', '.join(IMAGE_EXTENSIONS)}). "
                "Add images of that class, or remove the folder."
            )
    if ignored:
        log.info("%s: ignored %d non-image file(s) in %s (e.g. %s)", setting, len(ignored), folder, ignored[0])
    return rows, ignored


def read_image_folder(root: str | Path, setting: str = "data.path") -> list[ImageExample]:
    """Sorted ``(path, label)`` rows of an ImageFolder-layout folder; non-image files are ignored and logged."""
    return scan_image_folder(root, setting)[0]


# --------------------------------------------------------------------------- checking images


def image_problem(path: str | Path) -> str | None:
    """Why Pillow cannot fully decode ``path`` (``None`` when it can). Truncated files count as bad."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            if img.format == "JPEG":
                # Decode at reduced scale (DCT scaling, up to 1/8): much faster, still reads every byte
                # of the entropy-coded data, so truncation is still detected.
                img.draft("RGB", (64, 64))
            img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        # UnidentifiedImageError is an OSError; truncation raises OSError ("image file is truncated").
        return f"{type(e).__name__}: {e}"
    return None


def check_images(rows: list[ImageExample], skip_bad: bool = False) -> tuple[list[ImageExample], list[str]]:
    """Open and fully decode each image. Returns ``(good_rows, bad_paths)``.

    With ``skip_bad=False`` the first unreadable file raises a DataError naming it.
    """
    good: list[ImageExample] = []
    bad: list[str] = []
    for path, label in rows:
        problem = image_problem(path)
        if problem is None:
            good.append((path, label))
            continue
        if not skip_bad:
            raise DataError(
                f"{path}: not a readable image ({problem}). Fix or remove the file, or set "
                f"{SKIP_SETTING}=true to skip unreadable images."
            )
        bad.append(path)
    if bad:
        log.warning("Skipped %d unreadable image(s) (%s=true), e.g. %s", len(bad), SKIP_SETTING, bad[0])
    return good, bad


# --------------------------------------------------------------------------- sources


class ImageFolderSource:
    """Image folders in ImageFolder layout.

    Either ``path``, a folder holding ``train/`` and ``val/`` (and optionally ``test/``), or explicit
    ``train`` / ``val`` / ``test`` folders (these override the ones under ``path``). Without a test folder
    the val folder also serves as the test split (as in the hymenoptera tutorial set, which has no test
    split): test metrics are then not independent of checkpoint selection.

    Every image is decoded once at load time; unreadable files are an error, or skipped and counted in
    :attr:`ImageSplits.skipped` with ``skip_bad_images=True``.
    """

    def __init__(
        self,
        path: str | None = None,
        train: str | None = None,
        val: str | None = None,
        test: str | None = None,
        skip_bad_images: bool = False,
    ):
        if path is None and train is None:
            raise ConfigError(
                "data.path is not set: point it at a folder holding train/ and val/ class folders "
                "(or set data.train and data.val)."
            )
        self.path, self.skip_bad_images = path, bool(skip_bad_images)
        self.explicit = {"train": train, "val": val, "test": test}

    def _folders(self) -> tuple[dict[str, Path], dict[str, str]]:
        folders: dict[str, Path] = {}
        settings: dict[str, str] = {}
        base = Path(self.path).expanduser() if self.path is not None else None
        if base is not None and not base.is_dir():
            what = "does not exist" if not base.exists() else "is not a folder (it is a file)"
            raise DataError(
                f"data.path={str(base)!r} {what}. Point it at a folder holding train/ and val/, each with "
                "one subfolder per class."
            )
        for name in SPLITS:
            given = self.explicit[name]
            if given is not None:
                folders[name], settings[name] = Path(given).expanduser(), f"data.{name}"
            elif base is not None and ((base / name).is_dir() or name != "test"):
                if not (base / name).is_dir():
                    raise DataError(
                        f"data.path={str(base)!r} has no {name!r} folder. Add {base / name} with one subfolder "
                        f"per class, or set data.{name} to the {name} image folder."
                    )
                folders[name], settings[name] = base / name, f"data.path ({name}/)"
            elif name == "val":
                raise DataError("data.val is not set: set it to the validation image folder.")
        return folders, settings

    def load(self, seed: int = 0) -> ImageSplits:
        folders, settings = self._folders()
        splits: dict[str, list[ImageExample]] = {}
        origin: dict[str, str] = {}
        skipped: dict[str, list[str]] = {}
        ignored: dict[str, list[str]] = {}
        for name, folder in folders.items():
            rows, ignored[name] = scan_image_folder(folder, settings[name])
            splits[name], skipped[name] = check_images(rows, self.skip_bad_images)
            origin[name] = str(folder)
        if "test" not in splits:  # documented: no test folder -> val doubles as test
            splits["test"], origin["test"] = splits["val"], f"{origin['val']} (val, no test folder)"
            skipped["test"], ignored["test"] = skipped["val"], ignored["val"]
        label_names = sorted({label for _, label in splits["train"]})
        result = ImageSplits(
            splits["train"], splits["val"], splits["test"], label_names=label_names, origin=origin,
            skipped=skipped, ignored=ignored,
        )
        return result.validate()
