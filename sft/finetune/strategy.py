"""Freeze strategies and layer-wise learning rates as a pure function of the group list and progress.

The groups of a model are ordered bottom to top (``stem, block0 .. block{n-1}, head``; or
``backbone, head`` for ``none`` / ``backbone`` on models without a block map). A strategy says which
groups are frozen at a given progress (epoch or optimizer step), so a resumed run recomputes exactly
the state an uninterrupted one had, and every optimizer parameter group exists from the first step
(frozen ones simply get no gradients), so schedulers and checkpoints always see the same groups.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from sft.errors import ConfigError
from sft.finetune import FREEZE_STRATEGIES

HEAD = "head"


MOVED_TO_PROBE = {"cache_features": False, "estimator": None, "pooling": "head"}  # -> their defaults
LORA_SETTINGS = ("r", "lora_alpha", "lora_dropout", "target_modules")  # only freeze=lora takes them


@dataclass(frozen=True)
class FreezeSpec:
    """``freeze=`` config: strategy plus its options (see conf/freeze/)."""

    strategy: str = "none"
    k: int | None = None                       # bottom_k: blocks frozen above the stem
    milestones: tuple[int, ...] = field(default_factory=tuple)  # gradual: unfreeze one more group at each
    unit: str = "epoch"                        # gradual milestones count epochs or optimizer steps
    lr_decay: float = 1.0                      # layer-wise: lr * lr_decay ** depth_from_top
    head_lr: float | None = None               # the head's own learning rate (default: optimizer.lr)
    # lora (peft's LoraConfig names): adapter rank, scale alpha / r, dropout on the adapter input, and the
    # modules adapted (None: the attention projections of the architecture, sft.finetune.lora.HF_TARGETS)
    r: int = 8
    lora_alpha: float = 16
    lora_dropout: float = 0.1
    target_modules: tuple[str, ...] | None = None

    @classmethod
    def parse(cls, value: str | Mapping[str, Any] | FreezeSpec | None) -> FreezeSpec:
        if isinstance(value, FreezeSpec):
            return value
        if value is None:
            return cls()
        if isinstance(value, str):
            value = {"strategy": value}
        known = set(cls.__dataclass_fields__)
        # Probe options lived here before: their defaults (in older checkpoints' hyper-parameters) are dropped.
        value = {k: v for k, v in value.items() if MOVED_TO_PROBE.get(k, object()) != v}
        unknown = sorted(set(value) - known)
        moved = [k for k in unknown if k in MOVED_TO_PROBE]
        if moved:
            raise ConfigError(f"freeze.{moved[0]} moved to probe.{moved[0]}: use probe=cached (cached features) or "
                              f"probe=sklearn (a scikit-learn head) with freeze=backbone, e.g. `freeze=backbone "
                              f"probe=sklearn probe.pooling=mean`.")
        if unknown:
            raise ConfigError(f"freeze.{unknown[0]} is not a freeze setting; known: {sorted(known)}.")
        data = dict(value)
        if data.get("target_modules") is not None:
            targets = data["target_modules"]
            data["target_modules"] = (targets,) if isinstance(targets, str) else tuple(str(t) for t in targets)
        if data.get("milestones") is not None:
            data["milestones"] = tuple(data["milestones"])
        else:
            data.pop("milestones", None)
        spec = cls(**data)
        spec.validate()
        return spec

    def validate(self) -> None:
        if self.strategy not in FREEZE_STRATEGIES:
            raise ConfigError(f"freeze.strategy={self.strategy!r}: choose one of {list(FREEZE_STRATEGIES)}.")
        if self.strategy == "bottom_k" and not (isinstance(self.k, int) and self.k >= 0):
            raise ConfigError(f"freeze.k={self.k!r}: freeze=bottom_k needs the number of blocks to freeze above "
                              "the stem, an integer >= 0 (e.g. freeze.k=4).")
        if self.strategy == "gradual":
            ms = self.milestones
            if not ms or not all(isinstance(m, int) and m >= 0 for m in ms) or list(ms) != sorted(set(ms)):
                raise ConfigError(f"freeze.milestones={list(ms)!r}: freeze=gradual needs increasing, distinct "
                                  "non-negative integers (epochs or steps, see freeze.unit), e.g. [1, 2, 3].")
        if self.unit not in ("epoch", "step"):
            raise ConfigError(f"freeze.unit={self.unit!r}: choose epoch or step.")
        if not (isinstance(self.lr_decay, int | float) and 0 < self.lr_decay <= 1):
            raise ConfigError(f"freeze.lr_decay={self.lr_decay!r} must be in (0, 1] (1 = the same lr everywhere).")
        if self.head_lr is not None and not (isinstance(self.head_lr, int | float) and self.head_lr > 0):
            raise ConfigError(f"freeze.head_lr={self.head_lr!r} must be a positive number, or null for optimizer.lr.")
        if self.strategy != "lora":
            defaults = {k: type(self).__dataclass_fields__[k].default for k in LORA_SETTINGS}
            changed = [k for k, default in defaults.items() if getattr(self, k) != default]
            if changed:
                raise ConfigError(f"freeze.{changed[0]} is a LoRA setting: it needs freeze=lora (now "
                                  f"freeze={self.strategy}).")
        else:
            if not (isinstance(self.r, int) and not isinstance(self.r, bool) and self.r >= 1):
                raise ConfigError(f"freeze.r={self.r!r}: the LoRA rank must be an integer >= 1 (e.g. 8).")
            if not (isinstance(self.lora_alpha, int | float) and self.lora_alpha > 0):
                raise ConfigError(f"freeze.lora_alpha={self.lora_alpha!r} must be a positive number (e.g. 16: the "
                                  "adapter's output is scaled by lora_alpha / r).")
            if not (isinstance(self.lora_dropout, int | float) and 0 <= self.lora_dropout < 1):
                raise ConfigError(f"freeze.lora_dropout={self.lora_dropout!r} must be in [0, 1).")
            if self.target_modules is not None and not self.target_modules:
                raise ConfigError("freeze.target_modules=[] adapts nothing: name modules (e.g. [query, value]) or "
                                  "use null for the architecture's attention projections.")
        if self.strategy == "backbone" and self.lr_decay != 1:
            raise ConfigError("freeze.lr_decay has no effect with freeze=backbone (only the head trains): drop it "
                              "or pick freeze=none / bottom_k / gradual.")

    @property
    def needs_block_map(self) -> bool:
        return self.strategy in ("bottom_k", "gradual") or self.lr_decay != 1

    def check_depth(self, depth: int, where: str) -> None:
        if self.strategy == "bottom_k" and self.k > depth:
            raise ConfigError(f"freeze.k={self.k} but {where} has only {depth} blocks above its stem: choose k "
                              f"in 0..{depth} (k={depth} freezes every block, like freeze=backbone).")
        if self.strategy == "gradual" and len(self.milestones) > depth + 1:
            raise ConfigError(f"freeze.milestones has {len(self.milestones)} entries but {where} has only "
                              f"{depth + 1} groups to unfreeze ({depth} blocks and the stem).")

    def frozen(self, groups: Sequence[str], progress: int) -> set[str]:
        """Frozen groups at ``progress`` (epochs or steps done); ``groups`` ordered bottom to top."""
        if self.strategy in ("none", "lora"):  # lora: per parameter (the adapters and the head), not per group
            return set()
        if self.strategy == "backbone":
            return {g for g in groups if g != HEAD}
        if self.strategy == "bottom_k":
            return set(groups[: 1 + self.k])  # the stem, then k blocks
        below_head = [g for g in reversed(groups) if g != HEAD]  # top to bottom
        unfrozen = sum(1 for m in self.milestones if progress >= m)
        return set(below_head[unfrozen:])

    def lr_scales(self, groups: Sequence[str], base_lr: float) -> dict[str, float]:
        """Per group, its lr relative to ``base_lr``: ``lr_decay ** depth_from_top`` (the head at depth 0)."""
        top_down = list(reversed(groups))
        scales = {g: float(self.lr_decay) ** depth for depth, g in enumerate(top_down)}
        if self.head_lr is not None and HEAD in scales:
            scales[HEAD] = float(self.head_lr) / base_lr
        return scales

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["milestones"] = list(self.milestones)
        if self.target_modules is not None:
            data["target_modules"] = list(self.target_modules)
        return data
