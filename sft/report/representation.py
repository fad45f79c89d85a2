"""Representation: did fine-tuning separate the classes? Test-split features of the pretrained and the
fine-tuned model, each projected to 2-D with PCA, plus two numbers on the full-dimensional features:
the silhouette score of the true labels (cosine) and leave-one-out k-NN accuracy (cosine, k = 5).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from sft.errors import ConfigError
from sft.inference import outputs
from sft.report.figures import scatter_figure
from sft.report.htmlparts import box, esc, how, img, num, table

log = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {"method": "pca", "max_points": 500}
METHODS = ("pca",)
CHUNK = 32  # examples per forward pass (images: what is held in memory at once)
KNN_K = 5


def check_settings(settings: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(settings) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"report.representation.{unknown[0]} is not a representation setting; "
                          f"known: {sorted(DEFAULTS)}.")
    out = {**DEFAULTS, **settings}
    if out["method"] not in METHODS:
        raise ConfigError(f"report.representation.method={out['method']!r} is not supported: choose one of "
                          f"{list(METHODS)}.")
    max_points = out["max_points"]
    if not isinstance(max_points, int) or isinstance(max_points, bool) or max_points < 3:
        raise ConfigError(f"report.representation.max_points={max_points!r} must be an integer >= 3 (test examples "
                          "projected; more are subsampled with the run's seed).")
    return out


def sample_indices(n: int, max_points: int, seed: int) -> list[int]:
    """All of ``range(n)``, or ``max_points`` of them drawn with ``seed``, in split order."""
    if n <= max_points:
        return list(range(n))
    return sorted(np.random.default_rng(seed).choice(n, size=max_points, replace=False).tolist())


def extract_features(ctx: Any, model: Any, indices: list[int], split: str = "test") -> np.ndarray:
    """(len(indices), D) float64 features: text = mean-pooled last hidden state, images = the head's
    input, flattened."""
    texts = ctx.texts(split) if model.modality == "text" else None

    def batches() -> Any:
        for start in range(0, len(indices), CHUNK):
            chunk = indices[start : start + CHUNK]
            yield ctx.encode([texts[i] for i in chunk]) if texts is not None else {"pixel_values": ctx.pixels(chunk, split)}

    forward = model.mean_features if texts is not None else model.features
    features = outputs(model, batches(), lambda batch: forward(batch).flatten(1), device=ctx.device).logits
    return features.numpy().astype(np.float64)


def knn_accuracy(features: np.ndarray, labels: np.ndarray, k: int = KNN_K) -> float:
    """Leave-one-out k-NN accuracy with cosine distance: each point is classified by the majority label of
    its ``k`` nearest other points (ties: the lower label index)."""
    from sklearn.metrics import pairwise_distances

    n = len(labels)
    k = min(k, n - 1)
    distances = pairwise_distances(features, metric="cosine")
    np.fill_diagonal(distances, np.inf)
    neighbours = np.argsort(distances, axis=1, kind="stable")[:, :k]
    votes = np.zeros((n, int(labels.max()) + 1))
    np.add.at(votes, (np.repeat(np.arange(n), k), labels[neighbours].ravel()), 1)
    return float((votes.argmax(1) == labels).mean())


def silhouette(features: np.ndarray, labels: np.ndarray) -> float | None:
    """Silhouette of the true labels (cosine); None when it is undefined (one class, or one point per class)."""
    from sklearn.metrics import silhouette_score

    n_classes = len(np.unique(labels))
    if not 2 <= n_classes <= len(labels) - 1:
        return None
    return float(silhouette_score(features, labels, metric="cosine"))


def project(features: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """REP: 2-D PCA points (fit on these features alone), explained variance ratios, silhouette, k-NN."""
    from sklearn.decomposition import PCA

    n_components = min(2, *features.shape)
    pca = PCA(n_components=n_components, svd_solver="full")
    points = pca.fit_transform(features)
    ratios = pca.explained_variance_ratio_.tolist()
    if n_components < 2:  # one feature (or one point): the second axis is empty
        points = np.pad(points, ((0, 0), (0, 2 - n_components)))
        ratios += [0.0] * (2 - n_components)
    return {"points": [[float(f"{x:.6g}"), float(f"{y:.6g}")] for x, y in points],
            "explained_variance": [float(r) for r in ratios],
            "silhouette": silhouette(features, labels),
            "knn_accuracy": knn_accuracy(features, labels),
            "dim": int(features.shape[1])}


def _pretrained_model(ctx: Any) -> tuple[Any, str]:
    """(the model before fine-tuning on ctx's device, or None; a sentence on why it is missing)."""
    if ctx.pretrained is None:
        return None, "No pretrained model to compare with (the report was given no way to rebuild it)."
    try:
        model = ctx.pretrained()
    except Exception as e:  # noqa: BLE001 - the comparison is optional; the fine-tuned half still stands
        log.warning("Representation: the pretrained model could not be built: %s", e)
        return None, f"The pretrained model could not be built ({type(e).__name__}: {e})."
    if model is None:
        return None, "No pretrained model to compare with."
    return model.to(ctx.device).eval(), ""


def section(ctx: Any, settings: dict[str, Any]) -> dict[str, Any]:
    """``{"method", "labels", "point_labels", "pretrained": REP|null, "fine_tuned": REP, "note"}``."""
    cfg = check_settings(dict(settings or {}))
    split = ctx.split
    labels_all = ctx.test.labels.numpy()
    if len(labels_all) < 3:
        raise NotImplementedError(f"representation needs at least 3 examples in the {split} split "
                                  f"(it has {len(labels_all)}).")
    indices = sample_indices(len(labels_all), cfg["max_points"], ctx.seed)
    labels = labels_all[indices]
    if ctx.modality == "text":
        notes = ["Text features are the mean of the last hidden states over real tokens, for both models: the "
                 "pooler and head of a model that was not fine-tuned are random, so mean pooling is the honest "
                 "comparison."]
    else:
        notes = ["Image features are the input of the classification head (the pooled backbone output) for both "
                 "models."]
    notes.append(f"PCA is fit separately for each model; silhouette (cosine) and leave-one-out {KNN_K}-NN accuracy "
                 "use the full-dimensional features and the true labels: higher after fine-tuning means the "
                 "classes were pulled apart.")
    if len(indices) < len(labels_all):
        notes.append(f"{len(indices)} of {len(labels_all)} examples, drawn with seed {ctx.seed}.")

    fine_tuned = project(extract_features(ctx, ctx.model, indices, split), labels)
    pretrained_model, missing = _pretrained_model(ctx)
    pretrained = None
    if pretrained_model is not None:
        pretrained = project(extract_features(ctx, pretrained_model, indices, split), labels)
    else:
        notes.append(missing)
    return {"method": cfg["method"], "labels": list(ctx.label_names), "point_labels": [int(y) for y in labels],
            "indices": indices, "pretrained": pretrained, "fine_tuned": fine_tuned, "note": " ".join(notes)}


# -------------------------------------------------------------------------------------------- page

TITLE = "Representation"
HOW = """The model's features of the test examples, projected to 2-D ({method}), one dot per
    example coloured by its true label. Fine-tuning should pull the classes apart. Silhouette (-1 to 1)
    measures how well separated the classes are and kNN accuracy how well neighbours agree on the label,
    both in the full feature space, not only in this picture."""


def render(data: dict[str, Any]) -> str:
    labels = [str(label) for label in data.get("labels") or []]
    point_labels = [int(i) for i in data.get("point_labels") or []]
    kinds = (("pretrained", "pretrained"), ("fine_tuned", "fine-tuned"))
    panels = [(title, data[key]) for key, title in kinds
              if isinstance(data.get(key), dict) and data[key].get("points")]
    figure = img(scatter_figure(panels, labels, point_labels), "feature scatter plots") if panels else ""
    note = data.get("note")
    if not note and data.get("pretrained") is None:
        note = "No pretrained model to compare with."
    rows = [[esc(title), num(rep.get("silhouette")), num(rep.get("knn_accuracy")),
             " + ".join(num(v) for v in rep.get("explained_variance") or [])] for title, rep in panels]
    scores = table(["features", "silhouette", "kNN accuracy", "explained variance (PC1 + PC2)"], rows)
    return (how(HOW, method=esc(data.get("method")))
            + (box("note", esc(note)) if note else "") + (scores if rows else "") + figure)
