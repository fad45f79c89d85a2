"""How good is the model: accuracy, macro F1, per-class precision/recall/F1, the confusion matrix, and
the accuracy of always predicting the majority class (the bar any real model must clear)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch


def _as_labels(values: Any, name: str, n_classes: int) -> torch.Tensor:
    values = torch.as_tensor(values).detach().cpu().long().reshape(-1)
    if len(values) and (values.min() < 0 or values.max() >= n_classes):
        raise ValueError(f"{name} must lie in [0, {n_classes}); got {int(values.min())}..{int(values.max())}")
    return values


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """Elementwise numerator / denominator, 0.0 where the denominator is 0 (sklearn's zero_division=0)."""
    numerator, denominator = numerator.double(), denominator.double()
    return torch.where(denominator > 0, numerator / denominator.clamp(min=1), torch.zeros_like(numerator))


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(C, C) int64 counts; row = true class, column = predicted class."""
    return torch.bincount(labels * n_classes + preds, minlength=n_classes * n_classes).view(n_classes, n_classes)


def _scores(matrix: torch.Tensor) -> dict[str, torch.Tensor]:
    true_positives = matrix.diagonal()
    predicted = matrix.sum(dim=0)
    support = matrix.sum(dim=1)
    # F1 = 2TP / (2TP + FP + FN): the harmonic mean of P and R, and 0 (not NaN) when TP = 0.
    return {
        "precision": _ratio(true_positives, predicted),
        "recall": _ratio(true_positives, support),
        "f1": _ratio(2 * true_positives, predicted + support),
        "support": support,
    }


def _accuracy_and_macro_f1(preds: torch.Tensor, labels: torch.Tensor, n_classes: int) -> tuple[float, float]:
    n = len(labels)
    accuracy = float(preds.eq(labels).sum()) / n if n else 0.0
    # Macro F1 averages over every class in the label set, including classes absent from this split.
    return accuracy, float(_scores(confusion_matrix(preds, labels, n_classes))["f1"].mean())


def performance(preds: Any, labels: Any, label_names: Sequence[str], train_labels: Any | None = None) -> dict:
    """The performance section from predicted and true class indices (both (N,)).

    ``majority_baseline`` always predicts the most frequent class of ``train_labels`` (lowest index on a
    tie); without train labels, of ``labels`` itself (an optimistic baseline, flagged by ``"source"``).
    """
    label_names = [str(name) for name in label_names]
    n_classes = len(label_names)
    if n_classes < 1:
        raise ValueError("label_names is empty")
    preds = _as_labels(preds, "preds", n_classes)
    labels = _as_labels(labels, "labels", n_classes)
    if preds.shape != labels.shape:
        raise ValueError(f"{len(preds)} predictions for {len(labels)} labels")

    matrix = confusion_matrix(preds, labels, n_classes)
    scores = _scores(matrix)
    accuracy, macro_f1 = _accuracy_and_macro_f1(preds, labels, n_classes)

    train = _as_labels(train_labels, "train_labels", n_classes) if train_labels is not None else None
    source = "train" if train is not None and len(train) else "test"
    reference = train if source == "train" else labels
    majority = int(torch.bincount(reference, minlength=n_classes).argmax())
    baseline_accuracy, baseline_f1 = _accuracy_and_macro_f1(torch.full_like(labels, majority), labels, n_classes)

    return {
        "n": int(len(labels)),
        "labels": label_names,
        "accuracy": accuracy,
        "macro_f1": macro_f1,
        "per_class": [
            {"label": name, "precision": float(scores["precision"][i]), "recall": float(scores["recall"][i]),
             "f1": float(scores["f1"][i]), "support": int(scores["support"][i])}
            for i, name in enumerate(label_names)
        ],
        "confusion_matrix": matrix.tolist(),
        "majority_baseline": {"label": label_names[majority], "accuracy": baseline_accuracy,
                              "macro_f1": baseline_f1, "source": source},
    }


def section(ctx: Any, settings: Mapping[str, Any] | None = None) -> dict:
    """Performance of the test predictions (argmax of ``ctx.test.logits``); no settings."""
    n_classes = len(ctx.label_names)
    if ctx.test.logits.ndim != 2 or ctx.test.logits.shape[1] != n_classes:
        raise ValueError(f"test logits have shape {tuple(ctx.test.logits.shape)} but there are {n_classes} "
                         f"labels {ctx.label_names}")
    return performance(ctx.test.preds, ctx.test.labels, ctx.label_names, ctx.train_labels)
