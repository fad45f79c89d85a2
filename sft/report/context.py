"""What every report section reads: the model, its data and its logits on val/test, in split order."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from sft.data.batching import PadCollator
from sft.data.encoding import unlabelled_examples
from sft.inference import Outputs, chunks, outputs
from sft.tasks import make_task


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
    def task(self) -> Any:
        """The model's task (:mod:`sft.tasks`); single-label over ``label_names`` for a model without one."""
        return getattr(self.model, "task", None) or make_task("single_label", self.label_names)

    @property
    def modality(self) -> str:
        return self.model.modality

    @property
    def device(self) -> torch.device:
        return self.model.device

    # ------------------------------------------------------------------ text
    def texts(self, split: str | None = None) -> list[Any]:
        """The inputs of a split: strings, or (a, b) tuples for sentence pairs."""
        return [text for text, _ in self.datamodule.splits.split(split or self.split)]

    @property
    def tokenizer(self) -> Any:
        return self.datamodule.tokenizer

    def encode(self, texts: list[Any]) -> dict[str, torch.Tensor]:
        """A padded batch (input_ids, attention_mask; token_type_ids for pairs where the model takes them) the
        way the data module tokenizes (same max_length)."""
        items = unlabelled_examples(self.tokenizer, list(texts), self.datamodule.max_length)
        batch = PadCollator(self.tokenizer.pad_token_id or 0)(items)
        batch.pop("labels")
        return {k: v.to(self.device) for k, v in batch.items()}

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
