"""Callbacks sft adds to Lightning's own."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L


class LastCheckpoint(L.Callback):
    """Keeps ``<dirpath>/last.ckpt`` current: every ``every_n_train_steps`` steps, after every validation
    and at the end of training. Written to a temporary file and renamed, so a kill at any moment leaves
    either the previous or the new checkpoint, never a truncated one.

    (Lightning's ``ModelCheckpoint(save_last=True)`` only refreshes last.ckpt when it also saves a top-k
    checkpoint, and two such callbacks race for the same file name.)
    """

    def __init__(self, dirpath: str, every_n_train_steps: int = 50, filename: str = "last.ckpt"):
        if every_n_train_steps < 0:
            raise ValueError("every_n_train_steps must be >= 0 (0: only at validation and train end)")
        self.path = Path(dirpath) / filename
        self.every_n_train_steps = every_n_train_steps
        self._saved_at_step = -1
        self._fit_finished = False

    def _save(self, trainer: L.Trainer, force: bool = False) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        if trainer.global_step == self._saved_at_step and not force:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        if trainer.is_global_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(tmp)
        if trainer.is_global_zero:
            os.replace(tmp, self.path)
        self._saved_at_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if self.every_n_train_steps and trainer.global_step % self.every_n_train_steps == 0:
            self._save(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit":
            self._save(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Marked finished: resuming such a run skips fit (Lightning cannot restart a completed fit
        # cleanly: EarlyStopping finds no metric) and goes on to validate / test / export.
        self._fit_finished = True
        self._save(trainer, force=True)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint[FIT_FINISHED_KEY] = self._fit_finished


FIT_FINISHED_KEY = "sft_fit_finished"


def worker_launcher(trainer: L.Trainer) -> object | None:
    """The trainer's fork / spawn launcher (DDP ranks run in worker processes), else None."""
    from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher

    launcher = trainer.strategy.launcher
    return launcher if isinstance(launcher, _MultiProcessingLauncher) else None


class WorkerRanks(L.Callback):
    """Keeps DDP ranks started by fork / spawn (``trainer=ddp``) healthy; does nothing otherwise.

    - One intra-op thread per forked rank: OpenMP (libgomp) is not fork-safe, and a forked rank whose
      parent already used the thread pool can deadlock in its first parallel op (seen here in
      ``load_state_dict`` with OMP_NUM_THREADS=2). Lightning only sets 1 thread when OMP_NUM_THREADS is unset.
    - The gloo/NCCL process group is destroyed when the rank finishes fit / validate / test. Lightning does
      this at exit for NCCL only; a gloo rank exiting with the group alive sometimes aborts (SIGABRT,
      "terminate called without an active exception"), failing a run that succeeded.
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        launcher = worker_launcher(trainer)
        if launcher is not None and launcher._start_method == "fork":
            import torch

            torch.set_num_threads(1)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        import torch.distributed as dist

        if worker_launcher(trainer) is not None and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
