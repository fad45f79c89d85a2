"""``python -m sft.explain FOLDER [overrides]``: the trust report of a trained model, or of a seed sweep.

FOLDER is a run folder (writes ``report.html``, ``report.json`` and ``predictions.csv`` there) or a Hydra
multirun folder of runs that differ in seed (writes a stability report over them). Overrides choose
what the report does, e.g. ``report=fast`` or ``report.attributions.method=occlusion``; data overrides
(``data=... data.path=...``) evaluate on other data than the run's own.

    python -m sft.explain outputs/runs/2026-01-01_12-00-00
    python -m sft.explain outputs/runs/... report.sections=[performance,calibration,attributions]
    python -m sft.explain outputs/multirun/2026-01-01_12-00-00
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

from sft.errors import ConfigError, command_line

log = logging.getLogger("sft")


# ---------------------------------------------------------------------- standalone
def _is_run_dir(folder: Path) -> bool:
    from sft.rundir import run_dir_of

    return run_dir_of(folder) == folder


def report_for_run(run_dir: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """The report of a finished run folder, from its export (or best checkpoint) and its saved config."""
    from omegaconf import OmegaConf

    from sft.config import compose_config, data_config, override_key, plain
    from sft.inference import label_names, load_model
    from sft.pipeline.build import build_datamodule, pretrained_builder, run_summary
    from sft.report.make import build_context, make_report
    from sft.report.registry import check_report_settings, report_enabled

    run_dir = Path(run_dir).expanduser().resolve()
    if not _is_run_dir(run_dir):
        raise ConfigError(f"{str(run_dir)!r} is not an sft run folder (no config.yaml + run.json): give the folder "
                          "a run wrote, or a multirun folder of such runs.")
    overrides = list(overrides or [])
    report_overrides = [o for o in overrides if o.lstrip("+~").startswith("report")]
    data_overrides = [o for o in overrides if o not in report_overrides]
    run_cfg = OmegaConf.load(run_dir / "config.yaml")
    group_choice = [o for o in report_overrides if override_key(o) == "report"]
    if group_choice or not (run_cfg.get("report") or {}).get("sections"):  # report=fast etc., or the run had none
        report_cfg = compose_config(report_overrides).report
    else:  # report.x=y: on top of what the run itself used
        report_cfg = OmegaConf.merge(run_cfg.report, OmegaConf.from_dotlist(
            [o.lstrip("+").removeprefix("report.") for o in report_overrides]))
    report = plain(report_cfg)
    if not report_enabled(report):
        raise ConfigError("report.sections is empty: name the sections to run, e.g. report=default or "
                          "report.sections=[performance,calibration].")
    check_report_settings(report)

    model, data_inputs = load_model(run_dir)
    import torch

    if torch.cuda.is_available():
        model.to("cuda")
    names = label_names(model)
    data_cfg = data_config(run_dir, data_overrides)
    datamodule = build_datamodule(data_cfg, **data_inputs, label_names=names)
    datamodule.prepare_data()
    split = report.get("split", "test")
    ctx = build_context(model, datamodule, split=split, seed=int(run_cfg.get("seed", 0)),
                        pretrained=pretrained_builder(run_cfg.model, model.task) if "model" in run_cfg else None)
    run_cfg.data = data_cfg
    return make_report(ctx, report, run_dir, run_summary(run_cfg))


def report_for_sweep(folder: str | Path) -> dict[str, Any]:
    """Stability over the runs of a multirun folder; runs without predictions.csv get one first."""
    from sft.report.page import write
    from sft.report.stability import find_runs, stability
    from sft.rundir import TIMESTAMP

    folder = Path(folder).expanduser().resolve()
    for run in find_runs(folder):
        if not (run / "predictions.csv").is_file():
            log.info("Predictions for %s (it has no report yet)", run.name)
            report_for_run(run, ["report=fast"])
    started = time.perf_counter()
    report = {"run": {"dir": str(folder), "model": "", "data": "", "split": "test",
                      "created": time.strftime(TIMESTAMP)},
              "sections": {"stability": stability(folder)}, "skipped": {}}
    report["timings"] = {"stability": round(time.perf_counter() - started, 3)}
    write(report, folder)
    return report


@command_line
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sft.explain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="a run folder, or a multirun folder of runs differing in seed")
    parser.add_argument("overrides", nargs="*", help="report.* and data overrides, e.g. report=fast")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    folder = Path(args.folder).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"{str(folder)!r} is not a folder: give a run folder or a multirun folder.")
    if _is_run_dir(folder):
        report_for_run(folder, args.overrides)
    else:
        if args.overrides:
            raise ConfigError("overrides apply to a single run folder, not to a multirun folder.")
        report_for_sweep(folder)
    print(folder / "report.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
