"""Callbacks sft adds to Lightning's own."""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Checkpoint

from sft.cache import atomic_write_text
from sft.checkpoint_io import hard_link
from sft.data.batching import training_position
from sft.errors import ConfigError


class LastCheckpoint(Checkpoint):
    """Keeps ``<dirpath>/last.ckpt`` current: every ``every_n_minutes`` of training and / or every
    ``every_n_train_steps`` steps, after every validation and at the end of training. The checkpoint IO writes a
    temporary file and renames it, so a kill at any moment leaves either the previous or the new checkpoint, never a
    truncated one.

    A time cadence bounds the work a crash can lose whatever a step costs, at a fixed share of the time: one write
    (~0.5 s for MiniLM with its AdamW state) every few minutes, where "every 50 steps" wrote every 10 s on a CPU
    and would every second on a GPU. After a validation that saved a new best checkpoint, last.ckpt becomes a hard
    link to that file (the same state, so the same bytes) instead of a second full write. At the end of training,
    when last.ckpt already holds the final step, a small marker (``last.ckpt.finished.json``) says the fit is over,
    again instead of a full write; any later write of last.ckpt removes it first.

    A ``Checkpoint`` subclass so that Lightning runs its hooks after every non-checkpoint callback, and listed
    after the other checkpoint callbacks by ``ordered_callbacks``: the checkpoint written after a validation then
    holds that validation's outcome (EarlyStopping's wait count, ModelCheckpoint's best score), which a resumed
    run cannot recompute, since it does not repeat the validation.

    (Lightning's ``ModelCheckpoint(save_last=True)`` only refreshes last.ckpt when it also saves a top-k
    checkpoint, and two such callbacks race for the same file name.)
    """

    def __init__(self, dirpath: str, every_n_train_steps: int = 0, every_n_minutes: float | None = None,
                 filename: str = "last.ckpt"):
        if every_n_train_steps < 0:
            raise ConfigError(f"callbacks.last_checkpoint.every_n_train_steps={every_n_train_steps}: must be >= 0 "
                              "(0: no step cadence).")
        if every_n_minutes is not None and not every_n_minutes > 0:
            raise ConfigError(f"callbacks.last_checkpoint.every_n_minutes={every_n_minutes}: must be > 0 (e.g. 5), "
                              "or null for no time cadence.")
        self.path = Path(dirpath) / filename
        self.every_n_train_steps = every_n_train_steps
        self.every_n_minutes = every_n_minutes
        self._saved_at_step = -1
        self._saved_at_time: float | None = None
        self._saves_before_validation = -1
        self._fit_finished = False

    def _save(self, trainer: L.Trainer, force: bool = False, link_new_best: bool = False) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        if trainer.global_step == self._saved_at_step and not force:
            return
        if trainer.is_global_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            finished_marker(self.path).unlink(missing_ok=True)  # the state it described is being replaced
        same = self._saved_in_this_validation(trainer) if link_new_best else None
        linked = trainer.strategy.broadcast(bool(same and trainer.is_global_zero and hard_link(same, self.path)))
        if not linked:  # atomic: the checkpoint IO (sft's, and Lightning's own) writes a temporary file and renames it
            trainer.save_checkpoint(self.path, weights_only=False)  # explicit: Lightning logs its default at every save
        self._saved_at_step = trainer.global_step
        self._saved_at_time = time.monotonic()

    def _saved_in_this_validation(self, trainer: L.Trainer) -> Path | None:
        """The full checkpoint another callback (ModelCheckpoint: a new best) wrote since this validation began,
        at this step: it holds the state last.ckpt would. Checkpoint callbacks run after all others, so nothing
        changed the state since; only the last such write counts (a later one holds the earlier one's outcome)."""
        io = trainer.strategy.checkpoint_io
        saved = getattr(io, "last_saved", None)
        if (saved is None or not saved.full or saved.global_step != trainer.global_step
                or saved.number <= self._saves_before_validation or not saved.path.is_file()):
            return None
        return saved.path

    def _due(self, trainer: L.Trainer) -> bool:
        step_due = bool(self.every_n_train_steps and trainer.global_step % self.every_n_train_steps == 0)
        if self.every_n_minutes is None or step_due:
            return step_due
        if self._saved_at_time is None:  # the clock starts with the fit (or the resume)
            self._saved_at_time = time.monotonic()
        # Rank 0's clock decides, so that every DDP rank enters the (collective) save or none does.
        return bool(trainer.strategy.broadcast(time.monotonic() - self._saved_at_time >= 60 * self.every_n_minutes))

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        # Not when a validation follows this batch: Lightning resumes such a checkpoint past that validation, so
        # it would never run; the save after the validation comes moments later.
        if self._due(trainer) and not validation_follows(trainer):
            self._save(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._saves_before_validation = getattr(trainer.strategy.checkpoint_io, "saves", -1)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit":  # forced: a save at this step before the validation lacks its outcome
            self._save(trainer, force=True, link_new_best=True)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Marked finished: resuming such a run skips fit (Lightning cannot restart a completed fit
        # cleanly: EarlyStopping finds no metric) and goes on to validate / test / export.
        self._fit_finished = True
        if self._saved_at_step != trainer.global_step or not self.path.is_file():
            self._save(trainer, force=True)
            return
        # last.ckpt already holds the final weights and optimizer state (saved at this step, usually after the
        # final validation): a small marker beside it says the fit is over, instead of a second full write.
        if trainer.is_global_zero:
            atomic_write_text(finished_marker(self.path),
                              json.dumps({"global_step": trainer.global_step, EPOCHS_KEY: epochs_trained(trainer)}))
        trainer.strategy.barrier("sft_fit_finished_marker")

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint[FIT_FINISHED_KEY] = self._fit_finished
        # EarlyStopping's (or a step limit's) decision to stop, taken in the validation before this save: Lightning
        # keeps it only in memory, and a run resumed without it would train on.
        checkpoint[SHOULD_STOP_KEY] = bool(trainer.should_stop)
        checkpoint[EPOCHS_KEY] = epochs_trained(trainer)

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if checkpoint.get(SHOULD_STOP_KEY):
            trainer.should_stop = True


FIT_FINISHED_KEY = "sft_fit_finished"
SHOULD_STOP_KEY = "sft_should_stop"
EPOCHS_KEY = "sft_epochs_trained"


def finished_marker(last_checkpoint: Path) -> Path:
    """The file saying that ``last_checkpoint``, as it is, holds a finished fit (``last.ckpt.finished.json``)."""
    return last_checkpoint.with_name(last_checkpoint.name + ".finished.json")


def read_finished(checkpoint_path: Path, checkpoint: dict) -> dict | None:
    """``checkpoint`` (loaded from ``checkpoint_path``) marked as a finished fit, by its own key or by the marker
    file beside it (written for its very step); None when the fit was not finished."""
    if checkpoint.get(FIT_FINISHED_KEY):
        return checkpoint
    try:
        marker = json.loads(finished_marker(checkpoint_path).read_text())
    except (OSError, ValueError):
        return None
    if marker.get("global_step") != checkpoint.get("global_step"):
        return None  # describes another state (stale)
    return {**checkpoint, FIT_FINISHED_KEY: True, EPOCHS_KEY: marker.get(EPOCHS_KEY, checkpoint.get("epoch"))}


def epochs_trained(trainer: L.Trainer) -> int:
    """Epochs whose batches have all been trained on. Lightning's ``current_epoch`` misses the last one when a
    resumed run stops at once (early stopping had decided just before the kill) or restarts at an epoch's end."""
    return training_position(trainer)[0]


def validation_follows(trainer: L.Trainer) -> bool:
    """Whether the fit loop validates right after the current training batch (epoch end, val_check_interval,
    or a requested stop). Asked in ``on_train_batch_end``; Lightning's own test, so it cannot disagree."""
    loop = trainer.fit_loop
    try:
        return bool(loop.epoch_loop._should_check_val_fx(loop._data_fetcher))
    except AttributeError:  # a Lightning version without this private test: assume not
        return False


def ordered_callbacks(callbacks: list[L.Callback]) -> list[L.Callback]:
    """``LastCheckpoint`` after every other callback (stable otherwise), whatever order the config lists them in."""
    return sorted(callbacks, key=lambda cb: isinstance(cb, LastCheckpoint))


class ValidateAtStepLimit(L.Callback):
    """A fit bounded by ``max_steps`` validates after its last step, like one bounded by epochs.

    Lightning stops at ``max_steps`` without validating unless the step ends an epoch (or hits
    ``val_check_interval``), so the last steps would never reach checkpoint selection or early stopping.
    Asking the loop to stop at that step makes it validate first (its "stop early" path).
    """

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if 0 < trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True


class DeferredRequeue(L.Callback):
    """Lightning's SLURM auto-requeue handler (save ``hpc_ckpt_<n>.ckpt``, requeue the job) runs at the next batch
    boundary instead of the moment the signal arrives.

    The signal can land anywhere, e.g. between the optimizer step and the step counter's increment, and a
    checkpoint saved there resumes inexactly. The handler itself is Lightning's; only its timing changes.
    A signal that arrives after the fit's last training batch is not acted on: the job is finishing anyway.
    """

    def __init__(self) -> None:
        self._handler = None
        self._signum: int | None = None
        self._pending: int | None = None
        self._last_step = -1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import signal
        import threading

        # The environment Lightning's signal connector reads to pick the signal (SLURMEnvironment: SIGUSR1).
        requeue = getattr(trainer._accelerator_connector.cluster_environment, "requeue_signal", None)
        if requeue is None or threading.current_thread() is not threading.main_thread():
            return
        handler = signal.getsignal(requeue)
        if not callable(handler):  # Lightning installed none: auto-requeue off, or not under SLURM
            return
        self._handler, self._signum = handler, requeue

        def defer(signum: int, frame: object) -> None:
            self._pending = signum

        signal.signal(requeue, defer)

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if self._handler is None:
            return
        stepped, self._last_step = trainer.global_step != self._last_step, trainer.global_step
        # A boundary is a batch that took an optimizer step (no gradients half-accumulated, which checkpoints do
        # not hold) and is not followed by a validation (a resume would skip it). All ranks decide together, so
        # none enters the checkpoint's barrier while another is in the next batch's all-reduce.
        boundary = stepped and not validation_follows(trainer)
        if trainer.strategy.reduce_boolean_decision(boundary and self._pending is not None, all=False):
            signum, self._pending = self._pending or self._signum, None
            self._handler(signum, None)


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
