"""GoEmotions ("simplified"): Reddit comments with one or more of 27 emotions or neutral (multi-label).

Local files (google-research ``goemotions/data/``): ``train.tsv``, ``dev.tsv`` (no header; columns: the text,
the comma-separated label ids, the comment id) and ``emotions.txt`` (the 28 names, one per line; a label id is
the 0-based line of its name). Unlike GLUE's TSVs, texts containing ``"`` are CSV-quoted (wrapped in quotes,
inner quotes doubled), so the files are read with CSV quoting. Else the HF hub
(``google-research-datasets/go_emotions``, config ``simplified``).

As for GLUE, dev is the test split and ``val_size`` rows are carved from train (seeded random, fixed seed).
Targets are tuples of emotion names in ``emotions.txt`` order. No torch import here.
"""

from __future__ import annotations

import csv
from pathlib import Path

from sft.data.sources import (
    Example,
    TextSplits,
    _require_file,
    carve_val,
    hub_dataset,
    text_encoding,
    undecodable,
)
from sft.errors import DataError

HUB_ID = "google-research-datasets/go_emotions"
FIELDS = ("text", "label ids", "comment id")


def read_emotion_names(path: str | Path, encoding: str = "utf-8", setting: str = "data.path (emotions.txt)"
                       ) -> list[str]:
    """The label names of ``emotions.txt``, one per line (a final newline is optional)."""
    codec = text_encoding(encoding)
    p = _require_file(path, setting)
    try:
        lines = p.read_text(encoding=codec).splitlines()
    except UnicodeError as e:
        raise undecodable(p, codec, e) from None
    while lines and not lines[-1].strip():
        lines.pop()
    names: list[str] = []
    for line_no, line in enumerate(lines, start=1):
        name = line.strip()
        if not name:
            raise DataError(
                f"{p}:{line_no}: blank line. Label ids are line numbers here, so a blank line shifts every later "
                "emotion: remove it."
            )
        if name in names:
            raise DataError(f"{p}:{line_no}: {name!r} is listed twice (first on line {names.index(name) + 1}).")
        names.append(name)
    if len(names) < 2:
        raise DataError(f"{p}: {len(names)} label name(s); a multi-label task needs at least two, one per line.")
    return names


def read_goemotions(path: str | Path, names: list[str], encoding: str = "utf-8", setting: str = "data.path",
                    names_file: str | Path = "emotions.txt") -> list[Example]:
    """Rows of a GoEmotions TSV as ``(text, emotion names)``; errors name the file and the line."""
    codec = text_encoding(encoding)
    p = _require_file(path, setting)
    rows: list[Example] = []
    try:
        with p.open(encoding=codec, newline="") as f:
            reader = csv.reader(f, delimiter="\t")  # CSV quoting: quoted texts lose their quotes
            line_no = 1
            for row in reader:
                start, line_no = line_no, reader.line_num + 1  # a quoted text may span lines: report its first
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                if len(row) != len(FIELDS):
                    raise DataError(
                        f"{p}:{start}: expected {len(FIELDS)} tab-separated fields ({', '.join(FIELDS)}), found "
                        f"{len(row)}. Fix the row (a stray tab, or an unbalanced quote?)."
                    )
                text, ids = row[0].strip(), row[1].strip()
                if not text:
                    raise DataError(f"{p}:{start}: empty text. Fix or remove the row.")
                labels: set[int] = set()
                for part in ids.split(","):
                    part = part.strip()
                    if not (part.isascii() and part.isdigit()) or int(part) >= len(names):
                        raise DataError(
                            f"{p}:{start}: label id {part!r} (in {ids!r}) is not an id in 0..{len(names) - 1}: "
                            f"{names_file} lists {len(names)} names. Fix the row, or use the {Path(names_file).name} "
                            "that belongs to this data."
                        )
                    labels.add(int(part))
                rows.append((text, tuple(names[i] for i in sorted(labels))))
    except UnicodeError as e:
        raise undecodable(p, codec, e) from None
    if not rows:
        raise DataError(f"{p}: no data rows; {setting} needs labelled comments.")
    return rows


class GoEmotions:
    """GoEmotions, simplified: local folder ``path`` (train.tsv, dev.tsv, emotions.txt) or the HF hub."""

    def __init__(self, path: str | None = None, val_size: float | int = 0.1, split_seed: int = 0,
                 encoding: str = "utf-8"):
        self.path, self.val_size, self.split_seed, self.encoding = path, val_size, split_seed, encoding

    def load(self, seed: int = 0) -> TextSplits:
        names, train, test, origin = self._from_hub() if self.path is None else self._from_folder()
        train, val = carve_val(train, self.val_size, self.split_seed, "multi_label")
        return TextSplits(train, val, test, label_names=names, origin=origin, task="multi_label").validate()

    def _from_folder(self) -> tuple[list[str], list[Example], list[Example], dict[str, str]]:
        folder = Path(self.path).expanduser()
        if not folder.is_dir():
            raise DataError(
                f"data.path={str(folder)!r} is not a folder. Point it at the GoEmotions data folder holding "
                "train.tsv, dev.tsv and emotions.txt (or leave it null to download from the HF hub)."
            )
        names_file = folder / "emotions.txt"
        names = read_emotion_names(names_file, self.encoding)
        files = {s: folder / f"{s}.tsv" for s in ("train", "dev")}
        train, test = (read_goemotions(files[s], names, self.encoding, f"data.path ({s}.tsv)", names_file)
                       for s in ("train", "dev"))
        origin = {"train": str(files["train"]), "val": f"{files['train']} (carved, val_size={self.val_size})",
                  "test": str(files["dev"])}
        return names, train, test, origin

    def _from_hub(self) -> tuple[list[str], list[Example], list[Example], dict[str, str]]:
        ds = hub_dataset(HUB_ID, "simplified", "GoEmotions",
                         "Set data.path to a folder with GoEmotions' train.tsv, dev.tsv and emotions.txt.")
        names = list(ds["train"].features["labels"].feature.names)

        def rows(split: str) -> list[Example]:
            return [(r["text"].strip(), tuple(names[i] for i in sorted(set(r["labels"])))) for r in ds[split]]

        hub = f"hf://{HUB_ID}/simplified"
        origin = {"train": hub, "val": f"{hub} (carved, val_size={self.val_size})", "test": f"{hub}:validation"}
        return names, rows("train"), rows("validation"), origin
