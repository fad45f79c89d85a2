"""Calibration: do the model's confidences match how often it is right?

Everything here is *top-label* calibration: the confidence of an example is its largest softmax
probability, and it is "correct" when that class is the label. We compute this ourselves rather than
with torchmetrics' *binary* calibration error, which compares P(class 1) with the label (a different
quantity: a 2-class model that says P(1) = 0.1 and is right is perfectly calibrated top-label, but
counts as confident-and-wrong there).

Binning: ``n_bins`` equal-width bins on [0, 1]; bin ``i`` holds confidences in
``[i / n_bins, (i + 1) / n_bins)`` and the last bin is closed, so a confidence of exactly 1.0 lands in
it. This is torchmetrics' ``bucketize(conf, linspace(0, 1, n_bins + 1), right=True) - 1`` for every
confidence below 1.0; torchmetrics (1.9) sends 1.0 itself to an extra, (n_bins + 1)-th bin of its own,
which we clamp into the last bin so there are exactly ``n_bins`` bins to report.

Temperature scaling (Guo et al., 2017) divides the logits by one scalar ``T > 0`` fitted on the
validation split to minimise the NLL; it changes confidences but never the argmax, so accuracy is
unchanged. The report fits ``T`` on val and measures "after" on test, so the fit never sees the
examples it is judged on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from sft.errors import ConfigError, DataError
from sft.report.figures import reliability_figure
from sft.report.htmlparts import MISSING, box, esc, get_in, how, img, is_num, num, side_by_side, table

DEFAULT_N_BINS = 15


class TemperatureUndetermined(ValueError):
    """No finite positive temperature minimises the NLL on the given logits (the message says why)."""


# ---------------------------------------------------------------------------------------------- checks
def _checked(scores: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C) scores and (N,) labels as CPU float64 / int64; raises ValueError on bad shapes or labels."""
    if scores.ndim != 2:
        raise ValueError(f"expected (N, C) probabilities or logits, got shape {tuple(scores.shape)}")
    if labels.ndim != 1 or labels.shape[0] != scores.shape[0]:
        raise ValueError(f"expected ({scores.shape[0]},) labels, got shape {tuple(labels.shape)}")
    if scores.shape[0] == 0:
        raise ValueError("no examples: calibration needs at least one prediction")
    labels = labels.detach().cpu().long()
    if labels.min() < 0 or labels.max() >= scores.shape[1]:
        raise ValueError(f"labels must lie in [0, {scores.shape[1]}); got {labels.min()}..{labels.max()}")
    # float64: a few thousand float32 probabilities summed into bins lose digits the tests can see.
    return scores.detach().cpu().double(), labels


def _n_bins_checked(n_bins: Any) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ConfigError(f"report.calibration.n_bins={n_bins!r} must be an integer >= 1 "
                          f"(e.g. report.calibration.n_bins={DEFAULT_N_BINS}).")
    return n_bins


def top_label(probs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(confidence, correct): the largest probability of each row and whether its class is the label."""
    probs, labels = _checked(probs, labels)
    confidences, predictions = probs.max(dim=-1)
    return confidences, predictions.eq(labels)


# ---------------------------------------------------------------------------------------------- metrics
def reliability_bins(confidences: torch.Tensor, correct: torch.Tensor, n_bins: int = DEFAULT_N_BINS) -> list[dict]:
    """Equal-width bins over top-label confidence (see the module docstring for the edges).

    Each bin: ``{"lower", "upper", "count", "confidence", "accuracy"}``; ``confidence`` and ``accuracy``
    are the bin's means, ``None`` for an empty bin.
    """
    n_bins = _n_bins_checked(n_bins)
    confidences = confidences.detach().cpu().double().reshape(-1)
    correct = correct.detach().cpu().double().reshape(-1)
    if confidences.shape != correct.shape:
        raise ValueError(f"confidences {tuple(confidences.shape)} and correct {tuple(correct.shape)} differ")
    if len(confidences) and (confidences.min() < 0 or confidences.max() > 1):
        raise ValueError("confidences must lie in [0, 1] (pass probabilities, not logits)")
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    index = (torch.bucketize(confidences, edges, right=True) - 1).clamp(0, n_bins - 1)
    counts = torch.bincount(index, minlength=n_bins)
    confidence_sums = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, index, confidences)
    correct_sums = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, index, correct)
    bins = []
    for i in range(n_bins):
        count = int(counts[i])
        bins.append({
            "lower": float(edges[i]),
            "upper": float(edges[i + 1]),
            "count": count,
            "confidence": float(confidence_sums[i] / count) if count else None,
            "accuracy": float(correct_sums[i] / count) if count else None,
        })
    return bins


def _bin_gaps(bins: list[dict]) -> tuple[list[float], list[int]]:
    """|accuracy - confidence| and count of every non-empty bin."""
    filled = [b for b in bins if b["count"]]
    return [abs(b["accuracy"] - b["confidence"]) for b in filled], [b["count"] for b in filled]


def _ece_from_bins(bins: list[dict]) -> float:
    gaps, counts = _bin_gaps(bins)
    return float(sum(g * c for g, c in zip(gaps, counts, strict=True)) / sum(counts)) if counts else 0.0


def _mce_from_bins(bins: list[dict]) -> float:
    gaps, _ = _bin_gaps(bins)
    return float(max(gaps)) if gaps else 0.0


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = DEFAULT_N_BINS) -> float:
    """Top-label ECE: sum over bins of (count / N) * |accuracy - mean confidence|. ``probs`` is (N, C)."""
    return _ece_from_bins(reliability_bins(*top_label(probs, labels), n_bins))


def max_calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = DEFAULT_N_BINS) -> float:
    """Top-label MCE: the largest |accuracy - mean confidence| over the non-empty bins."""
    return _mce_from_bins(reliability_bins(*top_label(probs, labels), n_bins))


def negative_log_likelihood(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean -log softmax(logits)[label], via log_softmax (no log(0) for very confident logits)."""
    logits, labels = _checked(logits, labels)
    return float(F.cross_entropy(logits, labels))


def brier_score(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Multiclass Brier score: mean over examples of sum_k (p_k - onehot(label)_k)^2.

    Range [0, 2]; 0 is a perfect, certain model, a uniform C-class guess scores 1 - 1/C. (Some define it
    divided by C, or on P(class 1) only for binary tasks; this is Brier's original multiclass form.)
    """
    probs, labels = _checked(probs, labels)
    onehot = F.one_hot(labels, probs.shape[1]).double()
    return float(((probs - onehot) ** 2).sum(dim=1).mean())


def calibration_summary(logits: torch.Tensor, labels: torch.Tensor, n_bins: int = DEFAULT_N_BINS) -> dict:
    """The report's CAL dict: ece, mce, nll, brier, accuracy, n and the reliability bins."""
    logits, labels = _checked(logits, labels)
    probs = logits.softmax(dim=-1)
    confidences, correct = top_label(probs, labels)
    bins = reliability_bins(confidences, correct, n_bins)
    return {
        "ece": _ece_from_bins(bins),
        "mce": _mce_from_bins(bins),
        "nll": negative_log_likelihood(logits, labels),
        "brier": brier_score(probs, labels),
        "accuracy": float(correct.double().mean()),
        "n": int(len(labels)),
        "bins": bins,
    }


# ---------------------------------------------------------------------------------------------- temperature
def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 100,
                    tolerance: float = 1e-7) -> tuple[float, dict]:
    """The temperature T > 0 minimising mean NLL of ``softmax(logits / T)``, and how the fit went.

    LBFGS (strong-Wolfe line search) on log T, so T stays positive; stops when |dNLL/dlog T| <=
    ``tolerance``, when the NLL stops changing, or after ``max_iter`` iterations. Returns
    ``(T, {"iterations", "converged", "gradient", "nll_before", "nll_after"})``; ``converged`` is true when
    the final gradient is within ``10 * tolerance`` of zero.

    Raises :class:`TemperatureUndetermined` when no finite T > 0 is optimal. With beta = 1/T the NLL is
    convex in beta and its slope is mean(E_p[z] - z_label), so (checked before fitting):
      * empty input, or every row's logits equal: softmax is the same at every T;
      * every label has its row's highest logit (e.g. one correctly classified example, or a val split
        the model fits perfectly): the slope stays < 0, NLL keeps falling as T -> 0;
      * mean(mean_k z_k - z_label) >= 0: the logits rank the label no better than average, the slope at
        beta = 0 is >= 0 and NLL is lowest as T -> infinity (uniform probabilities).
    """
    if max_iter < 1:
        raise ValueError(f"max_iter={max_iter} must be >= 1")
    if logits.ndim == 2 and logits.shape[0] == 0:
        raise TemperatureUndetermined("the split is empty: there is nothing to fit a temperature on")
    logits, labels = _checked(logits, labels)
    n = len(labels)
    rows = torch.arange(n)
    label_logits = logits[rows, labels]
    if bool((logits == logits[:, :1]).all()):
        raise TemperatureUndetermined(
            f"all logits are equal within each of the {n} examples: the probabilities are uniform at every "
            "temperature, so there is nothing to fit")
    if bool((logits.max(dim=-1).values == label_logits).all()):
        raise TemperatureUndetermined(
            f"every one of the {n} examples has its label's logit highest: the NLL keeps falling as T -> 0, so "
            "no finite temperature is optimal (a larger validation split with some errors is needed)")
    if float((logits.mean(dim=-1) - label_logits).mean()) >= 0:
        raise TemperatureUndetermined(
            f"on these {n} examples the label's logit is on average no higher than the mean logit: the NLL is "
            "lowest as T -> infinity (uniform probabilities), so no finite temperature is optimal")

    log_temperature = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_temperature], lr=1.0, max_iter=max_iter, max_eval=max_iter * 4,
                                  tolerance_grad=tolerance, tolerance_change=1e-14, history_size=20,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_temperature.exp(), labels)
        loss.backward()
        return loss

    nll_before = float(F.cross_entropy(logits, labels))
    optimizer.step(closure)
    final_nll = closure()  # also leaves the gradient at the final point in .grad
    gradient = float(log_temperature.grad)
    temperature = float(log_temperature.detach().exp())
    return temperature, {
        "iterations": int(optimizer.state[log_temperature].get("n_iter", 0)),
        "converged": abs(gradient) <= 10 * tolerance,
        "gradient": gradient,
        "nll_before": nll_before,
        "nll_after": float(final_nll.detach()),
    }


# ---------------------------------------------------------------------------------------------- section
def check_settings(settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """Early check of ``report.calibration`` (before training)."""
    return {"n_bins": _n_bins_checked(dict(settings or {}).get("n_bins", DEFAULT_N_BINS))}


def section(ctx: Any, settings: Mapping[str, Any] | None = None) -> dict:
    """Calibration of the test logits, before and (with a val split) after temperature scaling.

    ``settings`` is ``cfg.report.calibration``: ``n_bins`` (default 15).
    """
    settings = dict(settings or {})
    n_bins = _n_bins_checked(settings.get("n_bins", DEFAULT_N_BINS))
    test = ctx.test
    if len(test.labels) == 0:
        raise DataError("The test split has no examples: there are no predictions to calibrate.")
    result: dict[str, Any] = {
        "n_bins": n_bins,
        "before": calibration_summary(test.logits, test.labels, n_bins),
        "after": None,
        "temperature": None,
        "fit": None,
    }
    if ctx.val is None:
        result["note"] = "No validation split: temperature scaling needs held-out logits to fit T on."
        return result
    n_val = int(len(ctx.val.labels))
    try:
        temperature, info = fit_temperature(ctx.val.logits, ctx.val.labels)
    except TemperatureUndetermined as err:
        result["fit"] = {"split": "val", "n": n_val, "iterations": 0, "converged": False}
        result["note"] = f"Temperature scaling not applied: {err}."
        return result
    result["temperature"] = temperature
    result["fit"] = {"split": "val", "n": n_val, **info}
    result["after"] = calibration_summary(test.logits / temperature, test.labels, n_bins)
    if getattr(ctx, "val_is_evaluated", False):  # e.g. an image folder without test/: test is val
        result["after_in_sample"] = True
        result["note"] = ("The temperature was fitted on these same examples (the validation split is the "
                          "evaluated split), so 'after' is optimistic: it is not evidence of better calibration.")
    return result


# -------------------------------------------------------------------------------------------- page

TITLE = "Calibration"
HOW = """Calibration asks whether confidence means what it says: of the predictions made with
    80 % confidence, about 80 % should be right. ECE is the average gap between confidence and accuracy
    over {n_bins} confidence bins (lower is better, 0 is perfect); MCE the worst bin. NLL and Brier score
    the probabilities themselves (lower is better). Temperature scaling divides the logits by one number
    fitted on the validation split: it changes confidence, never the predicted class. In the reliability
    diagram bars on the diagonal are perfectly calibrated, bars below it mean over-confidence; the small
    histogram shows how many predictions fall in each bin."""


def render(data: dict[str, Any]) -> str:
    before, after = data.get("before") or {}, data.get("after")
    metrics = [("ece", "ECE (expected calibration error)"), ("mce", "MCE (maximum calibration error)"),
               ("nll", "NLL (negative log-likelihood)"), ("brier", "Brier score"), ("accuracy", "accuracy")]
    if after:
        rows = []
        for key, label in metrics:
            b, a = before.get(key), after.get(key)
            change = f"{a - b:+.3f}" if is_num(a) and is_num(b) else MISSING
            rows.append([esc(label), num(b), num(a), change])
        scores = table(["metric", "before", "after scaling", "change"], rows)
    else:
        scores = table(["metric", "value"], [[esc(label), num(before.get(key))] for key, label in metrics])

    fit, temperature = data.get("fit"), data.get("temperature")
    fit_text = ""
    if temperature is not None:
        fit_text = f"<p>Temperature <b>{num(temperature, 3)}</b>"
        if isinstance(fit, dict):
            fit_text += (f", fitted on {esc(fit.get('split'))} ({num(fit.get('n'))} examples, "
                         f"{num(fit.get('iterations'))} iterations, "
                         f"converged: {num(fit.get('converged'))})")
        fit_text += ".</p>"
        if isinstance(fit, dict) and fit.get("converged") is False:
            fit_text += box("warn", "The temperature fit did not converge: "
                                    "treat the scaled numbers with care.")
    if data.get("note"):
        fit_text += box("warn" if data.get("after_in_sample") else "note", esc(data["note"]))
    elif not after:
        fit_text = box("note", "No temperature scaling: no validation outputs to fit it on.")

    figure = ""
    if before.get("bins"):
        panels = [("before", before)] + ([("after temperature scaling", after)] if after else [])
        figure = img(reliability_figure(panels), "reliability diagram")
    return how(HOW, n_bins=num(data.get("n_bins"))) + side_by_side(scores + fit_text, figure)


def summary(data: dict[str, Any]) -> list[tuple[str, str]]:
    """The page's headline numbers from this section."""
    before, after = num(get_in(data, "before", "ece")), num(get_in(data, "after", "ece"))
    return [("ECE before → after", f"{before} → {after}" if data.get("after") else before),
            ("temperature", num(data.get("temperature"), 2))]
