"""``python -m sft.predict MODEL [--input FILE|FOLDER|-] [--output FILE] [--backend torch|onnx]``: labels and class
probabilities.

Text models: a .txt file (one text per line), a .csv / .tsv / .jsonl file (``--text-column``), or stdin
(one text per line). Image models: an image file, a folder (its images, recursively, in sorted order),
or a text file / stdin listing image paths, one per line. Output rows keep the input order: the text
(or path), label, confidence and one ``prob_<label>`` column per class; CSV or JSONL by the output
suffix (``--format`` for stdout).

    echo "a gripping, beautifully acted film" | python -m sft.predict outputs/runs/<run>
    python -m sft.predict outputs/runs/<image run> --input photos/ --output predictions.csv
    python -m sft.predict outputs/runs/<run> --backend onnx --input texts.txt   # onnxruntime on export/model.onnx
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

from sft.data.sources import jsonl_objects, text_encoding, undecodable
from sft.errors import DataError, command_line


def read_texts(source: str, text_column: str, encoding: str = "utf-8", pair_column: str | None = None) -> list[Any]:
    """Texts (or, with ``pair_column``, (text, pair) tuples) from a file or stdin, in input order."""
    if source == "-":
        if pair_column:
            raise DataError("Sentence pairs need a .csv / .tsv / .jsonl --input with two text columns, not stdin.")
        return [line.rstrip("\n") for line in sys.stdin if line.strip()]
    path = Path(source).expanduser()
    if not path.is_file():
        raise DataError(f"--input {source!r}: no such file.")
    codec = text_encoding(encoding, "--encoding")
    try:
        return _read_texts(path, text_column, codec, pair_column)
    except UnicodeError as e:
        raise undecodable(path, codec, e, "--encoding") from None


def _read_texts(path: Path, text_column: str, encoding: str, pair_column: str | None = None) -> list[Any]:
    suffix = path.suffix.lower()
    columns = [text_column, *([pair_column] if pair_column else [])]
    if suffix in (".csv", ".tsv"):
        with path.open(encoding=encoding, newline="") as f:
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",",
                                    quoting=csv.QUOTE_NONE if suffix == ".tsv" else csv.QUOTE_MINIMAL)
            for column in columns:
                if column not in (reader.fieldnames or []):
                    raise DataError(f"{path}:1: no column {column!r} (columns: {reader.fieldnames}); use "
                                    f"--{'text-pair' if column == pair_column else 'text'}-column.")
            return [_item(path, reader.line_num, row, columns) for row in reader]
    if suffix in (".jsonl", ".json", ".ndjson"):
        return [_item(path, line_no, row, columns) for line_no, row in jsonl_objects(path, encoding, f"with {columns}")]
    if pair_column:
        raise DataError(f"--input {path}: sentence pairs need a .csv / .tsv / .jsonl file with columns {columns}.")
    with path.open(encoding=encoding) as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def _item(path: Path, line: int, row: dict, columns: list[str]) -> Any:
    values = []
    for column in columns:
        value = row.get(column)
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"{path}:{line}: empty or missing text in column {column!r}. Fix or remove the row.")
        values.append(value)
    return values[0] if len(values) == 1 else tuple(values)


def read_image_paths(source: str) -> list[str]:
    """Image files from an image, a folder (recursively, sorted) or a list of paths (a text file or stdin)."""
    import os

    from sft.data.image_sources import IMAGE_EXTENSIONS, is_image_file

    if source == "-":
        listed = [line.strip() for line in sys.stdin if line.strip()]
        origin = "stdin"
    else:
        path = Path(source).expanduser()
        if path.is_dir():
            found = sorted(os.path.join(d, f) for d, _, files in os.walk(path, followlinks=True)
                           for f in files if is_image_file(f))
            if not found:
                raise DataError(f"--input {source!r}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in that folder.")
            return found
        if not path.is_file():
            raise DataError(f"--input {source!r}: no such file or folder.")
        if is_image_file(path):
            return [str(path)]
        listed = [line.strip() for line in path.open(encoding="utf-8") if line.strip()]
        origin = str(path)
    for line_no, item in enumerate(listed, start=1):
        if not Path(item).expanduser().is_file():
            raise DataError(f"{origin}:{line_no}: {item!r} is not an image file.")
    return [str(Path(item).expanduser()) for item in listed]


def predict_with(model, inputs: dict, items: list[Any], max_length: int = 128, batch_size: int = 64,
                 temperature: float = 1.0) -> list[dict]:
    """One row per item, in input order: the input, then what the task predicts (label and probabilities; a
    score; a label set; entity spans with character offsets)."""
    from sft.inference import image_logits, tag_entities, text_logits

    task = model.task
    if model.modality == "image":
        logits = image_logits(model, inputs["preprocess"], items, batch_size=batch_size)
        return [{"path": item, **row} for item, row in zip(items, task.prediction_rows(logits, temperature), strict=True)]
    if task.kind == "token":
        return [{"text": item, "entities": spans}
                for item, spans in zip(items, tag_entities(model, inputs["tokenizer"], items, max_length), strict=True)]
    logits = text_logits(model, inputs["tokenizer"], items, max_length=max_length, batch_size=batch_size)
    thresholds = getattr(model, "thresholds", None)
    rows = task.prediction_rows(logits, temperature, thresholds=None if thresholds is None else thresholds.cpu())
    keyed = [{"text": item[0], "text_pair": item[1]} if isinstance(item, tuple) else {"text": item} for item in items]
    return [{**key, **row} for key, row in zip(keyed, rows, strict=True)]


def write_rows(rows: list[dict], out, fmt: str) -> None:
    if fmt == "jsonl":
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
        return
    if rows:  # lists (label sets, entities) as JSON in their cell
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: json.dumps(v, ensure_ascii=False) if isinstance(v, list | dict) else v
                          for k, v in row.items()} for row in rows)


@command_line
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sft.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="run folder, export/ folder or .ckpt file")
    parser.add_argument("--input", default="-", help="text models: a text file, .csv/.tsv/.jsonl, or - for stdin "
                        "(default); image models: an image, a folder, or a list of paths (file or stdin)")
    parser.add_argument("--output", help="write here (.csv or .jsonl); default stdout")
    parser.add_argument("--format", choices=["csv", "jsonl"], help="output format (default: from --output, else csv)")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--text-pair-column", help="sentence-pair models: the second text's column (default "
                        "text_pair for a pair model)")
    parser.add_argument("--encoding", default="utf-8", help="of the --input file (default utf-8), e.g. latin-1")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--calibrated", action="store_true", help="divide logits by the temperature the report "
                        "fitted on the validation split (calibration.json), for calibrated probabilities")
    parser.add_argument("--backend", choices=["torch", "onnx"], default="torch", help="torch (default), or onnx: the "
                        "export's model.onnx run by onnxruntime (`python -m sft.export MODEL --format onnx` writes it)")
    args = parser.parse_args(argv)
    from sft.inference import calibration_temperature, load_model

    temperature = calibration_temperature(args.model) if args.calibrated else 1.0
    model, inputs = load_model(args.model, backend=args.backend)
    pair_column = args.text_pair_column or ("text_pair" if model.task.pair else None)
    items = (read_image_paths(args.input) if model.modality == "image"
             else read_texts(args.input, args.text_column, args.encoding, pair_column))
    if not items:
        raise DataError(f"--input {args.input!r}: nothing to predict.")
    rows = predict_with(model, inputs, items, args.max_length, args.batch_size, temperature)
    fmt = args.format or ("jsonl" if args.output and args.output.endswith((".jsonl", ".json")) else "csv")
    if args.output:
        with open(args.output, "w", encoding="utf-8", newline="") as f:
            write_rows(rows, f, fmt)
        print(f"wrote {len(rows)} predictions to {args.output}", file=sys.stderr)
    else:
        write_rows(rows, sys.stdout, fmt)
    return 0


if __name__ == "__main__":
    sys.exit(main())
