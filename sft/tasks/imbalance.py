"""Imbalanced data: the weighted / focal training loss (``loss.*``) and the draw weights of the balanced sampler
(``data.sampler=balanced``).

Loss settings (``loss:`` in the config, saved in the checkpoint's hyper-parameters; the resolved weights are
buffers of :class:`Criterion`, so a resumed run and a model rebuilt from a checkpoint hold the same numbers):

- ``class_weights``: ``balanced`` (sklearn's: ``n_samples / (n_classes * count_c)`` over the *training* split's
  targets; a tagger counts labelled words) or one weight per class. Single-label and token classification: the
  cross-entropy's ``weight``. Multi-label: a list is each label's weight (BCE ``weight``); ``balanced`` is
  ``pos_weight=balanced``. Regression: refused.
- ``pos_weight`` (multi-label): ``balanced`` (each label's negatives / positives in training) or a list: BCE's
  ``pos_weight``.
- ``focal_gamma``: focal loss (Lin et al., 2017), ``(1 - p_true) ** gamma`` times the (weighted) cross-entropy;
  the class weights are its alpha. 0 (the default) is the plain loss.

Only the training objective is weighted: ``val/loss`` and ``test/loss`` (and every metric) stay the task's plain
loss, as in scikit-learn (``class_weight`` changes the fit, not ``log_loss``) and Keras (``class_weight`` is for
training only). So runs with and without weighting report comparable losses, and ``sft.eval`` reproduces them
from an export, which carries no loss settings.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from sft.errors import ConfigError

log = logging.getLogger(__name__)

BALANCED = "balanced"
# The (1 - p) ** gamma factor stays finite in its gradient (gamma < 1) when p rounds to 1.
_TINY = 1e-12


@dataclass(frozen=True)
class LossWeights:
    """What a task's ``loss`` weighs with: per-class (per-label) weights, multi-label positive weights, gamma."""

    class_weight: torch.Tensor | None = None
    pos_weight: torch.Tensor | None = None
    gamma: float = 0.0


# ---------------------------------------------------------------------------------------------- losses
def softmax_loss(logits: torch.Tensor, targets: torch.Tensor, weights: LossWeights | None = None,
                 ignore_index: int = -100) -> torch.Tensor:
    """Cross-entropy over (N, C) logits, optionally class-weighted and focal; the mean is over the targets'
    weights, as torch's weighted cross-entropy takes it (so gamma 0 is exactly ``F.cross_entropy``)."""
    logits = logits.float()
    weight = None if weights is None else weights.class_weight
    gamma = 0.0 if weights is None else float(weights.gamma)
    if gamma == 0:
        return F.cross_entropy(logits, targets, weight=None if weight is None else weight.float(),
                               ignore_index=ignore_index)
    keep = targets != ignore_index
    logits, targets = logits[keep], targets[keep].long()
    log_p = logits.log_softmax(-1).gather(1, targets[:, None]).squeeze(1)
    focal = -(-torch.expm1(log_p)).clamp(min=_TINY).pow(gamma) * log_p
    w = torch.ones_like(focal) if weight is None else weight.float()[targets]
    return (w * focal).sum() / w.sum()


def sigmoid_loss(logits: torch.Tensor, targets: torch.Tensor, weights: LossWeights | None = None) -> torch.Tensor:
    """Binary cross-entropy of each (example, label), optionally weighted per label (``class_weight``), with
    positive weights (``pos_weight``) and focal; the mean over every element (gamma 0 is exactly
    ``F.binary_cross_entropy_with_logits``)."""
    logits, targets = logits.float(), targets.float()
    weight = None if weights is None else weights.class_weight
    pos_weight = None if weights is None else weights.pos_weight
    gamma = 0.0 if weights is None else float(weights.gamma)
    if gamma == 0:
        return F.binary_cross_entropy_with_logits(logits, targets, weight=None if weight is None else weight.float(),
                                                  pos_weight=None if pos_weight is None else pos_weight.float())
    log_p, log_q = F.logsigmoid(logits), F.logsigmoid(-logits)  # log p(positive), log p(negative)
    positive = -targets * log_p * log_q.exp().clamp(min=_TINY).pow(gamma)
    if pos_weight is not None:
        positive = positive * pos_weight.float()
    loss = positive - (1 - targets) * log_q * log_p.exp().clamp(min=_TINY).pow(gamma)
    if weight is not None:
        loss = loss * weight.float()
    return loss.mean()


# ---------------------------------------------------------------------------------------------- weights from counts
def balanced_class_weights(counts: torch.Tensor) -> torch.Tensor:
    """sklearn's ``class_weight="balanced"``: ``n_samples / (n_classes * count_c)``. A class absent from the
    training targets weighs 0 (no target has it, so it changes nothing) and is not counted in ``n_classes``, so
    the weights still average 1 over the training targets."""
    counts = counts.double()
    present = counts > 0
    weights = torch.zeros_like(counts)
    weights[present] = counts.sum() / (int(present.sum()) * counts[present])
    return weights.float()


def balanced_pos_weights(positives: torch.Tensor, n: int) -> torch.Tensor:
    """Each label's negatives / positives (BCE's ``pos_weight`` for balanced labels); 1 for a label without
    positives (nothing to weigh)."""
    positives = positives.double()
    return torch.where(positives > 0, (n - positives) / positives.clamp(min=1), torch.ones_like(positives)).float()


def class_draw_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``data.sampler=balanced``, one class per example: each example's draw weight is 1 / its class's count, so
    every class present is drawn equally often."""
    labels = labels.long().reshape(-1)
    counts = torch.bincount(labels, minlength=num_classes).double()
    return (1.0 / counts[labels]).float()


def rarest_label_draw_weights(presence: torch.Tensor) -> torch.Tensor:
    """``data.sampler=balanced`` for label sets ((N, L) 0/1: a multi-label example's labels, the tags in a
    sentence): each example's weight is 1 / the number of training examples that carry its *rarest* label, so an
    example of a rare label is drawn as often as one of a frequent label; examples with no label form their own
    group. With one label per example this is :func:`class_draw_weights`."""
    presence = presence.bool()
    counts = presence.sum(0).double()
    inverse = torch.where(counts > 0, 1.0 / counts.clamp(min=1), torch.zeros_like(counts))
    weights = (presence.double() * inverse).max(1).values
    empty = ~presence.any(1)
    if empty.any():
        weights[empty] = 1.0 / float(empty.sum())
    return weights.float()


# ---------------------------------------------------------------------------------------------- settings
def _weights_setting(value: Any, name: str, task: Any, what: str) -> str | list[float] | None:
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
        return None
    if isinstance(value, str):
        if value.lower() == BALANCED:
            return BALANCED
        raise ConfigError(f"{name}={value!r}: use {BALANCED} (from the training split's counts) or a list of "
                          f"{task.num_outputs} weights, one per {what} ({', '.join(task.label_names)}).")
    if isinstance(value, int | float) or not isinstance(value, Sequence):
        raise ConfigError(f"{name}={value!r}: use {BALANCED} or a list of {task.num_outputs} weights, one per "
                          f"{what} ({', '.join(task.label_names)}).")
    values = list(value)
    if len(values) != task.num_outputs:
        raise ConfigError(f"{name} has {len(values)} weight(s) but the task has {task.num_outputs} "
                          f"{'labels' if what == 'label' else 'classes'}: {', '.join(task.label_names)} (in this "
                          "order).")
    try:
        floats = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={values!r}: every weight must be a number.") from None
    if any(not math.isfinite(v) or v < 0 for v in floats) or not any(floats):
        raise ConfigError(f"{name}={values!r}: weights must be finite, >= 0 and not all 0.")
    return floats


@dataclass(frozen=True)
class LossSpec:
    """The ``loss`` settings, checked against the task (plain data: ``to_dict`` goes into hyper-parameters)."""

    class_weights: str | list[float] | None = None
    pos_weight: str | list[float] | None = None
    focal_gamma: float = 0.0

    @classmethod
    def parse(cls, spec: Mapping[str, Any] | LossSpec | None, task: Any) -> LossSpec:
        if isinstance(spec, LossSpec):
            spec = spec.to_dict()
        spec = dict(spec or {})
        unknown = sorted(set(spec) - {"class_weights", "pos_weight", "focal_gamma"})
        if unknown:
            raise ConfigError(f"loss.{unknown[0]} is not a loss setting: the settings are loss.class_weights, "
                              "loss.pos_weight and loss.focal_gamma.")
        kind = task.kind
        what = "label" if kind == "multi_label" else "class"
        class_weights = _weights_setting(spec.get("class_weights"), "loss.class_weights", task, what)
        pos_weight = _weights_setting(spec.get("pos_weight"), "loss.pos_weight", task, "label")
        gamma_value = spec.get("focal_gamma") or 0.0
        try:
            gamma = float(gamma_value)
        except (TypeError, ValueError):
            gamma = -1.0
        if not (math.isfinite(gamma) and gamma >= 0):
            raise ConfigError(f"loss.focal_gamma={gamma_value!r} must be a number >= 0 (0: no focal term; 2 is "
                              "the usual focal loss).")
        if kind == "regression":
            for name, value in (("class_weights", class_weights), ("pos_weight", pos_weight)):
                if value is not None:
                    raise ConfigError(f"loss.{name}={spec[name]!r}: class weights do not apply to regression (a "
                                      "score has no classes); remove the setting.")
            if gamma:
                raise ConfigError(f"loss.focal_gamma={gamma_value!r}: focal loss weighs examples by the probability "
                                  "of their class and does not apply to regression; set loss.focal_gamma=0.")
        if pos_weight is not None and kind != "multi_label":
            raise ConfigError(f"loss.pos_weight={spec['pos_weight']!r} weighs each label's positive examples of a "
                              f"multi-label task; this task is {kind}: use loss.class_weights instead.")
        if kind == "multi_label" and class_weights == BALANCED:  # balanced labels: weigh up each label's positives
            if pos_weight is not None:
                raise ConfigError("loss.class_weights=balanced on a multi-label task means loss.pos_weight=balanced "
                                  "(each label's negatives / positives); set one of the two, not both.")
            class_weights, pos_weight = None, BALANCED
        return cls(class_weights, pos_weight, gamma)

    @property
    def active(self) -> bool:
        return self.class_weights is not None or self.pos_weight is not None or self.focal_gamma > 0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.class_weights is not None:
            out["class_weights"] = self.class_weights
        if self.pos_weight is not None:
            out["pos_weight"] = self.pos_weight
        if self.focal_gamma:
            out["focal_gamma"] = self.focal_gamma
        return out

    def describe(self) -> str:
        """One line for logs and the report (``""`` when the loss is the task's plain one)."""
        parts = [f"{name}={value if isinstance(value, str) else 'list'}" for name, value in
                 (("class_weights", self.class_weights), ("pos_weight", self.pos_weight)) if value is not None]
        if self.focal_gamma:
            parts.append(f"focal_gamma={self.focal_gamma:g}")
        return ", ".join(f"loss.{p}" for p in parts)


class Criterion(torch.nn.Module):
    """The training loss of a task under ``loss`` settings. Its weights are buffers (``class_weight``,
    ``pos_weight``): ``balanced`` ones are computed by :meth:`fit` from the training targets, then saved in every
    checkpoint; a checkpoint's weights are taken as they are, also into a model built without the settings."""

    BUFFERS = ("class_weight", "pos_weight")

    def __init__(self, task: Any, spec: Mapping[str, Any] | LossSpec | None = None):
        super().__init__()
        self.task = task
        self.spec = LossSpec.parse(spec, task)
        self.fitted = True  # nothing to compute from the data
        for name, value in (("class_weight", self.spec.class_weights), ("pos_weight", self.spec.pos_weight)):
            if value is None:
                continue
            if value == BALANCED:
                self.fitted = False
                value = [1.0] * task.num_outputs  # until fit()
            self.register_buffer(name, torch.tensor(value, dtype=torch.float32))

    def weights(self) -> LossWeights | None:
        class_weight, pos_weight = (getattr(self, name, None) for name in self.BUFFERS)
        if class_weight is None and pos_weight is None and not self.spec.focal_gamma:
            return None
        return LossWeights(class_weight, pos_weight, self.spec.focal_gamma)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.task.loss(logits, targets, self.weights())

    def prior_shift(self) -> torch.Tensor | None:
        """What the class weights add to the head's starting bias (``model.head_bias=prior``), so that it starts
        where a constant prediction minimises the *weighted* loss: ``log w_c`` for cross-entropy (the optimum is
        ``log(count_c * w_c)``), ``log pos_weight_l`` for binary cross-entropy (odds times ``pos_weight``; a label's
        own weight scales its loss and moves no optimum). None when nothing shifts; the focal term is left out
        (it has no closed form and keeps the weighted optimum's ordering)."""
        weight = getattr(self, "pos_weight" if self.task.kind == "multi_label" else "class_weight", None)
        if weight is None:
            return None
        return torch.where(weight > 0, weight.clamp(min=_TINY).log(), torch.zeros_like(weight))

    def fit(self, targets: torch.Tensor | None) -> str:
        """Compute the ``balanced`` weights from the training split's targets; returns the table to log."""
        if self.fitted:
            return self.table(targets)
        if targets is None or not len(targets):
            raise ConfigError(f"{self.spec.describe()}: balanced weights are computed from the training split's "
                              "targets, which this data module does not give; set the weights as a list instead.")
        counts, n = self.task.class_counts(targets)
        if self.spec.class_weights == BALANCED:
            self.class_weight.copy_(balanced_class_weights(counts))
        if self.spec.pos_weight == BALANCED:
            self.pos_weight.copy_(balanced_pos_weights(counts, n))
        absent = [name for name, c in zip(self.task.label_names, counts.tolist(), strict=True) if c == 0]
        if absent:
            log.warning("%s: %s not in the training split (weight %s).", self.spec.describe(), ", ".join(absent),
                        "1" if self.spec.pos_weight == BALANCED else "0")
        self.fitted = True
        return self.table(targets)

    def table(self, targets: torch.Tensor | None) -> str:
        """class / count / share / weight per class (multi-label: positives and pos_weight)."""
        counts, n = self.task.class_counts(targets) if targets is not None and len(targets) else (None, 0)
        columns = [("count" if self.task.kind != "multi_label" else "positives", None if counts is None else counts)]
        columns += [({"class_weight": "weight"}.get(name, name), getattr(self, name)) for name in self.BUFFERS
                    if getattr(self, name, None) is not None]
        width = max(len(name) for name in [*self.task.label_names, "class"]) + 2
        lines = [f"{'class':<{width}}" + "".join(f"{head:>12}" for head, _ in columns) + f"{'share':>9}"]
        for i, name in enumerate(self.task.label_names):
            cells = "".join(f"{'-' if values is None else format(float(values[i]), '.4g'):>12}" for _, values in columns)
            share = "-" if counts is None or not n else f"{float(counts[i]) / n:.1%}"
            lines.append(f"{name:<{width}}{cells}{share:>9}")
        return "\n".join(lines)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, local_metadata: dict, strict: bool,
                              missing_keys: list[str], unexpected_keys: list[str], error_msgs: list[str]) -> None:
        # A checkpoint's weights are what its run trained with: taken whatever this module was built with (a model
        # rebuilt from a checkpoint's hyper-parameters, an older checkpoint without weights keeps its own).
        for name in self.BUFFERS:
            value = state_dict.get(prefix + name)
            if value is not None:
                current = getattr(self, name, None)
                self.register_buffer(name, value.detach().clone().to(current.device if current is not None else "cpu"))
                self.fitted = True
        if strict:
            unexpected_keys.extend(k for k in state_dict if k.startswith(prefix) and k[len(prefix):] not in self.BUFFERS
                                   and "." not in k[len(prefix):])
