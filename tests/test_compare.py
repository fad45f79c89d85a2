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
    assert [r["freeze"] for r in rows] == ["none", "backbone", "bottom_k", "gradual", "lora", "sklearn"]
    assert [r["status"] for r in rows] == ["ok"] * 6, rows
    for r in rows:  # the table holds each job's own val/acc
        job = json.loads((sweep / r["job"] / "metrics.json").read_text())
        assert float(r["val/acc"]) == pytest.approx(job["val/acc"], abs=1e-9), r
    by = {r["freeze"]: r for r in rows}
    trainable = {k: float(v["params/trainable"]) for k, v in by.items()}
    assert trainable["none"] == float(by["none"]["params/total"])
    assert trainable["sklearn"] == 32 + 1  # binary logistic regression on 32-wide features
    assert trainable["backbone"] == 32 * 2 + 2  # the classifier only
    assert trainable["backbone"] < trainable["bottom_k"] < trainable["none"]  # bottom_k: + pooler
    assert trainable["backbone"] < trainable["lora"] < trainable["none"] / 100  # adapters + head + pooler
    assert (sweep / "strategies.md").read_text().count("\n") == 2 + 6


@pytest.mark.subprocess
@pytest.mark.multirun
def test_glue_all_multirun_fills_a_glue_table_with_each_tasks_own_metric(tiny_bert, tmp_path):
    from tests.taskdata import write_mrpc, write_stsb

    root = tmp_path / "glue"
    write_mrpc(root / "MRPC")  # GLUE's own folder names, found under one data.path
    write_stsb(root / "stsb")
    sweep = tmp_path / "sweep"
    done = run_cli(["experiment=glue_all", "data.task=mrpc,stsb", f"data.path={root}",
                    f"model.name_or_path={tiny_bert}", f"hydra.sweep.dir={sweep}", "trainer.max_epochs=1",
                    "optimizer.lr=1e-3", "callbacks.progress_bar=null", "++trainer.enable_progress_bar=false",
                    "export=false", "report=none", "data.val_size=8"])
    assert "| task | metric | val | test (dev) | GLUE | status |" in done.stdout, done.stderr[-3000:]
    rows = {r["task"]: r for r in csv.DictReader((sweep / "glue.csv").open())}
    assert [rows[t]["status"] for t in ("mrpc", "stsb")] == ["ok", "ok"]
    assert rows["mrpc"]["metric"] == "f1" and rows["stsb"]["metric"] == "pearson"
    for task, job in (("mrpc", "0"), ("stsb", "1")):
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        metric = rows[task]["metric"]
        assert float(rows[task]["test (dev)"]) == pytest.approx(metrics[f"test/{metric}"], abs=1e-9)
        assert float(rows[task]["val"]) == pytest.approx(metrics[f"val/{metric}"], abs=1e-9)
        # the checkpoint was chosen by the task's own metric
        config = (sweep / job / "config.yaml").read_text()
        assert f"optimized_metric: val/{metric}" in config
    mrpc = json.loads((sweep / "0" / "metrics.json").read_text())
    assert rows["mrpc"]["GLUE"] == f"{100 * mrpc['test/f1']:.1f}/{100 * mrpc['test/acc']:.1f}"
    assert "Average GLUE score over the 2 finished task(s)" in (sweep / "glue.md").read_text()
    # A task without data fails its job and, with Hydra's basic sweeper, the multirun: the table is written by hand.
    failed = run_cli(["experiment=glue_all", "data.task=rte", f"data.path={root}", f"model.name_or_path={tiny_bert}",
                      f"hydra.sweep.dir={tmp_path / 'rte'}", "report=none"])
    assert failed.returncode != 0 and "train.tsv" in failed.stderr
    from sft.compare import main as compare_main

    assert compare_main(["--glue", str(tmp_path / "rte")]) == 0
    assert list(csv.DictReader((tmp_path / "rte" / "glue.csv").open()))[0]["status"] == "failed"
