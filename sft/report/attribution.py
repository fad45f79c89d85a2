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
import math
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from sft.errors import ConfigError
from sft.finetune.blocks import block_map, group_modules
from sft.report.figures import heatmap_figure
from sft.report.htmlparts import box, esc, how, img, is_num, num, side_by_side, sig

TEXT_METHODS = ("integrated_gradients", "occlusion", "lime", "kernel_shap")
IMAGE_METHODS = ("grad_cam", "integrated_gradients", "occlusion")
KINDS = ("confident_correct", "confident_wrong", "least_confident")
DEFAULTS: dict[str, Any] = {"examples": 3, "method": "integrated_gradients", "image_method": "grad_cam",
                            "n_steps": 50, "internal_batch_size": 16, "n_samples": 200}
HEATMAP_SIZE = 56  # heatmaps are stored downsampled to at most this many cells a side
PERTURBATIONS_PER_CALL = 64  # perturbed inputs per forward for occlusion / lime / kernel_shap
IG_GROUP = 4  # texts explained per integrated gradients call (amortises its fixed forward passes)
GRID_CELLS = 14  # images are cut into about 14 x 14 square patches (16 px at 224)


# ---------------------------------------------------------------------- settings
def attribution_settings(settings: dict[str, Any] | None, where: str = "report.attributions") -> dict[str, Any]:
    """``settings`` over :data:`DEFAULTS`, with the numbers checked (errors name ``<where>.<key>``)."""
    merged = {**DEFAULTS, **{k: v for k, v in (settings or {}).items() if v is not None}}
    for key, minimum in (("examples", 0), ("n_steps", 1), ("internal_batch_size", 1), ("n_samples", 1)):
        value = merged[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"{where}.{key}={value!r} must be an integer >= {minimum}.")
    return merged


def check_method(method: str, modality: str, setting: str = "report.attributions.method") -> str:
    """``method`` if it exists for ``modality``, else a ConfigError naming ``setting`` and the choices."""
    choices = TEXT_METHODS if modality == "text" else IMAGE_METHODS
    if method not in choices:
        raise ConfigError(f"{setting}={method!r} is not an attribution method for {modality} models: "
                          f"choose one of {', '.join(choices)}.")
    return method


def check_settings(settings: dict[str, Any] | None) -> dict[str, Any]:
    """Early check of ``report.attributions`` (before training): numbers, and methods valid for some modality."""
    merged = attribution_settings(settings)
    check_method(merged["method"], "text")
    check_method(merged["image_method"], "image", "report.attributions.image_method")
    return merged


def patch_size(height: int, width: int) -> int:
    """Side in pixels of the square image units (occlusion windows, faithfulness patches)."""
    return max(1, round(min(height, width) / GRID_CELLS))


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


# ---------------------------------------------------------------------- shared
@contextmanager
def attribution_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) with gradients on, even when called under ``torch.no_grad``; the model's
    mode is restored after. Captum asks autograd only for input / activation gradients, so frozen
    parameters are fine and no parameter ``.grad`` is touched."""
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            yield
    finally:
        model.train(was_training)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


# ---------------------------------------------------------------------- text
def pad_id(tokenizer: Any) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.unk_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def pad_batch(sequences: list[torch.Tensor], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids, attention_mask) of id sequences of different lengths."""
    width = max(len(seq) for seq in sequences)
    ids = torch.full((len(sequences), width), pad, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return ids, mask


def special_token_mask(tokenizer: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """True at [CLS]/[SEP]/<s>/</s>/[PAD] and padding: positions never perturbed nor ranked."""
    ids = {tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id,
           tokenizer.pad_token_id} - {None}
    special = torch.isin(input_ids, torch.tensor(sorted(ids), dtype=input_ids.dtype, device=input_ids.device))
    return special | (attention_mask == 0)


def segment_separator(model: nn.Module, tokenizer: Any) -> int | None:
    """The [SEP] id whose first occurrence ends segment 0, for a sentence-pair model that takes segment ids (BERT,
    MiniLM); None otherwise (one text, or RoBERTa / DistilBERT, which have no segment ids)."""
    pair = bool(getattr(getattr(model, "task", None), "pair", False))
    takes = "token_type_ids" in getattr(tokenizer, "model_input_names", ())
    return tokenizer.sep_token_id if pair and takes and tokenizer.sep_token_id is not None else None


def segment_ids(input_ids: torch.Tensor, attention_mask: torch.Tensor, separator: int) -> torch.Tensor:
    """The token_type_ids of ``[CLS] a [SEP] b [SEP]`` rows: 0 up to and including the first [SEP], 1 after it,
    0 on padding (as the tokenizer writes them). The perturbations here never move or remove a [SEP], so this
    is exact for perturbed inputs too."""
    is_sep = (input_ids == separator).long()
    return ((is_sep.cumsum(1) - is_sep) > 0).long() * attention_mask.long()


def text_probability_forward(model: nn.Module, separator: int | None = None) -> Callable[..., torch.Tensor]:
    """(input_ids, attention_mask[, positions]) -> class probabilities (B, C). With ``separator``
    (:func:`segment_separator`), sentence pairs get their segment ids, so the model sees each pair as it was trained
    on it. ``positions`` (B,) or (1,): a tagger's token per row whose tag probabilities are explained."""
    def forward(input_ids: torch.Tensor, attention_mask: torch.Tensor,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if separator is not None:
            batch["token_type_ids"] = segment_ids(input_ids, attention_mask, separator)
        logits = model.logits(batch).float()
        if positions is not None:
            rows = torch.arange(len(logits), device=logits.device)
            logits = logits[rows, positions.expand(len(logits)) if len(positions) == 1 else positions]
        return logits.softmax(-1)

    return forward


def embedding_layer(model: nn.Module) -> nn.Module:
    """The word embeddings. Not the whole embeddings module: RoBERTa derives position ids from where the
    padding is, so an all-[PAD] baseline through it would also move the positions of </s>. On the word
    embeddings the interpolated forwards keep the input's own positions, for every architecture."""
    return model.model.get_input_embeddings()


def removal_id(model: nn.Module, tokenizer: Any) -> int:
    """The id standing for a removed token in occlusion / LIME / KernelSHAP: [PAD], except where the
    embeddings count positions past padding (RoBERTa's ``padding_idx``), where a [PAD] mid-sequence would
    shift every later position: there <unk>."""
    embeddings = getattr(getattr(model, "backbone", None), "embeddings", None)
    if getattr(embeddings, "padding_idx", None) is not None and tokenizer.unk_token_id is not None:
        return int(tokenizer.unk_token_id)
    return pad_id(tokenizer)


def _lime_similarity(n_features: int) -> Callable[..., float]:
    """LIME's text kernel (LimeTextExplainer: sqrt(exp(-(100 d)^2 / 25^2)) = exp(-8 d^2)) on the cosine
    distance d between the kept-token vector and all-kept, over the first ``n_features`` (real tokens)."""
    def similarity(original: Any, perturbed: Any, interpretable: torch.Tensor, **kwargs: Any) -> float:
        kept = interpretable.reshape(-1)[:n_features].float()
        if kept.sum() == 0:
            return math.exp(-8.0)
        distance = 1.0 - float(kept.sum()) / math.sqrt(float(kept.sum()) * n_features)
        return math.exp(-8.0 * distance * distance)

    return similarity


def text_attribution_batch(model: nn.Module, tokenizer: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                           targets: torch.Tensor, method: str, settings: dict[str, Any],
                           positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token scores (B, L) toward ``targets`` (special tokens and padding: 0) and the integrated
    gradients convergence deltas (B,) (None for other methods). Integrated gradients runs the batch at
    once; the perturbation methods run one example at a time (captum fits one surrogate per example).
    ``positions`` (B,): for a tagger, the token of each row whose tag ``targets`` names."""
    check_method(method, "text")
    settings = attribution_settings(settings)
    device = _device(model)
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    targets = torch.as_tensor(targets, device=device).reshape(-1)
    special = special_token_mask(tokenizer, input_ids, attention_mask)
    pad = pad_id(tokenizer)
    forward = text_probability_forward(model, segment_separator(model, tokenizer))
    extra = (attention_mask,) if positions is None else (attention_mask, positions.to(device))
    with attribution_mode(model):
        if method == "integrated_gradients":
            from captum.attr import LayerIntegratedGradients

            baseline = torch.where(special, input_ids, torch.full_like(input_ids, pad))
            layer = embedding_layer(model)
            lig = LayerIntegratedGradients(forward, layer)
            attributions = lig.attribute(
                input_ids, baselines=baseline, target=targets, additional_forward_args=extra,
                n_steps=settings["n_steps"], internal_batch_size=settings["internal_batch_size"] * len(input_ids))
            scores = attributions.sum(-1).detach().float()
            # The completeness gap against the path's real end point: the input with the baseline's word
            # embeddings (captum's own delta runs the baseline ids, whose RoBERTa positions differ).
            with torch.no_grad():
                p_input = forward(input_ids, *extra).gather(1, targets[:, None])[:, 0]
                baseline_embeddings = layer(baseline)
                handle = layer.register_forward_hook(lambda module, args, out: baseline_embeddings)
                try:
                    p_baseline = forward(input_ids, *extra).gather(1, targets[:, None])[:, 0]
                finally:
                    handle.remove()
            delta = scores.sum(-1) - (p_input - p_baseline).float()
            return scores.masked_fill(special, 0.0).cpu(), delta.reshape(-1).cpu()
        removed = removal_id(model, tokenizer)
        rows = [_perturbation_scores(forward if positions is None else _at(forward, positions[i : i + 1].to(device)),
                                     input_ids[i : i + 1], attention_mask[i : i + 1], special[i : i + 1],
                                     int(targets[i]), removed, method, settings) for i in range(len(input_ids))]
        return torch.cat(rows).masked_fill(special.cpu(), 0.0), None


def _at(forward: Callable[..., torch.Tensor], position: torch.Tensor) -> Callable[..., torch.Tensor]:
    """``forward`` explaining the tag at one token, for every perturbed copy of its row."""
    return lambda input_ids, attention_mask: forward(input_ids, attention_mask, position)


def _perturbation_scores(forward: Callable[..., torch.Tensor], input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         special: torch.Tensor, target: int, pad: int, method: str, settings: dict[str, Any]
                         ) -> torch.Tensor:
    """Occlusion / LIME / KernelSHAP scores (1, L) for one example, a removed token replaced by ``pad``
    (:func:`removal_id`)."""
    from captum.attr import KernelShap, Lime, Occlusion

    def restored_forward(ids: torch.Tensor, original: torch.Tensor, keep: torch.Tensor,
                         mask: torch.Tensor) -> torch.Tensor:
        # Special tokens always stay what they were, whatever the method perturbs.
        return forward(torch.where(keep, original, ids), mask)

    extra = (input_ids, special, attention_mask)
    with torch.no_grad():
        if method == "occlusion":
            scores = Occlusion(restored_forward).attribute(
                input_ids, sliding_window_shapes=(1,), strides=1, baselines=pad, target=target,
                additional_forward_args=extra, perturbations_per_eval=PERTURBATIONS_PER_CALL)
            return scores.float().cpu()
        real = ~special[0]
        if int(real.sum()) == 0:
            return torch.zeros(input_ids.shape)
        # One feature per real token; all special tokens share one last feature (never changes anything).
        feature_mask = torch.full_like(input_ids, int(real.sum()))
        feature_mask[0, real] = torch.arange(int(real.sum()), device=input_ids.device)
        if method == "lime":
            from captum._utils.models.linear_model import SkLearnRidge

            explainer: Any = Lime(restored_forward, interpretable_model=SkLearnRidge(alpha=1.0),
                                  similarity_func=_lime_similarity(int(real.sum())))
        else:
            explainer = KernelShap(restored_forward)
        scores = explainer.attribute(input_ids, baselines=pad, target=target, additional_forward_args=extra,
                                     feature_mask=feature_mask, n_samples=settings["n_samples"],
                                     perturbations_per_eval=PERTURBATIONS_PER_CALL)
        return scores.float().cpu()


def text_attributions(model: nn.Module, tokenizer: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      target: int, method: str, settings: dict[str, Any]
                      ) -> tuple[list[str], list[float], float | None]:
    """``(tokens, scores, delta)`` for ONE example (input_ids of shape (1, L)) on a TextClassifier: one signed
    score per token toward class ``target`` (special tokens: 0); delta is integrated gradients' convergence
    delta (sum of scores minus (p(x) - p(baseline))), None for the other methods."""
    if input_ids.ndim != 2 or len(input_ids) != 1:
        raise ValueError(f"text_attributions explains one example: input_ids must be (1, L), got {tuple(input_ids.shape)}.")
    scores, delta = text_attribution_batch(model, tokenizer, input_ids, attention_mask,
                                           torch.tensor([int(target)]), method, settings)
    tokens = tokenizer.convert_ids_to_tokens(input_ids[0].tolist())
    return list(tokens), [float(s) for s in scores[0]], None if delta is None else float(delta[0])


def text_scores_for(model: nn.Module, tokenizer: Any, sequences: list[torch.Tensor], targets: list[int], method: str,
                    settings: dict[str, Any], positions: list[int] | None = None
                    ) -> tuple[list[torch.Tensor], list[float | None]]:
    """Scores (one per token) and deltas of many unpadded id sequences. Integrated gradients explains
    :data:`IG_GROUP` texts of similar length per call (its fixed cost per call is several forward passes).
    ``positions``: for a tagger, the token of each sequence whose tag is explained."""
    scores: list[torch.Tensor] = [torch.empty(0)] * len(sequences)
    deltas: list[float | None] = [None] * len(sequences)
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    group = IG_GROUP if method == "integrated_gradients" else 1
    for start in range(0, len(order), group):
        rows = order[start : start + group]
        ids, mask = pad_batch([sequences[i] for i in rows], pad_id(tokenizer))
        where = None if positions is None else torch.tensor([positions[i] for i in rows])
        batch_scores, batch_deltas = text_attribution_batch(model, tokenizer, ids, mask,
                                                            torch.tensor([targets[i] for i in rows]), method, settings,
                                                            where)
        for k, i in enumerate(rows):
            scores[i] = batch_scores[k, : len(sequences[i])]
            deltas[i] = None if batch_deltas is None else float(batch_deltas[k])
    return scores, deltas


# ---------------------------------------------------------------------- images
def _image_module(model: nn.Module) -> nn.Module:
    """The torchvision / timm network inside an ImageClassifier (the model itself otherwise)."""
    inner = getattr(model, "model", None)
    return inner if isinstance(inner, nn.Module) else model


def image_logits_forward(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    if hasattr(model, "logits"):
        return lambda pixels: model.logits({"pixel_values": pixels}).float()
    return lambda pixels: model(pixels).float()


def grad_cam_layer(model: nn.Module) -> nn.Module | None:
    """The last backbone block before the head, from the block map (ResNet ``layer4``, EfficientNet's last
    stage / head conv, a ViT's last encoder layer); without a block map the last Conv2d; None if neither."""
    net = _image_module(model)
    try:
        bmap = block_map(net)
    except ConfigError:  # an architecture without a map (MobileNet, ConvNeXt...): Grad-CAM's classic layer
        convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
        return convs[-1] if convs else None
    modules = group_modules(net, bmap, bmap.block_names()[-1])
    return modules[-1] if modules else None


def image_attribution_maps(model: nn.Module, pixels: torch.Tensor, targets: torch.Tensor, method: str,
                           settings: dict[str, Any], layer: nn.Module | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """Signed per-pixel maps (B, H, W) toward ``targets`` (channels summed), integrated gradients deltas (B,)
    or None, and the method actually used (grad_cam falls back to integrated_gradients when ``layer`` has
    no spatial output, as in a ViT). ``layer`` defaults to :func:`grad_cam_layer`."""
    check_method(method, "image", "report.attributions.image_method")
    settings = attribution_settings(settings)
    device = _device(model)
    pixels = pixels.to(device)
    targets = torch.as_tensor(targets, device=device).reshape(-1)
    logits = image_logits_forward(model)
    height, width = pixels.shape[-2:]
    with attribution_mode(model):
        if method == "grad_cam":
            from captum.attr import LayerAttribution, LayerGradCam

            layer = layer if layer is not None else grad_cam_layer(model)
            coarse = LayerGradCam(logits, layer).attribute(pixels, target=targets) if layer is not None else None
            if coarse is not None and coarse.ndim == 4:
                fine = LayerAttribution.interpolate(coarse.detach().float(), (height, width), "bilinear")
                return fine[:, 0].relu().cpu(), None, "grad_cam"
            method = "integrated_gradients"  # no layer, or (B, tokens, dim): no spatial map to upsample
        probs = lambda x: logits(x).softmax(-1)  # noqa: E731
        if method == "integrated_gradients":
            from captum.attr import IntegratedGradients

            attributions, delta = IntegratedGradients(probs).attribute(
                pixels, baselines=torch.zeros_like(pixels), target=targets, n_steps=settings["n_steps"],
                internal_batch_size=settings["internal_batch_size"] * len(pixels), return_convergence_delta=True)
            return attributions.detach().float().sum(1).cpu(), delta.detach().float().reshape(-1).cpu(), method
        from captum.attr import Occlusion

        size = patch_size(height, width)
        with torch.no_grad():
            attributions = Occlusion(probs).attribute(
                pixels, sliding_window_shapes=(pixels.shape[1], size, size), strides=(pixels.shape[1], size, size),
                baselines=0.0, target=targets, perturbations_per_eval=settings["internal_batch_size"])
        return attributions.float().mean(1).cpu(), None, method


def scale_heatmap(signed_map: torch.Tensor) -> torch.Tensor:
    """The positive evidence of a (H, W) map scaled to [0, 1] (all zeros when there is none)."""
    positive = signed_map.float().relu()
    top = positive.max()
    return positive / top if top > 0 else positive


def image_attributions(model: nn.Module, pixels: torch.Tensor, target: int, method: str, settings: dict[str, Any],
                       layer: nn.Module | None = None) -> tuple[torch.Tensor, float | None]:
    """``(heatmap, delta)`` for ONE image (pixels (1, 3, H, W), normalised): an (H, W) map in [0, 1] of the
    evidence for class ``target``; delta is integrated gradients' convergence delta, else None."""
    if pixels.ndim != 4 or len(pixels) != 1:
        raise ValueError(f"image_attributions explains one image: pixels must be (1, 3, H, W), got {tuple(pixels.shape)}.")
    maps, delta, _ = image_attribution_maps(model, pixels, torch.tensor([int(target)]), method, settings, layer)
    return scale_heatmap(maps[0]), None if delta is None else float(delta[0])


def downsample(heatmap: torch.Tensor, size: int = HEATMAP_SIZE) -> list[list[float]]:
    """An (H, W) map averaged down to at most ``size`` cells a side, as nested lists (4 decimals)."""
    h, w = heatmap.shape
    small = nn.functional.adaptive_avg_pool2d(heatmap[None, None].float(), (min(size, h), min(size, w)))[0, 0]
    return [[round(float(v), 4) for v in row] for row in small]


def png_base64(image: torch.Tensor) -> str:
    """A (3, H, W) tensor in [0, 1] as a base64 PNG."""
    from PIL import Image

    array = (image.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


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
        notes.append(f"{type(_image_module(ctx.model)).__name__} has no spatial feature map for grad_cam: "
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
