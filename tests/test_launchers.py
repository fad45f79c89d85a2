"""Hydra launcher presets: submitit (local) end to end, the GPU claims of the one-trial-per-GPU pool, the
error for a launcher plugin that is not installed."""

from __future__ import annotations

import csv
import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import pytest

from tests.conftest import FAST
from tests.helpers import python

pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[sweep]' for the launchers")


@pytest.mark.subprocess
@pytest.mark.multirun
def test_submitit_local_launcher_runs_each_job_in_its_own_process_and_folder(tiny_bert, tmp_path):
    sweep = tmp_path / "sweep"
    out = python(["-m", "sft.run", "-m", "hydra/launcher=local", "hydra.launcher.cpus_per_task=1",
                  f"model.name_or_path={tiny_bert}", "seed=1,2", f"hydra.sweep.dir={sweep}", *FAST,
                  "torch_threads=null", "data.train_size=96"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    with (sweep / "summary.csv").open(newline="") as f:
        summary = {r["job"]: r for r in csv.DictReader(f)}
    assert [r["status"] for r in summary.values()] == ["ok", "ok"]
    for job in ("0", "1"):
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        assert metrics["fit/epochs"] == 1 and metrics["fit/global_step"] == 3  # 96 training rows, batches of 32
        assert float(summary[job]["test/acc"]) == pytest.approx(metrics["test/acc"], abs=1e-9)  # the summary reads it
        assert json.loads((sweep / job / "run.json").read_text())["argv"][0].endswith("_submit.py")  # submitit's process
    logs = sorted((sweep / ".submitit").glob("*/*_log.out"))
    assert len(logs) == 2  # one submitit job (and log) per sweep job
    for path in logs:  # each job trained there, on its share of the cores
        text = path.read_text()
        assert "Job completed successfully" in text and "torch threads: 1" in text


def _hold_gpu(lock_dir: str, n_gpus: int, hold: float, results) -> None:
    from sft.devices import claimed_gpu

    with claimed_gpu(lock_dir, n_gpus, poll_seconds=0.05) as index:
        start = time.monotonic()
        time.sleep(hold)
        results.put((index, start, time.monotonic()))


@pytest.mark.subprocess
def test_parallel_jobs_claim_different_gpus_and_wait_when_all_are_taken(tmp_path):
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    jobs = [ctx.Process(target=_hold_gpu, args=(str(tmp_path / "locks"), 2, 1.5, results)) for _ in range(3)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(60)
    claims = sorted((results.get(timeout=5) for _ in jobs), key=lambda r: r[1])
    first, second, third = claims
    assert {first[0], second[0]} == {0, 1}  # two jobs at once, on different GPUs
    assert third[1] >= min(first[2], second[2]) - 0.05  # the third waited for a GPU to free up
    overlapping = [c for c in (first, second) if c[1] < third[2] and third[1] < c[2]]
    assert all(c[0] != third[0] for c in overlapping)  # never two jobs on one GPU at the same time


@pytest.mark.subprocess
def test_a_killed_job_releases_its_gpu(tmp_path):
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    holder = ctx.Process(target=_hold_gpu, args=(str(tmp_path / "locks"), 1, 60, results))
    holder.start()
    deadline = time.monotonic() + 30
    while not list((tmp_path / "locks").glob("gpu0.lock")) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    holder.kill()
    holder.join()
    from sft.devices import claimed_gpu

    with claimed_gpu(tmp_path / "locks", 1, poll_seconds=0.05) as index:
        assert index == 0


@pytest.mark.parametrize(("option", "module", "message", "install"), [
    ("hydra/launcher=slurm", "hydra_plugins.hydra_submitit_launcher", "the Hydra plugin hydra-submitit-launcher",
     "pip install hydra-submitit-launcher"),
    ("hydra/launcher=gpu_pool", "hydra_plugins.hydra_joblib_launcher", "the Hydra plugin hydra-joblib-launcher",
     "pip install hydra-joblib-launcher"),
    ("hparams_search=optuna_random", "optuna", "optuna", "pip install 'optuna>=4'"),  # sft's own sweeper's library
])
@pytest.mark.subprocess
@pytest.mark.multirun
def test_launcher_plugin_not_installed_names_the_pip_package(tmp_path, option, module, message, install):
    # The package is made unimportable in this process only (sys.modules[name] = None means "not installed").
    probe = (f"import sys, runpy; sys.modules['{module}'] = None; "
             f"sys.argv = ['sft.run', '-m', '{option}', 'seed=1,2']; runpy.run_module('sft.run', run_name='__main__')")
    out = python(["-c", probe], cwd=tmp_path)
    assert out.returncode == 2
    assert f"needs {message}, which is not installed" in out.stderr
    assert install in out.stderr
    assert not Path(tmp_path, "outputs").exists()


@pytest.mark.subprocess
@pytest.mark.multirun
def test_slurm_preset_writes_the_sbatch_script_lightning_requeue_needs(tmp_path):
    """The real Hydra submitit launcher up to the cluster: a stand-in `sbatch` (there is no SLURM here) refuses
    the job, and the batch script submitit wrote is checked."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text("#!/bin/sh\necho 'sbatch: error: no cluster here' >&2\nexit 1\n")
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit only checks that srun exists
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    sweep = tmp_path / "sweep"
    out = python(["-m", "sft.run", "-m", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "seed=1,2",
                  "report=none", f"hydra.sweep.dir={sweep}"], cwd=tmp_path,
                 env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert out.returncode != 0 and "no cluster here" in out.stderr
    scripts = list((sweep / ".submitit").rglob("*.sh"))  # the batch script, written before sbatch is called
    assert len(scripts) == 1  # one job array for the sweep
    text = scripts[0].read_text()
    for line in ("#SBATCH --signal=USR1@120", "#SBATCH --requeue", "#SBATCH --partition=gpu",
                 "#SBATCH --gpus-per-node=1", "#SBATCH --ntasks-per-node=1", "#SBATCH --time=240",
                 "#SBATCH --array=0-1%2"):
        assert line in text, line
    assert "USR2" not in text  # submitit's own signal replaced by Lightning's


def test_resume_prefers_the_newer_of_last_ckpt_and_lightnings_slurm_requeue_checkpoint(compose_cfg, tmp_path):
    from sft.rundir import resume_checkpoint

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    cfg = compose_cfg(f"output_dir={run}")
    assert resume_checkpoint(cfg.ckpt_path, cfg.resume, run) is None
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(b"x")
    assert resume_checkpoint(cfg.ckpt_path, cfg.resume, run) == str(last)
    for n, age in ((1, 50), (2, 10), (10, 20)):  # hpc_ckpt_10 is the latest save by number, not by name order
        path = run / f"hpc_ckpt_{n}.ckpt"
        path.write_bytes(b"x")
        os.utime(path, (time.time() - age, time.time() - age))
    os.utime(last, (time.time() - 100, time.time() - 100))
    assert resume_checkpoint(cfg.ckpt_path, cfg.resume, run) == str(run / "hpc_ckpt_10.ckpt")  # saved at the USR1 signal: newer
    os.utime(last, None)
    assert resume_checkpoint(cfg.ckpt_path, cfg.resume, run) == str(last)  # a last.ckpt written after the requeue wins
    assert resume_checkpoint(None, compose_cfg(f"output_dir={run}", "resume=false").resume, run) is None
