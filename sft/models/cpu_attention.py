"""Attention for training on a CPU: SDPA's result, without its two slow CPU parts.

With dropout on the attention probabilities (BERT's ``attention_probs_dropout_prob``), ``scaled_dot_product_attention``
cannot use its fused CPU kernel and runs its math path. Two parts of that path are slow on a CPU:

- the mask is drawn with ``bernoulli_``, one Mersenne-Twister number per element (what :mod:`sft.models.dropout`
  replaces for the other dropouts; ~0.8 ms per layer for MiniLM at batch 32 x 14 tokens);
- ``softmax`` over a last dimension narrower than one vector register (16 floats with AVX512, 8 with AVX2, twice that
  in bf16) takes PyTorch's scalar path: at 14 keys it costs 9x its cost at 16 keys (0.95 vs 0.10 ms forward on
  32 x 12 x 14 x 14 fp32, AVX512). Length-grouped batches of short sentences are mostly that narrow.

:func:`cpu_training_attention` computes the same attention (scores, mask, softmax, dropout, values) with sft's dropout
mask and a softmax that takes a vectorised route at every width. It is registered with transformers'
``AttentionInterface`` and acts only while the module trains on a CPU with attention dropout; everything else (eval,
a GPU, no dropout) is transformers' own ``sdpa_attention_forward``, unchanged. The implementation name is not saved:
``save_pretrained`` drops ``_attn_implementation``, so exports load with transformers' default. A query row with every
key masked gets uniform weights (as in transformers' eager attention) where SDPA gives zeros; an encoder's padding
mask never masks a whole row (each row keeps its sequence's real tokens).
"""

from __future__ import annotations

from typing import Any

import torch

from sft.models.dropout import _LEVELS, _MaskedScale, keep_mask

IMPLEMENTATION = "sft_cpu_training_sdpa"


def _float_lanes() -> int:
    """fp32 values per vector register of the kernels PyTorch dispatches to on this CPU."""
    return 16 if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else 8


class _NarrowSoftmax(torch.autograd.Function):
    """Softmax over the last dimension, in fp32, through elementwise ops and reductions that are vectorised at any
    width (PyTorch's softmax kernel vectorises along the last dimension only, so a narrow one runs scalar)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        y = (x - x.amax(-1, keepdim=True)).exp_()
        y.div_(y.sum(-1, keepdim=True))
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        gy = grad * y
        return gy.sub_(y * gy.sum(-1, keepdim=True))


def softmax_last_dim(x: torch.Tensor) -> torch.Tensor:
    """``torch.softmax(x, -1)`` computed in fp32 (returned in ``x``'s dtype), by the fastest route for its width on
    this CPU: PyTorch's kernel where the width fills a vector register, else :class:`_NarrowSoftmax`."""
    lanes = _float_lanes()
    width = x.shape[-1]
    if x.dtype != torch.float32:  # bf16 / fp16: one register holds twice as many, so compute in fp32 instead
        if width >= 2 * lanes:
            return torch.softmax(x, -1)
        return softmax_last_dim(x.float()).to(x.dtype)
    return torch.softmax(x, -1) if width >= lanes else _NarrowSoftmax.apply(x)


def cpu_training_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                           **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: ``query`` / ``key`` / ``value`` are (batch, heads, length, head
    dim); returns (batch, length, heads, head dim), as ``sdpa_attention_forward``, which handles every case but a
    CPU module training with attention dropout (and no causal mask, cache, or extra bias)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    dropped = round(dropout * _LEVELS)
    causal = kwargs.get("is_causal")
    plain_encoder = (not (getattr(module, "is_causal", False) if causal is None else causal)
                     and kwargs.get("position_bias") is None
                     and getattr(module, "num_key_value_groups", 1) == 1 and key.shape[2] == query.shape[2])
    if not (module.training and 0 < dropped < _LEVELS and query.device.type == "cpu" and plain_encoder):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)).mul_(scaling)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:  # sdpa's masks: True = attend
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:  # an additive mask
            scores = scores + attention_mask
    probs = softmax_last_dim(scores)
    kept, scale = keep_mask(probs.shape, dropout, probs.dtype)
    probs = _MaskedScale.apply(probs, kept, scale)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionInterface.register(IMPLEMENTATION, cpu_training_attention)
    AttentionMaskInterface.register(IMPLEMENTATION, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])  # the same masks as sdpa


def use_cpu_training_attention(model: torch.nn.Module) -> bool:
    """Switch a transformers model that attends through SDPA to :func:`cpu_training_attention`; returns whether it
    did. Models on another attention (eager, flash, a model without the attention interface) are left as they are."""
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) != "sdpa" or not hasattr(model, "set_attn_implementation"):
        return False
    if not getattr(model, "_can_set_attn_implementation", lambda: False)():
        return False
    _register()
    model.set_attn_implementation(IMPLEMENTATION)
    return model.config._attn_implementation == IMPLEMENTATION
