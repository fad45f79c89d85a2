"""``train(cfg)``: the whole fine-tuning job for one composed config. Called by ``sft.run`` and by tests.

Order: check the config -> data (label space) -> model -> trainer -> fit (resuming if asked) ->
validate + test the best checkpoint -> metrics.json -> export/.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from sft.checks import check_config
from sft.errors import ConfigError, SftError

log = logging.getLogger("sft")


def build(node: Any, **kwargs: Any) -> Any:
    """hydra.utils.instantiate, but our own errors (and missing optional packages) surface unwrapped."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, SftError):
            raise cause from None
        if isinstance(cause, ModuleNotFoundError | ImportError):
            target = node.get("_target_") if isinstance(node, DictConfig) else node
            # Named by its own package: `pip install 'sft[...]'` would fetch PyPI's sft, an unrelated project.
            missing = _missing_package(cause)
            raise ConfigError(
                f"{target} needs {missing}, which is not installed ({cause}). Install it with `pip install {missing}`."
            ) from None
        raise


def _missing_package(error: ImportError) -> str:
    """The package an ImportError is about: its module name, or the requirement Lightning's loggers name."""
    import re

    if getattr(error, "name", None):
        return str(error.name).split(".")[0]
    found = re.search(r"Requirement '([A-Za-z0-9_.\-]+)", str(error))
    return found.group(1) if found else "the missing package"


def _checkpoint_number(path: Path) -> int:
    tail = path.stem.rpartition("_")[2]
    return int(tail) if tail.isdigit() else -1


def resume_checkpoint(cfg: DictConfig, output_dir: Path) -> str | None:
    if cfg.get("ckpt_path"):
        path = Path(cfg.ckpt_path).expanduser()
        if not path.is_file():
            raise ConfigError(f"ckpt_path={str(path)!r} does not exist. Give an existing .ckpt file, or drop ckpt_path.")
        return str(path)
    last = output_dir / "checkpoints" / "last.ckpt"
    if cfg.get("resume", "auto") in ("auto", True):
        # Lightning's SLURM auto-requeue saves hpc_ckpt_<n>.ckpt into the run folder when the job is about to be
        # stopped (time limit, preemption): newer than last.ckpt, so it wins.
        hpc = sorted(output_dir.glob("hpc_ckpt_*.ckpt"), key=_checkpoint_number)
        candidates = [p for p in (last, *hpc[-1:]) if p.is_file()]
        if candidates:
            return str(max(candidates, key=lambda p: p.stat().st_mtime))
    if cfg.get("resume") is True:
        raise ConfigError(
            f"resume=true but there is no checkpoint to resume from ({last} does not exist). Point "
            "hydra.run.dir (or output_dir) at the interrupted run's folder, or use resume=auto / false."
        )
    return None


def _instantiate_all(group: DictConfig | None) -> list[Any]:
    if not group:
        return []
    return [build(node) for node in group.values() if isinstance(node, DictConfig) and "_target_" in node]


def _floats(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()}


def train(cfg: DictConfig) -> dict[str, float]:
    """Fine-tune, evaluate and export as ``cfg`` says; returns the flat metrics written to metrics.json."""
    check_config(cfg)
    from sft.devices import claimed_gpu, gpu_count, parallel_sweep_dir, wants_one_gpu

    sweep_dir = parallel_sweep_dir()
    if sweep_dir is not None and wants_one_gpu(cfg.trainer):
        import torch

        visible = torch.cuda.device_count()
        if visible > 1:  # parallel jobs on a multi-GPU machine: one GPU each, not all on GPU 0
            with claimed_gpu(sweep_dir / ".gpu_locks", min(gpu_count(), visible)) as index:
                log.info("This job trains on GPU %d (claimed in %s).", index, sweep_dir / ".gpu_locks")
                with open_dict(cfg):
                    cfg.trainer.devices = [index]
                    cfg.trainer.accelerator = "gpu"
                return _train(cfg)
    return _train(cfg)


def _train(cfg: DictConfig) -> dict[str, float]:
    output_dir = Path(cfg.output_dir).expanduser().resolve()
    ckpt_path = resume_checkpoint(cfg, output_dir)  # before the slow imports: a bad resume fails at once

    import lightning as L
    import torch

    if logging.getLogger().handlers:  # Hydra (or the caller) configured logging: no second console copy
        logging.getLogger("lightning").handlers.clear()

    from hydra.utils import get_class

    from sft.devices import launcher_cpus
    from sft.rundir import write_metrics, write_run_info

    if cfg.trainer.get("max_steps", -1) > 0 and cfg.trainer.get("max_epochs") != -1:
        # As in HF's Trainer, a step budget replaces the epoch budget (else max_epochs=3 could stop it first).
        log.info("trainer.max_steps=%d bounds the run; trainer.max_epochs=%s is not used.", cfg.trainer.max_steps,
                 cfg.trainer.get("max_epochs"))
        with open_dict(cfg):
            cfg.trainer.max_epochs = -1
    threads = cfg.get("torch_threads") or launcher_cpus()  # submitit jobs side by side: their share of the cores
    if threads:
        torch.set_num_threads(int(threads))
    log.info("torch threads: %d", torch.get_num_threads())
    L.seed_everything(cfg.seed, workers=True)
    if cfg.freeze.strategy != "none":  # a frozen backbone is in eval mode on purpose
        warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")

    model_cls = get_class(cfg.model._target_)
    data_target = str(cfg.data.get("_target_", ""))
    if model_cls.modality and f"sft.data.{model_cls.modality}" not in data_target:
        raise ConfigError(
            f"model {cfg.model._target_} takes {model_cls.modality} data but data is {data_target}: pick a "
            f"{model_cls.modality} data option (e.g. {'data=imagefolder' if model_cls.modality == 'image' else 'data=sst2'})."
        )
    datamodule = build(cfg.data, **model_cls.data_inputs(cfg.model), seed=cfg.seed)
    datamodule.prepare_data()  # reads and validates (and tokenizes, cached) before the model loads
    log.info("Data: %s labels %s, train/val/test = %s", type(datamodule.source).__name__, datamodule.label_names,
             "/".join(str(len(getattr(datamodule.splits, s))) for s in ("train", "val", "test")))

    scheduler = build(cfg.scheduler) if cfg.get("scheduler") else None
    model = build(cfg.model, _partial_=True)(
        num_labels=len(datamodule.label_names),
        id2label=datamodule.id2label,
        optimizer=build(cfg.optimizer),
        scheduler=scheduler,
        freeze=OmegaConf.to_container(cfg.freeze, resolve=True),
        monitor=cfg.optimized_metric,
    )

    if cfg.freeze.get("estimator"):  # freeze=sklearn: a scikit-learn head over cached backbone features
        from sft.finetune.sklearn_head import run_sklearn_head

        write_run_info(output_dir, cfg, precision="32-true", accelerator="sklearn")
        return run_sklearn_head(cfg, model, datamodule, output_dir)

    fit_datamodule = datamodule
    if cfg.freeze.get("cache_features"):  # the frozen backbone runs once; the head trains on its features
        from sft.finetune.feature_cache import FeatureDataModule, cached_features

        device = torch.device("cuda" if torch.cuda.is_available() and cfg.trainer.get("accelerator") != "cpu" else "cpu")
        fit_datamodule = FeatureDataModule(cached_features(model, datamodule, device=device), datamodule,
                                           batch_size=cfg.data.batch_size, seed=cfg.seed)

    from lightning.pytorch.callbacks import Checkpoint

    from sft.callbacks import DeferredRequeue, ValidateAtStepLimit, WorkerRanks, ordered_callbacks
    from sft.devices import auto_precision, evaluation_precision

    callbacks = _instantiate_all(cfg.get("callbacks"))
    loggers = _instantiate_all(cfg.get("logger"))
    precision = cfg.trainer.get("precision") or auto_precision(cfg.trainer.get("accelerator"))
    # No checkpoint callback configured (callbacks=none) means none: not Lightning's implicit one.
    checkpointing = {} if any(isinstance(cb, Checkpoint) for cb in callbacks) else {"enable_checkpointing": False}
    strategy = {}
    if cfg.trainer.get("strategy") == "ddp_fork" and torch.cuda.is_initialized():
        # A forked process cannot use CUDA once the parent initialized it: start the ranks fresh instead.
        log.info("CUDA is already initialized in this process: ddp_spawn instead of ddp_fork.")
        strategy = {"strategy": "ddp_spawn"}
    own = [ValidateAtStepLimit(), DeferredRequeue(), WorkerRanks()]
    trainer = build(cfg.trainer, callbacks=ordered_callbacks([*callbacks, *own]), logger=loggers or False,
                    precision=precision, default_root_dir=str(output_dir), **checkpointing, **strategy)
    if trainer.world_size > 1:
        _check_global_batch(cfg.data.batch_size, trainer.world_size)
        log.info("%d processes (%s); global batch %s split across them.", trainer.world_size,
                 type(trainer.strategy).__name__, cfg.data.batch_size)
    if not ckpt_path:  # a fresh start in a used folder: the earlier run's metrics.csv rows do not belong to it
        from sft.loggers import discard_previous_metrics

        discard_previous_metrics(loggers)
    eval_precision = evaluation_precision(trainer.precision)
    if "FSDP" in type(trainer.strategy).__name__:  # the model stays sharded with its bf16 policy: evaluate as trained
        eval_precision = str(trainer.precision)
    if trainer.is_global_zero:
        write_run_info(output_dir, cfg, precision=str(trainer.precision), evaluation_precision=eval_precision,
                       accelerator=type(trainer.accelerator).__name__)
    if ckpt_path:
        log.info("Resuming from %s", ckpt_path)

    finished = _finished_checkpoint(ckpt_path)
    started = time.perf_counter()
    if finished is None:
        trainer.fit(model, datamodule=fit_datamodule, ckpt_path=ckpt_path)
        epochs, steps = _fit_progress(trainer, callbacks)
    else:
        log.info("The run in %s had finished training; evaluating its best checkpoint.", output_dir)
        epochs, steps = _saved_progress(finished)
    fit_seconds = time.perf_counter() - started

    best = _best_checkpoint(callbacks, finished)
    if best:
        log.info("Best checkpoint: %s", best)
    # Named explicitly: with ckpt_path=None under SLURM, Lightning would evaluate its hpc_ckpt instead.
    evaluated = best or _last_checkpoint(callbacks)
    if evaluated:  # the weights that are validated, tested, exported and reported
        model.load_state_dict(torch.load(evaluated, map_location="cpu", weights_only=True)["state_dict"])
    evaluator = trainer
    if eval_precision != str(trainer.precision):  # a fresh Trainer: the fitted one's precision plugin is fixed
        log.info("Final validation and test in %s (trained in %s): the precision the exported model is used in.",
                 eval_precision, trainer.precision)
        evaluator = build(cfg.trainer, callbacks=[WorkerRanks()], logger=loggers or False, precision=eval_precision,
                          default_root_dir=str(output_dir), enable_checkpointing=False, **strategy)
        # It evaluates a checkpoint written with callbacks it does not have, which Lightning warns about.
        warnings.filterwarnings("ignore", message=r".*callbacks used to create the checkpoint need to be provided.*")
    metrics: dict[str, float] = {}
    metrics.update(_floats(evaluator.validate(model, datamodule=fit_datamodule, ckpt_path=evaluated, verbose=False)[0]))
    if cfg.get("test", True):
        metrics.update(_floats(evaluator.test(model, datamodule=fit_datamodule, ckpt_path=evaluated, verbose=False)[0]))
    metrics.update({"fit/seconds": fit_seconds, "fit/epochs": float(epochs), "fit/global_step": float(steps)})
    metrics.update(parameter_counts(model))

    if trainer.is_global_zero:
        if cfg.get("export", True):
            model.export(output_dir / "export", datamodule)
        path = write_metrics(output_dir, metrics)  # its presence marks a finished run
        summary = ", ".join(f"{k}={metrics[k]:.4f}" for k in ("val/acc", "test/acc", "test/f1") if k in metrics)
        log.info("Done: %s. Results in %s (metrics: %s)", summary, output_dir, path.name)
        if cfg.get("test", True):
            metrics = report_and_record(cfg, model, datamodule, output_dir, metrics, trainer.strategy.root_device)
    return metrics


def report_and_record(cfg: DictConfig, model: Any, datamodule: Any, output_dir: Path,
                      metrics: dict[str, float], device: Any = None) -> dict[str, float]:
    """The trust report (after the results are safe on disk); its calibration numbers join metrics.json."""
    from sft.explain import report_after_training
    from sft.rundir import write_metrics

    try:
        report = report_after_training(cfg, model, datamodule, output_dir, device)
    except Exception:
        log.error("The report failed; the model, export and metrics are saved. Retry with "
                  "`python -m sft.explain %s` (or skip it with report=none).", output_dir)
        raise
    cal = (report or {}).get("sections", {}).get("calibration")
    if cal:
        split = cfg.report.get("split", "test")
        metrics = {**metrics, f"{split}/ece": cal["before"]["ece"], f"{split}/nll": cal["before"]["nll"],
                   f"{split}/brier": cal["before"]["brier"]}
        if cal.get("after") and not cal.get("after_in_sample"):  # an in-sample "after" is no evidence
            metrics.update({f"{split}/ece_calibrated": cal["after"]["ece"], "calibration/temperature": cal["temperature"]})
        write_metrics(output_dir, metrics)
    return metrics


def parameter_counts(model: Any) -> dict[str, float]:
    """Total and trainable parameters (trainable at the end of fit: all unfrozen groups for gradual)."""
    return {"params/total": float(sum(p.numel() for p in model.parameters())),
            "params/trainable": float(sum(p.numel() for p in model.parameters() if p.requires_grad))}


def _check_global_batch(batch_size: Any, world_size: int) -> None:
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


def _fit_progress(trainer: Any, callbacks: list[Any]) -> tuple[int, int]:
    """Epochs and optimizer steps of the fit. With forked / spawned DDP ranks the fit ran in the workers and this
    process's trainer never advanced: the counts come from the last checkpoint the workers wrote."""
    from sft.callbacks import LastCheckpoint, epochs_trained, worker_launcher

    if worker_launcher(trainer) is not None:
        for cb in callbacks:
            finished = _finished_checkpoint(str(cb.path)) if isinstance(cb, LastCheckpoint) and cb.path.is_file() else None
            if finished:
                return _saved_progress(finished)
    return epochs_trained(trainer), trainer.global_step


def _saved_progress(checkpoint: dict[str, Any]) -> tuple[int, int]:
    """(epochs trained, optimizer steps) recorded in a checkpoint written at the end of fit."""
    from sft.callbacks import EPOCHS_KEY

    return int(checkpoint.get(EPOCHS_KEY, checkpoint["epoch"])), int(checkpoint["global_step"])


def _finished_checkpoint(ckpt_path: str | None) -> dict[str, Any] | None:
    """The checkpoint's contents when it was written at the end of a completed fit, else None."""
    if not ckpt_path:
        return None
    import torch

    from sft.callbacks import FIT_FINISHED_KEY

    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    return checkpoint if checkpoint.get(FIT_FINISHED_KEY) else None


def _last_checkpoint(callbacks: list[Any]) -> str | None:
    """last.ckpt of the LastCheckpoint callback, if one wrote it (at train end it holds the final weights)."""
    from sft.callbacks import LastCheckpoint

    return next((str(cb.path) for cb in callbacks if isinstance(cb, LastCheckpoint) and cb.path.is_file()), None)


def _best_checkpoint(callbacks: list[Any], finished: dict[str, Any] | None = None) -> str | None:
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


