"""Attributions: which tokens / pixels pushed selected test predictions toward their predicted class.

Examples are the most confident correct, most confident wrong and least confident test predictions
(:func:`select_examples`); for a tagger, predicted entities, each explained by the predicted tag of its first word
(:func:`select_entities`). Sentence pairs are explained over both segments, with their segment ids. Every method
explains the probability of the predicted class:

text (``report.attributions.method``):
    integrated_gradients  captum LayerIntegratedGradients on the embedding layer; baseline = the input with
                          every non-special token replaced by [PAD] ([CLS]/[SEP] kept). Scores sum (up to
                          the reported convergence delta) to p(x) - p(baseline).
    occlusion             each token replaced by [PAD] in turn: score = p(x) - p(x without it).
    lime / kernel_shap    surrogate fits on ``n_samples`` random subsets of the tokens (removed = [PAD]).
    Special tokens are never perturbed and score 0.
images (``report.attributions.image_method``):
    grad_cam              captum LayerGradCam on the last backbone block (from the block map) on the logit,
                          upsampled to the input size. A ViT has no spatial map: integrated gradients instead.
    integrated_gradients  on the pixels; baseline 0 in normalised space (the dataset's mean colour).
    occlusion             square windows set to 0 in normalised space (the same grid as faithfulness).
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import time
from typing import Any

import torch

from sft.report.attribution_base import attribution_settings, check_method, check_settings
from sft.report.attribution_image import (
    downsample,
    image_attribution_maps,
    image_module,
    png_base64,
    scale_heatmap,
)
from sft.report.attribution_text import text_scores_for
from sft.report.figures import heatmap_figure
from sft.report.htmlparts import box, esc, how, img, is_num, num, side_by_side, sig

__all__ = ["check_settings", "render", "section"]  # check_settings: the registry's early check

KINDS = ("confident_correct", "confident_wrong", "least_confident")


# ---------------------------------------------------------------------- example selection
def select_examples(probs: torch.Tensor, labels: torch.Tensor, per_kind: int) -> list[tuple[str, int]]:
    """Up to ``per_kind`` (kind, index) pairs for each of :data:`KINDS`, by top-label confidence: the most
    confident correct, the most confident wrong, then the least confident among the rest (no index twice).
    A kind gets fewer when there are not enough candidates (e.g. no wrong predictions). Ties: lower index first.
    """
    confidence, preds = probs.float().max(-1)
    correct = (preds == labels.to(preds.device)).tolist()
    conf = confidence.tolist()
    most_first = sorted(range(len(conf)), key=lambda i: (-conf[i], i))
    least_first = sorted(range(len(conf)), key=lambda i: (conf[i], i))
    chosen: list[tuple[str, int]] = []
    used: set[int] = set()
    for kind, candidates in (("confident_correct", [i for i in most_first if correct[i]]),
                             ("confident_wrong", [i for i in most_first if not correct[i]]),
                             ("least_confident", least_first)):
        taken = 0
        for i in candidates:
            if taken >= per_kind:
                break
            if i not in used:
                chosen.append((kind, i))
                used.add(i)
                taken += 1
    return chosen


def entity_candidates(logits: torch.Tensor, labels: torch.Tensor, label_names: list[str]) -> list[dict[str, Any]]:
    """Every entity a tagger predicts: its sentence (``index``), ``span``, whether it is ``correct`` (exactly a true
    entity), the true type of its words (``label``; "none"), and what explaining it means: the probability
    (``confidence``) of the predicted tag ``target`` at the first sub-token (``position``) of its first word.
    ``logits`` (N, L, C), ``labels`` (N, L) with -100 where no word starts."""
    from sft.tasks.token import IGNORE, entity_spans

    probs = logits.float().softmax(-1)
    candidates = []
    for i in range(len(labels)):
        positions = torch.nonzero(labels[i] != IGNORE).reshape(-1)
        predicted = probs[i, positions].argmax(-1)
        pred_tags = [label_names[int(k)] for k in predicted]
        true_spans = entity_spans([label_names[int(k)] for k in labels[i, positions]])
        true_type = {(start, end): kind for kind, start, end in true_spans}
        for span in entity_spans(pred_tags):
            kind, start, end = span
            position, target = int(positions[start]), int(predicted[start])
            candidates.append({"index": i, "span": span, "position": position, "target": target,
                               "confidence": float(probs[i, position, target]), "correct": span in true_spans,
                               "label": true_type.get((start, end), "none"), "pred": kind})
    return candidates


def select_entities(candidates: list[dict[str, Any]], per_kind: int) -> list[dict[str, Any]]:
    """Up to ``per_kind`` of :func:`entity_candidates` for each of :data:`KINDS`: the most confident correct, the
    most confident wrong, the least confident of the rest (no entity twice)."""
    most_first = sorted(candidates, key=lambda c: (-c["confidence"], c["index"], c["span"][1]))
    least_first = sorted(candidates, key=lambda c: (c["confidence"], c["index"], c["span"][1]))
    chosen: list[dict[str, Any]] = []
    used: set[tuple[int, int]] = set()
    for kind, pool in (("confident_correct", [c for c in most_first if c["correct"]]),
                       ("confident_wrong", [c for c in most_first if not c["correct"]]),
                       ("least_confident", least_first)):
        for candidate in [c for c in pool if (c["index"], c["span"][1]) not in used][:per_kind]:
            chosen.append({"kind": kind, **candidate})
            used.add((candidate["index"], candidate["span"][1]))
    return chosen


# ---------------------------------------------------------------------- section
def _selection_notes(chosen: list[tuple[str, int]], per_kind: int, n_wrong: int) -> list[str]:
    notes = []
    counts = {kind: sum(1 for k, _ in chosen if k == kind) for kind in KINDS}
    if per_kind > 0 and n_wrong == 0:
        notes.append("No wrong predictions on the test split, so there are no confident_wrong examples.")
    for kind in KINDS:
        if 0 < per_kind and counts[kind] < per_kind and not (kind == "confident_wrong" and n_wrong == 0):
            notes.append(f"Only {counts[kind]} {kind} example(s) available (asked for {per_kind}).")
    return notes


def _explain_examples(ctx: Any, examples: list[dict[str, Any]], method: str, settings: dict[str, Any],
                      shared: dict[str, Any], used_methods: set[str]) -> None:
    """Fill in tokens / scores / delta (text) or heatmap / image (images) of each example."""
    preds = ctx.test.preds
    indices = [example["index"] for example in examples]
    if ctx.modality == "text":
        texts = ctx.texts()
        sequences = [ctx.encode([texts[index]])["input_ids"][0].cpu() for index in indices]
        targets = [int(preds[index]) for index in indices]
        scores, deltas = text_scores_for(ctx.model, ctx.tokenizer, sequences, targets, method, settings)
        for example, ids, target, row_scores, delta in zip(examples, sequences, targets, scores, deltas, strict=True):
            example.update(tokens=list(ctx.tokenizer.convert_ids_to_tokens(ids.tolist())),
                           scores=[float(v) for v in row_scores], delta=delta)
            shared["scores"][example["index"]] = (target, row_scores)
    else:
        for example in examples:
            index, pred = example["index"], int(preds[example["index"]])
            pixels = ctx.pixels([index])
            maps, image_deltas, used = image_attribution_maps(ctx.model, pixels, torch.tensor([pred]), method, settings)
            used_methods.add(used)
            example.update(heatmap=downsample(scale_heatmap(maps[0])),
                           delta=None if image_deltas is None else float(image_deltas[0]),
                           _image_png=png_base64(ctx.denormalize(pixels[0])))
            shared["scores"][index] = (pred, maps[0])


def entity_section(ctx: Any, settings: dict[str, Any], method: str) -> dict[str, Any]:
    """A tagger's attributions: for chosen predicted entities (:func:`select_entities`), which tokens of the sentence
    drove the predicted tag of the entity's first word."""
    start = time.perf_counter()
    candidates = entity_candidates(ctx.test.logits, ctx.test.labels, ctx.label_names)
    chosen = select_entities(candidates, settings["examples"])
    notes = _selection_notes([(c["kind"], c["index"]) for c in chosen], settings["examples"],
                             sum(not c["correct"] for c in candidates))
    if not candidates:
        notes.append("The model predicts no entity on this split: there is nothing to explain.")
    dataset, words = ctx.datamodule.datasets[ctx.split], ctx.texts()
    sequences = [dataset[c["index"]]["input_ids"] for c in chosen]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.seed)
        scores, deltas = text_scores_for(ctx.model, ctx.tokenizer, sequences, [c["target"] for c in chosen], method,
                                         settings, positions=[c["position"] for c in chosen])
    examples = []
    for c, ids, row_scores, delta in zip(chosen, sequences, scores, deltas, strict=True):
        _, first, last = c["span"]
        examples.append({"kind": c["kind"], "index": c["index"], "entity": " ".join(list(words[c["index"]])[first:last]),
                         "label": c["label"], "pred": c["pred"], "confidence": c["confidence"],
                         "position": c["position"], "tokens": list(ctx.tokenizer.convert_ids_to_tokens(ids.tolist())),
                         "scores": [float(v) for v in row_scores], "delta": delta})
    ctx.extras["attributions"] = {"settings": settings, "modality": "text", "method": method, "scores": {}}
    return {"method": method, "modality": "text", "unit": "entity", "notes": notes,
            "seconds": round(time.perf_counter() - start, 3), "examples": examples}


def section(ctx: Any, settings: dict[str, Any]) -> dict[str, Any]:
    """Attributions for the selected test examples (see the module docstring)."""
    start = time.perf_counter()
    settings = attribution_settings(settings)
    modality = ctx.modality
    if modality == "text" and ctx.task.kind == "token":
        return entity_section(ctx, settings, check_method(settings["method"], "text"))
    if modality == "text":
        method = check_method(settings["method"], "text")
    else:
        method = check_method(settings["image_method"], "image", "report.attributions.image_method")
    probs, labels = ctx.test.probs, ctx.test.labels
    chosen = select_examples(probs, labels, settings["examples"])
    confidence, preds = probs.max(-1)
    notes = _selection_notes(chosen, settings["examples"], int((preds != labels).sum()))
    shared: dict[str, Any] = {"settings": settings, "modality": modality, "method": method, "scores": {}}
    examples = []
    for kind, index in chosen:
        examples.append({"kind": kind, "index": index, "label": ctx.label_names[int(labels[index])],
                         "pred": ctx.label_names[int(preds[index])], "confidence": float(confidence[index])})
    used_methods: set[str] = set()
    with torch.random.fork_rng(devices=[]):  # lime / kernel_shap sample: reproducible, global RNG untouched
        torch.manual_seed(ctx.seed)
        _explain_examples(ctx, examples, method, settings, shared, used_methods)
    if modality != "text" and used_methods - {method}:
        notes.append(f"{type(image_module(ctx.model)).__name__} has no spatial feature map for grad_cam: "
                     "integrated_gradients on the pixels was used instead.")
        method = "integrated_gradients"
    shared["method"] = method
    ctx.extras["attributions"] = shared  # faithfulness reuses the settings and these scores
    return {"method": method, "modality": modality, "notes": notes, "seconds": round(time.perf_counter() - start, 3),
            "examples": examples}


# -------------------------------------------------------------------------------------------- page

TITLE = "Attributions"
HOW = """Which words drove each prediction. Each token's colour shows its signed
    contribution to the predicted class: red pushes toward the prediction, blue against it; the stronger
    the colour, the larger the contribution, relative to the strongest token of the same example (hover a
    token for its value). Word pieces are joined back into words. For integrated gradients, delta is the
    approximation error: small compared with the scores means they add up as they should. {legend}"""
HOW_IMAGE = """Where the model looked. The heatmap over each image shows how much each region
    pushed the model toward its prediction (bright = strongly); the plain image is beside it. A model
    that is right for the right reasons lights up the object, not the background, borders or
    watermarks."""  # HOW is for text runs
HOW_ENTITY = """Which words drove the tagger's decision on chosen entities. For each predicted entity, the
    predicted tag of its first word (outlined) is explained: each token's colour shows its signed contribution
    to that tag's probability, red toward it, blue against it, relative to the strongest token of the sentence.
    A wrong entity is one whose words and type are not exactly a true entity."""
KIND_TITLES = {
    "confident_correct": "Most confident correct",
    "confident_wrong": "Most confident wrong",
    "least_confident": "Least confident",
}
# Token backgrounds: red = pushes toward the predicted class, blue = pushes away from it.
POSITIVE_RGB = (220, 38, 38)
NEGATIVE_RGB = (37, 99, 235)
SPECIAL_TOKENS = ("<s>", "</s>", "<pad>", "<unk>", "<mask>")
_BASE64 = re.compile(r"^[A-Za-z0-9+/=\s]+$")


def render(data: dict[str, Any]) -> str:
    modality = data.get("modality")
    examples = data.get("examples") or []
    notes = "".join(box("note", esc(note)) for note in data.get("notes") or [])
    count = f"{len(examples)} example{'' if len(examples) == 1 else 's'}"
    meta = (f'<p class="meta">method: <code>{esc(data.get("method"))}</code> · {count} · '
            f"{num(data.get('seconds'), 2)} s</p>")
    if modality == "image":
        help_text = how(HOW_IMAGE)
    elif data.get("unit") == "entity":
        help_text = how(HOW_ENTITY)
    else:
        legend = (f'<span class="legend"><span style="background:{_rgba(POSITIVE_RGB, 0.6)}">toward the '
                  f'prediction</span><span style="background:{_rgba(NEGATIVE_RGB, 0.6)}">against it</span>'
                  "</span>")
        help_text = how(HOW, legend=legend)
    cards = [_example_card(example, modality) for example in examples] or [box("note", "No examples.")]
    return help_text + meta + notes + "".join(cards)


def _example_card(example: dict[str, Any], modality: Any) -> str:
    label, pred, kind = example.get("label"), example.get("pred"), example.get("kind")
    verdict = '<span class="right">correct</span>' if label == pred else '<span class="wrong">wrong</span>'
    # A tagger's example is an entity of a sentence: "label" is the true type of its words ("none": not an entity).
    what = "" if example.get("entity") is None else f" · entity <b>{esc(example.get('entity'))}</b>"
    head = (f'<div class="head"><b>{esc(KIND_TITLES.get(kind, kind))}</b> · '
            f"{'sentence' if what else 'example'} #{num(example.get('index'))}{what} · "
            f"{'true type' if what else 'label'} <b>{esc(label)}</b> · "
            f"predicted <b>{esc(pred)}</b> ({verdict}) · confidence {num(example.get('confidence'))}</div>")
    body = _image_example(example) if modality == "image" else _text_example(example)
    return f'<div class="card">{head}{body}</div>'


def _rgba(rgb: tuple[int, int, int], alpha: float) -> str:
    return f"rgba({rgb[0]},{rgb[1]},{rgb[2]},{alpha:.3f})"


def _is_special(token: str) -> bool:
    return (token.startswith("[") and token.endswith("]")) or token in SPECIAL_TOKENS


def _text_example(example: dict[str, Any]) -> str:
    tokens = [str(t) for t in example.get("tokens") or []]
    scores = list(example.get("scores") or [])
    scores += [None] * (len(tokens) - len(scores))
    scale = max((abs(s) for s in scores if is_num(s)), default=0.0)
    # SentencePiece/BPE mark word starts ("▁", "Ġ"); WordPiece marks continuations ("##").
    word_start_marks = any(t.startswith(("▁", "Ġ")) for t in tokens)
    pieces = []
    for i, (token, score) in enumerate(zip(tokens, scores, strict=False)):
        if token.startswith("##") and len(token) > 2:
            text, space = token[2:], False
        elif word_start_marks and not _is_special(token):
            text, space = token.lstrip("▁Ġ") or token, token.startswith(("▁", "Ġ"))
        else:
            text, space = token, True
        style = ""
        if is_num(score) and scale > 0:
            rgb = POSITIVE_RGB if score >= 0 else NEGATIVE_RGB
            style = f' style="background:{_rgba(rgb, 0.85 * abs(score) / scale)}"'
        value = f"{score:+.4f}" if is_num(score) else "no score"
        css = "tok special" if _is_special(token) else "tok"
        if i == example.get("position"):  # the token whose tag is explained
            style = (style[:-1] if style else ' style="') + ';outline:2px solid #111"'
            value += " (the tag explained)"
        span = f'<span class="{css}"{style} title="{esc(token)}: {value}">{esc(text)}</span>'
        pieces.append((" " if space and i > 0 else "") + span)
    delta = example.get("delta")
    # Significant digits, not decimals: a small model's scores can all be below 1e-4.
    footer = (f'<div class="meta">strongest |score| {sig(scale)} · delta '
              f"{'n/a' if delta is None else sig(delta)}</div>")
    return f'<div class="tokens">{"".join(pieces)}</div>{footer}'


def _decode_png(data: Any) -> tuple[str, Any] | None:
    """(data URI, HxWx3 uint8 array) of a base64 PNG, or None when it is not one."""
    import numpy as np
    from PIL import Image

    if not isinstance(data, str) or not data or not _BASE64.match(data):
        return None
    try:
        with Image.open(io.BytesIO(base64.b64decode(data))) as image:
            pixels = np.asarray(image.convert("RGB"))
    except (binascii.Error, OSError, ValueError):
        return None
    return "data:image/png;base64," + "".join(data.split()), pixels


def _image_example(example: dict[str, Any]) -> str:
    heatmap = example.get("heatmap")
    image = _decode_png(example.get("_image_png"))
    parts = []
    if heatmap:
        parts.append(img(heatmap_figure(heatmap, None if image is None else image[1]), "attribution heatmap"))
    if image is not None:
        caption = '<div class="meta">input as the model sees it</div>'
        parts.append(img(image[0], "input image", "thumb") + caption)
    elif not heatmap:
        parts.append(box("note", "No heatmap or image stored for this example."))
    return side_by_side(*parts)
