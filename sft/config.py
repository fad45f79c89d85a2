"""The configuration layer: where sft's config folder is, the resolvers it uses, compose and instantiate.

Hydra stays here and in the command-line edges; below the pipeline's ``build`` everything takes plain
Python arguments. Importing this module registers the resolvers (``${metric_mode:...}`` etc.).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from sft.devices import gpu_count
from sft.errors import ConfigError, SftError
from sft.rundir import metric_mode, run_dir_of, saved_data_config


def config_dir() -> str:
    """conf/ ships inside the installed package (sft/conf); in a source checkout it is ../conf."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise RuntimeError(f"sft's config folder was not found next to {here}; reinstall the package.")


CONFIG_DIR = config_dir()

# The learning rate a strategy's new parameters want, per optimizer (optimizer.lr on the command line still wins):
# a linear probe's fresh head alone (freeze=backbone) and LoRA's adapters (freeze=lora). The fine-tuning default
# (5e-5) leaves either far from trained. ${strategy_lr:probe,${optimizer._target_}}
STRATEGY_LR = {"probe": {"torch.optim.AdamW": 1e-3, "torch.optim.Adam": 1e-3, "torch.optim.SGD": 1e-2},
               "lora": {"torch.optim.AdamW": 5e-4, "torch.optim.Adam": 5e-4, "torch.optim.SGD": 1e-2}}


def strategy_lr(strategy: str, optimizer_target: str) -> float:
    table = STRATEGY_LR[str(strategy)]
    return table.get(str(optimizer_target), table["torch.optim.AdamW"])


# ${metric_mode:val/loss} -> min (ModelCheckpoint, EarlyStopping); ${metric_direction:val/acc} -> maximize (Optuna).
OmegaConf.register_new_resolver("metric_mode", metric_mode, replace=True)
OmegaConf.register_new_resolver("metric_direction", lambda m: metric_mode(m) + "imize", replace=True)
OmegaConf.register_new_resolver("strategy_lr", strategy_lr, replace=True)
OmegaConf.register_new_resolver("gpu_count", gpu_count, replace=True)  # hydra/launcher=gpu_pool

# The metric a task is judged by (data.metric, the default optimized_metric): by task type, or by GLUE task
# (GLUE's own: MCC for CoLA, F1 of the positive class for MRPC / QQP, Pearson for STS-B).
TASK_METRICS = {"single_label": "val/acc", "regression": "val/pearson", "multi_label": "val/macro_f1",
                "token": "val/f1", "cola": "val/mcc", "mrpc": "val/f1", "qqp": "val/f1", "stsb": "val/pearson"}
OmegaConf.register_new_resolver("task_metric", lambda task: TASK_METRICS.get(str(task), "val/acc"), replace=True)


def compose_config(overrides: list[str]) -> DictConfig:
    """The full config composed from sft's config folder, as ``sft.run`` would (outside a Hydra run)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("config", overrides=[*overrides, "output_dir=."])


def data_config(model_path: Path, overrides: list[str]) -> DictConfig:
    """The data node for a trained model: the run's saved config (with ``data.<key>=...`` overrides applied), or
    composed from the overrides when they choose a data option (``data=...``) or there is no run folder."""
    run_dir = run_dir_of(model_path)
    if not overrides and run_dir is not None:
        return saved_data_config(run_dir)
    if run_dir is not None and all(override_key(o).startswith("data.") for o in overrides):
        # Settings on top of the run's own data (e.g. data.test=<your labelled file>), not a new data option.
        data = saved_data_config(run_dir)
        for key, value in OmegaConf.from_dotlist([o.lstrip("+") for o in overrides]).data.items():
            OmegaConf.update(data, key, value, force_add=True)
        return data
    if not overrides:
        raise ConfigError(
            f"{model_path} is not inside an sft run folder, so say which data to use, e.g. "
            "`data=sst2 data.path=../shared/data/sst2`."
        )
    return compose_config(overrides).data


def instantiate(node: Any, **kwargs: Any) -> Any:
    """hydra.utils.instantiate, but our own errors (and missing optional packages) surface unwrapped."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as hydra_instantiate

    try:
        return hydra_instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, SftError):
            raise cause from None
        if isinstance(cause, ModuleNotFoundError | ImportError):
            target = node.get("_target_") if isinstance(node, DictConfig) else node
            # Named by its own package: `pip install 'sft[...]'` would fetch PyPI's sft, an unrelated project.
            missing = missing_package(cause)
            raise ConfigError(
                f"{target} needs {missing}, which is not installed ({cause}). Install it with `pip install {missing}`."
            ) from None
        raise


def instantiate_all(group: DictConfig | None) -> list[Any]:
    """Every ``_target_`` node of a group (callbacks, loggers), in order."""
    if not group:
        return []
    return [instantiate(node) for node in group.values() if isinstance(node, DictConfig) and "_target_" in node]


def missing_package(error: ImportError) -> str:
    """The package an ImportError is about: its module name, or the requirement Lightning's loggers name."""
    if getattr(error, "name", None):
        return str(error.name).split(".")[0]
    found = re.search(r"Requirement '([A-Za-z0-9_.\-]+)", str(error))
    return found.group(1) if found else "the missing package"


def override_key(override: str) -> str:
    """``optimizer.lr`` of ``optimizer.lr=1e-5``, ``+x=1``, ``++x=1`` or ``~x``."""
    return override.partition("=")[0].lstrip("+~")


def plain(node: Any) -> Any:
    """A config node as plain Python containers (resolved); anything else unchanged."""
    from omegaconf import ListConfig

    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig | ListConfig) else node
