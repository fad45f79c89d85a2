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
from sft.metrics import split_metrics
from sft.probes.feature_cache import cached_features

log = logging.getLogger(__name__)


def check_estimator(estimator: Any) -> Any:
    for method in ("fit", "predict_proba"):
        if not callable(getattr(estimator, method, None)):
            raise ConfigError(f"probe.estimator {type(estimator).__name__} has no {method}(): use a classifier with "
                              "probabilities (LogisticRegression, SVC(probability=True), RandomForestClassifier...).")
    return estimator


def probabilities(estimator: Any, features: torch.Tensor, num_labels: int) -> torch.Tensor:
    """predict_proba with columns in label-index order (classes absent from training get 0)."""
    proba = torch.as_tensor(estimator.predict_proba(features.numpy()), dtype=torch.float32)
    out = torch.zeros(len(features), num_labels)
    out[:, torch.as_tensor(estimator.classes_, dtype=torch.long)] = proba
    return out


def linear_head_into_model(estimator: Any, model: Any, num_labels: int) -> bool:
    """Copy a linear estimator into the model's final Linear layer when the shapes say it is the same map."""
    coef, intercept = getattr(estimator, "coef_", None), getattr(estimator, "intercept_", None)
    head = getattr(model, "head_entry", None)
    if coef is None or intercept is None or not isinstance(head, torch.nn.Linear) or head.out_features != num_labels:
        return False
    coef, intercept = torch.as_tensor(coef, dtype=torch.float32), torch.as_tensor(intercept, dtype=torch.float32)
    if coef.shape[1] != head.in_features or len(estimator.classes_) != num_labels:
        return False
    if coef.shape[0] == 1 and num_labels == 2:  # binary: logit(class 1) - logit(class 0) = w.x + b
        coef = torch.cat([torch.zeros_like(coef), coef])
        intercept = torch.cat([torch.zeros(1), intercept])
    with torch.no_grad():
        head.weight.copy_(coef)
        head.bias.copy_(intercept)
    return True


def save_estimator(estimator: Any, out: Path, pooling: str, label_names: list[str]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    if hasattr(estimator, "coef_") and hasattr(estimator, "intercept_"):
        path = out / "sklearn_head.json"
        path.write_text(json.dumps({
            "estimator": type(estimator).__name__, "pooling": pooling, "label_names": label_names,
            "classes": [int(c) for c in estimator.classes_], "coef": estimator.coef_.tolist(),
            "intercept": estimator.intercept_.tolist(),
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
    """Fit ``estimator`` on the cached train features of ``model``'s frozen backbone; metrics on ``splits``
    (``<split>/loss`` is the NLL); a linear estimator over the head's input is copied into the model's head."""
    check_estimator(estimator)
    features = cached_features(model, datamodule, pooling=pooling)
    num_labels = len(datamodule.label_names)
    x_train, y_train = features["train"]
    started = time.perf_counter()
    estimator.fit(x_train.numpy(), y_train.numpy())
    fit_seconds = time.perf_counter() - started
    log.info("Fitted %s on %d x %d features in %.1f s", type(estimator).__name__, *x_train.shape, fit_seconds)
    metrics: dict[str, float] = {}
    for split in splits:
        x, y = features[split]
        log_probs = probabilities(estimator, x, num_labels).clamp(min=1e-12).log()
        metrics.update(split_metrics(log_probs, y, split))
    metrics.update({"fit/seconds": fit_seconds, "fit/epochs": 1.0, "fit/global_step": 0.0})
    fitted = [getattr(estimator, a) for a in ("coef_", "intercept_") if hasattr(estimator, a)]
    metrics.update({"params/total": float(sum(p.numel() for p in model.backbone.parameters()) +
                                          sum(int(a.size) for a in fitted)),
                    "params/trainable": float(sum(int(a.size) for a in fitted))})
    in_model = pooling == "head" and linear_head_into_model(estimator, model, num_labels)
    return HeadFit(estimator, metrics, in_model)
