"""Image backbones (torchvision by name, the packaged EfficientNet-Lite0) and the image classifier."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sft.errors import ConfigError
from sft.models.classifier import Classifier

# The top-level child that holds the classification head, per architecture family.
HEAD_NAMES = ("fc", "classifier", "heads", "head")
IMAGENET_PREPROCESS = {"resize": 256, "crop": 224, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
                       "interpolation": "bilinear"}


def _torchvision_weights(arch: str, weights: str | None) -> Any:
    import torchvision

    if weights in (None, "none", "None"):
        return None
    try:
        return torchvision.models.get_model_weights(arch)[weights] if weights != "DEFAULT" else \
            torchvision.models.get_model_weights(arch).DEFAULT
    except KeyError:
        names = [w.name for w in torchvision.models.get_model_weights(arch)]
        raise ConfigError(f"model.weights={weights!r} is not a weights enum of {arch}: choose one of {names} "
                          "(or DEFAULT, or none).") from None


def preprocess_for(arch: str, weights: str | None = None) -> dict[str, Any]:
    """Resize, crop, normalisation and interpolation the pretrained weights expect."""
    if arch == "efficientnet_lite0":
        from sft.models.vision_weights import EFFICIENTNET_LITE0_PREPROCESS

        return dict(EFFICIENTNET_LITE0_PREPROCESS)
    enum = _torchvision_weights(arch, weights)
    if enum is None:
        return dict(IMAGENET_PREPROCESS)
    t = enum.transforms()
    return {"resize": t.resize_size[0], "crop": t.crop_size[0], "mean": tuple(t.mean), "std": tuple(t.std),
            "interpolation": t.interpolation.value}


def head_name(model: nn.Module) -> str:
    for name in HEAD_NAMES:
        if hasattr(model, name) and isinstance(getattr(model, name), nn.Module):
            return name
    raise ConfigError(f"{type(model).__name__}: no classification head found (looked for {HEAD_NAMES}).")


def replace_head(model: nn.Module, num_classes: int) -> None:
    """Swap the last Linear of the head for a fresh one with ``num_classes`` outputs."""
    name = head_name(model)
    head = getattr(model, name)
    if isinstance(head, nn.Linear):
        setattr(model, name, nn.Linear(head.in_features, num_classes))
        return
    linears = [(n, m) for n, m in head.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"{type(model).__name__}.{name} has no Linear layer to replace.")
    path, last = linears[-1]
    parent = head.get_submodule(path.rsplit(".", 1)[0]) if "." in path else head
    setattr(parent, path.rsplit(".", 1)[-1], nn.Linear(last.in_features, num_classes))


def build_image_model(arch: str, num_classes: int, weights: str | None = None, weights_path: str | None = None) -> nn.Module:
    """A torchvision model by name (weights by enum name or a local state_dict file), or the packaged
    EfficientNet-Lite0, with a fresh ``num_classes`` head."""
    if arch == "efficientnet_lite0":
        from sft.models.vision_weights import load_efficientnet_lite0

        return load_efficientnet_lite0(num_classes)
    import torchvision

    if arch not in torchvision.models.list_models():
        raise ConfigError(f"model.arch={arch!r} is not a torchvision model. Known image models include "
                          "resnet18, resnet50, efficientnet_b0, vit_b_16 (torchvision.models.list_models()), "
                          "or efficientnet_lite0 (packaged, offline).")
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise ConfigError(f"model.weights_path={str(path)!r} does not exist: give a state_dict file (.pth).")
        model = torchvision.models.get_model(arch, weights=None)
        state = torch.load(path, map_location="cpu", weights_only=True)
        try:
            model.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
        except RuntimeError as e:
            raise ConfigError(f"model.weights_path={str(path)!r} does not fit {arch}: {str(e).splitlines()[0]}") from None
    else:
        model = torchvision.models.get_model(arch, weights=_torchvision_weights(arch, weights))
    replace_head(model, num_classes)
    return model


# Architectures built on depthwise convolutions: memory-bound, so bf16 autocast does not speed them up on a CPU.
DEPTHWISE_FAMILIES = ("efficientnet", "mobilenet", "mnasnet")


class ImageClassifier(Classifier):
    """Fine-tunes a pretrained image backbone with a new head. Usable without Hydra::

        model = ImageClassifier("resnet18", weights="IMAGENET1K_V1", num_labels=2, optimizer=partial(torch.optim.SGD, lr=1e-3))
    """

    modality = "image"

    def __init__(
        self,
        arch: str = "efficientnet_lite0",
        weights: str | None = None,
        weights_path: str | None = None,
        num_labels: int = 2,
        id2label: dict[int, str] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        freeze: str | Mapping[str, Any] = "none",
        monitor: str = "val/acc",
        task: Any = None,
        head_bias: str = "prior",
        channels_last: bool = True,
        fast_cpu_dropout: bool = True,
        loss: Mapping[str, Any] | None = None,
    ):
        super().__init__(num_labels, id2label, optimizer, scheduler, freeze, monitor, task, head_bias,
                         fast_cpu_dropout, loss=loss)
        if self.task.kind != "single_label":
            raise ConfigError(f"Image models classify one label per image; a {self.task.kind} task is not supported "
                              "for images (see the README's task types).")
        self.save_hyperparameters({"arch": arch, "weights": weights, "weights_path": weights_path,
                                   "num_labels": num_labels, "id2label": self.id2label, "freeze": freeze,
                                   "monitor": monitor, "loss": self.criterion.spec.to_dict()})
        self.model = build_image_model(arch, num_labels, weights, weights_path)
        # NHWC: oneDNN's (and cuDNN's) fast convolution layout; the same math. EfficientNet-Lite0 fp32 on 2 CPU
        # cores: 967 vs 1236 ms per step of 16 images (bench/README.md).
        self.channels_last = channels_last
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.head = head_name(self.model)
        self.finish_build()

    @property
    def cpu_bf16_pays(self) -> bool:
        # Measured on an AMX CPU (bench/README.md), one step of 16 images fp32 vs bf16: EfficientNet-B0 978 vs
        # 1182 ms, MobileNetV3-Small 201 vs 299, EfficientNet-Lite0 even; ResNet-18 768 vs 291, ViT-B/16 7606 vs 3050.
        return not str(self.hparams.arch).startswith(DEPTHWISE_FAMILIES)

    @property
    def backbone(self) -> nn.Module:
        # Every top-level child but the head (stem, stages, pooling): frozen together, kept in eval mode
        # so BatchNorm running statistics stay the pretrained ones.
        return nn.ModuleList(m for name, m in self.model.named_children() if name != self.head)

    def lora_trained_modules(self) -> list[str]:
        return [self.head]

    @classmethod
    def data_inputs(cls, model_cfg: Any) -> dict[str, Any]:
        return {"preprocess": preprocess_for(model_cfg.get("arch", "efficientnet_lite0"), model_cfg.get("weights"))}

    def export(self, out_dir: Any, datamodule: Any) -> Path:
        """``model.pt`` (a plain state_dict of the torchvision / timm model) + ``model.json``: architecture,
        class names and preprocessing, so torchvision or timm alone can rebuild and run it."""
        import json

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        torch.save(self.exportable_model().state_dict(), out / "model.pt")
        library = "timm" if self.hparams.arch == "efficientnet_lite0" else "torchvision"
        info = {"library": library, "arch": "tf_efficientnet_lite0" if library == "timm" else self.hparams.arch,
                "sft_arch": self.hparams.arch, "num_classes": self.hparams.num_labels, "head": self.head,
                "label_names": [self.id2label[i] for i in range(len(self.id2label))],
                "preprocess": datamodule.preprocess}
        (out / "model.json").write_text(json.dumps(info, indent=2))
        return out

    @classmethod
    def from_export(cls, folder: str | Path) -> tuple[ImageClassifier, dict[str, Any]]:
        """``(model in eval mode, preprocess)`` from an :meth:`export` folder."""
        import json

        folder = Path(folder)
        info = json.loads((folder / "model.json").read_text())
        names = info["label_names"]
        model = cls(info.get("sft_arch", info["arch"]), weights=None, num_labels=len(names),
                    id2label=dict(enumerate(names)), head_bias="library")
        model.model.load_state_dict(torch.load(folder / "model.pt", map_location="cpu", weights_only=True))
        return model.eval(), info["preprocess"]

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: str = "cpu") -> tuple[ImageClassifier, dict[str, Any]]:
        """``(model in eval mode, preprocess)`` from an sft checkpoint alone (no pretrained weights needed)."""
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
        hp = checkpoint["hyper_parameters"]
        # A LoRA checkpoint holds only the adapters and the head: the frozen weights come from the pretrained ones.
        lora = "lora" in checkpoint
        model = cls(hp["arch"], weights=hp.get("weights") if lora else None,
                    weights_path=hp.get("weights_path") if lora else None, num_labels=hp["num_labels"],
                    id2label=hp["id2label"], freeze=hp.get("freeze", "none"), monitor=hp.get("monitor", "val/acc"),
                    head_bias="library")
        model.load_checkpoint_weights(checkpoint)
        preprocess = checkpoint.get("preprocess") or preprocess_for(hp["arch"], hp.get("weights"))
        return model.eval(), preprocess

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is not None and hasattr(datamodule, "preprocess"):
            checkpoint["preprocess"] = dict(datamodule.preprocess)  # what inference must repeat

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.channels_last and pixel_values.dim() == 4:
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        return self.model(pixel_values)

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self(batch["pixel_values"])

    @property
    def head_entry(self) -> nn.Module:
        return getattr(self.model, self.head)

    def head_logits(self, features: torch.Tensor) -> torch.Tensor:
        return getattr(self.model, self.head)(features)
