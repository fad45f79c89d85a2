"""Config -> objects: the data module, the model, the trainer (with sft's callbacks), the scikit-learn
estimator, the pretrained-model builder for the report. The only code that turns config nodes into
objects; everything it returns takes plain Python arguments."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

from sft.callbacks import DeferredRequeue, ValidateAtStepLimit, WorkerRanks, ordered_callbacks
from sft.checkpoint_io import StreamingCheckpointIO
from sft.config import instantiate, instantiate_all, plain
from sft.errors import ConfigError
from sft.report.registry import report_enabled
from sft.rundir import TRIAL_KEY

log = logging.getLogger("sft")


def model_class_of(model_cfg: DictConfig) -> type:
    from hydra.utils import get_class

    return get_class(model_cfg["_target_"])


def check_modality(cfg: DictConfig) -> None:
    """The model and the data option are for the same kind of input (text / image)."""
    modality = model_class_of(cfg.model).modality
    data_target = str(cfg.data.get("_target_", ""))
    if modality and f"sft.data.{modality}" not in data_target:
        raise ConfigError(
            f"model {cfg.model._target_} takes {modality} data but data is {data_target}: pick a "
            f"{modality} data option (e.g. {'data=imagefolder' if modality == 'image' else 'data=sst2'})."
        )


def data_inputs(model_cfg: DictConfig) -> dict[str, Any]:
    """What the model's data module needs from the model config (a tokenizer, an image preprocessing)."""
    return model_class_of(model_cfg).data_inputs(plain(model_cfg))


def build_datamodule(data_cfg: DictConfig, **kwargs: Any) -> Any:
    """The data module of ``data_cfg``; ``kwargs``: the model's data inputs, a fixed label space, a seed.
    ``data.metric`` is the config's (the default ``optimized_metric``), not the data module's."""
    node = data_cfg.copy()
    with open_dict(node):
        node.pop("metric", None)
    return instantiate(node, **kwargs, _convert_="all")


def check_metric(metric: str, task: Any) -> None:
    """``optimized_metric`` is one the task logs (checkpoint choice and early stopping would fail after the first
    validation, a sweep after the run)."""
    logged = task.metric_keys("val") + task.metric_keys("train")
    if metric.startswith(("val/", "train/")) and metric not in logged:
        raise ConfigError(f"optimized_metric={metric!r} is not logged by a {task.kind} task; it logs "
                          f"{', '.join(task.metric_keys('val'))}. Set optimized_metric=<one of them> (or data.metric).")


def loss_settings(cfg: DictConfig) -> dict[str, Any]:
    """The ``loss`` node without its defaults (no weights, no focal term): what the model is given, checked by
    :class:`sft.tasks.imbalance.LossSpec`."""
    node = plain(cfg.get("loss")) or {}
    return {k: v for k, v in node.items() if v not in (None, 0, 0.0)}


def check_imbalance_settings(cfg: DictConfig, datamodule: Any) -> dict[str, Any]:
    """``data.sampler`` and ``loss`` fit the task and the fitter (before the model loads); returns the loss
    settings."""
    datamodule.check_sampler()
    loss = loss_settings(cfg)
    if (cfg.get("probe") or {}).get("estimator"):
        used = [f"loss.{k}" for k in loss] + (["data.sampler=balanced"] if datamodule.sampler_kind != "random" else [])
        if used:
            raise ConfigError(f"{', '.join(used)}: probe=sklearn fits probe.estimator on the whole training split, "
                              "not sft's loss or batches; weigh the classes in the estimator instead "
                              "(probe.estimator.class_weight=balanced).")
    weights = [f"loss.{k}" for k in ("class_weights", "pos_weight") if k in loss]
    if weights and datamodule.sampler_kind != "random":
        log.warning("data.sampler=balanced with %s corrects the imbalance twice (rare classes drawn more often *and* "
                    "weighted up: about 1 / count^2); use one of the two unless that is what you want.",
                    " and ".join(weights))
    return loss


def build_model(cfg: DictConfig, datamodule: Any) -> Any:
    """The LightningModule for ``cfg.model``, sized to the data module's label space."""
    task = datamodule.task
    loss = check_imbalance_settings(cfg, datamodule)
    return instantiate(cfg.model, _partial_=True)(
        num_labels=task.num_outputs,
        id2label=task.id2label,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        freeze=plain(cfg.freeze),
        monitor=cfg.optimized_metric,
        task=task,
        **({"loss": loss} if loss else {}),
    )


def pretrained_builder(model_cfg: DictConfig, task: Any) -> Callable[[], Any]:
    """A zero-argument callable building the model as it was before fine-tuning (same architecture)."""
    def build_pretrained() -> Any:
        return instantiate(model_cfg, _partial_=True)(num_labels=task.num_outputs, id2label=None, optimizer=None,
                                                      scheduler=None, freeze="none", monitor="val/acc",
                                                      task=task).eval()

    return build_pretrained


def build_estimator(node: Any) -> Any:
    """The scikit-learn classifier of ``probe.estimator``."""
    from hydra.utils import instantiate as hydra_instantiate

    try:
        return hydra_instantiate(node)
    except Exception as e:  # unknown class, bad argument
        raise ConfigError(f"probe.estimator could not be built ({type(e).__name__}: {e}).") from None


def build_trainer(trainer_cfg: DictConfig, output_dir: Path, callbacks: list[Any], loggers: list[Any],
                  precision: str, **overrides: Any) -> Any:
    """``lightning.Trainer`` of ``trainer_cfg`` with sft's own callbacks (ordered so last.ckpt is written
    last) and an explicit precision."""
    from lightning.pytorch.callbacks import Checkpoint

    # No checkpoint callback configured (callbacks=none) means none: not Lightning's implicit one.
    if not any(isinstance(cb, Checkpoint) for cb in callbacks):
        overrides.setdefault("enable_checkpointing", False)
    overrides.update(checkpoint_io(trainer_cfg))
    own = [ValidateAtStepLimit(), DeferredRequeue(), WorkerRanks()]
    return instantiate(trainer_cfg, callbacks=ordered_callbacks([*callbacks, *own]), logger=loggers or False,
                       precision=precision, default_root_dir=str(output_dir), **overrides)


def build_evaluator(trainer_cfg: DictConfig, output_dir: Path, loggers: list[Any], precision: str,
                    **overrides: Any) -> Any:
    """A Trainer for the final validate / test only (no checkpoints, no training callbacks)."""
    return instantiate(trainer_cfg, callbacks=[WorkerRanks()], logger=loggers or False, precision=precision,
                       default_root_dir=str(output_dir), enable_checkpointing=False,
                       **{**checkpoint_io(trainer_cfg), **overrides})


def checkpoint_io(trainer_cfg: DictConfig) -> dict[str, Any]:
    """Checkpoints streamed to disk and memory-mapped back (sft.checkpoint_io), unless the config sets plugins."""
    return {} if trainer_cfg.get("plugins") is not None else {"plugins": [StreamingCheckpointIO()]}


def callbacks_and_loggers(cfg: DictConfig) -> tuple[list[Any], list[Any]]:
    return [*instantiate_all(cfg.get("callbacks")), *trial_callbacks(cfg)], instantiate_all(cfg.get("logger"))


def trial_callbacks(cfg: DictConfig) -> list[Any]:
    """In a trial of an Optuna search with a pruner (the sweeper passes ``optuna_trial``: storage, study, trial
    number, pruner): the callback that reports the validation metric to the study and stops a pruned trial."""
    trial = cfg.get(TRIAL_KEY)
    if not trial:
        return []
    from sft.sweep_pruning import OptunaPruning

    return [OptunaPruning(storage=trial.storage, study_name=trial.study, trial_number=trial.number,
                          pruner=instantiate(trial.pruner), monitor=cfg.optimized_metric, run_dir=cfg.output_dir)]


def report_settings(cfg: DictConfig) -> dict[str, Any] | None:
    """The ``report`` node as plain settings; None when the report is off (``report=none``) or there is no test."""
    report = plain(cfg.get("report"))
    return report if cfg.get("test", True) and report_enabled(report) else None


def run_summary(cfg: DictConfig | dict[str, Any]) -> dict[str, str]:
    """What the report's header names: the model and the data."""
    model, data = cfg.get("model") or {}, cfg.get("data") or {}
    return {"model": str(model.get("name_or_path") or model.get("arch") or model.get("_target_")),
            "data": str(data.get("path") or data.get("_target_"))}

