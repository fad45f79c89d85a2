"""A table of runs of one multirun (``experiment=compare_strategies``): per job, its overrides and metrics.

Used as a Hydra callback at the end of the multirun (:class:`StrategyTable`), or by hand:
``python -m sft.compare outputs/multirun/<time>``. Writes ``strategies.md`` and ``strategies.csv``
into the sweep folder and prints the Markdown table.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

COLUMNS = ("freeze", "val/acc", "test/acc", "test/f1", "fit/seconds", "params/trainable", "params/total")


def collect(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One row per job folder (``<sweep>/<n>/``), in job order; jobs without metrics.json are 'failed'."""
    import yaml

    rows = []
    jobs = [p for p in Path(sweep_dir).iterdir() if p.is_dir() and p.name.isdigit()]
    for job in sorted(jobs, key=lambda p: int(p.name)):
        overrides_file = job / ".hydra" / "overrides.yaml"
        overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
        row: dict[str, Any] = {"job": int(job.name), "overrides": " ".join(overrides)}
        for item in overrides:
            key, _, value = item.partition("=")
            if key.lstrip("+~") == "freeze":
                row["freeze"] = value
        metrics_file = job / "metrics.json"
        if metrics_file.is_file():
            row.update(json.loads(metrics_file.read_text()))
            row["status"] = "ok"
        else:
            row["status"] = "failed"
        rows.append(row)
    return rows


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.0f}" if value >= 1000 else f"{value:.4f}" if value < 10 else f"{value:.1f}"
    return "" if value is None else str(value)


def markdown(rows: list[dict[str, Any]]) -> str:
    header = ["job", *COLUMNS, "status"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in header) + " |")
    return "\n".join(lines)


def write_table(sweep_dir: str | Path) -> str:
    sweep_dir = Path(sweep_dir)
    rows = collect(sweep_dir)
    table = markdown(rows)
    (sweep_dir / "strategies.md").write_text(table + "\n")
    fields = ["job", *COLUMNS, "status", "overrides"]
    with (sweep_dir / "strategies.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return table


try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover - hydra is a dependency
    _HydraCallback = object


class StrategyTable(_HydraCallback):
    """Hydra callback: after the multirun, write and print the table of its jobs."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        table = write_table(config.hydra.sweep.dir)
        print(f"\nStrategies ({config.hydra.sweep.dir}):\n{table}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not Path(args[0]).is_dir():
        print("usage: python -m sft.compare <multirun folder>", file=sys.stderr)
        return 2
    print(write_table(args[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
