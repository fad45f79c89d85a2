"""Several labels per input (GoEmotions): one logit per label, binary cross-entropy; micro / macro F1, subset
accuracy and mean average precision. The decision threshold is a probability, or tuned on the validation split
(``global``: one for all labels, ``per_label``: one each) at every validation and saved with the model."""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics import Metric
from torchmetrics.functional.classification import multilabel_average_precision
from torchmetrics.utilities import dim_zero_cat

from sft.tasks.base import Task
from sft.tasks.imbalance import LossWeights, sigmoid_loss

THRESHOLD_MODES = ("global", "per_label")
GRID = torch.arange(0.05, 0.951, 0.05)  # candidate thresholds


class MultiLabel(Task):
    kind = "multi_label"
    problem_type = "multi_label_classification"
    metric_names = ("macro_f1", "micro_f1", "subset_acc", "map")
    default_metric = "val/macro_f1"

    def __post_init__(self) -> None:
        super().__post_init__()
        from sft.errors import ConfigError

        if isinstance(self.threshold, str) and self.threshold not in THRESHOLD_MODES:
            try:
                self.threshold = float(self.threshold)
            except ValueError:
                raise ConfigError(f"threshold={self.threshold!r}: give a probability in (0, 1), or "
                                  f"{' / '.join(THRESHOLD_MODES)} to tune it on the validation split.") from None
        if isinstance(self.threshold, int | float) and not 0 < float(self.threshold) < 1:
            raise ConfigError(f"threshold={self.threshold} must be in (0, 1).")

    @property
    def tuned(self) -> bool:
        return self.threshold in THRESHOLD_MODES

    def initial_thresholds(self) -> torch.Tensor:
        return torch.full((self.num_outputs,), 0.5 if self.tuned else float(self.threshold))

    def targets(self, values: list[Any]) -> torch.Tensor:
        ids = self.label2id
        out = torch.zeros(len(values), self.num_outputs)
        for row, labels in enumerate(values):
            out[row, [ids[str(label)] for label in labels]] = 1.0
        return out

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, weights: LossWeights | None = None) -> torch.Tensor:
        return sigmoid_loss(logits, targets, weights)

    def class_counts(self, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
        """(each label's positives, the number of examples)."""
        return targets.reshape(-1, self.num_outputs).sum(0).round().long(), len(targets)

    def head_bias(self, targets: torch.Tensor) -> torch.Tensor:
        """The log-odds of each label's training frequency (add-one smoothed): rare labels start rare."""
        frequency = (targets.double().sum(0) + 1) / (len(targets) + 2)
        return torch.logit(frequency).float()

    def metrics(self, stage: str) -> Metric:
        return MultiLabelScores(self.num_outputs, stage, self.initial_thresholds(),
                                tune=self.threshold if self.tuned and stage == "val" else None)

    def not_applicable(self, section: str) -> str | None:
        return REASONS.get(section)

    def prediction_rows(self, logits: torch.Tensor, temperature: float = 1.0,
                        thresholds: torch.Tensor | None = None) -> list[dict[str, Any]]:
        probs = torch.sigmoid(logits.float() / temperature)
        cut = self.initial_thresholds() if thresholds is None else thresholds
        rows = []
        for p, chosen in zip(probs.tolist(), (probs >= cut).tolist(), strict=True):
            rows.append({"labels": [n for n, on in zip(self.label_names, chosen, strict=True) if on],
                         **{f"prob_{name}": value for name, value in zip(self.label_names, p, strict=True)}})
        return rows


REASONS = {
    "calibration": "temperature scaling calibrates one softmax over classes; a multi-label model has one sigmoid per "
                   "label: each label's ECE is in the performance section's table.",
    "attributions": "the attributions explain one predicted class per input; a multi-label model predicts a set.",
    "faithfulness": "the deletion test follows one predicted class per input; a multi-label model predicts a set.",
    "robustness": "the perturbations are scored by flips of one predicted class; a multi-label model predicts a set.",
    "representation": "the representation map colours each point by one class; a multi-label input has several.",
}


def f1_per_label(preds: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-label F1 with 0 where a label is neither predicted nor present, micro F1) of boolean (N, L) tensors."""
    preds, targets = preds.bool(), targets.bool()
    tp = (preds & targets).sum(0).float()
    fp = (preds & ~targets).sum(0).float()
    fn = (~preds & targets).sum(0).float()
    per_label = torch.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn).clamp(min=1), torch.zeros_like(tp))
    total = 2 * tp.sum() + fp.sum() + fn.sum()
    return per_label, (2 * tp.sum() / total) if total > 0 else torch.tensor(0.0)


def tune_thresholds(probs: torch.Tensor, targets: torch.Tensor, mode: str) -> torch.Tensor:
    """Thresholds from :data:`GRID` that maximise each label's F1 (``per_label``) or the macro F1 (``global``)."""
    scores = torch.stack([f1_per_label(probs >= t, targets)[0] for t in GRID])  # (grid, L)
    default = torch.tensor(0.5)
    if mode == "global":
        best = scores.mean(1)
        return (GRID[best.argmax()] if best.max() > 0 else default).repeat(probs.shape[1])
    # The lowest best threshold of each label; 0.5 for a label no threshold finds (none in val): its F1 is 0
    # everywhere, and the lowest threshold would predict it for nearly every input.
    return torch.where(scores.max(0).values > 0, GRID[scores.argmax(0)], default)


class MultiLabelScores(Metric):
    """Keeps every probability and target of the epoch (gathered over DDP ranks) to score them at one threshold
    per label, after tuning it (``tune``) when asked. ``thresholds`` holds the ones scored with."""

    full_state_update = False

    def __init__(self, num_labels: int, stage: str, thresholds: torch.Tensor, tune: str | None = None):
        super().__init__()
        self.stage, self.tune, self.num_labels = stage, tune, num_labels
        self.thresholds = thresholds.clone()
        self.add_state("probs", default=[], dist_reduce_fx="cat")
        self.add_state("target", default=[], dist_reduce_fx="cat")

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        self.probs.append(torch.sigmoid(logits.detach().float()))
        self.target.append(targets.detach().float())

    def compute(self) -> dict[str, torch.Tensor]:
        probs, target = dim_zero_cat(self.probs), dim_zero_cat(self.target)
        if self.tune:
            self.thresholds = tune_thresholds(probs.cpu(), target.cpu(), self.tune).to(probs.device)
        per_label, micro = f1_per_label(probs >= self.thresholds.to(probs.device), target)
        chosen = probs >= self.thresholds.to(probs.device)
        values = {
            "micro_f1": micro,
            "macro_f1": per_label.mean(),
            "subset_acc": (chosen == target.bool()).all(1).float().mean(),
            "map": multilabel_average_precision(probs, target.long(), self.num_labels, average="macro"),
        }
        return {f"{self.stage}/{name}": value.float() for name, value in values.items()}
