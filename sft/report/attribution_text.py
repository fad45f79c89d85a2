"""Token attributions of text models (see :mod:`sft.report.attribution` for the methods): one signed score per token
toward a class, for one text, a sentence pair (with its segment ids) or one tagged token of a sentence."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from sft.data.encoding import has_segment_ids
from sft.report.attribution_base import attribution_mode, attribution_settings, check_method, model_device

PERTURBATIONS_PER_CALL = 64  # perturbed inputs per forward for occlusion / lime / kernel_shap
IG_GROUP = 4  # texts explained per integrated gradients call (amortises its fixed forward passes)


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
    return tokenizer.sep_token_id if pair and has_segment_ids(tokenizer) and tokenizer.sep_token_id is not None else None


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
    device = model_device(model)
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
