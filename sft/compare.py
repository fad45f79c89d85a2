"""A table of runs of one multirun (``experiment=compare_strategies``): per job, its overrides and metrics.

Used as a Hydra callback at the end of the multirun (:class:`StrategyTable`), or by hand:
``python -m sft.compare outputs/multirun/<time>``. Writes ``strategies.md`` and ``strategies.csv``
into the sweep folder and prints the Markdown table.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

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


@command_line
def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not Path(args[0]).is_dir():
        print("usage: python -m sft.compare <multirun folder>", file=sys.stderr)
        return 2
    print(write_table(args[0]))  # an SftError (e.g. a folder without job folders): exit status 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
