"""The performance section of the task types beyond single-label classification (see :mod:`sft.tasks`):
regression (correlations, a mean-predicting baseline, predicted-vs-true and residual plots), multi-label (each
label's precision / recall / F1 / support, its tuned threshold and its calibration error) and token
classification (each entity type's scores and the most frequent kinds of error)."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import torch

from sft.report.figures import regression_figure
from sft.report.htmlparts import box, esc, how, img, is_num, num, side_by_side, table

MAX_POINTS = 1500  # points drawn in the regression plots (a seeded sample of larger splits)
ECE_BINS = 10
EXAMPLES_PER_KIND = 5  # token-classification errors shown per kind


def section(ctx: Any) -> dict[str, Any]:
    kind = ctx.task.kind
    metrics = ctx.model.split_metrics(ctx.test.logits, ctx.test.labels, ctx.split)
    values = {key.split("/", 1)[1]: value for key, value in metrics.items()}
    data = {"task": kind, "n": int(len(ctx.test.labels)), "metrics": values, "metric_names": list(ctx.task.metric_names)}
    data.update({"regression": regression, "multi_label": multi_label, "token": token}[kind](ctx))
    data["training"] = training_setup(ctx)
    return data


# ---------------------------------------------------------------------------------------------- training data
def train_distribution(task: Any, targets: torch.Tensor | None) -> list[dict[str, Any]] | None:
    """Each class's count and share in the training split (multi-label: each label's positives and the share of
    examples that have it; tagging: labelled words per tag); None without training targets or classes."""
    if targets is None or not len(targets) or not task.has_classes:
        return None
    counts, n = task.class_counts(targets)
    return [{"label": name, "count": int(count), "share": int(count) / n if n else None}
            for name, count in zip(task.label_names, counts.tolist(), strict=True)]


def training_setup(ctx: Any) -> dict[str, Any]:
    """How the model was trained against imbalance: the loss settings and the training sampler."""
    criterion = getattr(ctx.model, "criterion", None)
    return {"loss": criterion.spec.describe() if criterion is not None else "",
            "sampler": getattr(ctx.datamodule, "sampler_kind", "random")}


def training_note(data: dict[str, Any]) -> str:
    """One line naming the imbalance settings, when any were used."""
    setup = data.get("training") or {}
    parts = [esc(setup["loss"])] if setup.get("loss") else []
    if setup.get("sampler") and setup["sampler"] != "random":
        parts.append(f"data.sampler={esc(setup['sampler'])}")
    return f"<p>Trained with {'; '.join(parts)}.</p>" if parts else ""


# ---------------------------------------------------------------------------------------------- regression
def regression(ctx: Any) -> dict[str, Any]:
    pred, true = ctx.test.logits.float().reshape(-1), ctx.test.labels.float().reshape(-1)
    train = ctx.train_labels.float() if ctx.train_labels is not None and len(ctx.train_labels) else true
    mean = float(train.mean())
    order = list(range(len(true)))
    random.Random(ctx.seed).shuffle(order)
    shown = sorted(order[:MAX_POINTS])
    residual = pred - true
    return {"points": [[float(pred[i]), float(true[i])] for i in shown],
            "mean_baseline": {"prediction": mean, "mse": float(((true - mean) ** 2).mean()) if len(true) else None},
            "residual": {"mean": float(residual.mean()) if len(true) else None,
                         "std": float(residual.std()) if len(true) > 1 else None}}


# ---------------------------------------------------------------------------------------------- multi-label
def binary_ece(probs: torch.Tensor, targets: torch.Tensor, bins: int = ECE_BINS) -> float:
    """Expected calibration error of one label's probabilities: |mean probability - positive rate| per
    equal-width bin, weighted by the bin's share of examples."""
    if not len(probs):
        return 0.0
    index = (probs * bins).long().clamp(max=bins - 1)
    error = 0.0
    for b in range(bins):
        members = index == b
        if members.any():
            error += float(members.float().mean()) * abs(float(probs[members].mean() - targets[members].float().mean()))
    return error


def multi_label(ctx: Any) -> dict[str, Any]:
    task = ctx.task
    probs, targets = torch.sigmoid(ctx.test.logits.float()), ctx.test.labels.bool()
    thresholds = ctx.model.thresholds.detach().cpu()
    chosen = probs >= thresholds
    rows = []
    train = ctx.train_labels.sum(0).tolist() if ctx.train_labels is not None else [None] * task.num_outputs
    n_train = len(ctx.train_labels) if ctx.train_labels is not None else 0
    for j, name in enumerate(task.label_names):
        tp = int((chosen[:, j] & targets[:, j]).sum())
        predicted, support = int(chosen[:, j].sum()), int(targets[:, j].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append({"label": name, "precision": precision, "recall": recall, "f1": f1, "support": support,
                     "predicted": predicted, "threshold": float(thresholds[j]),
                     "ece": binary_ece(probs[:, j], targets[:, j]),
                     "train_count": None if train[j] is None else int(train[j]),
                     "train_share": None if train[j] is None or not n_train else float(train[j]) / n_train})
    return {"per_label": rows, "threshold_mode": task.threshold,
            "mean_ece": sum(r["ece"] for r in rows) / len(rows) if rows else None,
            "labels_per_example": float(targets.sum(1).float().mean()) if len(targets) else None}


# ---------------------------------------------------------------------------------------------- token
def token(ctx: Any) -> dict[str, Any]:
    from sft.tasks.token import entity_spans, word_tags

    task = ctx.task
    preds, true = word_tags(ctx.test.logits, ctx.test.labels)
    names = task.label_names
    true_tags = [[names[i] for i in row.tolist()] for row in true]
    pred_tags = [[names[i] for i in row.tolist()] for row in preds]
    words = ctx.texts()
    from seqeval.metrics import classification_report

    report = classification_report(true_tags, pred_tags, output_dict=True, zero_division=0)
    per_type = [{"label": name, "precision": s["precision"], "recall": s["recall"], "f1": s["f1-score"],
                 "support": int(s["support"])} for name, s in report.items() if " avg" not in name]
    counts: Counter[str] = Counter()
    examples: dict[str, list[dict[str, Any]]] = {}
    for i, (t, p) in enumerate(zip(true_tags, pred_tags, strict=True)):
        for kind, detail in entity_errors(entity_spans(t), entity_spans(p)):
            counts[kind] += 1
            shown = examples.setdefault(kind, [])
            if len(shown) < EXAMPLES_PER_KIND:
                sentence = list(words[i])
                shown.append({"index": i, **{k: _words(sentence, v) if k.endswith("span") else v
                                             for k, v in detail.items()}})
    train_targets = ctx.datamodule.train_targets() if hasattr(ctx.datamodule, "train_targets") else None
    return {"per_type": per_type, "errors": dict(counts.most_common()), "examples": examples,
            "sentences": len(true_tags), "entities": sum(len(entity_spans(t)) for t in true_tags),
            "train_distribution": train_distribution(task, train_targets)}


def _words(sentence: list[str], span: tuple[str, int, int]) -> str:
    return f"{' '.join(sentence[span[1]:span[2]])} ({span[0]})"


def entity_errors(true: list[tuple[str, int, int]], pred: list[tuple[str, int, int]]) -> list[tuple[str, dict]]:
    """Each true entity not found exactly, and each predicted entity that overlaps no true one, as ``wrong type``
    (same words, another type), ``wrong span`` (overlapping words, not the same), ``missed`` (no overlapping
    prediction) or ``spurious`` (a predicted entity where there is none)."""
    def overlaps(a: tuple[str, int, int], b: tuple[str, int, int]) -> bool:
        return a[1] < b[2] and b[1] < a[2]

    found = set(pred)
    errors: list[tuple[str, dict]] = []
    for entity in true:
        if entity in found:
            continue
        same_words = [p for p in pred if p[1:] == entity[1:]]
        near = [p for p in pred if overlaps(p, entity)]
        if same_words:
            errors.append(("wrong type", {"true_span": entity, "pred_span": same_words[0]}))
        elif near:
            errors.append(("wrong span", {"true_span": entity, "pred_span": near[0]}))
        else:
            errors.append(("missed", {"true_span": entity}))
    for entity in pred:
        if not any(overlaps(entity, t) for t in true):
            errors.append(("spurious", {"pred_span": entity}))
    return errors


# ---------------------------------------------------------------------------------------------- page
HOWS = {
    "regression": """Results on {n} examples. Pearson measures how linearly the predicted scores follow the true
        ones, Spearman how well they rank them; MSE is the mean squared error. The baseline always predicts the
        training mean: a useful model has a clearly lower MSE. Left: each point is an example (the diagonal is
        perfect); right: its residual (predicted - true): a slope means the model pulls scores towards the
        middle.""",
    "multi_label": """Results on {n} examples. A label is predicted when its probability reaches its threshold
        (tuned on the validation split, or fixed). Micro F1 pools every decision, macro F1 averages the labels
        (rare labels count as much as frequent ones); subset accuracy counts examples whose whole label set is
        right; mAP ranks without any threshold. ECE (per label): the gap between the predicted probability and
        how often the label is really there; 0 is perfectly calibrated. In train / train share: the label's
        positives in the training split and the share of training examples that have it: rare labels are where
        loss.pos_weight or focal loss can help.""",
    "token": """Results on {n} sentences. Scores are per entity (seqeval, as CoNLL's conlleval): an entity counts as
        found only with exactly the right words and type. Token accuracy is per word, most of which are outside any
        entity, so it is high even for a weak tagger. The errors: wrong type (right words, another type), wrong span
        (overlapping words), missed (no overlapping prediction), spurious (a predicted entity where there is
        none). The tag table counts the training split's labelled words per tag.""",
}

def render(data: dict[str, Any]) -> str:
    kind = data.get("task")
    metrics = data.get("metrics") or {}
    head = table(["metric", "value"], [[esc(m), num(metrics.get(m))] for m in data.get("metric_names") or ()])
    intro = how(HOWS.get(kind, "{n} examples."), n=num(data.get("n")))
    if kind == "regression":
        baseline = data.get("mean_baseline") or {}
        compare = table(["", "MSE"], [["model", num(metrics.get("mse"))],
                                      [f"always the training mean ({num(baseline.get('prediction'))})",
                                       num(baseline.get("mse"))]])
        warn = ""
        if is_num(metrics.get("mse")) and is_num(baseline.get("mse")) and metrics["mse"] >= baseline["mse"]:
            warn = box("warn", "The model's error is no lower than always predicting the training mean.")
        figure = img(regression_figure(data["points"]), "predicted vs true scores") if data.get("points") else ""
        return intro + warn + side_by_side(head + compare, figure)
    if kind == "multi_label":
        rows = [[esc(r.get("label")), num(r.get("precision")), num(r.get("recall")), num(r.get("f1")),
                 num(r.get("support")), num(r.get("train_count")), num(r.get("threshold"), 2), num(r.get("ece"))]
                for r in data.get("per_label") or []]
        for row, r in zip(rows, data.get("per_label") or [], strict=True):
            row.insert(6, percent(r.get("train_share")))
        labels = table(["label", "precision", "recall", "F1", "support", "in train", "train share", "threshold",
                        "ECE"], rows)
        note = (f"<p>Thresholds: {esc(data.get('threshold_mode'))}; mean ECE over labels "
                f"{num(data.get('mean_ece'))}; {num(data.get('labels_per_example'), 2)} true labels per example.</p>")
        return intro + head + note + training_note(data) + labels
    rows = [[esc(r.get("label")), num(r.get("precision")), num(r.get("recall")), num(r.get("f1")),
             num(r.get("support"))] for r in data.get("per_type") or []]
    types = table(["entity type", "precision", "recall", "F1", "support"], rows)
    errors = table(["error", "count"], [[esc(k), num(v)] for k, v in (data.get("errors") or {}).items()])
    shown = []
    for kind_name, items in (data.get("examples") or {}).items():
        for item in items:
            shown.append([esc(kind_name), num(item.get("index")), esc(item.get("true_span", "")),
                          esc(item.get("pred_span", ""))])
    examples = table(["error", "sentence", "true entity", "predicted entity"], shown) if shown else ""
    distribution = distribution_table(data.get("train_distribution"), "tag (training words)")
    return intro + training_note(data) + side_by_side(head + types, errors + distribution) + examples


def percent(value: Any) -> str:
    return f"{100 * value:.1f}%" if is_num(value) else num(None)


def distribution_table(rows: list[dict[str, Any]] | None, what: str) -> str:
    """The training split's class distribution: count and share per class."""
    if not rows:
        return ""
    return table([what, "in train", "share"], [[esc(r.get("label")), num(r.get("count")), percent(r.get("share"))]
                                              for r in rows])


def summary(data: dict[str, Any]) -> list[tuple[str, str]]:
    metrics = data.get("metrics") or {}
    return [(name.replace("_", " "), num(metrics.get(name))) for name in (data.get("metric_names") or [])[:3]]
