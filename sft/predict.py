"""``python -m sft.predict MODEL [--input FILE|-] [--output FILE]``: labels and class probabilities.

Input: a .txt file (one text per line), a .csv / .tsv / .jsonl file (``--text-column``), or stdin
(one text per line). Output rows keep the input order: text, label, confidence and one
``prob_<label>`` column per class; CSV or JSONL by the output suffix (``--format`` for stdout).

    echo "a gripping, beautifully acted film" | python -m sft.predict outputs/runs/<run>
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from sft.errors import DataError, SftError


def read_texts(source: str, text_column: str) -> list[str]:
    if source == "-":
        return [line.rstrip("\n") for line in sys.stdin if line.strip()]
    path = Path(source).expanduser()
    if not path.is_file():
        raise DataError(f"--input {source!r}: no such file.")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",",
                                    quoting=csv.QUOTE_NONE if suffix == ".tsv" else csv.QUOTE_MINIMAL)
            if text_column not in (reader.fieldnames or []):
                raise DataError(f"{path}:1: no column {text_column!r} (columns: {reader.fieldnames}); use --text-column.")
            return [row[text_column] for row in reader]
    if suffix in (".jsonl", ".json", ".ndjson"):
        texts = []
        with path.open(encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    texts.append(json.loads(line)[text_column])
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise DataError(f"{path}:{line_no}: expected a JSON object with key {text_column!r}.") from None
        return texts
    return [line.rstrip("\n") for line in path.open(encoding="utf-8") if line.strip()]


def predict_rows(model_path: str, texts: list[str], max_length: int = 128, batch_size: int = 64) -> list[dict]:
    from sft.inference import label_names, load_model, predict_proba

    model, tokenizer = load_model(model_path)
    names = label_names(model)
    probs = predict_proba(model, tokenizer, texts, max_length=max_length, batch_size=batch_size)
    rows = []
    for text, p in zip(texts, probs.tolist(), strict=True):
        best = max(range(len(names)), key=p.__getitem__)
        rows.append({"text": text, "label": names[best], "confidence": p[best],
                     **{f"prob_{name}": value for name, value in zip(names, p, strict=True)}})
    return rows


def write_rows(rows: list[dict], out, fmt: str) -> None:
    if fmt == "jsonl":
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
        return
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sft.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="run folder, export/ folder or .ckpt file")
    parser.add_argument("--input", default="-", help="text file, .csv/.tsv/.jsonl, or - for stdin (default)")
    parser.add_argument("--output", help="write here (.csv or .jsonl); default stdout")
    parser.add_argument("--format", choices=["csv", "jsonl"], help="output format (default: from --output, else csv)")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    try:
        texts = read_texts(args.input, args.text_column)
        if not texts:
            raise DataError(f"--input {args.input!r}: no texts to predict.")
        rows = predict_rows(args.model, texts, args.max_length, args.batch_size)
    except SftError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
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
