"""experiment=compare_strategies: a real Hydra multirun over every freeze strategy, ending in a table."""

from __future__ import annotations

import csv
import json

import pytest

from tests.helpers import run_cli


@pytest.mark.subprocess
@pytest.mark.multirun
def test_compare_strategies_multirun_ends_in_a_table(tiny_bert, tmp_path):
    sweep = tmp_path / "sweep"
    done = run_cli(["experiment=compare_strategies", f"model.name_or_path={tiny_bert}", f"hydra.sweep.dir={sweep}",
                    "trainer.max_epochs=2", "data.train_size=64", "optimizer.lr=1e-3", "callbacks.progress_bar=null",
                    "++trainer.enable_progress_bar=false", "export=false"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| job | freeze | val/acc" in done.stdout  # printed at the end of the multirun
    rows = list(csv.DictReader((sweep / "strategies.csv").open()))
    assert [r["freeze"] for r in rows] == ["none", "backbone", "bottom_k", "gradual", "sklearn"]
    assert [r["status"] for r in rows] == ["ok"] * 5, rows
    for r in rows:  # the table holds each job's own val/acc
        job = json.loads((sweep / r["job"] / "metrics.json").read_text())
        assert float(r["val/acc"]) == pytest.approx(job["val/acc"], abs=1e-9), r
    by = {r["freeze"]: r for r in rows}
    trainable = {k: float(v["params/trainable"]) for k, v in by.items()}
    assert trainable["none"] == float(by["none"]["params/total"])
    assert trainable["sklearn"] == 32 + 1  # binary logistic regression on 32-wide features
    assert trainable["backbone"] == 32 * 2 + 2  # the classifier only
    assert trainable["backbone"] < trainable["bottom_k"] < trainable["none"]  # bottom_k: + pooler
    assert (sweep / "strategies.md").read_text().count("\n") == 2 + 5
