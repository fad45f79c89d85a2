"""The one finish step every fitter returns into: export, metrics.json, the report."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sft.export import ADAPTER_DIR, ONNX_FILE, ExportSettings, export_onnx, export_settings
from sft.pipeline.fit import Fitted
from sft.report.make import build_context, calibration_metrics, make_report
from sft.rundir import write_metrics

log = logging.getLogger("sft")


def finish(fitted: Fitted, output_dir: Path, *, export: bool | ExportSettings = True,
           report: dict[str, Any] | None = None, seed: int = 0, pretrained: Callable[[], Any] | None = None,
           run_summary: dict[str, str] | None = None) -> dict[str, float]:
    """Export the model (and its ONNX graph when ``export.onnx``, a LoRA adapter when ``export.adapter``), run the report (``report``: its settings, None
    for none) and write metrics.json once: the metrics plus the report's calibration numbers. Rank zero only;
    returns the metrics."""
    metrics = dict(fitted.metrics)
    if not fitted.is_global_zero:
        return metrics
    settings = export_settings(export)
    if settings.enabled:
        export_dir = output_dir / "export"
        stale = export_dir / ONNX_FILE  # an earlier export's graph (or adapter): never left beside other weights
        stale.unlink(missing_ok=True)
        shutil.rmtree(export_dir / ADAPTER_DIR, ignore_errors=True)
        if fitted.exportable:
            fitted.model.export(export_dir, fitted.datamodule)
            if settings.onnx:
                try:
                    export_onnx(export_dir)
                except Exception as e:  # the trained model and its export stand: finish the run, say how to retry
                    log.error("export.onnx=true: the ONNX export failed (%s: %s). The run and export/ are complete; "
                              "retry with `python -m sft.export %s --format onnx`.", type(e).__name__, e, output_dir)
            if settings.adapter:
                fitted.model.save_adapter(export_dir / ADAPTER_DIR)
        elif settings.onnx:
            log.warning("export.onnx=true: no %s, as there is no model export (the head is outside the model).",
                        ONNX_FILE)
        for write in fitted.extra_files:
            write(export_dir)
    headline = fitted.model.task.metric_names[:2]  # the task's own (acc and f1; pearson and spearman; ...)
    summary = ", ".join(f"{k}={metrics[k]:.4f}" for k in (f"{split}/{name}" for split in ("val", "test")
                                                            for name in headline) if k in metrics)
    log.info("Done: %s. Results in %s", summary, output_dir)
    if report is not None and fitted.exportable:
        metrics.update(_report(fitted, output_dir, report, metrics, seed, pretrained, run_summary or {}))
    write_metrics(output_dir, metrics)  # its presence marks a finished run
    return metrics


def _report(fitted: Fitted, output_dir: Path, report: dict[str, Any], metrics: dict[str, float], seed: int,
            pretrained: Callable[[], Any] | None, run_summary: dict[str, str]) -> dict[str, float]:
    """The trust report; if it fails, the metrics are written first so the finished run is on record."""
    split = report.get("split", "test")
    try:
        if fitted.device is not None:  # Lightning leaves the model on the CPU after test
            fitted.model.to(fitted.device)
        ctx = build_context(fitted.model, fitted.datamodule, split=split, seed=seed, pretrained=pretrained)
        result = make_report(ctx, report, output_dir, run_summary)
    except Exception:
        write_metrics(output_dir, metrics)
        log.error("The report failed; the model, export and metrics are saved. Retry with "
                  "`python -m sft.explain %s` (or skip it with report=none).", output_dir)
        raise
    return calibration_metrics(result, split)
