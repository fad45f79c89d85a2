"""A scikit-learn classifier as the head over cached, frozen backbone features (``probe=sklearn``).

The design documents' recipe: encode with the pretrained model, then fit a classical model. It runs in
the same run folder with the same metric keys (``val/acc``, ``test/f1``, ``test/loss`` = NLL) as a
Lightning run. Export: a linear estimator (``coef_`` / ``intercept_``) over the head's own input is
written into the model's final Linear layer, so the export is an ordinary sft export (``sft.predict``,
``transformers.pipeline``); every linear estimator is also saved as ``sklearn_head.json`` (plain numbers,
no pickle). Other estimators are saved with joblib (``sklearn_head.joblib``: pickled code, load it
only from a source you trust).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sft.errors import ConfigError
from sft.probes.feature_cache import cached_features

log = logging.getLogger(__name__)


def check_estimator(estimator: Any, task: Any = None) -> Any:
    """The estimator for the task: a regressor for regression (``predict``), a classifier with probabilities
    otherwise; multi-label wraps a classifier in one-vs-rest (one binary classifier per label)."""
    kind = getattr(task, "kind", "single_label")
    if kind == "regression":
        if type(estimator).__name__ == "LogisticRegression":  # probe=sklearn's default: its regression counterpart
            from sklearn.linear_model import Ridge

            log.info("probe.estimator: a regression task fits Ridge, the linear regressor (LogisticRegression "
                     "classifies); set probe.estimator._target_ to choose another regressor.")
            return Ridge()
        if not callable(getattr(estimator, "predict", None)) or callable(getattr(estimator, "predict_proba", None)):
            raise ConfigError(f"probe.estimator {type(estimator).__name__} is a classifier; a regression task needs "
                              "a regressor: probe.estimator._target_=sklearn.linear_model.Ridge (or SVR, ...).")
        return estimator
    for method in ("fit", "predict_proba"):
        if not callable(getattr(estimator, method, None)):
            raise ConfigError(f"probe.estimator {type(estimator).__name__} has no {method}(): use a classifier with "
                              "probabilities (LogisticRegression, SVC(probability=True), RandomForestClassifier...).")
    if kind == "multi_label":
        from sklearn.multiclass import OneVsRestClassifier

        return estimator if isinstance(estimator, OneVsRestClassifier) else OneVsRestClassifier(estimator)
    return estimator


def probabilities(estimator: Any, features: torch.Tensor, num_labels: int) -> torch.Tensor:
    """predict_proba with columns in label-index order (classes absent from training get 0)."""
    proba = torch.as_tensor(estimator.predict_proba(features.numpy()), dtype=torch.float32)
    out = torch.zeros(len(features), num_labels)
    out[:, torch.as_tensor(estimator.classes_, dtype=torch.long)] = proba
    return out


def head_outputs(estimator: Any, features: torch.Tensor, task: Any) -> torch.Tensor:
    """What the task's loss and metrics take, from the estimator: log-probabilities (single-label: the loss is
    then the NLL), the score (regression), each label's logit (multi-label, from one-vs-rest probabilities)."""
    kind = getattr(task, "kind", "single_label")
    if kind == "regression":
        return torch.as_tensor(estimator.predict(features.numpy()), dtype=torch.float32).reshape(-1, 1)
    if kind == "multi_label":
        p = torch.as_tensor(estimator.predict_proba(features.numpy()), dtype=torch.float32).clamp(1e-7, 1 - 1e-7)
        return torch.log(p / (1 - p))
    return probabilities(estimator, features, task.num_outputs).clamp(min=1e-12).log()


def linear_weights(estimator: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(weight (outputs, features), bias) of a linear estimator, one-vs-rest included; None when not linear."""
    parts = getattr(estimator, "estimators_", None)
    if parts is not None and getattr(estimator, "multilabel_", False):
        weights = [linear_weights(part) for part in parts]
        if any(w is None for w in weights):
            return None
        return torch.cat([w for w, _ in weights]), torch.cat([b for _, b in weights])
    coef, intercept = getattr(estimator, "coef_", None), getattr(estimator, "intercept_", None)
    if coef is None or intercept is None:
        return None
    coef = torch.as_tensor(coef, dtype=torch.float32)
    return coef.reshape(-1, coef.shape[-1]), torch.as_tensor(intercept, dtype=torch.float32).reshape(-1)


def linear_head_into_model(estimator: Any, model: Any, num_labels: int) -> bool:
    """Copy a linear estimator into the model's final Linear layer when the shapes say it is the same map."""
    weights = linear_weights(estimator)
    head = getattr(model, "head_entry", None)
    if weights is None or not isinstance(head, torch.nn.Linear) or head.out_features != num_labels:
        return False
    coef, intercept = weights
    if coef.shape[1] != head.in_features:
        return False
    classes = getattr(estimator, "classes_", None)
    if model.task.kind == "single_label":
        if classes is None or len(classes) != num_labels:
            return False
        if coef.shape[0] == 1 and num_labels == 2:  # binary: logit(class 1) - logit(class 0) = w.x + b
            coef = torch.cat([torch.zeros_like(coef), coef])
            intercept = torch.cat([torch.zeros(1), intercept])
    if coef.shape[0] != num_labels:
        return False
    with torch.no_grad():
        head.weight.copy_(coef)
        head.bias.copy_(intercept)
    return True


def save_estimator(estimator: Any, out: Path, pooling: str, label_names: list[str]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    weights = linear_weights(estimator)
    if weights is not None:  # plain numbers: logits (or the score) = features @ coef.T + intercept
        classes = getattr(estimator, "classes_", None)
        path = out / "sklearn_head.json"
        path.write_text(json.dumps({
            "estimator": type(estimator).__name__, "pooling": pooling, "label_names": label_names,
            **({"classes": [int(c) for c in classes]} if classes is not None and classes.ndim == 1 else {}),
            "coef": weights[0].tolist(), "intercept": weights[1].tolist(),
        }))
        return path
    import joblib

    path = out / "sklearn_head.joblib"
    joblib.dump(estimator, path)
    log.warning("%s is not linear: saved with joblib (pickle) as %s", type(estimator).__name__, path)
    return path


@dataclass
class HeadFit:
    estimator: Any
    metrics: dict[str, float]  # val/* (and test/*) with the same keys as a Lightning run, fit/*, params/*
    in_model: bool  # the fitted linear head was written into the model: it alone reproduces the predictions


def fit_sklearn_head(estimator: Any, model: Any, datamodule: Any, pooling: str = "head",
                     splits: tuple[str, ...] = ("val", "test")) -> HeadFit:
    """Fit ``estimator`` on the cached train features of ``model``'s frozen backbone; the task's metrics on
    ``splits`` (``<split>/loss``: the NLL for single-label); a linear estimator over the head's input is copied
    into the model's head. Multi-label: the decision thresholds are tuned on val as the data says, and kept in
    the model (its export's thresholds.json)."""
    task = model.task
    estimator = check_estimator(estimator, task)
    features = cached_features(model, datamodule, pooling=pooling)
    x_train, y_train = features["train"]
    started = time.perf_counter()
    estimator.fit(x_train.numpy(), y_train.numpy().astype(int) if task.kind == "multi_label" else y_train.numpy())
    fit_seconds = time.perf_counter() - started
    log.info("Fitted %s on %d x %d features in %.1f s", type(estimator).__name__, *x_train.shape, fit_seconds)
    outputs = {split: head_outputs(estimator, features[split][0], task) for split in ("val", *splits)}
    if task.kind == "multi_label":  # thresholds as a Lightning run has them after its last validation
        tuning = task.metrics("val")
        tuning.update(outputs["val"], features["val"][1])
        tuning.compute()
        model.thresholds.copy_(tuning.thresholds)
    metrics: dict[str, float] = {}
    for split in splits:
        metrics.update(model.split_metrics(outputs[split], features[split][1], split))
    metrics.update({"fit/seconds": fit_seconds, "fit/epochs": 1.0, "fit/global_step": 0.0})
    fitted = linear_weights(estimator)
    size = sum(int(t.numel()) for t in fitted) if fitted else 0
    metrics.update({"params/total": float(sum(p.numel() for p in model.backbone.parameters()) + size),
                    "params/trainable": float(size)})
    in_model = pooling == "head" and linear_head_into_model(estimator, model, task.num_outputs)
    return HeadFit(estimator, metrics, in_model)
