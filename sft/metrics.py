"""Classification metrics (torchmetrics): the single-label task's (:mod:`sft.tasks.single_label`), the
scikit-learn head's and the report's performance section build on these, so their numbers agree by construction.
Keys follow ``<split>/<name>`` (``val/acc``, ``test/f1``)."""

from __future__ import annotations

import torch
from torchmetrics import Metric
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)


def classification_metrics(num_labels: int) -> dict[str, Metric]:
    """Accuracy plus macro precision / recall / F1 by name (``acc``, ``precision``, ``recall``, ``f1``)."""
    return {
        "acc": MulticlassAccuracy(num_labels, average="micro"),
        "precision": MulticlassPrecision(num_labels, average="macro"),
        "recall": MulticlassRecall(num_labels, average="macro"),
        "f1": MulticlassF1Score(num_labels, average="macro"),
    }


def per_class(preds: torch.Tensor, labels: torch.Tensor, num_labels: int) -> dict[str, torch.Tensor]:
    """Per-class precision / recall / F1 / support and the confusion matrix (row = true, column = predicted)."""
    preds, labels = preds.long().reshape(-1), labels.long().reshape(-1)
    scores = {name: metric(num_labels, average=None, zero_division=0)(preds, labels)
              for name, metric in (("precision", MulticlassPrecision), ("recall", MulticlassRecall),
                                   ("f1", MulticlassF1Score))}
    matrix = MulticlassConfusionMatrix(num_labels)(preds, labels).long()
    return {**scores, "support": matrix.sum(dim=1), "confusion_matrix": matrix}


def accuracy_and_macro_f1(preds: torch.Tensor, labels: torch.Tensor, num_labels: int) -> tuple[float, float]:
    """Accuracy and macro F1 exactly as ``stage_metrics`` computes ``acc`` and ``f1``."""
    preds, labels = preds.long().reshape(-1), labels.long().reshape(-1)
    if not len(labels):
        return 0.0, 0.0
    accuracy = float(MulticlassAccuracy(num_labels, average="micro")(preds, labels))
    return accuracy, float(MulticlassF1Score(num_labels, average="macro")(preds, labels))
