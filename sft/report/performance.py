"""How good is the model: accuracy, macro F1, per-class precision/recall/F1, the confusion matrix, and
the accuracy of always predicting the majority class (the bar any real model must clear)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from sft.metrics import accuracy_and_macro_f1, per_class
from sft.report import task_performance
from sft.report.figures import confusion_figure
from sft.report.htmlparts import box, esc, get_in, how, img, is_num, num, side_by_side, table


def _as_labels(values: Any, name: str, n_classes: int) -> torch.Tensor:
    values = torch.as_tensor(values).detach().cpu().long().reshape(-1)
    if len(values) and (values.min() < 0 or values.max() >= n_classes):
        raise ValueError(f"{name} must lie in [0, {n_classes}); got {int(values.min())}..{int(values.max())}")
    return values


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

    scores = per_class(preds, labels, n_classes)
    accuracy, macro_f1 = accuracy_and_macro_f1(preds, labels, n_classes)

    train = _as_labels(train_labels, "train_labels", n_classes) if train_labels is not None else None
    source = "train" if train is not None and len(train) else "test"
    reference = train if source == "train" else labels
    majority = int(torch.bincount(reference, minlength=n_classes).argmax())
    baseline_accuracy, baseline_f1 = accuracy_and_macro_f1(torch.full_like(labels, majority), labels, n_classes)

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
        "confusion_matrix": scores["confusion_matrix"].tolist(),
        "majority_baseline": {"label": label_names[majority], "accuracy": baseline_accuracy,
                              "macro_f1": baseline_f1, "source": source},
        # The training split's class distribution (count and share per class), beside each class's recall.
        "train_distribution": [
            {"label": name, "count": int(count), "share": int(count) / len(train)}
            for name, count in zip(label_names, torch.bincount(train, minlength=n_classes).tolist(), strict=True)
        ] if source == "train" else None,
    }


def section(ctx: Any, settings: Mapping[str, Any] | None = None) -> dict:
    """Performance of the test predictions (argmax of ``ctx.test.logits``; other task types:
    :mod:`sft.report.task_performance`); no settings."""
    if ctx.task.kind != "single_label":
        return task_performance.section(ctx)
    n_classes = len(ctx.label_names)
    if ctx.test.logits.ndim != 2 or ctx.test.logits.shape[1] != n_classes:
        raise ValueError(f"test logits have shape {tuple(ctx.test.logits.shape)} but there are {n_classes} "
                         f"labels {ctx.label_names}")
    return {**performance(ctx.test.preds, ctx.test.labels, ctx.label_names, ctx.train_labels),
            "training": task_performance.training_setup(ctx)}


# -------------------------------------------------------------------------------------------- page

TITLE = "Performance"
HOW = """Results on {n} examples. Precision: of the examples predicted as a class, the share
    that really are; recall: of the examples of a class, the share found; F1 combines both. The majority
    baseline always predicts the most common training class: a useful model beats it clearly, on macro
    F1 especially. In the confusion matrix rows are the true class, columns the prediction; numbers are
    counts, colour is the share of the row (the diagonal is correct). In train / train share: the class's
    examples in the training split: a rare class with low recall is what loss.class_weights or
    data.sampler=balanced address."""


def render(data: dict[str, Any]) -> str:
    if data.get("task") in task_performance.HOWS:
        return task_performance.render(data)
    labels = [str(label) for label in data.get("labels") or []]
    rows = [[esc(c.get("label")), num(c.get("precision")), num(c.get("recall")), num(c.get("f1")),
             num(c.get("support"))] for c in data.get("per_class") or []]
    header = ["class", "precision", "recall", "F1", "support"]
    train = {r.get("label"): r for r in data.get("train_distribution") or []}
    if train:  # the training split's distribution beside each class's recall
        header += ["in train", "train share"]
        for row, c in zip(rows, data.get("per_class") or [], strict=True):
            t = train.get(c.get("label")) or {}
            row += [num(t.get("count")), task_performance.percent(t.get("share"))]
    class_table = table(header, rows)

    baseline = data.get("majority_baseline") or {}
    compare = table(["", "accuracy", "macro F1"], [
        ["model", num(data.get("accuracy")), num(data.get("macro_f1"))],
        [f"majority baseline (always “{esc(baseline.get('label'))}”)", num(baseline.get("accuracy")),
         num(baseline.get("macro_f1"))],
    ])
    acc, base_acc = data.get("accuracy"), baseline.get("accuracy")
    warn = ""
    if is_num(acc) and is_num(base_acc) and acc <= base_acc + 1e-9:
        warn = box("warn", "The model is no more accurate than always predicting the majority class.")

    matrix = data.get("confusion_matrix")
    figure = img(confusion_figure(matrix, labels), "confusion matrix") if matrix else ""
    return (how(HOW, n=num(data.get("n"))) + warn + task_performance.training_note(data)
            + side_by_side(compare + class_table, figure))


def summary(data: dict[str, Any]) -> list[tuple[str, str]]:
    """The page's headline numbers from this section."""
    if data.get("task") in task_performance.HOWS:
        return task_performance.summary(data)
    return [("accuracy", num(data.get("accuracy"))), ("macro F1", num(data.get("macro_f1"))),
            ("majority baseline acc.", num(get_in(data, "majority_baseline", "accuracy")))]
