"""``python -m sft.run``: the Hydra edge. Composes the config and calls :func:`sft.pipeline.train.train`.

No torch / lightning import at module level: ``--help`` and ``--cfg job`` stay fast.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import hydra
from omegaconf import DictConfig, open_dict

from sft.config import CONFIG_DIR, override_key
from sft.errors import ConfigError, SftError


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from sft.pipeline.train import train

    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        with job_resources(cfg) as cfg:
            metrics = train(cfg)
        if multirun and cfg.optimized_metric not in metrics:  # the sweeper would record a bare "None"
            raise ConfigError(f"optimized_metric={cfg.optimized_metric!r} is not a metric of this run; it has "
                              f"{', '.join(sorted(metrics))}.")
    except SftError as e:
        if multirun:
            raise  # the sweeper records the failed job and goes on
        logging.getLogger("sft").error("%s", e)
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    return metrics.get(cfg.optimized_metric)


@contextlib.contextmanager
def job_resources(cfg: DictConfig) -> Iterator[DictConfig]:
    """What the launcher gives this job: a submitit job's share of the cores (``torch_threads``), and one GPU
    of a multi-GPU machine for each of the joblib launcher's parallel jobs (claimed while the job runs)."""
    from sft.devices import claimed_gpu, gpu_count, wants_one_gpu

    cfg = cfg.copy()
    threads = launcher_cpus()
    if threads and not cfg.get("torch_threads"):
        cfg.torch_threads = threads
    sweep_dir = parallel_sweep_dir()
    if sweep_dir is None or not wants_one_gpu(cfg.trainer):
        yield cfg
        return
    import torch

    visible = torch.cuda.device_count()
    if visible <= 1:
        yield cfg
        return
    with claimed_gpu(sweep_dir / ".gpu_locks", min(gpu_count(), visible)) as index:  # not every job on GPU 0
        logging.getLogger("sft").info("This job trains on GPU %d (claimed in %s).", index, sweep_dir / ".gpu_locks")
        with open_dict(cfg):
            cfg.trainer.devices = [index]
            cfg.trainer.accelerator = "gpu"
        yield cfg


def _hydra_config() -> object | None:
    """This job's Hydra runtime config (None outside a Hydra job)."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def launcher_cpus() -> int | None:
    """``hydra.launcher.cpus_per_task`` of a submitit launcher: the cores this job may use (None if unset)."""
    hydra_cfg = _hydra_config()
    if hydra_cfg is None or "submitit" not in str(hydra_cfg.launcher.get("_target_", "")):
        return None
    cpus = hydra_cfg.launcher.get("cpus_per_task")
    return int(cpus) if cpus else None


def parallel_sweep_dir() -> Path | None:
    """The sweep folder when this job is one of several running at once on this machine (joblib launcher)."""
    from hydra.types import RunMode

    hydra_cfg = _hydra_config()
    if hydra_cfg is None or hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    if "joblib" not in str(hydra_cfg.launcher.get("_target_", "")):
        return None
    return Path(hydra_cfg.sweep.dir)


# The configs Hydra plugins bring -> their pip package (Hydra's "Could not find" names the config, not the package).
PLUGIN_CONFIGS = {
    "hydra/launcher/submitit_slurm": "hydra-submitit-launcher",
    "hydra/launcher/submitit_local": "hydra-submitit-launcher",
    "hydra/launcher/joblib": "hydra-joblib-launcher",
}
# sft's own sweepers (their configs ship with sft) -> the module they need and its pip requirement.
SWEEPER_PACKAGES = {"hydra_plugins.sft_optuna_sweeper.OptunaSweeper": ("optuna", "optuna>=4")}


def missing_plugin(argv: list[str]) -> str | None:
    """An error naming the pip package when the command line picks a launcher / sweeper whose Hydra plugin (or, for
    sft's own sweeper, its library) is not installed: the config groups of the command line are composed, and
    Hydra's own "Could not find" error for a plugin's config is turned into the package to install."""
    import importlib.util

    from hydra.errors import MissingConfigException

    groups = [arg for arg in argv if not arg.startswith("-") and "=" in arg and "," not in arg
              and Path(CONFIG_DIR, override_key(arg)).is_dir()]
    chosen = [arg for arg in groups if arg.lstrip("+~").startswith(("hydra/", "hparams_search"))]
    if not chosen:
        return None
    from hydra import compose, initialize_config_dir

    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose("config", overrides=groups, return_hydra_config=True)
        module, requirement = SWEEPER_PACKAGES.get(str(cfg.hydra.sweeper.get("_target_")), (None, None))
        if module and importlib.util.find_spec(module) is None:
            return (f"{' '.join(chosen)} needs {module}, which is not installed. Install it with "
                    f"`pip install '{requirement}'` (or every sweep plugin: `pip install -e '.[sweep]'` in the sft "
                    "checkout).")
    except MissingConfigException as e:
        for config, package in PLUGIN_CONFIGS.items():
            if f"'{config}'" in str(e):
                hydra_says = str(e).splitlines()[0].rstrip(".")
                return (f"{' '.join(chosen)} needs the Hydra plugin {package}, which is not installed (Hydra: "
                        f"{hydra_says}). Install it with `pip install {package}` (or every sweep plugin: "
                        "`pip install -e '.[sweep]'` in the sft checkout).")
    except Exception:  # anything else: Hydra reports it itself when the run composes
        return None
    return None


def boolean_group_choice(argv: list[str]) -> str | None:
    """Hydra reads ``report=false`` as a boolean and fails deep inside its defaults list: name the options."""
    for arg in argv:
        group, _, value = arg.lstrip("+~").partition("=")
        folder = Path(CONFIG_DIR, group)
        if value.lower() in ("true", "false", "yes", "no", "on", "off") and folder.is_dir():
            options = sorted(p.stem for p in folder.glob("*.yaml"))
            return (f"{arg}: {group} is a config group, so choose one of its options ({', '.join(options)})"
                    + (f"; {group}=none turns it off." if "none" in options else "."))
    return None


def cli() -> None:
    problem = boolean_group_choice(sys.argv[1:]) or missing_plugin(sys.argv[1:])
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        raise SystemExit(2)
    main()


if __name__ == "__main__":
    cli()
