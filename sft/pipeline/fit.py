"""The fitters: each trains a model on a data module and returns a :class:`Fitted` (the model to export
and report, and its metrics) into the one finish step. ``fit_lightning``: the Lightning loop with
checkpoints, resume and the final validate / test of the best checkpoint. ``fit_sklearn``: a
scikit-learn head over cached backbone features."""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning.fabric.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig, open_dict

from sft.callbacks import EPOCHS_KEY, LastCheckpoint, epochs_trained, read_finished, worker_launcher
from sft.checkpoint_io import holds_checkpoint_weights
from sft.devices import auto_precision, evaluation_precision, kept_cpu_heap, limit_onednn_cache
from sft.errors import ConfigError
from sft.loggers import discard_previous_metrics
from sft.pipeline.build import build_estimator, build_evaluator, build_trainer, callbacks_and_loggers
from sft.probes.feature_cache import FeatureDataModule, cached_features
from sft.probes.sklearn_head import fit_sklearn_head, save_estimator
from sft.rundir import write_run_info

log = logging.getLogger("sft")


@dataclass
class Fitted:
    """What a fitter hands to :func:`sft.pipeline.finish.finish`."""

    model: Any  # the weights to export and report (the best checkpoint's)
    datamodule: Any
    metrics: dict[str, float]
    is_global_zero: bool = True  # only rank zero exports, writes metrics.json and reports
    device: Any = None  # where the report runs the model
    exportable: bool = True  # the model alone reproduces the predictions (False: a head outside the model)
    extra_files: list[Any] = field(default_factory=list)  # callables(export_dir) writing more export files


def finished_checkpoint(ckpt_path: str | None) -> dict[str, Any] | None:
    """The checkpoint's contents when it was written at the end of a completed fit, else None."""
    if not ckpt_path:
        return None
    import torch

    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    return read_finished(Path(ckpt_path), checkpoint)


def saved_progress(checkpoint: dict[str, Any]) -> tuple[int, int]:
    """(epochs trained, optimizer steps) recorded in a checkpoint written at the end of fit."""
    return int(checkpoint.get(EPOCHS_KEY, checkpoint["epoch"])), int(checkpoint["global_step"])


def fit_progress(trainer: Any, callbacks: list[Any]) -> tuple[int, int]:
    """Epochs and optimizer steps of the fit. With forked / spawned DDP ranks the fit ran in the workers and this
    process's trainer never advanced: the counts come from the last checkpoint the workers wrote."""
    finished = finished_checkpoint(last_checkpoint(callbacks)) if worker_launcher(trainer) is not None else None
    if finished:
        return saved_progress(finished)
    return epochs_trained(trainer), trainer.global_step


def last_checkpoint(callbacks: list[Any]) -> str | None:
    """last.ckpt of the LastCheckpoint callback, if one wrote it (at train end it holds the final weights)."""
    return next((str(cb.path) for cb in callbacks if isinstance(cb, LastCheckpoint) and cb.path.is_file()), None)


def best_checkpoint(callbacks: list[Any], finished: dict[str, Any] | None = None) -> str | None:
    """The best checkpoint of the first ModelCheckpoint with a monitor (from its state after a skipped fit)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    for cb in callbacks:
        if not (isinstance(cb, ModelCheckpoint) and cb.monitor):
            continue
        if cb.best_model_path:
            return cb.best_model_path
        for state in (finished or {}).get("callbacks", {}).values():
            path = state.get("best_model_path") if isinstance(state, dict) else None
            if state.get("monitor") == cb.monitor and path and Path(path).is_file():
                return path
    return None


def check_global_batch(batch_size: Any, world_size: int) -> None:
    """data.batch_size is the global batch: each of the ranks needs part of it, equal parts for an exact step."""
    if not isinstance(batch_size, int):
        return  # "full": the whole training set
    if batch_size < world_size:
        raise ConfigError(f"data.batch_size={batch_size} is the global batch, split across {world_size} processes; "
                          f"each needs at least one example: use data.batch_size>={world_size} (or fewer devices).")
    if batch_size % world_size:
        log.warning("data.batch_size=%d does not split evenly over %d processes: examples of a step are weighted "
                    "slightly unevenly; a multiple of %d makes a DDP step equal the single-process step.",
                    batch_size, world_size, world_size)


def parameter_counts(model: Any) -> dict[str, float]:
    """Total and trainable parameters (trainable at the end of fit: all unfrozen groups for gradual)."""
    return {"params/total": float(sum(p.numel() for p in model.parameters())),
            "params/trainable": float(sum(p.numel() for p in model.parameters() if p.requires_grad))}


def _floats(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()}


# ---------------------------------------------------------------------- fitters
def fit_lightning(cfg: DictConfig, model: Any, datamodule: Any, output_dir: Path, ckpt_path: str | None) -> Fitted:
    """Fit with Lightning (resuming from ``ckpt_path``), then validate and test the best checkpoint."""
    import torch

    fit_datamodule = _fit_datamodule(cfg, model, datamodule)
    callbacks, loggers = callbacks_and_loggers(cfg)
    precision = cfg.trainer.get("precision")
    if not precision:
        precision = auto_precision(cfg.trainer.get("accelerator"), cpu_bf16_pays=model.cpu_bf16_pays)
        if precision != auto_precision(cfg.trainer.get("accelerator")):
            log.info("fp32 on this bf16-capable CPU: bf16 autocast does not speed up this model's depthwise "
                     "convolutions (measured in bench/README.md); trainer.precision=bf16-mixed overrides.")
    strategy = {}
    if cfg.trainer.get("strategy") == "ddp_fork" and torch.cuda.is_initialized():
        # A forked process cannot use CUDA once the parent initialized it: start the ranks fresh instead.
        log.info("CUDA is already initialized in this process: ddp_spawn instead of ddp_fork.")
        strategy = {"strategy": "ddp_spawn"}
    trainer = build_trainer(cfg.trainer, output_dir, callbacks, loggers, precision, **strategy)
    if trainer.world_size > 1:
        check_global_batch(cfg.data.batch_size, trainer.world_size)
        log.info("%d processes (%s); global batch %s split across them.", trainer.world_size,
                 type(trainer.strategy).__name__, cfg.data.batch_size)
    if not ckpt_path:  # a fresh start in a used folder: the earlier run's metrics.csv rows do not belong to it
        discard_previous_metrics(loggers)
    eval_precision = evaluation_precision(trainer.precision)
    if "FSDP" in type(trainer.strategy).__name__:  # the model stays sharded with its bf16 policy: evaluate as trained
        eval_precision = str(trainer.precision)
    if trainer.is_global_zero:
        write_run_info(output_dir, cfg, precision=str(trainer.precision), evaluation_precision=eval_precision,
                       accelerator=type(trainer.accelerator).__name__)
    if ckpt_path:
        log.info("Resuming from %s", ckpt_path)

    finished = finished_checkpoint(ckpt_path)
    started = time.perf_counter()
    if finished is None:
        on_cpu = trainer.strategy.root_device.type == "cpu"
        with kept_cpu_heap(on_cpu and bool(cfg.get("keep_cpu_heap", True))):
            trainer.fit(model, datamodule=fit_datamodule, ckpt_path=ckpt_path)
            epochs, steps = fit_progress(trainer, callbacks)
            release_training_state(model, trainer)  # before the heap is trimmed: the optimizer's state goes back too
    else:
        log.info("The run in %s had finished training; evaluating its best checkpoint.", output_dir)
        epochs, steps = saved_progress(finished)
    fit_seconds = time.perf_counter() - started

    best = best_checkpoint(callbacks, finished)
    if best:
        log.info("Best checkpoint: %s", best)
    # Named explicitly: with ckpt_path=None under SLURM, Lightning would evaluate its hpc_ckpt instead.
    evaluated = best or last_checkpoint(callbacks)
    # The weights that are validated, tested, exported and reported: loaded by validate(ckpt_path=...), unless the
    # fitted model holds them already (the best checkpoint is the final state): loading them maps as much memory as
    # the weights, the peak of such a fit. Under SLURM always named: Lightning would otherwise pick its hpc_ckpt.
    loaded = evaluated
    if (evaluated and finished is None and trainer.world_size == 1 and not SLURMEnvironment.detect()
            and holds_checkpoint_weights(model, evaluated)):
        log.info("The model holds the weights of %s: evaluating them as they are.", evaluated)
        loaded = None
    metrics = _validate_and_test(cfg, model, fit_datamodule, trainer, loaded, eval_precision, loggers, output_dir,
                                 **strategy)
    metrics.update({"fit/seconds": fit_seconds, "fit/epochs": float(epochs), "fit/global_step": float(steps)})
    metrics.update(parameter_counts(model))
    return Fitted(model, datamodule, metrics, is_global_zero=trainer.is_global_zero,
                  device=trainer.strategy.root_device)


def release_training_state(model: Any, trainer: Any) -> None:
    """Free the last step's gradients and the optimizer's moments (together three times the weights) once fit is
    over: the checkpoints hold them, and the evaluation, report and export that follow do not use them."""
    if hasattr(model, "end_cpu_levers"):  # done at on_fit_end, unless the fit was interrupted
        model.end_cpu_levers()
    model.zero_grad(set_to_none=True)
    for optimizer in trainer.optimizers:
        optimizer.state.clear()


def _fit_datamodule(cfg: DictConfig, model: Any, datamodule: Any) -> Any:
    """What ``trainer.fit`` reads: the data module, or (probe=cached) batches of the frozen backbone's features,
    computed once."""
    if not (cfg.get("probe") or {}).get("cache_features"):
        return datamodule
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() and cfg.trainer.get("accelerator") != "cpu" else "cpu")
    return FeatureDataModule(cached_features(model, datamodule, device=device), datamodule,
                             batch_size=cfg.data.batch_size, seed=cfg.seed)


def _validate_and_test(cfg: DictConfig, model: Any, datamodule: Any, trainer: Any, checkpoint: str | None,
                       precision: str, loggers: list[Any], output_dir: Path, **strategy: Any) -> dict[str, float]:
    """Validate (and test) ``checkpoint`` in ``precision``: the fitted Trainer when it trained in that precision,
    else a fresh one (a Trainer's precision plugin is fixed)."""
    evaluator = trainer
    if precision != str(trainer.precision):
        log.info("Final validation and test in %s (trained in %s): the precision the exported model is used in.",
                 precision, trainer.precision)
        evaluator = build_evaluator(cfg.trainer, output_dir, loggers, precision, **strategy)
        # It evaluates a checkpoint written with callbacks it does not have, which Lightning warns about.
        warnings.filterwarnings("ignore", message=r".*callbacks used to create the checkpoint need to be provided.*")
    metrics = _floats(evaluator.validate(model, datamodule=datamodule, ckpt_path=checkpoint, verbose=False)[0])
    if cfg.get("test", True):
        metrics.update(_floats(evaluator.test(model, datamodule=datamodule, ckpt_path=checkpoint, verbose=False)[0]))
        metrics.update(extra_test_metrics(model, datamodule))
    return metrics


def extra_test_metrics(model: Any, datamodule: Any) -> dict[str, float]:
    """The task's metrics on the data's further labelled splits (MNLI's mismatched dev: ``test_mismatched/acc``)."""
    from sft.inference import split_outputs

    extra = [name for name in getattr(datamodule, "split_names", ()) if name not in ("train", "val", "test")]
    metrics: dict[str, float] = {}
    for split in extra:  # every example on every rank (no DDP split): the same numbers everywhere
        result = split_outputs(model, datamodule, split)
        metrics.update(model.split_metrics(result.logits, result.labels, split))
    return metrics


def fit_sklearn(cfg: DictConfig, model: Any, datamodule: Any, output_dir: Path) -> Fitted:
    """``probe.estimator`` fitted on cached train features, scored on val (and test)."""
    write_run_info(output_dir, cfg, precision="32-true", accelerator="sklearn")
    pooling = cfg.probe.get("pooling", "head")
    head = fit_sklearn_head(build_estimator(cfg.probe.estimator), model, datamodule, pooling=pooling,
                            splits=("val", "test") if cfg.get("test", True) else ("val",))
    save = lambda export_dir: save_estimator(head.estimator, export_dir, pooling, datamodule.label_names)  # noqa: E731
    if not head.in_model:
        log.warning("No model export or report: the %s head reads %s-pooled features the model's own head does not "
                    "take.", type(head.estimator).__name__, pooling)
    return Fitted(model, datamodule, head.metrics, exportable=head.in_model, extra_files=[save])


def setup_process(cfg: DictConfig) -> None:
    """Threads, seed, logging and warnings of this process, before anything is built."""
    import lightning as L
    import torch

    if logging.getLogger().handlers:  # Hydra (or the caller) configured logging: no second console copy
        logging.getLogger("lightning").handlers.clear()
    if cfg.get("torch_threads"):
        torch.set_num_threads(int(cfg.torch_threads))
    log.info("torch threads: %d", torch.get_num_threads())
    if cfg.get("onednn_primitive_cache_capacity") is not None:
        limit_onednn_cache(int(cfg.onednn_primitive_cache_capacity))
    L.seed_everything(cfg.seed, workers=True)
    if cfg.trainer.get("deterministic"):
        # Deterministic mode also fills every new tensor with NaN, a debugging aid for reads of uninitialised memory
        # that does not change results: 13% of an EfficientNet step on CPU (bench/README.md).
        torch.utils.deterministic.fill_uninitialized_memory = False
    if cfg.freeze.strategy != "none":  # a frozen backbone is in eval mode on purpose
        warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")


def step_budget(cfg: DictConfig) -> DictConfig:
    """As in HF's Trainer, a step budget replaces the epoch budget (else max_epochs=3 could stop it first)."""
    if cfg.trainer.get("max_steps", -1) > 0 and cfg.trainer.get("max_epochs") != -1:
        log.info("trainer.max_steps=%d bounds the run; trainer.max_epochs=%s is not used.", cfg.trainer.max_steps,
                 cfg.trainer.get("max_epochs"))
        cfg = cfg.copy()
        with open_dict(cfg):
            cfg.trainer.max_epochs = -1
    return cfg
