"""Data: file readers and their line-numbered errors, sources and splits, subsets, batching, the DataModule.

Everything runs on real files written to tmp_path, the real MiniLM WordPiece tokenizer and (when present)
the real SST-2 TSVs; nothing is mocked.
"""

from __future__ import annotations

import csv
import json
import math
import random
from collections import Counter
from pathlib import Path

import pytest
import torch

from sft.data.batching import PadCollator, TrainBatchSampler
from sft.data.glue import Glue
from sft.data.sources import (
    PackagedSample,
    TextFiles,
    TextSplits,
    discover_labels,
    read_table,
    stratified_split,
    subsample,
)
from sft.errors import ConfigError, DataError
from tests.conftest import SST2_DIR, needs_sst2, write_lines

# --------------------------------------------------------------------------- helpers

WORDS = ("good bad movie plot actors boring great awful film story scenes music ending dialogue "
         "characters pacing script camera").split()


def make_rows(counts: dict[str, int], seed: int = 0, max_words: int = 12) -> list[tuple[str, str]]:
    """Distinct texts of varying length, labels interleaved in a seeded random order."""
    rng = random.Random(seed)
    labels = [label for label, n in counts.items() for _ in range(n)]
    rng.shuffle(labels)
    rows = []
    for i, label in enumerate(labels):
        words = [rng.choice(WORDS) for _ in range(rng.randint(1, max_words))]
        rows.append((f"row {i} " + " ".join(words), label))
    return rows


def write_csv(path: Path, rows: list[tuple[str, str]], header: tuple[str, str] = ("text", "label")) -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[tuple[str, str]]) -> Path:
    return write_lines(path, [json.dumps({"text": t, "label": lab}) for t, lab in rows])


def write_glue(folder: Path, train: list[tuple[str, int]], dev: list[tuple[str, int]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("dev", dev)):
        write_lines(folder / f"{name}.tsv", ["sentence\tlabel", *(f"{t} \t{lab}" for t, lab in rows)])
    return folder


def label_counts(rows) -> Counter:
    return Counter(label for _, label in rows)


def assert_stratified(part, whole, size: int) -> None:
    """Each class holds its share of ``size`` rows, within one row."""
    whole_counts, part_counts = label_counts(whole), label_counts(part)
    for label, n in whole_counts.items():
        expected = size * n / len(whole)
        assert abs(part_counts.get(label, 0) - expected) <= 1, (label, part_counts, expected)


def splits_of(train, val=None, test=None, names=None, origin=None) -> TextSplits:
    val = val if val is not None else train[:2]
    test = test if test is not None else train[2:4]
    return TextSplits(list(train), list(val), list(test), names or discover_labels(train), origin or {})


# --------------------------------------------------------------------------- readers


def test_csv_reader_keeps_quoted_commas_and_doubled_quotes(tmp_path):
    path = write_lines(tmp_path / "reviews.csv", [
        "text,label",
        '"Hello, world, again",positive',
        '"She said ""no"", twice",negative',
        "  plain text  , positive ",
    ])
    assert read_table(path, "text", "label") == [
        ("Hello, world, again", "positive"),
        ('She said "no", twice', "negative"),
        ("plain text", "positive"),
    ]


def test_csv_reader_uses_named_columns_in_any_order(tmp_path):
    path = write_lines(tmp_path / "data.csv", ["id,sentiment,sentence", "7,pos,first one", "8,neg,second one"])
    assert read_table(path, "sentence", "sentiment") == [("first one", "pos"), ("second one", "neg")]


def test_tsv_reader_treats_quotes_as_literal_text(tmp_path):
    # With CSV quoting, the unbalanced quote on line 3 would swallow the following rows into one field.
    lines = ["text\tlabel", '"quoted" at the start\t1', 'it\'s a "so-called comedy\t0', 'after the quote\t1',
             'ends with a quote"\t0']
    path = write_lines(tmp_path / "glue_like.tsv", lines)
    rows = read_table(path, "text", "label")
    assert rows == [tuple(line.split("\t")) for line in lines[1:]]
    assert rows[0][0].startswith('"') and rows[1][0].count('"') == 1


def test_jsonl_reader_normalises_labels_and_skips_blank_lines(tmp_path):
    path = write_lines(tmp_path / "data.jsonl", [
        json.dumps({"text": " padded ", "label": "pos", "extra": 1}),
        "",
        json.dumps({"text": "integer label", "label": 1}),
        "   ",
        json.dumps({"text": "float label", "label": 0.0}),
    ])
    assert read_table(path, "text", "label") == [("padded", "pos"), ("integer label", "1"), ("float label", "0")]


def test_jsonl_reader_with_custom_keys(tmp_path):
    path = write_lines(tmp_path / "custom.ndjson", [json.dumps({"sentence": "hi there", "y": "a"})])
    assert read_table(path, "sentence", "y") == [("hi there", "a")]


def test_discover_labels_sorts_strings_alphabetically():
    rows = [("x", "pos"), ("y", "neg"), ("z", "neutral"), ("w", "pos")]
    assert discover_labels(rows) == sorted({"pos", "neg", "neutral"})


def test_discover_labels_sorts_integers_numerically():
    labels = ["10", "2", "1", "-1", "2", "0"]
    got = discover_labels([(f"t{i}", lab) for i, lab in enumerate(labels)])
    assert got == ["-1", "0", "1", "2", "10"]
    assert got.index("10") > got.index("2")  # lexicographic order would put "10" first
    assert [int(x) for x in got] == sorted({int(x) for x in labels})


def test_discover_labels_mixed_labels_fall_back_to_string_order():
    assert discover_labels([("a", "10"), ("b", "2"), ("c", "x")]) == ["10", "2", "x"]


# Each case: file name, lines, expected line number in the message, words the message must contain.
MALFORMED = {
    "tsv_extra_field": ("bad.tsv", ["text\tlabel", "fine\t0", "also fine\t1", "a stray\ttab\t1"], 4,
                        ["expected 2 fields", "found 3"]),
    "tsv_missing_field": ("bad.tsv", ["text\tlabel", "fine\t0", "no label here"], 3, ["found 1"]),
    "tsv_after_blank_line": ("bad.tsv", ["text\tlabel", "fine\t0", "", "x\ty\tz"], 4, ["found 3"]),
    "csv_extra_field": ("bad.csv", ["text,label", "fine,a", "one,two,three"], 3, ["expected 2 fields", "found 3"]),
    "csv_after_multiline_field": ("bad.csv", ["text,label", '"spans', 'two lines",a', "fine,b", "x,y,z"], 5,
                                  ["found 3"]),
    "csv_empty_text": ("bad.csv", ["text,label", "fine,a", ",b"], 3, ["empty or missing text", "'text'"]),
    "csv_blank_text": ("bad.csv", ["text,label", "fine,a", "fine too,b", "   ,b"], 4, ["empty or missing text"]),
    "tsv_empty_label": ("bad.tsv", ["text\tlabel", "fine\t0", "fine too\t1", "no label\t "], 4,
                        ["empty or missing label", "'label'"]),
    "jsonl_invalid_json": ("bad.jsonl", ['{"text": "a", "label": "x"}', '{"text": "b", "label": "y"}',
                                         '{"text": "c", "label": }'], 3, ["not valid JSON"]),
    "jsonl_not_an_object": ("bad.jsonl", ['{"text": "a", "label": "x"}', '["b", "y"]'], 2,
                            ["expected a JSON object", "list"]),
    "jsonl_missing_key": ("bad.jsonl", ['{"text": "a", "label": "x"}', '{"text": "b", "label": "y"}',
                                        '{"text": "c", "lable": "y"}'], 3, ["no key 'label'", "'lable'"]),
    "jsonl_empty_text": ("bad.jsonl", ['{"text": "a", "label": "x"}', '{"text": "", "label": "y"}'], 2,
                         ["empty or missing text"]),
    "jsonl_null_label": ("bad.jsonl", ['{"text": "a", "label": "x"}', "", '{"text": "b", "label": null}'], 3,
                         ["empty or missing label"]),
    "csv_header_missing_column": ("bad.csv", ["sentence,label", "a,b"], 1,
                                  ["no column 'text'", "['sentence', 'label']"]),
    "tsv_header_missing_label": ("bad.tsv", ["text\ttarget", "a\tb"], 1, ["no column 'label'", "['text', 'target']"]),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_file_error_names_file_and_exact_line(tmp_path, case):
    name, lines, line_no, words = MALFORMED[case]
    path = write_lines(tmp_path / name, lines)
    with pytest.raises(DataError) as info:
        read_table(path, "text", "label")
    message = str(info.value)
    assert f"{name}:{line_no}:" in message, message
    for word in words:
        assert word in message, (word, message)


def test_empty_csv_file_is_a_data_error(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("", encoding="utf-8")
    with pytest.raises(DataError, match=r"empty\.csv: no data rows \(the file is empty\)"):
        read_table(path, "text", "label")


def test_unsupported_suffix_names_file_and_suffix(tmp_path):
    path = write_lines(tmp_path / "reviews.txt", ["text,label", "a,b"])
    with pytest.raises(DataError) as info:
        read_table(path, "text", "label", setting="data.source.train")
    message = str(info.value)
    assert "reviews.txt" in message and "'.txt'" in message and "data.source.train" in message


def test_missing_file_names_file_and_setting(tmp_path):
    with pytest.raises(DataError) as info:
        read_table(tmp_path / "nowhere.csv", "text", "label", setting="data.source.val")
    message = str(info.value)
    assert "nowhere.csv" in message and "does not exist" in message and "data.source.val" in message


def test_folder_given_as_file_says_it_is_a_folder(tmp_path):
    folder = tmp_path / "looks_like.csv"
    folder.mkdir()
    with pytest.raises(DataError) as info:
        read_table(folder, "text", "label")
    assert "looks_like.csv" in str(info.value) and "it is a folder" in str(info.value)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_utf8_bom_is_accepted(tmp_path, suffix):
    body = "text,label\nhello,a\n" if suffix == ".csv" else '{"text": "hello", "label": "a"}\n'
    path = tmp_path / f"excel{suffix}"
    path.write_bytes(("\ufeff" + body).encode("utf-8"))
    assert read_table(path, "text", "label") == [("hello", "a")]


# --------------------------------------------------------------------------- TextSplits


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_validate_empty_split_names_the_split(split):
    rows = make_rows({"a": 3, "b": 3})
    parts = {"train": rows, "val": rows[:2], "test": rows[2:4], split: []}
    origin = {split: f"/data/{split}_file.csv"}
    with pytest.raises(DataError) as info:
        TextSplits(**parts, label_names=["a", "b"], origin=origin).validate()
    message = str(info.value)
    assert f"The {split} split" in message and f"{split}_file.csv" in message and "empty" in message


@pytest.mark.parametrize("split", ["val", "test"])
def test_validate_unknown_label_in_eval_split(split):
    train = make_rows({"a": 4, "b": 4})
    parts = {"train": train, "val": train[:2], "test": train[2:4]}
    parts[split] = [*parts[split], ("odd one", "zebra"), ("another", "yak")]
    with pytest.raises(DataError) as info:
        TextSplits(**parts, label_names=discover_labels(train), origin={split: f"{split}.jsonl"}).validate()
    message = str(info.value)
    assert f"The {split} split ({split}.jsonl)" in message
    assert "['yak', 'zebra']" in message and "['a', 'b']" in message


def test_validate_single_class_is_an_error():
    train = [(f"text {i}", "only") for i in range(5)]
    with pytest.raises(DataError, match=r"Only one class \(\['only'\]\)"):
        splits_of(train, origin={"train": "train.csv"}).validate()


def test_validate_returns_the_splits_when_fine():
    splits = splits_of(make_rows({"a": 3, "b": 3}))
    assert splits.validate() is splits


def test_fingerprint_is_content_hash():
    rows = make_rows({"a": 5, "b": 5})
    base = splits_of(rows)
    # Same content in fresh objects (and a different origin): same fingerprint.
    twin = splits_of([tuple(r) for r in rows], origin={"train": "elsewhere.csv"})
    assert twin.fingerprint() == base.fingerprint()

    relabelled = [list(r) for r in rows]
    relabelled[7][1] = "b" if relabelled[7][1] == "a" else "a"
    one_label = splits_of([tuple(r) for r in relabelled])
    one_char = splits_of([(rows[0][0][:-1] + "X", rows[0][1]), *rows[1:]])
    in_test = splits_of(rows, test=[rows[2], (rows[3][0] + "!", rows[3][1])])
    reordered_names = splits_of(rows, names=["b", "a"])
    prints = {s.fingerprint() for s in (base, one_label, one_char, in_test, reordered_names)}
    assert len(prints) == 5


# --------------------------------------------------------------------------- stratified_split and TextFiles


def test_stratified_split_exact_size_proportions_and_disjoint():
    rows = make_rows({"a": 61, "b": 27, "c": 12})
    rest, carved = stratified_split(rows, 0.25, seed=3)
    assert len(carved) == round(0.25 * len(rows)) and len(rest) == len(rows) - len(carved)
    assert_stratified(carved, rows, len(carved))
    assert sorted(rest + carved) == sorted(rows)
    assert [r for r in rows if r in carved] == carved  # keeps file order
    with pytest.raises(ConfigError):
        stratified_split(rows, len(rows), seed=0)
    with pytest.raises(ConfigError):
        stratified_split(rows, 0, seed=0)


def test_text_files_carves_val_and_test_from_train(tmp_path):
    rows = make_rows({"neg": 50, "pos": 30, "neu": 20})
    path = write_csv(tmp_path / "train.csv", rows)
    splits = TextFiles(str(path), val_size=15, test_size=10, split_seed=1).load()
    assert (len(splits.train), len(splits.val), len(splits.test)) == (75, 15, 10)
    assert_stratified(splits.val, rows, 15)
    assert_stratified(splits.test, rows, 10)
    texts = {name: {t for t, _ in splits.split(name)} for name in ("train", "val", "test")}
    assert not texts["train"] & texts["val"] and not texts["train"] & texts["test"] and not texts["val"] & texts["test"]
    assert sorted(splits.train + splits.val + splits.test) == sorted(rows)
    assert splits.label_names == ["neg", "neu", "pos"]
    assert "carved" in splits.origin["val"] and "carved" in splits.origin["test"]

    again = TextFiles(str(path), val_size=15, test_size=10, split_seed=1).load()
    assert (again.train, again.val, again.test) == (splits.train, splits.val, splits.test)
    other = TextFiles(str(path), val_size=15, test_size=10, split_seed=2).load()
    assert other.val != splits.val


def test_text_files_fraction_sizes_are_exact_for_test(tmp_path):
    rows = make_rows({"a": 120, "b": 80})
    splits = TextFiles(str(write_jsonl(tmp_path / "t.jsonl", rows)), val_size=0.1, test_size=0.2).load()
    assert len(splits.test) == round(0.2 * len(rows))
    assert_stratified(splits.test, rows, len(splits.test))
    assert len(splits.train) + len(splits.val) + len(splits.test) == len(rows)


def test_text_files_fraction_sizes_are_fractions_of_the_file(tmp_path):
    rows = make_rows({"a": 50, "b": 50})
    splits = TextFiles(str(write_csv(tmp_path / "train.csv", rows)), val_size=0.1, test_size=0.1).load()
    assert (len(splits.train), len(splits.val), len(splits.test)) == (80, 10, 10)


def test_text_files_uses_given_val_and_test_files_as_is(tmp_path):
    train, val, test = make_rows({"a": 6, "b": 6}, seed=1), make_rows({"a": 2, "b": 3}, seed=2), make_rows({"b": 2}, seed=3)
    splits = TextFiles(str(write_csv(tmp_path / "tr.csv", train)), str(write_jsonl(tmp_path / "va.jsonl", val)),
                       str(write_csv(tmp_path / "te.csv", test))).load()
    assert (splits.train, splits.val, splits.test) == (train, val, test)
    assert splits.origin["val"].endswith("va.jsonl")


def test_text_files_explicit_label_names_order_is_kept(tmp_path):
    rows = make_rows({"pos": 10, "neg": 10})
    names = ["pos", "neg"]  # not alphabetical
    splits = TextFiles(str(write_csv(tmp_path / "train.csv", rows)), label_names=names, val_size=4, test_size=4).load()
    assert splits.label_names == names and discover_labels(rows) != names


def test_text_files_train_label_outside_label_names(tmp_path):
    rows = make_rows({"pos": 10, "neg": 10, "meh": 4})
    path = write_csv(tmp_path / "labelled.csv", rows)
    with pytest.raises(DataError) as info:
        TextFiles(str(path), label_names=["pos", "neg"], val_size=4, test_size=4).load()
    message = str(info.value)
    assert "labelled.csv" in message and "['meh']" in message and "['pos', 'neg']" in message


def test_text_files_missing_file_names_the_setting(tmp_path):
    train = write_csv(tmp_path / "train.csv", make_rows({"a": 5, "b": 5}))
    with pytest.raises(DataError) as info:
        TextFiles(str(train), val=str(tmp_path / "no_val.csv")).load()
    assert "no_val.csv" in str(info.value) and "data.val" in str(info.value)


def test_text_files_val_label_missing_from_train(tmp_path):
    train = write_csv(tmp_path / "train.csv", make_rows({"a": 5, "b": 5}))
    val = write_csv(tmp_path / "val.csv", [("x y", "a"), ("y z", "c")])
    with pytest.raises(DataError) as info:
        TextFiles(str(train), str(val), test_size=2).load()
    assert "val split" in str(info.value) and "val.csv" in str(info.value) and "['c']" in str(info.value)


# --------------------------------------------------------------------------- GLUE


def glue_rows(n_neg: int, n_pos: int, seed: int = 0) -> list[tuple[str, int]]:
    return [(t, {"negative": 0, "positive": 1}[lab]) for t, lab in make_rows({"negative": n_neg, "positive": n_pos}, seed)]


def test_glue_local_folder_dev_becomes_test_and_val_is_carved(tmp_path):
    train, dev = glue_rows(24, 16), glue_rows(5, 7, seed=1)
    train[0] = ('a "quoted" sentence , with comma', train[0][1])
    folder = write_glue(tmp_path / "SST-2", train, dev)
    splits = Glue("sst2", str(folder), val_size=8).load()
    names = ["negative", "positive"]
    assert splits.label_names == names
    assert splits.test == [(t, names[lab]) for t, lab in dev]
    assert len(splits.val) == 8 and len(splits.train) == len(train) - 8
    named_train = [(t, names[lab]) for t, lab in train]
    assert_stratified(splits.val, named_train, 8)
    assert sorted(splits.train + splits.val) == sorted(named_train)
    assert splits.origin["test"].endswith("dev.tsv")
    assert Glue("sst2", str(folder), val_size=8).load().val == splits.val  # fixed split seed


def test_glue_cola_names(tmp_path):
    folder = write_glue(tmp_path / "CoLA", glue_rows(6, 6), glue_rows(2, 2, seed=4))
    assert Glue("cola", str(folder), val_size=2).load().label_names == ["unacceptable", "acceptable"]


def test_glue_missing_dev_names_dev_tsv(tmp_path):
    folder = write_glue(tmp_path / "glue", glue_rows(4, 4), glue_rows(2, 2))
    (folder / "dev.tsv").unlink()
    with pytest.raises(DataError, match=r"dev\.tsv"):
        Glue("sst2", str(folder), val_size=2).load()


def test_glue_path_that_is_not_a_folder(tmp_path):
    file = write_lines(tmp_path / "train.tsv", ["sentence\tlabel", "a\t0"])
    with pytest.raises(DataError, match="is not a folder"):
        Glue("sst2", str(file)).load()
    with pytest.raises(DataError, match="is not a folder"):
        Glue("sst2", str(tmp_path / "absent")).load()


def test_glue_unsupported_task_is_a_config_error():
    with pytest.raises(ConfigError) as info:
        Glue("squad", "/anywhere")
    assert "'squad'" in str(info.value) and "sst2" in str(info.value) and "mnli" in str(info.value)


def test_glue_label_outside_range_names_file_and_row(tmp_path):
    folder = write_glue(tmp_path / "glue", glue_rows(4, 4), glue_rows(2, 2))
    lines = (folder / "train.tsv").read_text().splitlines()
    lines[3] = "a sentence with a bad label\t2"
    write_lines(folder / "train.tsv", lines)
    with pytest.raises(DataError) as info:
        Glue("sst2", str(folder), val_size=2).load()
    assert "train.tsv:4:" in str(info.value) and "'2'" in str(info.value)


def test_glue_bad_label_line_number_counts_blank_lines(tmp_path):
    folder = write_glue(tmp_path / "glue", glue_rows(4, 4), glue_rows(2, 2))
    lines = (folder / "train.tsv").read_text().splitlines()
    lines[2] = ""
    lines[4] = "a sentence with a bad label\t2"
    write_lines(folder / "train.tsv", lines)
    with pytest.raises(DataError, match=r"train\.tsv:5: label '2'"):
        Glue("sst2", str(folder), val_size=2).load()


@needs_sst2()
def test_real_sst2_counts_and_dev_balance():
    val_size = 872
    raw_train = (SST2_DIR / "train.tsv").read_text(encoding="utf-8").splitlines()
    assert len(raw_train) - 1 == 67349  # header + 67,349 GLUE SST-2 training rows
    splits = Glue("sst2", str(SST2_DIR), val_size=val_size).load()
    assert (len(splits.train), len(splits.val), len(splits.test)) == (67349 - val_size, val_size, 872)
    assert label_counts(splits.test) == {"negative": 428, "positive": 444}
    assert_stratified(splits.val, splits.train + splits.val, val_size)
    # Train + val are exactly the TSV's rows, sentences stripped, labels named (the split only moves rows).
    parsed = [line.split("\t") for line in raw_train[1:]]
    named = [(text.strip(), ["negative", "positive"][int(lab)]) for text, lab in parsed]
    assert sorted(splits.train + splits.val) == sorted(named)


# --------------------------------------------------------------------------- subsample


@pytest.fixture(scope="module")
def pool() -> list[tuple[str, str]]:
    return make_rows({"a": 70, "b": 20, "c": 10}, seed=5)


def test_subsample_none_returns_everything(pool):
    assert subsample(pool, None, None, seed=0) == pool
    assert subsample(pool, 1.0, None, seed=0) == pool
    assert subsample(pool, len(pool), None, seed=0) == pool


@pytest.mark.parametrize("size", [30, 0.3, 7, 0.55])
def test_subsample_train_size_exact_and_stratified(pool, size):
    got = subsample(pool, size, None, seed=1)
    expected = size if isinstance(size, int) else round(size * len(pool))
    assert len(got) == expected
    assert_stratified(got, pool, expected)
    assert set(got) <= set(pool) and len(set(got)) == len(got)


def test_subsample_shots_per_class(pool):
    got = subsample(pool, None, 4, seed=0)
    assert label_counts(got) == {label: 4 for label in label_counts(pool)}
    assert set(got) <= set(pool)
    both = subsample(pool, 6, 4, seed=0)  # shots first, then a stratified count of those
    assert len(both) == 6 and set(both) <= set(got)


def test_subsample_too_many_shots_names_the_class(pool):
    smallest, n = min(label_counts(pool).items(), key=lambda kv: kv[1])
    with pytest.raises(ConfigError) as info:
        subsample(pool, None, n + 1, seed=0)
    assert repr(smallest) in str(info.value) and f"only {n}" in str(info.value)
    assert len(subsample(pool, None, n, seed=0)) == n * len(label_counts(pool))


@pytest.mark.parametrize("train_size, shots", [(101, None), (0, None), (-0.5, None), (None, 0)])
def test_subsample_invalid_sizes_are_config_errors(pool, train_size, shots):
    with pytest.raises(ConfigError):
        subsample(pool, train_size, shots, seed=0)


def test_subsample_train_size_larger_than_split_names_the_size(pool):
    with pytest.raises(ConfigError) as info:
        subsample(pool, len(pool) + 1, None, seed=0)
    assert f"train_size={len(pool) + 1}" in str(info.value) and f"has {len(pool)} rows" in str(info.value)


def test_subsample_fraction_above_one_is_a_config_error(pool):
    with pytest.raises(ConfigError):
        subsample(pool, 1.5, None, seed=0)


def test_subsample_is_seeded(pool):
    assert subsample(pool, 20, None, seed=3) == subsample(pool, 20, None, seed=3)
    assert subsample(pool, 20, None, seed=3) != subsample(pool, 20, None, seed=4)
    assert subsample(pool, None, 3, seed=3) == subsample(pool, None, 3, seed=3)
    assert subsample(pool, None, 3, seed=3) != subsample(pool, None, 3, seed=4)


# --------------------------------------------------------------------------- TrainBatchSampler


def skewed_lengths(n: int, seed: int = 0) -> list[int]:
    """Token counts shaped like SST-2's: most rows short, a long tail."""
    rng = random.Random(seed)
    return [min(128, int(math.exp(rng.gauss(2.5, 0.6))) + 2) for _ in range(n)]


@pytest.mark.parametrize("group", [True, False])
@pytest.mark.parametrize("n, bs", [(1000, 32), (37, 8), (5, 16)])
def test_sampler_yields_every_index_once_per_epoch(group, n, bs):
    sampler = TrainBatchSampler(skewed_lengths(n), bs, seed=2, group_by_length=group, chunk_batches=4)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) == math.ceil(n / bs)
        assert sorted(i for b in batches for i in b) == list(range(n))
        assert all(1 <= len(b) <= bs for b in batches)


@pytest.mark.parametrize("group", [True, False])
def test_sampler_is_seeded_per_epoch(group):
    lengths = skewed_lengths(500)
    a = TrainBatchSampler(lengths, 16, seed=7, group_by_length=group)
    b = TrainBatchSampler(lengths, 16, seed=7, group_by_length=group)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b) == a.batches(3)
    assert a.batches(0) != a.batches(1)
    assert TrainBatchSampler(lengths, 16, seed=8, group_by_length=group).batches(3) != a.batches(3)


def test_length_grouping_cuts_padding():
    lengths = skewed_lengths(4000)
    stats = {}
    for group in (True, False):
        batches = TrainBatchSampler(lengths, 32, seed=0, group_by_length=group).batches(0)
        widths = [max(lengths[i] for i in b) for b in batches]
        padded = sum(w * len(b) for w, b in zip(widths, batches, strict=True))
        stats[group] = (sum(widths) / len(widths), padded - sum(lengths))
    (grouped_width, grouped_pad), (random_width, random_pad) = stats[True], stats[False]
    assert grouped_width < 0.6 * random_width
    assert grouped_pad < 0.2 * random_pad
    assert grouped_pad < 0.2 * sum(lengths)  # grouped batches are mostly real tokens


def test_length_grouped_batches_look_shuffled():
    lengths = skewed_lengths(2000)
    batches = TrainBatchSampler(lengths, 32, seed=0, group_by_length=True, chunk_batches=10).batches(0)
    widths = [max(lengths[i] for i in b) for b in batches]
    assert widths != sorted(widths) and widths != sorted(widths, reverse=True)


def test_resume_at_skips_first_batches_of_that_epoch_only():
    lengths = skewed_lengths(300)
    sampler = TrainBatchSampler(lengths, 10, seed=1)
    full = {e: sampler.batches(e) for e in range(3)}
    sampler.resume_at(1, 7)
    sampler.set_epoch(1)
    assert list(sampler) == full[1][7:]
    sampler.set_epoch(1)
    assert list(sampler) == full[1], "the skip applies once, to the resumed epoch"
    sampler.set_epoch(2)
    assert list(sampler) == full[2]

    sampler.resume_at(0, len(sampler))  # resumed exactly at the end of an epoch
    sampler.set_epoch(0)
    assert list(sampler) == []
    sampler.set_epoch(1)
    assert list(sampler) == full[1]


def test_resume_at_for_another_epoch_warns_and_skips_nothing(caplog):
    sampler = TrainBatchSampler(skewed_lengths(100), 10, seed=1)
    sampler.resume_at(2, 4)
    sampler.set_epoch(0)
    assert list(sampler) == sampler.batches(0)
    assert "(epoch 2, batch 4) does not match the resumed epoch 0" in caplog.text


def test_resume_applies_to_the_first_epoch_only():
    sampler = TrainBatchSampler(skewed_lengths(100), 10, seed=1)
    sampler.resume_at(2, 4)
    sampler.set_epoch(2)
    assert list(sampler) == sampler.batches(2)[4:]
    assert list(sampler) == sampler.batches(2)  # iterated again: the whole epoch


def test_epoch_fn_decides_the_order_over_set_epoch():
    epoch = {"now": 3}
    sampler = TrainBatchSampler(skewed_lengths(100), 10, seed=1, epoch_fn=lambda: epoch["now"])
    sampler.set_epoch(0)
    assert list(sampler) == sampler.batches(3) != sampler.batches(0)
    epoch["now"] = 4
    assert list(sampler) == sampler.batches(4)


def test_lightning_fit_reshuffles_every_epoch(tiny_bert, tmp_path):
    """Each epoch trains on that epoch's own order (Lightning's set_epoch never reaches a batch sampler
    without a .sampler attribute, so every epoch used to repeat epoch 0's batches)."""
    from functools import partial

    import lightning as L
    import torch

    from sft.data.sources import PackagedSample
    from sft.data.text import TextDataModule
    from sft.models.classifier import TextClassifier

    seen: dict[int, list[list[int]]] = {}

    class RecordBatches(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.setdefault(trainer.current_epoch, []).append(batch["input_ids"][:, 1].tolist())

    dm = TextDataModule(PackagedSample(), tokenizer=tiny_bert, batch_size=32, max_length=32, seed=5)
    dm.prepare_data()
    model = TextClassifier(tiny_bert, num_labels=2, id2label=dm.id2label, optimizer=partial(torch.optim.AdamW, lr=1e-3))
    trainer = L.Trainer(max_epochs=2, limit_val_batches=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[RecordBatches()],
                        default_root_dir=tmp_path)
    trainer.fit(model, datamodule=dm)
    train = dm.datasets["train"]
    sampler = TrainBatchSampler(train.lengths(), 32, seed=5)
    for epoch in (0, 1):
        expected = [[int(train[i]["input_ids"][1]) for i in batch] for batch in sampler.batches(epoch)]
        assert seen[epoch] == expected, f"epoch {epoch} did not train on its own order"
    assert seen[0] != seen[1]


def test_sampler_rejects_zero_batch_size():
    with pytest.raises(ValueError):
        TrainBatchSampler([3, 4], 0, seed=0)


# --------------------------------------------------------------------------- PadCollator


def test_pad_collator_pads_masks_and_labels():
    seqs = [[101, 5, 6, 102], [101, 7, 8, 9, 10, 102], [101, 102]]
    labels = [1, 0, 2]
    items = [(torch.tensor(s), lab) for s, lab in zip(seqs, labels, strict=True)]
    pad = 9999
    batch = PadCollator(pad)(items)
    width = max(map(len, seqs))
    assert batch["input_ids"].shape == (len(seqs), width) and batch["input_ids"].dtype == torch.long
    for row, seq in enumerate(seqs):
        assert batch["input_ids"][row, : len(seq)].tolist() == seq
        assert batch["input_ids"][row, len(seq):].tolist() == [pad] * (width - len(seq))
        assert batch["attention_mask"][row].tolist() == [1] * len(seq) + [0] * (width - len(seq))
    assert batch["labels"].tolist() == labels and batch["labels"].dtype == torch.long


# --------------------------------------------------------------------------- TextDataModule (real tokenizer)


@pytest.fixture(scope="module")
def tokenizer(minilm_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path)


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    """Small explicit train/val/test CSVs with texts of very different lengths."""
    train = make_rows({"pos": 20, "neg": 20}, seed=11, max_words=30)
    val = make_rows({"pos": 5, "neg": 6}, seed=12, max_words=30)
    test = make_rows({"pos": 4, "neg": 4}, seed=13)
    return {name: write_csv(tmp_path / f"{name}.csv", rows) for name, rows in
            (("train", train), ("val", val), ("test", test))}


def source_of(files: dict[str, Path], **kwargs) -> TextFiles:
    return TextFiles(str(files["train"]), str(files["val"]), str(files["test"]), **kwargs)


def cache_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def test_cache_written_once_and_reused(files, minilm_path, tmp_path):
    from sft.data.text import TextDataModule

    # The tokenizer as a folder, as in real runs: each DataModule loads its own.
    cache = tmp_path / "cache"
    dm = TextDataModule(source_of(files), minilm_path, max_length=32, cache_dir=cache)
    dm.prepare_data()
    written = cache_files(cache)
    assert written == [dm.cache_file] and dm.cache_file.suffix == ".pt"
    mtime = dm.cache_file.stat().st_mtime_ns

    again = TextDataModule(source_of(files), minilm_path, max_length=32, cache_dir=cache)
    again.prepare_data()
    assert again.cache_file == dm.cache_file
    assert cache_files(cache) == written and dm.cache_file.stat().st_mtime_ns == mtime
    again.setup("fit")
    assert cache_files(cache) == written
    assert again.datasets["train"].ids.tolist()  # loaded from the cache file

    longer = TextDataModule(source_of(files), minilm_path, max_length=33, cache_dir=cache)
    longer.prepare_data()
    assert longer.cache_file != dm.cache_file and len(cache_files(cache)) == 2

    rows = list(csv.reader(files["train"].open(encoding="utf-8")))
    rows[5][0] = rows[5][0] + "s"  # one character of one row
    with files["train"].open("w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows(rows)
    edited = TextDataModule(source_of(files), minilm_path, max_length=32, cache_dir=cache)
    edited.prepare_data()
    assert edited.cache_file not in (dm.cache_file, longer.cache_file) and len(cache_files(cache)) == 3
    assert dm.cache_file.stat().st_mtime_ns == mtime


def test_cache_reused_with_the_same_tokenizer_object(files, minilm_path, tmp_path):
    from transformers import AutoTokenizer

    from sft.data.text import TextDataModule

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    first = TextDataModule(source_of(files), tokenizer, max_length=32, cache_dir=tmp_path / "c")
    first.prepare_data()
    second = TextDataModule(source_of(files), tokenizer, max_length=32, cache_dir=tmp_path / "c")
    second.prepare_data()
    assert second.cache_file == first.cache_file
    assert cache_files(tmp_path / "c") == [first.cache_file]


def test_default_cache_dir_is_under_sft_cache(files, tokenizer, tmp_path, monkeypatch):
    from sft.data.text import TextDataModule

    monkeypatch.setenv("SFT_CACHE", str(tmp_path / "sft_home"))
    dm = TextDataModule(source_of(files), tokenizer, max_length=16)
    dm.prepare_data()
    assert cache_files(tmp_path / "sft_home") == [dm.cache_file]
    assert dm.cache_file.parent == tmp_path / "sft_home" / "tokenized"


def test_token_ids_match_the_tokenizer_and_labels_follow_label_names(files, tokenizer, tmp_path):
    from sft.data.text import TextDataModule

    max_length = 12
    names = ["pos", "neg"]  # not alphabetical: ids must follow this order
    dm = TextDataModule(source_of(files, label_names=names), str(Path(tokenizer.name_or_path)),
                        max_length=max_length, cache_dir=tmp_path / "c")
    assert dm.label_names == names
    assert dm.label2id == {"pos": 0, "neg": 1} and dm.id2label == {0: "pos", 1: "neg"}
    dm.prepare_data()
    dm.setup("fit")
    truncated = 0
    for split in ("train", "val", "test"):
        rows = read_table(files[split], "text", "label")
        dataset = dm.datasets[split]
        assert len(dataset) == len(rows)
        for i, (text, label) in enumerate(rows):
            ids, label_id = dataset[i]["input_ids"], dataset[i]["labels"]
            assert ids.tolist() == tokenizer(text, truncation=True, max_length=max_length)["input_ids"]
            assert label_id == names.index(label)
            full = tokenizer(text)["input_ids"]
            if len(full) > max_length:
                truncated += 1
                assert len(ids) == max_length and ids[-1].item() == tokenizer.sep_token_id
    assert truncated > 0, "the data should include rows longer than max_length"


def test_train_batches_are_padded_per_batch_and_cover_train(files, tokenizer, tmp_path):
    from sft.data.text import TextDataModule

    max_length = 128
    dm = TextDataModule(source_of(files), tokenizer, batch_size=8, max_length=max_length, cache_dir=tmp_path / "c")
    dm.prepare_data()
    dm.setup("fit")
    lengths = dm.datasets["train"].lengths()
    assert max(lengths) < max_length
    seen = []
    batches = list(dm.train_dataloader())
    assert len(batches) == math.ceil(len(lengths) / 8)
    for batch in batches:
        real = batch["attention_mask"].sum(1)
        assert batch["input_ids"].shape[1] == int(real.max()) < max_length
        assert (batch["input_ids"][batch["attention_mask"] == 0] == tokenizer.pad_token_id).all()
        seen.extend(real.tolist())
    assert sorted(seen) == sorted(lengths)
    assert len({b["input_ids"].shape[1] for b in batches}) > 1


def test_val_loader_keeps_file_order(files, tokenizer, tmp_path):
    from sft.data.text import TextDataModule

    dm = TextDataModule(source_of(files), tokenizer, batch_size=4, max_length=64, cache_dir=tmp_path / "c")
    dm.prepare_data()
    dm.setup("fit")
    label2id = dm.label2id
    for split, loader in (("val", dm.val_dataloader()), ("test", dm.test_dataloader())):
        rows = read_table(files[split], "text", "label")
        got_ids, got_labels = [], []
        for batch in loader:
            for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True):
                got_ids.append(ids[mask.bool()].tolist())
            got_labels.extend(batch["labels"].tolist())
        assert got_ids == [tokenizer(t, truncation=True, max_length=64)["input_ids"] for t, _ in rows]
        assert got_labels == [label2id[lab] for _, lab in rows]


def test_full_batch_is_one_batch_of_all_rows(files, tokenizer, tmp_path):
    from sft.data.text import TextDataModule

    dm = TextDataModule(source_of(files), tokenizer, batch_size="full", max_length=64, cache_dir=tmp_path / "c")
    dm.prepare_data()
    dm.setup("fit")
    n_train = len(read_table(files["train"], "text", "label"))
    batches = list(dm.train_dataloader())
    assert len(batches) == 1 and batches[0]["labels"].shape == (n_train,)
    assert len(list(dm.val_dataloader())) == 1


@pytest.mark.parametrize("kwargs", [{"batch_size": 0}, {"batch_size": -1}, {"batch_size": "abc"},
                                    {"batch_size": 2.5}, {"max_length": 1}, {"max_length": 0},
                                    {"max_length": "64"}, {"tokenizer": None}])
def test_bad_datamodule_settings_are_config_errors(files, tokenizer, kwargs):
    from sft.data.text import TextDataModule

    args = {"tokenizer": tokenizer, **kwargs}
    with pytest.raises(ConfigError) as info:
        TextDataModule(source_of(files), **args)
    setting = next(iter(kwargs))
    if setting != "tokenizer":
        assert f"data.{setting}" in str(info.value)


def test_datamodule_subsets_train_only(files, tokenizer, tmp_path):
    from sft.data.text import TextDataModule

    dm = TextDataModule(source_of(files), tokenizer, shots_per_class=3, max_length=32, cache_dir=tmp_path / "c",
                        seed=4)
    dm.prepare_data()
    dm.setup("fit")
    assert label_counts(dm.splits.train) == {"neg": 3, "pos": 3}
    assert len(dm.datasets["train"]) == 6
    assert len(dm.datasets["val"]) == len(read_table(files["val"], "text", "label"))
    assert dm.label_names == ["neg", "pos"]

    sized = TextDataModule(source_of(files), tokenizer, train_size=0.25, max_length=32, cache_dir=tmp_path / "c")
    sized.prepare_data()
    assert len(sized.load_splits().train) == round(0.25 * 40)
    assert sized.cache_file != dm.cache_file


def test_datamodule_fixed_label_names_override_discovered_order(files, tokenizer, tmp_path):
    from sft.data.text import TextDataModule

    dm = TextDataModule(source_of(files), tokenizer, label_names=["pos", "neg"], max_length=16,
                        cache_dir=tmp_path / "c")
    assert dm.label2id == {"pos": 0, "neg": 1}
    dm.prepare_data()
    dm.setup("fit")
    rows = read_table(files["train"], "text", "label")
    assert dm.datasets["train"].labels.tolist() == [["pos", "neg"].index(lab) for _, lab in rows]
    with pytest.raises(DataError):
        TextDataModule(source_of(files), tokenizer, label_names=["pos", "other"]).load_splits()


def test_datamodule_does_not_mutate_a_textsplits_source(tokenizer):
    from sft.data.text import TextDataModule

    rows = make_rows({"a": 20, "b": 20})
    source = splits_of(rows)
    first = TextDataModule(source, tokenizer, train_size=0.5).load_splits()
    second = TextDataModule(source, tokenizer, train_size=0.5).load_splits()
    assert len(first.train) == len(second.train) == 20
    assert source.train == rows


def test_builders_make_datamodules(files, tokenizer, tmp_path):
    from sft.data.text import glue, sample, text_file

    dm = text_file(train=str(files["train"]), val_size=4, test_size=4, tokenizer=tokenizer, max_length=16,
                   cache_dir=tmp_path / "c")
    splits = dm.load_splits()
    assert (len(splits.val), len(splits.test)) == (4, 4) and dm.label_names == ["neg", "pos"]

    folder = write_glue(tmp_path / "glue", glue_rows(6, 6), glue_rows(3, 2, seed=9))
    g = glue(path=str(folder), val_size=4, tokenizer=tokenizer, cache_dir=tmp_path / "c")
    assert g.label_names == ["negative", "positive"] and len(g.load_splits().test) == 5

    s = sample(tokenizer=tokenizer, max_length=16, cache_dir=tmp_path / "c")
    s.prepare_data()
    s.setup("fit")
    assert {k: len(v) for k, v in s.datasets.items()} == {"train": 480, "val": 120, "test": 120}


# --------------------------------------------------------------------------- packaged sample


def test_packaged_sample_sizes_balance_and_no_leaks():
    splits = PackagedSample().load()
    assert splits.label_names == ["negative", "positive"]
    sizes = {"train": 480, "val": 120, "test": 120}
    texts = {}
    for name, size in sizes.items():
        rows = splits.split(name)
        assert len(rows) == size
        assert label_counts(rows) == {"negative": size // 2, "positive": size // 2}
        texts[name] = [t for t, _ in rows]
        assert len(set(texts[name])) == size, f"duplicate texts in {name}"
    assert not set(texts["train"]) & set(texts["val"])
    assert not set(texts["train"]) & set(texts["test"])
    assert not set(texts["val"]) & set(texts["test"])
    assert all(splits.origin[name].endswith(f"{name}.jsonl") for name in sizes)
