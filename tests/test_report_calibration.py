"""The performance and calibration report sections, checked against hand computations, sklearn,
torchmetrics and scipy (never against numbers taken from the code under test)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from scipy.optimize import brentq, minimize_scalar
from scipy.special import logsumexp
from sklearn import metrics as skm
from torchmetrics.classification import MulticlassCalibrationError

from sft.errors import ConfigError
from sft.inference import Outputs
from sft.report import calibration as cal
from sft.report.context import ReportContext
from sft.report.performance import performance
from sft.report.performance import section as performance_section
from sft.tasks import make_task

# ------------------------------------------------------------------------------------------------ fixtures
# Four 2-class examples, 4 bins of width 0.25 (by hand):
#   A p=[0, 1]      y=1  conf 1.00 correct -> bin 3 (1.0 goes into the closed last bin)
#   B p=[.75, .25]  y=1  conf 0.75 wrong   -> bin 3 (0.75 is a lower edge: it opens bin 3)
#   C p=[.4, .6]    y=1  conf 0.60 correct -> bin 2
#   D p=[.3, .7]    y=0  conf 0.70 wrong   -> bin 2
# bin 2: conf (0.6 + 0.7) / 2 = 0.65, acc 1/2 -> gap 0.15;  bin 3: conf 0.875, acc 1/2 -> gap 0.375
# ECE = 2/4 * 0.15 + 2/4 * 0.375 = 0.2625;  MCE = 0.375
# Brier: A 0, B 0.75^2 + 0.75^2 = 1.125, C 0.4^2 + 0.4^2 = 0.32, D 0.7^2 + 0.7^2 = 0.98 -> mean 2.425 / 4
HAND_PROBS = torch.tensor([[0.0, 1.0], [0.75, 0.25], [0.4, 0.6], [0.3, 0.7]])
HAND_LABELS = torch.tensor([1, 1, 1, 0])


def calibrated_logits(n: int, n_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits whose softmax is the true label distribution (labels are sampled from it): calibrated."""
    generator = torch.Generator().manual_seed(seed)
    logits = 2.0 * torch.randn(n, n_classes, generator=generator)
    labels = torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(1)
    return logits, labels


def numpy_nll(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(logsumexp(logits, axis=1) - logits[np.arange(len(labels)), labels]))


def context(test: Outputs, val: Outputs | None = None, train_labels: torch.Tensor | None = None,
            label_names: list[str] | None = None) -> ReportContext:
    names = label_names or [f"class{i}" for i in range(test.logits.shape[1])]
    # These two sections only read logits and labels: no model or data module is needed.
    return ReportContext(model=None, datamodule=None, label_names=names, test=test, val=val,
                         train_labels=train_labels)


# ------------------------------------------------------------------------------------------------ metrics by hand
def test_ece_mce_brier_by_hand_with_confidence_one_and_a_bin_edge():
    assert cal.expected_calibration_error(HAND_PROBS, HAND_LABELS, n_bins=4) == pytest.approx(0.2625, abs=1e-6)
    assert cal.max_calibration_error(HAND_PROBS, HAND_LABELS, n_bins=4) == pytest.approx(0.375, abs=1e-6)
    assert cal.brier_score(HAND_PROBS, HAND_LABELS) == pytest.approx(2.425 / 4, abs=1e-6)

    bins = cal.reliability_bins(*cal.top_label(HAND_PROBS, HAND_LABELS), n_bins=4)
    assert [(b["lower"], b["upper"]) for b in bins] == [(0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0)]
    assert [b["count"] for b in bins] == [0, 0, 2, 2]
    assert bins[0]["confidence"] is None and bins[0]["accuracy"] is None
    assert bins[2]["confidence"] == pytest.approx(0.65, abs=1e-6) and bins[2]["accuracy"] == 0.5
    assert bins[3]["confidence"] == pytest.approx(0.875, abs=1e-6) and bins[3]["accuracy"] == 0.5


def test_bin_edges_lower_edge_opens_a_bin_and_one_closes_the_last():
    confidences = torch.tensor([0.0, 0.25, 0.2499, 0.5, 0.999, 1.0])
    bins = cal.reliability_bins(confidences, torch.ones(6, dtype=torch.bool), n_bins=4)
    assert [b["count"] for b in bins] == [2, 1, 1, 2]
    one_bin = cal.reliability_bins(confidences, torch.zeros(6, dtype=torch.bool), n_bins=1)
    assert one_bin[0]["count"] == 6 and one_bin[0]["accuracy"] == 0.0
    with pytest.raises(ValueError, match="logits"):
        cal.reliability_bins(torch.tensor([1.5]), torch.tensor([True]), n_bins=4)


def test_nll_by_hand_and_stable_for_huge_logits():
    logits = torch.tensor([[0.0, math.log(3.0)], [1000.0, 0.0]])
    labels = torch.tensor([1, 1])
    # p(label) = 3/4 for the first; the second is -log softmax = 1000 (finite, no log(0)).
    expected = (-math.log(0.75) + 1000.0) / 2
    assert cal.negative_log_likelihood(logits, labels) == pytest.approx(expected, rel=1e-9)
    three = torch.tensor([[2.0, 0.0, 0.0]])
    assert cal.negative_log_likelihood(three, torch.tensor([0])) == pytest.approx(math.log(1 + 2 * math.exp(-2)))
    assert cal.negative_log_likelihood(three, torch.tensor([2])) == pytest.approx(math.log(math.exp(2) + 2))


def test_summary_matches_sklearn_and_torchmetrics_on_random_three_class_data():
    generator = torch.Generator().manual_seed(3)
    logits = 1.5 * torch.randn(600, 3, generator=generator)
    labels = torch.randint(0, 3, (600,), generator=generator)
    probs = logits.softmax(-1)
    for n_bins in (1, 7, 15):
        summary = cal.calibration_summary(logits, labels, n_bins)
        ece = MulticlassCalibrationError(num_classes=3, n_bins=n_bins, norm="l1")(probs, labels)
        mce = MulticlassCalibrationError(num_classes=3, n_bins=n_bins, norm="max")(probs, labels)
        assert summary["ece"] == pytest.approx(float(ece), abs=1e-5)
        assert summary["mce"] == pytest.approx(float(mce), abs=1e-5)
        assert cal.expected_calibration_error(probs, labels, n_bins) == pytest.approx(summary["ece"])
        assert len(summary["bins"]) == n_bins and sum(b["count"] for b in summary["bins"]) == 600
    y, p = labels.numpy(), logits.double().softmax(-1).numpy()
    assert summary["nll"] == pytest.approx(skm.log_loss(y, p, labels=[0, 1, 2]), rel=1e-6)
    assert summary["brier"] == pytest.approx(skm.brier_score_loss(y, p, labels=[0, 1, 2], scale_by_half=False),
                                             rel=1e-6)
    assert summary["accuracy"] == pytest.approx(skm.accuracy_score(y, p.argmax(1)))
    assert summary["ece"] > 0.05  # random labels: the model is confidently wrong, calibration must say so


# ------------------------------------------------------------------------------------------------ temperature
def test_temperature_scaling_fixes_an_over_confident_model():
    val_logits, val_labels = calibrated_logits(4000, 3, seed=0)
    test_logits, test_labels = calibrated_logits(4000, 3, seed=1)
    temperature, info = cal.fit_temperature(5.0 * val_logits, val_labels)
    assert 4.5 < temperature < 5.5, temperature  # the logits were inflated 5x
    assert info["converged"] and info["iterations"] >= 1 and info["nll_after"] < info["nll_before"]

    # The fitted T is the NLL minimiser: scipy finds the same one by a different method.
    x, y = 5.0 * val_logits.double().numpy(), val_labels.numpy()
    best = minimize_scalar(lambda log_t: numpy_nll(x / math.exp(log_t), y), bounds=(-3, 3), method="bounded",
                           options={"xatol": 1e-9})
    assert temperature == pytest.approx(math.exp(best.x), rel=1e-4)

    over = 5.0 * test_logits
    before = cal.calibration_summary(over, test_labels)
    after = cal.calibration_summary(over / temperature, test_labels)
    assert after["nll"] < before["nll"] - 0.3 and after["ece"] < before["ece"]
    assert torch.equal((over / temperature).argmax(-1), over.argmax(-1))
    assert after["accuracy"] == before["accuracy"]


def test_temperature_below_one_for_an_under_confident_model():
    logits, labels = calibrated_logits(4000, 3, seed=2)
    temperature, info = cal.fit_temperature(logits / 3.0, labels)
    assert 0.25 < temperature < 0.45 and info["converged"]


def test_temperature_on_one_wrong_example_solves_the_stationarity_condition():
    # NLL(beta = 1/T) is convex with slope E_p[z] - z_label: the optimum has sum_k p_k z_k = z_label.
    z = np.array([2.0, 1.5, 0.0])

    def slope(beta: float) -> float:
        p = np.exp(beta * z - logsumexp(beta * z))
        return float(p @ z - z[1])

    beta = brentq(slope, 1e-6, 50.0)
    temperature, info = cal.fit_temperature(torch.from_numpy(z[None]), torch.tensor([1]))
    assert temperature == pytest.approx(1 / beta, rel=1e-5) and info["converged"]


@pytest.mark.parametrize(("logits", "labels", "why"), [
    (torch.empty(0, 3), torch.empty(0, dtype=torch.long), "empty"),
    (torch.full((5, 3), 0.7), torch.tensor([0, 1, 2, 0, 1]), "equal"),
    (torch.tensor([[3.0, 1.0, 0.0]]), torch.tensor([0]), "T -> 0"),  # one correct example
    (torch.tensor([[3.0, 1.0], [0.0, 2.0]]), torch.tensor([0, 1]), "T -> 0"),  # a perfectly fit split
    (torch.tensor([[3.0, 1.0], [0.0, 2.0]]), torch.tensor([1, 0]), "T -> infinity"),  # always wrong
])
def test_temperature_undetermined_inputs_raise_a_clear_error(logits, labels, why):
    with pytest.raises(cal.TemperatureUndetermined, match=re.escape(why)):
        cal.fit_temperature(logits, labels)


# ------------------------------------------------------------------------------------------------ section
def test_calibration_section_fits_on_val_and_scores_on_test():
    val_logits, val_labels = calibrated_logits(1500, 3, seed=4)
    test_logits, test_labels = calibrated_logits(1500, 3, seed=5)
    ctx = context(Outputs(4.0 * test_logits, test_labels), val=Outputs(4.0 * val_logits, val_labels))
    result = cal.section(ctx, {"n_bins": 10})
    assert {"n_bins", "before", "after", "temperature", "fit"} <= set(result)
    assert result["n_bins"] == 10 and len(result["before"]["bins"]) == 10
    for summary in (result["before"], result["after"]):
        assert {"ece", "mce", "nll", "brier", "accuracy", "bins"} <= set(summary)
        assert {"lower", "upper", "count", "confidence", "accuracy"} <= set(summary["bins"][0])
    assert result["fit"]["split"] == "val" and result["fit"]["n"] == 1500 and result["fit"]["converged"]
    assert isinstance(result["fit"]["iterations"], int) and 3.0 < result["temperature"] < 5.0
    assert result["after"]["nll"] < result["before"]["nll"]
    assert result["after"]["accuracy"] == result["before"]["accuracy"]
    # "before" is the test split as it is (independently: torchmetrics on the same probabilities).
    tm_ece = MulticlassCalibrationError(num_classes=3, n_bins=10)((4.0 * test_logits).softmax(-1), test_labels)
    assert result["before"]["ece"] == pytest.approx(float(tm_ece), abs=1e-5)


def test_calibration_section_flags_an_in_sample_after_when_val_is_the_evaluated_split():
    logits, labels = calibrated_logits(600, 3, seed=6)
    outputs = Outputs(4.0 * logits, labels)
    ctx = context(outputs, val=outputs)
    ctx.val_is_evaluated = True  # e.g. an image folder without test/: the evaluated split is val itself
    result = cal.section(ctx, {})
    assert result["after"] is not None and result["after_in_sample"] is True
    assert "optimistic" in result["note"]
    assert "after_in_sample" not in cal.section(context(outputs, val=outputs), {})  # separate splits: no flag


def test_calibration_section_without_val_and_with_an_unusable_val():
    logits, labels = calibrated_logits(50, 2, seed=6)
    no_val = cal.section(context(Outputs(logits, labels)), None)
    assert no_val["n_bins"] == 15  # the default when the setting is missing
    assert no_val["after"] is None and no_val["temperature"] is None and no_val["fit"] is None
    perfect_val = Outputs(torch.tensor([[4.0, 0.0], [0.0, 4.0]]), torch.tensor([0, 1]))
    unusable = cal.section(context(Outputs(logits, labels), val=perfect_val), {})
    assert unusable["after"] is None and unusable["temperature"] is None
    assert unusable["fit"]["n"] == 2 and unusable["fit"]["converged"] is False and "T -> 0" in unusable["note"]


@pytest.mark.parametrize("bad", [0, -3, 2.5, "15", True, None])
def test_bad_n_bins_names_the_setting(bad):
    logits, labels = calibrated_logits(20, 2, seed=7)
    with pytest.raises(ConfigError, match=r"report\.calibration\.n_bins"):
        cal.section(context(Outputs(logits, labels)), {"n_bins": bad})


# ------------------------------------------------------------------------------------------------ performance
def test_performance_matches_sklearn_including_never_predicted_and_absent_classes():
    generator = torch.Generator().manual_seed(8)
    names = ["neg", "neu", "pos", "other", "unused"]
    labels = torch.randint(0, 4, (300,), generator=generator)  # class 4 never occurs
    # 60% right, the rest a random class among 0..2: class 3 is never predicted (precision 0/0 -> 0).
    preds = torch.where(torch.rand(300, generator=generator) < 0.6, labels,
                        torch.randint(0, 3, (300,), generator=generator))
    preds[labels == 3] = torch.randint(0, 3, (int((labels == 3).sum()),), generator=generator)
    result = performance(preds, labels, names)

    y, p, classes = labels.numpy(), preds.numpy(), list(range(5))
    precision, recall, f1, support = skm.precision_recall_fscore_support(y, p, labels=classes, zero_division=0)
    assert [row["label"] for row in result["per_class"]] == names and result["labels"] == names
    assert [row["precision"] for row in result["per_class"]] == pytest.approx(precision.tolist())
    assert [row["recall"] for row in result["per_class"]] == pytest.approx(recall.tolist())
    assert [row["f1"] for row in result["per_class"]] == pytest.approx(f1.tolist())
    assert [row["support"] for row in result["per_class"]] == support.tolist()
    assert result["confusion_matrix"] == skm.confusion_matrix(y, p, labels=classes).tolist()
    assert result["accuracy"] == pytest.approx(skm.accuracy_score(y, p))
    # Macro F1 as metrics.json's test/f1 (sft.tasks, torchmetrics): over the classes that occur in the labels
    # or the predictions (sklearn's default); class 4, absent from both, has no F1 to average.
    assert result["macro_f1"] == pytest.approx(skm.f1_score(y, p, average="macro", zero_division=0))
    task = make_task("single_label", [str(c) for c in range(5)])  # metrics.json's test/f1
    assert result["macro_f1"] == pytest.approx(task.split_metrics(torch.nn.functional.one_hot(preds, 5).float(),
                                                                  labels, "test")["test/f1"])
    assert result["n"] == 300 and result["per_class"][3]["precision"] == 0.0


def test_majority_baseline_uses_the_train_labels():
    names = ["a", "b", "c"]
    test_labels = torch.tensor([0, 0, 0, 1, 2, 2])  # test majority: a
    train_labels = torch.tensor([2, 2, 2, 1, 0])  # train majority: c
    result = performance(test_labels, test_labels, names, train_labels)
    baseline = result["majority_baseline"]
    assert baseline["label"] == "c" and baseline["accuracy"] == pytest.approx(2 / 6)
    always_c = np.full(6, 2)
    assert baseline["macro_f1"] == pytest.approx(skm.f1_score(test_labels.numpy(), always_c, labels=[0, 1, 2],
                                                               average="macro", zero_division=0))
    without_train = performance(test_labels, test_labels, names)["majority_baseline"]
    assert without_train["label"] == "a" and without_train["accuracy"] == pytest.approx(3 / 6)


def test_performance_section_reads_the_test_logits():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0], [0.5, 0.0]])  # argmax: 0, 1, 0, 0
    labels = torch.tensor([0, 1, 1, 1])
    ctx = context(Outputs(logits, labels), train_labels=torch.tensor([1, 1, 0]), label_names=["neg", "pos"])
    result = performance_section(ctx, {})
    assert set(result) >= {"n", "labels", "accuracy", "macro_f1", "per_class", "confusion_matrix",
                           "majority_baseline"}
    assert result["confusion_matrix"] == [[1, 0], [2, 1]]  # by hand: row = true, column = predicted
    assert result["accuracy"] == 0.5
    # pos: precision 1/1, recall 1/3 -> F1 = 2 * 1 * (1/3) / (4/3) = 0.5; neg: P 1/3, R 1 -> F1 0.5
    assert result["per_class"][1] == {"label": "pos", "precision": 1.0, "recall": pytest.approx(1 / 3),
                                      "f1": pytest.approx(0.5), "support": 3}
    assert result["majority_baseline"]["label"] == "pos" and result["majority_baseline"]["accuracy"] == 0.75
