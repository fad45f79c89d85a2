"""Early checks of a composed config: clear errors before anything slow happens (no torch here)."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from sft.errors import ConfigError
from sft.finetune import FREEZE_STRATEGIES
from sft.finetune.strategy import FreezeSpec

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
    batch_size = OmegaConf.select(cfg, "data.batch_size")
    if batch_size is not None and batch_size != "full" and (not isinstance(batch_size, int) or batch_size < 1):
        raise ConfigError(f"data.batch_size={batch_size!r} must be a positive integer or 'full' (the whole training set).")
    resume = cfg.get("resume", "auto")
    if resume not in RESUME_VALUES:
        raise ConfigError(f"resume={resume!r}: choose auto (continue if last.ckpt exists), true (must) or false.")
    strategy = OmegaConf.select(cfg, "freeze.strategy")
    if strategy not in FREEZE_STRATEGIES:
        raise ConfigError(f"freeze.strategy={strategy!r}: choose one of {list(FREEZE_STRATEGIES)}.")
    FreezeSpec.parse(OmegaConf.to_container(cfg.freeze, resolve=True))  # k, milestones, lr_decay, head_lr
    if cfg.get("report") is not None:
        from sft.explain import check_report_config  # imports the report sections (and torch)

        check_report_config(OmegaConf.to_container(cfg.report, resolve=True))
    for key in ("data.train_size", "data.shots_per_class"):
        value = OmegaConf.select(cfg, key)
        if value is not None and (not _number(value) or value <= 0):
            raise ConfigError(f"{key}={value!r} must be a positive number.")
