"""Multirun sweeps end to end (a real `python -m sft.run -m` subprocess) and their summary."""

from __future__ import annotations

import csv
import json
import statistics

import pytest

from tests.conftest import FAST
from tests.helpers import python

pytestmark = [pytest.mark.subprocess, pytest.mark.multirun]


def test_grid_multirun_writes_one_folder_per_job_and_a_summary(tiny_bert, tmp_path):
    sweep = tmp_path / "sweep"
    out = python(["-m", "sft.run", "-m", f"model.name_or_path={tiny_bert}", "optimizer.lr=1e-3,3e-3", "seed=1,2",
                  f"hydra.sweep.dir={sweep}", *FAST, "data.train_size=96"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert jobs == ["0", "1", "2", "3"]
    metrics = {job: json.loads((sweep / job / "metrics.json").read_text()) for job in jobs}
    for job in jobs:  # each job is a complete run folder of its own
        assert (sweep / job / "config.yaml").is_file() and (sweep / job / "export" / "config.json").is_file()
    with (sweep / "summary.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["ok"] * 4
    summary = (sweep / "summary.md").read_text()
    best_job = max(jobs, key=lambda j: (metrics[j]["val/acc"], -int(j)))  # ties: the first job
    assert f"Job {best_job} (" in summary
    # Per learning rate, mean over the two seeds (Hydra's order: lr outer, seed inner).
    for lr, pair in (("0.001", ("0", "1")), ("0.003", ("2", "3"))):
        mean = statistics.mean(metrics[j]["val/acc"] for j in pair)
        assert f"optimizer.lr={lr}" in summary and f"{mean:.4f}" in summary
    assert (sweep / "summary.png").stat().st_size > 1000
    assert "## Best run" in out.stdout  # the Hydra callback prints the summary at the end of the multirun
