"""Classification LightningModules: a modality-agnostic base and the HF text classifier."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import torch
from torchmetrics import Metric, MetricCollection

from sft.checkpoint_io import FINGERPRINT_KEY, weights_fingerprint
from sft.errors import ConfigError, TrainingDiverged
from sft.export import export_text_model
from sft.finetune.blocks import block_map, group_modules
from sft.finetune.lora import add_lora, frozen_checksum, merged_copy
from sft.finetune.strategy import FreezeSpec
from sft.models.backbones import load_task_model, resolve_name_or_path
from sft.models.cpu_attention import use_cpu_training_attention
from sft.models.dropout import use_fast_cpu_dropout
from sft.models.embedding_grad import reuse_embedding_grad_buffers
from sft.models.embedding_rows import expand_checkpoint, train_used_rows
from sft.optim import build_optimizer, build_scheduler, check_optimizer
from sft.tasks import Task, make_task, task_from_dict
from sft.tasks.imbalance import Criterion

log = logging.getLogger(__name__)

HEAD_BIAS = {"prior": "the output bias starts at the training targets' distribution (class frequencies, mean score)",
             "library": "as the model library initialises it (transformers: zero)"}


class _FeaturesCaptured(Exception):
    """Stops a forward pass once the head's input is known."""


class Classifier(L.LightningModule):
    """What every sft classifier shares, whatever the input: loss, per-stage metrics, freezing of
    ``backbone``, optimizer and schedule, RNG state in checkpoints. Subclasses build ``self.model``,
    say which part is the ``backbone``, turn a batch into ``logits``, say what their data module
    needs (``data_inputs``) and how to ``export`` themselves.
    """

    cpu_bf16_pays = True  # bf16 autocast speeds this model up on an AMX / AVX512-BF16 CPU (see ImageClassifier)

    modality = ""  # "text" / "image": which data modules fit

    def __init__(
        self,
        num_labels: int,
        id2label: dict[int, str] | None,
        optimizer: Callable[..., torch.optim.Optimizer] | None,
        scheduler: Callable[..., Any] | None,
        freeze: str | Mapping[str, Any] | FreezeSpec,
        monitor: str,
        task: Task | Mapping[str, Any] | None = None,
        head_bias: str = "prior",
        fast_cpu_dropout: bool = True,
        embedding_grad_buffer: bool = True,
        loss: Mapping[str, Any] | None = None,
        embedding_used_rows: bool = True,
    ):
        super().__init__()
        self.fast_cpu_dropout = fast_cpu_dropout
        self.embedding_grad_buffer = embedding_grad_buffer
        self.embedding_used_rows = embedding_used_rows
        self._undo_embedding_grad_buffers: Callable[[], None] | None = None
        if head_bias not in HEAD_BIAS:
            raise ConfigError(f"model.head_bias={head_bias!r}: use {' or '.join(map(repr, HEAD_BIAS))} ("
                              f"{'; '.join(f'{k}: {v}' for k, v in HEAD_BIAS.items())}).")
        self.head_bias = head_bias
        self._head_bias_done = head_bias != "prior"
        self.freeze_spec = FreezeSpec.parse(freeze)
        if optimizer is not None:
            check_optimizer(optimizer)  # fail at build time, not after data preparation and a sanity check
        if task is not None:  # the task names the label space
            self.task = task if isinstance(task, Task) else task_from_dict(dict(task))
            num_labels, id2label = self.task.num_outputs, self.task.id2label
        self.id2label = {int(k): str(v) for k, v in (id2label or {i: str(i) for i in range(num_labels)}).items()}
        if len(self.id2label) != num_labels:
            raise ConfigError(f"id2label has {len(self.id2label)} entries but num_labels={num_labels}.")
        if task is None:
            self.task = make_task("single_label", [self.id2label[i] for i in range(num_labels)])
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.freeze = self.freeze_spec.strategy
        self.monitor = monitor
        self._groups: dict[str, list[tuple[str, torch.nn.Parameter]]] = {}  # bottom to top
        self._group_modules: dict[str, list[torch.nn.Module]] = {}
        self._frozen: set[str] = set()
        self._ddp_reduced: set[int] | None = None
        self.train_metrics = self.task.metrics("train")
        self.val_metrics = self.task.metrics("val")
        self.test_metrics = self.task.metrics("test")
        # The training objective (loss.class_weights / pos_weight / focal_gamma); its weights are saved buffers.
        self.criterion = Criterion(self.task, loss)
        if self.task.kind == "multi_label":  # the decision thresholds (tuned on val): saved in every checkpoint
            self.register_buffer("thresholds", self.task.initial_thresholds())

    def finish_build(self) -> None:
        """What a subclass calls once it has built ``self.model``: LoRA adapters (freeze=lora), the cheaper CPU
        dropout (same dropout, ``sft.models.dropout``), freezing, and train mode (``from_pretrained`` returns eval
        mode; Lightning keeps each module's mode as found)."""
        if self.freeze == "lora":
            spec = self.freeze_spec
            # Outside the module tree (not a submodule): it wraps self.model, whose parameters stay the only ones.
            self.__dict__["peft_model"] = add_lora(
                self.model, r=spec.r, lora_alpha=spec.lora_alpha, lora_dropout=spec.lora_dropout,
                target_modules=spec.target_modules, trainable_modules=self.lora_trained_modules())
            self._trainable_names = {n for n, p in self.model.named_parameters() if p.requires_grad}
            self._base_checksum = frozen_checksum(self._lora_base_weights())
            # Checkpoints hold only what trains; the frozen weights come from the pretrained model (checked).
            self.strict_loading = False
        if self.fast_cpu_dropout:
            use_fast_cpu_dropout(self.model)
        self.apply_freeze()
        self.train()

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

    @property
    def head_entry(self) -> torch.nn.Module:
        """The first module of the trainable head: its input is the feature a frozen backbone produces."""
        raise NotImplementedError

    def head_logits(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from cached features (what :attr:`head_entry` received), exactly as the full forward."""
        raise NotImplementedError

    def lora_trained_modules(self) -> list[str]:
        """Names of the modules of ``self.model`` that train in full under freeze=lora (the head)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ LoRA
    def _lora_base_weights(self) -> list[tuple[str, torch.nn.Parameter]]:
        # The pretrained weights an adapter checkpoint rests on (not peft's copy of the untrained head).
        return [(n, p) for n, p in self.model.named_parameters()
                if n not in self._trainable_names and ".original_module." not in n]

    def exportable_model(self) -> torch.nn.Module:
        """The model to export: ``self.model``, or under LoRA a copy with the adapters merged into its weights."""
        return merged_copy(self.peft_model) if self.freeze == "lora" else self.model

    def save_adapter(self, out_dir: Any) -> Any:
        """The LoRA adapter alone, in peft's format (``PeftModel.from_pretrained(base, out_dir)`` loads it)."""
        if self.freeze != "lora":
            raise ConfigError(f"export.adapter=true saves a LoRA adapter, but this model was trained with "
                              f"freeze={self.freeze}: use freeze=lora, or drop export.adapter.")
        self.peft_model.save_pretrained(str(out_dir))
        return out_dir

    # ------------------------------------------------------------------ features for cached probes
    def features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The input of :attr:`head_entry` for a batch (the backbone's output), without running the head.
        A sequence input (RoBERTa's head reads token 0) keeps its first position only."""
        captured: dict[str, torch.Tensor] = {}

        def grab(module: torch.nn.Module, args: tuple) -> None:
            captured["x"] = args[0]
            raise _FeaturesCaptured

        handle = self.head_entry.register_forward_pre_hook(grab)
        try:
            self.logits(batch)
        except _FeaturesCaptured:
            pass
        finally:
            handle.remove()
        x = captured["x"]
        return x[:, :1] if x.ndim == 3 else x

    def batch_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head_logits(batch["features"]) if "features" in batch else self.logits(batch)

    def export(self, out_dir: Any, datamodule: Any) -> Any:
        raise NotImplementedError

    # ------------------------------------------------------------------ the head's starting point
    @property
    def output_layer(self) -> torch.nn.Linear | None:
        """The layer that produces the logits: the last ``Linear`` with one output per logit (every head of
        transformers, torchvision and timm ends in one)."""
        linears = [m for m in self.model.modules()
                   if isinstance(m, torch.nn.Linear) and m.out_features == self.task.num_outputs]
        return linears[-1] if linears else None

    def init_head_bias(self, targets: torch.Tensor) -> None:
        """Set the output bias to the task's prior of ``targets`` (the training split's): see ``Task.head_bias``."""
        layer = self.output_layer
        if layer is None or layer.bias is None:
            log.info("model.head_bias=prior: %s has no output bias to set; kept as initialised.",
                     type(self.model).__name__)
            return
        with torch.no_grad():
            layer.bias.copy_(self.task.head_bias(targets.cpu()).to(layer.bias))
        log.info("Head bias initialised from the %d training targets (model.head_bias=prior; a resumed run's checkpoint "
                 "replaces it): %s", len(targets),
                 ", ".join(f"{v:.3g}" for v in layer.bias.tolist()[:8]) + (" ..." if layer.out_features > 8 else ""))

    def setup(self, stage: str) -> None:
        # Once per model, so a second fit continues from the trained bias. Lightning restores a checkpoint after
        # setup, so a resumed run gets its trained head back.
        loss_pending = self.criterion.spec.active and not getattr(self, "_loss_logged", False)
        if stage != "fit" or (self._head_bias_done and not loss_pending):
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        targets = datamodule.train_targets() if hasattr(datamodule, "train_targets") else None
        if loss_pending:  # balanced weights from the training split (a resumed run keeps its own), logged
            table = self.criterion.fit(targets)
            log.info("Training loss with %s (a resumed run's checkpoint replaces these weights):\n%s",
                     self.criterion.spec.describe(), table)
            self._loss_logged = True
        if not self._head_bias_done and targets is not None and len(targets):
            self.init_head_bias(targets)
            shift, layer = self.criterion.prior_shift(), self.output_layer
            if shift is not None and layer is not None and layer.bias is not None:  # the weighted loss's prior
                with torch.no_grad():
                    layer.bias.add_(shift.to(layer.bias))
        self._head_bias_done = True

    # ------------------------------------------------------------------ freezing
    def _build_groups(self) -> None:
        """Parameter groups, bottom to top: from the block map (stem, blocks, head) when the strategy needs
        one, else ``backbone`` / ``head``. Subclasses call :meth:`apply_freeze` once ``self.model`` exists."""
        spec = self.freeze_spec
        named = list(self.model.named_parameters())
        if spec.needs_block_map:
            bmap = block_map(self.model)
            spec.check_depth(bmap.depth, type(self.model).__name__)
            order = bmap.group_names()
            self._groups = {g: [] for g in order}
            for name, p in named:
                self._groups[bmap.group_of(name)].append((name, p))
            self._group_modules = {g: group_modules(self.model, bmap, g) for g in order}
        else:
            in_backbone = {id(p) for p in self.backbone.parameters()}
            self._groups = {"backbone": [(n, p) for n, p in named if id(p) in in_backbone],
                            "head": [(n, p) for n, p in named if id(p) not in in_backbone]}
            self._group_modules = {"backbone": [self.backbone], "head": []}

    def freeze_progress(self) -> int:
        """Epochs or optimizer steps done, the clock of ``gradual`` milestones."""
        if self._trainer is None:
            return 0
        return self.trainer.global_step if self.freeze_spec.unit == "step" else self.current_epoch

    def apply_freeze(self, progress: int | None = None) -> None:
        """Set ``requires_grad`` (and eval mode) of every group for ``progress`` (default: now)."""
        if not self._groups:
            self._build_groups()
        frozen = self.freeze_spec.frozen(list(self._groups), self.freeze_progress() if progress is None else progress)
        changed = frozen != self._frozen or progress == 0
        self._frozen = frozen
        trainable = getattr(self, "_trainable_names", None)  # LoRA: the adapters and the head, not whole groups
        for group, params in self._groups.items():
            for name, p in params:
                p.requires_grad_(group not in frozen and (trainable is None or name in trainable))
        if not any(p.requires_grad for p in self.parameters()):
            raise ConfigError("No trainable parameters: the freeze strategy froze everything (check freeze=...).")
        if self.training:
            self.train()  # frozen groups to eval mode
        if changed and self._trainer is not None:
            log.info("Freeze (%s) at %s %d:\n%s", self.freeze, self.freeze_spec.unit, self.freeze_progress(),
                     self.freeze_table())

    def freeze_table(self) -> str:
        lines = [f"{'group':<10} {'params':>12} {'trainable':>12} {'frozen':>12}"]
        for group, params in self._groups.items():
            total = sum(p.numel() for _, p in params)
            trainable = sum(p.numel() for _, p in params if p.requires_grad)
            lines.append(f"{group:<10} {total:>12,} {trainable:>12,} {total - trainable:>12,}")
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        lines.append(f"{'all':<10} {total:>12,} {trainable:>12,} {total - trainable:>12,}  "
                     f"({100 * trainable / max(total, 1):.2f}% trainable)")
        return "\n".join(lines)

    def group_state(self) -> dict[str, bool]:
        """Group -> trainable now (for logs, checkpoints and tests)."""
        return {group: group not in self._frozen for group in self._groups}

    def train(self, mode: bool = True) -> Classifier:
        super().train(mode)
        if mode:
            # A frozen part is a fixed feature extractor: no dropout, BatchNorm statistics kept.
            for group in self._frozen:
                for module in self._group_modules.get(group, []):
                    module.eval()
        return self

    def on_fit_start(self) -> None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # DDP's reducer was built over the parameters trainable when it wrapped the model (now).
            self._ddp_reduced = {id(p) for p in self.parameters() if p.requires_grad}
        self.apply_freeze()
        log.info("Trainable parameters by group (%s):\n%s", self.freeze, self.freeze_table())
        from lightning.pytorch.strategies import SingleDeviceStrategy

        # One process without a DDP wrapper (DDP with one device still reduces a dense embedding gradient).
        if self.device.type == "cpu" and isinstance(self.trainer.strategy, SingleDeviceStrategy):
            self._undo_embedding_grad_buffers = self._cpu_embedding_gradients()

    def _cpu_embedding_gradients(self) -> Callable[[], None]:
        """On a CPU in one process: the optimizer updates only the word-embedding rows the training data uses
        (``sft.models.embedding_rows``), and other large embeddings keep one gradient buffer for the fit
        (``sft.models.embedding_grad``); returns what undoes both."""
        undo = []
        datamodule = getattr(self.trainer, "datamodule", None)
        used = datamodule.train_token_ids() if hasattr(datamodule, "train_token_ids") else None
        if self.embedding_used_rows and used is not None:
            for optimizer in self.trainer.optimizers:
                if (undo_rows := train_used_rows(self.model, optimizer, used)) is not None:
                    undo.append(undo_rows)
                    break
        if self.embedding_grad_buffer:
            undo.append(reuse_embedding_grad_buffers(self.model))

        def undo_all() -> None:
            for step in reversed(undo):
                step()

        return undo_all

    def on_fit_end(self) -> None:
        self.end_cpu_levers()

    def end_cpu_levers(self) -> None:
        """The model and optimizer as built again (plain embedding gradients, the optimizer over the whole
        embedding). At the end of fit, and by sft.pipeline after a fit that ended without it (an interrupt)."""
        if self._undo_embedding_grad_buffers is not None:
            self._undo_embedding_grad_buffers()
            self._undo_embedding_grad_buffers = None

    def on_train_epoch_start(self) -> None:
        if self.freeze == "gradual" and self.freeze_spec.unit == "epoch":
            self.apply_freeze()
        for group, trainable in self.group_state().items():
            self.log(f"freeze/{group}", float(trainable), on_step=False, on_epoch=True)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self.freeze == "gradual" and self.freeze_spec.unit == "step":
            self.apply_freeze()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Groups unfrozen after DDP wrapped the model are outside its reducer: average their gradients here
        # so every rank takes the same step.
        if self._ddp_reduced is None:
            return
        import torch.distributed as dist

        for p in self.parameters():
            if p.grad is not None and id(p) not in self._ddp_reduced:
                dist.all_reduce(p.grad, op=dist.ReduceOp.AVG)

    # ------------------------------------------------------------------ steps
    def _step(self, batch: dict[str, torch.Tensor], stage: str, metrics: Metric) -> torch.Tensor:
        logits = self.batch_logits(batch)
        # The training objective is the weighted / focal one; val and test losses stay the task's plain loss.
        loss = self.criterion(logits, batch["labels"]) if stage == "train" else self.task.loss(logits, batch["labels"])
        metrics.update(logits.detach().float(), batch["labels"])
        bs = self.task.weight(batch["labels"])
        # Averaged over DDP ranks for val / test (once per epoch); train/loss stays per rank (no sync per step).
        self.log(f"{stage}/loss", loss, prog_bar=stage != "test", on_step=stage == "train", on_epoch=True,
                 batch_size=bs, sync_dist=stage != "train")
        return loss

    def _log_epoch(self, metrics: Metric, stage: str) -> None:
        """The stage's metrics over the epoch (torchmetrics gathers them over DDP ranks), then reset."""
        parts = metrics.values() if isinstance(metrics, MetricCollection) else [metrics]
        if not any(part.update_count for part in parts):  # e.g. limit_val_batches=0
            return
        values = {name: value.float() for name, value in metrics.compute().items()}
        self.log_dict(values, prog_bar=stage == "val")
        metrics.reset()

    def on_train_epoch_end(self) -> None:
        self._log_epoch(self.train_metrics, "train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch(self.val_metrics, "val")
        if self.task.kind == "multi_label":  # tuned on this validation (or fixed): saved with this checkpoint
            self.thresholds.copy_(self.val_metrics.thresholds.to(self.thresholds.device))

    def on_test_epoch_start(self) -> None:
        if self.task.kind == "multi_label":
            self.test_metrics.thresholds = self.thresholds.detach().clone()

    def on_test_epoch_end(self) -> None:
        self._log_epoch(self.test_metrics, "test")

    def split_metrics(self, logits: torch.Tensor, labels: torch.Tensor, split: str) -> dict[str, float]:
        """The task's metrics of one split's outputs (``sft.eval``, the report), with this model's thresholds."""
        thresholds = self.thresholds.detach().cpu() if self.task.kind == "multi_label" else None
        return self.task.split_metrics(logits, labels, split, thresholds=thresholds)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._step(batch, "train", self.train_metrics)
        # Fail loudly instead of training on: a sweep records the trial as failed and goes on. Decided
        # together across DDP ranks, so no rank is left waiting in an all-reduce.
        if not self.trainer.strategy.reduce_boolean_decision(bool(torch.isfinite(loss)), all=True):
            lr = self.trainer.optimizers[0].param_groups[-1]["lr"] if self.trainer.optimizers else None
            raise TrainingDiverged(
                f"The training loss became {loss.item()} at step {self.global_step} (epoch {self.current_epoch}, "
                f"learning rate {lr}). Lower optimizer.lr, add warmup (scheduler=linear) or use trainer.precision=32."
            )
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val", self.val_metrics)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "test", self.test_metrics)

    # ------------------------------------------------------------------ optimization
    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None:
            raise ConfigError("The classifier was built without an optimizer; pass optimizer=partial(torch.optim.AdamW, lr=...).")
        if not self._groups:
            self._build_groups()
        optimizer = build_optimizer(self.optimizer_factory, self._groups, self.device, self.freeze_spec,
                                    clips_gradients=bool(self.trainer.gradient_clip_val))
        scheduler = build_scheduler(self.scheduler_factory, optimizer, self.trainer.estimated_stepping_batches, self.monitor)
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.freeze == "lora":  # the adapters and the head (megabytes), not the frozen pretrained weights
            frozen = {f"model.{n}" for n, _ in self.model.named_parameters() if n not in self._trainable_names}
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k not in frozen}
            checkpoint["lora"] = {"base_checksum": self._base_checksum, "peft_version": _peft_version()}
        # RNG state, so a run resumed mid-epoch draws the same dropout masks as an uninterrupted one.
        checkpoint["rng_state"] = {"torch": torch.get_rng_state()}
        if self._trainer is None or self.trainer.world_size == 1:  # what sft.pipeline.fit reads (one process)
            checkpoint[FINGERPRINT_KEY] = weights_fingerprint(checkpoint["state_dict"])
        checkpoint["freeze_state"] = self.group_state()  # for inspection; resume recomputes it from progress
        if torch.cuda.is_available():
            checkpoint["rng_state"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.check_lora_checkpoint(checkpoint)
        if self._trainer is not None and self._trainer.state.fn == "fit":
            # Before Lightning loads the optimizer states: a CPU fit saved its word embedding's moments compact.
            # (Not for validate / test, which load no optimizer: that would map and copy them for nothing.)
            expand_checkpoint(checkpoint)
        state = checkpoint.get("rng_state")
        if state is not None:
            torch.set_rng_state(state["torch"])
            if "cuda" in state and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["cuda"])


    def load_checkpoint_weights(self, checkpoint: dict[str, Any]) -> None:
        """The weights of an sft checkpoint. A LoRA one holds only what trains: checked, the frozen weights kept."""
        self.check_lora_checkpoint(checkpoint)
        self.load_state_dict(checkpoint["state_dict"], strict=self.freeze != "lora")

    def check_lora_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A LoRA checkpoint holds only what trains: refuse one that lacks a trained weight, or that was trained on
        other frozen weights than this model's (another base model), or with another adapter scale, instead of
        loading it partly. A LoRA checkpoint onto a model without LoRA is refused too."""
        if self.freeze != "lora":
            if "lora" in checkpoint:
                raise ConfigError(f"The checkpoint was written by a freeze=lora run (adapters only), but this model is "
                                  f"freeze={self.freeze}: use freeze=lora with the run's settings, or start fresh "
                                  "(resume=false).")
            return
        saved_spec = FreezeSpec.parse(checkpoint.get("hyper_parameters", {}).get("freeze", "none"))
        if saved_spec.strategy == "lora":
            changed = [k for k in ("r", "lora_alpha", "target_modules")
                       if getattr(saved_spec, k) != getattr(self.freeze_spec, k)]
            if changed:
                raise ConfigError(f"The LoRA checkpoint was trained with freeze.{changed[0]}="
                                  f"{getattr(saved_spec, changed[0])!r}, this model has "
                                  f"{getattr(self.freeze_spec, changed[0])!r}: use the run's LoRA settings.")
        state = checkpoint.get("state_dict", {})
        missing = sorted(f"model.{n}" for n in self._trainable_names if f"model.{n}" not in state)
        if missing:
            raise ConfigError(f"The checkpoint lacks {len(missing)} weights that freeze=lora trains (e.g. {missing[0]}): "
                              "it was written with other LoRA settings (freeze.r, freeze.target_modules) or without "
                              "LoRA. Use the settings it was trained with.")
        saved = checkpoint.get("lora", {}).get("base_checksum")
        if saved is not None and not math.isclose(saved, self._base_checksum, rel_tol=1e-9):
            raise ConfigError(f"The LoRA checkpoint was trained on other pretrained weights than "
                              f"{getattr(self.hparams, 'name_or_path', None) or getattr(self.hparams, 'arch', 'this model')!r} "
                              f"(checksum {saved:.6g} vs {self._base_checksum:.6g}): load it with the base model "
                              "it was trained from (model.name_or_path / model.weights).")


def _peft_version() -> str:
    from importlib.metadata import version

    return version("peft")


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
        freeze: str | Mapping[str, Any] = "none",
        monitor: str = "val/acc",
        hf_config: dict | None = None,
        task: Task | Mapping[str, Any] | None = None,
        head_bias: str = "prior",
        fast_cpu_dropout: bool = True,
        embedding_grad_buffer: bool = True,
        loss: Mapping[str, Any] | None = None,
        embedding_used_rows: bool = True,
        fast_cpu_attention: bool = True,
    ):
        # A model rebuilt from a checkpoint (hf_config) has its trained head: never re-initialised.
        super().__init__(num_labels, id2label, optimizer, scheduler, freeze, monitor, task,
                         head_bias if hf_config is None else "library", fast_cpu_dropout, embedding_grad_buffer, loss,
                         embedding_used_rows)
        self.name_or_path = resolve_name_or_path(name_or_path) if hf_config is None else name_or_path
        self.save_hyperparameters(
            {"name_or_path": self.name_or_path, "num_labels": self.task.num_outputs, "id2label": self.id2label,
             "freeze": freeze, "monitor": monitor, "task": self.task.to_dict(), "loss": self.criterion.spec.to_dict()}
        )
        self.model = load_task_model(self.name_or_path, self.task, hf_config)
        if fast_cpu_attention:  # same attention, faster on a CPU in training (sft.models.cpu_attention)
            use_cpu_training_attention(self.model)
        self.finish_build()

    @property
    def backbone(self) -> torch.nn.Module:
        return self.model.base_model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))

    @property
    def head_entry(self) -> torch.nn.Module:
        return getattr(self.model, "pre_classifier", None) or self.model.classifier  # DistilBERT / others

    def mean_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean of the last hidden states over real tokens (sentence-transformers' pooling)."""
        states = self.model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])[0]
        mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
        return (states * mask).sum(1) / mask.sum(1).clamp(min=1)

    def head_logits(self, features: torch.Tensor) -> torch.Tensor:
        # The head part of the HF forward: DistilBERT pre_classifier -> ReLU -> dropout -> classifier;
        # BERT dropout -> classifier; RoBERTa's classifier module is the whole head (reads token 0).
        m = self.model
        if getattr(m, "pre_classifier", None) is not None:
            return m.classifier(m.dropout(torch.relu(m.pre_classifier(features))))
        if isinstance(getattr(m, "dropout", None), torch.nn.Dropout):
            features = m.dropout(features)
        return m.classifier(features)

    def lora_trained_modules(self) -> list[str]:
        # The task head (every top-level module beside the encoder that has weights: classifier, DistilBERT's
        # pre_classifier) and the encoder's pooler, which BERT's head reads: new or task-specific, so trained in full.
        prefix = self.model.base_model_prefix
        names = [n for n, m in self.model.named_children() if n != prefix and any(True for _ in m.parameters())]
        pooler = getattr(self.model.base_model, "pooler", None)
        if isinstance(pooler, torch.nn.Module) and any(True for _ in pooler.parameters()):
            names.append(f"{prefix}.pooler")
        return names

    @classmethod
    def data_inputs(cls, model_cfg: Any) -> dict[str, Any]:
        return {"tokenizer": resolve_name_or_path(model_cfg.get("name_or_path"))}

    def export(self, out_dir: Any, datamodule: Any) -> Any:
        thresholds = self.thresholds.tolist() if self.task.kind == "multi_label" else None
        return export_text_model(self.exportable_model(), datamodule.tokenizer, out_dir, task=self.task.to_dict(),
                                 thresholds=thresholds)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["hf_config"] = self.model.config.to_dict()

    @classmethod
    def from_checkpoint(cls, path: str, map_location: str = "cpu") -> TextClassifier:
        """Rebuild from an sft checkpoint alone (architecture from the stored HF config)."""
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
        hp = checkpoint["hyper_parameters"]
        # A LoRA checkpoint holds only the adapters and the head: the frozen weights come from the base model.
        lora = "lora" in checkpoint
        model = cls(hp["name_or_path"], hp["num_labels"], hp["id2label"], freeze=hp.get("freeze", "none"),
                    monitor=hp.get("monitor", "val/acc"), hf_config=None if lora else checkpoint["hf_config"],
                    task=hp.get("task"), head_bias="library")
        model.load_checkpoint_weights(checkpoint)
        return model.eval()
