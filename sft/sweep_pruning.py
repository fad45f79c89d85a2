"""Pruning in an Optuna search: the trial's job reports its validation metric to the study and stops when the
pruner gives up on it.

:class:`OptunaPruning` runs inside a trial's job (the pipeline adds it when the sweeper, :mod:`sft.sweeper`, passes
the trial in the job's config). The study is opened from its storage (the sweep's SQLite file, which every local,
joblib or submitit job can reach) and the trial rebuilt there, so the pruner sees every trial's curve. After each
validation it reports the metric at the optimizer step (``trainer.global_step``: trials are compared at equal
training budgets, so ones that differ in ``data.batch_size`` do not meet) and asks the pruner. A pruned trial is
marked in the study (:data:`PRUNED_ATTR`) and in its run folder (:data:`PRUNED_FILE`), then raises
``optuna.TrialPruned``, which ends the job: the sweeper records the trial as PRUNED.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L

from sft.rundir import PRUNED_FILE

log = logging.getLogger("sft")

PRUNED_ATTR = "sft_pruned"  # trial user attribute set by a pruned job: where it stopped


class OptunaPruning(L.Callback):
    """Report ``monitor`` to trial ``trial_number`` of the study after each validation; stop the fit (raise
    ``optuna.TrialPruned``) when ``pruner`` prunes the trial. Only rank zero talks to the study; the decision is
    broadcast, so every DDP rank stops together."""

    def __init__(self, storage: str, study_name: str, trial_number: int, pruner: Any, monitor: str,
                 run_dir: str | Path | None = None) -> None:
        self.storage, self.study_name, self.trial_number = storage, study_name, int(trial_number)
        self.pruner, self.monitor = pruner, monitor
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self._trial: Any = None

    def trial(self) -> Any:
        """The trial, rebuilt from the storage with this job's pruner (the job samples nothing: the sweeper did)."""
        if self._trial is None:
            import optuna

            storage = optuna.storages.RDBStorage(self.storage)  # a storage URL is a database's (SQLAlchemy)
            study = optuna.load_study(study_name=self.study_name, storage=storage, pruner=self.pruner,
                                      sampler=optuna.samplers.RandomSampler())
            study_id = storage.get_study_id_from_name(self.study_name)
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, self.trial_number)
            self._trial = optuna.trial.Trial(study, trial_id)
        return self._trial

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Only the validations of fit: the final evaluation of the best checkpoint (same trainer) would add a false
        # point to the curve and could prune a trial that has finished training.
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        value = trainer.callback_metrics.get(self.monitor)
        step = int(trainer.global_step)
        prune = False
        if trainer.is_global_zero and value is not None:
            trial = self.trial()
            trial.report(float(value), step)  # a step reported before a resume is kept (Optuna warns, ignores)
            prune = trial.should_prune()
            if prune:
                where = {"step": step, "epoch": int(trainer.current_epoch), self.monitor: float(value)}
                trial.set_user_attr(PRUNED_ATTR, where)
                if self.run_dir is not None:
                    (self.run_dir / PRUNED_FILE).write_text(json.dumps({"trial": self.trial_number, **where}) + "\n")
                log.info("Trial %d pruned at step %d (epoch %d): %s = %.4f is not promising next to the other trials.",
                         self.trial_number, step, trainer.current_epoch, self.monitor, float(value))
        if trainer.strategy.broadcast(prune, src=0):
            import optuna

            raise optuna.TrialPruned(f"trial {self.trial_number} pruned at step {step}")
