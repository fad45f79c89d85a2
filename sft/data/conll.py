"""Token classification (named entities): CoNLL-2003 files, JSONL token files, or the HF hub.

Rows are ``(words, tags)``: a tuple of words and a tuple of IOB2 tags, one per word. Label names are "O", then
for each entity type (sorted) "B-X", "I-X" (:func:`sft.data.sources.tag_names`).

File formats:

- **CoNLL** (``eng.train``, ``train.txt``...): one token per line, space-separated columns; the word is the
  first column and the entity tag the last (CoNLL-2003: word, POS, chunk, entity). A blank line ends a
  sentence; ``-DOCSTART-`` lines (and the blank line after them) are skipped. CoNLL-2003's files are IOB1
  (``I-X`` starts an entity; ``B-X`` only splits two adjacent entities of one type): they are converted to
  IOB2 (:func:`iob1_to_iob2`); IOB2 files pass through unchanged.
- **JSONL** (``.jsonl`` / ``.json``): one sentence per line, ``{"tokens": ["EU", "rejects", ...],
  "tags": ["B-ORG", "O", ...]}``; IOB2 tags (IOB1 is accepted and converted the same way).

No torch import here; ``datasets`` is imported only for a hub read.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sft.data.sources import (
    Example,
    TextSplits,
    _require_file,
    carve_val,
    hub_dataset,
    jsonl_objects,
    parse_tag,
    tag_names,
    text_encoding,
    undecodable,
)
from sft.errors import ConfigError, DataError

HUB_ID = "eriktks/conll2003"
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")


def iob1_to_iob2(tags: Sequence[str]) -> tuple[str, ...]:
    """IOB1 (or IOB2) tags as IOB2: an ``I-X`` whose previous tag is ``O`` or of another type becomes ``B-X``.

    Tags must be O / B-X / I-X (:func:`sft.data.sources.parse_tag`)."""
    out: list[str] = []
    previous = "O"
    for tag in tags:
        if tag.startswith("I-") and (previous == "O" or previous[2:] != tag[2:]):
            tag = "B-" + tag[2:]
        out.append(tag)
        previous = tag
    return tuple(out)


def _bad_tag(where: str, tag: object) -> DataError:
    return DataError(
        f"{where}: tag {tag!r} is not O, B-TYPE or I-TYPE (e.g. B-PER, I-LOC). Fix the tag; tags in other "
        "schemes (IOBES's E- / S-) must be converted to IOB first."
    )


def read_conll(path: str | Path, encoding: str = "utf-8", setting: str = "data") -> list[Example]:
    """Sentences of a CoNLL file as ``(words, IOB2 tags)``; errors name the file and the line."""
    codec = text_encoding(encoding)
    p = _require_file(path, setting)
    sentences: list[Example] = []
    words: list[str] = []
    tags: list[str] = []
    width: tuple[int, int] | None = None  # (fields, line) of the first token line

    def end_sentence() -> None:
        if words:
            sentences.append((tuple(words), iob1_to_iob2(tags)))
            words.clear()
            tags.clear()

    try:
        with p.open(encoding=codec) as f:
            for line_no, line in enumerate(f, start=1):
                fields = line.split()
                if not fields:
                    end_sentence()
                    continue
                if fields[0] == "-DOCSTART-":
                    end_sentence()
                    continue
                if width is None:
                    if len(fields) < 2:
                        raise DataError(
                            f"{p}:{line_no}: {line.strip()!r} has one field; a CoNLL token line needs the word "
                            "first and its entity tag last, separated by spaces. Fix the line (or is this not a "
                            "CoNLL file?)."
                        )
                    width = (len(fields), line_no)
                elif len(fields) != width[0]:
                    raise DataError(
                        f"{p}:{line_no}: {len(fields)} space-separated fields, but the file's first token line "
                        f"(line {width[1]}) has {width[0]}. Every token line needs the same columns (word first, "
                        "entity tag last): fix the line (a word with a space in it, or a missing column?)."
                    )
                if parse_tag(fields[-1]) is None:
                    raise _bad_tag(f"{p}:{line_no}", fields[-1])
                words.append(fields[0])
                tags.append(fields[-1])
    except UnicodeError as e:
        raise undecodable(p, codec, e) from None
    end_sentence()
    if not sentences:
        raise DataError(f"{p}: no sentences (no token lines); {setting} needs a CoNLL file with tagged tokens.")
    return sentences


def read_token_jsonl(path: str | Path, encoding: str = "utf-8", setting: str = "data") -> list[Example]:
    """Sentences of a JSONL file of ``{"tokens": [...], "tags": [...]}`` objects as ``(words, IOB2 tags)``."""
    codec = text_encoding(encoding)
    p = _require_file(path, setting)
    sentences: list[Example] = []
    shape = '{"tokens": ["EU", "rejects"], "tags": ["B-ORG", "O"]}'
    try:
        for line_no, obj in jsonl_objects(p, codec, shape):
            if "tokens" not in obj or "tags" not in obj:
                raise DataError(f"{p}:{line_no}: expected an object with keys 'tokens' and 'tags' (found "
                                f"{sorted(obj)}). Each line must be {shape}.")
            words, tags = obj["tokens"], obj["tags"]
            for key, value in (("tokens", words), ("tags", tags)):
                if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
                    raise DataError(f"{p}:{line_no}: '{key}' must be a list of non-empty strings. Fix the line.")
            if not words:
                raise DataError(f"{p}:{line_no}: 'tokens' is empty. Remove the line or add the sentence's words.")
            if len(words) != len(tags):
                raise DataError(
                    f"{p}:{line_no}: {len(words)} tokens but {len(tags)} tags. Every token needs exactly one "
                    "tag: fix the line."
                )
            for tag in tags:
                if parse_tag(tag) is None:
                    raise _bad_tag(f"{p}:{line_no}", tag)
            sentences.append((tuple(w.strip() for w in words), iob1_to_iob2(tags)))
    except UnicodeError as e:
        raise undecodable(p, codec, e) from None
    if not sentences:
        what = "the file is empty" if p.stat().st_size == 0 else "only blank lines"
        raise DataError(f"{p}: no sentences ({what}); {setting} needs tagged sentences.")
    return sentences


def read_tokens(path: str | Path, encoding: str = "utf-8", setting: str = "data") -> list[Example]:
    """:func:`read_token_jsonl` for a ``.jsonl`` / ``.json`` file, else :func:`read_conll`."""
    if Path(path).suffix.lower() in JSONL_SUFFIXES:
        return read_token_jsonl(path, encoding, setting)
    return read_conll(path, encoding, setting)


class TokenFiles:
    """Token classification data: CoNLL or JSONL files in the folder ``path``, or CoNLL-2003 from the HF hub
    (``path=None``).

    ``train`` / ``val`` / ``test``: file names relative to ``path`` (or absolute). Without a ``val`` file,
    ``val_size`` sentences are carved from train (seeded random, fixed ``split_seed``). As for GLUE, the test
    split is the development file (CoNLL-2003 ``eng.testa``; the hub's ``validation``). Tag names come from the
    training file; a val / test tag of an entity type train lacks is an error.
    """

    def __init__(self, path: str | None = None, train: str = "eng.train", val: str | None = None,
                 test: str | None = "eng.testa", val_size: float | int = 0.1, split_seed: int = 0,
                 encoding: str = "utf-8"):
        if path is not None and (not train or not test):
            missing = "data.train" if not train else "data.test"
            raise ConfigError(f"{missing} is not set: name the CoNLL or JSONL file in data.path={path!r} to read.")
        self.path, self.files = path, {"train": train, "val": val, "test": test}
        self.val_size, self.split_seed, self.encoding = val_size, split_seed, encoding

    def load(self, seed: int = 0) -> TextSplits:
        parts, origin = self._from_hub() if self.path is None else self._from_folder()
        names = tag_names(parts["train"])
        for name in ("val", "test"):
            if name in parts:
                _check_known_tags(parts[name], names, origin[name], origin["train"])
        train = parts["train"]
        if "val" not in parts:
            train, parts["val"] = carve_val(train, self.val_size, self.split_seed, "token")
        return TextSplits(train, parts["val"], parts["test"], label_names=names, origin=origin,
                          task="token").validate()

    def _from_folder(self) -> tuple[dict[str, list[Example]], dict[str, str]]:
        folder = Path(self.path).expanduser()
        if not folder.is_dir():
            raise DataError(
                f"data.path={str(folder)!r} is not a folder. Point it at the folder holding the CoNLL files "
                f"({self.files['train']}, {self.files['test']}), or leave it null to download CoNLL-2003 from the "
                "HF hub."
            )
        parts: dict[str, list[Example]] = {}
        origin: dict[str, str] = {}
        for name, file in self.files.items():
            if file is None:
                continue
            p = folder / Path(file).expanduser()  # an absolute file name replaces the folder
            parts[name] = read_tokens(p, self.encoding, setting=f"data.{name}")
            origin[name] = str(p)
        if "val" not in parts:
            origin["val"] = f"{origin['train']} (carved, val_size={self.val_size})"
        return parts, origin

    def _from_hub(self) -> tuple[dict[str, list[Example]], dict[str, str]]:
        ds = hub_dataset(HUB_ID, None, "CoNLL-2003",
                         "Set data.path to a folder with the CoNLL-2003 files (eng.train, eng.testa).")
        names = ds["train"].features["ner_tags"].feature.names

        def rows(split: str) -> list[Example]:
            return [(tuple(r["tokens"]), iob1_to_iob2([names[t] for t in r["ner_tags"]])) for r in ds[split]
                    if r["tokens"]]

        hub = f"hf://{HUB_ID}"
        parts = {"train": rows("train"), "test": rows("validation")}
        return parts, {"train": hub, "val": f"{hub} (carved, val_size={self.val_size})", "test": f"{hub}:validation"}


def _check_known_tags(rows: list[Example], names: list[str], where: str, train: str) -> None:
    unknown = sorted({tag for _, tags in rows for tag in tags} - set(names))
    if unknown:
        raise DataError(
            f"{where}: tags {unknown} name entity types the training data ({train}) does not have (its tags: "
            f"{names}). Train and evaluation files must use the same entity types: fix the file, or add training "
            "sentences of those types."
        )
