"""Stability over the runs of a seed sweep (a Hydra multirun folder): no model needed, only run folders.

Per metric the mean, sample std, min and max over runs; runs no better than the majority-class
baseline (degenerate: the model collapsed to one class); how often the runs predict the same label per
test example; and whether the runs' configs differ in anything but the seed.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import re
import statistics
from pathlib import Path
from typing import Any

from sft.errors import ConfigError, DataError
from sft.report.figures import runs_figure
from sft.report.htmlparts import box, esc, get_in, how, img, is_num, num, side_by_side, table

RUN_FILES = ("metrics.json", "config.yaml")
SKIPPED_PREFIXES = ("params/", "fit/")  # sizes and timings: not outcomes that vary by seed
PREFERRED_ORDER = ("test/acc", "test/f1", "val/acc", "test/loss")
IGNORED_CONFIG_KEYS = ("seed", "output_dir")
DEGENERATE_TOLERANCE = 1e-9
MISSING = "<missing>"


# ---------------------------------------------------------------------- finding runs
def is_run(folder: Path) -> bool:
    return all((folder / name).is_file() for name in RUN_FILES)


def natural_key(text: str) -> list[Any]:
    """Sort key where digit runs compare as numbers: 2 < 10."""
    # re.split with a group alternates text, digits, text...: the types line up position by position.
    return [int(part) if i % 2 else part.lower() for i, part in enumerate(re.split(r"(\d+)", text))]


def find_runs(folder: str | Path) -> list[Path]:
    """Run folders (holding metrics.json and config.yaml) under ``folder``, at any depth but not inside
    another run folder, in natural order of their relative paths (0, 1, 2, ..., 10)."""
    root = Path(folder)
    runs: list[Path] = []

    def walk(directory: Path) -> None:
        if is_run(directory):
            runs.append(directory)
            return  # a run's own subfolders (checkpoints, export, .hydra) hold no runs
        for child in directory.iterdir():
            if child.is_dir() and not child.is_symlink() and not child.name.startswith("."):
                walk(child)

    if root.is_dir():
        walk(root)
    return sorted(runs, key=lambda run: natural_key(run.relative_to(root).as_posix()))


# ---------------------------------------------------------------------- reading one run
def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON (line {e.lineno}: {e.msg}).") from None


def read_metrics(run: Path) -> dict[str, float]:
    """The finite numeric entries of ``run/metrics.json`` (a flat ``{"test/acc": 0.9, ...}``)."""
    path = run / "metrics.json"
    metrics = _read_json(path)
    if not isinstance(metrics, dict):
        raise DataError(f"{path} must hold a JSON object of metric -> number, not {type(metrics).__name__}.")
    return {key: float(value) for key, value in metrics.items() if _is_number(value)}


def read_report_number(run: Path, *keys: str) -> float | None:
    """The number at ``keys`` in ``run/report.json`` (e.g. sections.performance.accuracy), if there is one."""
    path = run / "report.json"
    if not path.is_file():
        return None
    node: Any = _read_json(path)
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    return float(node) if _is_number(node) else None


def read_majority_baseline(run: Path) -> float | None:
    return read_report_number(run, "sections", "performance", "majority_baseline", "accuracy")


def read_report_accuracy(run: Path) -> float | None:
    """The report's accuracy: on the same split as its majority baseline."""
    return read_report_number(run, "sections", "performance", "accuracy")


def read_predictions(run: Path) -> tuple[dict[int, str] | None, str]:
    """(example index -> predicted label from ``run/predictions.csv``, or None; why it is None)."""
    path = run / "predictions.csv"
    if not path.is_file():
        return None, f"{path} is missing (python -m sft.explain on the run writes it)"
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("index", "pred") if c not in (reader.fieldnames or [])]
        if missing:
            return None, f"{path} has no {' / '.join(missing)} column"
        try:
            return {int(row["index"]): row["pred"] for row in reader}, ""
        except (TypeError, ValueError):
            return None, f"{path} has a non-integer index"


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def read_config(run: Path) -> dict[str, Any]:
    """``run/config.yaml`` flattened to ``{"optimizer.lr": 5e-05, ...}``. Paths inside the run's own
    ``output_dir`` (checkpoint and log folders) are written relative to it, so they compare equal."""
    from omegaconf import OmegaConf

    container = OmegaConf.to_container(OmegaConf.load(run / "config.yaml"), resolve=False)
    if not isinstance(container, dict):
        raise DataError(f"{run / 'config.yaml'} must hold a mapping of settings.")
    flat = _flatten(container)
    output_dir = flat.get("output_dir")
    if isinstance(output_dir, str) and output_dir:
        flat = {k: v.replace(output_dir, "${output_dir}") if isinstance(v, str) else v for k, v in flat.items()}
    return flat


# ---------------------------------------------------------------------- across runs
def metric_stats(values: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation (0 for one value), min and max."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}


def choose_metric_keys(per_run: list[dict[str, float]], names: list[str], metric_keys: list[str] | None) -> list[str]:
    """``metric_keys`` (each must be in every run), else every numeric key all runs share, except
    params/* and fit/*, the usual ones first."""
    if metric_keys is not None:
        for key in metric_keys:
            lacking = [name for name, metrics in zip(names, per_run, strict=True) if key not in metrics]
            if lacking:
                raise ConfigError(f"metric {key!r} is not a number in the metrics.json of run(s) {lacking}.")
        return list(metric_keys)
    shared = set.intersection(*(set(metrics) for metrics in per_run))
    shared = {key for key in shared if not key.startswith(SKIPPED_PREFIXES)}
    return [k for k in PREFERRED_ORDER if k in shared] + sorted(shared - set(PREFERRED_ORDER))


def agreement(runs: list[Path]) -> tuple[dict[str, Any] | None, str]:
    """How often the runs predict the same label, per test example: ``all_agree`` (every run the same)
    and ``pairwise_mean`` (mean over run pairs). None with a reason when predictions cannot be compared."""
    if len(runs) < 2:
        return None, "one run: there is nothing to compare its predictions with"
    tables = []
    for run in runs:
        table, why = read_predictions(run)
        if table is None:
            return None, why
        tables.append(table)
    indices = sorted(tables[0])
    for run, table in zip(runs[1:], tables[1:], strict=True):
        if set(table) != set(indices):
            return None, f"{runs[0]} and {run} predicted different examples (different data or split)"
    if not indices:
        return None, "the predictions files are empty"
    preds = [[table[i] for i in indices] for table in tables]
    columns = list(zip(*preds, strict=True))
    all_agree = sum(len(set(column)) == 1 for column in columns) / len(indices)
    pairs = [sum(x == y for x, y in zip(a, b, strict=True)) / len(indices) for a, b in itertools.combinations(preds, 2)]
    return {"n_examples": len(indices), "all_agree": all_agree, "pairwise_mean": statistics.fmean(pairs)}, ""


def _show(value: Any) -> str:
    if value is MISSING or isinstance(value, str):
        return str(value)
    return json.dumps(value)


def config_differences(configs: list[dict[str, Any]]) -> list[str]:
    """``"key: v1 | v2 | ..."`` (run order) for each setting that is not the same in all runs, ignoring
    the seed, the output folder and hydra's own keys."""
    keys = sorted(set().union(*configs))
    out = []
    for key in keys:
        if key in IGNORED_CONFIG_KEYS or key == "hydra" or key.startswith("hydra."):
            continue
        values = [config.get(key, MISSING) for config in configs]
        if any(_show(v) != _show(values[0]) for v in values[1:]):
            out.append(f"{key}: {' | '.join(_show(v) for v in values)}")
    return out


def stability(folder: str | Path, metric_keys: list[str] | None = None) -> dict[str, Any]:
    """The stability section of a multirun folder (see the module docstring and the report schema)."""
    root = Path(folder).expanduser()
    expected = ("a Hydra multirun folder (e.g. outputs/multirun/<time>, from `python -m sft.run -m seed=1,2,3`) "
                "whose run subfolders each hold metrics.json and config.yaml")
    if not root.is_dir():
        raise ConfigError(f"{str(root)!r} is not a folder: give {expected}.")
    runs = find_runs(root)
    if not runs:
        raise ConfigError(f"No runs found in {str(root)!r}: expected {expected}.")
    names = [run.relative_to(root).as_posix() if run != root else root.name for run in runs]
    per_run = [read_metrics(run) for run in runs]
    configs = [read_config(run) for run in runs]
    baselines = [read_majority_baseline(run) for run in runs]
    keys = choose_metric_keys(per_run, names, metric_keys)

    rows = []
    for name, metrics, config, baseline in zip(names, per_run, configs, baselines, strict=True):
        seed = config.get("seed")
        # The accuracy on the baseline's own split (report.split), else the run's test accuracy.
        report_acc = read_report_accuracy(runs[names.index(name)])
        acc = report_acc if report_acc is not None else metrics.get("test/acc")
        rows.append({"name": name, "seed": int(seed) if _is_number(seed) else None,
                     "metrics": {key: metrics[key] for key in keys}, "majority_baseline": baseline,
                     "degenerate": baseline is not None and acc is not None and acc <= baseline + DEGENERATE_TOLERANCE})
    known = [b for b in baselines if b is not None]
    agreed, why_not = agreement(runs)
    differences = config_differences(configs)
    seeds = [row["seed"] for row in rows]

    notes = []
    if len(known) < len(runs):
        notes.append(f"{len(runs) - len(known)} run(s) have no report.json with a majority baseline: they are not "
                     "checked for degeneracy.")
    if why_not:
        notes.append(f"No agreement: {why_not}.")
    if len(runs) > 1 and len(set(seeds)) < len(seeds):
        notes.append("Some runs share a seed: the spread below is not (only) seed variation.")
    if differences:
        notes.append("The runs differ in more than the seed: the spread mixes seed and setting effects.")
    return {"folder": str(root), "n_runs": len(runs), "runs": rows,
            "metrics": {key: metric_stats([metrics[key] for metrics in per_run]) for key in keys},
            "majority_baseline": statistics.fmean(known) if known else None,
            "degenerate_runs": sum(row["degenerate"] for row in rows),
            "agreement": agreed, "differs_only_in_seed": not differences, "differences": differences,
            "notes": notes}


# -------------------------------------------------------------------------------------------- page

TITLE = "Stability across runs"
HOW = """The same training repeated over {n_runs} runs. The spread (std, min to max) says how much
    a single run's number can be trusted; differences between models smaller than it are noise.
    Agreement counts how often the runs predict the same class for the same example. A degenerate run
    collapsed, e.g. to always predicting one class."""


def render(data: dict[str, Any]) -> str:
    runs = data.get("runs") or []
    metric_names = sorted({name for run in runs for name in (run.get("metrics") or {})})
    run_rows = [[esc(run.get("name")), num(run.get("seed")),
                 *(num((run.get("metrics") or {}).get(m)) for m in metric_names),
                 '<span class="wrong">yes</span>' if run.get("degenerate") else "no"] for run in runs]
    run_table = table(["run", "seed", *metric_names, "degenerate"], run_rows)
    summary_rows = [[esc(name), f"{num(s.get('mean'))} ± {num(s.get('std'))}", num(s.get("min")),
                     num(s.get("max"))]
                    for name, s in (data.get("metrics") or {}).items() if isinstance(s, dict)]
    summary_table = table(["metric", "mean ± std", "min", "max"], summary_rows)

    agreed = data.get("agreement")
    if isinstance(agreed, dict):
        agreement_text = (f"<p>Per-example agreement over {num(agreed.get('n_examples'))} test examples: "
                          f"all runs predict the same class on <b>{num(agreed.get('all_agree'))}</b> of "
                          f"them; two runs agree on <b>{num(agreed.get('pairwise_mean'))}</b> on "
                          "average.</p>")
    else:
        agreement_text = box("note", "No per-example agreement: the runs have no comparable predictions.")
    degenerate = data.get("degenerate_runs") or 0
    degenerate_box = ""
    if degenerate:
        degenerate_box = box("warn", f"<b>{num(degenerate)}</b> run(s) are degenerate (marked in the runs "
                                     "table): leave them out before trusting the mean.")
    differences_box = ""
    if data.get("differs_only_in_seed") is False:
        items = "".join(f"<li>{esc(d)}</li>" for d in data.get("differences") or [])
        differences_box = box("warn", "<b>These runs differ in more than the seed</b>, so the spread mixes "
                                      f"seed noise with the effect of other settings:<ul>{items}</ul>")

    accuracies = [((run.get("metrics") or {}).get("test/acc"), bool(run.get("degenerate"))) for run in runs]
    accuracies = [(acc, bad) for acc, bad in accuracies if is_num(acc)]
    figure = ""
    if accuracies:
        figure = img(runs_figure(accuracies, data.get("majority_baseline")), "test accuracy per run")
    return (how(HOW, n_runs=num(data.get("n_runs"))) + differences_box + degenerate_box
            + side_by_side(summary_table + agreement_text, figure) + "<h3>Runs</h3>" + run_table)


def summary(data: dict[str, Any]) -> list[tuple[str, str]]:
    """The page's headline numbers from this section."""
    stats = [("runs", num(data.get("n_runs")))]
    acc = get_in(data, "metrics", "test/acc")
    if isinstance(acc, dict):
        stats.append(("test/acc mean ± std", f"{num(acc.get('mean'))} ± {num(acc.get('std'))}"))
    return stats + [("degenerate runs", num(data.get("degenerate_runs")))]
