"""Sweep summary (``python -m sft.summarize``) on sweep folders written to disk by hand with known numbers."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import numpy as np
import pytest
import yaml
from omegaconf import OmegaConf
from PIL import Image

from sft import summarize as sm
from sft.errors import ConfigError
from tests.helpers import python

SHARED = "trainer.max_epochs=2"  # given once for the whole sweep: in every job's overrides
LRS = ("1e-5", "3e-5", "5e-5")
SEEDS = (0, 1, 2)
UNFINISHED_JOB, FAILED_JOB = 4, 5  # lr=3e-5 with seeds 1 and 2: one finished seed is left of that configuration


def job_metrics(job: int) -> dict[str, float]:
    """Known, distinct numbers per job; val/acc and val/loss disagree on the best job on purpose."""
    return {"val/acc": 0.70 + 0.031 * job - 0.004 * job * job, "test/acc": 0.60 + 0.02 * job,
            "val/loss": 0.50 - 0.01 * job + 0.003 * (job % 3), "fit/seconds": 10.0 + job, "params/total": 1000.0}


def write_job(sweep: Path, job: int | str, overrides: list[str], metrics: dict[str, float] | None,
              started: bool = True, optimized_metric: str = "val/acc", seed: int = 42) -> Path:
    """A job folder as `python -m sft.run -m` leaves it: .hydra/ always, run.json once training started,
    config.yaml and metrics.json once it finished."""
    folder = sweep / str(job)
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    OmegaConf.save(OmegaConf.create({"seed": seed, "optimized_metric": optimized_metric}),
                   folder / ".hydra" / "config.yaml")
    if started:
        (folder / "run.json").write_text(json.dumps({"started": "2024-05-02T10:00:00", "starts": [
            {"started": f"2024-05-01T10:0{job}:00"}, {"started": "2024-05-02T10:00:00"}]}))
    if metrics is not None:
        OmegaConf.save(OmegaConf.create({"seed": seed, "optimized_metric": optimized_metric,
                                         "optimizer": {"lr": 1e-5}}), folder / "config.yaml")
        (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def make_sweep(root: Path, optimized_metric: str = "val/acc") -> Path:
    """3 learning rates x 3 seeds in Hydra's job order; job 4 started but wrote no metrics, job 5 failed early."""
    sweep = root / "multirun"
    for job, (lr, seed) in enumerate((lr, seed) for lr in LRS for seed in SEEDS):
        finished = job not in (UNFINISHED_JOB, FAILED_JOB)
        write_job(sweep, job, [f"optimizer.lr={lr}", f"seed={seed}", SHARED],
                  job_metrics(job) if finished else None, started=job != FAILED_JOB, optimized_metric=optimized_metric)
    (sweep / ".submitit").mkdir()  # launcher bookkeeping, not a job
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"sweeper": {"params": {"seed": "0,1,2"}}}}))
    return sweep


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    return make_sweep(tmp_path)


FINISHED = [job for job in range(9) if job not in (UNFINISHED_JOB, FAILED_JOB)]


def best_job(metric: str, pick) -> int:
    return pick(FINISHED, key=lambda job: job_metrics(job)[metric])


# ---------------------------------------------------------------------- rows
def test_collect_reads_every_job_with_its_overrides_status_metrics_and_run_time(sweep):
    rows = sm.collect(sweep)
    assert [row["job"] for row in rows] == list(range(9))
    statuses = {row["job"]: row["status"] for row in rows}
    assert statuses == {**{job: "ok" for job in FINISHED}, UNFINISHED_JOB: "unfinished", FAILED_JOB: "failed"}

    row = rows[7]  # lr=5e-5, seed=1
    assert row["overrides"] == f"optimizer.lr=5e-5 seed=1 {SHARED}"
    assert row["override_values"] == {"optimizer.lr": "5e-5", "seed": "1", "trainer.max_epochs": "2"}
    assert row["varying_overrides"] == "optimizer.lr=5e-5 seed=1"
    assert row["configuration"] == "optimizer.lr=5e-5"
    assert row["seed"] == "1"
    assert row["metrics"] == pytest.approx(job_metrics(7))
    assert row["seconds"] == pytest.approx(17.0)
    assert row["started"] == "2024-05-01T10:07:00"  # the first start, not the latest (resumed) one

    assert rows[FAILED_JOB]["metrics"] == {} and rows[FAILED_JOB]["seconds"] is None
    assert rows[FAILED_JOB]["started"] is None and rows[UNFINISHED_JOB]["started"] == "2024-05-01T10:04:00"
    assert [row["configuration"] for row in rows] == [f"optimizer.lr={lr}" for lr in LRS for _ in SEEDS]


def test_jobs_sort_naturally_and_equal_overrides_in_another_order_are_one_configuration(tmp_path):
    sweep = tmp_path / "sweep"
    write_job(sweep, 10, ["seed=3", "optimizer.lr=1e-5"], {"val/acc": 0.5})
    write_job(sweep, 9, ["optimizer.lr=1e-5", "seed=2"], {"val/acc": 0.7})
    write_job(sweep, 2, ["+model.dropout=0.1", "seed=2"], {"val/acc": 0.6})
    write_job(sweep, "lr_custom_subdir", ["optimizer.lr=1e-5", "seed=4"], {"val/acc": 0.8})
    (sweep / "notes").mkdir()  # neither numbered nor a Hydra job folder
    rows = sm.collect(sweep)
    assert [row["job"] for row in rows] == [2, 9, 10, "lr_custom_subdir"]
    assert rows[0]["override_values"] == {"model.dropout": "0.1", "seed": "2"}
    groups = sm.summarize(sweep)["groups"]
    assert [(g["configuration"], g["jobs"]) for g in groups] == [
        ("+model.dropout=0.1", [2]), ("optimizer.lr=1e-5", [9, 10, "lr_custom_subdir"])]
    assert groups[1]["seeds"] == ["2", "3", "4"]


def test_seed_not_overridden_comes_from_the_config_and_only_seeds_varying_is_one_configuration(tmp_path):
    sweep = tmp_path / "sweep"
    write_job(sweep, 0, [SHARED], {"val/acc": 0.5}, seed=7)
    write_job(sweep, 1, [SHARED, "seed=1"], {"val/acc": 0.6})
    rows = sm.collect(sweep)
    assert [row["seed"] for row in rows] == ["7", "1"]
    assert {row["configuration"] for row in rows} == {sm.BASE_CONFIGURATION}


def test_a_corrupt_metrics_file_fails_its_job_only(sweep):
    (sweep / "2" / "metrics.json").write_text('{"val/acc": 0.9')  # cut short by a kill while writing
    summary = sm.summarize(sweep)
    row = summary["rows"][2]
    assert row["status"] == "failed" and "metrics.json" in row["error"]
    assert summary["counts"] == {"ok": len(FINISHED) - 1, "unfinished": 1, "failed": 2}
    assert f"- job 2: {row['error']}" in sm.render_markdown(summary)


# ---------------------------------------------------------------------- best run
def test_best_run_defaults_to_the_optimized_metric_maximized(sweep):
    summary = sm.summarize(sweep)
    assert (summary["metric"], summary["mode"]) == ("val/acc", "max")
    expected = best_job("val/acc", max)
    assert expected not in (0, 8)  # the numbers peak inside the sweep: neither first nor last wins by accident
    assert summary["best"]["job"] == expected


def test_explicit_mode_and_metric_pick_another_best_run(sweep):
    assert sm.summarize(sweep, mode="min")["best"]["job"] == best_job("val/acc", min)
    assert sm.summarize(sweep, metric="test/acc")["best"]["job"] == best_job("test/acc", max) == 8
    loss = sm.summarize(sweep, metric="val/loss")
    assert loss["mode"] == "min" and loss["best"]["job"] == best_job("val/loss", min)
    assert sm.summarize(sweep, metric="val/loss", mode="max")["best"]["job"] == best_job("val/loss", max)


def test_a_loss_optimized_metric_is_minimized_by_default(tmp_path):
    summary = sm.summarize(make_sweep(tmp_path, optimized_metric="val/loss"))
    assert (summary["metric"], summary["mode"]) == ("val/loss", "min")
    assert summary["best"]["job"] == best_job("val/loss", min) != best_job("val/acc", max)


def test_the_sweepers_direction_applies_to_its_own_metric_only(sweep):
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"sweeper": {"direction": "minimize"}}}))
    assert sm.summarize(sweep)["mode"] == "min"  # val/acc, as the (Optuna) sweeper minimized it
    assert sm.summarize(sweep, metric="test/acc")["mode"] == "max"


def test_without_a_config_the_metric_is_val_acc(sweep):
    for folder in sm.job_folders(sweep):
        for config in (folder / "config.yaml", folder / ".hydra" / "config.yaml"):
            config.unlink(missing_ok=True)
    assert sm.summarize(sweep)["metric"] == "val/acc"


# ---------------------------------------------------------------------- per configuration
def test_groups_hold_mean_sample_std_and_n_over_the_finished_seeds(sweep):
    groups = {g["configuration"]: g for g in sm.summarize(sweep)["groups"]}
    assert list(groups) == [f"optimizer.lr={lr}" for lr in LRS]
    for lr_index, lr in enumerate(LRS):
        jobs = [lr_index * 3 + s for s in range(3)]
        finished = [job for job in jobs if job in FINISHED]
        group = groups[f"optimizer.lr={lr}"]
        assert (group["jobs"], group["n_jobs"], group["n_ok"]) == (jobs, 3, len(finished))
        for metric in ("val/acc", "test/acc", "val/loss", "fit/seconds"):
            values = [job_metrics(job)[metric] for job in finished]
            stats = group["metrics"][metric]
            assert stats["n"] == len(values)
            assert stats["mean"] == pytest.approx(statistics.fmean(values))
            assert stats["min"] == min(values) and stats["max"] == max(values)
            if len(values) > 1:
                assert stats["std"] == pytest.approx(statistics.stdev(values))
                assert stats["std"] > 0
            else:
                assert stats["std"] is None  # one seed left: no spread


# ---------------------------------------------------------------------- files
def test_write_produces_csv_markdown_and_a_plot(sweep):
    text = sm.write(sweep)
    assert (sweep / "summary.md").read_text() == text + "\n"

    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert [int(r["job"]) for r in rows] == list(range(9))
    assert [r["status"] for r in rows][3:6] == ["ok", "unfinished", "failed"]
    assert rows[7]["overrides"] == f"optimizer.lr=5e-5 seed=1 {SHARED}"
    assert rows[7]["configuration"] == "optimizer.lr=5e-5" and rows[7]["seed"] == "1"
    for metric, value in job_metrics(7).items():
        assert float(rows[7][metric]) == pytest.approx(value)
    assert float(rows[7]["seconds"]) == pytest.approx(17.0)
    assert rows[FAILED_JOB]["val/acc"] == rows[FAILED_JOB]["seconds"] == ""

    best = best_job("val/acc", max)
    assert "9 jobs: 7 ok, 1 unfinished, 1 failed. Best by val/acc (max)." in text
    assert f"Overrides shared by every job: `{SHARED}`." in text
    assert f"Job {best} (`{sm.collect(sweep)[best]['varying_overrides']}`): val/acc = " \
           f"{job_metrics(best)['val/acc']:.4f}" in text
    assert "| 5 | optimizer.lr=3e-5 seed=2 | failed |" in text
    values = [job_metrics(job)["val/acc"] for job in (6, 7, 8)]
    mean_std = f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}"
    assert f"| optimizer.lr=5e-5 | 3 | 3 | {mean_std} |" in text
    lone = job_metrics(3)["val/acc"]  # lr=3e-5: only seed 0 finished
    assert f"| optimizer.lr=3e-5 | 3 | 1 | {lone:.4f} |" in text
    assert "params/total" not in text  # sizes stay in the CSV

    image = np.asarray(Image.open(sweep / "summary.png").convert("RGB"))
    assert image.shape[0] > 200 and image.shape[1] > 400
    colours = np.unique(image.reshape(-1, 3), axis=0)
    assert len(colours) > 20  # dots, bars, labels on white: not a blank canvas
    red = (image[..., 0] > 200) & (image[..., 1] < 80) & (image[..., 2] < 80)
    blue = (image[..., 2] > 150) & (image[..., 0] < 120) & (image[..., 1] < 170)
    assert red.sum() > 20 and blue.sum() > 20  # the starred best run and the per-seed dots are drawn


@pytest.mark.subprocess
def test_plotting_keeps_the_global_backend_and_never_loads_pyplot(sweep):
    # In a fresh interpreter: pyplot may already be loaded by other tests in this one. The backend is set
    # explicitly because asking matplotlib for an automatic one would itself load pyplot.
    script = (f"import sys, matplotlib; from sft.summarize import write; write({str(sweep)!r}); "
              "assert 'matplotlib.pyplot' not in sys.modules; assert matplotlib.get_backend() == 'svg'")
    done = python(["-c", script], env={"MPLBACKEND": "svg"}, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (sweep / "summary.png").is_file()


def test_a_sweep_where_no_job_finished_is_still_summarized(tmp_path):
    sweep = tmp_path / "sweep"
    write_job(sweep, 0, ["optimizer.lr=1e-5"], None)
    write_job(sweep, 1, ["optimizer.lr=9"], None, started=False)
    text = sm.write(sweep, metric="val/acc")
    assert "None: no finished job has val/acc." in text
    assert "2 jobs: 0 ok, 1 unfinished, 1 failed." in text
    image = np.asarray(Image.open(sweep / "summary.png").convert("L"))
    assert image.min() < 100  # the note is drawn


# ---------------------------------------------------------------------- CLI and callback
def test_cli_prints_the_markdown_and_writes_the_files(sweep, capsys):
    assert sm.main([str(sweep), "--metric", "val/loss"]) == 0
    out = capsys.readouterr().out
    assert out == (sweep / "summary.md").read_text()
    assert "Best by val/loss (min)" in out and f"Job {best_job('val/loss', min)} " in out
    assert all((sweep / name).is_file() for name in sm.FILES)


@pytest.mark.parametrize(("make", "argv", "message"), [
    (lambda tmp: tmp / "nowhere", [], "is not a folder"),
    (lambda tmp: tmp, [], "No job folders (0/, 1/, ...) in"),
    (make_sweep, ["--metric", "val/f1"], "The given metric 'val/f1' is in no finished job's metrics.json; "
                                         "they have: test/acc, val/acc, fit/seconds, params/total, val/loss."),
])
def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys, make, argv, message):
    folder = make(tmp_path)
    assert sm.main([str(folder), *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1
    assert message in captured.err
    assert not (Path(folder) / "summary.md").exists()


def test_bad_mode_is_refused(sweep, capsys):
    with pytest.raises(SystemExit) as exit_info:
        sm.main([str(sweep), "--mode", "best"])
    assert exit_info.value.code == 2 and "invalid choice: 'best'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="mode must be one of max, min"):
        sm.summarize(sweep, mode="maximize")


def test_callback_writes_the_summary_at_multirun_end(sweep, capsys):
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}})
    sm.SweepSummary(metric="test/acc").on_multirun_end(config)
    assert "Best by test/acc (max)" in capsys.readouterr().out
    assert "Best by test/acc (max)" in (sweep / "summary.md").read_text()


def test_callback_logs_instead_of_failing_the_finished_multirun(sweep, caplog):
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}})
    sm.SweepSummary(metric="val/f1").on_multirun_end(config)  # must not raise
    assert "No sweep summary for" in caplog.text and "val/f1" in caplog.text
    assert not (sweep / "summary.md").exists()


@pytest.mark.parametrize("metric, mode", [("val/acc", "max"), ("val/loss", "min"), ("fit/seconds", "min"),
                                          ("test/ece", "min"), ("val/f1", "max")])
def test_checkpointing_search_and_summary_agree_on_the_direction(compose_cfg, tmp_path, metric, mode):
    """One rule for "better": ModelCheckpoint / EarlyStopping, Optuna and the sweep summary. (optimized_metric=
    fit/seconds used to be maximised by checkpointing and Optuna but minimised by the summary.)"""
    cfg = compose_cfg(f"optimized_metric={metric}", "output_dir=.")
    assert cfg.callbacks.model_checkpoint.mode == cfg.callbacks.early_stopping.mode == mode
    from sft.rundir import metric_mode

    assert OmegaConf.create({"d": f"${{metric_direction:{metric}}}"}).d == mode + "imize"
    sweep = tmp_path / "sweep"
    values = {0: 1.0, 1: 3.0, 2: 2.0}
    for job, value in values.items():
        write_job(sweep, job, [f"seed={job}"], {metric: value}, optimized_metric=metric)
    summary = sm.summarize(sweep)
    assert summary["mode"] == metric_mode(metric) == mode
    assert summary["best"]["metrics"][metric] == (min if mode == "min" else max)(values.values())
