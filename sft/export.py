"""Export a fine-tuned model so it loads without sft: ``transformers.pipeline(model=<run>/export)``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def export_text_model(model: Any, tokenizer: Any, out_dir: Path, extra: dict[str, Any] | None = None) -> Path:
    """save_pretrained of the HF model (with id2label / label2id) and its tokenizer, plus labels.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    hf_model = model.model
    hf_model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    id2label = {int(k): v for k, v in hf_model.config.id2label.items()}
    labels = {"label_names": [id2label[i] for i in range(len(id2label))], **(extra or {})}
    (out_dir / "labels.json").write_text(json.dumps(labels, indent=2))
    return out_dir

