"""Cached-feature probes: run a frozen backbone once per split, keep its features on disk, train the head
over them.

With the whole backbone frozen, every epoch of a linear probe recomputes the same backbone outputs; this
computes them once (the input of the head, :meth:`Classifier.features`) and trains the unchanged head on
them, so a multi-epoch probe costs one backbone pass. The cache key covers the backbone's weights (a
hash of the tensors, so a local weights file or a fine-tuned checkpoint can never hit a stale entry),
what the model sees (tokenizer and max length, or the eval preprocessing) and the data.

Images are featurized with the eval transform (no augmentation: one fixed view per image).
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from sft.cache import atomic_save
from sft.cache import cache_dir as sft_cache_dir
from sft.data.base import ClassificationDataModule
from sft.data.batching import eval_batches
from sft.errors import ConfigError
from sft.inference import outputs

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
CACHE_VERSION = 2


def backbone_fingerprint(model: Any) -> str:
    digest = hashlib.sha256(f"{type(model).__name__}:{CACHE_VERSION}".encode())
    for name, tensor in model.backbone.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:20]


def cache_key(model: Any, datamodule: Any, pooling: str = "head") -> str:
    identity = f"{backbone_fingerprint(model)}:{datamodule.input_fingerprint()}:{pooling}"
    return hashlib.sha256(identity.encode()).hexdigest()[:24]


def cached_features(model: Any, datamodule: Any, cache_dir: str | Path | None = None,
                    device: torch.device | None = None, pooling: str = "head") -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{split: (features, labels)}`` from the cache, computing (and saving atomically) when absent."""
    datamodule.prepare_data()
    datamodule.setup("fit")
    if datamodule.task.kind == "token":
        raise ConfigError("probe=cached / probe=sklearn cache one feature vector per input; token classification "
                          "labels every word. Use freeze=backbone (a linear probe trained in Lightning) instead.")
    if pooling == "mean" and not hasattr(model, "mean_features"):
        raise ConfigError(f"probe.pooling=mean is for text models; {type(model).__name__} takes probe.pooling=head.")
    path = Path(cache_dir or sft_cache_dir("features")) / f"{cache_key(model, datamodule, pooling)}.pt"
    if path.is_file():
        log.info("Features from cache %s", path)
        payload = torch.load(path, weights_only=True)
        return {s: (payload[s]["features"], payload[s]["labels"]) for s in SPLITS}
    device = device or torch.device("cpu")
    model.to(device)
    started = time.perf_counter()
    extract = model.features if pooling == "head" else model.mean_features
    # Features and labels in dataset order, whatever order the length-sorted batches visit the examples in.
    result = {}
    for split in SPLITS:
        out = outputs(model, datamodule.ordered_dataloader(split), extract, device=device)
        result[split] = (out.logits, out.labels)
    log.info("Computed backbone features for %s examples in %.1f s; cached in %s",
             "/".join(str(len(result[s][1])) for s in SPLITS), time.perf_counter() - started, path)
    atomic_save({s: {"features": f, "labels": y} for s, (f, y) in result.items()}, path)
    return result


class FeatureSplit(Dataset):
    def __init__(self, features: torch.Tensor, labels: torch.Tensor):
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"features": self.features[i], "labels": self.labels[i]}


class FeatureDataModule(ClassificationDataModule):
    """Batches of cached features with the label space and split sizes of the DataModule they came from.
    Shuffled, seeded training batches with exact mid-epoch resume, like the other DataModules."""

    def __init__(self, features: dict[str, tuple[torch.Tensor, torch.Tensor]], source: ClassificationDataModule,
                 batch_size: int, seed: int = 0):
        super().__init__()
        self.source, self.splits = source, source.load_splits()
        self.datasets = {s: FeatureSplit(*features[s]) for s in SPLITS}
        self.batch_size = len(self.datasets["train"]) if batch_size == "full" else int(batch_size)
        self.seed = seed

    def load_splits(self) -> Any:
        return self.splits

    @property
    def task(self) -> Any:
        return self.source.task

    def _loader(self, dataset: FeatureSplit, **kwargs: Any) -> DataLoader:
        return DataLoader(dataset, generator=torch.Generator().manual_seed(self.seed), **kwargs)

    def train_dataloader(self) -> DataLoader:
        dataset = self.datasets["train"]
        sampler = self.make_train_sampler([1] * len(dataset), self.batch_size, self.seed, group_by_length=False)
        return self._loader(dataset, batch_sampler=sampler)

    def eval_dataloader(self, split: str) -> DataLoader:
        return self._loader(self.datasets[split], batch_sampler=eval_batches(len(self.datasets[split]),
                                                                             max(self.batch_size, 256)))
