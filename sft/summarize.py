"""Summary of a Hydra sweep folder (``outputs/multirun/<time>/``): every job, the best one, and the spread over seeds.

``python -m sft.summarize SWEEP [--metric val/acc] [--mode max]`` prints the summary as Markdown and writes
``summary.csv`` (one row per job), ``summary.md`` and ``summary.png`` (the metric per configuration: one dot per
seed, mean ± std bars) into the sweep folder. :class:`SweepSummary` does the same as a Hydra callback at the
end of a multirun.

Only files are read, no model: per job folder (``0/``, ``1/``, ...) ``.hydra/overrides.yaml`` (what the job
changed), ``metrics.json`` (written last by a finished run), ``run.json`` (written when training starts) and
``config.yaml``. A job's status is ``ok`` (metrics.json), ``pruned`` (an Optuna trial its pruner stopped:
``pruned.json``), ``unfinished`` (run.json but no metrics.json: it started training and then crashed, was killed,
or is still running) or ``failed`` (neither: it stopped before training, e.g. on a bad setting). A *configuration*
is a job's overrides without ``seed=``: jobs that differ only in the seed are repeats of one configuration.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from sft.config import override_key
from sft.errors import ConfigError, DataError, SftError, command_line
from sft.report.figures import mpl_text  # a `$` in an override value would otherwise start mathtext
from sft.report.stability import PREFERRED_ORDER, SKIPPED_PREFIXES, metric_stats, natural_key, read_metrics
from sft.rundir import PRUNED_FILE, TRIAL_KEY, metric_mode

log = logging.getLogger(__name__)

OK, UNFINISHED, FAILED, PRUNED = "ok", "unfinished", "failed", "pruned"
MODES = ("max", "min")
DEFAULT_METRIC = "val/acc"
SEED_KEY = "seed"
BASE_CONFIGURATION = "(shared overrides only)"  # label of the configuration that adds nothing to the shared ones
MAX_MARKDOWN_METRICS = 6  # wider tables do not read in a terminal; summary.csv has every metric
FILES = ("summary.csv", "summary.md", "summary.png")
EXPECTED = "a Hydra multirun folder (e.g. outputs/multirun/<time>, from `python -m sft.run -m seed=0,1,2`)"


# ---------------------------------------------------------------------- reading the jobs
def parse_overrides(overrides: Sequence[str]) -> dict[str, str | None]:
    """``["optimizer.lr=1e-5", "~logger"]`` -> ``{"optimizer.lr": "1e-5", "logger": None}`` (values as written)."""
    parsed: dict[str, str | None] = {}
    for override in overrides:
        _, has_value, value = override.partition("=")
        parsed[override_key(override)] = value if has_value else None
    return parsed


def job_folders(sweep: Path) -> list[Path]:
    """The job subfolders of a sweep (Hydra's default ``0/``, ``1/``, ... or any folder holding
    ``.hydra/overrides.yaml``, for a custom ``hydra.sweep.subdir``), in natural order: 2 before 10."""
    folders = [p for p in sweep.iterdir()
               if p.is_dir() and (p.name.isdigit() or (p / ".hydra" / "overrides.yaml").is_file())]
    return sorted(folders, key=lambda p: natural_key(p.name))


def _read_yaml(path: Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, yaml.YAMLError):
        return None  # a half-written file of a job that was killed: treated as absent


def _first_start(run: Path) -> str | None:
    """When the job first started training (``run.json`` keeps every start of a resumed run)."""
    try:
        info = json.loads((run / "run.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(info, dict):
        return None
    first = (info.get("starts") or [info])[0]
    started = first.get("started") if isinstance(first, dict) else None
    return str(started) if started else None


def _read_job(folder: Path) -> dict[str, Any]:
    loaded = _read_yaml(folder / ".hydra" / "overrides.yaml")
    overrides = [str(item) for item in loaded] if isinstance(loaded, list) else []
    overrides = [o for o in overrides if override_key(o) != TRIAL_KEY]  # the Optuna sweeper's note to the job
    values = parse_overrides(overrides)
    metrics: dict[str, float] = {}
    error = None
    if (folder / "metrics.json").is_file():
        try:
            metrics, status = read_metrics(folder), OK
        except DataError as e:  # one corrupt file must not hide the other jobs of the sweep
            status, error = FAILED, str(e)
    else:
        status = PRUNED if (folder / PRUNED_FILE).is_file() else UNFINISHED if (folder / "run.json").is_file() else FAILED
    seed = values.get(SEED_KEY)
    if seed is None:  # not swept: the config's own seed
        config = _read_yaml(folder / "config.yaml") or _read_yaml(folder / ".hydra" / "config.yaml")
        seed = config.get(SEED_KEY) if isinstance(config, dict) else None
    return {"job": int(folder.name) if folder.name.isdigit() else folder.name, "folder": str(folder),
            "overrides": " ".join(overrides), "override_list": overrides, "override_values": values,
            "seed": None if seed is None else str(seed), "status": status, "metrics": metrics,
            "seconds": metrics.get("fit/seconds"), "started": _first_start(folder), "error": error}


def shared_overrides(rows: list[dict[str, Any]]) -> list[str]:
    """The overrides every job has (e.g. ``trainer.max_epochs=2`` given once for the whole sweep), in the
    first job's order: said once instead of in every row."""
    if not rows:
        return []
    common = set.intersection(*(set(row["override_list"]) for row in rows))
    return [o for o in rows[0]["override_list"] if o in common]


def collect(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One row per job folder, in job order: ``job`` (its number), ``folder``, ``overrides`` (as on the command
    line), ``override_list``, ``override_values`` (key -> value as written), ``seed``, ``status`` (ok /
    unfinished / failed), ``metrics`` (the numbers of metrics.json), ``seconds`` (fit/seconds), ``started``,
    ``error`` (why metrics.json could not be read), ``varying_overrides`` (without the ones every job shares)
    and ``configuration`` (the varying overrides without the seed: the same for repeats over seeds)."""
    sweep = Path(sweep_dir).expanduser()
    if not sweep.is_dir():
        raise ConfigError(f"{str(sweep)!r} is not a folder: give {EXPECTED}.")
    folders = job_folders(sweep)
    if not folders:
        raise ConfigError(f"No job folders (0/, 1/, ...) in {str(sweep)!r}: give {EXPECTED}.")
    rows = [_read_job(folder) for folder in folders]

    shared = set(shared_overrides(rows))
    labels: dict[frozenset[str], str] = {}
    for row in rows:
        varying = [o for o in row["override_list"] if o not in shared]
        row["varying_overrides"] = " ".join(varying)
        configuration = [o for o in varying if override_key(o) != SEED_KEY]
        # Keyed by the set, labelled by the first job's order: the same overrides in another order are one group.
        label = labels.setdefault(frozenset(configuration), " ".join(configuration) or BASE_CONFIGURATION)
        row["configuration"] = label
    return rows


# ---------------------------------------------------------------------- metric, direction, best run
def optimized_metric(sweep: Path, rows: list[dict[str, Any]]) -> str:
    """The sweep's ``optimized_metric`` from a job's config (resolved ``config.yaml``, else Hydra's own copy
    ``.hydra/config.yaml``, which failed jobs have too), else val/acc."""
    for row in rows:
        for path in (Path(row["folder"]) / "config.yaml", Path(row["folder"]) / ".hydra" / "config.yaml"):
            config = _read_yaml(path)
            metric = config.get("optimized_metric") if isinstance(config, dict) else None
            if isinstance(metric, str) and metric and "${" not in metric:
                return metric
    return DEFAULT_METRIC


def sweeper_mode(sweep: Path) -> str | None:
    """max / min from the sweeper's ``direction`` (Optuna: maximize / minimize) in ``multirun.yaml``."""
    config = _read_yaml(sweep / "multirun.yaml")
    sweeper = (config.get("hydra") or {}).get("sweeper") if isinstance(config, dict) else None
    direction = str(sweeper.get("direction", "")).lower() if isinstance(sweeper, dict) else ""
    return {"maximize": "max", "max": "max", "minimize": "min", "min": "min"}.get(direction)


def ordered_metric_keys(rows: list[dict[str, Any]], first: str | None = None) -> list[str]:
    """Every metric of the rows: ``first``, the usual outcomes (test/acc, ...), then the rest by name."""
    keys = set().union(*(row["metrics"] for row in rows)) if rows else set()
    head = [k for k in (first, *PREFERRED_ORDER) if k in keys]
    return list(dict.fromkeys(head)) + sorted(keys - set(head))


def best_run(rows: list[dict[str, Any]], metric: str, mode: str) -> dict[str, Any] | None:
    """The finished job with the best ``metric`` (the first one on a tie), None when none has it."""
    candidates = [row for row in rows if row["status"] == OK and metric in row["metrics"]]
    if not candidates:
        return None
    pick = max if mode == "max" else min
    return pick(candidates, key=lambda row: row["metrics"][metric])


def configuration_groups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per configuration (first-seen order): its jobs and seeds, how many finished, and per metric over the
    finished jobs ``n``, ``mean``, ``std`` (sample std, None for one value), ``min`` and ``max``."""
    by_label: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_label.setdefault(row["configuration"], []).append(row)
    groups = []
    for label, members in by_label.items():
        finished = [row for row in members if row["status"] == OK]
        stats = {}
        for key in ordered_metric_keys(finished):
            values = [row["metrics"][key] for row in finished if key in row["metrics"]]
            stats[key] = {"n": len(values), **metric_stats(values)}
            if len(values) < 2:
                stats[key]["std"] = None  # one value has no spread to speak of (metric_stats says 0)
        groups.append({"configuration": label, "jobs": [row["job"] for row in members],
                       "seeds": [row["seed"] for row in members], "n_jobs": len(members), "n_ok": len(finished),
                       "metrics": stats})
    return groups


def summarize(sweep_dir: str | Path, metric: str | None = None, mode: str | None = None) -> dict[str, Any]:
    """The summary of a sweep folder: ``rows`` (see :func:`collect`), ``counts`` per status, ``metric`` and
    ``mode`` used to pick ``best`` (a row, or None when no job finished), ``groups`` (see
    :func:`configuration_groups`), ``shared_overrides`` and ``metric_keys`` (all metrics, usual ones first).

    ``metric`` defaults to the sweep's ``optimized_metric``; ``mode`` to the sweeper's direction for that
    metric, else min for loss-like names (loss, nll, ece, ...) and max otherwise."""
    sweep = Path(sweep_dir).expanduser()
    if mode is not None and mode not in MODES:
        raise ConfigError(f"mode must be one of {', '.join(MODES)}, not {mode!r}.")
    rows = collect(sweep)
    finished = [row for row in rows if row["status"] == OK]
    chosen = metric or optimized_metric(sweep, rows)
    if finished and not any(chosen in row["metrics"] for row in finished):
        where = "given metric" if metric else "sweep's optimized_metric"
        raise ConfigError(f"The {where} {chosen!r} is in no finished job's metrics.json; they have: "
                          f"{', '.join(ordered_metric_keys(finished))}. Pick one with --metric.")
    if mode is None:
        # The sweeper's direction is about the metric it optimized, not about another one asked for.
        mode = (sweeper_mode(sweep) if metric is None else None) or metric_mode(chosen)
    return {"folder": str(sweep), "metric": chosen, "mode": mode, "rows": rows,
            "counts": status_counts(rows),
            "best": best_run(rows, chosen, mode), "groups": configuration_groups(rows),
            "shared_overrides": shared_overrides(rows), "metric_keys": ordered_metric_keys(finished)}


def status_counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Jobs per status; ``pruned`` only in a search that pruned trials."""
    counts = {status: sum(row["status"] == status for row in rows) for status in (OK, UNFINISHED, FAILED, PRUNED)}
    return {status: n for status, n in counts.items() if status != PRUNED or n}


# ---------------------------------------------------------------------- Markdown and CSV
def format_value(value: Any, like: float | None = None) -> str:
    """A table cell: numbers rounded by size (of ``like`` when given, so a mean and its std share one format),
    thousands with separators; None as an empty cell."""
    if isinstance(value, float):
        size = abs(value if like is None else like)
        return f"{value:,.0f}" if size >= 1000 else f"{value:.4f}" if size < 10 else f"{value:.1f}"
    return "" if value is None else str(value)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table; ``|`` inside a cell (e.g. in an override value) is escaped."""
    def line(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(format_value(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), "|" + "---|" * len(header), *(line(row) for row in rows)])


def _mean_std(stats: dict[str, Any] | None, n_ok: int) -> str:
    if not stats:
        return ""
    text = format_value(stats["mean"])
    if stats["std"] is not None:
        text += f" ± {format_value(stats['std'], like=stats['mean'])}"
    return text + (f" (n={stats['n']})" if stats["n"] != n_ok else "")


def _code(text: str) -> str:
    return f"`{text}`" if text else ""


def render_markdown(summary: dict[str, Any]) -> str:
    rows, best, metric, mode = summary["rows"], summary["best"], summary["metric"], summary["mode"]
    counts = summary["counts"]
    outcome_keys = [k for k in ordered_metric_keys([r for r in rows if r["status"] == OK], first=metric)
                    if not k.startswith(SKIPPED_PREFIXES)]  # sizes and timings: run time has its own column
    shown = outcome_keys[:MAX_MARKDOWN_METRICS]
    lines = [f"# Sweep summary: {summary['folder']}", "",
             f"{len(rows)} jobs: {counts[OK]} ok, {counts[UNFINISHED]} unfinished, {counts[FAILED]} failed"
             + (f", {counts[PRUNED]} pruned" if PRUNED in counts else "") + f". Best by {metric} ({mode})."]
    if summary["shared_overrides"]:
        lines.append(f"Overrides shared by every job: {_code(' '.join(summary['shared_overrides']))}.")
    if len(outcome_keys) > len(shown):
        lines.append(f"{len(outcome_keys) - len(shown)} more metrics in summary.csv.")

    lines += ["", "## Best run", ""]
    if best is None:
        lines.append(f"None: no finished job has {metric}.")
    else:
        lines.append(f"Job {best['job']} ({_code(best['varying_overrides']) or 'no varying overrides'}): "
                     f"{metric} = {format_value(best['metrics'][metric])}, folder `{best['folder']}`.")

    lines += ["", "## Jobs", "",
              markdown_table(["job", "overrides", "status", *shown, "seconds"],
                             [[r["job"], r["varying_overrides"], r["status"], *(r["metrics"].get(k) for k in shown),
                               r["seconds"]] for r in rows])]
    errors = [f"- job {r['job']}: {r['error']}" for r in rows if r["error"]]
    if errors:
        lines += ["", *errors]

    lines += ["", "## Per configuration (mean ± std over seeds)", "",
              markdown_table(["configuration", "jobs", "ok", *shown, "seconds"],
                             [[g["configuration"], g["n_jobs"], g["n_ok"],
                               *(_mean_std(g["metrics"].get(k), g["n_ok"]) for k in [*shown, "fit/seconds"])]
                              for g in summary["groups"]]),
              "", f"![{metric} per configuration](summary.png)"]
    return "\n".join(lines)


def csv_rows(summary: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """(column names, one flat dict per job) for summary.csv: every metric has a column."""
    fields = ["job", "status", "configuration", "seed", "overrides", "seconds", "started", *summary["metric_keys"]]
    flat = [{**{k: row[k] for k in fields if k in row}, **row["metrics"]} for row in summary["rows"]]
    return fields, flat


def write_csv(path: Path, fields: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


# ---------------------------------------------------------------------- the figure
def plot(summary: dict[str, Any], path: Path) -> None:
    """summary.png: per configuration (one line each), the metric of each finished job as a dot and the
    mean ± std as a bar; the best run starred. Built on a Figure of its own: no pyplot, no global backend."""
    from matplotlib.figure import Figure

    metric, rows_by_job = summary["metric"], {row["job"]: row for row in summary["rows"]}
    groups = [g for g in summary["groups"] if metric in g["metrics"]]
    fig = Figure(figsize=(8, 1.6 + 0.5 * max(len(groups), 1)), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    if not groups:
        ax.text(0.5, 0.5, mpl_text(f"No finished job has {metric}"), ha="center", va="center", fontsize=12)
        ax.set_axis_off()
    positions: dict[Any, tuple[float, float]] = {}  # job -> where its dot is drawn
    for y, group in enumerate(groups):
        jobs = [job for job in group["jobs"]
                if rows_by_job[job]["status"] == OK and metric in rows_by_job[job]["metrics"]]
        # The seeds' dots fan out in a band above the mean bar (y + 0.12): equal values stay visible as
        # separate dots, and none hides behind the mean marker.
        for i, job in enumerate(jobs):
            offset = -0.2 if len(jobs) == 1 else -0.35 + 0.25 * i / (len(jobs) - 1)
            positions[job] = (rows_by_job[job]["metrics"][metric], y + offset)
        ax.scatter([positions[job][0] for job in jobs], [positions[job][1] for job in jobs], s=22,
                   color="tab:blue", alpha=0.75, zorder=3, label="one job (seed)" if y == 0 else None)
        stats = group["metrics"][metric]
        ax.errorbar(stats["mean"], y + 0.12, xerr=stats["std"] or 0.0, fmt="D", color="black", markersize=5,
                    capsize=5, zorder=4, label="mean ± std" if y == 0 else None)
    best = summary["best"]
    if best is not None and best["job"] in positions:
        best_x, best_y = positions[best["job"]]
        ax.scatter([best_x], [best_y], marker="*", s=160, color="tab:red", zorder=5,
                   label=f"best: job {best['job']}")
    if groups:
        ax.set_yticks(range(len(groups)), labels=[mpl_text(textwrap.fill(g["configuration"], 45)) for g in groups])
        ax.set_ylim(len(groups) - 0.5, -0.5)  # first configuration on top, as in the tables
        ax.set_xlabel(mpl_text(metric))
        ax.grid(axis="x", alpha=0.3)
        ax.legend(fontsize="small", loc="best")
    ax.set_title(mpl_text(f"{metric} per configuration ({summary['mode']} is best)"))
    fig.savefig(path, dpi=100, facecolor="white")


# ---------------------------------------------------------------------- writing, callback, CLI
def write(sweep_dir: str | Path, metric: str | None = None, mode: str | None = None) -> str:
    """Write summary.csv, summary.md and summary.png into the sweep folder; return the Markdown."""
    summary = summarize(sweep_dir, metric=metric, mode=mode)
    sweep = Path(summary["folder"])
    write_csv(sweep / "summary.csv", *csv_rows(summary))
    text = render_markdown(summary)
    (sweep / "summary.md").write_text(text + "\n", encoding="utf-8")
    plot(summary, sweep / "summary.png")
    return text


class SweepSummary(Callback):
    """Hydra callback: at the end of a multirun, write the summary into the sweep folder and print it.

    ``metric`` / ``mode`` as for :func:`summarize`. A summary that cannot be made (e.g. a metric no job
    has) is logged, not raised: the jobs' results are on disk and ``python -m sft.summarize`` can redo it."""

    def __init__(self, metric: str | None = None, mode: str | None = None) -> None:
        self.metric = metric
        self.mode = mode

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = config.hydra.sweep.dir
        try:
            text = write(sweep_dir, metric=self.metric, mode=self.mode)
        except SftError as e:
            log.error("No sweep summary for %s: %s", sweep_dir, e)
            return
        print(f"\n{text}", flush=True)


@command_line
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sft.summarize", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", help="a Hydra multirun folder, e.g. outputs/multirun/2024-01-01_12-00-00")
    parser.add_argument("--metric", help="the metric that picks the best run (default: the sweep's optimized_metric)")
    parser.add_argument("--mode", choices=MODES, help="whether larger or smaller is better (default: from the "
                        "sweeper's direction, else min for loss-like metrics and max otherwise)")
    args = parser.parse_args(argv)
    text = write(args.sweep, metric=args.metric, mode=args.mode)
    print(text)
    print(f"Wrote {', '.join(FILES)} in {Path(args.sweep).expanduser()}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
