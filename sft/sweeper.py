"""sft's Optuna sweeper: a Hydra ``Sweeper`` plugin that drives Optuna (>= 4) through ask / tell.

Used by the ``hparams_search`` presets (``conf/hparams_search/``, ``conf/hydra/sweeper/optuna.yaml``):

- **Trials run through the configured Hydra launcher**, ``n_jobs`` at a time (basic, joblib, submitit / SLURM,
  ``gpu_pool``), each in its own job folder. The search space is ``hydra.sweeper.params`` plus the sweep overrides
  of the command line (which win), in Hydra's syntax: ``interval(a, b)``, ``tag(log, interval(a, b))``,
  ``range(...)``, ``choice(...)`` or ``a,b,c``; every other override is passed to every trial.
- **The study is stored** (``<sweep dir>/optuna.db`` by default), so an interrupted search resumes: rerunning the
  same command with ``hydra.sweep.dir=<that sweep>`` opens the study and runs only the trials still missing from
  ``n_trials``, numbered after the existing job folders. A trial that was running when the sweep died is finished
  first, in its own job folder, so training continues from that folder's ``last.ckpt`` (``resume=auto``) and the
  study keeps one record for it. Resuming assumes the interrupted sweep is over: its jobs (e.g. SLURM jobs that
  outlive the sweeping process) must have stopped, since trials still marked RUNNING are run again.
- **Failed trials** (an exception, a NaN metric) are recorded as FAIL and the search goes on while
  ``max_failure_rate`` allows; a search where no trial completed ends with a :class:`ConfigError`.
- **Pruning** (``hydra.sweeper.pruner``, e.g. ``hydra/sweeper/pruner=median``): each trial's job gets the override
  ``+optuna_trial={storage, study, number, pruner}``; the pipeline then adds :class:`sft.sweep_pruning.OptunaPruning`,
  which reports the validation metric to the study after every validation and stops a trial the pruner gives up
  on. The trial is told PRUNED.

Why not hydra-optuna-sweeper: its last release pins ``optuna<3`` (so SQLAlchemy 1.x), starts job numbering at 0
over existing job folders when a study is reused, and cannot prune (its jobs cannot reach their trial).
"""

from __future__ import annotations

import importlib.util
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig, OmegaConf

from sft.errors import ConfigError
from sft.rundir import TRIAL_KEY

if TYPE_CHECKING:  # optuna is imported when a search runs: Hydra imports this module at every start
    from hydra.core.override_parser.types import Override

log = logging.getLogger(__name__)

PLUGIN_MODULE = "hydra_plugins.sft_optuna_sweeper"
PLUGIN_TARGET = f"{PLUGIN_MODULE}.OptunaSweeper"  # hydra.sweeper._target_ of conf/hydra/sweeper/optuna.yaml
JOB_NUM_ATTR = "sft_job_num"  # trial user attribute: the Hydra job number (= job folder) the trial runs in
OVERRIDES_ATTR = "sft_overrides"  # trial user attribute: the job's overrides, to finish an interrupted trial
SAMPLERS = "tpe, random, grid, cmaes, gp"  # conf/hydra/sweeper/sampler/
DIRECTIONS = ("maximize", "minimize")


def sqlite_file(storage: Any) -> Path | None:
    url = str(storage or "")
    return Path(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else None


def register() -> None:
    """Register the sweeper in Hydra's plugin registry (``Plugins.register``, Hydra's public way), before Hydra
    builds the sweeper. Needed with an editable install, whose import hook hides :data:`PLUGIN_MODULE` from
    Hydra's scan of ``hydra_plugins`` (hydra#3252); harmless where the scan found it. Called by the sweep checks
    callback (:mod:`sft.sweep_checks`), which Hydra runs before it instantiates the sweeper."""
    import importlib

    from hydra.core.plugins import Plugins

    try:
        module = importlib.import_module(PLUGIN_MODULE)
    except ImportError as e:
        raise ConfigError(f"sft's sweeper plugin module {PLUGIN_MODULE} cannot be imported ({e}): reinstall sft "
                          "(`pip install -e '.[sweep]'` in the checkout) so the package ships it.") from None
    Plugins.instance().register(module.OptunaSweeper)


# ---------------------------------------------------------------------- search space
@dataclass
class SearchSpace:
    """What the sweep overrides say: a distribution per swept key, and the fixed overrides every trial gets."""

    distributions: dict[str, Any]  # key as written (e.g. optimizer.lr) -> optuna distribution
    fixed: list[str]  # overrides as written (`trainer.max_epochs=3`, `+x=1`, `~logger`)
    written: dict[str, str]  # swept key -> its override as written, for messages

    def grid(self) -> dict[str, list[Any]]:
        """The GridSampler's grid: every swept key's values (the key must take finitely many)."""
        return {key: grid_values(key, self.written[key], d) for key, d in self.distributions.items()}

    def grid_size(self) -> int:
        return math.prod(len(values) for values in self.grid().values())


def parse_overrides(lines: list[str]) -> list[Override]:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        return OverridesParser.create().parse_overrides(lines)
    except OverrideParseException as e:
        raise ConfigError(f"Cannot read the search space: {e}") from None


def params_lines(params: Any) -> list[str]:
    """``hydra.sweeper.params`` ({key: sweep}) as override lines."""
    if not params:
        return []
    if not isinstance(params, DictConfig | dict):
        raise ConfigError(f"hydra.sweeper.params={params!r} must map keys to sweeps, e.g. "
                          "{optimizer.lr: 'tag(log, interval(1e-5, 1e-3))'} (or null for none).")
    items = params.items() if isinstance(params, dict) else OmegaConf.to_container(params, resolve=False).items()
    return [f"{key}={value}" for key, value in items]


def search_space(lines: list[str]) -> SearchSpace:
    """The search space of ``hydra.sweeper.params`` lines followed by the command line's (a key given twice:
    the later wins, so the command line replaces a preset's range)."""
    by_key: dict[str, Override] = {}
    for override in parse_overrides(lines):
        key = override.get_key_element()
        by_key.pop(key, None)
        by_key[key] = override
    distributions = {key: distribution(o) for key, o in by_key.items() if o.is_sweep_override()}
    written = {key: o.input_line or key for key, o in by_key.items() if o.is_sweep_override()}
    fixed = [o.input_line for key, o in by_key.items() if not o.is_sweep_override()]
    return SearchSpace(distributions, fixed, written)


def distribution(override: Override) -> Any:
    """The Optuna distribution of one swept override (Hydra's sweep syntax), or a ConfigError that says why not."""
    from hydra.core.override_parser.types import Transformer
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    key = override.get_key_element()
    text = override.input_line or key
    value = override.value()
    if override.is_interval_sweep():  # Hydra reads both ends as floats: range() gives integers
        low, high, log_scale = value.start, value.end, "log" in value.tags
        if low is None or high is None or not low < high:
            raise ConfigError(f"{text} is not a valid range; interval(low, high) needs low < high, "
                              "e.g. interval(1e-5, 1e-4).")
        if log_scale and low <= 0:
            raise ConfigError(f"{text} is log-scaled, so its low end must be > 0, e.g. tag(log, interval(1e-5, 1e-3)).")
        if isinstance(low, int) and isinstance(high, int):  # int(interval(8, 64)): Hydra's cast gives int ends
            return IntDistribution(low, high, log=log_scale)
        return FloatDistribution(float(low), float(high), log=log_scale)
    if override.value_type is not None and override.value_type.name == "GLOB_CHOICE_SWEEP":
        raise ConfigError(f"{text}: glob() cannot be searched by Optuna; list the options, e.g. {key}=a,b.")
    values = list(override.sweep_iterator(transformer=Transformer.encode))  # strings escaped as overrides need
    if not values:
        raise ConfigError(f"{text} gives no values to try (e.g. range(5, 1) is empty; use range(1, 5)).")
    if override.is_range_sweep() and not value.shuffle:
        step = abs(value.step)
        low, high = min(values), max(values)  # Hydra's range excludes its stop, as Python's does
        if len(values) == 1:
            return CategoricalDistribution(values)
        if all(isinstance(v, int) for v in (value.start, value.stop, value.step)):
            return IntDistribution(int(low), int(high), step=int(step))
        return FloatDistribution(float(low), float(high), step=float(step))
    for choice in values:
        if not isinstance(choice, str | int | float | bool):
            raise ConfigError(f"{text}: Optuna choices are strings, numbers or booleans, not {choice!r}.")
    return CategoricalDistribution(values)


def grid_values(key: str, text: str, dist: Any) -> list[Any]:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    if isinstance(dist, IntDistribution) and not dist.log:
        return list(range(dist.low, dist.high + 1, dist.step))
    if isinstance(dist, FloatDistribution) and dist.step is not None:
        return [dist.low + i * dist.step for i in range(round((dist.high - dist.low) / dist.step) + 1)]
    raise ConfigError(f"hydra/sweeper/sampler=grid needs finitely many values per key, and {text} is a continuous "
                      f"interval: give {key} a list, choice(...) or range(...), or use another sampler ({SAMPLERS}).")


def override_value(value: Any) -> str:
    """A plain value (dicts, lists, strings, numbers) in Hydra's override syntax."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{override_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    # A quote is escaped for Hydra's parser; `${` for OmegaConf, which would read an interpolation.
    text = str(value).replace("'", "\\'").replace("${", "\\${")
    return f"'{text}'"


def param_override(key: str, value: Any) -> str:
    """``key=value`` for a sampled value (choices were encoded for overrides when the space was read)."""
    if value is None or isinstance(value, bool):
        return f"{key}={override_value(value)}"
    return f"{key}={value}"


# ---------------------------------------------------------------------- settings
def _class(target: str, setting: str, options: str) -> type:
    import importlib

    module, _, name = str(target).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name) if module else None
    except ImportError as e:
        raise ConfigError(f"{setting}._target_={target} cannot be imported ({e}); choose one of {options}.") from None
    except AttributeError:
        cls = None
    if not isinstance(cls, type):
        raise ConfigError(f"{setting}._target_={target}: {module or 'it'} has no class {name}; choose one of {options}.")
    return cls


def _build(node: Any, setting: str, base: type, options: str, **kwargs: Any) -> Any:
    """Instantiate the ``_target_`` node of ``setting`` (a sampler, a pruner) with ``kwargs``; a ConfigError naming
    the setting when the class is unknown, of the wrong kind, or does not take the node's arguments."""
    import inspect

    from hydra.utils import instantiate

    if not isinstance(node, DictConfig) or "_target_" not in node:
        raise ConfigError(f"{setting} needs a `_target_` (the Optuna class): choose one of {options}.")
    target = node._target_
    cls = _class(target, setting, options)
    if not issubclass(cls, base):
        raise ConfigError(f"{setting}._target_={target} is not an Optuna {base.__name__}; choose one of {options}.")
    arguments = {k: None for k in node if not str(k).startswith("_")}
    try:
        inspect.signature(cls).bind(**arguments, **kwargs)
    except TypeError as e:
        raise ConfigError(f"{setting} ({target}): {e}; see its arguments in Optuna's documentation.") from None
    try:
        return instantiate(node, _partial_=True, _convert_="all")(**kwargs)
    except Exception as e:  # a bad value (e.g. a negative n_startup_trials)
        cause = e.__cause__ or e
        raise ConfigError(f"{setting} ({target}) could not be built: {cause}") from None


def build_sampler(node: Any, space: SearchSpace) -> Any:
    """The sampler of ``hydra.sweeper.sampler``; a GridSampler gets the grid of the search space."""
    from optuna.samplers import BaseSampler, GridSampler

    options = f"hydra/sweeper/sampler={SAMPLERS.replace(', ', '|')}"
    target = node.get("_target_") if isinstance(node, DictConfig) else None
    is_grid = target is not None and issubclass(_class(target, "hydra.sweeper.sampler", options), GridSampler)
    extra = {"search_space": space.grid()} if is_grid else {}
    if target == "optuna.samplers.CmaEsSampler" and importlib.util.find_spec("cmaes") is None:
        raise ConfigError("hydra/sweeper/sampler=cmaes needs the cmaes package (Optuna imports it at the first trial): "
                          "pip install cmaes, or pip install -e '.[sweep]'.")
    return _build(node, "hydra.sweeper.sampler", BaseSampler, options, **extra)


def build_pruner(node: Any) -> Any:
    """The pruner of ``hydra.sweeper.pruner``; null: no pruning (Optuna's NopPruner, not its default MedianPruner)."""
    from optuna.pruners import BasePruner, NopPruner

    if node is None:
        return NopPruner()
    return _build(node, "hydra.sweeper.pruner", BasePruner,
                  "hydra/sweeper/pruner=median|successive_halving|hyperband (or null: no pruning)")


def check_settings(settings: DictConfig | dict[str, Any], arguments: Sequence[str] = ()) -> SearchSpace:
    """Every ``hydra.sweeper`` setting of an sft Optuna search, and its search space (``hydra.sweeper.params`` and
    the sweep ``arguments`` of the command line); a ConfigError naming the setting and the fix."""
    direction = settings.get("direction")
    if direction not in DIRECTIONS:
        raise ConfigError(f"hydra.sweeper.direction={direction!r}: choose maximize or minimize (the presets take it "
                          "from optimized_metric: val/loss is minimized, anything else maximized).")
    for key, low in (("n_trials", 1), ("n_jobs", 1)):
        value = settings.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"hydra.sweeper.{key}={value!r} must be an integer >= {low}.")
    rate = settings.get("max_failure_rate", 1.0)
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1:
        raise ConfigError(f"hydra.sweeper.max_failure_rate={rate!r} must be a fraction in [0, 1] (1: failed trials "
                          "never stop the search; 0: the first failure does).")
    if not settings.get("storage") or not settings.get("study_name"):
        raise ConfigError("hydra.sweeper.storage and hydra.sweeper.study_name are needed: the study lives there, "
                          "which makes the search resumable and lets trials be pruned "
                          "(default: sqlite:///${hydra.sweep.dir}/optuna.db).")
    space = search_space([*params_lines(settings.get("params")), *arguments])
    if not space.distributions:
        raise ConfigError("The search has nothing to search: give hydra.sweeper.params or a sweep on the command line, "
                          "e.g. 'optimizer.lr=tag(log, interval(1e-5, 1e-3))'.")
    build_sampler(settings.get("sampler"), space)
    build_pruner(settings.get("pruner"))
    return space


# ---------------------------------------------------------------------- the sweeper
class OptunaSweeper(Sweeper):
    """Hydra sweeper running an Optuna study; see the module docstring. Hydra builds it from
    ``conf/hydra/sweeper/optuna.yaml`` under the name :data:`PLUGIN_TARGET`."""

    def __init__(self, sampler: Any, direction: str, study_name: str, storage: str, n_trials: int, n_jobs: int = 1,
                 max_failure_rate: float = 1.0, params: Any = None, pruner: Any = None) -> None:
        self.settings = OmegaConf.create({
            "sampler": sampler, "direction": direction, "study_name": study_name, "storage": storage,
            "n_trials": n_trials, "n_jobs": n_jobs, "max_failure_rate": max_failure_rate, "params": params,
            "pruner": pruner})
        self.hydra_context: Any = None
        self.config: DictConfig | None = None
        self.launcher: Any = None

    def setup(self, *, hydra_context: Any, task_function: Any, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        assert self.config is not None and self.launcher is not None
        _Search(self.settings, self.config, self.launcher, arguments).run()


class _Search:
    """One run of the sweeper: open (or resume) the study, finish interrupted trials, run the missing ones."""

    def __init__(self, settings: DictConfig, config: DictConfig, launcher: Any, arguments: list[str]) -> None:
        self.settings, self.config, self.launcher = settings, config, launcher
        self.space = check_settings(settings, arguments)
        self.sweep_dir = Path(str(config.hydra.sweep.dir))
        self.n_jobs, self.max_failure_rate = int(settings.n_jobs), float(settings.max_failure_rate)
        self.study_name = str(settings.study_name)
        database = sqlite_file(settings.storage)
        # Absolute, so a job started elsewhere (submitit, SLURM) reaches the same file to report to its trial.
        self.storage = f"sqlite:///{database.expanduser().resolve()}" if database else str(settings.storage)
        self.database = database

    def run(self) -> None:
        import optuna

        if self.database is not None:
            self.database.parent.mkdir(parents=True, exist_ok=True)  # the sweep folder does not exist yet
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, self.sweep_dir / "multirun.yaml")  # read by sft.summarize, as Hydra's sweepers do
        sampler = build_sampler(self.settings.sampler, self.space)
        self.pruner_node = self.settings.pruner
        direction = str(self.settings.direction)
        self.rdb = optuna.storages.RDBStorage(self.storage)  # kept: trial attributes of trials found on resume
        study = optuna.create_study(study_name=self.study_name, storage=self.rdb, sampler=sampler,
                                    pruner=build_pruner(self.pruner_node), direction=direction, load_if_exists=True)
        if study.direction.name.lower() != direction:
            raise ConfigError(f"The study {self.study_name} in {self.storage} was made to {study.direction.name.lower()} "
                              f"its metric, and this search would {direction} it (optimized_metric changed?). Resume "
                              "it with the same settings, or start a new search in another hydra.sweep.dir.")
        self.study = study
        total = self.settings.n_trials
        if isinstance(sampler, optuna.samplers.GridSampler):  # a grid holds so many trials
            total = min(total, self.space.grid_size())
        trials = study.get_trials(deepcopy=False)
        self.job_idx = max((int(t.user_attrs[JOB_NUM_ATTR]) for t in trials if JOB_NUM_ATTR in t.user_attrs),
                           default=-1) + 1
        if trials:
            self._finish_interrupted(trials)
        finished = sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))
        to_go = max(0, total - finished)
        log.info("Study %s in %s (%s, %s): %d of %d trials to go.", self.study_name, self.storage,
                 type(sampler).__name__, type(study.pruner).__name__, to_go, total)
        while to_go > 0:
            batch = [study.ask(self.space.distributions) for _ in range(min(self.n_jobs, to_go))]
            jobs = []
            for i, trial in enumerate(batch):
                overrides = self._overrides(trial)
                trial.set_user_attr(JOB_NUM_ATTR, self.job_idx + i)
                trial.set_user_attr(OVERRIDES_ATTR, overrides)
                jobs.append((trial.number, overrides))
            self._launch(jobs, self.job_idx)
            self.job_idx += len(batch)
            to_go -= len(batch)
        self._report()

    def _overrides(self, trial: Any) -> list[str]:
        overrides = [*self.space.fixed, *(param_override(k, v) for k, v in trial.params.items())]
        if self.pruner_node is not None:  # the job reports to its trial (sft.sweep_pruning) and stops when pruned
            node = {"storage": self.storage, "study": self.study_name, "number": trial.number,
                    "pruner": OmegaConf.to_container(self.pruner_node, resolve=True)}
            overrides.append(f"+{TRIAL_KEY}={override_value(node)}")
        return overrides

    def _finish_interrupted(self, trials: list[Any]) -> None:
        """Trials an interrupted sweep left RUNNING: run again in their own job folders (resuming from their
        checkpoints), consecutive job numbers together, n_jobs at a time. A trial asked for but never launched
        (the sweep died in between) runs in the next free job folder."""
        from optuna.trial import TrialState

        from sft.sweep_pruning import PRUNED_ATTR

        stale = [t for t in trials if t.state == TrialState.RUNNING]
        log.info("Resuming study %s from %s: %d trials so far, %d left running by the interrupted sweep.",
                 self.study_name, self.storage, len(trials), len(stale))
        study_id = self.rdb.get_study_id_from_name(self.study_name)
        jobs: list[tuple[int, int, list[str]]] = []  # (job number, trial number, overrides)
        for trial in stale:
            if PRUNED_ATTR in trial.user_attrs:  # its job was pruned, the sweep died before recording it
                self._tell(trial.number, TrialState.PRUNED, None)
                continue
            job_num = trial.user_attrs.get(JOB_NUM_ATTR)
            overrides = trial.user_attrs.get(OVERRIDES_ATTR) or self._overrides(trial)
            if job_num is None:
                job_num, self.job_idx = self.job_idx, self.job_idx + 1
                trial_id = self.rdb.get_trial_id_from_study_id_trial_number(study_id, trial.number)
                self.rdb.set_trial_user_attr(trial_id, JOB_NUM_ATTR, job_num)
                self.rdb.set_trial_user_attr(trial_id, OVERRIDES_ATTR, overrides)
            jobs.append((int(job_num), trial.number, list(overrides)))
        group: list[tuple[int, list[str]]] = []
        start = -1
        for job_num, number, overrides in sorted(jobs):
            log.info("Finishing interrupted trial %d in job folder %d: %s", number, job_num, " ".join(overrides))
            if group and (job_num != start + len(group) or len(group) == self.n_jobs):
                self._launch(group, start)
                group = []
            if not group:
                start = job_num
            group.append((number, overrides))
        if group:
            self._launch(group, start)

    def _launch(self, jobs: list[tuple[int, list[str]]], first_job: int) -> None:
        """Run the jobs (trial number, overrides) as job folders first_job, first_job + 1, ... and tell the study
        how each ended."""
        returns = self.launcher.launch([overrides for _, overrides in jobs], initial_job_idx=first_job)
        for (number, _), ret in zip(jobs, returns, strict=True):
            state, value = self._outcome(number, ret)
            self._tell(number, state, value)
        # The share of failed trials over the whole search so far (not per batch: with n_jobs=1 a batch is one trial).
        finished = [t for t in self.study.get_trials(deepcopy=False) if t.state.is_finished()]
        failures = sum(t.state.name == "FAIL" for t in finished)
        if finished and failures / len(finished) > self.max_failure_rate:
            raise ConfigError(f"{failures} of {len(finished)} trials failed, more than hydra.sweeper.max_failure_rate="
                              f"{self.max_failure_rate} allows; see the job folders under {self.sweep_dir} (each "
                              "job's log) for the errors.")

    def _outcome(self, number: int, ret: Any) -> tuple[Any, float | None]:
        from optuna.trial import TrialState

        from sft.sweep_pruning import PRUNED_ATTR

        # Pruned: the job's callback marked its trial before stopping (also where the job's exception arrives
        # wrapped, e.g. from DDP ranks). Checked first: reading a failed job's return value logs it as an error.
        if PRUNED_ATTR in self._trial(number).user_attrs:
            log.info("Trial %d was pruned.", number)
            return TrialState.PRUNED, None
        try:
            value = float(ret.return_value)  # raises the job's exception when it failed
        except Exception as e:
            log.warning("Trial %d failed: %s: %s", number, type(e).__name__, e)
            return TrialState.FAIL, None
        if not math.isfinite(value):
            log.warning("Trial %d failed: its %s is %s.", number, self.config.get("optimized_metric", "metric"), value)
            return TrialState.FAIL, None
        return TrialState.COMPLETE, value

    def _trial(self, number: int) -> Any:
        return next(t for t in self.study.get_trials(deepcopy=False) if t.number == number)

    def _tell(self, number: int, state: Any, value: float | None) -> None:
        try:
            self.study.tell(number, value, state=state)
        except RuntimeError:
            # GridSampler asks the study to stop once its last point is told, which raises outside
            # study.optimize; tell has stored the trial by then (checked here), and the trial count ends the search.
            if not self._trial(number).state.is_finished():
                raise

    def _report(self) -> None:
        from optuna.trial import TrialState

        trials = self.study.get_trials(deepcopy=False)
        counts = {s: sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
        log.info("Study %s holds %d finished trials: %d complete, %d pruned, %d failed.", self.study_name,
                 sum(counts.values()), counts[TrialState.COMPLETE], counts[TrialState.PRUNED], counts[TrialState.FAIL])
        if trials and not counts[TrialState.COMPLETE]:
            raise ConfigError(
                f"No trial of the search completed; see the job folders under {self.sweep_dir} (each job's log) for "
                "the errors. Fix the search space or the settings and run again.")
        if not counts[TrialState.COMPLETE]:
            return
        best = self.study.best_trial
        log.info("Best trial %d (job %s): %s = %s with %s", best.number, best.user_attrs.get(JOB_NUM_ATTR),
                 self.config.get("optimized_metric", "value"), best.value, best.params)
        OmegaConf.save(OmegaConf.create({"name": "optuna", "best_params": best.params, "best_value": best.value,
                                         "best_job": best.user_attrs.get(JOB_NUM_ATTR)}),
                       self.sweep_dir / "optimization_results.yaml")

