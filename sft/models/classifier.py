"""Classification LightningModules: a modality-agnostic base and the HF text classifier."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

from sft.errors import ConfigError
from sft.finetune import FREEZE_STRATEGIES
from sft.models.backbones import load_sequence_classifier, resolve_name_or_path
from sft.optim import build_optimizer, build_scheduler, check_optimizer


def stage_metrics(num_labels: int, prefix: str) -> MetricCollection:
    """Accuracy plus macro precision / recall / F1, keyed ``<stage>/acc`` etc."""
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(num_labels, average="micro"),
            "precision": MulticlassPrecision(num_labels, average="macro"),
            "recall": MulticlassRecall(num_labels, average="macro"),
            "f1": MulticlassF1Score(num_labels, average="macro"),
        },
        prefix=f"{prefix}/",
    )


class Classifier(L.LightningModule):
    """What every sft classifier shares, whatever the input: loss, per-stage metrics, freezing of
    ``backbone``, optimizer and schedule, RNG state in checkpoints. Subclasses build ``self.model``,
    say which part is the ``backbone``, turn a batch into ``logits``, say what their data module
    needs (``data_inputs``) and how to ``export`` themselves.
    """

    modality = ""  # "text" / "image": which data modules fit

    def __init__(
        self,
        num_labels: int,
        id2label: dict[int, str] | None,
        optimizer: Callable[..., torch.optim.Optimizer] | None,
        scheduler: Callable[..., Any] | None,
        freeze: str,
        monitor: str,
    ):
        super().__init__()
        if freeze not in FREEZE_STRATEGIES:
            raise ConfigError(f"freeze.strategy={freeze!r}: choose one of {list(FREEZE_STRATEGIES)}.")
        if optimizer is not None:
            check_optimizer(optimizer)  # fail at build time, not after data preparation and a sanity check
        self.id2label = {int(k): str(v) for k, v in (id2label or {i: str(i) for i in range(num_labels)}).items()}
        if len(self.id2label) != num_labels:
            raise ConfigError(f"id2label has {len(self.id2label)} entries but num_labels={num_labels}.")
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.freeze = freeze
        self.monitor = monitor
        self.train_metrics = stage_metrics(num_labels, "train")
        self.val_metrics = stage_metrics(num_labels, "val")
        self.test_metrics = stage_metrics(num_labels, "test")

    # ------------------------------------------------------------------ to define in subclasses
    @property
    def backbone(self) -> torch.nn.Module:
        raise NotImplementedError

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    @classmethod
    def data_inputs(cls, model_cfg: Any) -> dict[str, Any]:
        """What the data module needs from the model config (a tokenizer, a preprocessing recipe)."""
        raise NotImplementedError

    def export(self, out_dir: Any, datamodule: Any) -> Any:
        raise NotImplementedError

    # ------------------------------------------------------------------ freezing
    def apply_freeze(self) -> None:
        frozen = self.freeze == "backbone"
        for p in self.backbone.parameters():
            p.requires_grad_(not frozen)

    def train(self, mode: bool = True) -> Classifier:
        super().train(mode)
        if self.freeze == "backbone":
            self.backbone.eval()  # a frozen backbone is a fixed feature extractor: no dropout, BN stats fixed
        return self

    # ------------------------------------------------------------------ steps
    def _step(self, batch: dict[str, torch.Tensor], stage: str, metrics: MetricCollection) -> torch.Tensor:
        logits = self.logits(batch)
        loss = torch.nn.functional.cross_entropy(logits.float(), batch["labels"])
        metrics.update(logits.detach().float(), batch["labels"])
        bs = len(batch["labels"])
        self.log(f"{stage}/loss", loss, prog_bar=stage != "test", on_step=stage == "train", on_epoch=True, batch_size=bs)
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage == "val", batch_size=bs)
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train", self.train_metrics)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val", self.val_metrics)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "test", self.test_metrics)

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.logits(batch).float().softmax(-1)

    # ------------------------------------------------------------------ optimization
    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None:
            raise ConfigError("TextClassifier was built without an optimizer; pass optimizer=partial(torch.optim.AdamW, lr=...).")
        optimizer = build_optimizer(self.optimizer_factory, list(self.named_parameters()), self.device)
        scheduler = build_scheduler(self.scheduler_factory, optimizer, self.trainer.estimated_stepping_batches, self.monitor)
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # RNG state, so a run resumed mid-epoch draws the same dropout masks as an uninterrupted one.
        checkpoint["rng_state"] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            checkpoint["rng_state"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("rng_state")
        if state is not None:
            torch.set_rng_state(state["torch"])
            if "cuda" in state and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["cuda"])


class TextClassifier(Classifier):
    """Fine-tunes a pretrained HF encoder (BERT, RoBERTa, DistilBERT, MiniLM...) with a classification head.

    Only plain data is saved as hyper-parameters (no pickled optimizer factories); the HF config is
    stored in each checkpoint so :meth:`from_checkpoint` rebuilds the model without hub access.
    Usable without Hydra::

        model = TextClassifier("bert-base-uncased", num_labels=2, optimizer=partial(torch.optim.AdamW, lr=2e-5))
    """

    modality = "text"

    def __init__(
        self,
        name_or_path: str | None = None,
        num_labels: int = 2,
        id2label: dict[int, str] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        freeze: str = "none",
        monitor: str = "val/acc",
        hf_config: dict | None = None,
    ):
        super().__init__(num_labels, id2label, optimizer, scheduler, freeze, monitor)
        self.name_or_path = resolve_name_or_path(name_or_path) if hf_config is None else name_or_path
        self.save_hyperparameters(
            {"name_or_path": self.name_or_path, "num_labels": num_labels, "id2label": self.id2label,
             "freeze": freeze, "monitor": monitor}
        )
        self.model = load_sequence_classifier(self.name_or_path, num_labels, self.id2label, hf_config)
        self.apply_freeze()
        self.train()  # from_pretrained returns eval mode; Lightning keeps each module's mode as found

    @property
    def backbone(self) -> torch.nn.Module:
        return self.model.base_model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self(batch["input_ids"], batch["attention_mask"])

    @classmethod
    def data_inputs(cls, model_cfg: Any) -> dict[str, Any]:
        return {"tokenizer": resolve_name_or_path(model_cfg.get("name_or_path"))}

    def export(self, out_dir: Any, datamodule: Any) -> Any:
        from sft.export import export_text_model

        return export_text_model(self, datamodule.tokenizer, out_dir)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["hf_config"] = self.model.config.to_dict()

    @classmethod
    def from_checkpoint(cls, path: str, map_location: str = "cpu") -> TextClassifier:
        """Rebuild from an sft checkpoint alone (architecture from the stored HF config)."""
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
        hp = checkpoint["hyper_parameters"]
        model = cls(hp["name_or_path"], hp["num_labels"], hp["id2label"], freeze=hp.get("freeze", "none"),
                    monitor=hp.get("monitor", "val/acc"), hf_config=checkpoint["hf_config"])
        model.load_state_dict(checkpoint["state_dict"])
        return model.eval()
