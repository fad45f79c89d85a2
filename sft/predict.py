"""``python -m sft.predict MODEL [--input FILE|FOLDER|-] [--output FILE]``: labels and class probabilities.

Text models: a .txt file (one text per line), a .csv / .tsv / .jsonl file (``--text-column``), or stdin
(one text per line). Image models: an image file, a folder (its images, recursively, in sorted order),
or a text file / stdin listing image paths, one per line. Output rows keep the input order: the text
(or path), label, confidence and one ``prob_<label>`` column per class; CSV or JSONL by the output
suffix (``--format`` for stdout).

    echo "a gripping, beautifully acted film" | python -m sft.predict outputs/runs/<run>
    python -m sft.predict outputs/runs/<image run> --input photos/ --output predictions.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from sft.data.sources import text_encoding, undecodable
from sft.errors import DataError, command_line


def read_texts(source: str, text_column: str, encoding: str = "utf-8") -> list[str]:
    if source == "-":
        return [line.rstrip("\n") for line in sys.stdin if line.strip()]
    path = Path(source).expanduser()
    if not path.is_file():
        raise DataError(f"--input {source!r}: no such file.")
    codec = text_encoding(encoding, "--encoding")
    try:
        return _read_texts(path, text_column, codec)
    except UnicodeError as e:
        raise undecodable(path, codec, e, "--encoding") from None


def _read_texts(path: Path, text_column: str, encoding: str) -> list[str]:
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        with path.open(encoding=encoding, newline="") as f:
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",",
                                    quoting=csv.QUOTE_NONE if suffix == ".tsv" else csv.QUOTE_MINIMAL)
            if text_column not in (reader.fieldnames or []):
                raise DataError(f"{path}:1: no column {text_column!r} (columns: {reader.fieldnames}); use --text-column.")
            return [row[text_column] for row in reader]
    if suffix in (".jsonl", ".json", ".ndjson"):
        texts = []
        with path.open(encoding=encoding) as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    texts.append(json.loads(line)[text_column])
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise DataError(f"{path}:{line_no}: expected a JSON object with key {text_column!r}.") from None
        return texts
    with path.open(encoding=encoding) as f:
        return [line.rstrip("\n") for line in f if line.strip()]


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


def prediction_rows(names: list[str], inputs: list[str], probs: list[list[float]], key: str) -> list[dict]:
    rows = []
    for item, p in zip(inputs, probs, strict=True):
        best = max(range(len(names)), key=p.__getitem__)
        rows.append({key: item, "label": names[best], "confidence": p[best],
                     **{f"prob_{name}": value for name, value in zip(names, p, strict=True)}})
    return rows


def predict_with(model, inputs: dict, items: list[str], max_length: int = 128, batch_size: int = 64,
                 temperature: float = 1.0) -> list[dict]:
    from sft.inference import label_names, predict_image_proba, predict_proba

    names = label_names(model)
    if model.modality == "image":
        probs = predict_image_proba(model, inputs["preprocess"], items, batch_size=batch_size, temperature=temperature)
        return prediction_rows(names, items, probs.tolist(), "path")
    probs = predict_proba(model, inputs["tokenizer"], items, max_length=max_length, batch_size=batch_size,
                          temperature=temperature)
    return prediction_rows(names, items, probs.tolist(), "text")


def write_rows(rows: list[dict], out, fmt: str) -> None:
    if fmt == "jsonl":
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
        return
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


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
    parser.add_argument("--encoding", default="utf-8", help="of the --input file (default utf-8), e.g. latin-1")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--calibrated", action="store_true", help="divide logits by the temperature the report "
                        "fitted on the validation split (calibration.json), for calibrated probabilities")
    args = parser.parse_args(argv)
    from sft.inference import calibration_temperature, load_model

    temperature = calibration_temperature(args.model) if args.calibrated else 1.0
    model, inputs = load_model(args.model)
    items = read_image_paths(args.input) if model.modality == "image" else read_texts(args.input, args.text_column, args.encoding)
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
