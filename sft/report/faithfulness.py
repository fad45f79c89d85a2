"""Faithfulness: do the attributions point at what the model actually uses, better than chance?

For ``examples`` test examples (a seeded sample, in split order; target = the class the model predicts), the units
(text: tokens, never [CLS]/[SEP]; images: square patches of about 1/14 of the side, 16 px at 224) are
ranked by attribution (the method configured in ``report.attributions``) and by ``random_repeats`` seeded
random orders. Removing a unit deletes the token from the sequence (ERASER) or sets the patch to 0 in
normalised space (the dataset's mean colour). Reported, each for attribution and random:

    deletion curve   p(predicted class) after removing the top f of the units, f = 0, 1/k, ..., 1
    insertion curve  p(predicted class) with only the top f of the units present
    comprehensiveness  mean over ``fractions`` of p(x) - p(x without its top f)   (higher = more faithful)
    sufficiency        mean over ``fractions`` of p(x) - p(only the top f of x)  (lower = more faithful)

The attributions beat random when both comprehensiveness is higher and sufficiency lower than random's, each
by more than two standard errors of the per-example (paired) margin and by at least ``MIN_MARGIN``.
Every perturbed input is distinct and evaluated once, many per forward pass.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from sft.data.batching import length_batches
from sft.errors import ConfigError, DataError
from sft.inference import chunks, outputs
from sft.report.attribution_base import attribution_settings, check_method
from sft.report.attribution_image import image_attribution_maps, image_logits_forward, patch_size
from sft.report.attribution_text import (
    pad_batch,
    pad_id,
    segment_separator,
    special_token_mask,
    text_probability_forward,
    text_scores_for,
)
from sft.report.figures import curves_figure
from sft.report.htmlparts import MISSING, esc, how, img, is_num, num, side_by_side, table
from sft.report.representation import sample_indices

DEFAULTS: dict[str, Any] = {"examples": 16, "fractions": [0.1, 0.2, 0.5], "curve_points": 10, "random_repeats": 3}
ATTRIBUTION_KEYS = ("method", "image_method", "n_steps", "internal_batch_size", "n_samples")
MIN_MARGIN = 0.005  # of probability: smaller gains over random are not called better
TEXT_BATCH = 64   # perturbed texts per forward
IMAGE_BATCH = 32  # perturbed images per forward
GRAD_CAM_BATCH = 8  # images explained per Grad-CAM call

Request = tuple[int, torch.Tensor]  # (example, which units are present: bool over the example's units)


# ---------------------------------------------------------------------- settings
def check_settings(settings: dict[str, Any] | None) -> dict[str, Any]:
    """Early check of ``report.faithfulness`` (before training), attribution overrides included."""
    merged = faithfulness_settings(settings)
    attribution_settings({k: merged[k] for k in ATTRIBUTION_KEYS if k in merged}, where="report.faithfulness")
    return merged


def faithfulness_settings(settings: dict[str, Any] | None) -> dict[str, Any]:
    merged = {**DEFAULTS, **{k: v for k, v in (settings or {}).items() if v is not None}}
    for key in ("examples", "curve_points", "random_repeats"):
        value = merged[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"report.faithfulness.{key}={value!r} must be an integer >= 1.")
    fractions = merged["fractions"]
    if isinstance(fractions, (str, bytes)) or not isinstance(fractions, Sequence) or not fractions or any(
            isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1 for f in fractions):
        raise ConfigError(f"report.faithfulness.fractions={fractions!r} must be a non-empty list of numbers in "
                          "(0, 1], e.g. [0.1, 0.2, 0.5].")
    merged["fractions"] = [float(f) for f in fractions]
    return merged


def units_removed(fraction: float, n_units: int) -> int:
    """How many of ``n_units`` the top ``fraction`` is (rounded half up)."""
    return min(n_units, int(math.floor(fraction * n_units + 0.5)))


# ---------------------------------------------------------------------- scoring, whatever the modality
def score_rankings(n_units: list[int], rankings: list[list[torch.Tensor]], fractions: list[float],
                   curve_fractions: list[float], probability_of: Callable[[list[Request]], torch.Tensor]
                   ) -> dict[str, Any]:
    """Deletion / insertion curves and ERASER scores. ``rankings[e]`` = [attribution order, random order, ...]
    of example e (each a permutation of its units, most important first); ``probability_of(requests)`` gives
    p(original predicted class) of each perturbed input. Random orders are averaged per example first."""
    index: dict[tuple[int, bytes], int] = {}
    requests: list[Request] = []

    def request(example: int, present: torch.Tensor) -> int:
        key = (example, present.numpy().tobytes())
        if key not in index:
            index[key] = len(requests)
            requests.append((example, present))
        return index[key]

    wanted = sorted(set(curve_fractions) | set(fractions))
    plans = []  # per example: (full input, per order: {fraction: (deleted, inserted)})
    for example, orders in enumerate(rankings):
        units = n_units[example]
        full = request(example, torch.ones(units, dtype=torch.bool))
        per_order = []
        for order in orders:
            points = {}
            for fraction in wanted:
                top = order[: units_removed(fraction, units)]
                deleted = torch.ones(units, dtype=torch.bool)
                deleted[top] = False
                inserted = torch.zeros(units, dtype=torch.bool)
                inserted[top] = True
                points[fraction] = (request(example, deleted), request(example, inserted))
            per_order.append(points)
        plans.append((full, per_order))
    probs = probability_of(requests).double().numpy()
    # table[e, o, j, 0 / 1]: p after deleting / with only the top wanted[j] of example e under order o
    table = np.array([[[probs[list(points[f])] for f in wanted] for points in per_order] for _, per_order in plans])
    original = probs[[full for full, _ in plans]][:, None]
    by_ranking = {"attribution": table[:, 0], "random": table[:, 1:].mean(1)}  # random: repeats averaged
    curve_cols = [wanted.index(f) for f in curve_fractions]
    eraser_cols = [wanted.index(f) for f in fractions]
    result: dict[str, Any] = {
        "comprehensiveness": {k: float((original - t[:, eraser_cols, 0]).mean()) for k, t in by_ranking.items()},
        "sufficiency": {k: float((original - t[:, eraser_cols, 1]).mean()) for k, t in by_ranking.items()},
    }
    for name, which in (("deletion", 0), ("insertion", 1)):
        attr_curve = [float(v) for v in by_ranking["attribution"][:, curve_cols, which].mean(0)]
        random_curve = [float(v) for v in by_ranking["random"][:, curve_cols, which].mean(0)]
        result[name] = {"fractions": list(curve_fractions), "attribution": attr_curve, "random": random_curve,
                        "auc_attribution": float(np.trapezoid(attr_curve, curve_fractions)),
                        "auc_random": float(np.trapezoid(random_curve, curve_fractions))}
    # Per example, how much better than random (paired: same example, same fractions); > 0 = better.
    attr, rand = by_ranking["attribution"][:, eraser_cols], by_ranking["random"][:, eraser_cols]
    result["margins"] = {"comprehensiveness": _mean_stderr((rand[..., 0] - attr[..., 0]).mean(1)),
                         "sufficiency": _mean_stderr((attr[..., 1] - rand[..., 1]).mean(1))}
    result["perturbed_inputs"] = len(requests)
    return result


def _mean_stderr(values: np.ndarray) -> dict[str, float]:
    n = len(values)
    stderr = float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else float("inf")
    return {"mean": float(values.mean()), "stderr": stderr}


def rankings_for(scores: list[torch.Tensor], repeats: int, seed: int) -> list[list[torch.Tensor]]:
    """Per example: units by descending score (ties: first unit first), then ``repeats`` random orders
    from one generator seeded with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return [[torch.argsort(s.float(), descending=True, stable=True)]
            + [torch.randperm(len(s), generator=generator) for _ in range(repeats)] for s in scores]


def verdict(method: str, unit: str, result: dict[str, Any]) -> str:
    comp, suff = result["comprehensiveness"], result["sufficiency"]
    units = "patches" if unit == "patch" else f"{unit}s"
    numbers = (f"removing the top-ranked {units} lowers the predicted-class probability by {comp['attribution']:.3f} "
               f"on average against {comp['random']:.3f} for random {units} (comprehensiveness), and keeping only "
               f"them leaves it {suff['attribution']:.3f} below the original against {suff['random']:.3f} for "
               "random ones (sufficiency)")
    if result["beats_random"]:
        return f"The {method} attributions beat a random ranking: {numbers}."
    return (f"The {method} attributions do not clearly beat a random ranking (each margin must exceed two "
            f"standard errors over the {result['n']} examples and {MIN_MARGIN}): {numbers}.")


# ---------------------------------------------------------------------- text
def class_probabilities(model: Any, sequences: list[torch.Tensor], pad: int, separator: int | None = None
                        ) -> torch.Tensor:
    """Class probabilities (N, C) of token id sequences of different lengths, batched by length (little
    padding); ``separator``: a sentence pair's [SEP] id, for its segment ids (:func:`segment_separator`)."""
    forward = text_probability_forward(model, separator)
    loader = DataLoader(sequences, batch_sampler=length_batches([len(seq) for seq in sequences], TEXT_BATCH),
                        collate_fn=lambda chunk: dict(zip(("input_ids", "attention_mask"), pad_batch(chunk, pad), strict=True)))
    device = next(model.parameters()).device
    return outputs(model, loader, lambda b: forward(b["input_ids"], b["attention_mask"]), device=device).logits.double()


def _text_scores(ctx: Any, encoded: list[torch.Tensor], targets: list[int], indices: list[int], method: str,
                 settings: dict[str, Any]) -> list[torch.Tensor]:
    """Per-token scores of each example (aligned with ``encoded``), reusing the attributions section's."""
    shared = ctx.extras.get("attributions") or {}
    known = shared.get("scores", {}) if shared.get("method") == method and shared.get("settings") == settings else {}
    scores: list[torch.Tensor | None] = [None] * len(encoded)
    for row, index in enumerate(indices):
        cached = known.get(index)
        if cached is not None and cached[0] == targets[row] and len(cached[1]) == len(encoded[row]):
            scores[row] = cached[1]
    todo = [row for row, s in enumerate(scores) if s is None]
    computed, _ = text_scores_for(ctx.model, ctx.tokenizer, [encoded[r] for r in todo], [targets[r] for r in todo],
                                  method, settings)
    for row, row_scores in zip(todo, computed, strict=True):
        scores[row] = row_scores
    return [s for s in scores if s is not None]


def text_faithfulness(ctx: Any, indices: list[int], method: str, attr_settings: dict[str, Any],
                      settings: dict[str, Any]) -> dict[str, Any]:
    model, tokenizer = ctx.model, ctx.tokenizer
    texts = ctx.texts()
    encoded = [ctx.encode([texts[i]])["input_ids"][0].cpu() for i in indices]
    pad, separator = pad_id(tokenizer), segment_separator(model, tokenizer)
    full = class_probabilities(model, encoded, pad, separator)
    targets = [int(p.argmax()) for p in full]
    content = [torch.nonzero(~special_token_mask(tokenizer, ids[None], torch.ones_like(ids[None]))[0]).reshape(-1)
               for ids in encoded]
    keep = [row for row in range(len(indices)) if len(content[row]) > 0]
    scores = _text_scores(ctx, [encoded[r] for r in keep], [targets[r] for r in keep], [indices[r] for r in keep],
                          method, attr_settings)
    unit_scores = [s[content[r]] for s, r in zip(scores, keep, strict=True)]

    def probability_of(requests: list[Request]) -> torch.Tensor:
        sequences, request_targets = [], []
        for example, present in requests:
            row = keep[example]
            drop = torch.zeros(len(encoded[row]), dtype=torch.bool)
            drop[content[row][~present]] = True
            sequences.append(encoded[row][~drop])  # ERASER: removed tokens leave the sequence
            request_targets.append(targets[row])
        probs = class_probabilities(model, sequences, pad, separator)
        return probs[torch.arange(len(requests)), torch.tensor(request_targets)]

    return _finish(method, "token", unit_scores, settings, ctx.seed, probability_of,
                   skipped=len(indices) - len(keep))


# ---------------------------------------------------------------------- images
def patch_scores(signed_map: torch.Tensor, size: int) -> torch.Tensor:
    """Sum of a (H, W) map over each size x size patch (edge patches may be smaller), row-major."""
    h, w = signed_map.shape
    grid_h, grid_w = math.ceil(h / size), math.ceil(w / size)
    padded = torch.zeros(grid_h * size, grid_w * size)
    padded[:h, :w] = signed_map
    return padded.view(grid_h, size, grid_w, size).sum((1, 3)).reshape(-1)


def patch_mask(present: torch.Tensor, size: int, height: int, width: int) -> torch.Tensor:
    """(H, W) float mask, 1 where the patch is present (row-major patch order)."""
    grid_h, grid_w = math.ceil(height / size), math.ceil(width / size)
    grid = present.view(grid_h, grid_w).float()
    return grid.repeat_interleave(size, 0).repeat_interleave(size, 1)[:height, :width]


def image_faithfulness(model: Any, pixels: torch.Tensor, method: str, attr_settings: dict[str, Any],
                       settings: dict[str, Any], seed: int, layer: Any = None) -> dict[str, Any]:
    """Faithfulness on normalised images (N, 3, H, W); patches removed = set to 0. ``layer``: the
    Grad-CAM layer (default: from the block map)."""
    device = next(model.parameters()).device
    logits = image_logits_forward(model)
    height, width = pixels.shape[-2:]
    size = patch_size(height, width)
    def probabilities(batches: Any) -> torch.Tensor:
        return outputs(model, batches, lambda b: logits(b["pixel_values"]).softmax(-1), device=device).logits.double()

    full = probabilities(chunks({"pixel_values": pixels}, IMAGE_BATCH))
    targets = full.argmax(-1)
    maps, used = [], method
    group = GRAD_CAM_BATCH if method == "grad_cam" else 1  # IG holds n_steps copies of each image
    for start in range(0, len(pixels), group):
        chunk, _, used = image_attribution_maps(model, pixels[start : start + group], targets[start : start + group],
                                                method, attr_settings, layer)
        maps.append(chunk)
    unit_scores = [patch_scores(m, size) for m in torch.cat(maps)]

    def probability_of(requests: list[Request]) -> torch.Tensor:
        def masked() -> Any:
            for start in range(0, len(requests), IMAGE_BATCH):
                chunk = requests[start : start + IMAGE_BATCH]
                yield {"pixel_values": torch.stack([pixels[e].cpu() * patch_mask(p, size, height, width) for e, p in chunk])}

        probs = probabilities(masked())
        return probs[torch.arange(len(requests)), targets[[e for e, _ in requests]]]

    result = _finish(used, "patch", unit_scores, settings, seed, probability_of, skipped=0)
    result["patch_size"] = size
    return result


# ---------------------------------------------------------------------- section
def _finish(method: str, unit: str, unit_scores: list[torch.Tensor], settings: dict[str, Any], seed: int,
            probability_of: Callable[[list[Request]], torch.Tensor], skipped: int) -> dict[str, Any]:
    points = settings["curve_points"]
    curve_fractions = [i / points for i in range(points + 1)]
    notes = [f"{skipped} example(s) without any {unit} to remove were left out."] if skipped else []
    if not unit_scores:
        raise DataError(f"report.faithfulness: none of the scored test examples has a {unit} to remove.")
    rankings = rankings_for(unit_scores, settings["random_repeats"], seed)
    scored = score_rankings([len(s) for s in unit_scores], rankings, settings["fractions"], curve_fractions,
                            probability_of)
    result = {"method": method, "unit": unit, "n": len(unit_scores), "fractions": settings["fractions"],
              "comprehensiveness": scored["comprehensiveness"], "sufficiency": scored["sufficiency"],
              "deletion": scored["deletion"], "insertion": scored["insertion"],
              "random_repeats": settings["random_repeats"], "perturbed_inputs": scored["perturbed_inputs"],
              "notes": notes}
    # Better than random on both scores by more than noise: a paired margin above two standard errors over
    # the examples, and above MIN_MARGIN of probability (a constant model has margins of ~1e-7).
    result["margins"] = scored["margins"]
    result["beats_random"] = all(m["mean"] > max(2 * m["stderr"], MIN_MARGIN) for m in scored["margins"].values())
    result["verdict"] = verdict(method, unit, result)
    return result


def _attribution_config(ctx: Any, settings: dict[str, Any]) -> dict[str, Any]:
    """The attributions section's settings (as it ran, else the defaults), overridden by any attribution
    keys given to this section."""
    shared = dict((ctx.extras.get("attributions") or {}).get("settings") or {})
    shared.update({k: settings[k] for k in ATTRIBUTION_KEYS if k in settings})
    return attribution_settings(shared)


def section(ctx: Any, settings: dict[str, Any]) -> dict[str, Any]:
    """Faithfulness of the configured attribution method on a seeded sample of the split (module docstring)."""
    start = time.perf_counter()
    settings = faithfulness_settings(settings)
    attr_settings = _attribution_config(ctx, settings)
    # A seeded sample over the whole split: image folders list one class after the other, so the first N
    # would often be a single class.
    indices = sample_indices(len(ctx.test.labels), settings["examples"], ctx.seed)
    with torch.random.fork_rng(devices=[]):  # lime / kernel_shap sample: reproducible, global RNG untouched
        torch.manual_seed(ctx.seed)
        if ctx.modality == "text":
            method = check_method(attr_settings["method"], "text")
            result = text_faithfulness(ctx, indices, method, attr_settings, settings)
        else:
            method = check_method(attr_settings["image_method"], "image", "report.attributions.image_method")
            result = image_faithfulness(ctx.model, ctx.pixels(indices), method, attr_settings, settings, ctx.seed)
    result["indices"] = indices
    result["seconds"] = round(time.perf_counter() - start, 3)
    return result


# -------------------------------------------------------------------------------------------- page

TITLE = "Faithfulness of the attributions"
HOW = """Do the attributions point at what the model really uses? Each test example is changed
    by removing (deletion) or keeping only (insertion) the {unit}s ranked most important, and the model's
    score for its original prediction is measured again; the same with {unit}s picked at random. Faithful
    attributions make the score fall faster than random under deletion (lower area under the curve) and
    rise faster under insertion (higher area). Comprehensiveness is the score drop when the top {unit}s
    are removed (higher is better); sufficiency the drop when only they are kept (lower is better),
    averaged over the fractions {fractions}."""


def render(data: dict[str, Any]) -> str:
    comp, suff = data.get("comprehensiveness") or {}, data.get("sufficiency") or {}

    def score_row(name: str, scores: dict[str, Any], higher_is_better: bool) -> list[str]:
        a, r = scores.get("attribution"), scores.get("random")
        better = MISSING
        if is_num(a) and is_num(r):
            better = "yes" if (a > r if higher_is_better else a < r) else "no"
        return [name, num(a), num(r), better]

    scores = table(["score", "attribution", "random", "attribution better?"], [
        score_row("comprehensiveness (higher is better)", comp, higher_is_better=True),
        score_row("sufficiency (lower is better)", suff, higher_is_better=False),
    ])
    unit = str(data.get("unit") or "unit")
    curves = [(name, data[name]) for name in ("deletion", "insertion") if isinstance(data.get(name), dict)]
    figure = img(curves_figure(curves, unit), "deletion and insertion curves") if curves else ""
    fractions = ", ".join(num(f, 2) for f in data.get("fractions") or [])
    summary = data.get("verdict")
    meta = (f'<p class="meta">method: <code>{esc(data.get("method"))}</code> · {num(data.get("n"))} '
            f"examples · unit: {esc(unit)}</p>")
    return (how(HOW, unit=esc(unit), fractions=fractions) + meta
            + (f"<p><b>{esc(summary)}</b></p>" if summary else "") + side_by_side(scores, figure))


def summary(data: dict[str, Any]) -> list[tuple[str, str]]:
    """The page's headline verdict from this section."""
    beats = data.get("beats_random")
    return [("attributions", MISSING if beats is None else "beats random" if beats else "does not beat random")]
