"""Stability over a seed sweep, on run folders written to disk by hand with known numbers."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from sft.errors import ConfigError
from sft.report.stability import find_runs, stability

METRICS = [  # per run; test/precision is missing from run 2, params/* and fit/* are not outcomes
    {"test/acc": 0.8, "test/f1": 0.78, "val/acc": 0.82, "test/loss": 0.45, "test/precision": 0.8,
     "params/total": 1000, "fit/seconds": 12.5},
    {"test/acc": 0.85, "test/f1": 0.84, "val/acc": 0.8, "test/loss": 0.4, "test/precision": 0.86,
     "params/total": 1000, "fit/seconds": 11.0},
    {"test/acc": 0.5, "test/f1": 0.33, "val/acc": 0.52, "test/loss": 0.69, "params/total": 1000,
     "fit/seconds": 13.0, "note": "text is not a metric"},
]
PREDICTIONS = [
    ["pos", "pos", "neg", "neg", "pos"],
    ["pos", "neg", "neg", "neg", "pos"],
    ["pos", "pos", "pos", "pos", "pos"],  # the collapsed run
]
LABELS = ["pos", "neg", "neg", "pos", "pos"]


def write_run(folder: Path, seed: int, metrics: dict, preds: list[str] | None = None, baseline: float | None = None,
              lr: float = 1e-3, reverse_rows: bool = False) -> Path:
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    out = str(folder)
    OmegaConf.save(OmegaConf.create({
        "seed": seed, "output_dir": out,
        "optimizer": {"_target_": "torch.optim.AdamW", "lr": lr},
        "callbacks": {"model_checkpoint": {"dirpath": f"{out}/checkpoints"}},  # resolved from output_dir
        "report": {"sections": ["performance", "calibration"]},
    }), folder / "config.yaml")
    if preds is not None:
        rows = [[i, LABELS[i], pred, 0.9] for i, pred in enumerate(preds)]
        with (folder / "predictions.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["index", "label", "pred", "confidence"])
            writer.writerows(reversed(rows) if reverse_rows else rows)
    if baseline is not None:
        report = {"sections": {"performance": {"majority_baseline": {"label": "pos", "accuracy": baseline,
                                                                     "macro_f1": 0.375}}}}
        (folder / "report.json").write_text(json.dumps(report))
    return folder


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "multirun"
    for i, (metrics, preds) in enumerate(zip(METRICS, PREDICTIONS, strict=True)):
        write_run(root / str(i), seed=10 + i, metrics=metrics, preds=preds, baseline=0.5, reverse_rows=i == 1)
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return root


def test_metric_statistics_degenerate_runs_and_agreement(sweep):
    report = stability(sweep)
    assert report["n_runs"] == 3
    assert [r["name"] for r in report["runs"]] == ["0", "1", "2"]
    assert [r["seed"] for r in report["runs"]] == [10, 11, 12]
    # shared numeric keys only, params/* and fit/* left out, the usual ones first
    assert list(report["metrics"]) == ["test/acc", "test/f1", "val/acc", "test/loss"]
    for key, stats in report["metrics"].items():
        values = [m[key] for m in METRICS]
        assert stats["mean"] == pytest.approx(statistics.mean(values))
        assert stats["std"] == pytest.approx(np.std(values, ddof=1))
        assert (stats["min"], stats["max"]) == (min(values), max(values))
    assert report["runs"][1]["metrics"] == {k: METRICS[1][k] for k in ("test/acc", "test/f1", "val/acc", "test/loss")}

    # run 2 is no better than always predicting the majority class (0.5)
    assert report["majority_baseline"] == 0.5
    assert [r["degenerate"] for r in report["runs"]] == [False, False, True]
    assert report["degenerate_runs"] == 1

    # by hand: all three agree on examples 0 and 4 -> 2/5; pairs agree on 4/5, 3/5, 2/5 -> mean 3/5
    assert report["agreement"] == {"n_examples": 5, "all_agree": pytest.approx(0.4),
                                   "pairwise_mean": pytest.approx(0.6)}
    assert report["differs_only_in_seed"] is True and report["differences"] == []
    json.dumps(report)  # JSON-able


def test_a_changed_learning_rate_is_listed(tmp_path):
    root = tmp_path / "sweep"
    for i, lr in enumerate([1e-3, 2e-3, 1e-3]):
        write_run(root / str(i), seed=i, metrics=METRICS[i], lr=lr)
    report = stability(root)
    assert report["differs_only_in_seed"] is False
    assert report["differences"] == ["optimizer.lr: 0.001 | 0.002 | 0.001"]


def test_real_run_configs_of_a_seed_sweep_differ_only_in_seed(tmp_path, compose_cfg):
    root = tmp_path / "multirun"
    for i, overrides in enumerate([["seed=1"], ["seed=2"], ["seed=3", "optimizer.lr=1e-4"]]):
        run = root / str(i)
        cfg = compose_cfg(f"output_dir={run}", *overrides)
        run.mkdir(parents=True)
        (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))  # as sft.rundir writes it
        (run / "metrics.json").write_text(json.dumps(METRICS[i]))
    report = stability(root)
    assert report["differences"] == ["optimizer.lr: 5e-05 | 5e-05 | 0.0001"]
    (root / "2").rename(tmp_path / "elsewhere")
    assert stability(root)["differs_only_in_seed"] is True  # log / checkpoint folders inside each run do not count


def test_without_reports_or_predictions(tmp_path):
    root = tmp_path / "sweep"
    write_run(root / "0", seed=0, metrics=METRICS[0], preds=PREDICTIONS[0])
    write_run(root / "1", seed=1, metrics=METRICS[2])  # no predictions.csv, no report.json
    report = stability(root)
    assert report["majority_baseline"] is None and report["degenerate_runs"] == 0
    assert not any(r["degenerate"] for r in report["runs"])
    assert report["agreement"] is None and any("predictions.csv" in note for note in report["notes"])


def test_predictions_of_different_examples_are_not_compared(tmp_path):
    root = tmp_path / "sweep"
    write_run(root / "0", seed=0, metrics=METRICS[0], preds=PREDICTIONS[0])
    write_run(root / "1", seed=1, metrics=METRICS[1], preds=PREDICTIONS[1][:4])
    assert stability(root)["agreement"] is None


def test_one_run_has_zero_spread(tmp_path):
    write_run(tmp_path / "only" / "0", seed=7, metrics=METRICS[0], preds=PREDICTIONS[0], baseline=0.5)
    report = stability(tmp_path / "only")
    assert report["n_runs"] == 1 and report["agreement"] is None
    assert report["metrics"]["test/acc"] == {"mean": 0.8, "std": 0.0, "min": 0.8, "max": 0.8}
    assert "test/precision" in report["metrics"]  # every numeric key of the one run


def test_explicit_metric_keys(sweep):
    report = stability(sweep, metric_keys=["val/acc"])
    assert list(report["metrics"]) == ["val/acc"]
    with pytest.raises(ConfigError, match=r"test/precision.*\['2'\]"):
        stability(sweep, metric_keys=["test/precision"])


def test_find_runs_sorts_naturally_and_skips_run_subfolders(tmp_path):
    root = tmp_path / "multirun"
    for name in ["10", "2", "0", "1"]:
        write_run(root / name, seed=int(name), metrics=METRICS[0])
    nested = write_run(root / "1" / "checkpoints" / "inner", seed=99, metrics=METRICS[0])  # inside a run: ignored
    write_run(root / "later" / "3", seed=3, metrics=METRICS[0])  # a deeper sweep level
    (root / "broken").mkdir()
    (root / "broken" / "metrics.json").write_text("{}")  # no config.yaml: not a run
    runs = find_runs(root)
    assert [r.relative_to(root).as_posix() for r in runs] == ["0", "1", "2", "10", "later/3"]
    assert nested not in runs


def test_no_runs_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty_sweep"
    empty.mkdir()
    with pytest.raises(ConfigError, match=r"empty_sweep.*metrics\.json and config\.yaml"):
        stability(empty)
    with pytest.raises(ConfigError, match="not a folder"):
        stability(tmp_path / "missing")
    assert find_runs(empty) == []


def test_degenerate_compares_the_reports_own_accuracy_with_its_baseline(tmp_path: Path):
    """A report on val (report.split=val) gives the baseline on val: the run's val accuracy from the same report
    is what counts, not test/acc from metrics.json."""
    root = tmp_path / "multirun"
    for i, report_acc in enumerate((0.9, 0.5)):  # metrics.json says test/acc 0.8 for both
        folder = write_run(root / str(i), seed=i, metrics={**METRICS[0], "test/acc": 0.8}, preds=None, baseline=0.5)
        report = json.loads((folder / "report.json").read_text())
        report["sections"]["performance"]["accuracy"] = report_acc
        (folder / "report.json").write_text(json.dumps(report))
    assert [r["degenerate"] for r in stability(root)["runs"]] == [False, True]
