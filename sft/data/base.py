"""What the text and image DataModules share: the label space they own, and exact mid-epoch resume."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch

from sft.data.batching import TrainBatchSampler, distributed_rank, training_position
from sft.tasks import Task, make_task


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

    def make_train_sampler(self, lengths: Sequence[int], batch_size: int, seed: int, group_by_length: bool,
                           drop_last: bool = False) -> TrainBatchSampler:
        rank, world_size = distributed_rank()  # loaders are built in each DDP process, after the group is up
        sampler = TrainBatchSampler(lengths, batch_size, seed, group_by_length=group_by_length, drop_last=drop_last,
                                    rank=rank, world_size=world_size, epoch_fn=self._training_epoch)
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
