"""``train(cfg)``: the whole fine-tuning job for one composed config. Called by ``sft.run`` and by tests.

check the config -> data (label space) -> model -> fit (Lightning, or a scikit-learn head) -> finish
(export, report, metrics.json).
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from sft.export import export_settings
from sft.pipeline.checks import check_config
from sft.rundir import resume_checkpoint

log = logging.getLogger("sft")


def train(cfg: DictConfig) -> dict[str, float]:
    """Fine-tune, evaluate and export as ``cfg`` says; returns the flat metrics written to metrics.json."""
    check_config(cfg)
    export = export_settings(cfg.get("export", True))  # checked by check_config
    output_dir = Path(cfg.output_dir).expanduser().resolve()
    ckpt_path = resume_checkpoint(cfg.get("ckpt_path"), cfg.get("resume", "auto"), output_dir)  # fails fast

    # Only now the modules that import torch and Lightning: a bad config or resume fails in about a second.
    from sft.pipeline import build
    from sft.pipeline.finish import finish
    from sft.pipeline.fit import fit_lightning, fit_sklearn, setup_process, step_budget

    cfg = step_budget(cfg)
    setup_process(cfg)
    build.check_modality(cfg)
    datamodule = build.build_datamodule(cfg.data, **build.data_inputs(cfg.model), seed=cfg.seed)
    datamodule.prepare_data()  # reads and validates (and tokenizes, cached) before the model loads
    log.info("Data: %s labels %s, train/val/test = %s", type(datamodule.source).__name__, datamodule.label_names,
             "/".join(str(len(getattr(datamodule.splits, s))) for s in ("train", "val", "test")))
    build.check_metric(cfg.optimized_metric, datamodule.task)
    model = build.build_model(cfg, datamodule)

    if (cfg.get("probe") or {}).get("estimator"):
        fitted = fit_sklearn(cfg, model, datamodule, output_dir)
    else:
        fitted = fit_lightning(cfg, model, datamodule, output_dir, ckpt_path)

    report = build.report_settings(cfg)
    return finish(fitted, output_dir, export=export, report=report, seed=cfg.seed,
                  pretrained=build.pretrained_builder(cfg.model, datamodule.task),
                  run_summary=build.run_summary(cfg))
