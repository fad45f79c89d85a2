"""A score per input (STS-B): one output, mean squared error; Pearson and Spearman correlation, MSE."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.regression import MeanSquaredError, PearsonCorrCoef, SpearmanCorrCoef

from sft.tasks.base import Task
from sft.tasks.imbalance import LossWeights

# torchmetrics warns that Spearman keeps every prediction: evaluation splits are what it is meant for.
warnings.filterwarnings("ignore", message=r".*SpearmanCorrcoef. will save all targets.*")


class Regression(Task):
    """``label_names`` holds one name: what the score is (the label column)."""

    kind = "regression"
    problem_type = "regression"
    metric_names = ("pearson", "spearman", "mse")
    default_metric = "val/pearson"
    has_classes = False

    def __post_init__(self) -> None:
        super().__post_init__()
        self.label_names = self.label_names[:1] or ["score"]

    @property
    def num_outputs(self) -> int:
        return 1

    def targets(self, values: list[Any]) -> torch.Tensor:
        return torch.tensor([float(v) for v in values], dtype=torch.float32)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, weights: LossWeights | None = None) -> torch.Tensor:
        # No weighting applies to a score (LossSpec refuses the settings).
        return torch.nn.functional.mse_loss(logits.float().reshape(-1), targets.float().reshape(-1))

    def head_bias(self, targets: torch.Tensor) -> torch.Tensor:
        """The training mean: a fresh head outputs ~0, far from scores like STS-B's 0-5, and with MSE the first
        epoch then goes into shifting the output (1 epoch of STS-B: Pearson 0.29 from 0, 0.80 from the mean)."""
        return targets.double().mean().reshape(1).float()

    def metrics(self, stage: str) -> Metric:
        metrics: dict[str, Metric] = {"mse": _flat(MeanSquaredError)}
        if stage != "train":  # correlations keep every prediction: evaluation only
            metrics.update(pearson=_flat(PearsonCorrCoef), spearman=_flat(SpearmanCorrCoef))
        return MetricCollection(metrics, prefix=f"{stage}/")

    def metric_keys(self, stage: str = "val") -> list[str]:
        return [f"{stage}/{name}" for name in (("mse",) if stage == "train" else self.metric_names) + ("loss",)]

    def class_counts(self, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
        raise TypeError("a regression target is a score: it has no classes to count")

    def sample_weights(self, targets: torch.Tensor) -> torch.Tensor:
        from sft.errors import ConfigError

        raise ConfigError("data.sampler=balanced draws each class equally often; a regression target is a score "
                          "with no classes: use data.sampler=random.")

    def prediction_rows(self, logits: torch.Tensor, temperature: float = 1.0,
                        thresholds: torch.Tensor | None = None) -> list[dict[str, Any]]:
        return [{self.label_names[0]: value} for value in logits.float().reshape(-1).tolist()]

    def not_applicable(self, section: str) -> str | None:
        return REASONS.get(section)


REASONS = {
    "calibration": "calibration measures class probabilities; a regression model predicts a score, not a class "
                   "(the performance section plots predicted against true scores, and the residuals).",
    "attributions": "the attributions explain a predicted class and choose examples by confidence; a regression "
                    "model has neither.",
    "faithfulness": "the deletion test measures how fast the predicted class's probability falls; a regression "
                    "model predicts a score.",
    "robustness": "the perturbations are scored by accuracy and flips of the predicted class; a regression model "
                  "predicts a score.",
    "representation": "the representation map colours each point by its class; a regression target is a score.",
}


def _flat(metric: type[Metric]) -> Metric:
    """``metric`` fed (N, 1) outputs as (N,)."""

    class Flat(metric):
        def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
            super().update(preds.float().reshape(-1), target.float().reshape(-1))

    return Flat()
