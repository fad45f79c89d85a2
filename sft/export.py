"""Export a fine-tuned model so it loads without sft: ``transformers.pipeline(model=<run>/export)``; and its ONNX
graph beside it (``export.onnx=true``, or afterwards ``python -m sft.export RUN --format onnx``) for onnxruntime."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sft.errors import ConfigError, command_line
from sft.rundir import is_export_dir

log = logging.getLogger("sft")

THRESHOLDS_FILE = "thresholds.json"  # a multi-label model's decision thresholds, beside the export


def export_text_model(hf_model: Any, tokenizer: Any, out_dir: Path, extra: dict[str, Any] | None = None,
                      task: dict[str, Any] | None = None, thresholds: list[float] | None = None) -> Path:
    """save_pretrained of the HF model (with id2label / label2id / problem_type) and its tokenizer, plus
    labels.json (label names and the task) and, for multi-label models, thresholds.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    hf_model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    id2label = {int(k): v for k, v in hf_model.config.id2label.items()}
    labels = {"label_names": (task or {}).get("label_names") or [id2label[i] for i in range(len(id2label))],
              **({"task": task} if task else {}), **(extra or {})}
    (out_dir / "labels.json").write_text(json.dumps(labels, indent=2))
    if thresholds is not None:
        names = labels["label_names"]
        (out_dir / THRESHOLDS_FILE).write_text(json.dumps(
            {"thresholds": dict(zip(names, thresholds, strict=True)), "mode": (task or {}).get("threshold", 0.5),
             "how": "a label is predicted when sigmoid(logit) >= its threshold"}, indent=2))
    return out_dir


@dataclass(frozen=True)
class ExportSettings:
    """The config's ``export`` node: the model export (``enabled``), its ONNX graph beside it (``onnx``) and, for a
    LoRA run, the adapter alone in peft's format (``adapter``: ``export/adapter``)."""

    enabled: bool = True
    onnx: bool = False
    adapter: bool = False


EXPORT_KEYS = ("enabled", "onnx", "adapter")
ADAPTER_DIR = "adapter"  # export/adapter: PeftModel.from_pretrained(base_model, "<run>/export/adapter")


def export_settings(value: Any) -> ExportSettings:
    """``export`` as configured: the node ``{enabled, onnx, adapter}``, or true / false (the earlier spelling, still
    taken: the model export on or off). Checked before training, with the ONNX packages when asked for."""
    if isinstance(value, ExportSettings):
        return value
    if isinstance(value, bool):
        return ExportSettings(enabled=value)
    if not isinstance(value, Mapping):
        raise ConfigError(f"export={value!r}: set export.enabled, export.onnx and export.adapter to true or false "
                          "(export=true / export=false still switch the whole export).")
    unknown = sorted(set(value) - set(EXPORT_KEYS))
    if unknown:
        raise ConfigError(f"export.{unknown[0]} is not an export setting: the settings are "
                          f"{', '.join('export.' + k for k in EXPORT_KEYS)}.")
    settings = ExportSettings(**{key: value[key] for key in EXPORT_KEYS if key in value})
    for key in EXPORT_KEYS:
        if not isinstance(getattr(settings, key), bool):
            raise ConfigError(f"export.{key}={getattr(settings, key)!r} must be true or false.")
    for key in ("onnx", "adapter"):
        if getattr(settings, key) and not settings.enabled:
            raise ConfigError(f"export.{key}=true writes beside the exported model: it needs export.enabled=true.")
    if settings.onnx:
        require_onnx("export.onnx=true")
    return settings


# ---------------------------------------------------------------------- ONNX
ONNX_FILE = "model.onnx"  # beside the exported model: <run>/export/model.onnx
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")  # the exporter writes with onnx / onnxscript; onnxruntime runs it
ONNX_INSTALL = "pip install -e '.[onnx]'"
ONNX_ATOL = 1e-3  # the export's own check: onnxruntime's logits against PyTorch's (float32 agree to ~1e-5)
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def require_onnx(purpose: str) -> None:
    """A clear error before any work when a package the ONNX path needs is missing (or does not import)."""
    import importlib

    missing = []
    for name in ONNX_PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ConfigError(f"{purpose} needs {', '.join(missing)} (not installed): `{ONNX_INSTALL}`.")


def onnx_source(path: str | Path) -> Path:
    """The export folder of a run folder (or the export folder itself), with a clear error when there is none."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError(f"{str(p)!r} does not exist: give a run folder or its export/ folder.")
    for folder in (p, p / "export"):
        if folder.is_dir() and is_export_dir(folder):
            return folder
    if p.is_file():
        raise ConfigError(f"{str(p)!r} is a file: the ONNX graph is built from an exported model. Give its run folder "
                          "(with export/) or the export/ folder.")
    if any((folder / "sklearn_head.json").is_file() or (folder / "sklearn_head.joblib").is_file()
           for folder in (p, p / "export")):
        raise ConfigError(f"{str(p)!r} has no model export, only a scikit-learn head over features the model's own head "
                          "does not take: ONNX covers models whose head is inside them (probe.pooling=head with a "
                          "linear estimator).")
    raise ConfigError(f"{str(p)!r} holds no exported model (export/config.json or export/model.json): the run was "
                      "trained with export.enabled=false, or is not finished. Train with the export on (the default).")


def logits_module(export_dir: Path) -> tuple[Any, dict[str, Any], dict[str, dict[int, str]]]:
    """``(module, example inputs by name, dynamic axes by input name)`` of an export folder, loaded with the plain
    model library (transformers, torchvision or timm) as any reader of the export does: whatever trained it (full
    fine-tuning, a probe, merged LoRA adapters), the graph is the exported model's. The module returns the logits."""
    if (export_dir / "model.json").is_file():
        return _image_module(export_dir)
    return _text_module(export_dir)


def _text_module(export_dir: Path) -> tuple[Any, dict[str, Any], dict[str, dict[int, str]]]:
    import inspect

    import torch
    import transformers

    config = transformers.AutoConfig.from_pretrained(export_dir)
    per_token = any(str(a).endswith("ForTokenClassification") for a in config.architectures or ())
    auto = transformers.AutoModelForTokenClassification if per_token else transformers.AutoModelForSequenceClassification
    model = auto.from_pretrained(export_dir, dtype=torch.float32).eval()  # float32: what onnxruntime serves on a CPU
    tokenizer = transformers.AutoTokenizer.from_pretrained(export_dir)
    takes = inspect.signature(model.forward).parameters
    # Segment ids where the tokenizer writes them and the model reads them (BERT; not RoBERTa, DistilBERT).
    names = [n for n in TEXT_INPUTS if n in takes and (n != "token_type_ids" or n in tokenizer.model_input_names)]

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
            segments = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            return self.model(input_ids=input_ids, attention_mask=attention_mask, **segments).logits

    # Two rows of different lengths: padding, so the attention mask is traced as the general case.
    example = tokenizer(["a short one", "a somewhat longer sentence, so the batch has padding"], padding=True,
                        return_tensors="pt")
    return Logits().eval(), {n: example[n] for n in names}, {n: {0: "batch", 1: "sequence"} for n in names}


def _image_module(export_dir: Path) -> tuple[Any, dict[str, Any], dict[str, dict[int, str]]]:
    import torch

    info = json.loads((export_dir / "model.json").read_text())
    if info["library"] == "timm":
        import timm

        net = timm.create_model(info["arch"], num_classes=info["num_classes"], pretrained=False)
    else:
        import torchvision

        net = torchvision.models.get_model(info["arch"], weights=None, num_classes=info["num_classes"])
    net.load_state_dict(torch.load(export_dir / "model.pt", map_location="cpu", weights_only=True))

    class Logits(torch.nn.Module):  # the input named as transformers' image models name it
        def __init__(self) -> None:
            super().__init__()
            self.model = net

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return self.model(pixel_values)

    crop = int(info["preprocess"]["crop"])
    return Logits().eval(), {"pixel_values": torch.randn(2, 3, crop, crop)}, {"pixel_values": {0: "batch"}}


def export_onnx(export_dir: str | Path, out: str | Path | None = None) -> Path:
    """``model.onnx`` (input_ids / attention_mask / token_type_ids where the model takes them, or pixel_values;
    output logits) of an export folder, with dynamic batch (and, for text, sequence) axes. Written with the
    torch.export-based exporter (``dynamo=True``), then checked: onnxruntime's logits on inputs of another batch size
    and length must match PyTorch's. Weights inside the one file (below ONNX's 2 GB protobuf limit)."""
    import warnings

    import torch

    require_onnx("The ONNX export")
    export_dir = Path(export_dir)
    out = Path(out) if out is not None else export_dir / ONNX_FILE
    module, example, axes = logits_module(export_dir)
    dims = {axis: torch.export.Dim(axis) for spec in axes.values() for axis in spec.values()}
    dynamic_shapes = {name: {i: dims[axis] for i, axis in spec.items()} for name, spec in axes.items()}
    weight_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    with warnings.catch_warnings(), _quiet("onnxscript", "onnx_ir"):  # their INFO lines: one per graph rewrite
        # "The axis name: batch will not be used, since it shares the same shape constraints with another axis".
        warnings.filterwarnings("ignore", message=r".*axis name.*will not be used.*")
        torch.onnx.export(module, (), str(out), kwargs=example, dynamo=True, input_names=list(example),
                          output_names=["logits"], dynamic_shapes=dynamic_shapes, verbose=False,
                          external_data=weight_bytes > 1.8e9)
    try:
        diff = check_onnx(out, module, example)
    except Exception:
        out.unlink(missing_ok=True)  # a graph that disagrees with the model is not left to be served
        raise
    log.info("Wrote %s (%.1f MB); onnxruntime vs PyTorch logits: max abs diff %.2g", out, out.stat().st_size / 1e6,
             diff)
    return out


@contextlib.contextmanager
def _quiet(*loggers: str) -> Iterator[None]:
    """The named loggers at WARNING inside the block (their level restored after)."""
    saved = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def check_onnx(path: Path, module: Any, example: dict[str, Any]) -> float:
    """Max abs difference of onnxruntime's and PyTorch's logits on an input of another batch size (and length) than
    the one exported with: the dynamic axes really are dynamic. Raises when it exceeds :data:`ONNX_ATOL`."""
    import numpy as np
    import onnxruntime
    import torch

    inputs = {}
    for name, value in example.items():  # 3 rows (one repeated), and for text 5 more positions
        grown = torch.cat([value, value[:1]])
        if name != "pixel_values":
            grown = torch.cat([grown, grown[:, -1:].expand(-1, 5)], dim=1)
        inputs[name] = grown
    with torch.inference_mode():
        expected = module(**inputs).float().numpy()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {k: np.ascontiguousarray(v.numpy()) for k, v in inputs.items()})[0]
    diff = float(np.abs(got - expected).max())
    if got.shape != expected.shape or not diff <= ONNX_ATOL:
        raise RuntimeError(f"{path}: onnxruntime's logits {got.shape} differ from PyTorch's {expected.shape} by {diff:.3g} "
                           f"(> {ONNX_ATOL}) on a batch of another size: the ONNX export is wrong for this model.")
    return diff


@command_line
def main(argv: list[str] | None = None) -> int:
    """``python -m sft.export RUN --format onnx``: ``model.onnx`` beside a run's exported model."""
    parser = argparse.ArgumentParser(
        prog="python -m sft.export", description="Write model.onnx beside a run's exported model (export/), for "
        "onnxruntime and `python -m sft.predict RUN --backend onnx`: what training with export.onnx=true writes.")
    parser.add_argument("model", help="run folder or its export/ folder")
    parser.add_argument("--format", required=True, choices=["onnx"], help="onnx: <export>/model.onnx")
    args = parser.parse_args(argv)
    require_onnx("python -m sft.export --format onnx")
    source = onnx_source(args.model)
    if not log.handlers:  # the written file and the parity check, on stderr
        log.addHandler(logging.StreamHandler(sys.stderr))
        log.setLevel(logging.INFO)
    export_onnx(source)
    return 0


if __name__ == "__main__":
    sys.exit(main())
