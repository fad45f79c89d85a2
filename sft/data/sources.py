"""Where labelled text comes from: the packaged sample, GLUE (local TSVs or the HF hub), local files.

Every source returns a :class:`TextSplits`: train / val / test lists of ``(input, target)`` examples plus
the ordered label names and the task type (:data:`TASK_TYPES`):

- ``input``: a text, a ``(text_a, text_b)`` pair, or (token classification) a tuple of words;
- ``target``: a label name (``single_label``), a float (``regression``), a tuple of label names in
  ``label_names`` order (``multi_label``), or a tuple of IOB2 tags, one per word (``token``).

Sources only read and validate; tokenization and batching live in the DataModule. No torch import here,
so reading and checking data is fast and usable anywhere. CoNLL token files: :mod:`sft.data.conll`;
GoEmotions: :mod:`sft.data.goemotions`.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
import math
import random
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sft.errors import ConfigError, DataError
from sft.tasks import TASK_TYPES

Example = tuple[Any, Any]  # (input, target): see the module docstring
SPLITS = ("train", "val", "test")
SAMPLE_DIR = Path(__file__).resolve().parent / "sample"


def check_task(task: str, setting: str = "data.task") -> str:
    if task not in TASK_TYPES:
        raise ConfigError(f"{setting}={task!r} is not a task type; choose one of {list(TASK_TYPES)}.")
    return task


@dataclass
class TextSplits:
    train: list[Example]
    val: list[Example]
    test: list[Example]
    label_names: list[str]
    origin: dict[str, str] = field(default_factory=dict)  # split -> file or hub id, for messages
    task: str = "single_label"  # one of TASK_TYPES
    positive_label: str | None = None  # binary tasks whose F1 is the positive class's (GLUE MRPC, QQP)
    extra_test: dict[str, list[Example]] = field(default_factory=dict)  # more labelled evaluation splits

    @property
    def split_names(self) -> list[str]:
        """train, val, test, then the ``extra_test`` names (sorted)."""
        return [*SPLITS, *sorted(self.extra_test)]

    def split(self, name: str) -> list[Example]:
        if name in SPLITS:
            return getattr(self, name)
        if name in self.extra_test:
            return self.extra_test[name]
        raise ConfigError(f"There is no {name!r} split in this data; its splits are {self.split_names}.")

    @property
    def pair(self) -> bool:
        """The inputs are ``(text_a, text_b)`` pairs (judged by the first training row)."""
        return self.task != "token" and bool(self.train) and isinstance(self.train[0][0], tuple)

    def validate(self) -> TextSplits:
        """Non-empty splits, well-formed inputs, and targets that fit the task: every val/test label known
        from train (classification), finite numbers (regression), IOB2 tags one per word (token)."""
        check_task(self.task, "task")
        pair = self.pair
        for name in self.split_names:
            rows = self.split(name)
            where = self.origin.get(name, name)
            if not rows:
                raise DataError(f"The {name} split ({where}) is empty: it needs at least one labelled row.")
            if self.task == "token":
                self._check_token_rows(name, where, rows)
                continue
            _check_inputs(name, where, rows, pair)
            if self.task == "regression":
                _check_numbers(name, where, rows)
                continue
            if self.task == "multi_label":
                _check_label_sets(name, where, rows)
                found = {label for _, labels in rows for label in labels}
            else:
                found = {label for _, label in rows}
            unknown = sorted(found - set(self.label_names), key=str)
            if unknown:
                raise DataError(
                    f"The {name} split ({where}) has labels {unknown} that the training data does not have "
                    f"(training labels: {self.label_names}). Labels must match between splits: fix the file, "
                    f"or list every class in `data.label_names`."
                )
        if self.task in ("single_label", "multi_label") and len(self.label_names) < 2:
            raise DataError(
                f"Only one class ({self.label_names}) in the training data ({self.origin.get('train', 'train')}): "
                "classification needs at least two."
            )
        if self.task == "regression" and len(self.label_names) != 1:
            raise DataError(
                f"Regression predicts one number, so label_names must hold one name (the label column); got "
                f"{self.label_names} for {self.origin.get('train', 'train')}."
            )
        if self.positive_label is not None and (self.task != "single_label" or self.positive_label not in
                                                self.label_names):
            raise DataError(
                f"positive_label={self.positive_label!r} must be one of the label names {self.label_names} of a "
                f"single-label task (this task is {self.task!r})."
            )
        return self

    def _check_token_rows(self, name: str, where: str, rows: list[Example]) -> None:
        bad_names = [t for t in self.label_names if parse_tag(t) is None]
        if "O" not in self.label_names or bad_names:
            raise DataError(
                f"Token tag names {self.label_names} must hold 'O' and B-TYPE / I-TYPE tags only"
                f"{f' (not {bad_names})' if bad_names else ''}; build them with sft.data.sources.tag_names."
            )
        known = set(self.label_names)
        unknown: set[str] = set()
        for i, row in enumerate(rows, start=1):
            words, tags = row
            if not isinstance(words, tuple) or not words or not all(isinstance(w, str) and w for w in words):
                raise DataError(
                    f"The {name} split ({where}), sentence {i}: the input must be a non-empty tuple of words "
                    f"(non-empty strings), found {_short(words)}."
                )
            if not isinstance(tags, tuple) or len(tags) != len(words):
                count = f"{len(tags)} tags" if isinstance(tags, tuple) else f"a {type(tags).__name__}"
                raise DataError(
                    f"The {name} split ({where}), sentence {i}: {len(words)} words but {count}. Every word "
                    "needs exactly one tag: fix the row."
                )
            unknown.update(t for t in tags if t not in known)
            problem = iob2_error(tags)
            if problem is not None and not unknown:
                at, what = problem
                raise DataError(
                    f"The {name} split ({where}), sentence {i}, word {at + 1} ({words[at]!r}): {what}. Tags must "
                    "be IOB2: convert IOB1 files with sft.data.conll.iob1_to_iob2 (the CoNLL readers do)."
                )
        if unknown:
            raise DataError(
                f"The {name} split ({where}) has tags {sorted(unknown, key=str)} that the training data does "
                f"not have (training tags: {self.label_names}). Tags must match between splits: fix the file."
            )

    def fingerprint(self) -> str:
        """Content hash of the task, label names and every row of every split (changes when any text or
        label changes)."""
        digest = hashlib.sha256()
        digest.update(json.dumps([self.task, self.label_names, self.positive_label]).encode())
        for name in self.split_names:
            digest.update(f"\x00{name}\x00".encode())
            for row in self.split(name):
                digest.update(json.dumps(row).encode())
                digest.update(b"\x1e")
        return digest.hexdigest()[:16]


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_inputs(name: str, where: str, rows: list[Example], pair: bool) -> None:
    """Every input is one text, or every input is a (text_a, text_b) pair, as in the first training row."""
    for i, (value, _) in enumerate(rows, start=1):
        ok = (isinstance(value, tuple) and len(value) == 2 and all(isinstance(t, str) for t in value)) if pair \
            else isinstance(value, str)
        if not ok:
            want = "a pair (text_a, text_b) of two texts, as the first training row" if pair else \
                "one text (a str), as the first training row"
            raise DataError(f"The {name} split ({where}), row {i}: the input must be {want}; found {_short(value)}.")


def _check_numbers(name: str, where: str, rows: list[Example]) -> None:
    for i, (_, target) in enumerate(rows, start=1):
        if isinstance(target, bool) or not isinstance(target, int | float) or not math.isfinite(target):
            raise DataError(
                f"The {name} split ({where}), row {i}: target {target!r} is not a finite number; regression "
                "targets are numbers (e.g. 3.8). Fix the row."
            )


def _check_label_sets(name: str, where: str, rows: list[Example]) -> None:
    for i, (_, labels) in enumerate(rows, start=1):
        if not isinstance(labels, tuple) or not all(isinstance(x, str) for x in labels):
            raise DataError(
                f"The {name} split ({where}), row {i}: a multi-label target must be a tuple of label names, "
                f"found {_short(labels)}."
            )
        if len(set(labels)) != len(labels):
            raise DataError(f"The {name} split ({where}), row {i}: labels {list(labels)} repeat a label.")


# --------------------------------------------------------------------------- splitting and subsets


def _by_label(rows: Sequence[Example], key: Callable[[Example], Any] | None = None) -> dict[Any, list[int]]:
    groups: dict[Any, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        groups[key(row) if key else row[1]].append(i)
    return groups


def _carve_count(size: float | int, n: int) -> int:
    count = round(size * n) if isinstance(size, float) and 0 < size < 1 else int(size)
    if not 0 < count < n:
        raise ConfigError(
            f"Cannot carve {size!r} rows out of {n}: use a fraction in (0, 1) or a count between 1 and {n - 1}."
        )
    return count


def stratified_split(rows: list[Example], size: float | int, seed: int,
                     key: Callable[[Example], Any] | None = None) -> tuple[list[Example], list[Example]]:
    """Split off ``size`` rows (a count, or a fraction in (0, 1)) keeping label proportions; seeded.

    ``key(row)`` gives the stratum (default: the label, ``row[1]``). Both parts keep the rows' order."""
    n = len(rows)
    count = _carve_count(size, n)
    rng = random.Random(seed)
    carved: list[int] = []
    groups = _by_label(rows, key)
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


def random_split(rows: list[Example], size: float | int, seed: int) -> tuple[list[Example], list[Example]]:
    """Split off ``size`` rows (a count, or a fraction in (0, 1)) at random, seeded; both parts keep the rows'
    order. For targets that are not one class (numbers, label sets, tag sequences)."""
    n = len(rows)
    chosen = set(random.Random(seed).sample(range(n), _carve_count(size, n)))
    return [r for i, r in enumerate(rows) if i not in chosen], [r for i, r in enumerate(rows) if i in chosen]


def carve(rows: list[Example], size: float | int, seed: int, task: str = "single_label"
          ) -> tuple[list[Example], list[Example]]:
    """Split off ``size`` rows: stratified by label for single-label classification, seeded random otherwise."""
    if check_task(task, "task") == "single_label":
        return stratified_split(rows, size, seed)
    return random_split(rows, size, seed)


def subsample(rows: list[Example], train_size: float | int | None, shots_per_class: int | None, seed: int,
              task: str = "single_label") -> list[Example]:
    """Seeded training subsets for learning curves (``train_size``; stratified for single-label data) and
    few-shot runs (``shots_per_class``, single-label only)."""
    check_task(task, "task")
    if shots_per_class is not None:
        if task != "single_label":
            raise ConfigError(
                f"data.shots_per_class={shots_per_class} applies to single-label classification only (this data "
                f"is {task!r}); unset it and use data.train_size for a seeded subset of the training rows."
            )
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
            _, rows = carve(rows, train_size, seed, task)
    return rows


def _name_order(names: set[str]) -> list[str]:
    """Sorted; numerically when every name is an integer ("2" after "10" would be wrong)."""
    if all(n.lstrip("-").isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)


def discover_labels(rows: Sequence[Example]) -> list[str]:
    """Sorted label names; numerically when every label is an integer ("2" after "10" would be wrong)."""
    return _name_order(set(label for _, label in rows))


def discover_multi_labels(rows: Sequence[Example]) -> list[str]:
    """The label names of multi-label rows (targets are tuples of names), ordered as :func:`discover_labels`."""
    return _name_order({label for _, labels in rows for label in labels})


def order_label_sets(rows: list[Example], label_names: Sequence[str]) -> list[Example]:
    """Multi-label rows with each target's names in ``label_names`` order (names must all be known)."""
    index = {name: i for i, name in enumerate(label_names)}
    return [(x, tuple(sorted(labels, key=index.__getitem__))) for x, labels in rows]


def parse_tag(tag: object) -> tuple[str, str] | None:
    """``("O", "")``, ``("B", type)`` or ``("I", type)``; None for anything else (e.g. ``E-PER``, ``B-``)."""
    if tag == "O":
        return "O", ""
    if isinstance(tag, str) and len(tag) > 2 and tag[0] in "BI" and tag[1] == "-" and tag[2:].strip() == tag[2:]:
        return tag[0], tag[2:]
    return None


def tag_names(rows: Sequence[Example]) -> list[str]:
    """Token tag names of ``(words, tags)`` rows: "O" first, then per entity type (sorted) "B-X", "I-X"."""
    types = {parsed[1] for _, tags in rows for tag in tags if (parsed := parse_tag(tag)) and parsed[0] != "O"}
    return ["O", *(f"{p}-{t}" for t in sorted(types) for p in "BI")]


def iob2_error(tags: Sequence[str]) -> tuple[int, str] | None:
    """``(index, what)`` of the first tag that breaks IOB2 (an I-X not after B-X / I-X, or not a tag); None
    when the sequence is valid IOB2."""
    previous = ("O", "")
    for i, tag in enumerate(tags):
        parsed = parse_tag(tag)
        if parsed is None:
            return i, f"tag {tag!r} is not O, B-TYPE or I-TYPE"
        if parsed[0] == "I" and (previous[0] == "O" or previous[1] != parsed[1]):
            after = f"follows {tags[i - 1]!r}" if i else "starts the sentence"
            return i, f"tag {tag!r} {after}; in IOB2 an entity starts with B-{parsed[1]}"
        previous = parsed
    return None


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
               allowed_labels: Sequence[str] | None = None, encoding: str = "utf-8",
               text_pair_column: str | None = None, task: str = "single_label", label_delimiter: str = ",",
               columns: Sequence[str] | None = None) -> list[Example]:
    """Read a CSV, TSV or JSONL file of labelled texts; errors name the file and the line.

    ``text_pair_column``: a second text column, for ``(text_a, text_b)`` inputs. ``task``: ``single_label``
    (targets are label names), ``regression`` (numbers) or ``multi_label`` (tuples of names: separated by
    ``label_delimiter`` in CSV / TSV, a JSON list in JSONL; in the file's order, each once).
    ``allowed_labels``: the label names a row may use. ``columns``: the column names of a CSV / TSV without a
    header row. TSV fields are not CSV-quoted (GLUE's convention): quotes are part of the text.
    """
    check_task(task, "task")
    if task == "token":
        raise ConfigError(_TOKEN_NOT_TABLES)
    codec = text_encoding(encoding)
    p = _require_file(path, setting)
    suffix = p.suffix.lower()
    layout = _Layout(text_column, label_column, text_pair_column, task,
                     None if allowed_labels is None else tuple(allowed_labels), label_delimiter)
    try:
        if suffix in (".jsonl", ".json", ".ndjson"):
            rows = _read_jsonl(p, layout, codec)
        elif suffix in (".tsv", ".csv"):
            delimiter = "\t" if suffix == ".tsv" else ","
            rows = _read_delimited(p, layout, delimiter, codec, columns)
        else:
            raise DataError(f"{setting}: {str(p)!r} has suffix {suffix!r}; supported are .csv, .tsv and .jsonl.")
    except UnicodeError as e:  # UnicodeDecodeError, or a codec's own check (UTF-16 without a BOM)
        raise undecodable(p, codec, e) from None
    if not rows:
        what = ("the file is empty" if p.stat().st_size == 0
                else "only blank lines" if suffix not in (".tsv", ".csv") or columns else "only the header row")
        raise DataError(
            f"{p}: no data rows ({what}); {setting} needs labelled rows. Add them, or set {setting} to the file "
            "that holds them."
        )
    return rows


_TOKEN_NOT_TABLES = (
    "data.task='token' (token classification) is not read from CSV / TSV / JSONL text tables: every word needs "
    "its own tag. Use data=conll2003 (sft.data.conll.TokenFiles) with CoNLL files (one word and its tag per line), "
    'or JSONL lines {"tokens": [...], "tags": [...]} (the format sft/data/conll.py describes).'
)


@dataclass(frozen=True)
class _Layout:
    """Which columns hold what, and what a label must be."""

    text: str
    label: str
    pair: str | None = None
    task: str = "single_label"
    allowed: tuple[str, ...] | None = None
    delimiter: str = ","

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.text, self.label) if self.pair is None else (self.text, self.pair, self.label)


def _check_text(p: Path, line: int, text: object, column: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{p}:{line}: empty or missing text in column {column!r}. Fix or remove the row.")
    return text.strip()


def _label_text(label: object) -> str:
    if isinstance(label, float) and label.is_integer():
        label = int(label)
    return str(label).strip()


def _single_label(p: Path, line: int, label: object, column: str, allowed: Sequence[str] | None) -> str:
    if label is None or (isinstance(label, str) and not label.strip()):
        raise DataError(f"{p}:{line}: empty or missing label in column {column!r}. Fix or remove the row.")
    label = _label_text(label)
    if allowed is not None and label not in allowed:
        raise DataError(f"{p}:{line}: label {label!r} is not one of {list(allowed)}. Fix the row.")
    return label


def _check_row(p: Path, line: int, text: object, label: object, text_column: str, label_column: str,
               allowed_labels: Sequence[str] | None = None) -> Example:
    text = _check_text(p, line, text, text_column)
    return text, _single_label(p, line, label, label_column, allowed_labels)


def _number(p: Path, line: int, label: object, column: str) -> float:
    if label is None or (isinstance(label, str) and not label.strip()):
        raise DataError(f"{p}:{line}: empty or missing label in column {column!r}. Fix or remove the row.")
    try:
        if isinstance(label, bool) or not isinstance(label, str | int | float):
            raise ValueError
        value = float(label.strip() if isinstance(label, str) else label)
    except (ValueError, OverflowError):
        shown = label.strip() if isinstance(label, str) else label
        raise DataError(
            f"{p}:{line}: label {shown!r} in column {column!r} is not a number. Regression labels are numbers "
            "(e.g. 3.8): fix the row."
        ) from None
    if not math.isfinite(value):
        raise DataError(
            f"{p}:{line}: label {label!r} in column {column!r} is not a finite number. Fix the row."
        )
    return value


def _label_set(p: Path, line: int, label: object, layout: _Layout) -> tuple[str, ...]:
    """Multi-label names: a JSON list, or names / ids separated by ``layout.delimiter``; empty is no label."""
    if label is None:
        raise DataError(f"{p}:{line}: missing label in column {layout.label!r} (null). Use [] or an empty field "
                        "for a row with no label.")
    if isinstance(label, str):
        parts: list[object] = label.split(layout.delimiter)
    elif isinstance(label, list):
        parts = label
    elif isinstance(label, int | float) and not isinstance(label, bool):
        parts = [label]
    else:
        raise DataError(
            f"{p}:{line}: labels in column {layout.label!r} must be a list of names (or names separated by "
            f"{layout.delimiter!r}), found {_short(label)}. Fix the row."
        )
    names: list[str] = []
    for part in parts:
        if isinstance(part, bool) or not isinstance(part, str | int | float):
            raise DataError(f"{p}:{line}: label {_short(part)} in column {layout.label!r} is not a name. Fix the row.")
        name = _label_text(part)
        if not name:
            continue  # "a,,b" or a trailing delimiter
        if layout.allowed is not None and name not in layout.allowed:
            raise DataError(
                f"{p}:{line}: label {name!r} is not one of {list(layout.allowed)}. Fix the row, or list every "
                "label in data.label_names."
            )
        if name not in names:
            names.append(name)
    return tuple(names)


def _make_row(p: Path, line: int, text: object, pair: object, label: object, layout: _Layout) -> Example:
    if layout.task == "single_label" and layout.pair is None:
        return _check_row(p, line, text, label, layout.text, layout.label, layout.allowed)
    value: Any = _check_text(p, line, text, layout.text)
    if layout.pair is not None:
        value = (value, _check_text(p, line, pair, layout.pair))
    if layout.task == "regression":
        return value, _number(p, line, label, layout.label)
    if layout.task == "multi_label":
        return value, _label_set(p, line, label, layout)
    return value, _single_label(p, line, label, layout.label, layout.allowed)


def _missing_column_fix(layout: _Layout, column: str, what: str) -> str:
    if column == layout.pair:
        return f"Set data.text_pair_column to the right {what}"
    return f"Set data.text_column / label_column to the right {what}s"


def jsonl_objects(p: Path, encoding: str, example: str = "") -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` of each non-blank line of a JSONL file; a line that is not a JSON object is a
    DataError naming the file and line (``example``: what a line should look like)."""
    shape = f" {example}" if example else ""
    with p.open(encoding=encoding) as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{p}:{line_no}: not valid JSON ({e.msg}). Each line must be one JSON object"
                                f"{shape}.") from None
            if not isinstance(obj, dict):
                raise DataError(f"{p}:{line_no}: expected a JSON object{shape}, found {type(obj).__name__}.")
            yield line_no, obj


def _read_jsonl(p: Path, layout: _Layout, encoding: str) -> list[Example]:
    rows = []
    for line_no, obj in jsonl_objects(p, encoding):
        for col in layout.keys:
            if col not in obj:
                raise DataError(
                    f"{p}:{line_no}: no key {col!r} (keys: {sorted(obj)}). "
                    f"{_missing_column_fix(layout, col, 'key')}."
                )
        pair = obj[layout.pair] if layout.pair is not None else None
        rows.append(_make_row(p, line_no, obj[layout.text], pair, obj[layout.label], layout))
    return rows


def _read_delimited(p: Path, layout: _Layout, delimiter: str, encoding: str,
                    columns: Sequence[str] | None = None) -> list[Example]:
    rows = []
    # TSV files (GLUE included) are not CSV-quoted: quotes are part of the text.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    with p.open(encoding=encoding, newline="") as f:
        reader = csv.reader(f, delimiter=delimiter, quoting=quoting)
        if columns is not None:
            header = list(columns)
            missing = [c for c in layout.keys if c not in header]
            if missing:
                raise ConfigError(f"columns {missing} are not among the given column names {header} of {p}.")
        else:
            try:
                header = next(reader)
            except StopIteration:
                return []  # an empty file: no data rows
            header = [h.strip().lstrip("\ufeff") for h in header]  # a BOM read with a non-UTF-8 codec
            for col in layout.keys:
                if col not in header:
                    raise DataError(
                        f"{p}:1: header has no column {col!r} (columns: {header}). "
                        f"{_missing_column_fix(layout, col, 'column')}, or add the header row."
                    )
        ti, li = header.index(layout.text), header.index(layout.label)
        pi = header.index(layout.pair) if layout.pair is not None else None
        for row in reader:
            line_no = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != len(header):
                raise DataError(
                    f"{p}:{line_no}: expected {len(header)} fields ({', '.join(header)}), found {len(row)}. "
                    "Fix the row (a stray separator or a missing field?)."
                )
            rows.append(_make_row(p, line_no, row[ti], row[pi] if pi is not None else None, row[li], layout))
    return rows


# --------------------------------------------------------------------------- sources


def carve_val(rows: list[Example], size: float | int, seed: int, task: str = "single_label",
              setting: str = "data.val_size") -> tuple[list[Example], list[Example]]:
    """:func:`carve` for a source's validation split; a size that does not fit names ``setting``."""
    try:
        return carve(rows, size, seed, task)
    except ConfigError as e:
        raise ConfigError(f"{setting}={size!r}: {e}") from None


def hub_dataset(name: str, config: str | None, what: str, fix: str) -> Any:
    """``datasets.load_dataset(name, config)``; a missing ``datasets`` or a failed download (offline, auth,
    cache) is a one-line error that says ``fix``."""
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"Reading {what} from the HF hub needs `pip install datasets` (or: {fix}).") from None
    try:
        return datasets.load_dataset(name, config) if config else datasets.load_dataset(name)
    except Exception as e:  # network, auth or cache problems: say what to do instead
        reason = " ".join(str(e).split())
        raise DataError(f"Could not load {what} from the HF hub ({type(e).__name__}: {reason}). Offline? {fix}") \
            from None


class PackagedSample:
    """The small sentiment set shipped inside sft (sft/data/sample/*.jsonl)."""

    def load(self, seed: int = 0) -> TextSplits:
        splits = {s: read_table(SAMPLE_DIR / f"{s}.jsonl", "text", "label") for s in SPLITS}
        origin = {s: str(SAMPLE_DIR / f"{s}.jsonl") for s in SPLITS}
        return TextSplits(**splits, label_names=discover_labels(splits["train"]), origin=origin).validate()


class TextFiles:
    """Local CSV / TSV / JSONL files with configurable text and label columns.

    ``task``: ``single_label`` (label names discovered from train, or fixed by ``label_names``), ``regression``
    (numeric labels; the one label name is ``label_column``) or ``multi_label`` (names / ids separated by
    ``label_delimiter`` in CSV / TSV, a JSON list in JSONL; names discovered from the training file, or fixed by
    ``label_names``). ``text_pair_column``: a second text column for sentence-pair inputs. Missing val / test files
    are carved from train (stratified for single-label, else seeded random).
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
        text_pair_column: str | None = None,
        task: str = "single_label",
        label_delimiter: str = ",",
    ):
        check_task(task)
        if task == "token":
            raise ConfigError(_TOKEN_NOT_TABLES)
        if task == "regression" and label_names and len(label_names) != 1:
            raise ConfigError(
                f"data.label_names={list(label_names)}: regression predicts one number, so give one name or none "
                f"(the default is the label column, {label_column!r})."
            )
        if task == "multi_label" and not label_delimiter:
            raise ConfigError("data.label_delimiter is empty: set the character between a row's labels (e.g. ',').")
        self.files = {"train": train, "val": val, "test": test}
        self.text_column, self.label_column = text_column, label_column
        self.label_names = [str(n) for n in label_names] if label_names else None
        self.sizes = {"val": val_size, "test": test_size}
        self.split_seed = split_seed
        self.encoding = encoding
        self.text_pair_column, self.task, self.label_delimiter = text_pair_column, task, label_delimiter

    def _read(self, name: str, allowed: Sequence[str] | None = None) -> list[Example]:
        return read_table(self.files[name], self.text_column, self.label_column, setting=f"data.{name}",
                          allowed_labels=allowed, encoding=self.encoding, text_pair_column=self.text_pair_column,
                          task=self.task, label_delimiter=self.label_delimiter)

    def load(self, seed: int = 0) -> TextSplits:
        splits: dict[str, list[Example]] = {}
        origin: dict[str, str] = {}
        names = self.label_names
        for name, path in self.files.items():
            if path is not None:
                if self.task == "multi_label":
                    # Every file's labels are checked against the names (given, or those of the training file).
                    splits[name] = self._read(name, names)
                    names = names or discover_multi_labels(splits[name])
                else:
                    splits[name] = self._read(name)
                origin[name] = str(path)
        train = splits["train"]
        total = len(train)
        for name in ("test", "val"):
            if name not in splits:
                size = self.sizes[name]
                # A fraction means a fraction of the whole file, also for the second split carved.
                count = round(size * total) if isinstance(size, float) and 0 < size < 1 else size
                train, splits[name] = carve(train, count, self.split_seed, self.task)
                origin[name] = f"{self.files['train']} (carved, {name}_size={self.sizes[name]})"
        if self.task == "regression":
            names = self.label_names or [self.label_column]
        elif self.task == "multi_label":
            assert names is not None
            splits = {name: order_label_sets(rows, names) for name, rows in splits.items()}
            train = order_label_sets(train, names)
        else:
            names = self.label_names or discover_labels(train)
            extra = sorted({label for _, label in train} - set(names))
            if extra:
                raise DataError(f"{self.files['train']}: labels {extra} are not in data.label_names={names}.")
        return TextSplits(train, splits["val"], splits["test"], label_names=names, origin=origin,
                          task=self.task).validate()
