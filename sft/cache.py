"""sft's on-disk caches (tokenized splits, backbone features): where they live and how they are written."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def cache_dir(kind: str) -> Path:
    """``$SFT_CACHE/<kind>`` (default ``~/.cache/sft/<kind>``)."""
    return Path(os.environ.get("SFT_CACHE", Path.home() / ".cache" / "sft")) / kind


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file, then rename: a concurrent reader never sees half a file."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)
