"""The inference layer: load a trained model (checkpoint, export folder or run folder) and the one loop that
turns a model plus batches into outputs (logits, or features on request), rows in dataset order.

Every consumer goes through :func:`outputs`: ``sft.eval``, the report, ``sft.predict``, the feature cache
and the scikit-learn head.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sft.data.batching import PadCollator, length_batches
from sft.data.encoding import unlabelled_examples
from sft.errors import ConfigError
from sft.export import ONNX_FILE, THRESHOLDS_FILE, require_onnx
from sft.rundir import CALIBRATION_FILE, is_export_dir, run_dir_of


@dataclass
class Outputs:
    """Per-example outputs of one pass, row i = example i of the data (its order, whatever order the batches
    visited the examples in). ``logits`` holds what the forward returned: logits, or features on request."""

    logits: torch.Tensor  # (N, C) float32 (or (N, D) features)
    labels: torch.Tensor | None  # (N,) int64 when the batches carry labels

    @property
    def probs(self) -> torch.Tensor:
        return self.logits.softmax(-1)

    @property
    def preds(self) -> torch.Tensor:
        return self.logits.argmax(-1)


def _dataset_order(batches: Iterable[Any]) -> torch.Tensor | None:
    """The example index of each output row, from the loader's batch sampler (None: already in order)."""
    sampler = getattr(batches, "batch_sampler", None)
    if sampler is None:
        return None
    return torch.tensor([i for batch in sampler for i in batch], dtype=torch.long)


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def outputs(model: Any, batches: Iterable[dict[str, Any]], forward: Callable[[dict], torch.Tensor] | None = None,
            device: torch.device | None = None) -> Outputs:
    """``forward(batch)`` (default ``model.logits``) over every batch, in eval mode without gradients; rows are
    put back in dataset order when the loader's batch sampler visits the examples in another (length-sorted)
    order. ``batches``: a DataLoader or any iterable of batch dicts."""
    forward = forward or model.logits
    device = device or model.device
    was_training = model.training
    model.eval()
    values, labels = [], []
    with torch.inference_mode():
        for batch in batches:
            batch = _to(batch, device)
            values.append(forward(batch).float().cpu())
            if "labels" in batch:
                labels.append(batch["labels"].cpu())
    model.train(was_training)
    out = _cat(values, 0.0) if values else torch.empty(0)
    targets = _cat(labels, -100) if labels and len(labels) == len(values) else None
    order = _dataset_order(batches)
    if order is not None and len(order) == len(out):
        out[order] = out.clone()
        if targets is not None:
            targets[order] = targets.clone()
    return Outputs(out, targets)


def _cat(parts: list[torch.Tensor], fill: float) -> torch.Tensor:
    """Concatenate batches; per-token outputs (N, T, C) / labels (N, T) of batches padded to different widths are
    padded to the widest (labels with -100, which the token metrics skip)."""
    if parts[0].ndim >= 2 and len({p.shape[1] for p in parts}) > 1:
        width = max(p.shape[1] for p in parts)
        parts = [torch.nn.functional.pad(p, (0, 0) * (p.ndim - 2) + (0, width - p.shape[1]), value=fill)
                 for p in parts]
    return torch.cat(parts)


def split_outputs(model: Any, datamodule: Any, split: str) -> Outputs:
    """``model.logits`` over a split of a set-up data module, rows in split order (text goes by length:
    ``ordered_dataloader`` halves the padding)."""
    ordered = getattr(datamodule, "ordered_dataloader", None)
    return outputs(model, ordered(split) if ordered else datamodule.eval_dataloader(split))


def chunks(batch: dict[str, torch.Tensor], size: int) -> list[dict[str, torch.Tensor]]:
    """A batch dict cut into batches of at most ``size`` rows (for :func:`outputs`)."""
    n = len(next(iter(batch.values())))
    return [{k: v[start : start + size] for k, v in batch.items()} for start in range(0, n, size)]


# ---------------------------------------------------------------------- loading
def resolve_model_path(path: str | Path) -> Path:
    """A run folder means its export/ (or else its best / last checkpoint)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError(f"{str(p)!r} does not exist: give a run folder, its export/ folder or a .ckpt file.")
    if p.is_dir() and not is_export_dir(p):
        if is_export_dir(p / "export"):
            return p / "export"
        ckpts = sorted((p / "checkpoints").glob("best-*.ckpt")) or sorted((p / "checkpoints").glob("last.ckpt"))
        if ckpts:
            return ckpts[-1]
        for head in (p / "sklearn_head.json", p / "export" / "sklearn_head.json", p / "export" / "sklearn_head.joblib"):
            if head.is_file():
                raise ConfigError(f"{str(p)!r} is a probe=sklearn run whose head is a scikit-learn estimator over "
                                  f"features the model's own head does not take ({head.name}); load it with the "
                                  "backbone and the estimator yourself, or rerun with probe.pooling=head and a "
                                  "linear estimator to get a loadable model export.")
        raise ConfigError(f"{str(p)!r} holds no model: expected an export (config.json or model.json), export/ "
                          "or checkpoints/*.ckpt.")
    return p


BACKENDS = ("torch", "onnx")


def load_model(path: str | Path, backend: str = "torch") -> tuple[Any, dict[str, Any]]:
    """``(classifier in eval mode, data inputs)`` from an export folder, a run folder or an sft checkpoint.

    The data inputs are what the model's DataModule needs to feed it: ``{"tokenizer": ...}`` for text,
    ``{"preprocess": {...}}`` (resize, crop, normalisation) for images. ``backend="onnx"``: the export's
    ``model.onnx`` run by onnxruntime (:class:`OnnxClassifier`), with the same data inputs.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend {backend!r}: choose one of {', '.join(BACKENDS)}.")
    if backend == "onnx":
        return load_onnx_model(path)
    p = resolve_model_path(path)
    if p.is_dir() and (p / "model.json").is_file():
        from sft.models.vision import ImageClassifier

        model, preprocess = ImageClassifier.from_export(p)
        return model, {"preprocess": preprocess}
    if p.is_file() and "arch" in torch.load(p, map_location="cpu", weights_only=True, mmap=True).get("hyper_parameters", {}):
        from sft.models.vision import ImageClassifier

        model, preprocess = ImageClassifier.from_checkpoint(p)
        return model, {"preprocess": preprocess}
    from sft.models.backbones import load_tokenizer
    from sft.models.classifier import TextClassifier

    if p.is_dir():
        id2label, task = _text_export_labels(p)
        model = TextClassifier(str(p), num_labels=len(id2label), id2label=id2label, task=task,
                               head_bias="library").eval()  # trained: its head stays as saved
        thresholds = _saved_thresholds(p, model.task)
        if getattr(model, "thresholds", None) is not None and thresholds is not None:
            model.thresholds.copy_(thresholds)
        return model, {"tokenizer": load_tokenizer(str(p))}
    model = TextClassifier.from_checkpoint(str(p))
    # The tokenizer: the run's export/ when present, else where the model came from.
    run_export = p.parent.parent / "export"
    tokenizer_source = run_export if (run_export / "tokenizer_config.json").is_file() else model.hparams.name_or_path
    return model, {"tokenizer": load_tokenizer(str(tokenizer_source))}


def _text_export_labels(folder: Path) -> tuple[dict[int, str], dict[str, Any] | None]:
    """``(id2label, task spec or None)`` of a text export folder (config.json, labels.json)."""
    config = json.loads((folder / "config.json").read_text())
    id2label = {int(k): v for k, v in config.get("id2label", {}).items()}
    labels_file = folder / "labels.json"
    return id2label, json.loads(labels_file.read_text()).get("task") if labels_file.is_file() else None


def _saved_thresholds(folder: Path, task: Any) -> torch.Tensor | None:
    """A multi-label export's decision thresholds (thresholds.json), in the task's label order; None without."""
    path = folder / THRESHOLDS_FILE
    if task.kind != "multi_label" or not path.is_file():
        return None
    saved = json.loads(path.read_text())["thresholds"]
    return torch.tensor([float(saved[name]) for name in task.label_names])


class OnnxClassifier:
    """An export's ``model.onnx`` run by onnxruntime on the CPU, with what :func:`outputs` and ``sft.predict`` ask of
    a classifier (``task``, ``modality``, ``thresholds``, ``logits(batch)``, eval mode): the same batches, the same
    post-processing, only the forward differs."""

    training = False  # an ONNX graph is an inference graph: no dropout, nothing to switch
    device = torch.device("cpu")

    def __init__(self, path: Path, task: Any, modality: str, thresholds: torch.Tensor | None = None):
        import onnxruntime

        self.path, self.task, self.modality, self.thresholds = path, task, modality, thresholds
        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def eval(self) -> OnnxClassifier:
        return self

    def train(self, mode: bool = True) -> OnnxClassifier:
        return self

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        import numpy as np

        feed = {}
        for name in self.input_names:
            value = batch.get(name)
            if value is None and name == "token_type_ids":  # single texts carry none: zeros, the model's default
                value = torch.zeros_like(batch["input_ids"])
            if value is None:
                raise ConfigError(f"{self.path} takes {name!r}, which these inputs do not have (they have "
                                  f"{sorted(batch)}): is it the export of another kind of model?")
            feed[name] = np.ascontiguousarray(value.cpu().numpy())
        return torch.from_numpy(self.session.run(["logits"], feed)[0])


def load_onnx_model(path: str | Path) -> tuple[OnnxClassifier, dict[str, Any]]:
    """``(OnnxClassifier, data inputs)`` from a run folder or its export folder holding ``model.onnx``."""
    from sft.tasks import task_from_dict

    require_onnx("The onnx backend")
    p = resolve_model_path(path)
    if not (p.is_dir() and is_export_dir(p)):
        raise ConfigError(f"The onnx backend runs an export's {ONNX_FILE}, and {str(path)!r} has no export/ (only "
                          f"{p.name}): use the torch backend, or train with the export on (the default).")
    onnx_file = p / ONNX_FILE
    if not onnx_file.is_file():
        raise ConfigError(f"No {ONNX_FILE} in {p}: write it with `python -m sft.export {path} --format onnx` (or train "
                          "with export.onnx=true), or use the torch backend.")
    if (p / "model.json").is_file():
        info = json.loads((p / "model.json").read_text())
        return OnnxClassifier(onnx_file, task_from_dict(None, info["label_names"]), "image"), {
            "preprocess": info["preprocess"]}
    from sft.models.backbones import load_tokenizer

    id2label, spec = _text_export_labels(p)
    task = task_from_dict(spec, [id2label[i] for i in range(len(id2label))])
    return (OnnxClassifier(onnx_file, task, "text", _saved_thresholds(p, task)),
            {"tokenizer": load_tokenizer(str(p))})


def calibration_temperature(path: str | Path) -> float:
    """The temperature ``sft.explain`` fitted on the validation split (``calibration.json`` beside the export)."""
    p = Path(path).expanduser()
    run_dir = run_dir_of(p)
    candidates = [p / CALIBRATION_FILE] if p.is_dir() else []
    if run_dir is not None:
        candidates += [run_dir / "export" / CALIBRATION_FILE, run_dir / CALIBRATION_FILE]
    for candidate in candidates:
        if candidate.is_file():
            temperature = float(json.loads(candidate.read_text())["temperature"])
            if not temperature > 0:
                raise ConfigError(f"{candidate}: temperature {temperature} must be positive; rerun sft.explain.")
            return temperature
    raise ConfigError(f"No {CALIBRATION_FILE} for {str(p)!r}: the temperature is fitted by the report. Run "
                      f"`python -m sft.explain <run folder>` (or train with the report on), or drop --calibrated.")


def label_names(model: Any) -> list[str]:
    id2label = model.hparams.id2label
    return [id2label[i] for i in range(len(id2label))]


def text_logits(model: Any, tokenizer: Any, inputs: list[Any], max_length: int = 128, batch_size: int = 64
                ) -> torch.Tensor:
    """The model's outputs for texts or (a, b) pairs, one row per input in the given order (batched by length
    internally), tokenized as the training data was."""
    if not inputs:
        return torch.empty(0, model.task.num_outputs)
    return outputs(model, _length_loader(tokenizer, unlabelled_examples(tokenizer, inputs, max_length),
                                         batch_size)).logits


def _length_loader(tokenizer: Any, examples: list[dict[str, Any]], batch_size: int) -> Any:
    """Examples in length-sorted, padded batches (:func:`outputs` puts the rows back in order)."""
    from torch.utils.data import DataLoader

    return DataLoader(examples, batch_sampler=length_batches([len(e["input_ids"]) for e in examples], batch_size),
                      collate_fn=PadCollator(tokenizer.pad_token_id or 0))


def predict_proba(model: Any, tokenizer: Any, texts: list[Any], max_length: int = 128, batch_size: int = 64,
                  temperature: float = 1.0) -> torch.Tensor:
    """Class probabilities (softmax of logits / temperature), one row per text (or pair) in the given order."""
    return (text_logits(model, tokenizer, texts, max_length, batch_size) / temperature).softmax(-1)


def tag_entities(model: Any, tokenizer: Any, texts: list[str], max_length: int = 128, batch_size: int = 64
                 ) -> list[list[dict[str, Any]]]:
    """Entities in raw texts, as a token-classification model tags them: per text, ``{"entity", "start", "end",
    "word", "score"}`` with character offsets into the text. Words are the tokenizer's pre-tokenized words; a word's
    tag is its first sub-token's (as in training); ``score`` is the mean probability of the entity's words' tags."""
    from sft.tasks.token import entity_spans

    if not texts:
        return []
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length, return_offsets_mapping=True)
    examples = [{"input_ids": torch.tensor(ids), "labels": torch.tensor(0)} for ids in encoded["input_ids"]]
    probs = outputs(model, _length_loader(tokenizer, examples, batch_size)).logits.softmax(-1)
    names = model.task.label_names
    result = []
    for i, text in enumerate(texts):
        first: dict[int, int] = {}  # word -> its first sub-token
        bounds: dict[int, list[int]] = {}  # word -> [start, end] characters
        for position, word in enumerate(encoded.word_ids(i)):
            if word is None:
                continue
            first.setdefault(word, position)
            start, end = encoded["offset_mapping"][i][position]
            bounds.setdefault(word, [start, end])[1] = end
        words = sorted(first)
        best = probs[i, [first[w] for w in words]].max(-1) if words else None
        tags = [names[j] for j in best.indices.tolist()] if words else []
        entities = []
        for kind, w0, w1 in entity_spans(tags):
            start, end = bounds[words[w0]][0], bounds[words[w1 - 1]][1]
            entities.append({"entity": kind, "start": start, "end": end, "word": text[start:end],
                             "score": float(best.values[w0:w1].mean())})
        result.append(entities)
    return result


def image_logits(model: Any, preprocess: dict[str, Any], paths: list[str], batch_size: int = 32) -> torch.Tensor:
    """The model's logits, one row per image file in the given order. Every file is checked first, so an
    unreadable one is a clear error naming it, before any work."""
    from torch.utils.data import DataLoader

    from sft.data.image import ImageDataset, build_transforms
    from sft.data.image_sources import check_images

    check_images([(p, "") for p in paths])
    dataset = ImageDataset([(p, 0) for p in paths], build_transforms(preprocess, train=False))
    return outputs(model, DataLoader(dataset, batch_size=batch_size)).logits


def predict_image_proba(model: Any, preprocess: dict[str, Any], paths: list[str], batch_size: int = 32,
                        temperature: float = 1.0) -> torch.Tensor:
    """Class probabilities (softmax of logits / temperature), one row per image file in the given order."""
    return (image_logits(model, preprocess, paths, batch_size) / temperature).softmax(-1)
