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
import csv
import importlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from sft.errors import ConfigError, SftError

log = logging.getLogger("sft")

SECTIONS = {  # report section -> module with ``section(ctx, settings) -> dict``
    "performance": "sft.report.performance",
    "calibration": "sft.report.calibration",
    "attributions": "sft.report.attribution",
    "faithfulness": "sft.report.faithfulness",
    "robustness": "sft.report.robustness",
    "representation": "sft.report.representation",
}
CALIBRATION_FILE = "calibration.json"  # the fitted temperature, beside the export (sft.predict --calibrated)


def check_report_config(report: Any) -> None:
    """Unknown sections and bad section settings fail before any work (not after training)."""
    if not report.get("enabled", True):
        return
    sections = report.get("sections") or []
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise ConfigError(f"report.sections has unknown section(s) {unknown}; choose from {sorted(SECTIONS)}.")
    if report.get("split", "test") not in ("val", "test"):
        raise ConfigError(f"report.split={report.get('split')!r}: choose val or test.")
    for name in sections:
        check = getattr(importlib.import_module(SECTIONS[name]), "check_settings", None)
        if check is not None:
            check(dict(report.get(name) or {}))


def _plain(node: Any) -> Any:
    from omegaconf import DictConfig, ListConfig, OmegaConf

    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig | ListConfig) else node


def train_labels(datamodule: Any) -> Any:
    import torch

    ids = datamodule.label2id
    return torch.tensor([ids[label] for _, label in datamodule.splits.train], dtype=torch.long)


def build_context(model: Any, datamodule: Any, *, split: str = "test", seed: int = 0, pretrained: Any = None) -> Any:
    """Val and ``split`` outputs of ``model`` (set up data module), ready for the sections."""
    from sft.report.context import ReportContext, collect_outputs

    datamodule.setup("test")
    model.eval()
    evaluated = collect_outputs(model, datamodule, split)
    same = split == "val" or datamodule.splits.val == getattr(datamodule.splits, split)
    val = evaluated if same else collect_outputs(model, datamodule, "val")
    return ReportContext(model=model, datamodule=datamodule, label_names=list(datamodule.label_names),
                         test=evaluated, val=val, train_labels=train_labels(datamodule), pretrained=pretrained,
                         seed=seed, split=split, val_is_evaluated=same)


def run_sections(ctx: Any, report_cfg: Any) -> dict[str, Any]:
    """Every configured section, timed; a section that cannot run on this model is skipped with its reason."""
    report_cfg = _plain(report_cfg)
    check_report_config(report_cfg)
    sections, timings, skipped = {}, {}, {}
    for name in report_cfg.get("sections", []):
        started = time.perf_counter()
        module = importlib.import_module(SECTIONS[name])
        try:
            sections[name] = module.section(ctx, dict(report_cfg.get(name) or {}))
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


def write_predictions(ctx: Any, folder: Path) -> Path:
    """Per-example predictions on the report split (read by the stability report)."""
    path = folder / "predictions.csv"
    names = ctx.label_names
    probs = ctx.test.probs
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "label", "pred", "confidence", *(f"prob_{n}" for n in names)])
        for i, (label, row) in enumerate(zip(ctx.test.labels.tolist(), probs.tolist(), strict=True)):
            pred = max(range(len(row)), key=row.__getitem__)
            writer.writerow([i, names[label], names[pred], f"{row[pred]:.6f}", *(f"{p:.6f}" for p in row)])
    return path


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


def make_report(ctx: Any, report_cfg: Any, run_dir: Path, run_info: dict[str, Any]) -> dict[str, Any]:
    """Run the sections and write report.html, report.json, predictions.csv (and calibration.json)."""
    from sft.report.html import write

    started = time.perf_counter()
    report = {"run": {**run_info, "dir": str(run_dir), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
              **run_sections(ctx, report_cfg)}
    run_dir.mkdir(parents=True, exist_ok=True)
    write_predictions(ctx, run_dir)
    export_dir = run_dir / "export"
    save_temperature(report, export_dir if export_dir.is_dir() else run_dir)
    html_path, _ = write(report, run_dir)
    log.info("Report: %s (%.1f s in sections, %.1f s in all)", html_path, sum(report["timings"].values()),
             time.perf_counter() - started + ctx.extras.get("outputs_seconds", 0.0))
    return report


def pretrained_builder(model_cfg: Any, num_labels: int) -> Any:
    """A zero-argument callable building the model as it was before fine-tuning (same architecture)."""
    def build_pretrained() -> Any:
        from sft.train import build

        return build(model_cfg, _partial_=True)(num_labels=num_labels, id2label=None, optimizer=None, scheduler=None,
                                                 freeze="none", monitor="val/acc").eval()

    return build_pretrained


def report_after_training(cfg: Any, model: Any, datamodule: Any, output_dir: Path,
                          device: Any = None) -> dict[str, Any] | None:
    """Called by :func:`sft.train.train` after test (rank zero)."""
    report_cfg = cfg.get("report")
    if not report_cfg or not report_cfg.get("enabled", True):
        return None
    started = time.perf_counter()
    if device is not None:  # Lightning leaves the model on the CPU after test
        model.to(device)
    ctx = build_context(model, datamodule, split=report_cfg.get("split", "test"), seed=cfg.seed,
                        pretrained=pretrained_builder(cfg.model, len(datamodule.label_names)))
    ctx.extras["outputs_seconds"] = time.perf_counter() - started
    log.info("Report: %-14s %6.1f s", "outputs", ctx.extras["outputs_seconds"])
    return make_report(ctx, report_cfg, output_dir, _run_info(cfg, report_cfg))


def _run_info(cfg: Any, report_cfg: Any) -> dict[str, Any]:
    model = cfg.model.get("name_or_path") or cfg.model.get("arch") or cfg.model.get("_target_")
    data = cfg.data.get("path") or cfg.data.get("_target_")
    return {"model": str(model), "data": str(data), "split": str(report_cfg.get("split", "test"))}


# ---------------------------------------------------------------------- standalone
def _is_run_dir(folder: Path) -> bool:
    from sft.eval import run_dir_of

    return run_dir_of(folder) == folder


def report_for_run(run_dir: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """The report of a finished run folder, from its export (or best checkpoint) and its saved config."""
    from omegaconf import OmegaConf

    from sft.eval import compose_config, data_config
    from sft.inference import label_names, load_model
    from sft.train import build

    run_dir = Path(run_dir).expanduser().resolve()
    if not _is_run_dir(run_dir):
        raise ConfigError(f"{str(run_dir)!r} is not an sft run folder (no config.yaml + run.json): give the folder "
                          "a run wrote, or a multirun folder of such runs.")
    overrides = list(overrides or [])
    report_overrides = [o for o in overrides if o.lstrip("+~").startswith("report")]
    data_overrides = [o for o in overrides if o not in report_overrides]
    run_cfg = OmegaConf.load(run_dir / "config.yaml")
    group_choice = [o for o in report_overrides if o.split("=")[0].lstrip("+~") == "report"]
    if group_choice or "report" not in run_cfg:  # report=fast etc.: a fresh composition
        report_cfg = compose_config(report_overrides).report
    else:  # report.x=y: on top of what the run itself used
        report_cfg = OmegaConf.merge(run_cfg.report, OmegaConf.from_dotlist(
            [o.lstrip("+").removeprefix("report.") for o in report_overrides]))
    report_cfg.enabled = True  # asked for explicitly
    check_report_config(_plain(report_cfg))

    model, data_inputs = load_model(run_dir)
    import torch

    if torch.cuda.is_available():
        model.to("cuda")
    names = label_names(model)
    data_cfg = data_config(run_dir, data_overrides)
    datamodule = build(data_cfg, **data_inputs, label_names=names)
    datamodule.prepare_data()
    started = time.perf_counter()
    ctx = build_context(model, datamodule, split=report_cfg.get("split", "test"), seed=int(run_cfg.get("seed", 0)),
                        pretrained=pretrained_builder(run_cfg.model, len(names)) if "model" in run_cfg else None)
    ctx.extras["outputs_seconds"] = time.perf_counter() - started
    run_cfg.data = data_cfg
    return make_report(ctx, report_cfg, run_dir, _run_info(run_cfg, report_cfg))


def report_for_sweep(folder: str | Path) -> dict[str, Any]:
    """Stability over the runs of a multirun folder; runs without predictions.csv get one first."""
    from sft.report.html import write
    from sft.report.stability import find_runs, stability

    folder = Path(folder).expanduser().resolve()
    for run in find_runs(folder):
        if not (run / "predictions.csv").is_file():
            log.info("Predictions for %s (it has no report yet)", run.name)
            report_for_run(run, ["report=fast"])
    started = time.perf_counter()
    report = {"run": {"dir": str(folder), "model": "", "data": "", "split": "test",
                      "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
              "sections": {"stability": stability(folder)}, "skipped": {}}
    report["timings"] = {"stability": round(time.perf_counter() - started, 3)}
    write(report, folder)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sft.explain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="a run folder, or a multirun folder of runs differing in seed")
    parser.add_argument("overrides", nargs="*", help="report.* and data overrides, e.g. report=fast")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    folder = Path(args.folder).expanduser()
    try:
        if not folder.is_dir():
            raise ConfigError(f"{str(folder)!r} is not a folder: give a run folder or a multirun folder.")
        if _is_run_dir(folder):
            report_for_run(folder, args.overrides)
        else:
            if args.overrides:
                raise ConfigError("overrides apply to a single run folder, not to a multirun folder.")
            report_for_sweep(folder)
    except SftError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(folder / "report.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
