"""Check a sweep before any job starts: every swept key exists, every value passes sft's config checks,
Optuna ranges are valid.

Without this, a typo in a swept key (``optimizer.lrr=1e-5,3e-5``) fails inside every job, and under the Optuna
sweeper (failed trials allowed) the search runs to the end recording nothing but failures. Each swept value is
composed once, with the sweep's fixed overrides and the first value of every other swept key, exactly as a
job would be, and passed through :func:`sft.pipeline.checks.check_config`.

:class:`SweepChecks` runs it as a Hydra callback at the start of every multirun (registered in
``conf/config.yaml``). When the config asks for sft's Optuna sweeper (:mod:`sft.sweeper`) it also checks the
sweeper's settings (direction, sampler, pruner, the search space as Optuna reads it) and registers the sweeper in
Hydra's plugin registry, which Hydra reads right after this callback.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from sft.errors import ConfigError, SftError
from sft.pipeline.checks import check_config

log = logging.getLogger(__name__)


def _parse(overrides: list[str]) -> list[Any]:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        return OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as e:
        raise ConfigError(f"Cannot read the sweep: {e}") from None


def sweep_values(override: Any, where: str) -> list[str]:
    """The values to check for one swept key: each choice / range value; both ends of an interval, after
    checking the interval itself. Globs over config groups are left to Hydra (they only match what exists)."""
    from hydra.core.override_parser.types import IntervalSweep

    key = override.get_key_element()
    text = override.input_line or key
    if override.is_interval_sweep():
        value: IntervalSweep = override.value()
        start, end = value.start, value.end
        if start is None or end is None or not start < end:
            raise ConfigError(f"Sweep over {key} ({where}): {text} is not a valid range; "
                              "interval(low, high) needs low < high, e.g. interval(1e-5, 1e-4).")
        if "log" in value.tags and start <= 0:
            raise ConfigError(f"Sweep over {key} ({where}): {text} is log-scaled, so its low "
                              "end must be > 0, e.g. tag(log, interval(1e-5, 1e-3)).")
        if isinstance(start, int) and isinstance(end, int):
            return [str(start), str(end)]
        return [repr(float(start)), repr(float(end))]
    if override.is_choice_sweep() and override.value_type.name == "GLOB_CHOICE_SWEEP":
        return []
    values = list(override.sweep_string_iterator())
    if not values:
        raise ConfigError(f"Sweep over {key} ({where}): {text} gives no values to try "
                          "(e.g. range(5, 1) is empty; use range(1, 5)).")
    return values


def swept(config: DictConfig) -> tuple[list[str], list[tuple[Any, str]]]:
    """The sweep's fixed task overrides, and each swept override with where it came from."""
    task = _parse(list(OmegaConf.to_container(config.hydra.overrides.task, resolve=False)))
    fixed = [o.input_line for o in task if not o.is_sweep_override()]
    sweeps = [(o, "command line") for o in task if o.is_sweep_override()]
    params = OmegaConf.select(config, "hydra.sweeper.params")  # Optuna's search space (and other sweepers')
    if isinstance(params, DictConfig):
        given = {o.get_key_element() for o in task}  # the command line wins, as in the Optuna plugin
        lines = [f"{key}={value}" for key, value in OmegaConf.to_container(params, resolve=False).items()]
        for o in _parse(lines):
            if o.get_key_element() in given:
                continue
            if o.is_sweep_override():
                sweeps.append((o, "hydra.sweeper.params"))
            else:
                fixed.append(o.input_line)
    return fixed, sweeps


# Strategies whose extra ranks Lightning starts by re-running the command line (its subprocess launcher): under
# a multirun every rank would run the whole sweep again (lightning-hydra-template #393, hydra #2070).
RELAUNCHING_STRATEGIES = ("ddp", "ddp_find_unused_parameters_true", "fsdp", "FSDPStrategy", "DDPStrategy")


def check_ranks_in_sweep(cfg: DictConfig, sweep_config: DictConfig) -> None:
    """Refuse a multi-device strategy that re-executes the command line, unless SLURM starts the ranks."""
    strategy = OmegaConf.select(cfg, "trainer.strategy")
    name = strategy.get("_target_", "") if isinstance(strategy, DictConfig) else str(strategy or "")
    devices = OmegaConf.select(cfg, "trainer.devices")
    if not any(name == s or name.endswith("." + s) for s in RELAUNCHING_STRATEGIES) or devices in (1, "1", [0]):
        return
    if "slurm" in str(OmegaConf.select(sweep_config, "hydra.launcher._target_") or "").lower():
        return  # SLURM tasks are the ranks; Lightning starts none
    raise ConfigError(
        f"trainer.strategy={name} starts its ranks by re-running the command line, which inside a sweep runs the "
        "whole sweep again in every rank. Use trainer=ddp (ddp_fork) for multi-device jobs in a sweep, or launch "
        "the sweep with hydra/launcher=slurm and tasks_per_node=<devices> so SLURM starts the ranks.")


def check_sweep(config: DictConfig) -> int:
    """Raise :class:`ConfigError` for a sweep with a missing key, a bad value or an invalid range; returns
    how many job configs were composed and checked."""
    check_ranks_in_sweep(config, config)
    fixed, sweeps = swept(config)
    checked = _check_values(config, fixed, sweeps) if sweeps else 0
    if is_optuna_search(config):  # after the values, whose messages name the value that is wrong
        from sft.sweeper import check_settings

        check_settings(config.hydra.sweeper, list(OmegaConf.to_container(config.hydra.overrides.task, resolve=False)))
    return checked


def is_optuna_search(config: DictConfig) -> bool:
    from sft.sweeper import PLUGIN_TARGET

    return OmegaConf.select(config, "hydra.sweeper._target_") == PLUGIN_TARGET


def _check_values(config: DictConfig, fixed: list[str], sweeps: list[tuple[Any, str]]) -> int:
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    candidates = [(o, where, sweep_values(o, where)) for o, where in sweeps]
    firsts = {o.get_key_element(): values[0] for o, _, values in candidates if values}
    loader = GlobalHydra.instance().config_loader()
    checked = 0
    for override, where, values in candidates:
        key = override.get_key_element()
        for value in values:
            others = [f"{k}={v}" for k, v in firsts.items() if k != key]
            job = [*fixed, *others, f"{key}={value}"]
            try:
                cfg = loader.load_sweep_config(config, job)
            except HydraException as e:
                raise ConfigError(f"Sweep over {key} ({where}): {key}={value} cannot be applied. {e}") from None
            with open_dict(cfg):  # no job runs, so there is no job folder for ${hydra:runtime.output_dir}
                cfg.pop("hydra", None)
                cfg.output_dir = str(config.hydra.sweep.dir)
            try:
                check_config(cfg)
                check_ranks_in_sweep(cfg, config)
            except ConfigError as e:
                raise ConfigError(f"Sweep over {key} ({where}), value {value}: {e}") from None
            checked += 1
    return checked


class SweepChecks(Callback):
    """Hydra callback: :func:`check_sweep` before the first job; a bad sweep exits with code 2 and one message."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            if is_optuna_search(config):
                from sft.sweeper import register

                register()
            checked = check_sweep(config)
        except SftError as e:
            log.error("%s", e)
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None  # Hydra turns a callback's exceptions into warnings
        except Exception as e:  # a check that cannot run must not block the sweep: each job still checks itself
            log.warning("The sweep could not be checked before launch (%s: %s); each job checks its own config.",
                        type(e).__name__, e)
            return
        if checked:
            log.info("Sweep checked before launch: %d job configs composed and validated.", checked)
