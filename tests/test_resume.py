"""Resume: a run killed with SIGKILL at any point and run again ends exactly like an uninterrupted run.

Every run here uses the shipped callbacks (conf/callbacks/default.yaml: ModelCheckpoint, last.ckpt every 5
minutes and after every validation, EarlyStopping, LR monitor), the default learning rate and the machine's own
precision choice (one case shortens the time cadence, so that a mid-epoch save happens within the tiny run). The tiny BERT on the packaged sample takes 15 steps per epoch; early stopping (patience 3)
ends it after 4 of its 6 epochs, so a resumed run that lost the early-stopping state trains on, and one that
lost the data position trains on other batches: both show in the final weights and step count.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch

from sft.errors import ConfigError
from sft.pipeline.train import train
from tests.helpers import common, kill_at, run_cli

SLURM = {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "sft-test", "SLURM_JOB_ID": "4242", "SLURM_PROCID": "0",
         "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}


def outcome(run_dir: Path) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    weights = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    return metrics, weights


def assert_same_run(got: tuple, expected: tuple) -> None:
    (metrics, weights), (ref_metrics, ref_weights) = got, expected
    for key in ("fit/global_step", "fit/epochs", "val/acc", "val/loss", "test/acc", "test/loss", "test/f1"):
        assert metrics[key] == pytest.approx(ref_metrics[key], abs=1e-5), key
    # The final weights: every step after the resume trained on the same batch, lr and dropout masks.
    assert weights.keys() == ref_weights.keys()
    worst = max((weights[k].float() - ref_weights[k].float()).abs().max().item() for k in weights)
    assert worst < 1e-5, f"final weights differ by {worst}"


@pytest.fixture(scope="module")
def uninterrupted(tiny_bert, tmp_path_factory) -> dict[str, tuple]:
    runs = {}
    for name, extra in (("epochs", []), ("val_every_5", ["trainer.val_check_interval=5"])):
        run_dir = tmp_path_factory.mktemp(f"uninterrupted_{name}")
        reference = run_cli(common(tiny_bert, run_dir, *extra))
        assert reference.returncode == 0, reference.stderr[-3000:]
        runs[name] = outcome(run_dir)
    assert runs["epochs"][0]["fit/global_step"] < 6 * 15, "early stopping should end the reference early"
    return runs


# (reference, extra overrides, kill) -> the checkpoint the resumed run starts from.
KILLS = {
    "mid-epoch (time-triggered save)": ("epochs", ["callbacks.last_checkpoint.every_n_minutes=0.001"], kill_at(52)),
    "mid-epoch (step-triggered save)": ("epochs", ["callbacks.last_checkpoint.every_n_train_steps=50"], kill_at(52)),
    "right after a validation": ("epochs", [], kill_at(15, "on_train_batch_start")),
    "at the end of an epoch": ("epochs", [], kill_at(15, "on_train_epoch_end")),
    "between epochs": ("epochs", [], kill_at(15, "on_train_epoch_start")),
    "after a mid-epoch validation": ("val_every_5", ["trainer.val_check_interval=5"], kill_at(10, "on_train_batch_start")),
    "after early stopping decided, before fit ends": ("epochs", [], kill_at(60, "on_train_epoch_end")),
    "after fit, before test": ("epochs", [], kill_at(60, "teardown")),
    "right after a validation, loader workers": ("epochs", ["+data.num_workers=2"], kill_at(15, "on_train_batch_start")),
}


@pytest.mark.subprocess
@pytest.mark.parametrize("point", list(KILLS))
def test_sigkill_then_resume_matches_uninterrupted(tiny_bert, tmp_path, point, uninterrupted):
    reference, extra, kill = KILLS[point]
    run_dir = tmp_path / "killed"
    killed = run_cli(common(tiny_bert, run_dir, *extra, *kill))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    last = run_dir / "checkpoints" / "last.ckpt"
    assert last.is_file()
    assert not (run_dir / "metrics.json").exists()
    saved_at = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    if point.startswith("mid-epoch"):  # a save inside epoch 4 (steps 46-60), not the one after epoch 3's validation
        assert 45 < saved_at < 52, saved_at
    if point == "right after a validation":  # the new best of that validation: last.ckpt is the same file, not a copy
        (best,) = (run_dir / "checkpoints").glob("best-*.ckpt")
        assert best.samefile(last) and saved_at == 15

    resumed = run_cli(common(tiny_bert, run_dir, *extra))  # resume=auto finds last.ckpt
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming from" in resumed.stdout + resumed.stderr
    assert_same_run(outcome(run_dir), uninterrupted[reference])
    starts = json.loads((run_dir / "run.json").read_text())["starts"]
    assert len(starts) == 2, "run.json keeps a record of both starts"


@pytest.mark.slow  # ~45 s; make test stays under 15 min (the other kills above resume with the used rows)
@pytest.mark.subprocess
def test_a_cpu_checkpoint_resumes_with_the_whole_embedding_in_the_optimizer(tiny_bert, tmp_path, uninterrupted):
    """A CPU fit saves its word embedding's moments for the used rows only (sft.models.embedding_rows); resumed
    where the optimizer holds the whole matrix (a GPU, DDP, or the lever turned off) it ends like the
    uninterrupted run."""
    run_dir = tmp_path / "killed"
    every_50 = "callbacks.last_checkpoint.every_n_train_steps=50"
    killed = run_cli(common(tiny_bert, run_dir, every_50, *kill_at(52)))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    resumed = run_cli(common(tiny_bert, run_dir, every_50, "+model.embedding_used_rows=false"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming from" in resumed.stdout + resumed.stderr
    assert_same_run(outcome(run_dir), uninterrupted["epochs"])


@pytest.mark.subprocess
def test_slurm_requeue_checkpoint_resumes_exactly(tiny_bert, tmp_path, uninterrupted):
    """SLURM's USR1 ("time is almost up") lands between backward and the optimizer step; Lightning's requeue handler
    saves hpc_ckpt_1.ckpt (at the next batch boundary, sft's doing) and the job is killed later. The requeued job
    resumes from that checkpoint, which is newer than last.ckpt, and ends like an uninterrupted run."""
    run_dir = tmp_path / "requeued"
    signal_at = ["+callbacks.usr1._target_=tests.helpers.SignalAtStep", "+callbacks.usr1.step=18"]
    killed = run_cli(common(tiny_bert, run_dir, *signal_at, *kill_at(22)), env=SLURM)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert "Handling auto-requeue signal" in killed.stdout + killed.stderr
    hpc = run_dir / "hpc_ckpt_1.ckpt"
    assert hpc.is_file()
    assert torch.load(hpc, map_location="cpu", weights_only=True)["global_step"] == 19, "saved at a batch boundary"

    resumed = run_cli(common(tiny_bert, run_dir), env=SLURM)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resuming from {hpc}" in resumed.stdout + resumed.stderr
    assert_same_run(outcome(run_dir), uninterrupted["epochs"])


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
