"""What every attribution method shares: the methods, the settings (checked, with the defaults), and the mode a
model is explained in."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from sft.errors import ConfigError

TEXT_METHODS = ("integrated_gradients", "occlusion", "lime", "kernel_shap")
IMAGE_METHODS = ("grad_cam", "integrated_gradients", "occlusion")
DEFAULTS: dict[str, Any] = {"examples": 3, "method": "integrated_gradients", "image_method": "grad_cam",
                            "n_steps": 50, "internal_batch_size": 16, "n_samples": 200}


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


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
