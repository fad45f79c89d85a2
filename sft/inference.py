"""Load a trained model (checkpoint, export folder or run folder) and predict in input order."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sft.errors import ConfigError

EXPORT_MARKERS = ("config.json", "model.json")  # text (save_pretrained) / image export folders


def _is_export(folder: Path) -> bool:
    return any((folder / marker).is_file() for marker in EXPORT_MARKERS)


def resolve_model_path(path: str | Path) -> Path:
    """A run folder means its export/ (or else its best / last checkpoint)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError(f"{str(p)!r} does not exist: give a run folder, its export/ folder or a .ckpt file.")
    if p.is_dir() and not _is_export(p):
        if _is_export(p / "export"):
            return p / "export"
        ckpts = sorted((p / "checkpoints").glob("best-*.ckpt")) or sorted((p / "checkpoints").glob("last.ckpt"))
        if ckpts:
            return ckpts[-1]
        for head in (p / "sklearn_head.json", p / "export" / "sklearn_head.json", p / "export" / "sklearn_head.joblib"):
            if head.is_file():
                raise ConfigError(f"{str(p)!r} is a freeze=sklearn run whose head is a scikit-learn estimator over "
                                  f"features the model's own head does not take ({head.name}); load it with the "
                                  "backbone and the estimator yourself, or rerun with freeze.pooling=head and a "
                                  "linear estimator to get a loadable model export.")
        raise ConfigError(f"{str(p)!r} holds no model: expected an export (config.json or model.json), export/ "
                          "or checkpoints/*.ckpt.")
    return p


def load_model(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """``(classifier in eval mode, data inputs)`` from an export folder, a run folder or an sft checkpoint.

    The data inputs are what the model's DataModule needs to feed it: ``{"tokenizer": ...}`` for text,
    ``{"preprocess": {...}}`` (resize, crop, normalisation) for images.
    """
    import torch

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
        config = json.loads((p / "config.json").read_text())
        id2label = {int(k): v for k, v in config.get("id2label", {}).items()}
        model = TextClassifier(str(p), num_labels=len(id2label), id2label=id2label).eval()
        return model, {"tokenizer": load_tokenizer(str(p))}
    model = TextClassifier.from_checkpoint(str(p))
    # The tokenizer: the run's export/ when present, else where the model came from.
    run_export = p.parent.parent / "export"
    tokenizer_source = run_export if (run_export / "tokenizer_config.json").is_file() else model.hparams.name_or_path
    return model, {"tokenizer": load_tokenizer(str(tokenizer_source))}


def calibration_temperature(path: str | Path) -> float:
    """The temperature ``sft.explain`` fitted on the validation split (``calibration.json`` beside the export)."""
    from sft.eval import run_dir_of
    from sft.explain import CALIBRATION_FILE

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


def predict_proba(model: Any, tokenizer: Any, texts: list[str], max_length: int = 128, batch_size: int = 64,
                  temperature: float = 1.0) -> Any:
    """Class probabilities (softmax of logits / temperature), one row per text in the given order (batched by
    length internally)."""
    import torch

    from sft.data.batching import PadCollator

    encoded = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))  # less padding
    collate = PadCollator(tokenizer.pad_token_id or 0)
    probs = torch.empty(len(texts), model.hparams.num_labels)
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = collate([(torch.tensor(encoded[i]), 0) for i in idx])
            logits = model(batch["input_ids"].to(model.device), batch["attention_mask"].to(model.device))
            probs[idx] = (logits.float() / temperature).softmax(-1).cpu()
    return probs


def predict_image_proba(model: Any, preprocess: dict[str, Any], paths: list[str], batch_size: int = 32,
                        temperature: float = 1.0) -> Any:
    """Class probabilities (softmax of logits / temperature), one row per image file in the given order. Every file is checked first, so an
    unreadable one is a clear error naming it, before any work."""
    import torch
    from torch.utils.data import DataLoader

    from sft.data.image import ImageDataset, build_transforms
    from sft.data.image_sources import check_images

    check_images([(p, "") for p in paths])
    dataset = ImageDataset([(p, 0) for p in paths], build_transforms(preprocess, train=False))
    probs = []
    model.eval()
    with torch.inference_mode():
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            logits = model.logits({"pixel_values": batch["pixel_values"].to(model.device)}).float()
            probs.append((logits / temperature).softmax(-1).cpu())
    return torch.cat(probs)
