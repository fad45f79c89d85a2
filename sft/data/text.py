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
from sft.data.sources import SPLITS, TextSplits, subsample
from sft.errors import ConfigError

CACHE_VERSION = 1
log = logging.getLogger(__name__)


class TokenizedSplit(Dataset):
    """Token ids of one split stored flat (ids + offsets): compact, fast to save and load."""

    def __init__(self, ids: torch.Tensor, offsets: torch.Tensor, labels: torch.Tensor):
        self.ids, self.offsets, self.labels = ids, offsets, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.ids[self.offsets[i] : self.offsets[i + 1]].long(), int(self.labels[i])

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
        self.splits: TextSplits | None = None
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
            splits.train = subsample(splits.train, self.train_size, self.shots_per_class, self.seed)
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
        label2id = self.label2id
        payload: dict[str, Any] = {"version": CACHE_VERSION, "label_names": splits.label_names}
        for name in SPLITS:
            rows = splits.split(name)
            encoded = self.tokenizer([t for t, _ in rows], truncation=True, max_length=self.max_length)["input_ids"]
            lengths = torch.tensor([len(x) for x in encoded], dtype=torch.long)
            payload[name] = {
                "ids": torch.tensor([i for seq in encoded for i in seq], dtype=torch.int32),
                "offsets": torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]),
                "labels": torch.tensor([label2id[label] for _, label in rows], dtype=torch.long),
            }
        atomic_save(payload, path)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        if self.cache_file is None or not self.cache_file.is_file():
            self.prepare_data()
        payload = torch.load(self.cache_file, weights_only=True)
        self.datasets = {name: TokenizedSplit(**payload[name]) for name in SPLITS}

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


def glue(task: str = "sst2", path: str | None = None, val_size: float | int = 872, encoding: str = "utf-8",
         **loader: Any) -> TextDataModule:
    """A GLUE single-sentence task from a local folder (``path``) or the HF hub."""
    from sft.data.sources import Glue

    return TextDataModule(Glue(task, path, val_size, encoding=encoding), **loader)


def text_file(train: str, val: str | None = None, test: str | None = None, text_column: str = "text",
              label_column: str = "label", label_names: list[str] | None = None, val_size: float | int = 0.1,
              test_size: float | int = 0.1, encoding: str = "utf-8", **loader: Any) -> TextDataModule:
    """Local CSV / TSV / JSONL files."""
    from sft.data.sources import TextFiles

    source = TextFiles(train, val, test, text_column, label_column, label_names, val_size, test_size,
                       encoding=encoding)
    return TextDataModule(source, **loader)
