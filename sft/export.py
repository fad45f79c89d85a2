"""Export a fine-tuned model so it loads without sft: ``transformers.pipeline(model=<run>/export)``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

THRESHOLDS_FILE = "thresholds.json"  # a multi-label model's decision thresholds, beside the export


def export_text_model(model: Any, tokenizer: Any, out_dir: Path, extra: dict[str, Any] | None = None,
                      task: dict[str, Any] | None = None, thresholds: list[float] | None = None) -> Path:
    """save_pretrained of the HF model (with id2label / label2id / problem_type) and its tokenizer, plus
    labels.json (label names and the task) and, for multi-label models, thresholds.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    hf_model = model.model
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

