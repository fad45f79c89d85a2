"""How checkpoints reach the disk: streamed straight into the file, atomically.

Lightning's ``TorchCheckpointIO`` serialises the whole checkpoint into an in-memory buffer and then copies it into
the file: for a 22M-parameter model with AdamW state that is ~270 MB of extra memory at every save and twice the
write time (measured in bench/README.md). Here ``torch.save`` writes into a temporary file beside the target, which
then replaces the target in one rename: a kill at any moment leaves the previous checkpoint or the new one, never a
truncated one (the same promise as Lightning's). Remote paths (``s3://`` and the like) go through Lightning's own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol

from sft.cache import atomic_save


class StreamingCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves stream to disk. It remembers the last file it wrote (``last_saved``:
    path, global step, whether it holds the optimizer state, and a running count), so that a checkpoint of the same
    state can be linked to it instead of written again (:class:`sft.callbacks.LastCheckpoint`)."""

    def __init__(self) -> None:
        super().__init__()
        self.saves = 0
        self.last_saved: SavedCheckpoint | None = None

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            super().save_checkpoint(checkpoint, path, storage_options)
        else:
            atomic_save(checkpoint, Path(path))
        self.saves += 1
        self.last_saved = SavedCheckpoint(Path(path), checkpoint.get("global_step"), "optimizer_states" in checkpoint,
                                          self.saves)

    def load_checkpoint(self, path: Any, map_location: Any = lambda storage, loc: storage,
                        weights_only: bool | None = None) -> dict[str, Any]:
        # Memory-mapped: resuming or evaluating a checkpoint reads the pages it uses, instead of first holding the
        # whole file (weights and optimizer state: 270 MB for MiniLM) beside the live model and optimizer.
        if not _is_local_file_protocol(path) or not Path(path).is_file():
            return super().load_checkpoint(path, map_location, weights_only)
        import torch

        return torch.load(path, map_location=map_location, weights_only=weights_only, mmap=True)


FINGERPRINT_KEY = "weights_fingerprint"


def weights_fingerprint(state: Any) -> dict[str, float]:
    """Each floating-point tensor's sum (float64) in a state dict: what a checkpoint records of the weights it holds,
    so that whoever holds weights can tell, without reading the checkpoint's, whether they are the same."""
    import torch

    sums: dict[str, Any] = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            value = value.detach()
            if value.device.type == "cpu":  # in slices: a float64 sum of a whole CPU tensor copies it to float64
                sums[key] = sum(float(part.sum(dtype=torch.float64)) for part in value.reshape(-1).split(1 << 20))
            else:  # on the device, brought over together: one synchronisation
                sums[key] = value.sum(dtype=torch.float64)
    on_device = [key for key, value in sums.items() if isinstance(value, torch.Tensor)]
    if on_device:
        values = torch.stack([sums[key].cpu() for key in on_device]).tolist()
        sums.update(zip(on_device, values, strict=True))
    return sums


def holds_checkpoint_weights(module: Any, path: str | Path) -> bool:
    """Whether ``module`` (a LightningModule) already holds the weights of the checkpoint at ``path``, by their
    fingerprint: reading it maps none of the checkpoint's tensors (loading them again would: as much memory as the
    weights, the peak of a fit that evaluates its final state). False where the checkpoint has no fingerprint."""
    import torch

    saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get(FINGERPRINT_KEY)
    if not saved:
        return False
    state = module.state_dict()
    return all(key in state for key in saved) and weights_fingerprint({k: state[k] for k in saved}) == saved


@dataclass(frozen=True)
class SavedCheckpoint:
    path: Path
    global_step: int | None
    full: bool  # holds the optimizer state (not weights only)
    number: int  # how many saves this IO had made, this one included


def hard_link(source: Path, target: Path) -> bool:
    """Make ``target`` the same file as ``source`` (a hard link, atomically replacing ``target``). False where the
    file system has no hard links; the caller then writes the file itself."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.link")
    try:
        tmp.unlink(missing_ok=True)
        os.link(source, tmp)
        os.replace(tmp, target)
        return True
    except OSError:
        tmp.unlink(missing_ok=True)
        return False
