"""LoRA through ``peft``: low-rank adapters on a model's attention projections, the head trained in full.

:func:`add_lora` injects the adapters into the model *in place* (``get_peft_model`` replaces the target layers
inside the model it is given), so the classifier keeps running its own ``self.model`` and its parameter names
keep their block prefixes (``bert.encoder.layer.3....lora_A.default.weight``): layer-wise learning rates, the
freeze table and DDP see ordinary parameters. The peft wrapper is kept beside it for
:func:`merged_copy` (``merge_and_unload`` on a copy: the export is an ordinary model) and for saving the adapter
in peft's own format.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from sft.errors import ConfigError

# Per architecture (transformers' config.model_type): the attention projections LoRA adapts, after the LoRA
# paper (query and value).
HF_TARGETS = {
    "bert": ("query", "value"), "roberta": ("query", "value"), "xlm-roberta": ("query", "value"),
    "camembert": ("query", "value"), "electra": ("query", "value"), "deberta-v2": ("query_proj", "value_proj"),
    "distilbert": ("q_lin", "v_lin"), "vit": ("query", "value"), "albert": ("query", "value"),
    "mpnet": ("q", "v"),
}
# torchvision / timm image models, by the class of the model.
TORCH_TARGETS = {
    "VisionTransformer": ("self_attention", "qkv"),  # torchvision: nn.MultiheadAttention; timm: attn.qkv Linear
}


def default_targets(model: nn.Module) -> tuple[str, ...] | None:
    """The module names LoRA adapts in ``model`` by default, or None when sft knows none for it."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type is not None:
        return HF_TARGETS.get(model_type)
    candidates = TORCH_TARGETS.get(type(model).__name__)
    if candidates is None:
        return None
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    return tuple(c for c in candidates if c in present) or None


def _layer_names(model: nn.Module, limit: int = 8) -> str:
    """A few adaptable layer names (Linear / Conv / attention), to suggest in an error."""
    kinds = (nn.Linear, nn.Conv2d, nn.MultiheadAttention)
    names = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, kinds) and name})
    return ", ".join(names[:limit]) + (" ..." if len(names) > limit else "")


def add_lora(model: nn.Module, *, r: int, lora_alpha: float, lora_dropout: float,
             target_modules: Sequence[str] | None, trainable_modules: Iterable[str]) -> Any:
    """Inject LoRA adapters into ``model`` in place; returns the peft wrapper around it.

    ``trainable_modules``: names of the modules that train in full (the head, the pooler), peft's
    ``modules_to_save``. Everything else but the adapters is frozen.
    """
    from peft import LoraConfig, get_peft_model

    targets = list(target_modules) if target_modules else default_targets(model)
    if not targets:
        raise ConfigError(
            f"freeze=lora: sft has no default LoRA target modules for {type(model).__name__}; name the layers to "
            f"adapt, e.g. freeze.target_modules=[{_layer_names(model)}] (module names or their last part).")
    present = {name for name, _ in model.named_modules()}
    unmatched = [t for t in targets if not any(n == t or n.endswith("." + t) or re.fullmatch(t, n) for n in present)]
    if unmatched:
        raise ConfigError(
            f"freeze.target_modules={list(targets)}: {unmatched} match no module of {type(model).__name__}; "
            f"its adaptable layers include {_layer_names(model)}.")
    config = LoraConfig(r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=list(targets),
                        modules_to_save=sorted(set(trainable_modules)) or None)
    return get_peft_model(model, config)


def merged_copy(peft_model: Any) -> nn.Module:
    """An ordinary model with the adapters merged into its weights and the trained head in place (the
    training model is left as it is)."""
    return copy.deepcopy(peft_model).merge_and_unload()


def frozen_checksum(named_parameters: Iterable[tuple[str, torch.Tensor]]) -> float:
    """A checksum of the frozen (pretrained) weights an adapter checkpoint relies on: a resume or a reload
    onto other base weights is refused instead of silently giving other outputs."""
    total = torch.zeros((), dtype=torch.float64)
    for i, (_, p) in enumerate(sorted(named_parameters, key=lambda item: item[0])):
        # position-weighted, so swapped tensors change it too
        total += (i + 1) * p.detach().double().abs().sum().cpu()
    return float(total)
