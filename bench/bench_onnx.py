"""ONNX vs PyTorch on a trained text run: logits parity, accuracy, file size and CPU speed (samples/s) on the SST-2
dev set, through sft.predict's own path (tokenize, length-sorted batches, rows back in order).

    python bench_onnx.py /tmp/onnx_run --data ../shared/data/sst2 [--int8]
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import torch

from sft.inference import OnnxClassifier, load_model, text_logits


def seconds(model, tokenizer, texts, batch_size) -> float:
    started = time.perf_counter()
    text_logits(model, tokenizer, texts, max_length=128, batch_size=batch_size)
    return time.perf_counter() - started


def speeds(models, tokenizer, texts, batch_size, repeats) -> dict[str, float]:
    """samples/s, best of ``repeats``; the backends take turns in every round, so a burst of load from other
    processes on the machine hits them alike."""
    best = dict.fromkeys(models, float("inf"))
    for _ in range(repeats):
        for name, model in models.items():
            best[name] = min(best[name], seconds(model, tokenizer, texts, batch_size))
    return {name: len(texts) / value for name, value in best.items()}


def with_threads(models, threads):
    """torch and onnxruntime on ``threads`` intra-op threads each."""
    import onnxruntime

    torch.set_num_threads(threads)
    for model in models.values():
        if isinstance(model, OnnxClassifier):
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = threads
            model.session = onnxruntime.InferenceSession(str(model.path), options, providers=["CPUExecutionProvider"])
    return models


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run")
    parser.add_argument("--data", default="../shared/data/sst2")
    parser.add_argument("--int8", action="store_true", help="also onnxruntime's dynamic int8 quantization")
    parser.add_argument("--batch1-rows", type=int, default=100, help="rows timed at batch size 1")
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with open(Path(args.data) / "dev.tsv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    texts, labels = [r["sentence"] for r in rows], torch.tensor([int(r["label"]) for r in rows])
    export = Path(args.run) / "export"
    models = {"torch": load_model(args.run)[0], "onnx": load_model(args.run, backend="onnx")[0]}
    tokenizer = load_model(args.run, backend="onnx")[1]["tokenizer"]
    if args.int8:
        from onnxruntime.quantization import QuantType, quant_pre_process, quantize_dynamic

        prepared, int8 = export / "model.prepared.onnx", export / "model.int8.onnx"
        # Graph fusions before quantizing, as onnxruntime recommends (its symbolic shape inference stops on this graph).
        quant_pre_process(export / "model.onnx", prepared, skip_symbolic_shape=True)
        quantize_dynamic(prepared, int8, weight_type=QuantType.QInt8)
        prepared.unlink()
        models["onnx int8"] = OnnxClassifier(int8, models["onnx"].task, "text")
    sizes = {"torch": (export / "model.safetensors").stat().st_size, "onnx": (export / "model.onnx").stat().st_size}
    if args.int8:
        sizes["onnx int8"] = (export / "model.int8.onnx").stat().st_size
    logits = {name: text_logits(m, tokenizer, texts, max_length=128, batch_size=32) for name, m in models.items()}
    print(f"SST-2 dev: {len(texts)} sentences; torch {torch.__version__}")
    print("| backend | file MB | dev acc | max abs logit diff vs torch | argmax agreement |")
    print("|---|---:|---:|---:|---:|")
    for name in models:
        acc = (logits[name].argmax(-1) == labels).float().mean().item()
        diff = (logits[name] - logits["torch"]).abs().max().item()
        agree = (logits[name].argmax(-1) == logits["torch"].argmax(-1)).float().mean().item()
        print(f"| {name} | {sizes[name] / 1e6:.1f} | {acc:.4f} | {diff:.2g} | {agree:.4f} |")
    print("\n| threads | batch | " + " | ".join(f"{name} samples/s" for name in models) + " |")
    print("|---:|---:|" + "---:|" * len(models))
    for threads in args.threads:
        with_threads(models, threads)
        for batch_size, rows in ((32, texts), (1, texts[: args.batch1_rows])):
            rates = speeds(models, tokenizer, rows, batch_size, args.repeats)
            print(f"| {threads} | {batch_size} | " + " | ".join(f"{rates[n]:.0f}" for n in models) + " |", flush=True)

if __name__ == "__main__":
    main()
