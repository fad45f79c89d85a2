"""LightningDataModule for image classification: ImageFolder-style sources, transforms from the weights."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from sft.data.base import ClassificationDataModule
from sft.data.batching import eval_batches
from sft.errors import ConfigError


def build_transforms(preprocess: dict[str, Any], train: bool, augment: bool = True) -> Any:
    """Eval: resize + center crop; train (with ``augment``): random resized crop + horizontal flip.
    Grayscale and RGBA images are converted to RGB first (in the dataset)."""
    from torchvision import transforms as T

    interpolation = T.InterpolationMode(preprocess.get("interpolation", "bilinear"))
    normalize = [T.ToTensor(), T.Normalize(preprocess["mean"], preprocess["std"])]
    if train and augment:
        return T.Compose([T.RandomResizedCrop(preprocess["crop"], interpolation=interpolation),
                          T.RandomHorizontalFlip(), *normalize])
    return T.Compose([T.Resize(preprocess["resize"], interpolation=interpolation), T.CenterCrop(preprocess["crop"]),
                      *normalize])


def with_image_size(preprocess: dict[str, Any], image_size: int | None) -> dict[str, Any]:
    """``preprocess`` with the crop set to ``image_size`` and the resize scaled by the same factor
    (256 / 224 stays the ratio): smaller inputs for speed, or native resolution for small images."""
    if image_size is None:
        return dict(preprocess)
    if not isinstance(image_size, int) or image_size < 8:
        raise ConfigError(f"data.image_size={image_size!r} must be an integer of at least 8 (pixels), or null "
                          "for the size the weights expect.")
    resize = round(image_size * preprocess["resize"] / preprocess["crop"])
    return {**preprocess, "crop": image_size, "resize": resize}


class ImageDataset(Dataset):
    """``(image, label index)`` rows, where an image is a file path or an HWC uint8 array, decoded to RGB
    (grayscale, palette and RGBA images converted) and transformed on access."""

    def __init__(self, rows: list[tuple[Any, int]], transform: Any):
        self.rows, self.transform = rows, transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        from PIL import Image

        item, label = self.rows[i]
        if isinstance(item, str):
            with Image.open(item) as img:
                pixels = self.transform(img.convert("RGB"))
        else:
            pixels = self.transform(Image.fromarray(item).convert("RGB"))
        return {"pixel_values": pixels, "labels": torch.tensor(label)}


class ImageDataModule(ClassificationDataModule):
    """Owns the label space (class folder names) and hands pixel batches to the model. Usable without Hydra::

        dm = ImageDataModule(ImageFolderSource("data/hymenoptera"), preprocess_for("resnet18", "DEFAULT"))
    """

    def __init__(self, source: Any, preprocess: dict[str, Any], batch_size: int = 32, augment: bool = True,
                 image_size: int | None = None, num_workers: int = 0, seed: int = 0,
                 label_names: list[str] | None = None, eval_batch_size: int | None = None, sampler: str = "random"):
        super().__init__()
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"data.batch_size={batch_size!r} must be a positive integer.")
        self.source, self.preprocess = source, with_image_size(dict(preprocess), image_size)
        self.batch_size, self.augment, self.num_workers, self.seed = batch_size, augment, num_workers, seed
        self.eval_batch_size = eval_batch_size or batch_size
        self.fixed_label_names = list(label_names) if label_names else None
        self.sampler = sampler  # training draws: "random" or "balanced" (ClassificationDataModule.sample_weights)
        self.splits: Any = None
        self.datasets: dict[str, ImageDataset] = {}

    def load_splits(self) -> Any:
        if self.splits is None:
            splits = self.source.load()
            if self.fixed_label_names:
                splits.label_names = self.fixed_label_names
            self.splits = splits.validate()
        return self.splits

    def prepare_data(self) -> None:
        self.load_splits()

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        splits = self.load_splits()
        ids = {name: i for i, name in enumerate(splits.label_names)}
        for name in ("train", "val", "test"):
            rows = [(item, ids[label]) for item, label in getattr(splits, name)]
            self.datasets[name] = ImageDataset(rows, build_transforms(self.preprocess, train=name == "train",
                                                                    augment=self.augment))

    def _loader(self, dataset: ImageDataset, **kwargs: Any) -> DataLoader:
        return DataLoader(dataset, num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          pin_memory=torch.cuda.is_available(),
                          generator=torch.Generator().manual_seed(self.seed), **kwargs)

    def train_dataloader(self) -> DataLoader:
        dataset = self.datasets["train"]
        # drop_last: a final batch of one breaks BatchNorm in training mode.
        sampler = self.make_train_sampler([1] * len(dataset), self.batch_size, self.seed, group_by_length=False,
                                          drop_last=True)
        return self._loader(dataset, batch_sampler=sampler)

    def eval_dataloader(self, split: str) -> DataLoader:
        return self._loader(self.datasets[split], batch_sampler=eval_batches(len(self.datasets[split]),
                                                                             self.eval_batch_size))

    def train_targets(self) -> torch.Tensor | None:
        dataset = self.datasets.get("train")
        return None if dataset is None else torch.tensor([label for _, label in dataset.rows], dtype=torch.long)

    def input_fingerprint(self) -> str:
        """What the model sees at evaluation: the data and the eval preprocessing (no augmentation)."""
        import hashlib
        import json

        return hashlib.sha256(json.dumps([self.load_splits().fingerprint(), self.preprocess],
                                         sort_keys=True).encode()).hexdigest()[:20]

    def ordered_dataloader(self, split: str) -> DataLoader:
        """The split in its own order with the eval transform, also for train (for feature caching)."""
        dataset = self.datasets[split]
        plain = ImageDataset(dataset.rows, build_transforms(self.preprocess, train=False))
        return self._loader(plain, batch_size=self.eval_batch_size, shuffle=False)



def image_folder(path: str | None = None, train: str | None = None, val: str | None = None, test: str | None = None,
                 skip_bad_images: bool = False, **loader: Any) -> ImageDataModule:
    """An ImageFolder-style tree (``path/train``, ``path/val``, optional ``path/test``); named by
    conf/data/imagefolder.yaml."""
    from sft.data.image_sources import ImageFolderSource

    return ImageDataModule(ImageFolderSource(path, train, val, test, skip_bad_images), **loader)


def cifar10(path: str | None = None, download: bool = True, val_size: float | int = 0.1, test_size: float | int = 0.2,
            **loader: Any) -> ImageDataModule:
    """CIFAR-10: the official batches, an .npz of images, or a torchvision download (see sft.data.cifar10);
    named by conf/data/cifar10.yaml."""
    from sft.data.cifar10 import Cifar10Source

    # The split seed is fixed (not the run seed): runs that differ only in seed see the same val / test.
    return ImageDataModule(Cifar10Source(path, download, val_size, test_size), **loader)
