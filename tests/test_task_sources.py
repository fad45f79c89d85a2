"""Task sources (issue #14): GLUE's nine tasks, sentence pairs, regression, multi-label and token classification.

The real public files in ../shared/data (GLUE CoLA / MRPC / RTE / STS-B, CoNLL-2003, GoEmotions) give the counts
and reading pitfalls of their README; files written to tmp_path give the line-numbered errors. Nothing is mocked.
Each real file is read once per module (module-scoped fixtures).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from sft.data.conll import TokenFiles, iob1_to_iob2, read_conll, read_token_jsonl
from sft.data.glue import GLUE_TASKS, Glue
from sft.data.goemotions import GoEmotions, read_emotion_names, read_goemotions
from sft.data.sources import (
    TextFiles,
    TextSplits,
    carve,
    discover_multi_labels,
    iob2_error,
    random_split,
    read_table,
    stratified_split,
    subsample,
    tag_names,
)
from sft.errors import ConfigError, DataError
from tests.conftest import write_lines

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data {path} not found (the ../shared/data folder of this checkout is absent)")
    return path


def raw_rows(path: Path) -> list[list[str]]:
    """A GLUE TSV's data rows split on tabs, as GLUE's own reader does (no quoting, BOM dropped)."""
    return [line.split("\t") for line in path.read_text(encoding="utf-8-sig").splitlines()[1:]]


# --------------------------------------------------------------------------- real files, read once


@pytest.fixture(scope="module")
def glue_real() -> dict[str, TextSplits]:
    return {task: Glue(task, str(shared(task)), val_size=0.1).load() for task in ("cola", "mrpc", "rte", "stsb")}


@pytest.fixture(scope="module")
def conll_real() -> dict[str, list]:
    return {name: read_conll(shared("conll2003", name)) for name in ("eng.train", "eng.testa")}


@pytest.fixture(scope="module")
def goemotions_real() -> TextSplits:
    return GoEmotions(str(shared("goemotions")), val_size=0.1).load()


GLUE_COUNTS = {  # README: rows of train.tsv (train + carved val) and dev.tsv (the test split), label counts
    "cola": (8551, 1043, {"acceptable": 6023, "unacceptable": 2528}, {"acceptable": 721, "unacceptable": 322}),
    "mrpc": (3668, 408, {"equivalent": 2474, "not_equivalent": 1194}, {"equivalent": 279, "not_equivalent": 129}),
    "rte": (2490, 277, {"entailment": 1249, "not_entailment": 1241}, {"entailment": 146, "not_entailment": 131}),
}


@pytest.mark.parametrize("task", sorted(GLUE_COUNTS))
def test_real_glue_classification_counts(glue_real, task):
    splits = glue_real[task]
    n_train, n_dev, train_labels, dev_labels = GLUE_COUNTS[task]
    assert len(splits.train) + len(splits.val) == n_train and len(splits.test) == n_dev
    assert len(splits.val) == round(0.1 * n_train)
    assert Counter(label for _, label in splits.train + splits.val) == train_labels
    assert Counter(label for _, label in splits.test) == dev_labels
    assert splits.task == "single_label" and splits.pair == (task != "cola")
    assert splits.label_names == list(GLUE_TASKS[task].names)
    assert splits.positive_label == ("equivalent" if task == "mrpc" else None)


def test_real_stsb_is_pair_regression_with_readme_counts(glue_real):
    splits = glue_real["stsb"]
    assert (splits.task, splits.pair, splits.label_names) == ("regression", True, ["score"])
    train = splits.train + splits.val
    assert (len(train), len(splits.test)) == (5749, 1500)
    assert round(statistics.mean(s for _, s in train), 3) == 2.701
    assert round(statistics.mean(s for _, s in splits.test), 3) == 2.364

    def bins(rows):  # 0-1 / 1-2 / 2-3 / 3-4 / 4-5, left-closed, 5.0 in 4-5
        return [sum(1 for _, s in rows if lo <= s < lo + 1 or (lo == 4 and s == 5)) for lo in range(5)]

    assert bins(train) == [891, 882, 982, 1588, 1406]
    assert bins(splits.test) == [344, 254, 273, 365, 264]


@pytest.mark.parametrize("task, columns", [("stsb", (7, 8, 9)), ("rte", (1, 2, 3)), ("mrpc", (3, 4, 0))])
def test_real_glue_rows_with_quotes_are_kept_whole(glue_real, task, columns):
    # Quotes are text in GLUE's TSVs: CSV quoting would merge rows (STS-B: 5,711 instead of 5,749).
    a, b, label = columns
    splits = glue_real[task]
    train_rows = raw_rows(shared(task, "train.tsv"))
    quoted = [r for r in train_rows if '"' in r[a] + r[b]]
    assert len(quoted) > 200
    names = splits.label_names

    def expected(r):
        target = float(r[label]) if task == "stsb" else (names[int(r[label])] if task == "mrpc" else r[label])
        return (r[a].strip(), r[b].strip()), target

    assert sorted(splits.train + splits.val, key=repr) == sorted(map(expected, train_rows), key=repr)
    if task == "stsb":  # an unbalanced quote at the start of a sentence (index 2001) stays in that one row
        assert ('"Then the captain was gone.', "Then the captain came back.") in {x for x, _ in splits.train + splits.val}


def test_real_mrpc_bom_header_is_found():
    path = shared("mrpc", "train.tsv")
    assert path.read_bytes().startswith(b"\xef\xbb\xbfQuality\t")
    # The first header field is "Quality", not "\ufeffQuality": the label column is found.
    rows = read_table(path, "#1 String", "Quality", text_pair_column="#2 String")
    assert len(rows) == 3668 and rows[0][1] == "1" and rows[0][0][0].startswith("Amrozi accused his brother")


def test_real_cola_has_no_header_row(glue_real):
    first = shared("cola", "train.tsv").read_text(encoding="utf-8").split("\n", 1)[0].split("\t")
    assert first[0] == "gj04"  # a data row: GLUE's CoLA files have no header
    texts = {t for t, _ in glue_real["cola"].train + glue_real["cola"].val}
    assert first[3] in texts


def test_real_conll2003_counts_and_iob2_entities(conll_real):
    expected = {"eng.train": (14041, 203621, {"PER": 6600, "LOC": 7140, "ORG": 6321, "MISC": 3438}),
                "eng.testa": (3250, 51362, {"PER": 1842, "LOC": 1837, "ORG": 1341, "MISC": 922})}
    for name, (sentences, tokens, entities) in expected.items():
        rows = conll_real[name]
        assert len(rows) == sentences and sum(len(words) for words, _ in rows) == tokens
        # After IOB1 -> IOB2 every entity starts with exactly one B- tag.
        assert Counter(t[2:] for _, tags in rows for t in tags if t.startswith("B-")) == entities
        assert all(iob2_error(tags) is None and len(tags) == len(words) for words, tags in rows)
    assert tag_names(conll_real["eng.train"]) == ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG",
                                                  "B-PER", "I-PER"]


def test_real_conll2003_iob1_conversion(conll_real):
    rows = conll_real["eng.train"]
    first_words, first_tags = rows[0]  # -DOCSTART- and its blank line skipped
    assert first_words[:3] == ("EU", "rejects", "German")
    assert first_tags[:3] == ("B-ORG", "O", "B-MISC")  # file: I-ORG O I-MISC (I-X after O / at the start)
    golan = next(tags[i:i + 3] for words, tags in rows for i in range(len(words) - 2)
                 if words[i:i + 3] == ("Golan", "Heights", "Israel"))
    assert golan == ("B-LOC", "I-LOC", "B-LOC")  # file: I-LOC I-LOC B-LOC (B-X after I-X of the same type stays)
    # Over the whole file: an I-X after O / another type / the sentence start becomes B-X; every other tag is
    # kept, the file's B- tags included (11 B-LOC, 37 B-MISC, 24 B-ORG: 70 split two entities of one type, 2
    # B-MISC follow an O, on lines 152428 and 175436).
    raw_sentences = [[line.split()[-1] for line in block.splitlines()]
                     for block in shared("conll2003", "eng.train").read_text().split("\n\n")
                     if block.strip() and not block.startswith("-DOCSTART-")]
    assert [len(tags) for tags in raw_sentences] == [len(tags) for _, tags in rows]
    raw_b = Counter(t for tags in raw_sentences for t in tags if t.startswith("B-"))
    assert raw_b == {"B-LOC": 11, "B-MISC": 37, "B-ORG": 24}
    for raw, (_, tags) in zip(raw_sentences, rows, strict=True):
        for i, (before, after) in enumerate(zip(raw, tags, strict=True)):
            starts = before.startswith("I-") and (i == 0 or raw[i - 1] == "O" or raw[i - 1][2:] != before[2:])
            assert after == ("B-" + before[2:] if starts else before)
    after_same_type = sum(1 for raw in raw_sentences for i, t in enumerate(raw)
                          if t.startswith("B-") and i and raw[i - 1][2:] == t[2:])
    assert after_same_type == 70


def test_real_conll2003_token_files_source(conll_real):
    splits = TokenFiles(str(shared("conll2003")), val_size=0.1).load()
    assert splits.task == "token" and not splits.pair
    assert splits.label_names == tag_names(conll_real["eng.train"])
    assert (len(splits.train), len(splits.val), len(splits.test)) == (14041 - 1404, 1404, 3250)
    assert sorted(splits.train + splits.val) == sorted(conll_real["eng.train"])
    assert splits.test == conll_real["eng.testa"]
    assert splits.origin["test"].endswith("eng.testa") and "carved" in splits.origin["val"]


def test_real_goemotions_counts_and_labels(goemotions_real):
    splits = goemotions_real
    assert splits.task == "multi_label" and len(splits.label_names) == 28
    assert splits.label_names[0] == "admiration" and splits.label_names[27] == "neutral"
    train = splits.train + splits.val
    assert (len(train), len(splits.test)) == (43410, 5426)
    counts = Counter(label for _, labels in train for label in labels)
    assert (counts["neutral"], counts["admiration"], counts["grief"]) == (14219, 4130, 77)
    assert Counter(len(labels) for _, labels in train) == {1: 36308, 2: 6541, 3: 532, 4: 28, 5: 1}
    assert Counter(len(labels) for _, labels in splits.test) == {1: 4548, 2: 809, 3: 62, 4: 7}
    order = {name: i for i, name in enumerate(splits.label_names)}
    assert all(list(labels) == sorted(labels, key=order.get) for _, labels in train)


def test_real_goemotions_quoted_texts_lose_their_quotes(goemotions_real):
    raw = shared("goemotions", "train.tsv").read_text(encoding="utf-8").splitlines()
    assert raw[123].startswith('"Three words, no subtlety. ""Dude. Stop. Seriously."" "\t')
    texts = {t for t, _ in goemotions_real.train + goemotions_real.val}
    assert 'Three words, no subtlety. "Dude. Stop. Seriously."' in texts
    quoted = [line for line in raw if line.startswith('"')]
    assert len(quoted) == 1097  # README: 1,097 CSV-quoted training texts
    assert not any(t.startswith('"') and t.endswith('"') and '""' in t for t in texts)


# --------------------------------------------------------------------------- GLUE: every task, from tmp folders

GLUE_FILES = {  # header, one row per label value, the label values (ids or names) as the local files write them
    "cola": (None, ["src\t{label}\t\ta sentence {i}"], ("0", "1")),
    "sst2": ("sentence\tlabel", ["a sentence {i} \t{label}"], ("0", "1")),
    "mrpc": ("\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String", ["{label}\t1\t2\tfirst {i}\tsecond {i}"], ("0", "1")),
    "qqp": ("id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate", ["{i}\t1\t2\tq one {i}?\tq two {i}?\t{label}"],
            ("0", "1")),
    "stsb": ("index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore",
             ["{i}\tg\tf\t2012\t1\tnone\tnone\tfirst {i}\tsecond {i}\t{label}"], ("0.5", "4.25")),
    "mnli": ("index\tpromptID\tpairID\tgenre\tsentence1\tsentence2\tlabel1\tgold_label",
             ["{i}\t1\t2\tfiction\tpremise {i}\thypothesis {i}\t{label}\t{label}"],
             ("entailment", "neutral", "contradiction")),
    "qnli": ("index\tquestion\tsentence\tlabel", ["{i}\tquestion {i}?\tsentence {i}\t{label}"],
             ("entailment", "not_entailment")),
    "rte": ("index\tsentence1\tsentence2\tlabel", ["{i}\tfirst {i}\tsecond {i}\t{label}"],
            ("entailment", "not_entailment")),
    "wnli": ("index\tsentence1\tsentence2\tlabel", ["{i}\tfirst {i}\tsecond {i}\t{label}"], ("0", "1")),
}


def write_glue_task(folder: Path, task: str, n: int = 12) -> Path:
    header, (template,), values = GLUE_FILES[task]
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("train", *GLUE_TASKS[task].dev):
        body = [template.format(i=f"{name} {i}", label=values[i % len(values)]) for i in range(n)]
        write_lines(folder / f"{name}.tsv", [header, *body] if header else body)
    return folder


@pytest.mark.parametrize("task", sorted(GLUE_FILES))
def test_glue_every_task_from_a_local_folder(tmp_path, task):
    spec = GLUE_TASKS[task]
    splits = Glue(task, str(write_glue_task(tmp_path / task, task)), val_size=3).load()
    assert (len(splits.train), len(splits.val), len(splits.test)) == (9, 3, 12)
    assert splits.task == ("regression" if task == "stsb" else "single_label")
    assert splits.pair == (task not in ("cola", "sst2"))
    assert splits.positive_label == {"mrpc": "equivalent", "qqp": "duplicate"}.get(task)
    x, target = splits.test[0]
    if task == "stsb":
        assert splits.label_names == ["score"] and target == 0.5 and splits.test[1][1] == 4.25
    else:
        # Row 0 has the first label value: id 0 or the first name, both the first label name.
        assert splits.label_names == list(spec.names) and target == spec.names[0]
        assert {t for _, t in splits.test} == set(spec.names)
    if splits.pair:
        assert isinstance(x, tuple) and len(x) == 2
        assert ("dev_matched 0" if task == "mnli" else "dev 0") in x[0] and x[1].rstrip("?").endswith(" 0")
    if task == "mnli":
        assert set(splits.extra_test) == {"test_mismatched"}
        assert splits.split("test_mismatched")[0][0] == ("premise dev_mismatched 0", "hypothesis dev_mismatched 0")
        assert splits.origin["test"].endswith("dev_matched.tsv")
        assert splits.origin["test_mismatched"].endswith("dev_mismatched.tsv")
    else:
        assert splits.extra_test == {}


def test_glue_wnli_ids_follow_glue_order(tmp_path):
    splits = Glue("wnli", str(write_glue_task(tmp_path / "wnli", "wnli")), val_size=3).load()
    assert splits.label_names == ["not_entailment", "entailment"]  # WNLI: 0 = not_entailment
    assert splits.test[1][1] == "entailment"


def test_glue_unknown_task_lists_the_nine():
    with pytest.raises(ConfigError) as info:
        Glue("squad")
    message = str(info.value)
    assert "'squad'" in message and all(f"'{t}'" in message for t in GLUE_TASKS) and len(GLUE_TASKS) == 9


def test_glue_row_with_a_missing_field_names_file_and_line(tmp_path):
    folder = write_glue_task(tmp_path / "rte", "rte")
    lines = (folder / "train.tsv").read_text().splitlines()
    lines[4] = "3\tonly one sentence\tentailment"
    write_lines(folder / "train.tsv", lines)
    with pytest.raises(DataError) as info:
        Glue("rte", str(folder), val_size=3).load()
    message = str(info.value)
    assert f"{folder / 'train.tsv'}:5: expected 4 fields" in message and "found 3" in message and "Fix the row" in message


def test_glue_text_label_that_is_not_a_name(tmp_path):
    folder = write_glue_task(tmp_path / "rte", "rte")
    lines = (folder / "dev.tsv").read_text().splitlines()
    lines[2] = "1\tfirst\tsecond\tcontradiction"
    write_lines(folder / "dev.tsv", lines)
    with pytest.raises(DataError, match=r"dev\.tsv:3: label 'contradiction' is not one of "
                                         r"\['entailment', 'not_entailment'\]\. Fix the row"):
        Glue("rte", str(folder), val_size=3).load()


def test_glue_stsb_score_that_is_not_a_number(tmp_path):
    folder = write_glue_task(tmp_path / "stsb", "stsb")
    lines = (folder / "train.tsv").read_text().splitlines()
    lines[6] = lines[6].rsplit("\t", 1)[0] + "\thigh"
    write_lines(folder / "train.tsv", lines)
    with pytest.raises(DataError, match=r"train\.tsv:7: label 'high' in column 'score' is not a number\. .*fix"):
        Glue("stsb", str(folder), val_size=3).load()


def test_glue_mnli_needs_both_dev_files(tmp_path):
    folder = write_glue_task(tmp_path / "mnli", "mnli")
    (folder / "dev_mismatched.tsv").unlink()
    with pytest.raises(DataError, match=r"dev_mismatched\.tsv.*does not exist"):
        Glue("mnli", str(folder), val_size=3).load()


def test_glue_val_size_larger_than_train_is_a_config_error(tmp_path):
    folder = write_glue_task(tmp_path / "stsb", "stsb")
    with pytest.raises(ConfigError, match=r"data\.val_size=12: Cannot carve 12 rows out of 12: .*between 1 and 11"):
        Glue("stsb", str(folder), val_size=12).load()
    assert len(Glue("stsb", str(folder), val_size=11).load().val) == 11


# --------------------------------------------------------------------------- TextFiles: pairs, regression, multi-label


def test_text_files_sentence_pairs(tmp_path):
    path = write_lines(tmp_path / "pairs.csv", ["premise,hypothesis,label", *(
        f'"A man, {i}",Someone {i},{"yes" if i % 2 else "no"}' for i in range(20))])
    splits = TextFiles(str(path), text_column="premise", text_pair_column="hypothesis", val_size=4,
                       test_size=4).load()
    assert splits.pair and splits.label_names == ["no", "yes"]
    assert (("A man, 1", "Someone 1"), "yes") in splits.train + splits.val + splits.test


@pytest.mark.parametrize("second", ["", "   "])
def test_text_files_pair_with_empty_second_text(tmp_path, second):
    path = write_lines(tmp_path / "pairs.tsv", ["a\tb\tlabel", "one\ttwo\tx", f"three\t{second}\ty"])
    with pytest.raises(DataError) as info:
        read_table(path, "a", "label", text_pair_column="b")
    message = str(info.value)
    assert f"{path}:3: empty or missing text in column 'b'" in message and "Fix or remove the row" in message


def test_text_files_pair_column_missing_from_header_or_json(tmp_path):
    path = write_lines(tmp_path / "pairs.csv", ["a,label", "one,x"])
    with pytest.raises(DataError, match=r"pairs\.csv:1: header has no column 'b' .*data\.text_pair_column"):
        read_table(path, "a", "label", text_pair_column="b")
    path = write_lines(tmp_path / "pairs.jsonl", [json.dumps({"a": "one", "b": "two", "label": "x"}),
                                                  json.dumps({"a": "one", "label": "x"})])
    with pytest.raises(DataError, match=r"pairs\.jsonl:2: no key 'b' .*data\.text_pair_column"):
        read_table(path, "a", "label", text_pair_column="b")


def test_text_files_regression(tmp_path):
    path = write_lines(tmp_path / "scores.csv", ["text,score", *(f"text {i},{i / 4}" for i in range(20))])
    splits = TextFiles(str(path), label_column="score", task="regression", val_size=4, test_size=4).load()
    assert splits.task == "regression" and splits.label_names == ["score"]
    assert sorted(s for _, s in splits.train + splits.val + splits.test) == [i / 4 for i in range(20)]
    jsonl = write_lines(tmp_path / "scores.jsonl", [json.dumps({"text": "a", "score": 3}),
                                                    json.dumps({"text": "b", "score": " 2.5 "})])
    assert read_table(jsonl, "text", "score", task="regression") == [("a", 3.0), ("b", 2.5)]


@pytest.mark.parametrize("value, what", [("abc", "is not a number"), ("nan", "is not a finite number"),
                                         ("-inf", "is not a finite number")])
def test_text_files_regression_label_that_is_not_a_number(tmp_path, value, what):
    path = write_lines(tmp_path / "scores.csv", ["text,score", "fine,1.5", f"bad,{value}"])
    with pytest.raises(DataError) as info:
        TextFiles(str(path), label_column="score", task="regression").load()
    assert f"{path}:3: label '{value}' in column 'score' {what}" in str(info.value)
    assert "Fix the row" in str(info.value) or "fix the row" in str(info.value)


def test_text_files_multi_label_csv_and_jsonl(tmp_path):
    labels = ["2,10", "1", "10,1,2", "", "2"] * 4
    csv_path = write_lines(tmp_path / "multi.csv", ["text,labels", *(f'text {i},"{lab}"' for i, lab in
                                                                       enumerate(labels))])
    splits = TextFiles(str(csv_path), label_column="labels", task="multi_label", val_size=4, test_size=4).load()
    assert splits.task == "multi_label" and splits.label_names == ["1", "2", "10"]  # integer names: numeric order
    rows = {t: lab for t, lab in splits.train + splits.val + splits.test}
    assert rows["text 0"] == ("2", "10") and rows["text 2"] == ("1", "2", "10") and rows["text 3"] == ()

    jsonl = write_lines(tmp_path / "multi.jsonl", [json.dumps({"text": f"t{i}", "label": lab}) for i, lab in
                                                   enumerate([["joy", "anger"], [], ["anger"], ["joy"]] * 3)])
    splits = TextFiles(str(jsonl), task="multi_label", label_names=["joy", "anger"], val_size=2, test_size=2).load()
    assert splits.label_names == ["joy", "anger"]
    assert dict(splits.train + splits.val + splits.test)["t0"] == ("joy", "anger")
    assert read_table(tmp_path / "multi.jsonl", "text", "label", task="multi_label")[0] == ("t0", ("joy", "anger"))


def test_text_files_multi_label_delimiter(tmp_path):
    path = write_lines(tmp_path / "multi.tsv", ["text\tlabel", "one\ta|b", "two\tb", "three\ta"])
    assert read_table(path, "text", "label", task="multi_label", label_delimiter="|")[0] == ("one", ("a", "b"))


def test_text_files_multi_label_outside_label_names(tmp_path):
    path = write_lines(tmp_path / "multi.csv", ["text,label", 'one,"a,b"', 'two,"b,zebra"', "three,a"])
    with pytest.raises(DataError) as info:
        TextFiles(str(path), task="multi_label", label_names=["a", "b"]).load()
    message = str(info.value)
    assert f"{path}:3: label 'zebra' is not one of ['a', 'b']" in message and "data.label_names" in message


def test_text_files_multi_label_val_file_with_a_label_train_lacks(tmp_path):
    train = write_lines(tmp_path / "train.csv", ["text,label", 'one,"a,b"', "two,b", "three,a", "four,a"])
    val = write_lines(tmp_path / "val.csv", ["text,label", "v1,a", "v2,c"])
    with pytest.raises(DataError, match=r"val\.csv:3: label 'c' is not one of \['a', 'b'\]"):
        TextFiles(str(train), str(val), task="multi_label", test_size=1).load()


def test_text_files_token_task_points_to_conll():
    with pytest.raises(ConfigError) as info:
        TextFiles("train.csv", task="token")
    assert "data=conll2003" in str(info.value) and "sft/data/conll.py" in str(info.value)
    with pytest.raises(ConfigError, match=r"data\.task='ner' is not a task type"):
        TextFiles("train.csv", task="ner")


# --------------------------------------------------------------------------- CoNLL and token JSONL files

CONLL = ["-DOCSTART- -X- O O", "", "EU NNP I-NP I-ORG", "rejects VBZ I-VP O", "German JJ I-NP I-MISC", "",
         "Peter NNP I-NP I-PER", "Blackburn NNP I-NP I-PER", "", "Golan NNP I-NP I-LOC", "Heights NNP I-NP I-LOC",
         "Israel NNP I-NP B-LOC", "Syria NNP I-NP I-LOC", ""]


def test_iob1_to_iob2():
    assert iob1_to_iob2(["I-PER", "I-PER", "O", "I-LOC", "I-ORG", "B-ORG", "I-ORG"]) == (
        "B-PER", "I-PER", "O", "B-LOC", "B-ORG", "B-ORG", "I-ORG")
    iob2 = ("B-PER", "I-PER", "B-PER", "O")
    assert iob1_to_iob2(iob2) == iob2  # IOB2 passes through


def test_read_conll_skips_docstart_and_converts(tmp_path):
    rows = read_conll(write_lines(tmp_path / "eng.train", CONLL))
    assert rows == [(("EU", "rejects", "German"), ("B-ORG", "O", "B-MISC")),
                    (("Peter", "Blackburn"), ("B-PER", "I-PER")),
                    (("Golan", "Heights", "Israel", "Syria"), ("B-LOC", "I-LOC", "B-LOC", "I-LOC"))]


def test_read_conll_field_count_differs(tmp_path):
    lines = CONLL[:]
    lines[7] = "Blackburn I-PER"
    path = write_lines(tmp_path / "eng.train", lines)
    with pytest.raises(DataError) as info:
        read_conll(path)
    message = str(info.value)
    assert f"{path}:8: 2 space-separated fields" in message and "first token line (line 3) has 4" in message
    assert "fix the line" in message


def test_read_conll_bad_tag(tmp_path):
    lines = CONLL[:]
    lines[6] = "Peter NNP I-NP E-PER"
    path = write_lines(tmp_path / "eng.train", lines)
    with pytest.raises(DataError, match=rf"{path.name}:7: tag 'E-PER' is not O, B-TYPE or I-TYPE .*Fix the tag"):
        read_conll(path)


def test_read_token_jsonl(tmp_path):
    path = write_lines(tmp_path / "ner.jsonl", [
        json.dumps({"tokens": ["Peter", "Blackburn", "said"], "tags": ["B-PER", "I-PER", "O"]}), "",
        json.dumps({"tokens": ["in", "Paris"], "tags": ["O", "I-LOC"]})])  # IOB1 is converted
    assert read_token_jsonl(path) == [(("Peter", "Blackburn", "said"), ("B-PER", "I-PER", "O")),
                                      (("in", "Paris"), ("O", "B-LOC"))]


def test_read_token_jsonl_lengths_differ(tmp_path):
    path = write_lines(tmp_path / "ner.jsonl", [json.dumps({"tokens": ["a"], "tags": ["O"]}),
                                                json.dumps({"tokens": ["b", "c"], "tags": ["O"]})])
    with pytest.raises(DataError, match=rf"{path.name}:2: 2 tokens but 1 tags\. .*fix the line"):
        read_token_jsonl(path)


def test_token_files_folder_jsonl_and_unknown_eval_tags(tmp_path):
    write_lines(tmp_path / "train.txt", CONLL * 3)
    test = write_lines(tmp_path / "test.jsonl", [json.dumps({"tokens": ["Bonn"], "tags": ["B-LOC"]})])
    splits = TokenFiles(str(tmp_path), train="train.txt", test=str(test), val_size=2).load()  # absolute test file
    assert splits.label_names == ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    assert (len(splits.train), len(splits.val), splits.test) == (7, 2, [(("Bonn",), ("B-LOC",))])
    write_lines(test, [json.dumps({"tokens": ["Bonn", "Ltd"], "tags": ["B-GPE", "O"]})])
    with pytest.raises(DataError) as info:
        TokenFiles(str(tmp_path), train="train.txt", test="test.jsonl", val_size=2).load()
    message = str(info.value)
    assert str(test) in message and "['B-GPE']" in message and "train.txt" in message


def test_token_files_path_that_is_not_a_folder(tmp_path):
    with pytest.raises(DataError, match="is not a folder"):
        TokenFiles(str(tmp_path / "absent")).load()


# --------------------------------------------------------------------------- GoEmotions files


def write_goemotions(folder: Path, names: list[str], train: list[str], dev: list[str]) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / "emotions.txt").write_text("\n".join(names), encoding="utf-8")  # no final newline, as the original
    write_lines(folder / "train.tsv", train)
    write_lines(folder / "dev.tsv", dev)
    return folder


def test_goemotions_local_folder(tmp_path):
    train = [f'"say ""hi"" {i}"\t{i % 3},1\tid{i}' for i in range(10)]
    folder = write_goemotions(tmp_path / "go", ["joy", "anger", "neutral"], train, ["fine\t2\tx"])
    splits = GoEmotions(str(folder), val_size=2).load()
    assert splits.label_names == ["joy", "anger", "neutral"] and splits.test == [("fine", ("neutral",))]
    rows = dict(splits.train + splits.val)
    assert rows['say "hi" 0'] == ("joy", "anger") and rows['say "hi" 2'] == ("anger", "neutral")


def test_goemotions_label_id_outside_emotions_txt(tmp_path):
    folder = write_goemotions(tmp_path / "go", ["joy", "anger"], ["a\t0\tx", "b\t1,2\ty"], ["c\t0\tz"])
    with pytest.raises(DataError) as info:
        GoEmotions(str(folder)).load()
    message = str(info.value)
    assert f"{folder / 'train.tsv'}:2: label id '2'" in message and "lists 2 names" in message
    assert "emotions.txt" in message and "Fix the row" in message


def test_goemotions_row_with_wrong_field_count(tmp_path):
    folder = write_goemotions(tmp_path / "go", ["joy", "anger"], ["a\t0\tx", "b\t1"], ["c\t0\tz"])
    with pytest.raises(DataError, match=r"train\.tsv:2: expected 3 tab-separated fields .*found 2"):
        read_goemotions(folder / "train.tsv", ["joy", "anger"])


def test_goemotions_emotion_names_file(tmp_path):
    path = tmp_path / "emotions.txt"
    path.write_text("joy\nanger\n", encoding="utf-8")
    assert read_emotion_names(path) == ["joy", "anger"]
    path.write_text("joy\n\nanger", encoding="utf-8")
    with pytest.raises(DataError, match=r"emotions\.txt:2: blank line"):
        read_emotion_names(path)


# --------------------------------------------------------------------------- TextSplits: validate, fingerprint, split


def splits_of(task, train, label_names, **kwargs) -> TextSplits:
    return TextSplits(list(train), list(train[:2]), list(train[2:4]), label_names, task=task, **kwargs)


PAIRS = [((f"a {i}", f"b {i}"), i / 2) for i in range(6)]
MULTI = [(f"t {i}", ("x", "y") if i % 2 else ("y",)) for i in range(6)]
TOKENS = [(("EU", "rejects", "German"), ("B-ORG", "O", "B-MISC")), (("Peter", "Blackburn"), ("B-PER", "I-PER"))] * 2
TAGS = ["O", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]


@pytest.mark.parametrize("task, rows, names, i, changed", [
    ("regression", PAIRS, ["score"], 3, (PAIRS[3][0], 1.25)),
    ("multi_label", MULTI, ["x", "y"], 2, (MULTI[2][0], ("x", "y"))),
    ("token", TOKENS, TAGS, 0, (TOKENS[0][0], ("B-ORG", "O", "O"))),
])
def test_fingerprint_changes_when_one_target_changes(task, rows, names, i, changed):
    base = splits_of(task, rows, names).validate()
    assert splits_of(task, [tuple(r) for r in rows], names).fingerprint() == base.fingerprint()
    edited = [*rows[:i], changed, *rows[i + 1:]]
    other = splits_of(task, edited, names).validate()
    assert other.fingerprint() != base.fingerprint()
    with_extra = splits_of(task, rows, names, extra_test={"test_mismatched": rows[:1]})
    assert with_extra.split("test_mismatched") == rows[:1]
    assert len({base.fingerprint(), with_extra.fingerprint(), splits_of(task, rows, names,
                extra_test={"test_mismatched": rows[1:2]}).fingerprint()}) == 3


def test_fingerprint_depends_on_task_and_positive_label():
    rows = [(f"t {i}", "yes" if i % 2 else "no") for i in range(6)]
    prints = {splits_of("single_label", rows, ["no", "yes"]).fingerprint(),
              splits_of("single_label", rows, ["no", "yes"], positive_label="yes").fingerprint()}
    assert len(prints) == 2


def test_split_lookup_names_the_splits():
    splits = splits_of("regression", PAIRS, ["score"], extra_test={"test_mismatched": PAIRS[:1]})
    assert splits.split_names == ["train", "val", "test", "test_mismatched"]
    with pytest.raises(ConfigError, match=r"no 'dev' split .*'test_mismatched'"):
        splits.split("dev")


def test_validate_token_words_and_tags_differ_in_length():
    rows = [*TOKENS, (("Peter", "Blackburn", "said"), ("B-PER", "I-PER"))]
    splits = TextSplits(TOKENS, TOKENS, rows, TAGS, origin={"test": "eng.testa"}, task="token")
    with pytest.raises(DataError, match=r"The test split \(eng\.testa\), sentence 5: 3 words but 2 tags"):
        splits.validate()


def test_validate_token_rows_must_be_iob2_with_known_tags():
    bad = [(("in", "Paris"), ("O", "I-LOC"))]
    with pytest.raises(DataError, match=r"sentence 1, word 2 \('Paris'\): tag 'I-LOC' follows 'O'; .*B-LOC"):
        TextSplits(TOKENS, TOKENS, bad, [*TAGS, "B-LOC", "I-LOC"], task="token").validate()
    with pytest.raises(DataError, match=r"The test split \(test\) has tags \['B-LOC'\]"):
        TextSplits(TOKENS, TOKENS, [(("Paris",), ("B-LOC",))], TAGS, task="token").validate()


def test_validate_regression_multi_and_pairs():
    with pytest.raises(DataError, match=r"row 2: target nan is not a finite number"):
        TextSplits(PAIRS, [PAIRS[0], (PAIRS[1][0], math.nan)], PAIRS, ["score"], task="regression").validate()
    with pytest.raises(DataError, match="label_names must hold one name"):
        TextSplits(PAIRS, PAIRS, PAIRS, ["a", "b"], task="regression").validate()
    with pytest.raises(DataError, match=r"has labels \['z'\] that the training data does not have"):
        TextSplits(MULTI, MULTI, [("t", ("x", "z"))], ["x", "y"], task="multi_label").validate()
    with pytest.raises(DataError, match=r"row 1: the input must be a pair"):
        TextSplits(PAIRS, [("one text", 1.0)], PAIRS, ["score"], task="regression").validate()
    assert not splits_of("multi_label", MULTI, ["x", "y"]).validate().pair


# --------------------------------------------------------------------------- splits and subsets by task


def test_stratified_split_keeps_label_proportions(glue_real):
    rows = glue_real["cola"].train + glue_real["cola"].val
    rest, carved = stratified_split(rows, 1000, seed=5)
    share = Counter(label for _, label in rows)["acceptable"] / len(rows)
    assert abs(Counter(label for _, label in carved)["acceptable"] - 1000 * share) <= 1
    assert len(rest) == len(rows) - 1000 and carve(rows, 1000, 5) == (rest, carved)


def test_regression_split_is_seeded_random(glue_real):
    rows = glue_real["stsb"].train + glue_real["stsb"].val
    first = carve(rows, 500, 0, "regression")
    assert first == carve(rows, 500, 0, "regression") == random_split(rows, 500, 0)
    val_sets = [{x for x, _ in carve(rows, 500, seed, "regression")[1]} for seed in range(4)]
    assert len({frozenset(s) for s in val_sets}) == 4  # each seed picks its own rows
    rest, carved = first
    assert len(carved) == 500 and sorted(rest + carved, key=repr) == sorted(rows, key=repr)
    # Same seed, same Glue split: validation rows are fixed across runs.
    assert glue_real["stsb"].val == Glue("stsb", str(shared("stsb")), val_size=0.1).load().val


def test_subsample_by_task():
    with pytest.raises(ConfigError, match=r"data\.shots_per_class=4 applies to single-label classification only"):
        subsample(PAIRS, None, 4, seed=0, task="regression")
    rows = [((f"a {i}", f"b {i}"), i / 7) for i in range(70)]
    picked = subsample(rows, 20, None, seed=1, task="regression")
    assert len(picked) == 20 and picked == subsample(rows, 20, None, seed=1, task="regression")
    assert picked != subsample(rows, 20, None, seed=2, task="regression")
    assert subsample(MULTI * 5, 0.5, None, seed=0, task="multi_label") != []


def test_discover_multi_labels_and_tag_names():
    assert discover_multi_labels([("a", ("10", "2")), ("b", ("1",))]) == ["1", "2", "10"]
    assert discover_multi_labels([("a", ("joy", "anger")), ("b", ())]) == ["anger", "joy"]
    assert tag_names([(("x", "y"), ("B-PER", "I-PER")), (("z",), ("B-LOC",))]) == ["O", "B-LOC", "I-LOC",
                                                                                   "B-PER", "I-PER"]


# --------------------------------------------------------------------------- torch-free, and the hub offline


def test_sources_are_torch_free_and_hub_reads_fail_offline_with_the_fix(tmp_path):
    code = """
import json, sys
import sft.data.sources, sft.data.glue, sft.data.conll, sft.data.goemotions
heavy = [m for m in ("torch", "lightning", "hydra", "datasets") if m in sys.modules]
from sft.data.conll import TokenFiles
from sft.data.glue import Glue
from sft.data.goemotions import GoEmotions
from sft.errors import DataError
messages = []
for source in (Glue("mrpc"), TokenFiles(), GoEmotions()):
    try:
        source.load()
        messages.append("loaded")
    except DataError as e:
        messages.append(str(e))
print(json.dumps({"heavy": heavy, "messages": messages}))
"""
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "HF_DATASETS_OFFLINE": "1"}
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code], cwd=repo, env={**os.environ, "PYTHONPATH": str(repo), **env},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["heavy"] == []
    glue, conll, goemotions = out["messages"]
    assert "GLUE mrpc" in glue and "Set data.path to a local GLUE mrpc folder" in glue
    assert "CoNLL-2003" in conll and "Set data.path" in conll and "eng.train" in conll
    assert "GoEmotions" in goemotions and "Set data.path" in goemotions and "emotions.txt" in goemotions
    assert all("\n" not in m for m in out["messages"])
