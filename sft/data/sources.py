"""Where labelled text comes from: the packaged sample, GLUE (local TSVs or the HF hub), local files.

Every source returns a :class:`TextSplits`: train / val / test lists of ``(text, label_name)`` plus the
ordered label names. Sources only read and validate; tokenization and batching live in the DataModule.
No torch import here, so reading and checking data is fast and usable anywhere.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sft.errors import ConfigError, DataError

Example = tuple[str, str]  # (text, label name)
SPLITS = ("train", "val", "test")
SAMPLE_DIR = Path(__file__).resolve().parent / "sample"


@dataclass
class TextSplits:
    train: list[Example]
    val: list[Example]
    test: list[Example]
    label_names: list[str]
    origin: dict[str, str] = field(default_factory=dict)  # split -> file or hub id, for messages

    def split(self, name: str) -> list[Example]:
        return getattr(self, name)

    def validate(self) -> TextSplits:
        """Non-empty splits, and every val/test label known from train."""
        known = set(self.label_names)
        for name in SPLITS:
            rows = self.split(name)
            where = self.origin.get(name, name)
            if not rows:
                raise DataError(f"The {name} split ({where}) is empty: it needs at least one labelled row.")
            unknown = sorted({label for _, label in rows} - known)
            if unknown:
                raise DataError(
                    f"The {name} split ({where}) has labels {unknown} that the training data does not have "
                    f"(training labels: {self.label_names}). Labels must match between splits: fix the file, "
                    f"or list every class in `data.label_names`."
                )
        if len(self.label_names) < 2:
            raise DataError(
                f"Only one class ({self.label_names}) in the training data ({self.origin.get('train', 'train')}): "
                "classification needs at least two."
            )
        return self

    def fingerprint(self) -> str:
        """Content hash of all splits and label names (changes when any text or label changes)."""
        digest = hashlib.sha256()
        digest.update(json.dumps(self.label_names).encode())
        for name in SPLITS:
            digest.update(f"\x00{name}\x00".encode())
            for text, label in self.split(name):
                digest.update(text.encode())
                digest.update(b"\x1f")
                digest.update(label.encode())
                digest.update(b"\x1e")
        return digest.hexdigest()[:16]


# --------------------------------------------------------------------------- splitting and subsets


def _by_label(rows: Sequence[Example]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for i, (_, label) in enumerate(rows):
        groups[label].append(i)
    return groups


def stratified_split(rows: list[Example], size: float | int, seed: int) -> tuple[list[Example], list[Example]]:
    """Split off ``size`` rows (a count, or a fraction in (0, 1)) keeping label proportions; seeded."""
    n = len(rows)
    count = round(size * n) if isinstance(size, float) and 0 < size < 1 else int(size)
    if not 0 < count < n:
        raise ConfigError(
            f"Cannot carve {size!r} rows out of {n}: use a fraction in (0, 1) or a count between 1 and {n - 1}."
        )
    rng = random.Random(seed)
    carved: list[int] = []
    groups = _by_label(rows)
    # Largest-remainder allocation so the carved part has exactly `count` rows.
    quotas = {label: count * len(idx) / n for label, idx in groups.items()}
    alloc = {label: int(q) for label, q in quotas.items()}
    for label in sorted(quotas, key=lambda k: quotas[k] - alloc[k], reverse=True)[: count - sum(alloc.values())]:
        alloc[label] += 1
    for label in sorted(groups):
        idx = groups[label][:]
        rng.shuffle(idx)
        carved.extend(idx[: alloc[label]])
    chosen = set(carved)
    return [r for i, r in enumerate(rows) if i not in chosen], [rows[i] for i in sorted(carved)]


def subsample(rows: list[Example], train_size: float | int | None, shots_per_class: int | None, seed: int) -> list[Example]:
    """Seeded, stratified training subsets for learning curves (``train_size``) and few-shot runs."""
    if shots_per_class is not None:
        if int(shots_per_class) < 1:
            raise ConfigError(f"data.shots_per_class={shots_per_class} must be a positive integer.")
        rng = random.Random(seed)
        keep: list[int] = []
        for label, idx in sorted(_by_label(rows).items()):
            if len(idx) < shots_per_class:
                raise ConfigError(
                    f"data.shots_per_class={shots_per_class} but class {label!r} has only {len(idx)} training rows."
                )
            idx = idx[:]
            rng.shuffle(idx)
            keep.extend(idx[:shots_per_class])
        rows = [rows[i] for i in sorted(keep)]
    if train_size is not None:
        if isinstance(train_size, float) and train_size == 1.0:
            return rows
        bad_fraction = isinstance(train_size, float) and train_size > 1
        if bad_fraction or train_size <= 0 or (isinstance(train_size, int) and train_size > len(rows)):
            raise ConfigError(
                f"data.train_size={train_size} must be a fraction in (0, 1] or a count in 1..{len(rows)} "
                f"(the training split has {len(rows)} rows)."
            )
        if not (isinstance(train_size, int) and train_size == len(rows)):
            _, rows = stratified_split(rows, train_size, seed)
    return rows


def discover_labels(rows: Sequence[Example]) -> list[str]:
    """Sorted label names; numerically when every label is an integer ("2" after "10" would be wrong)."""
    names = set(label for _, label in rows)
    if all(n.lstrip("-").isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)


# --------------------------------------------------------------------------- file readers


def _require_file(path: str | Path, setting: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        hint = " (it is a folder)" if p.is_dir() else ""
        raise DataError(f"{setting}: file {str(p)!r} does not exist{hint}. Set {setting} to an existing file.")
    return p


def text_encoding(encoding: str, setting: str = "data.encoding") -> str:
    """The codec to open text files with; UTF-8 tolerates a BOM (Excel's "CSV UTF-8")."""
    try:
        name = codecs.lookup(encoding).name
    except (LookupError, TypeError):
        raise ConfigError(
            f"{setting}={encoding!r} is not a text encoding Python knows: use e.g. utf-8, latin-1 or cp1252."
        ) from None
    return "utf-8-sig" if name == "utf-8" else name


def undecodable(p: Path, encoding: str, error: UnicodeError, setting: str = "data.encoding") -> DataError:
    """The error for a file that is not ``encoding``: the line (and byte offset) of the first bad byte."""
    name = "UTF-8" if encoding in ("utf-8", "utf-8-sig") else encoding
    fix = f"Re-save the file as UTF-8, or set {setting} to the encoding it was saved in (e.g. {setting}=latin-1)."
    data = p.read_bytes()
    try:
        data.decode(encoding)
    except UnicodeDecodeError as e:  # e.object: the bytes after a BOM the codec skipped
        start, bad = len(data) - len(e.object) + e.start, e.object[e.start : e.end]
    except UnicodeError:
        start = None
    else:
        start = None
    if start is None:  # no byte to point at (e.g. UTF-16 without a BOM): say what reading the file said
        return DataError(f"{p}: not valid {name} text ({error}). {fix}")
    # Lines count newline bytes: exact for encodings that write "\n" as that byte (UTF-8, latin-1, cp1252...);
    # for others (UTF-16) the byte offset alone.
    line = data.count(b"\n", 0, start) + 1
    where = f"{p}:{line}" if "a\n".encode(encoding).endswith(b"a\n") else str(p)
    return DataError(f"{where}: byte {bad!r} at offset {start} is not valid {name} text. {fix}")


def read_table(path: str | Path, text_column: str, label_column: str, setting: str = "data",
               allowed_labels: Sequence[str] | None = None, encoding: str = "utf-8") -> list[Example]:
    """Read a CSV, TSV or JSONL file of labelled texts; errors name the file and the line."""
    codec = text_encoding(encoding)
    p = _require_file(path, setting)
    suffix = p.suffix.lower()
    try:
        if suffix in (".jsonl", ".json", ".ndjson"):
            rows = _read_jsonl(p, text_column, label_column, allowed_labels, codec)
        elif suffix in (".tsv", ".csv"):
            delimiter = "\t" if suffix == ".tsv" else ","
            rows = _read_delimited(p, text_column, label_column, delimiter, allowed_labels, codec)
        else:
            raise DataError(f"{setting}: {str(p)!r} has suffix {suffix!r}; supported are .csv, .tsv and .jsonl.")
    except UnicodeError as e:  # UnicodeDecodeError, or a codec's own check (UTF-16 without a BOM)
        raise undecodable(p, codec, e) from None
    if not rows:
        what = ("the file is empty" if p.stat().st_size == 0
                else "only blank lines" if suffix not in (".tsv", ".csv") else "only the header row")
        raise DataError(
            f"{p}: no data rows ({what}); {setting} needs labelled rows. Add them, or set {setting} to the file "
            "that holds them."
        )
    return rows


def _check_row(p: Path, line: int, text: object, label: object, text_column: str, label_column: str,
               allowed_labels: Sequence[str] | None = None) -> Example:
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{p}:{line}: empty or missing text in column {text_column!r}. Fix or remove the row.")
    if label is None or (isinstance(label, str) and not label.strip()):
        raise DataError(f"{p}:{line}: empty or missing label in column {label_column!r}. Fix or remove the row.")
    if isinstance(label, float) and label.is_integer():
        label = int(label)
    label = str(label).strip()
    if allowed_labels is not None and label not in allowed_labels:
        raise DataError(f"{p}:{line}: label {label!r} is not one of {list(allowed_labels)}. Fix the row.")
    return text.strip(), label


def _read_jsonl(p: Path, text_column: str, label_column: str, allowed_labels: Sequence[str] | None,
                encoding: str) -> list[Example]:
    rows = []
    with p.open(encoding=encoding) as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{p}:{line_no}: not valid JSON ({e.msg}). Each line must be one JSON object.") from None
            if not isinstance(obj, dict):
                raise DataError(f"{p}:{line_no}: expected a JSON object, found {type(obj).__name__}.")
            for col in (text_column, label_column):
                if col not in obj:
                    raise DataError(
                        f"{p}:{line_no}: no key {col!r} (keys: {sorted(obj)}). Set data.text_column / "
                        "label_column to the right keys."
                    )
            rows.append(_check_row(p, line_no, obj[text_column], obj[label_column], text_column, label_column,
                                   allowed_labels))
    return rows


def _read_delimited(p: Path, text_column: str, label_column: str, delimiter: str,
                    allowed_labels: Sequence[str] | None, encoding: str) -> list[Example]:
    rows = []
    # TSV files (GLUE included) are not CSV-quoted: quotes are part of the text.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    with p.open(encoding=encoding, newline="") as f:
        reader = csv.reader(f, delimiter=delimiter, quoting=quoting)
        try:
            header = next(reader)
        except StopIteration:
            return []  # an empty file: no data rows
        header = [h.strip() for h in header]
        for col in (text_column, label_column):
            if col not in header:
                raise DataError(
                    f"{p}:1: header has no column {col!r} (columns: {header}). Set data.text_column / "
                    "label_column, or add the header row."
                )
        ti, li = header.index(text_column), header.index(label_column)
        for row in reader:
            line_no = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != len(header):
                raise DataError(
                    f"{p}:{line_no}: expected {len(header)} fields ({', '.join(header)}), found {len(row)}. "
                    "Fix the row (a stray separator or a missing field?)."
                )
            rows.append(_check_row(p, line_no, row[ti], row[li], text_column, label_column, allowed_labels))
    return rows


# --------------------------------------------------------------------------- sources


class PackagedSample:
    """The small sentiment set shipped inside sft (sft/data/sample/*.jsonl)."""

    def load(self, seed: int = 0) -> TextSplits:
        splits = {s: read_table(SAMPLE_DIR / f"{s}.jsonl", "text", "label") for s in SPLITS}
        origin = {s: str(SAMPLE_DIR / f"{s}.jsonl") for s in SPLITS}
        return TextSplits(**splits, label_names=discover_labels(splits["train"]), origin=origin).validate()


GLUE_SINGLE_SENTENCE = {"sst2": ("sentence", ["negative", "positive"]), "cola": ("sentence", ["unacceptable", "acceptable"])}


class Glue:
    """A single-sentence GLUE task. ``path``: a local GLUE folder (train.tsv, dev.tsv); else the HF hub.

    GLUE's test labels are hidden, so dev becomes the test split and ``val_size`` rows are carved from
    train (stratified, fixed seed) for validation and checkpoint selection.
    """

    def __init__(self, task: str = "sst2", path: str | None = None, val_size: float | int = 872, split_seed: int = 0,
                 encoding: str = "utf-8"):
        if task not in GLUE_SINGLE_SENTENCE:
            raise ConfigError(
                f"data.task={task!r} is not supported; choose one of {sorted(GLUE_SINGLE_SENTENCE)} "
                "(sentence-pair tasks: use data=text_file)."
            )
        self.task, self.path, self.val_size, self.split_seed = task, path, val_size, split_seed
        self.encoding = encoding

    def load(self, seed: int = 0) -> TextSplits:
        column, names = GLUE_SINGLE_SENTENCE[self.task]
        if self.path is None:
            train, dev, origin = self._from_hub(names)
        else:
            folder = Path(self.path).expanduser()
            if not folder.is_dir():
                raise DataError(
                    f"data.path={str(folder)!r} is not a folder. Point it at a GLUE {self.task} folder "
                    "holding train.tsv and dev.tsv (or leave it null to download from the HF hub)."
                )
            files = {s: _require_file(folder / f"{s}.tsv", f"data.path ({s}.tsv)") for s in ("train", "dev")}
            ids = [str(i) for i in range(len(names))]
            train, dev = ([(text, names[int(label)]) for text, label in
                           read_table(files[s], column, "label", f"data.path ({s}.tsv)", allowed_labels=ids,
                                      encoding=self.encoding)]
                          for s in ("train", "dev"))
            origin = {"train": str(files["train"]), "val": f"{files['train']} (carved)", "test": str(files["dev"])}
        # Fixed split seed (not the run seed): every run validates on the same rows.
        train, val = stratified_split(train, self.val_size, self.split_seed)
        return TextSplits(train, val, dev, label_names=list(names), origin=origin).validate()

    def _from_hub(self, names: list[str]) -> tuple[list[Example], list[Example], dict[str, str]]:
        try:
            import datasets
        except ImportError:
            raise ConfigError("Reading GLUE from the HF hub needs `pip install datasets` (or set data.path).") from None
        try:
            ds = datasets.load_dataset("nyu-mll/glue", self.task)
        except Exception as e:  # network, auth or cache problems: say what to do instead
            raise DataError(
                f"Could not load GLUE {self.task} from the HF hub ({type(e).__name__}: {e}). Offline? Set "
                "data.path to a local GLUE folder with train.tsv and dev.tsv."
            ) from None
        column = GLUE_SINGLE_SENTENCE[self.task][0]

        def rows(split: str) -> list[Example]:
            return [(r[column].strip(), names[int(r["label"])]) for r in ds[split]]

        hub = f"hf://nyu-mll/glue/{self.task}"
        return rows("train"), rows("validation"), {"train": hub, "val": f"{hub} (carved)", "test": f"{hub}:validation"}


class TextFiles:
    """Local CSV / TSV / JSONL files with configurable text and label columns.

    Label names are discovered from train (or fixed by ``label_names``). Missing val / test files are
    carved from train, stratified and seeded.
    """

    def __init__(
        self,
        train: str,
        val: str | None = None,
        test: str | None = None,
        text_column: str = "text",
        label_column: str = "label",
        label_names: Sequence[str] | None = None,
        val_size: float | int = 0.1,
        test_size: float | int = 0.1,
        split_seed: int = 0,
        encoding: str = "utf-8",
    ):
        self.files = {"train": train, "val": val, "test": test}
        self.text_column, self.label_column = text_column, label_column
        self.label_names = [str(n) for n in label_names] if label_names else None
        self.sizes = {"val": val_size, "test": test_size}
        self.split_seed = split_seed
        self.encoding = encoding

    def load(self, seed: int = 0) -> TextSplits:
        splits: dict[str, list[Example]] = {}
        origin: dict[str, str] = {}
        for name, path in self.files.items():
            if path is not None:
                splits[name] = read_table(path, self.text_column, self.label_column, setting=f"data.{name}",
                                          encoding=self.encoding)
                origin[name] = str(path)
        train = splits["train"]
        total = len(train)
        for name in ("test", "val"):
            if name not in splits:
                size = self.sizes[name]
                # A fraction means a fraction of the whole file, also for the second split carved.
                count = round(size * total) if isinstance(size, float) and 0 < size < 1 else size
                train, splits[name] = stratified_split(train, count, self.split_seed)
                origin[name] = f"{self.files['train']} (carved, {name}_size={self.sizes[name]})"
        names = self.label_names or discover_labels(train)
        extra = sorted({label for _, label in train} - set(names))
        if extra:
            raise DataError(f"{self.files['train']}: labels {extra} are not in data.label_names={names}.")
        return TextSplits(train, splits["val"], splits["test"], label_names=names, origin=origin).validate()
