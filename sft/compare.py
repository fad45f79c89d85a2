"""A table of runs of one multirun (``experiment=compare_strategies``): per job, its overrides and metrics; and
the GLUE table of ``experiment=glue_all`` (one row per task, the task's own metric).

Used as a Hydra callback at the end of the multirun (:class:`StrategyTable`, :class:`GlueTable`), or by hand:
``python -m sft.compare [--glue] outputs/multirun/<time>``. Writes ``strategies.md`` / ``strategies.csv`` (or
``glue.md`` / ``glue.csv``) into the sweep folder and prints the Markdown table.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from sft.config import TASK_METRICS
from sft.errors import command_line
from sft.summarize import collect as collect_jobs
from sft.summarize import markdown_table, write_csv

COLUMNS = ("freeze", "val/acc", "test/acc", "test/f1", "fit/seconds", "params/trainable", "params/total")


def collect(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One flat row per job folder (``<sweep>/<n>/``), in job order: job, overrides, freeze, its metrics and
    status (ok; failed or unfinished for jobs without metrics.json, see :mod:`sft.summarize`)."""
    return [{"job": job["job"], "overrides": job["overrides"], "freeze": job["override_values"].get("freeze"),
             **job["metrics"], "status": job["status"]} for job in collect_jobs(sweep_dir)]


def markdown(rows: list[dict[str, Any]]) -> str:
    header = ["job", *COLUMNS, "status"]
    return markdown_table(header, [[row.get(c) for c in header] for row in rows])


def write_table(sweep_dir: str | Path) -> str:
    sweep_dir = Path(sweep_dir)
    rows = collect(sweep_dir)
    table = markdown(rows)
    (sweep_dir / "strategies.md").write_text(table + "\n")
    write_csv(sweep_dir / "strategies.csv", ["job", *COLUMNS, "status", "overrides"], rows)
    return table



class StrategyTable(Callback):
    """Hydra callback: after the multirun, write and print the table of its jobs."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        table = write_table(config.hydra.sweep.dir)
        print(f"\nStrategies ({config.hydra.sweep.dir}):\n{table}", flush=True)


# ---------------------------------------------------------------------- GLUE (experiment=glue_all)
# The numbers GLUE reports per task (its leaderboard averages a task's two numbers into its score).
GLUE_SCORES = {"cola": ("mcc",), "mrpc": ("f1", "acc"), "qqp": ("f1", "acc"), "stsb": ("pearson", "spearman"),
               "mnli": ("acc", "mismatched")}
GLUE_COLUMNS = ("task", "metric", "val", "test (dev)", "GLUE", "status")


def glue_rows(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One row per job of a GLUE multirun: its task, the task's own metric on val and on dev (GLUE's test labels
    are hidden), and the task's GLUE score on dev (x 100; two numbers for MRPC / QQP / STS-B / MNLI)."""
    rows = []
    for job in collect_jobs(sweep_dir):
        task = str(job["override_values"].get("data.task", "sst2"))
        metric = TASK_METRICS.get(task, "val/acc").removeprefix("val/")
        found = job["metrics"]
        parts = [found.get("test_mismatched/acc") if name == "mismatched" else found.get(f"test/{name}")
                 for name in GLUE_SCORES.get(task, ("acc",))]
        scores = [100 * value for value in parts if value is not None]
        rows.append({"task": task, "metric": metric, "val": found.get(f"val/{metric}"),
                     "test (dev)": found.get(f"test/{metric}"),
                     "GLUE": "/".join(f"{v:.1f}" for v in scores) if len(scores) == len(parts) else None,
                     "score": sum(scores) / len(scores) if scores and len(scores) == len(parts) else None,
                     "status": job["status"]})
    return rows


def write_glue_table(sweep_dir: str | Path) -> str:
    sweep_dir = Path(sweep_dir)
    rows = glue_rows(sweep_dir)
    done = [row["score"] for row in rows if row["score"] is not None]
    table = markdown_table(GLUE_COLUMNS, [[row.get(c) for c in GLUE_COLUMNS] for row in rows])
    if done:
        table += (f"\n\nAverage GLUE score over the {len(done)} finished task(s) (dev sets): "
                  f"{sum(done) / len(done):.1f}")
    (sweep_dir / "glue.md").write_text(table + "\n")
    write_csv(sweep_dir / "glue.csv", [*GLUE_COLUMNS, "score"], rows)
    return table


class GlueTable(Callback):
    """Hydra callback of ``experiment=glue_all``: after the multirun, write and print the GLUE table."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        table = write_glue_table(config.hydra.sweep.dir)
        print(f"\nGLUE ({config.hydra.sweep.dir}):\n{table}", flush=True)


@command_line
def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    glue = "--glue" in args
    folders = [a for a in args if a != "--glue"]
    if len(folders) != 1 or not Path(folders[0]).is_dir():
        print("usage: python -m sft.compare [--glue] <multirun folder>", file=sys.stderr)
        return 2
    # An SftError (e.g. a folder without job folders): exit status 2.
    print(write_glue_table(folders[0]) if glue else write_table(folders[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
