"""Resume: a run killed with SIGKILL mid-epoch and resumed ends exactly like an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sft.errors import ConfigError
from sft.train import train
from tests.conftest import REPO


def run_cli(args: list[str], cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, "-m", "sft.run", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def common(tiny_bert: str, run_dir: Path) -> list[str]:
    # 480 sample rows / batch 32 = 15 steps per epoch; last.ckpt every 4 steps; 2 epochs.
    return [f"model.name_or_path={tiny_bert}", f"hydra.run.dir={run_dir}", "trainer.max_epochs=2",
            "optimizer.lr=1e-3", "seed=3", "callbacks.last_checkpoint.every_n_train_steps=4",
            "callbacks.progress_bar=null", "++trainer.enable_progress_bar=false", "export=false"]


@pytest.fixture(scope="module")
def uninterrupted(tiny_bert, tmp_path_factory) -> dict:
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    reference = run_cli(common(tiny_bert, run_dir))
    assert reference.returncode == 0, reference.stderr[-3000:]
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.mark.parametrize("kill_step", [10, 22])  # mid-epoch 1 (after the step-8 save) and mid-epoch 2
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tiny_bert, tmp_path, kill_step, uninterrupted):
    expected = uninterrupted

    run_dir = tmp_path / "killed"
    killed = run_cli([*common(tiny_bert, run_dir), "+callbacks.killer._target_=tests.helpers.KillAtStep",
                      f"+callbacks.killer.step={kill_step}"])
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert not (run_dir / "metrics.json").exists()

    resumed = run_cli(common(tiny_bert, run_dir))  # resume=auto finds last.ckpt
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming from" in resumed.stdout + resumed.stderr
    got = json.loads((run_dir / "metrics.json").read_text())
    for key in ("val/acc", "val/loss", "test/acc", "test/loss", "test/f1", "fit/global_step", "fit/epochs"):
        assert got[key] == pytest.approx(expected[key], abs=1e-6), key
    starts = json.loads((run_dir / "run.json").read_text())["starts"]
    assert len(starts) == 2, "run.json keeps a record of both starts"


def test_resume_true_without_checkpoint_is_a_clear_error(tiny_cfg, tmp_path):
    with pytest.raises(ConfigError, match="no checkpoint to resume from"):
        train(tiny_cfg("resume=true"))


def test_missing_ckpt_path_is_a_clear_error(tiny_cfg, tmp_path):
    with pytest.raises(ConfigError, match="ckpt_path=.*does not exist"):
        train(tiny_cfg(f"ckpt_path={tmp_path / 'nope.ckpt'}"))


def test_finished_run_resumes_to_the_same_result(tiny_cfg, tmp_path):
    """resume=auto on a finished run does not train again and reports the same metrics."""
    first = train(tiny_cfg("data.train_size=64", "export=false"))
    again = train(tiny_cfg("data.train_size=64", "export=false"))
    assert again["fit/global_step"] == first["fit/global_step"]
    assert again["val/acc"] == first["val/acc"] and again["test/loss"] == pytest.approx(first["test/loss"])
