"""One label out of N: cross-entropy; accuracy, precision / recall / F1 and Matthews correlation."""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (
    BinaryF1Score,
    BinaryPrecision,
    BinaryRecall,
    MulticlassMatthewsCorrCoef,
)

from sft.metrics import classification_metrics
from sft.tasks.base import Task
from sft.tasks.imbalance import LossWeights, softmax_loss


class SingleLabel(Task):
    """``positive_label`` (binary tasks): precision / recall / F1 are that class's (GLUE's F1 for MRPC and QQP);
    otherwise they are macro averages over the classes."""

    kind = "single_label"
    problem_type = "single_label_classification"
    metric_names = ("acc", "f1", "mcc", "precision", "recall")
    default_metric = "val/acc"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.positive_label is not None:
            from sft.errors import ConfigError

            self.positive_label = str(self.positive_label)
            if len(self.label_names) != 2 or self.positive_label not in self.label_names:
                raise ConfigError(f"positive_label={self.positive_label!r} needs two classes, one of them it "
                                  f"(classes: {self.label_names}).")

    def targets(self, values: list[Any]) -> torch.Tensor:
        ids = self.label2id
        return torch.tensor([ids[str(v)] for v in values], dtype=torch.long)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, weights: LossWeights | None = None) -> torch.Tensor:
        return softmax_loss(logits, targets, weights)

    def metrics(self, stage: str) -> Metric:
        metrics = classification_metrics(self.num_outputs)
        if stage != "train":  # every training step pays for its metrics: MCC on val and test only
            metrics["mcc"] = MulticlassMatthewsCorrCoef(self.num_outputs)
            if self.positive_label is not None:
                index = self.label_names.index(self.positive_label)
                metrics.update({name: _of_class(metric, index) for name, metric in
                                (("precision", BinaryPrecision), ("recall", BinaryRecall), ("f1", BinaryF1Score))})
        return MetricCollection(metrics, prefix=f"{stage}/")

    def prediction_rows(self, logits: torch.Tensor, temperature: float = 1.0,
                        thresholds: torch.Tensor | None = None) -> list[dict[str, Any]]:
        probs = (logits.float() / temperature).softmax(-1)
        rows = []
        for p in probs.tolist():
            best = max(range(len(p)), key=p.__getitem__)
            rows.append({"label": self.label_names[best], "confidence": p[best],
                         **{f"prob_{name}": value for name, value in zip(self.label_names, p, strict=True)}})
        return rows


def _of_class(binary: type[Metric], index: int) -> Metric:
    """``binary`` metric of class ``index`` (predicted = argmax) over multiclass logits: GLUE's F1 of MRPC / QQP
    is the positive class's, under the same key as the macro F1 of other tasks."""

    class OfClass(binary):
        def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
            super().update((logits.argmax(-1) == index).long(), (targets == index).long())

    return OfClass()
