"""``python -m sft.run``: the Hydra edge. Composes the config and calls :func:`sft.train.train`.

No torch / lightning import at module level: ``--help`` and ``--cfg job`` stay fast.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from sft.errors import ConfigError, SftError
from sft.rundir import metric_mode


def config_dir() -> str:
    """conf/ ships inside the installed package (sft/conf); in a source checkout it is ../conf."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise RuntimeError(f"sft's config folder was not found next to {here}; reinstall the package.")


CONFIG_DIR = config_dir()

# ${metric_mode:val/loss} -> min (ModelCheckpoint, EarlyStopping); ${metric_direction:val/acc} -> maximize (Optuna).
OmegaConf.register_new_resolver("metric_mode", metric_mode, replace=True)
OmegaConf.register_new_resolver("metric_direction", lambda m: metric_mode(m) + "imize", replace=True)


# Learning rate of a linear probe (freeze=backbone: only a new head trains), per optimizer.
PROBE_LR = {"torch.optim.AdamW": 1e-3, "torch.optim.Adam": 1e-3, "torch.optim.SGD": 1e-2}


def probe_lr(optimizer_target: str) -> float:
    return PROBE_LR.get(str(optimizer_target), 1e-3)


OmegaConf.register_new_resolver("probe_lr", probe_lr, replace=True)


def _gpu_count() -> int:
    from sft.devices import gpu_count

    return gpu_count()


OmegaConf.register_new_resolver("gpu_count", _gpu_count, replace=True)  # hydra/launcher=gpu_pool


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from sft.train import train

    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
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


# Hydra reads `report=false` as a boolean, but report is a config group (its options are names):
# the natural spelling means report=none.
REPORT_OFF = {"report=false", "report=off", "report=no"}


# Hydra plugins sft's presets use, by a word in the option's name or its defaults list -> (module, pip package).
PLUGINS = {
    "optuna": ("hydra_plugins.hydra_optuna_sweeper", "hydra-optuna-sweeper"),
    "submitit": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
    "joblib": ("hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher"),
}
PLUGIN_GROUPS = ("hydra/launcher", "hydra/sweeper", "hparams_search")


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_plugin(argv: list[str]) -> str | None:
    """An error naming the pip package when the command line picks a launcher / sweeper that is not installed
    (Hydra itself would only say the config option does not exist)."""
    for arg in argv:
        group, _, value = arg.lstrip("+").partition("=")
        if group not in PLUGIN_GROUPS:
            continue
        for option in value.split(","):
            preset = Path(CONFIG_DIR, group, f"{option}.yaml")
            text = option + (preset.read_text(encoding="utf-8") if preset.is_file() else "")
            for word, (module, package) in PLUGINS.items():
                if word in text and not _importable(module):
                    return (f"{group}={option} needs the Hydra plugin {package}, which is not installed. Install it "
                            f"with `pip install {package}` (or every sweep plugin: `pip install -e '.[sweep]'` in the sft checkout).")
    return None


def cli() -> None:
    sys.argv = ["report=none" if arg.lower() in REPORT_OFF else arg for arg in sys.argv]
    problem = missing_plugin(sys.argv[1:])
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        raise SystemExit(2)
    main()


if __name__ == "__main__":
    cli()
