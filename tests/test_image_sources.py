"""Image-folder reading and validation on real files written with Pillow (no mocks), plus hymenoptera."""

from __future__ import annotations

import io
import os
import time
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from sft.data.image_sources import (
    IMAGE_EXTENSIONS,
    ImageFolderSource,
    check_images,
    image_problem,
    read_image_folder,
    scan_image_folder,
)
from sft.errors import ConfigError, DataError

HYMENOPTERA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hymenoptera"

COLOURS = {"ants": (200, 30, 30), "bees": (30, 30, 200), "wasps": (30, 200, 30)}


def write_image(path: Path, colour=(128, 128, 128), mode: str = "RGB", size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "L":
        colour = colour[0]
    elif mode == "RGBA":
        colour = (*colour, 100)
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    Image.new(mode, (size, size), colour).save(path, format=fmt)
    return path


def make_split(root: Path, counts: dict[str, int], ext: str = ".png") -> Path:
    for label, n in counts.items():
        for i in range(n):
            write_image(root / label / f"img {i}{ext}", COLOURS.get(label, (9, 9, 9)))
    return root


def truncated_jpeg(path: Path) -> Path:
    """A valid, noisy JPEG cut in half: the header parses, the entropy-coded data ends early."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.effect_noise((256, 256), 64).convert("RGB").save(buf, format="JPEG", quality=95)
    data = buf.getvalue()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    make_split(tmp_path / "train", {"bees": 3, "ants": 2})
    make_split(tmp_path / "val", {"ants": 1, "bees": 2})
    return tmp_path


# --------------------------------------------------------------------------- reading


def test_happy_path_classes_counts_and_order(dataset: Path) -> None:
    (dataset / "train" / "ants" / "notes.txt").write_text("not an image")
    rows, ignored = scan_image_folder(dataset / "train")
    assert [(Path(p).relative_to(dataset / "train").as_posix(), label) for p, label in rows] == [
        ("ants/img 0.png", "ants"), ("ants/img 1.png", "ants"),
        ("bees/img 0.png", "bees"), ("bees/img 1.png", "bees"), ("bees/img 2.png", "bees"),
    ]
    assert ignored == [str(dataset / "train" / "ants" / "notes.txt")]
    assert read_image_folder(dataset / "train") == rows  # deterministic

    splits = ImageFolderSource(path=str(dataset)).load()
    assert splits.label_names == ["ants", "bees"]
    assert Counter(label for _, label in splits.train) == {"ants": 2, "bees": 3}
    assert Counter(label for _, label in splits.val) == {"ants": 1, "bees": 2}
    assert splits.test == splits.val  # no test/ folder: val doubles as test
    assert splits.skipped == {"train": [], "val": [], "test": []}
    assert splits.origin["train"] == str(dataset / "train")


def test_explicit_folders_and_test_folder(dataset: Path) -> None:
    make_split(dataset / "held_out", {"ants": 4, "bees": 1})
    splits = ImageFolderSource(train=str(dataset / "train"), val=str(dataset / "val"),
                               test=str(dataset / "held_out")).load()
    assert Counter(label for _, label in splits.test) == {"ants": 4, "bees": 1}
    make_split(dataset / "test", {"ants": 1, "bees": 1})
    assert len(ImageFolderSource(path=str(dataset)).load().test) == 2  # path/test is picked up


def test_extensions_case_insensitive_and_nested(tmp_path: Path) -> None:
    assert IMAGE_EXTENSIONS == (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
    write_image(tmp_path / "ants" / "A.JPG")
    write_image(tmp_path / "ants" / "sub" / "b.jpeg")
    write_image(tmp_path / "bees" / "c.Png")
    write_image(tmp_path / "bees" / "d.gif")  # PNG bytes, but .gif is not an ImageFolder extension
    rows, ignored = scan_image_folder(tmp_path)
    assert [Path(p).name for p, _ in rows] == ["A.JPG", "b.jpeg", "c.Png"]
    assert [Path(p).name for p in ignored] == ["d.gif"]


def test_grayscale_and_rgba_are_accepted(tmp_path: Path) -> None:
    write_image(tmp_path / "train" / "ants" / "gray.png", mode="L")
    write_image(tmp_path / "train" / "ants" / "gray.jpg", mode="L")
    write_image(tmp_path / "train" / "bees" / "alpha.png", mode="RGBA")
    make_split(tmp_path / "val", {"ants": 1, "bees": 1})
    splits = ImageFolderSource(path=str(tmp_path)).load()
    assert len(splits.train) == 3 and splits.skipped["train"] == []
    assert {Image.open(p).mode for p, _ in splits.train} == {"L", "RGBA"}


# --------------------------------------------------------------------------- folder errors


def test_empty_class_folder_is_named(dataset: Path) -> None:
    (dataset / "train" / "wasps").mkdir()
    (dataset / "train" / "wasps" / "readme.md").write_text("todo")
    with pytest.raises(DataError, match=r"wasps.*has no image files"):
        ImageFolderSource(path=str(dataset)).load()


def test_class_missing_in_val(dataset: Path) -> None:
    make_split(dataset / "train", {"wasps": 1})
    with pytest.raises(DataError) as err:
        ImageFolderSource(path=str(dataset)).load()
    msg = str(err.value)
    assert "'wasps'" in msg and "not in the val split" in msg
    assert str(dataset / "train") in msg and str(dataset / "val") in msg


def test_class_missing_in_train(dataset: Path) -> None:
    make_split(dataset / "val", {"wasps": 1})
    with pytest.raises(DataError) as err:
        ImageFolderSource(path=str(dataset)).load()
    msg = str(err.value)
    assert "'wasps'" in msg and "not in the train split" in msg
    assert str(dataset / "val" / "wasps") in msg


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_root_not_a_folder(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "nowhere"
    if kind == "file":
        target.write_text("x")
    with pytest.raises(DataError, match="data.path=.*nowhere"):
        read_image_folder(target)
    with pytest.raises(DataError, match="data.path=.*nowhere"):
        ImageFolderSource(path=str(target)).load()


def test_missing_val_folder_and_no_path(dataset: Path) -> None:
    (dataset / "val").rename(dataset / "validation")
    with pytest.raises(DataError, match="no 'val' folder"):
        ImageFolderSource(path=str(dataset)).load()
    with pytest.raises(ConfigError, match="data.path"):
        ImageFolderSource()


# --------------------------------------------------------------------------- bad images


def test_draft_decoding_still_detects_truncation(tmp_path: Path) -> None:
    bad = truncated_jpeg(tmp_path / "cut.jpg")
    assert image_problem(bad) is not None and "truncated" in image_problem(bad)
    # The same picture in full decodes fine.
    good = tmp_path / "full.jpg"
    Image.effect_noise((256, 256), 64).convert("RGB").save(good, format="JPEG", quality=95)
    assert image_problem(good) is None


@pytest.mark.parametrize("bad_kind", ["truncated", "not_an_image"])
def test_bad_image_error_then_skip(dataset: Path, bad_kind: str) -> None:
    bad = dataset / "train" / "bees" / "broken (1).jpg"
    if bad_kind == "truncated":
        truncated_jpeg(bad)
    else:
        bad.write_text("this is a text file with a .jpg suffix")

    with pytest.raises(DataError) as err:
        ImageFolderSource(path=str(dataset)).load()
    assert str(bad) in str(err.value) and "data.skip_bad_images=true" in str(err.value)

    splits = ImageFolderSource(path=str(dataset), skip_bad_images=True).load()
    assert splits.skipped["train"] == [str(bad)]
    assert len(splits.train) == 5 and all(p != str(bad) for p, _ in splits.train)


def test_check_images_returns_good_and_bad(tmp_path: Path) -> None:
    good = write_image(tmp_path / "a" / "ok.jpg")
    bad = tmp_path / "a" / "zero.png"
    bad.write_bytes(b"")
    rows = [(str(good), "a"), (str(bad), "a")]
    assert check_images(rows, skip_bad=True) == ([(str(good), "a")], [str(bad)])
    with pytest.raises(DataError, match="zero.png"):
        check_images(rows, skip_bad=False)


# --------------------------------------------------------------------------- fingerprint


def test_fingerprint_changes_when_a_file_changes(dataset: Path) -> None:
    first = ImageFolderSource(path=str(dataset)).load().fingerprint()
    assert ImageFolderSource(path=str(dataset)).load().fingerprint() == first
    target = dataset / "train" / "ants" / "img 0.png"
    write_image(target, (1, 2, 3), size=16)  # new content, new size
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    second = ImageFolderSource(path=str(dataset)).load().fingerprint()
    assert second != first
    target.rename(dataset / "train" / "ants" / "renamed.png")
    assert ImageFolderSource(path=str(dataset)).load().fingerprint() not in (first, second)


# --------------------------------------------------------------------------- real data


@pytest.mark.skipif(not HYMENOPTERA.is_dir(), reason=f"hymenoptera data not found at {HYMENOPTERA}")
def test_hymenoptera() -> None:
    start = time.perf_counter()
    splits = ImageFolderSource(path=str(HYMENOPTERA)).load()
    elapsed = time.perf_counter() - start
    assert splits.label_names == ["ants", "bees"]
    assert len(splits.train) == 244 and Counter(label for _, label in splits.train) == {"ants": 123, "bees": 121}
    assert len(splits.val) == 153 and Counter(label for _, label in splits.val) == {"ants": 70, "bees": 83}
    assert splits.skipped["train"] == [] and splits.skipped["val"] == []
    assert [Path(p).name for p in splits.ignored["train"]] == ["imageNotFound.gif"]
    names = {Path(p).name for p, _ in splits.train + splits.val}
    assert {"ant photos.jpg", "formica.jpeg", "F.pergan.28(f).jpg"} <= names
    assert elapsed < 15, f"loading and checking 397 images took {elapsed:.1f}s"
