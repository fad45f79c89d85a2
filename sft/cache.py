"""sft's on-disk caches (tokenized splits, backbone features): where they live; and the atomic file writes that caches,
checkpoints, markers and the report share."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def cache_dir(kind: str) -> Path:
    """``$SFT_CACHE/<kind>`` (default ``~/.cache/sft/<kind>``)."""
    return Path(os.environ.get("SFT_CACHE", Path.home() / ".cache" / "sft")) / kind


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then one rename: a concurrent reader (or a run killed
    mid-write) never sees half a file, and a failed save leaves the previous file and no temporary."""
    import torch

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: torch streams into it
            torch.save(obj, f)

    _replace_atomically(path, write)


def atomic_write_text(path: Path, text: str) -> None:
    """``path.write_text(text)`` (UTF-8) with :func:`atomic_save`'s guarantees."""
    _replace_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _replace_atomically(path: Path, write: Callable[[Path], Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
