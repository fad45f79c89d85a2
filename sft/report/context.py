"""What every report section reads: the model, its data and its logits on val/test, in split order."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from sft.inference import Outputs, chunks, outputs


@dataclass
class ReportContext:
    """Everything a section needs. ``datamodule`` is set up (``datasets`` and ``splits`` loaded).

    Text: ``texts(split)`` are the raw strings; ``encode(texts)`` pads them into a model batch.
    Images: ``pixels(indices, split)`` are eval-transformed tensors (N, 3, H, W); ``denormalize`` maps
    them back to [0, 1] RGB for display.
    """

    model: Any  # sft Classifier, eval mode
    datamodule: Any
    label_names: list[str]
    test: Outputs
    val: Outputs | None = None
    train_labels: torch.Tensor | None = None
    pretrained: Callable[[], Any] | None = None  # builds the model before fine-tuning (same head size)
    seed: int = 0
    split: str = "test"  # the split ``test`` holds (report.split): its texts / pixels are what sections perturb
    val_is_evaluated: bool = False  # val and the evaluated split are the same examples (no separate test split)
    extras: dict[str, Any] = field(default_factory=dict)  # section results others may read

    @property
    def modality(self) -> str:
        return self.model.modality

    @property
    def device(self) -> torch.device:
        return self.model.device

    # ------------------------------------------------------------------ text
    def texts(self, split: str | None = None) -> list[str]:
        return [text for text, _ in self.datamodule.splits.split(split or self.split)]

    @property
    def tokenizer(self) -> Any:
        return self.datamodule.tokenizer

    def encode(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """A padded batch (input_ids, attention_mask) the way the data module tokenizes (same max_length)."""
        enc = self.tokenizer(list(texts), truncation=True, max_length=self.datamodule.max_length, padding=True,
                             return_tensors="pt")
        return {"input_ids": enc["input_ids"].to(self.device), "attention_mask": enc["attention_mask"].to(self.device)}

    # ------------------------------------------------------------------ images
    def pixels(self, indices: list[int], split: str | None = None) -> torch.Tensor:
        dataset = self.datamodule.datasets[split or self.split]
        return torch.stack([dataset[i]["pixel_values"] for i in indices]).to(self.device)

    def denormalize(self, pixels: torch.Tensor) -> torch.Tensor:
        pre = self.datamodule.preprocess
        mean = torch.tensor(pre["mean"], device=pixels.device).view(-1, 1, 1)
        std = torch.tensor(pre["std"], device=pixels.device).view(-1, 1, 1)
        return (pixels * std + mean).clamp(0, 1)

    # ------------------------------------------------------------------ shared
    def logits_of(self, batch: dict[str, torch.Tensor], batch_size: int = 64) -> torch.Tensor:
        """Logits for an arbitrary batch dict (input_ids/attention_mask or pixel_values), chunked, no grad."""
        if not len(next(iter(batch.values()))):
            return torch.empty(0, len(self.label_names))
        return outputs(self.model, chunks(batch, batch_size)).logits
