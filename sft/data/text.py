"""LightningDataModule for text classification: read a source, tokenize once (cached), pad per batch."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from sft.cache import atomic_save
from sft.cache import cache_dir as sft_cache_dir
from sft.data.base import ClassificationDataModule
from sft.data.batching import PadCollator, eval_batches, length_batches
from sft.data.encoding import encode, takes_token_types, word_labels
from sft.data.sources import SPLITS, TextSplits, subsample
from sft.errors import ConfigError
from sft.tasks import Task, make_task

CACHE_VERSION = 2  # 2: task types (segment ids, per-token and float labels)
log = logging.getLogger(__name__)


class TokenizedSplit(Dataset):
    """Token ids of one split stored flat (ids + offsets): compact, fast to save and load. ``token_type_ids``
    (sentence pairs, for models that take them) and per-token ``labels`` (tagging) share the ids' offsets;
    other labels have one row per example."""

    def __init__(self, ids: torch.Tensor, offsets: torch.Tensor, labels: torch.Tensor,
                 token_type_ids: torch.Tensor | None = None, per_token: bool = False):
        self.ids, self.offsets, self.labels, self.token_type_ids = ids, offsets, labels, token_type_ids
        self.per_token = per_token

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        start, end = self.offsets[i], self.offsets[i + 1]
        item = {"input_ids": self.ids[start:end].long(),
                "labels": self.labels[start:end] if self.per_token else self.labels[i]}
        if self.token_type_ids is not None:
            item["token_type_ids"] = self.token_type_ids[start:end].long()
        return item

    def lengths(self) -> list[int]:
        return (self.offsets[1:] - self.offsets[:-1]).tolist()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Hash of what the tokenizer does (vocab, normalizer, special tokens), not of where it came from."""
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # Truncation / padding are call-time state (every tokenizer(..., max_length=n) call sets them).
        spec = json.loads(backend.to_str())
        spec["truncation"] = spec["padding"] = None
        digest.update(json.dumps(spec, sort_keys=True).encode())
    else:  # slow tokenizers: the vocabulary and special tokens
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    digest.update(json.dumps(tokenizer.all_special_tokens).encode())
    return digest.hexdigest()[:16]


def task_settings(splits: TextSplits, threshold: float | str) -> dict[str, Any]:
    """The task's settings that come from the data (and the multi-label threshold, from the data config)."""
    settings: dict[str, Any] = {"positive_label": getattr(splits, "positive_label", None),
                                "pair": bool(getattr(splits, "pair", False))}
    if getattr(splits, "task", "single_label") == "multi_label":
        settings["threshold"] = threshold
    return settings


class TextDataModule(ClassificationDataModule):
    """Owns the label space (``label_names``, ``id2label``) and hands token batches to the model.

    Usable without Hydra::

        dm = TextDataModule(source=TextFiles("train.csv"), tokenizer="bert-base-uncased")
        dm.prepare_data(); dm.setup("fit")
    """

    def __init__(
        self,
        source: Any,
        tokenizer: Any = None,
        batch_size: int | str = 32,
        eval_batch_size: int | None = None,
        max_length: int = 128,
        train_size: float | int | None = None,
        shots_per_class: int | None = None,
        group_by_length: bool = True,
        num_workers: int = 0,
        cache_dir: str | os.PathLike | None = None,
        seed: int = 0,
        label_names: list[str] | None = None,
        threshold: float | str = 0.5,
        sampler: str = "random",
    ):
        super().__init__()
        if tokenizer is None:
            raise ConfigError("TextDataModule needs a tokenizer (a name, a folder or a tokenizer object).")
        if not (batch_size == "full" or (isinstance(batch_size, int) and batch_size >= 1)):
            raise ConfigError(f"data.batch_size={batch_size!r} must be a positive integer or 'full' (whole training set).")
        if not isinstance(max_length, int) or max_length < 2:
            raise ConfigError(f"data.max_length={max_length!r} must be an integer >= 2.")
        self.source = source
        self._tokenizer = tokenizer
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.requested_max_length = max_length
        self._max_length: int | None = None  # max_length within the model's limit, set on first use
        self.train_size = train_size
        self.shots_per_class = shots_per_class
        self.group_by_length = group_by_length
        self.num_workers = num_workers
        self.cache_dir = Path(cache_dir) if cache_dir else sft_cache_dir("tokenized")
        self.seed = seed
        self.fixed_label_names = list(label_names) if label_names else None  # e.g. a trained model's order
        self.threshold = threshold  # multi-label decision threshold: a probability, "global" or "per_label"
        self.sampler = sampler  # training draws: "random" or "balanced" (ClassificationDataModule.sample_weights)
        self.splits: TextSplits | None = None
        self._task: Task | None = None
        self.datasets: dict[str, TokenizedSplit] = {}
        self.cache_file: Path | None = None

    @property
    def max_length(self) -> int:
        """data.max_length, clamped (with a warning) to the longest input the model takes."""
        if self._max_length is None:
            from sft.models.backbones import input_limit

            self._max_length = self.requested_max_length
            limit = input_limit(self.tokenizer)
            if limit is not None and limit[0] < self.requested_max_length:
                self._max_length = limit[0]
                log.warning("data.max_length=%d is longer than the model takes (%s): using data.max_length=%d. "
                            "Set data.max_length<=%d to silence this.", self.requested_max_length, limit[1],
                            limit[0], limit[0])
        return self._max_length

    # ------------------------------------------------------------------ label space
    @property
    def tokenizer(self) -> Any:
        if isinstance(self._tokenizer, str | os.PathLike):
            from sft.models.backbones import load_tokenizer

            self._tokenizer = load_tokenizer(str(self._tokenizer))
        return self._tokenizer

    def load_splits(self) -> TextSplits:
        """Read and validate the source once; apply the seeded training subset."""
        if self.splits is None:
            splits = self.source.load() if hasattr(self.source, "load") else dataclasses.replace(self.source)
            if self.fixed_label_names:
                splits.label_names = self.fixed_label_names
            splits.validate()
            splits.train = subsample(splits.train, self.train_size, self.shots_per_class, self.seed,
                                     task=getattr(splits, "task", "single_label"))
            self.splits = splits
        return self.splits

    # ------------------------------------------------------------------ tokenize once, cached
    def input_fingerprint(self) -> str:
        """What the model sees: tokenizer behaviour, max_length and the data (splits after subsetting)."""
        splits = self.load_splits()
        return hashlib.sha256(
            json.dumps([CACHE_VERSION, tokenizer_fingerprint(self.tokenizer), self.max_length, splits.fingerprint()]).encode()
        ).hexdigest()[:20]

    def _cache_path(self) -> Path:
        return self.cache_dir / f"{self.input_fingerprint()}.pt"

    def prepare_data(self) -> None:
        path = self._cache_path()
        self.cache_file = path
        if path.is_file():
            return
        splits = self.load_splits()
        payload: dict[str, Any] = {"version": CACHE_VERSION, "label_names": splits.label_names}
        for name in self.split_names:
            payload[name] = self._tokenize(splits.split(name), splits.origin.get(name, name))
        atomic_save(payload, path)

    def _tokenize(self, rows: list[tuple[Any, Any]], origin: str) -> dict[str, Any]:
        """One split as flat token ids, offsets, labels (and segment ids for pairs)."""
        task, inputs = self.task, [x for x, _ in rows]
        tagging = task.kind == "token"
        encoded = encode(self.tokenizer, inputs, self.max_length, words=tagging)
        ids = encoded["input_ids"]
        lengths = torch.tensor([len(x) for x in ids], dtype=torch.long)
        split = {"ids": torch.tensor([i for seq in ids for i in seq], dtype=torch.int32),
                 "offsets": torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])}
        if tagging:
            labels = word_labels(encoded, [tags for _, tags in rows], task.label2id, origin)
            split.update(labels=torch.tensor([i for seq in labels for i in seq], dtype=torch.long), per_token=True)
        else:
            split["labels"] = task.targets([y for _, y in rows])
        if not tagging and takes_token_types(self.tokenizer, inputs):  # (a two-word sentence is not a pair)
            split["token_type_ids"] = torch.tensor([t for seq in encoded["token_type_ids"] for t in seq],
                                                   dtype=torch.int8)
        return split

    @property
    def split_names(self) -> tuple[str, ...]:
        """train / val / test, then the source's extra labelled evaluation splits (MNLI's mismatched dev)."""
        return (*SPLITS, *getattr(self.load_splits(), "extra_test", {}))

    @property
    def task(self) -> Task:
        """What the labels are (:mod:`sft.tasks`): from the source, over the label space."""
        if self._task is None:
            splits = self.load_splits()
            self._task = make_task(getattr(splits, "task", "single_label"), splits.label_names,
                                   **task_settings(splits, self.threshold))
        return self._task

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        if self.cache_file is None or not self.cache_file.is_file():
            self.prepare_data()
        payload = torch.load(self.cache_file, weights_only=True)
        self.datasets = {name: TokenizedSplit(**payload[name]) for name in self.split_names}

    def train_example_targets(self) -> torch.Tensor | None:
        """One target per training example; for tagging, each sentence's tags as a 0/1 row (the balanced
        sampler draws sentences by their rarest tag)."""
        dataset = self.datasets.get("train")
        if dataset is None or not dataset.per_token:
            return self.train_targets()
        lengths = dataset.offsets[1:] - dataset.offsets[:-1]
        sentence = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
        keep = dataset.labels >= 0
        presence = torch.zeros(len(lengths), self.task.num_outputs)
        presence[sentence[keep], dataset.labels[keep].long()] = 1.0
        return presence

    def train_token_ids(self) -> torch.Tensor | None:
        """Every token id a training batch can hold (the training split's and padding), sorted: the word-embedding
        rows that training updates (``sft.models.embedding_rows``)."""
        dataset = self.datasets.get("train")
        if dataset is None:
            return None
        ids = torch.unique(dataset.ids)  # in the split's own (small) integer type: no long copy of every token
        return torch.unique(torch.cat([ids.long(), torch.tensor([self.tokenizer.pad_token_id or 0])]))

    # ------------------------------------------------------------------ loaders
    def _loader(self, dataset: TokenizedSplit, **kwargs: Any) -> DataLoader:
        return DataLoader(
            dataset,
            collate_fn=PadCollator(self.tokenizer.pad_token_id or 0),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            # An own generator: creating an iterator then draws no number from the global RNG, so
            # dropout masks do not depend on how many loaders were iterated (exact resume).
            generator=torch.Generator().manual_seed(self.seed),
            **kwargs,
        )

    def train_dataloader(self) -> DataLoader:
        dataset = self.datasets["train"]
        batch_size = len(dataset) if self.batch_size == "full" else int(self.batch_size)
        sampler = self.make_train_sampler(dataset.lengths(), batch_size, self.seed, self.group_by_length)
        return self._loader(dataset, batch_sampler=sampler)

    def eval_dataloader(self, split: str) -> DataLoader:
        size = self.eval_batch_size or (len(self.datasets["train"]) if self.batch_size == "full" else self.batch_size)
        return self._loader(self.datasets[split], batch_sampler=eval_batches(len(self.datasets[split]), int(size)))

    def ordered_dataloader(self, split: str) -> DataLoader:
        """Every example of the split once, in batches of similar length (little padding: a feature pass
        over random-order batches costs ~2.5x more). ``loader.batch_sampler`` lists the indices in order."""
        dataset = self.datasets[split]
        size = int(self.eval_batch_size or (64 if self.batch_size == "full" else max(int(self.batch_size), 64)))
        return self._loader(dataset, batch_sampler=length_batches(dataset.lengths(), size))



# ---------------------------------------------------------------------- builders named by conf/data/*.yaml
# Flat configs (`data.path=...`, `data.batch_size=...`) for the command line; the DataModule itself
# takes a source object.


def sample(**loader: Any) -> TextDataModule:
    """The packaged English sentiment sample (offline default)."""
    from sft.data.sources import PackagedSample

    return TextDataModule(PackagedSample(), **loader)


def glue(task: str = "sst2", path: str | None = None, val_size: float | int | None = None, encoding: str = "utf-8",
         **loader: Any) -> TextDataModule:
    """A GLUE task (one sentence, a sentence pair or STS-B's scores) from a local folder (``path``) or the HF hub."""
    from sft.data.glue import Glue

    return TextDataModule(Glue(task, path, val_size, encoding=encoding), **loader)


def text_file(train: str, val: str | None = None, test: str | None = None, text_column: str = "text",
              label_column: str = "label", label_names: list[str] | None = None, val_size: float | int = 0.1,
              test_size: float | int = 0.1, encoding: str = "utf-8", text_pair_column: str | None = None,
              task: str = "single_label", label_delimiter: str = ",", **loader: Any) -> TextDataModule:
    """Local CSV / TSV / JSONL files: one text or a pair per row; a class, a score or a set of labels."""
    from sft.data.sources import TextFiles

    source = TextFiles(train, val, test, text_column, label_column, label_names, val_size, test_size,
                       encoding=encoding, text_pair_column=text_pair_column, task=task,
                       label_delimiter=label_delimiter)
    return TextDataModule(source, **loader)


def conll2003(path: str | None = None, train: str = "eng.train", val: str | None = None, test: str = "eng.testa",
              val_size: float | int = 0.1, encoding: str = "utf-8", **loader: Any) -> TextDataModule:
    """Token classification: CoNLL-format files (IOB1 or IOB2) or JSONL ``tokens`` / ``tags``; else the HF hub."""
    from sft.data.conll import TokenFiles

    return TextDataModule(TokenFiles(path, train, val, test, val_size, encoding=encoding), **loader)


def goemotions(path: str | None = None, val_size: float | int = 0.1, encoding: str = "utf-8",
               **loader: Any) -> TextDataModule:
    """GoEmotions (simplified): 28 labels, several per comment, from a local folder or the HF hub."""
    from sft.data.goemotions import GoEmotions

    return TextDataModule(GoEmotions(path, val_size, encoding=encoding), **loader)
