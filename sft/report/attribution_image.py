"""Pixel attributions of image models (see :mod:`sft.report.attribution` for the methods): a signed map per image
toward a class, and the images as the report stores them."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from sft.errors import ConfigError
from sft.finetune.blocks import block_map, group_modules
from sft.report.attribution_base import attribution_mode, attribution_settings, check_method, model_device

HEATMAP_SIZE = 56  # heatmaps are stored downsampled to at most this many cells a side
GRID_CELLS = 14  # images are cut into about 14 x 14 square patches (16 px at 224)


def patch_size(height: int, width: int) -> int:
    """Side in pixels of the square image units (occlusion windows, faithfulness patches)."""
    return max(1, round(min(height, width) / GRID_CELLS))


def image_module(model: nn.Module) -> nn.Module:
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
    net = image_module(model)
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
    device = model_device(model)
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
