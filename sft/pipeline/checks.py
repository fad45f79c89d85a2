"""Early checks of a composed config: clear errors before anything slow happens (before data and models load)."""

from __future__ import annotations

import difflib
import functools
import inspect

from omegaconf import DictConfig, OmegaConf

from sft.config import plain
from sft.errors import ConfigError
from sft.export import export_settings
from sft.finetune import FREEZE_STRATEGIES
from sft.finetune.strategy import FreezeSpec
from sft.report.registry import check_report_settings

RESUME_VALUES = ("auto", True, False)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_config(cfg: DictConfig) -> None:
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(
            f"Required setting(s) not given: {', '.join(missing)}. Set them on the command line, e.g. "
            f"`{missing[0]}=...`."
        )
    lr = OmegaConf.select(cfg, "optimizer.lr")
    if lr is not None and (not _number(lr) or lr <= 0):
        raise ConfigError(f"optimizer.lr={lr!r} must be a positive number (e.g. optimizer.lr=5e-5).")
    for key in ("optimizer.weight_decay", "optimizer.momentum"):
        value = OmegaConf.select(cfg, key)
        if value is not None and (not _number(value) or value < 0):
            raise ConfigError(f"{key}={value!r} must be a number >= 0 (e.g. {key}=0.01).")
    max_epochs = OmegaConf.select(cfg, "trainer.max_epochs")
    if max_epochs is not None and (not isinstance(max_epochs, int) or (max_epochs < 1 and max_epochs != -1)):
        raise ConfigError(f"trainer.max_epochs={max_epochs!r} must be an integer >= 1 (or -1 with trainer.max_steps).")
    check_trainer(cfg.get("trainer"))
    batch_size = OmegaConf.select(cfg, "data.batch_size")
    if batch_size is not None and batch_size != "full" and (not isinstance(batch_size, int) or batch_size < 1):
        raise ConfigError(f"data.batch_size={batch_size!r} must be a positive integer or 'full' (the whole training set).")
    resume = cfg.get("resume", "auto")
    if resume not in RESUME_VALUES:
        raise ConfigError(f"resume={resume!r}: choose auto (continue if last.ckpt exists), true (must) or false.")
    strategy = OmegaConf.select(cfg, "freeze.strategy")
    if strategy not in FREEZE_STRATEGIES:
        raise ConfigError(f"freeze.strategy={strategy!r}: choose one of {list(FREEZE_STRATEGIES)}.")
    FreezeSpec.parse(plain(cfg.freeze))  # k, milestones, lr_decay, head_lr
    export = export_settings(cfg.get("export", True))  # its keys, and the ONNX packages when export.onnx=true
    if export.adapter and strategy != "lora":
        raise ConfigError(f"export.adapter=true saves a LoRA adapter, but freeze={strategy} trains none: use "
                          "freeze=lora, or drop export.adapter.")
    check_probe(cfg.get("probe"), cfg.freeze)
    if cfg.get("report") is not None:
        check_report_settings(plain(cfg.report))
    for key in ("data.train_size", "data.shots_per_class"):
        value = OmegaConf.select(cfg, key)
        if value is not None and (not _number(value) or value <= 0):
            raise ConfigError(f"{key}={value!r} must be a positive number.")


POOLINGS = ("head", "mean")


def check_probe(probe: DictConfig | None, freeze: DictConfig) -> None:
    """``probe.*``: how a frozen backbone's head is trained (over cached features, or a scikit-learn estimator)."""
    if not probe:
        return
    known = {"cache_features", "estimator", "pooling"}
    unknown = sorted(set(probe) - known)
    if unknown:
        raise ConfigError(f"probe.{unknown[0]} is not a probe setting; known: {sorted(known)}.")
    uses_probe = probe.get("cache_features") or probe.get("estimator") is not None
    other = [key for key in ("k", "milestones") if freeze.get(key) is not None]
    if uses_probe and (freeze.get("strategy") != "backbone" or other):
        chosen = freeze.get("strategy") if freeze.get("strategy") != "backbone" else f"backbone with freeze.{other[0]}"
        raise ConfigError(f"probe=cached / probe=sklearn train a head over the whole frozen backbone (freeze=backbone), "
                          f"not freeze={chosen}: drop the freeze option (the probe sets freeze=backbone).")
    estimator = probe.get("estimator")
    if estimator is not None and (not isinstance(estimator, DictConfig) or "_target_" not in estimator):
        raise ConfigError("probe.estimator needs a `_target_` (e.g. sklearn.linear_model.LogisticRegression); "
                          "see conf/probe/sklearn.yaml.")
    pooling = probe.get("pooling", "head")
    if pooling not in POOLINGS:
        raise ConfigError(f"probe.pooling={pooling!r}: choose head (the head's input) or mean.")
    if pooling == "mean" and estimator is None:
        raise ConfigError("probe.pooling=mean only works with a scikit-learn head (probe=sklearn): the "
                          "model's own head takes the features it was built for (probe.pooling=head).")


LIGHTNING_TRAINERS = ("lightning.Trainer", "lightning.pytorch.Trainer", "pytorch_lightning.Trainer")


@functools.cache
def trainer_arguments() -> frozenset[str]:
    from lightning import Trainer

    return frozenset(inspect.signature(Trainer.__init__).parameters) - {"self"}


def check_trainer(trainer: DictConfig | None) -> None:
    """Every trainer.* key is a ``lightning.Trainer`` argument (a typo names the closest ones), and the step /
    validation knobs have values Lightning can use."""
    if not trainer or trainer.get("_target_") not in LIGHTNING_TRAINERS:
        return
    valid = trainer_arguments()
    for key in trainer:
        if str(key).startswith("_") or key in valid:
            continue
        close = difflib.get_close_matches(str(key), valid, n=3)
        hint = f"did you mean {' / '.join('trainer.' + c for c in close)}? " if close else ""
        raise ConfigError(f"trainer.{key} is not an argument of lightning.Trainer: {hint}Its arguments are "
                          f"{', '.join(sorted(valid))}.")

    def bad(key: str, rule: str) -> ConfigError:
        return ConfigError(f"trainer.{key}={trainer.get(key)!r} {rule}")

    max_steps = trainer.get("max_steps", -1)
    if not isinstance(max_steps, int) or isinstance(max_steps, bool) or max_steps < -1 or max_steps == 0:
        raise bad("max_steps", "must be a positive number of optimizer steps, or -1 (no step limit).")
    accumulate = trainer.get("accumulate_grad_batches", 1)
    if not isinstance(accumulate, int) or isinstance(accumulate, bool) or accumulate < 1:
        raise bad("accumulate_grad_batches", "must be an integer >= 1 (batches per optimizer step).")
    clip = trainer.get("gradient_clip_val")
    if clip is not None and (not _number(clip) or clip < 0):
        raise bad("gradient_clip_val", "must be a number >= 0 (e.g. 1.0), or null for no clipping.")
    for key, unit, least in (("val_check_interval", "training batches between validations", 1),
                             ("limit_train_batches", "training batches per epoch", 0)):
        value = trainer.get(key)
        if value is None or (key == "val_check_interval" and isinstance(value, str | DictConfig)):
            continue  # a duration ("00:00:30:00", {minutes: 30}): Lightning checks it
        fraction_ok = isinstance(value, float) and 0 < value <= 1
        count_ok = isinstance(value, int) and value >= least
        if not _number(value) or not (fraction_ok or count_ok):
            raise bad(key, f"must be a whole number of {unit} (e.g. 500), a fraction of an epoch in (0, 1] "
                           "(e.g. 0.25), or null.")
    interval = trainer.get("val_check_interval")
    if isinstance(interval, int) and not isinstance(interval, bool) and interval % accumulate:
        # A validation (and the checkpoint after it) in the middle of an accumulated step: gradients half summed,
        # which no checkpoint holds, so a resume from there would not be exact.
        raise bad("val_check_interval", f"is not a multiple of trainer.accumulate_grad_batches={accumulate}: "
                                        f"validate on step boundaries, e.g. trainer.val_check_interval={accumulate * max(1, interval // accumulate)}.")
