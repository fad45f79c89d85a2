"""Bad input files and settings (issue #12, item 5): non-UTF-8 bytes, files without data rows, and a
data.max_length above what the model takes. Each ends in one line naming the file or setting and the fix.

Real files in tmp_path, the real Hydra composition, tokenizer and tiny BERT; nothing is mocked.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from sft.data.glue import Glue
from sft.data.sources import TextFiles, read_table
from sft.errors import ConfigError, DataError
from sft.pipeline.build import build_datamodule as build
from sft.pipeline.train import train


def rows(n: int = 30) -> list[tuple[str, str]]:
    return [(f"review number {i} was {'great' if i % 2 else 'awful'}", "pos" if i % 2 else "neg") for i in range(n)]


def write_table(path: Path, body: list[tuple[str, str]], encoding: str = "utf-8") -> Path:
    """CSV, TSV or JSONL by suffix, in ``encoding``."""
    if path.suffix == ".jsonl":
        lines = [json.dumps({"text": t, "label": lab}, ensure_ascii=False) for t, lab in body]
    else:
        sep = "\t" if path.suffix == ".tsv" else ","
        lines = [f"text{sep}label", *(f"{t}{sep}{lab}" for t, lab in body)]
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))
    return path


def latin1_rows() -> list[tuple[str, str]]:
    body = rows()
    body[1] = ("a café with crème brûlée", "pos")  # line 3 of a CSV / TSV (after the header), line 2 of a JSONL
    return body


# --------------------------------------------------------------------------- 1. non-UTF-8 bytes


@pytest.mark.parametrize("suffix, line", [(".csv", 3), (".tsv", 3), (".jsonl", 2)])
def test_latin1_file_is_one_line_error_with_line_and_fix(tmp_path, suffix, line):
    path = write_table(tmp_path / f"reviews{suffix}", latin1_rows(), "latin-1")
    with pytest.raises(DataError) as info:
        read_table(path, "text", "label", setting="data.train")
    message = str(info.value)
    assert "\n" not in message
    assert f"{path}:{line}:" in message
    assert "UTF-8" in message and "data.encoding=latin-1" in message
    assert info.value.__suppress_context__  # no chained UnicodeDecodeError traceback


def test_undecodable_position_is_exact_past_the_first_read_chunk(tmp_path):
    # The bad byte sits far beyond the first 8 KiB the text layer decodes at once.
    body = rows(2000)
    body[1500] = ("naïve", "pos")
    path = write_table(tmp_path / "big.csv", body, "latin-1")
    offset = path.read_bytes().index("naïve".encode("latin-1")) + 2
    assert offset > 8192
    with pytest.raises(DataError, match=rf"big\.csv:1502: .*offset {offset}\b"):
        read_table(path, "text", "label")


def test_codec_error_without_a_position_is_one_line_too(tmp_path):
    path = write_table(tmp_path / "reviews.csv", rows())  # UTF-8, read as UTF-16: no BOM
    with pytest.raises(DataError, match=r"reviews\.csv: .*not valid utf-16 text.*\. Re-save the file as UTF-8"):
        read_table(path, "text", "label", encoding="utf-16")
    path.write_bytes(b"ab" * 10)  # decodes as a whole: the stream reader's "no BOM" is the reason given
    with pytest.raises(DataError, match=r"reviews\.csv: not valid utf-16 text \(.*BOM\)\. Re-save the file as UTF-8"):
        read_table(path, "text", "label", encoding="utf-16")


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_data_encoding_reads_a_latin1_file(tmp_path, suffix):
    path = write_table(tmp_path / f"reviews{suffix}", latin1_rows(), "latin-1")
    assert read_table(path, "text", "label", encoding="latin-1") == latin1_rows()


def test_utf8_default_still_accepts_a_bom(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufefftext,label\ncafé,a\n".encode())
    assert read_table(path, "text", "label", encoding="UTF8") == [("café", "a")]


def test_unknown_encoding_is_a_config_error(tmp_path):
    path = write_table(tmp_path / "reviews.csv", rows())
    with pytest.raises(ConfigError, match=r"data\.encoding='latin-2000' is not a text encoding Python knows"):
        TextFiles(str(path), encoding="latin-2000").load()


def test_data_encoding_through_hydra_text_file(compose_cfg, tiny_bert, tmp_path):
    from sft.models.classifier import TextClassifier

    path = write_table(tmp_path / "reviews.csv", latin1_rows(), "latin-1")
    base = [f"model.name_or_path={tiny_bert}", "data=text_file", f"data.train={path}"]
    assert compose_cfg(*base).data.encoding == "utf-8"
    with pytest.raises(DataError, match=r"reviews\.csv:3: .*data\.encoding=latin-1"):
        build(compose_cfg(*base).data, **TextClassifier.data_inputs(compose_cfg(*base).model)).prepare_data()

    cfg = compose_cfg(*base, "data.encoding=latin-1")
    dm = build(cfg.data, **TextClassifier.data_inputs(cfg.model))
    dm.prepare_data()
    dm.setup("fit")
    texts = [t for split in ("train", "val", "test") for t, _ in dm.splits.split(split)]
    assert "a café with crème brûlée" in texts and sum(len(d) for d in dm.datasets.values()) == 30


def test_data_encoding_through_hydra_glue_folder(compose_cfg, tiny_bert, tmp_path):
    folder = tmp_path / "glue"
    folder.mkdir()
    sentences = [(f"sentence {i} {'über' if i == 3 else 'plain'}", str(i % 2)) for i in range(12)]
    for name in ("train", "dev"):
        (folder / f"{name}.tsv").write_bytes(
            ("sentence\tlabel\n" + "".join(f"{t} \t{lab}\n" for t, lab in sentences)).encode("latin-1"))
    cfg = compose_cfg(f"model.name_or_path={tiny_bert}", "data=sst2", f"data.path={folder}", "data.val_size=4",
                      "data.encoding=latin-1")
    splits = build(cfg.data, tokenizer=tiny_bert).load_splits()
    assert "sentence 3 über" in [t for t, _ in splits.train + splits.val]
    with pytest.raises(DataError, match=r"train\.tsv:5: "):
        Glue("sst2", str(folder), val_size=4).load()


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory, tiny_bert) -> Path:
    """A text-model export folder (save_pretrained model + tokenizer), as a run writes."""
    from transformers import AutoTokenizer

    from sft.export import export_text_model
    from sft.models.classifier import TextClassifier

    model = TextClassifier(tiny_bert, num_labels=2, id2label={0: "neg", 1: "pos"})
    return export_text_model(model.model, AutoTokenizer.from_pretrained(tiny_bert), tmp_path_factory.mktemp("export"))


@pytest.mark.parametrize("suffix, line", [(".csv", 3), (".jsonl", 2), (".txt", 2)])
def test_predict_latin1_input_error_and_encoding_option(tiny_export, tmp_path, capsys, suffix, line):
    from sft.predict import main

    if suffix == ".txt":
        path = tmp_path / "in.txt"
        path.write_bytes("first line\na café\n".encode("latin-1"))
    else:
        path = write_table(tmp_path / f"in{suffix}", latin1_rows()[:4], "latin-1")
    assert main([str(tiny_export), "--input", str(path)]) == 2
    err = capsys.readouterr().err
    errors = [e for e in err.splitlines() if e.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert f"{path}:{line}:" in errors[0] and "--encoding=latin-1" in errors[0], err
    out = tmp_path / "out.jsonl"
    assert main([str(tiny_export), "--input", str(path), "--encoding", "latin-1", "--output", str(out)]) == 0
    assert any("café" in json.loads(row)["text"] for row in out.read_text(encoding="utf-8").splitlines())


# --------------------------------------------------------------------------- 2. files without data rows

EMPTY = {"header_only_csv": ("train.csv", "text,label\n"), "header_and_blank_tsv": ("train.tsv", "text\tlabel\n\n"),
         "zero_bytes_csv": ("train.csv", ""), "zero_bytes_jsonl": ("train.jsonl", ""),
         "blank_lines_jsonl": ("train.jsonl", "\n  \n")}


@pytest.mark.parametrize("case", sorted(EMPTY))
def test_empty_training_file_says_no_data_rows(tmp_path, case):
    name, content = EMPTY[case]
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as info:
        TextFiles(str(path)).load()
    message = str(info.value)
    assert f"{path}: no data rows" in message and "data.train" in message and "\n" not in message
    assert "carve" not in message


@pytest.mark.parametrize("split", ["val", "test"])
def test_empty_val_or_test_file_says_no_data_rows(tmp_path, split):
    files = {s: str(write_table(tmp_path / f"{s}.csv", rows())) for s in ("train", "val", "test")}
    Path(files[split]).write_text("text,label\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"{split}\.csv: no data rows .*data\.{split}"):
        TextFiles(**files).load()


def test_empty_glue_train_tsv_says_no_data_rows(tmp_path):
    (tmp_path / "train.tsv").write_text("sentence\tlabel\n", encoding="utf-8")
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\ngood \t1\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"train\.tsv: no data rows"):
        Glue("sst2", str(tmp_path)).load()


def test_empty_training_file_through_train(tiny_cfg, tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("text,label\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"train\.csv: no data rows"):
        train(tiny_cfg("data=text_file", f"data.train={path}"))


# --------------------------------------------------------------------------- 3. max_length above the model's limit


def long_rows() -> list[tuple[str, str]]:
    return [(" ".join(["word"] * (50 + 40 * i)) + f" {i}", "pos" if i % 2 else "neg") for i in range(10)]


def test_max_length_above_position_limit_is_clamped_with_a_warning(tiny_bert, tmp_path, caplog):
    from sft.data.text import TextDataModule

    source = TextFiles(str(write_table(tmp_path / "long.csv", long_rows())), val_size=2, test_size=2)
    with caplog.at_level(logging.WARNING):
        dm = TextDataModule(source, tiny_bert, max_length=100000, cache_dir=tmp_path / "cache")
        dm.prepare_data()
        dm.setup("fit")
    assert dm.max_length == 128
    lengths = [n for d in dm.datasets.values() for n in d.lengths()]
    assert max(lengths) == 128  # texts up to ~400 tokens: truncated to the model's 128 positions
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("data.max_length=100000" in m and "128" in m and "max_position_embeddings" in m for m in warned), warned

    # The cache key uses the effective value: the same file as max_length=128.
    same = TextDataModule(source, tiny_bert, max_length=128, cache_dir=tmp_path / "cache")
    same.prepare_data()
    assert same.cache_file == dm.cache_file


def test_max_length_within_the_limit_is_kept_without_warning(tiny_bert, tmp_path, caplog):
    from sft.data.text import TextDataModule

    source = TextFiles(str(write_table(tmp_path / "long.csv", long_rows())), val_size=2, test_size=2)
    with caplog.at_level(logging.WARNING):
        dm = TextDataModule(source, tiny_bert, max_length=100, cache_dir=tmp_path / "cache")
        dm.prepare_data()
    assert dm.max_length == 100 and not [r for r in caplog.records if "max_length" in r.getMessage()]


def test_max_length_above_the_limit_trains(tiny_cfg, tmp_path, caplog):
    # Before the fix, 512-token inputs reached 128 position embeddings: an IndexError deep in BERT.
    path = write_table(tmp_path / "long.csv", long_rows() * 2)
    with caplog.at_level(logging.WARNING):
        metrics = train(tiny_cfg("data=text_file", f"data.train={path}", "data.max_length=100000",
                                 "data.val_size=4", "data.test_size=4", "debug=fast_dev_run", "export=false"))
    assert metrics["fit/global_step"] == 1
    assert any("data.max_length=100000" in r.getMessage() and "128" in r.getMessage() for r in caplog.records)
