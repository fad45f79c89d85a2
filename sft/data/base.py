"""What the text and image DataModules share: the label space they own, and exact mid-epoch resume."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch

from sft.data.batching import TrainBatchSampler, distributed_rank, training_position
from sft.errors import ConfigError
from sft.tasks import Task, make_task

SAMPLERS = {"random": "each epoch a seeded shuffle of the training split",
            "balanced": "each epoch as many seeded draws with replacement, every class equally likely"}


class ClassificationDataModule(L.LightningDataModule):
    """Base for sft's DataModules. Subclasses implement ``load_splits()`` (validated splits with
    ``label_names``) and ``eval_dataloader(split)``, and build their train loader with ``make_train_sampler``.

    Checkpoints carry the training sampler's position (``state_dict``), so a run resumed from a
    mid-epoch checkpoint continues with exactly the batches an uninterrupted run would see: Lightning
    calls ``load_state_dict`` before it builds the train loader.
    """

    _resume_state: dict[str, int] | None = None

    def load_splits(self) -> Any:
        raise NotImplementedError

    @property
    def label_names(self) -> list[str]:
        return list(self.load_splits().label_names)

    @property
    def id2label(self) -> dict[int, str]:
        return self.task.id2label

    @property
    def label2id(self) -> dict[str, int]:
        return self.task.label2id

    @property
    def task(self) -> Task:
        """What the labels are (:mod:`sft.tasks`); single-label unless the data says otherwise."""
        return make_task("single_label", self.label_names)

    @property
    def sampler_kind(self) -> str:
        """``data.sampler``: ``random`` (a seeded shuffle per epoch) or ``balanced`` (see :meth:`sample_weights`).
        A data module serving another one's data (probe=cached features) draws as that one does."""
        kind = self.__dict__.get("sampler") or getattr(getattr(self, "source", None), "sampler", None)
        return kind or "random"

    def check_sampler(self) -> None:
        """``data.sampler`` is a known one, and the task has classes to balance (before the model loads)."""
        kind = self.sampler_kind
        if kind not in SAMPLERS:
            raise ConfigError(f"data.sampler={kind!r}: use {' or '.join(SAMPLERS)} "
                              f"({'; '.join(f'{k}: {v}' for k, v in SAMPLERS.items())}).")
        if kind == "balanced" and not self.task.has_classes:
            self.task.sample_weights(torch.zeros(0))  # the task's own reason

    def train_example_targets(self) -> torch.Tensor | None:
        """One target per training example, as the balanced sampler weighs it (:meth:`train_targets`; a tagger's
        data module gives each sentence's set of tags)."""
        return self.train_targets()

    def sample_weights(self) -> list[float] | None:
        """Each training example's draw weight under ``data.sampler=balanced`` (every class drawn equally often;
        label sets by their rarest label: :meth:`Task.sample_weights`); None for ``random``."""
        self.check_sampler()
        if self.sampler_kind == "random":
            return None
        targets = self.train_example_targets()
        if targets is None:
            raise ConfigError("data.sampler=balanced needs the training split's labels, which this data module "
                              "does not give; use data.sampler=random.")
        return self.task.sample_weights(targets).tolist()

    def make_train_sampler(self, lengths: Sequence[int], batch_size: int, seed: int, group_by_length: bool,
                           drop_last: bool = False) -> TrainBatchSampler:
        rank, world_size = distributed_rank()  # loaders are built in each DDP process, after the group is up
        sampler = TrainBatchSampler(lengths, batch_size, seed, group_by_length=group_by_length, drop_last=drop_last,
                                    rank=rank, world_size=world_size, epoch_fn=self._training_epoch,
                                    weights=self.sample_weights())
        if self._resume_state is not None:
            sampler.resume_at(self._resume_state["epoch"], self._resume_state["batches_done"])
            self._resume_state = None
        return sampler

    def _training_epoch(self) -> int:
        """The epoch whose order the train loader draws now; 0 without a trainer."""
        return self._position()[0] if self.trainer is not None else 0

    def _position(self) -> tuple[int, int]:
        """(epoch, batches of it done) for the sampler and the checkpoint; under ``overfit_batches`` always
        epoch 0: the same few batches every epoch, which is the point of it."""
        epoch, done = training_position(self.trainer)
        return (0 if self.trainer.overfit_batches else epoch), done

    def train_targets(self) -> Any:
        """Every training example's target as one tensor (after ``setup``), from which the model sets its head's
        initial bias; None where the data module cannot say."""
        dataset = getattr(self, "datasets", {}).get("train")
        labels = getattr(dataset, "labels", None)
        return labels if isinstance(labels, torch.Tensor) else None

    def eval_dataloader(self, split: str) -> Any:
        """The split in its own order (no shuffling), batched for evaluation."""
        raise NotImplementedError

    def val_dataloader(self) -> Any:
        return self.eval_dataloader("val")

    def test_dataloader(self) -> Any:
        return self.eval_dataloader("test")

    def state_dict(self) -> dict[str, Any]:
        trainer = self.trainer
        if trainer is None or trainer.state.fn != "fit":
            return {}
        epoch, done = self._position()
        return {"epoch": epoch, "batches_done": done}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict:
            self._resume_state = {"epoch": int(state_dict["epoch"]), "batches_done": int(state_dict["batches_done"])}
