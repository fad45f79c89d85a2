#!/usr/bin/env python
"""Image fine-tuning benchmark: sft against a plain PyTorch loop (issue #3: sft within 3% of the plain loop).

Task (identical for every peer): EfficientNet-Lite0 with the packaged ImageNet weights (offline, timm
``tf_efficientnet_lite0``), full fine-tune (``freeze=none``) on the hymenoptera ants/bees ImageFolder set
(244 train images, 153 val images), the weights' own preprocessing (train: random resized crop 224 + flip;
eval: resize 256 + center crop 224, bicubic, mean = std = 0.5), batch 32 with the last partial batch
dropped, AdamW lr 1e-3, weight decay 0.01 on weight matrices only (none on biases / BatchNorm, as sft's
``build_optimizer``), fused, constant LR, 2 epochs, seed 0, fp32, num_workers 0, torch.set_num_threads(2);
accuracy on val once, after training.

Peers (each runs in its own subprocess: ``bench_image.py --peer NAME``, which prints one JSON line):

* ``plain``        a hand-written loop: ``sft.models.vision.build_image_model("efficientnet_lite0", 2)``
                   (the same initial weights as sft, checked by a parameter checksum),
                   ``torchvision.datasets.ImageFolder`` with ``sft.data.image.build_transforms``, a shuffling
                   ``DataLoader(drop_last=True)``, ``torch.optim.AdamW(fused=True)``.
* ``sft``          sft's real entry (Hydra compose + ``sft.pipeline.train.train``) with its default callbacks
                   (best checkpoint, last.ckpt, early stopping, LR monitor; no progress bar): checkpoint
                   writes are counted as training time.
* ``sft_no_ckpt``  the same with ``callbacks=none`` and ``trainer.enable_checkpointing=false`` (without it
                   Lightning adds its own ModelCheckpoint): no checkpoints, no early stopping, no LR monitor.
* ``sft_nondet``   (not in the default ``--peers``) ``sft`` with ``trainer.deterministic=false`` instead of
                   sft's default ``warn`` (``torch.use_deterministic_algorithms(True, warn_only=True)``).

Both sft peers validate once, at the end of the last epoch (``trainer.check_val_every_n_epoch`` = epochs,
no sanity check) and skip the test pass (test = val for this data set) and the export.

Measured per peer: training wall time (model load, data scan and the val pass excluded), images/s = train
images processed / training time, ratio to ``plain``, val accuracy, peak RSS of the peer's process, the
median per-batch time (first batch left out) and the CPU time used per wall second while training (about
2.0 on a quiet machine; well below means another process took CPU, and the run is flagged as contended).
Peers run ``--repeats`` times, interleaved; the table shows medians.

    .venv/bin/python bench/bench_image.py                  # full run: 3 peers x 3 repeats (~15 min on 2 cores)
    .venv/bin/python bench/bench_image.py --quick          # smoke test: 1 epoch on 64 train / 32 val images
    .venv/bin/python bench/bench_image.py --peers plain,sft --repeats 1
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import harness
from harness import cpu_seconds, fmt

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = harness.SHARED_DATA / "hymenoptera"
ALL_PEERS = ("plain", "sft", "sft_no_ckpt", "sft_nondet", "sft_trimmed_heap")
DEFAULT_PEERS = ("plain", "sft", "sft_no_ckpt")

ARCH = "efficientnet_lite0"
SEED = 0
BATCH_SIZE = 32
LR = 1e-3
WEIGHT_DECAY = 0.01  # sft's adamw default; applied to weight matrices only, as sft's build_optimizer does
THREADS = 2
TARGET = 0.97  # issue #3: sft's images/s within 3% of the plain loop's
CONTENDED = 0.85  # a run that got less than this share of THREADS cores of CPU time was probably contended
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


# ============================================================================ shared helpers


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name.lower().endswith(IMAGE_EXTENSIONS))


def count_images(root: Path) -> dict[str, dict[str, int]]:
    """{split: {class: n images}} for train and val, as ImageFolder counts them (extension filter)."""
    return {split: {c.name: len(image_files(c)) for c in sorted((root / split).iterdir()) if c.is_dir()}
            for split in ("train", "val")}


def make_subset(src: Path, dst: Path, train_per_class: int | None, val_per_class: int | None) -> Path:
    """Copy the first N images (sorted) of every class of train and val into ``dst`` (same layout)."""
    for split, limit in (("train", train_per_class), ("val", val_per_class)):
        for cls in sorted(d for d in (src / split).iterdir() if d.is_dir()):
            out = dst / split / cls.name
            out.mkdir(parents=True, exist_ok=True)
            for f in image_files(cls)[:limit]:
                shutil.copyfile(f, out / f.name)
    return dst


def param_checksum(model: Any) -> float:
    """Sum of every parameter (float64): equal checksums = the same initial weights, head included."""
    import torch

    with torch.no_grad():
        return float(sum(p.detach().double().sum() for p in model.parameters()))


# ============================================================================ peer: plain PyTorch


def peer_plain(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    from sft.data.image import build_transforms
    from sft.models.vision import build_image_model, preprocess_for

    preprocess = preprocess_for(ARCH)
    train_ds = ImageFolder(str(args.data_dir / "train"), transform=build_transforms(preprocess, train=True))
    val_ds = ImageFolder(str(args.data_dir / "val"), transform=build_transforms(preprocess, train=False))

    torch.manual_seed(SEED)  # sft: L.seed_everything(seed) right before it builds the model
    model = build_image_model(ARCH, len(train_ds.classes))
    init_sum = param_checksum(model)

    loader = DataLoader(train_ds, batch_size=BATCH_SIZE, shuffle=True, drop_last=True, num_workers=0,
                        generator=torch.Generator().manual_seed(SEED))
    # sft's build_optimizer: weight decay on weight matrices, none on biases and norm weights; fused on CPU.
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=LR, fused=True)
    loss_fn = torch.nn.CrossEntropyLoss()

    started, cpu_started, faults_started = time.perf_counter(), cpu_seconds(), harness.page_faults()
    model.train()
    steps = images = 0
    step_s: list[float] = []  # per batch, data loading included (sft: batch start to batch start)
    for _ in range(args.epochs):
        t = time.perf_counter()
        for x, y in loader:
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            steps += 1
            images += len(y)
            now = time.perf_counter()
            step_s.append(now - t)
            t = now
    train_s = time.perf_counter() - started
    cpu_util = (cpu_seconds() - cpu_started) / train_s
    fit_faults = harness.page_faults() - faults_started

    val_started = time.perf_counter()
    model.eval()
    correct = 0
    with torch.inference_mode():
        for x, y in DataLoader(val_ds, batch_size=BATCH_SIZE, shuffle=False, num_workers=0):
            correct += int((model(x).argmax(-1) == y).sum())
    return {"train_s": train_s, "images": images, "steps": steps, "val_acc": correct / len(val_ds),
            "val_images": len(val_ds), "val_s": time.perf_counter() - val_started, "init_param_sum": init_sum,
            "step_s": step_s, "cpu_util": cpu_util, "fit_faults": fit_faults, "precision": "fp32",
            "final_train_loss": float(loss),
            "notes": "fused AdamW, ImageFolder"}


# ============================================================================ peers: sft


def sft_bench_timer() -> Any:
    """Hydra target for the timing callback added to sft's callbacks (``++callbacks.bench_timer``).

    Training time = on_train_start .. on_train_end minus the in-fit validation pass (checkpoint writes
    inside the validation window are counted as checkpointing, not validation). Every
    ``trainer.save_checkpoint`` during fit is timed too (reported as ckpt_s, part of train_s).
    """
    import lightning as L

    class BenchTimer(harness.FitTimerMixin, L.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.images = 0
            self.steps = 0
            self.init_param_sum: float | None = None
            self.step_s: list[float] = []
            self._step_mark: float | None = None

        def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
            self.init_param_sum = param_checksum(pl_module.model)

        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            self._step_mark = time.perf_counter()

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            self.images += len(batch["labels"])
            self.steps += 1

        def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
            # Batch loading (before on_train_batch_start) through this batch's hooks (last.ckpt writes
            # and logging included): comparable with the plain loop's per-batch time.
            now = time.perf_counter()
            if self._step_mark is not None:
                self.step_s.append(now - self._step_mark)
            self._step_mark = now

        def summary(self) -> dict[str, Any]:
            times = self.fit_times()
            return {**times, "n_val_in_fit": self.n_val, "ckpt_s": self.ckpt_s, "n_ckpt": self.n_ckpt,
                    "images": self.images, "steps": self.steps, "init_param_sum": self.init_param_sum,
                    "step_s": self.step_s, "cpu_util": self.cpu_util(times["fit_loop_s"]),
                    "fit_faults": self.fit_faults}

    timer = BenchTimer()
    harness.SFT_TIMERS.append(timer)
    return timer


def sft_overrides(args: argparse.Namespace, checkpoints: bool, output_dir: Path,
                  deterministic: bool = True) -> list[str]:
    overrides = [
        f"model={ARCH}",
        "data=imagefolder",
        f"data.path={args.data_dir}",
        f"data.batch_size={BATCH_SIZE}",
        "freeze=none",
        "optimizer=adamw",
        f"optimizer.lr={LR}",
        f"optimizer.weight_decay={WEIGHT_DECAY}",
        "scheduler=constant",
        f"trainer.max_epochs={args.epochs}",
        "trainer.precision=32-true",  # the plain loop is fp32 (sft would pick bf16 only on AMX/AVX512-BF16 CPUs)
        f"++trainer.check_val_every_n_epoch={args.epochs}",  # validate once, after the last epoch
        "++trainer.num_sanity_val_steps=0",
        "++trainer.enable_progress_bar=false",
        "++trainer.enable_model_summary=false",
        f"seed={SEED}",
        f"output_dir={output_dir}",
        *([] if deterministic else ["trainer.deterministic=false"]),  # sft's default is warn
        "test=false",  # no test split here: test would be val again
        "export=false",
        f"torch_threads={THREADS}",
    ]
    if checkpoints:
        overrides += ["callbacks.progress_bar=null"]
    else:
        # callbacks=none alone still leaves Lightning's own default ModelCheckpoint (enable_checkpointing
        # defaults to true), which writes <run>/logs/checkpoints/epoch=...ckpt after every epoch.
        overrides += ["callbacks=none", "++trainer.enable_checkpointing=false"]
    return overrides + ["++callbacks.bench_timer._target_=__main__.sft_bench_timer"]


def peer_sft(args: argparse.Namespace, checkpoints: bool, deterministic: bool = True,
             keep_heap: bool = True) -> dict[str, Any]:
    from sft.pipeline.train import train

    run_dir = args.workdir / "run"
    overrides = sft_overrides(args, checkpoints, run_dir, deterministic) + ([] if keep_heap else ["keep_cpu_heap=false"])
    metrics = train(harness.compose_sft(overrides, show=True))
    timing = harness.timer_summary()
    # val/acc: sft's post-fit validate of the best checkpoint (= the final weights: the only in-fit
    # validation is after the last epoch), as written to <run>/metrics.json.
    metrics_file = run_dir / "metrics.json"
    written = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    val_acc = written.get("val/acc", metrics.get("val/acc"))
    if val_acc is None:
        raise RuntimeError(f"no val/acc in sft's metrics: {sorted(metrics)}")
    if checkpoints:
        notes = f"default callbacks, {timing['n_ckpt']} ckpt writes ({timing['ckpt_s']:.1f}s, in train s)"
    else:
        notes = "callbacks=none (no checkpoints)"
    if not deterministic:
        notes += ", trainer.deterministic=false"
    if not keep_heap:
        notes += ", keep_cpu_heap=false"
    return {**timing, "val_acc": val_acc, "fit_seconds": metrics.get("fit/seconds"),
            "precision": "fp32", "val_loss": metrics.get("val/loss"),
            "metrics_json": written or None, "notes": f"fused AdamW, {notes}"}


# ============================================================================ child entry


PEERS = {
    "plain": peer_plain,
    "sft": lambda args: peer_sft(args, checkpoints=True),
    "sft_no_ckpt": lambda args: peer_sft(args, checkpoints=False),
    "sft_nondet": lambda args: peer_sft(args, checkpoints=True, deterministic=False),
    "sft_trimmed_heap": lambda args: peer_sft(args, checkpoints=True, keep_heap=False),
}


def run_child(args: argparse.Namespace) -> int:
    harness.setup_child(THREADS, env={"HF_HUB_OFFLINE": "1"})
    peer = args.peer

    def run() -> dict[str, Any]:
        if peer not in PEERS:
            raise ValueError(f"unknown peer {peer!r}; choose from {', '.join(ALL_PEERS)}")
        result = PEERS[peer](args)
        if not result["images"]:
            raise RuntimeError("no training images were processed")
        return result

    return harness.child_main({"peer": peer, "epochs": args.epochs}, run,
                              lambda r: {"images_per_s": r["images"] / r["train_s"]})


# ============================================================================ parent


def run_peer(name: str, repeat: int, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    peer_dir = workdir / f"{name}-{repeat}"
    peer_dir.mkdir(parents=True, exist_ok=True)
    return harness.run_peer(
        __file__, name, ["--data-dir", str(args.data_dir), "--epochs", str(args.epochs), "--workdir", str(peer_dir)],
        label=f"{name} (repeat {repeat})", log_path=workdir / f"{name}-{repeat}.log", timeout=args.timeout,
        verbose=args.verbose, tag={"repeat": repeat}, load_avg=True,
        describe=lambda r: (f"{r['images']} images in {r['train_s']:.1f}s = {r['images_per_s']:.2f} images/s, "
                            f"val acc {r['val_acc']:.4f}"))


def summarize(runs: list[dict[str, Any]], peers: list[str]) -> list[dict[str, Any]]:
    """One row per peer: medians over its successful repeats (images/s range kept)."""
    rows = []
    for peer in peers:
        mine = [r for r in runs if r["peer"] == peer]
        ok = [r for r in mine if r.get("status") == "ok"]
        row: dict[str, Any] = {"peer": peer, "runs": len(mine), "ok_runs": len(ok),
                               "peak_rss_mib": max((r["peak_rss_mib"] for r in mine if "peak_rss_mib" in r),
                                                   default=None)}
        if not ok:
            failed = next((r for r in mine if r.get("status") != "ok"), {})
            row.update({"status": "failed", "error": failed.get("error", "not run")})
            rows.append(row)
            continue
        ips = [r["images_per_s"] for r in ok]
        row.update({
            "status": "ok" if len(ok) == len(mine) else f"{len(ok)}/{len(mine)} ok",
            "train_s": statistics.median(r["train_s"] for r in ok),
            "images": ok[0]["images"],
            "images_per_s": statistics.median(ips),
            "images_per_s_all": ips,
            "val_acc": statistics.median(r["val_acc"] for r in ok),
            "ckpt_s": statistics.median(r["ckpt_s"] for r in ok) if "ckpt_s" in ok[0] else None,
            # Steady state: the median batch time of each run, its first batch (warm-up) left out.
            "cpu_util": statistics.median(r["cpu_util"] for r in ok),
            "faults_per_step": statistics.median(r["fit_faults"] / r["steps"] for r in ok)
            if all(r.get("fit_faults") is not None and r.get("steps") for r in ok) else None,
            "median_step_s": statistics.median(statistics.median(r["step_s"][1:] or r["step_s"]) for r in ok),
            "init_param_sum": ok[0].get("init_param_sum"),
            "notes": ok[0].get("notes", ""),
        })
        rows.append(row)
    base = next((r for r in rows if r["peer"] == "plain" and "images_per_s" in r), None)
    for r in rows:
        r["vs_plain"] = r["images_per_s"] / base["images_per_s"] if base and "images_per_s" in r else None
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| peer | status | runs | train s | images | images/s | images/s range | vs plain | median step s | "
             "CPU cores used | page faults / step | val acc | peak RSS MiB | ckpt s | notes |",
             "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        ok = "images_per_s" in r
        spread = (f"{min(r['images_per_s_all']):.2f}-{max(r['images_per_s_all']):.2f}"
                  if ok and len(r["images_per_s_all"]) > 1 else "")
        notes = r.get("notes", "") if ok else harness.failure_note(r)
        lines.append(
            f"| {r['peer']} | {r['status']} | {r['runs']} | {fmt(r.get('train_s'), '.1f')} | "
            f"{fmt(r.get('images'), 'd')} | {fmt(r.get('images_per_s'), '.2f')} | {spread} | "
            f"{fmt(r.get('vs_plain'), '.3f') + 'x' if r.get('vs_plain') else 'n/a'} | "
            f"{fmt(r.get('median_step_s'), '.2f')} | {fmt(r.get('cpu_util'), '.2f')} | "
            f"{fmt(r.get('faults_per_step'), '.0f')} | {fmt(r.get('val_acc'), '.4f')} | {fmt(r.get('peak_rss_mib'), '.0f')} | "
            f"{fmt(r.get('ckpt_s'), '.2f')} | {notes} |"
        )
    return "\n".join(lines)


def is_contended(run: dict[str, Any]) -> bool:
    return run.get("status") == "ok" and run.get("cpu_util") is not None and run["cpu_util"] < CONTENDED * THREADS


def target_lines(rows: list[dict[str, Any]], runs: list[dict[str, Any]]) -> list[str]:
    out = []
    head = f"Target (issue #3, sft >= {TARGET:.2f}x the plain loop's images/s):"
    for r in rows:
        if not r["peer"].startswith("sft"):
            continue
        if r.get("vs_plain") is None:
            out.append(f"{head} {r['peer']}: not measured (a peer failed or plain was not run)")
            continue
        met = r["vs_plain"] >= TARGET
        caveat = ""
        if any(is_contended(x) for x in runs if x["peer"] in ("plain", r["peer"])):
            caveat = " (but some of these runs were contended: not conclusive, run again on a quiet machine)"
        out.append(f"{head} {r['peer']} {r['vs_plain']:.3f}x ({(r['vs_plain'] - 1) * 100:+.1f}%): "
                   f"{'MET' if met else 'NOT MET'}{caveat}")
    return out


def run_parent(args: argparse.Namespace) -> int:
    peers = harness.parse_peers(args.peers, ALL_PEERS)
    if peers is None:
        return 2
    for split in ("train", "val"):
        if not (args.data_dir / split).is_dir():
            print(f"{args.data_dir / split} does not exist (set --data-dir to an ImageFolder tree with train/ "
                  "and val/)", file=sys.stderr)
            return 2
    source_dir = args.data_dir
    with harness.scratch_dir("sft-bench-image-", args.keep) as workdir:
        if args.train_per_class is not None or args.val_per_class is not None:
            args.data_dir = make_subset(source_dir, workdir / "data", args.train_per_class, args.val_per_class)
        counts = count_images(args.data_dir)
        n_train, n_val = sum(counts["train"].values()), sum(counts["val"].values())
        print(f"[bench] {len(peers)} peer(s) x {args.repeats} repeat(s), {args.epochs} epoch(s), data "
              f"{args.data_dir} (train {n_train}, val {n_val}), work dir {workdir}", file=sys.stderr, flush=True)
        started = time.perf_counter()
        runs: list[dict[str, Any]] = []
        # Interleaved (plain, sft, ..., plain, sft, ...): slow drifts in machine load hit every peer alike.
        for repeat in range(args.repeats):
            runs += [run_peer(p, repeat, args, workdir) for p in peers]

    rows = summarize(runs, peers)
    sums = {r["peer"]: r.get("init_param_sum") for r in rows if r.get("init_param_sum") is not None}
    same_init = len({round(v, 6) for v in sums.values()}) <= 1 if sums else None
    report = {
        **harness.report_stamp(),
        "task": {"model": f"{ARCH} (packaged ImageNet weights, timm tf_efficientnet_lite0)", "freeze": "none",
                 "data": str(source_dir), "subset_per_class": {"train": args.train_per_class,
                                                               "val": args.val_per_class},
                 "images": counts, "train_images": n_train, "val_images": n_val, "batch_size": BATCH_SIZE,
                 "drop_last": True, "optimizer": "AdamW (fused), decay on weight matrices only", "lr": LR,
                 "weight_decay": WEIGHT_DECAY, "schedule": "constant", "epochs": args.epochs, "seed": SEED,
                 "precision": "fp32", "num_workers": 0, "torch_threads": THREADS, "repeats": args.repeats},
        "machine": harness.machine_info(),
        "versions": harness.versions(("torch", "torchvision", "timm", "lightning", "hydra")),
        "bench_wall_s": time.perf_counter() - started,
        "same_initial_weights": same_init,
        "summary": rows,
        "runs": runs,
    }
    table = markdown_table(rows)
    targets = target_lines(rows, runs)
    print()
    print(f"hymenoptera ants/bees ({n_train} train, {n_val} val images), {ARCH}, full fine-tune, {args.epochs} "
          f"epoch(s), batch {BATCH_SIZE} (drop_last), AdamW lr {LR:g} wd {WEIGHT_DECAY:g} constant, fp32, "
          f"{THREADS} threads, median of {args.repeats} run(s) per peer")
    print()
    print(table)
    print()
    for line in targets:
        print(line)
    if same_init is not None:
        print(f"Same initial weights in every peer (parameter checksum): {'yes' if same_init else 'NO ' + str(sums)}")
    contended = [f"{r['peer']}#{r['repeat']} ({r['cpu_util']:.2f})" for r in runs if is_contended(r)]
    if contended:
        print(f"WARNING: these runs used under {CONTENDED * THREADS:.1f} of their {THREADS} threads' CPU time while "
              f"training, so something else was probably using the CPU and their timings are not comparable: "
              f"{', '.join(contended)}")
    report["contended_runs"] = contended
    report["table_markdown"] = table
    report["target"] = targets
    harness.write_report(report, args.output)
    return 0 if all(r.get("status") == "ok" for r in runs) else 1


def main(argv: list[str] | None = None) -> int:
    p = harness.new_parser(__doc__)
    p.add_argument("--peers", default=",".join(DEFAULT_PEERS),
                   help=f"comma list from {', '.join(ALL_PEERS)} (default {','.join(DEFAULT_PEERS)})")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA,
                   help=f"ImageFolder tree with train/<class>/ and val/<class>/ (default {DEFAULT_DATA})")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default 2; 1 with --quick)")
    p.add_argument("--repeats", type=int, default=None,
                   help="runs per peer, interleaved; the table shows medians (default 3; 1 with --quick)")
    p.add_argument("--train-per-class", type=int, default=None,
                   help="use only the first N train images of each class (default all; 32 with --quick)")
    p.add_argument("--val-per-class", type=int, default=None,
                   help="use only the first N val images of each class (default all; 16 with --quick)")
    p.add_argument("--output", default=None,
                   help="JSON results (default bench/results_image.json; bench/results_image_quick.json with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 1 epoch, 32 train + 16 val images per class, 1 repeat")
    p.add_argument("--timeout", type=int, default=None, help="seconds per peer run (default 1800; 600 with --quick)")
    harness.add_run_args(p)
    args = p.parse_args(argv)

    if args.epochs is None:
        args.epochs = 1 if args.quick else 2
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.quick:
        args.train_per_class = 32 if args.train_per_class is None else args.train_per_class
        args.val_per_class = 16 if args.val_per_class is None else args.val_per_class
    if args.timeout is None:
        args.timeout = 600 if args.quick else 1800
    if args.output is None:
        args.output = str(HERE / ("results_image_quick.json" if args.quick else "results_image.json"))
    if args.epochs < 1 or args.repeats < 1:
        p.error("--epochs and --repeats must be >= 1")
    args.data_dir = args.data_dir.expanduser().resolve()

    return harness.dispatch(args, "sft-bench-image-", run_child, run_parent)


if __name__ == "__main__":
    sys.exit(main())
