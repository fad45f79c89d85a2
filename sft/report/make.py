"""Make the report of a model on its data: the outputs every section reads, the sections, and the files
(``report.html``, ``report.json``, ``predictions.csv``, ``calibration.json``). Plain arguments only: the
pipeline (after training) and ``sft.explain`` (from a run folder) both call :func:`make_report`."""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sft.errors import ConfigError, SftError
from sft.inference import split_outputs
from sft.report.context import ReportContext
from sft.report.page import write
from sft.report.registry import check_report_settings, section_module
from sft.rundir import CALIBRATION_FILE, TIMESTAMP

log = logging.getLogger("sft")


def train_labels(datamodule: Any) -> torch.Tensor:
    """The training split's targets as the task encodes them (class ids; scores; label rows); None for tagging."""
    task = datamodule.task
    if task.kind == "token":
        return None
    return task.targets([label for _, label in datamodule.splits.train])


def build_context(model: Any, datamodule: Any, *, split: str = "test", seed: int = 0,
                  pretrained: Callable[[], Any] | None = None) -> ReportContext:
    """Val and ``split`` outputs of ``model`` (set up data module), ready for the sections."""
    started = time.perf_counter()
    datamodule.setup("test")
    model.eval()
    evaluated = split_outputs(model, datamodule, split)
    same = split == "val" or datamodule.splits.val == getattr(datamodule.splits, split)
    val = evaluated if same else split_outputs(model, datamodule, "val")
    ctx = ReportContext(model=model, datamodule=datamodule, label_names=list(datamodule.label_names),
                        test=evaluated, val=val, train_labels=train_labels(datamodule), pretrained=pretrained,
                        seed=seed, split=split, val_is_evaluated=same)
    ctx.extras["outputs_seconds"] = time.perf_counter() - started
    log.info("Report: %-14s %6.1f s", "outputs", ctx.extras["outputs_seconds"])
    return ctx


def run_sections(ctx: ReportContext, report: dict[str, Any]) -> dict[str, Any]:
    """Every configured section, timed; a section that cannot run on this model is skipped with its reason."""
    check_report_settings(report)
    sections, timings, skipped = {}, {}, {}
    task = ctx.task
    for name in report.get("sections", []):
        started = time.perf_counter()
        reason = task.not_applicable(name)
        if reason:  # said in one line in the section's place, rather than misleading numbers
            skipped[name] = f"does not apply: {reason}"
            timings[name] = 0.0
            log.info("Report: %-14s skipped: %s", name, skipped[name])
            continue
        try:
            sections[name] = section_module(name).section(ctx, dict(report.get(name) or {}))
            ctx.extras.setdefault(name, sections[name])  # a section may have left richer state (scores) there
        except ConfigError:
            raise  # a bad setting: the user must fix it
        except (SftError, NotImplementedError) as e:  # this model or data cannot have it (e.g. nothing to remove)
            skipped[name] = str(e) or f"{name} is not supported for {type(ctx.model).__name__}"
        except Exception as e:  # one failing section must not lose the others, nor the finished run
            log.exception("Report: the %s section failed", name)
            skipped[name] = f"failed: {type(e).__name__}: {e}"
        timings[name] = round(time.perf_counter() - started, 3)
        log.info("Report: %-14s %6.1f s%s", name, timings[name], f" (skipped: {skipped[name]})" if name in skipped else "")
    return {"sections": sections, "timings": timings, "skipped": skipped}


def write_predictions(ctx: ReportContext, folder: Path) -> Path:
    """Per-example predictions on the report split (read by the stability report): ``index``, the true ``label``,
    the ``pred``iction and the task's per-example values (class probabilities; a score; label sets; tags)."""
    path = folder / "predictions.csv"
    task, names = ctx.task, ctx.label_names
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        if task.kind == "single_label":
            writer.writerow(["index", "label", "pred", "confidence", *(f"prob_{n}" for n in names)])
            for i, (label, row) in enumerate(zip(ctx.test.labels.tolist(), ctx.test.probs.tolist(), strict=True)):
                pred = max(range(len(row)), key=row.__getitem__)
                writer.writerow([i, names[label], names[pred], f"{row[pred]:.6f}", *(f"{p:.6f}" for p in row)])
            return path
        writer.writerow(["index", "label", "pred"])
        for i, (label, pred) in enumerate(zip(*task_predictions(ctx), strict=True)):
            writer.writerow([i, label, pred])
    return path


def task_predictions(ctx: ReportContext) -> tuple[list[str], list[str]]:
    """(true, predicted) per example of the report split as text: scores, ``;``-joined label sets, space-joined
    tags of the labelled words."""
    task, logits, labels = ctx.task, ctx.test.logits, ctx.test.labels
    if task.kind == "regression":
        return [f"{v:.6f}" for v in labels.tolist()], [f"{v:.6f}" for v in logits.reshape(-1).tolist()]
    if task.kind == "multi_label":
        chosen = torch.sigmoid(logits) >= ctx.model.thresholds.detach().cpu()
        sets = lambda rows: [";".join(n for n, on in zip(task.label_names, row, strict=True) if on)  # noqa: E731
                             for row in rows.bool().tolist()]
        return sets(labels), sets(chosen)
    from sft.tasks.token import word_tags

    preds, true = word_tags(logits, labels)
    join = lambda rows: [" ".join(task.label_names[i] for i in row.tolist()) for row in rows]  # noqa: E731
    return join(true), join(preds)


def save_temperature(report: dict[str, Any], folder: Path) -> Path | None:
    """The temperature fitted on val, in ``folder/calibration.json`` (the export, else the run folder)."""
    cal = report["sections"].get("calibration") or {}
    path = folder / CALIBRATION_FILE
    if cal.get("temperature") is None:
        path.unlink(missing_ok=True)  # an older fit must not be used for a model/data it no longer describes
        return None
    payload = {"temperature": cal["temperature"], "fit": cal.get("fit"),
               "test_ece_before": cal["before"]["ece"], "test_ece_after": (cal.get("after") or {}).get("ece"),
               "data": report["run"].get("data"),
               "use": "probabilities = softmax(logits / temperature); `python -m sft.predict MODEL --calibrated`"}
    path.write_text(json.dumps(payload, indent=2))
    return path


def calibration_metrics(report: dict[str, Any] | None, split: str) -> dict[str, float]:
    """The calibration numbers that join metrics.json (``test/ece``, ``calibration/temperature``...)."""
    cal = (report or {}).get("sections", {}).get("calibration")
    if not cal:
        return {}
    metrics = {f"{split}/ece": cal["before"]["ece"], f"{split}/nll": cal["before"]["nll"],
               f"{split}/brier": cal["before"]["brier"]}
    if cal.get("after") and not cal.get("after_in_sample"):  # an in-sample "after" is no evidence
        metrics.update({f"{split}/ece_calibrated": cal["after"]["ece"], "calibration/temperature": cal["temperature"]})
    return metrics


def make_report(ctx: ReportContext, report: dict[str, Any], run_dir: Path, run_info: dict[str, Any]) -> dict[str, Any]:
    """Run the sections and write report.html, report.json, predictions.csv (and calibration.json). ``run_info``:
    what the page's header names (model, data); the split is the context's."""
    started = time.perf_counter()
    result = {"run": {**run_info, "split": ctx.split, "dir": str(run_dir), "created": time.strftime(TIMESTAMP)},
              **run_sections(ctx, report)}
    run_dir.mkdir(parents=True, exist_ok=True)
    write_predictions(ctx, run_dir)
    export_dir = run_dir / "export"
    save_temperature(result, export_dir if export_dir.is_dir() else run_dir)
    html_path, _ = write(result, run_dir)
    log.info("Report: %s (%.1f s in sections, %.1f s in all)", html_path, sum(result["timings"].values()),
             time.perf_counter() - started + ctx.extras.get("outputs_seconds", 0.0))
    return result
