"""Batching for variable-length token sequences: pad at collate time, group by length for training.

Length grouping (HF's ``group_by_length``): shuffle, cut into chunks of ``chunk_batches`` batches, sort
each chunk by length, then shuffle the batches. SST-2 rows average 13 tokens but random batches of 32
pad to 40; grouped batches pad to 14, which is most of the training speed-up. A balanced sampler
(``data.sampler=balanced``) replaces the shuffle with a seeded weighted draw of the epoch's indices and
length-groups that list the same way.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
from collections.abc import Callable, Iterator, Sequence

import torch

log = logging.getLogger(__name__)


class PadCollator:
    """Pads examples (dicts of ``input_ids``, optional ``token_type_ids``, ``labels``) into a batch dict; picklable
    for worker processes. Per-token labels are padded with -100 (ignored by the loss and the metrics); one label
    (or one row of labels) per example is stacked. ``(input_ids, label)`` pairs are taken too."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, items: Sequence[dict[str, torch.Tensor] | tuple[torch.Tensor, int]]) -> dict[str, torch.Tensor]:
        items = [item if isinstance(item, dict) else {"input_ids": item[0], "labels": torch.tensor(item[1])}
                 for item in items]
        width = max(len(item["input_ids"]) for item in items)
        batch = {"input_ids": self._pad([item["input_ids"] for item in items], width, self.pad_token_id),
                 "attention_mask": torch.zeros((len(items), width), dtype=torch.long)}
        for row, item in enumerate(items):
            batch["attention_mask"][row, : len(item["input_ids"])] = 1
        if "token_type_ids" in items[0]:
            batch["token_type_ids"] = self._pad([item["token_type_ids"] for item in items], width, 0)
        labels = [torch.as_tensor(item["labels"]) for item in items]
        per_token = labels[0].ndim == 1 and len(labels[0]) == len(items[0]["input_ids"]) and labels[0].dtype == torch.long
        batch["labels"] = self._pad(labels, width, -100) if per_token else torch.stack(labels)
        return batch

    @staticmethod
    def _pad(rows: Sequence[torch.Tensor], width: int, value: int) -> torch.Tensor:
        out = torch.full((len(rows), width), value, dtype=torch.long)
        for row, ids in enumerate(rows):
            out[row, : len(ids)] = ids
        return out


def distributed_rank() -> tuple[int, int]:
    """(rank, world size) of this process in a running torch.distributed group, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Every index once, shortest first, cut into batches of ``batch_size``: little padding per batch. Whoever
    runs them puts the results back in index order (``sft.inference.outputs`` does)."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def eval_batches(n: int, batch_size: int, rank: int | None = None, world: int | None = None) -> list[list[int]]:
    """This process's share of an evaluation split, in order: every example exactly once over all ranks
    (Lightning's DistributedSampler would pad with repeats and skew the metrics).

    Under DDP every rank gets the same *number* of batches (a forward through the wrapped model can be a
    collective: buffer broadcast, FSDP all-gather), so a rank's share is cut into as many batches as the
    largest share needs. Only with fewer examples on a rank than batches (batch size 1, or fewer examples
    than ranks) does a rank repeat example 0.
    """
    if rank is None or world is None:
        rank, world = distributed_rank()
    if world == 1:
        return [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    mine = list(range(rank, n, world))
    largest = -(-n // world)  # examples in the largest share
    count = max(1, -(-largest // batch_size))
    mine += [0] * (count - len(mine))
    quotient, extra = divmod(len(mine), count)
    bounds = [i * quotient + min(i, extra) for i in range(count + 1)]
    return [mine[bounds[i] : bounds[i + 1]] for i in range(count)]


def training_position(trainer) -> tuple[int, int]:
    """(epoch, batches of it already trained on) from a Lightning trainer's loop counters (restored on resume).

    The same answer whenever it is asked: in a checkpoint, when the loader starts an epoch (with loader workers
    that happens before Lightning resets its batch counter for the new epoch), and after fit (epochs trained).
    """
    epochs = trainer.fit_loop.epoch_progress.current
    done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
    if epochs.processed == epochs.started:
        # Between epochs (at an epoch's end, or as the next one starts): the next epoch has not drawn a batch,
        # although Lightning's batch counter still holds the finished epoch's count until that epoch begins.
        return epochs.processed, 0
    if done >= trainer.num_training_batches:
        # After the epoch's last batch (e.g. in the validation that ends it): a resumed run goes on with the next.
        return epochs.processed + 1, 0
    return epochs.processed, done


class TrainBatchSampler:
    """Seeded per-epoch shuffling, optionally length-grouped, that can skip batches already trained on.

    The epoch (which seeds the order) comes from ``epoch_fn`` when given (sft's DataModules pass the trainer's
    epoch), else from ``set_epoch``. Lightning's own ``set_epoch`` call does not reach a batch sampler without a
    ``.sampler``, and may come after the first batch of a resumed run is fetched, so sft does not rely on it.
    ``resume_at(epoch, batches)`` makes that epoch start after its first ``batches`` batches, so a run resumed
    from a mid-epoch checkpoint sees exactly the batches an uninterrupted run would.

    With ``weights`` (``data.sampler=balanced``) an epoch's order is not a permutation but as many draws as there
    are examples, with replacement, index ``i`` drawn with probability ``weights[i] / sum(weights)``, from the same
    (seed, epoch)-seeded generator; length grouping then works on that list (chunks sorted by length, batches
    shuffled), so a balanced epoch is as cheap to pad as a shuffled one. Resume and DDP are unchanged: a resumed
    epoch draws the same list and skips its done batches, and every rank draws the same list and takes its slice.

    Under DDP ``batch_size`` stays the *global* batch: every rank draws the same batches and trains on its
    slice of each (``rank::world_size``); DDP averages the gradients, so a step equals the single-process step
    on the whole batch, and the learning rate and schedule need no change when devices are added.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, group_by_length: bool = True,
                 chunk_batches: int = 50, drop_last: bool = False, rank: int = 0, world_size: int = 1,
                 epoch_fn: Callable[[], int] | None = None, weights: Sequence[float] | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of {world_size} processes")
        if weights is not None:
            weights = [float(w) for w in weights]
            if len(weights) != len(lengths) or any(not w >= 0 for w in weights) or not any(weights):
                raise ValueError(f"weights: one non-negative draw weight per example ({len(lengths)}), not all 0")
        # Weighted draws (data.sampler=balanced): the cumulative weights random.choices bisects.
        self.cum_weights = list(itertools.accumulate(weights)) if weights is not None else None
        self.rank = rank
        self.world_size = world_size
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.group_by_length = group_by_length
        self.chunk_batches = chunk_batches
        self.drop_last = drop_last and len(self.lengths) >= batch_size
        self.epoch = 0
        self.epoch_fn = epoch_fn
        self._resume: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, epoch: int, batches_done: int) -> None:
        self._resume = (epoch, batches_done)

    def __len__(self) -> int:
        if self.drop_last:
            return len(self.lengths) // self.batch_size
        return math.ceil(len(self.lengths) / self.batch_size)

    def batches(self, epoch: int) -> list[list[int]]:
        rng = random.Random(self.seed * 1_000_003 + epoch)
        if self.cum_weights is None:
            order = list(range(len(self.lengths)))
            rng.shuffle(order)
        else:  # as many draws as examples, with replacement, each index with probability weight / total
            order = rng.choices(range(len(self.lengths)), cum_weights=self.cum_weights, k=len(self.lengths))
        bs = self.batch_size
        if not self.group_by_length:
            batches = [order[i : i + bs] for i in range(0, len(order), bs)]
            return batches[: len(self)]  # drop_last: the short final batch
        chunk = bs * self.chunk_batches
        batches = []
        for start in range(0, len(order), chunk):
            part = sorted(order[start : start + chunk], key=lambda i: self.lengths[i], reverse=True)
            batches.extend(part[i : i + bs] for i in range(0, len(part), bs))
        rng.shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        if self.epoch_fn is not None:
            self.epoch = self.epoch_fn()
        skip = 0
        if self._resume is not None:  # only the first epoch after a resume is partly done
            (epoch, batches_done), self._resume = self._resume, None
            if epoch == self.epoch:
                skip = batches_done
            else:  # e.g. a checkpoint of an sft version that recorded the position differently
                log.warning("The checkpoint's data position (epoch %d, batch %d) does not match the resumed epoch %d: "
                            "this epoch starts from its first batch, so the run is not an exact continuation.",
                            epoch, batches_done, self.epoch)
        for batch in self.batches(self.epoch)[skip:]:
            if self.world_size == 1:
                yield batch
            else:  # a batch smaller than the world (the last one) repeats its first example on the ranks left over
                yield batch[self.rank :: self.world_size] or batch[:1]

