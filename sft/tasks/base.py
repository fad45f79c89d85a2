"""What every task type defines (see :mod:`sft.tasks`)."""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torchmetrics import Metric

if TYPE_CHECKING:
    from sft.tasks.imbalance import LossWeights


@dataclass
class Task:
    """A task type over a label space. Plain data (``to_dict``): saved in checkpoints and exports."""

    label_names: list[str]
    positive_label: str | None = None  # binary single-label tasks scored by the positive class's F1 (GLUE MRPC, QQP)
    pair: bool = False  # inputs are sentence pairs
    threshold: float | str = 0.5  # multi_label: a probability, or "global" / "per_label" (tuned on val)
    extra: dict[str, Any] = field(default_factory=dict)  # reserved for a type's own settings

    kind: ClassVar[str] = ""
    problem_type: ClassVar[str | None] = None  # transformers' config.problem_type
    metric_names: ClassVar[tuple[str, ...]] = ()  # logged as <stage>/<name> on val and test; headline first
    default_metric: ClassVar[str] = "val/acc"
    has_classes: ClassVar[bool] = True  # class weights and the balanced sampler apply (not to regression)

    def __post_init__(self) -> None:
        self.label_names = [str(n) for n in self.label_names]

    # ------------------------------------------------------------------ outputs and targets
    @property
    def num_outputs(self) -> int:
        return len(self.label_names)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.label_names))

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.label_names)}

    def targets(self, values: list[Any]) -> torch.Tensor:
        """The targets of examples (label names, scores, label sets) as the tensor the loss takes."""
        raise NotImplementedError

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, weights: LossWeights | None = None) -> torch.Tensor:
        """The mean loss; ``weights`` (the ``loss`` settings, :mod:`sft.tasks.imbalance`) for the training
        objective only: val / test losses are the plain one."""
        raise NotImplementedError

    def class_counts(self, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
        """(each class's count in ``targets``, the number of labelled targets): what balanced weights and the
        report's training distribution are computed from. -100 (unlabelled) is skipped."""
        labels = targets[targets >= 0].long().reshape(-1)
        return torch.bincount(labels, minlength=self.num_outputs)[: self.num_outputs], len(labels)

    def sample_weights(self, targets: torch.Tensor) -> torch.Tensor:
        """``data.sampler=balanced``: each training example's (unnormalised) draw probability, from its target
        (one class: 1 / the class's count; label sets: see :func:`~sft.tasks.imbalance.rarest_label_draw_weights`)."""
        from sft.tasks.imbalance import class_draw_weights, rarest_label_draw_weights

        if targets.ndim == 2:  # a row of 0/1 per example: a label set, or the tags a sentence holds
            return rarest_label_draw_weights(targets)
        return class_draw_weights(targets, self.num_outputs)

    def weight(self, targets: torch.Tensor) -> int:
        """How many examples a batch's mean loss is over (its weight in the epoch's mean loss)."""
        return len(targets)

    def head_bias(self, targets: torch.Tensor) -> torch.Tensor:
        """The output layer's bias at which an untrained model predicts the training targets' distribution: the
        log class frequencies (add-one smoothed; -100 = unlabelled is skipped). Starting there, the first steps
        learn from the inputs instead of spending the warmup on the base rates."""
        counts = torch.bincount(targets[targets >= 0].long().reshape(-1), minlength=self.num_outputs).double() + 1
        return (counts / counts.sum()).log().float()

    # ------------------------------------------------------------------ metrics
    def metrics(self, stage: str) -> Metric:
        """A torchmetrics metric (synced across DDP ranks) whose ``compute()`` is ``{"<stage>/<name>": value}``."""
        raise NotImplementedError

    def metric_keys(self, stage: str = "val") -> list[str]:
        return [f"{stage}/{name}" for name in (*self.metric_names, "loss")]

    def split_metrics(self, logits: torch.Tensor, targets: torch.Tensor, split: str,
                      thresholds: torch.Tensor | None = None) -> dict[str, float]:
        """The stage metrics of one split's outputs, plus the mean loss as ``<split>/loss``. ``thresholds``: a
        multi-label model's decision thresholds (tuned on val and saved with it); other tasks have none."""
        metric = self.metrics(split)
        if thresholds is not None:  # the model's own: scored as they are, not tuned again
            metric.thresholds, metric.tune = thresholds, None
        metric.update(logits.float(), targets)
        result = {k: float(v) for k, v in metric.compute().items()}
        result[f"{split}/loss"] = float(self.loss(logits.float(), targets)) if len(targets) else 0.0
        return result

    # ------------------------------------------------------------------ predictions
    def prediction_rows(self, logits: torch.Tensor, temperature: float = 1.0,
                        thresholds: torch.Tensor | None = None) -> list[dict[str, Any]]:
        """One dict per example for ``sft.predict`` (label, score or label set, and per-class values)."""
        raise NotImplementedError

    def not_applicable(self, section: str) -> str | None:
        """Why a report section does not apply to this task (shown in its place), or None when it does."""
        return None

    # ------------------------------------------------------------------ plain data
    def to_dict(self) -> dict[str, Any]:
        defaults = {f.name: f.default for f in fields(self) if f.default is not MISSING}
        spec = {k: v for k, v in asdict(self).items() if k not in defaults or v != defaults[k]}
        return {"type": self.kind, **{k: v for k, v in spec.items() if v != {}}}

    def hf_config(self) -> dict[str, Any]:
        """What the transformers config of this task's model says (``id2label``, ``label2id``, ``problem_type``)."""
        config: dict[str, Any] = {"id2label": self.id2label, "label2id": self.label2id}
        if self.problem_type:
            config["problem_type"] = self.problem_type
        return config
