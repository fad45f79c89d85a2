"""Optuna sweeper that resumes: ``hydra-optuna-sweeper`` plus what a long search on a shared machine needs.

The plugin's own sweeper, used by ``conf/hparams_search/optuna_*.yaml``, with three changes:

- **Resume.** Rerunning the same command with ``hydra.sweep.dir=<the interrupted sweep>`` opens the study
  stored there (``optuna.db``) and runs only the trials still missing from ``n_trials`` (the plugin would
  run ``n_trials`` more, and restart job numbering at 0 over the existing job folders). A trial that was
  running when the sweep died is finished first, in its own job folder, so training continues from that
  folder's ``last.ckpt`` (``resume=auto``) and the study keeps one record for it.
- **The SQLite file's folder is created** before the study is opened (the sweep folder does not exist yet).
- **A clear end** when every trial failed (the plugin raises ``No trials are completed yet``).

Resuming assumes the interrupted sweep is over: its jobs (e.g. SLURM jobs that outlive the sweeping
process) must have stopped, since trials still marked RUNNING are run again in their folders.

Failed trials (an exception, a NaN metric) are recorded as FAIL and the sweep goes on when
``max_failure_rate`` allows it; the presets set 1.0.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl
from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper as PluginOptunaSweeper

from sft.errors import ConfigError

log = logging.getLogger(__name__)

JOB_NUM_ATTR = "sft_job_num"  # the Hydra job number (= job folder) a trial ran in


def sqlite_file(storage: Any) -> Path | None:
    url = str(storage or "")
    return Path(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else None


@contextlib.contextmanager
def _grid_sampler_tolerates_tell() -> Iterator[None]:
    """Optuna's GridSampler calls ``study.stop()`` after the last grid point, which raises outside
    ``study.optimize``; the plugin only tolerates that for completed trials, so a *failed* last grid point
    (or a resumed one) crashed the sweep. Here the stop request is ignored: the trial count ends the sweep."""
    from optuna.samplers import GridSampler

    original = GridSampler.after_trial

    def after_trial(self: Any, study: Any, trial: Any, state: Any, values: Any) -> None:
        try:
            original(self, study, trial, state, values)
        except RuntimeError as e:
            if "Study.stop" not in str(e):
                raise

    GridSampler.after_trial = after_trial
    try:
        yield
    finally:
        GridSampler.after_trial = original


class _ResumableImpl(OptunaSweeperImpl):
    def _configure_trials(self, trials: list[Any], search_space_distributions: dict[str, Any],
                          fixed_params: dict[str, Any]) -> Any:
        overrides = super()._configure_trials(trials, search_space_distributions, fixed_params)
        for i, trial in enumerate(trials):  # the plugin launches this batch at job numbers job_idx, job_idx+1, ...
            trial.set_user_attr(JOB_NUM_ATTR, self.job_idx + i)
        return overrides

    def sweep(self, arguments: list[str]) -> None:
        import optuna
        from optuna.trial import TrialState

        database = sqlite_file(self.storage)
        if database is not None:
            database.parent.mkdir(parents=True, exist_ok=True)
        try:
            study = optuna.load_study(study_name=self.study_name, storage=self.storage) if self.storage else None
        except KeyError:  # no such study yet
            study = None
        try:
            with _grid_sampler_tolerates_tell():
                if study is not None:
                    self._resume(study, arguments)
                super().sweep(arguments)
        except ValueError as e:
            if "No trials are completed" not in str(e):
                raise
            raise ConfigError(
                f"Every trial of the sweep failed; see the job folders under {self.sweep_dir} (each job's log) "
                "for the errors. Fix the search space or the settings and run again."
            ) from None
        done = [t for t in study.trials if t.state.is_finished()] if study is not None else []
        if done:
            log.info("Study %s now holds %d finished trials (%d failed).", self.study_name, len(done),
                     sum(t.state == TrialState.FAIL for t in done))

    def _resume(self, study: Any, arguments: list[str]) -> None:
        """Finish the trials an interrupted sweep left running, then set up the remaining ones."""
        from optuna.trial import TrialState

        trials = study.get_trials(deepcopy=False)
        numbers = [t.user_attrs.get(JOB_NUM_ATTR, t.number) for t in trials]
        self.job_idx = max(numbers, default=-1) + 1
        stale = [t for t in trials if t.state == TrialState.RUNNING]
        log.info("Resuming study %s from %s: %d trials so far, %d left running by the interrupted sweep.",
                 study.study_name, self.storage, len(trials), len(stale))
        for trial in stale:
            # The plugin stores the sweep's fixed overrides as user attributes and the sampled ones as params.
            params = {**{k: v for k, v in trial.user_attrs.items() if k != JOB_NUM_ATTR}, **trial.params}
            overrides = tuple(f"{name}={value}" for name, value in params.items())
            job_num = trial.user_attrs.get(JOB_NUM_ATTR, trial.number)
            log.info("Finishing interrupted trial %d in job folder %s: %s", trial.number, job_num, " ".join(overrides))
            ret = self.launcher.launch([overrides], initial_job_idx=job_num)[0]
            state, values = TrialState.COMPLETE, None
            try:
                values = [float(ret.return_value)]
                if not math.isfinite(values[0]):
                    raise ValueError(f"the job returned {values[0]}")
            except Exception as e:  # the job raised: the sweep goes on, the trial is recorded as failed
                log.warning("Failed experiment (trial %d): %s", trial.number, e)
                state, values = TrialState.FAIL, None
            study.tell(trial.number, values=values, state=state)
        finished = sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))
        total = min(self.n_trials, self._grid_size(arguments) or self.n_trials)  # a grid holds so many trials
        self.n_trials = max(0, total - finished)
        log.info("%d of %d trials to go.", self.n_trials, total)

    def _grid_size(self, arguments: list[str]) -> int | None:
        """Points of a GridSampler's grid (the plugin caps n_trials at it; here before the finished are taken off)."""
        import functools

        import optuna
        from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

        if not (isinstance(self.sampler, functools.partial) and self.sampler.func == optuna.samplers.GridSampler):
            return None
        self._process_searchspace_config()
        distributions, fixed = create_params_from_overrides([*self._parse_sweeper_params_config(), *arguments])
        return math.prod(len(self._to_grid_sampler_choices(d)) for k, d in distributions.items() if k not in fixed)


class OptunaSweeper(PluginOptunaSweeper):
    """The resumable sweeper of the hparams_search presets (``hydra.sweeper._target_`` = :data:`PLUGIN_NAME`)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sweeper.__class__ = _ResumableImpl  # same state, resumable methods

    def sweep(self, arguments: list[str]) -> None:
        return self.sweeper.sweep(arguments)


# Hydra builds sweepers only from its plugin registry, and only from modules under the `hydra_plugins`
# namespace. sft ships no namespace package (an editable install would hide the one in site-packages), so the
# sweep checks callback (sft.sweep_checks) calls register() before Hydra builds the sweeper: this module is
# aliased as `hydra_plugins.sft` and the class registered under that name.
PLUGIN_MODULE = "hydra_plugins.sft"
OptunaSweeper.__module__ = PLUGIN_MODULE
PLUGIN_NAME = f"{PLUGIN_MODULE}.{OptunaSweeper.__name__}"


def register() -> None:
    import sys

    from hydra.core.plugins import Plugins

    sys.modules.setdefault(PLUGIN_MODULE, sys.modules[__name__])
    Plugins.instance().register(OptunaSweeper)
