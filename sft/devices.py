"""Which precision a run trains in, and one GPU per job when a sweep runs jobs in parallel on one machine
(``hydra/launcher=gpu_pool`` or joblib).

Parallel jobs of a sweep do not know about each other, so without help every job asks Lightning for "1 GPU"
and all of them land on GPU 0 while the others idle. Each job instead claims a GPU with an exclusive file
lock in the sweep folder (``.gpu_locks/gpu<i>.lock``) for as long as it runs, and trains on that GPU; when
every GPU is taken it waits for one to free up. Locks are released by the OS if a job dies, so a crash never
leaves a GPU claimed.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sft.errors import ConfigError

log = logging.getLogger(__name__)

GPUS_ENV = "SFT_GPUS"
# "1" / "0": treat this CPU as having (not having) fast bf16, whatever /proc/cpuinfo says. Lets the test suite
# run both precision paths on any machine; also a way out if bf16 is unwanted on an AMX machine.
CPU_BF16_ENV = "SFT_CPU_BF16"


def cpu_supports_bf16() -> bool:
    """AMX or AVX512-BF16: bf16 matmuls run several times faster than fp32 (measured ~6x with AMX).
    ``$SFT_CPU_BF16`` (1 / 0) overrides the detection."""
    forced = os.environ.get(CPU_BF16_ENV, "").strip().lower()
    if forced in ("1", "true", "yes", "on"):
        return True
    if forced in ("0", "false", "no", "off"):
        return False
    if forced:
        raise ValueError(f"{CPU_BF16_ENV}={forced!r}: use 1 (force bf16 on CPU) or 0 (force fp32), or unset it.")
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " amx_bf16" in flags or " avx512_bf16" in flags


def auto_precision(accelerator: str | None, cpu_bf16_pays: bool = True) -> str:
    """``trainer.precision: null``: bf16 autocast where the GPU or CPU runs it fast, else fp32. ``cpu_bf16_pays``:
    False for models whose step bf16 does not speed up on a CPU even with AMX (depthwise CNNs)."""
    import torch

    if accelerator in (None, "auto", "gpu", "cuda") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    if accelerator in (None, "auto", "cpu") and cpu_supports_bf16() and cpu_bf16_pays:
        return "bf16-mixed"
    return "32-true"


ONEDNN_CACHE_ENV = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"


def limit_onednn_cache(capacity: int) -> bool:
    """Cap oneDNN's cache of compiled CPU kernels (bf16 matmuls, convolutions) at ``capacity`` entries.
    Returns False where ``$ONEDNN_PRIMITIVE_CACHE_CAPACITY`` is already set (the environment wins).

    oneDNN keeps up to 1024 of them, one set per input shape, each with its own scratch memory. With length-grouped
    batches every batch width is a new shape: MiniLM on SST-2 (bf16) holds ~140 MB more at its peak with the default
    than with 64 entries, and trains ~7% faster (bench/README.md), so sft leaves the default unless asked. oneDNN
    reads the setting when it builds its first kernel, so this must run before any model computes (sft calls it
    before building anything).
    """
    if capacity < 0:
        raise ConfigError(f"onednn_primitive_cache_capacity={capacity}: must be >= 0 (null: oneDNN's default, 1024).")
    if os.environ.get(ONEDNN_CACHE_ENV):
        return False
    os.environ[ONEDNN_CACHE_ENV] = str(int(capacity))
    return True


# glibc's mallopt parameters (malloc.h) and the thresholds its dynamic mode settles at on 64-bit Linux.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_GLIBC_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
_NEVER = 2**31 - 1  # mallopt takes an int


def _glibc() -> Any:
    """The C library when it is glibc (mallopt / malloc_trim exist), else None (macOS, musl, Windows)."""
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


@contextlib.contextmanager
def kept_cpu_heap(enabled: bool = True) -> Iterator[bool]:
    """While inside, glibc keeps freed heap memory mapped instead of returning it to the OS; on leaving, it returns
    what is free (``malloc_trim``) and settles at its usual thresholds. Yields whether the setting took effect.

    A CPU training step allocates and frees its activations (MiniLM, batch 32: a few hundred MB in blocks of
    0.1-3 MB). glibc gives the free top of its heap back to the OS after each step (the trim threshold), so the next
    step page-faults every block in again and the kernel zeroes each page: ~5,000-11,000 page faults and 10-30 ms of
    system time in a fixed-shape ~200 ms fp32 step, 190,000 in an EfficientNet-B0 step (bench/README.md). Allocations above 32 MiB (glibc's largest dynamic threshold) stay mmapped,
    so one large transient buffer does not pin its memory for the rest of the fit.
    """
    libc = _glibc() if enabled else None
    if libc is None:
        yield False
        return
    kept = bool(libc.mallopt(_M_MMAP_THRESHOLD, _GLIBC_MMAP_THRESHOLD_MAX) and libc.mallopt(_M_TRIM_THRESHOLD, _NEVER))
    try:
        yield kept
    finally:
        # Setting either threshold ends glibc's dynamic mode for good; these are the values it settles at.
        libc.mallopt(_M_TRIM_THRESHOLD, 2 * _GLIBC_MMAP_THRESHOLD_MAX)
        libc.malloc_trim(0)


def evaluation_precision(precision: str) -> str:
    """The precision of the final validate / test: fp32 after mixed-precision training, because the exported
    weights are fp32 and every other reader of them (sft.eval, sft.predict, the report, ``pipeline()``) runs fp32.
    Reported metrics are thus those of the model as users load it, on every machine."""
    return "32-true" if str(precision).endswith("-mixed") else str(precision)


def gpu_count() -> int:
    """GPUs for a one-job-per-GPU sweep: ``$SFT_GPUS`` if set, else every GPU torch sees (at least 1)."""
    if os.environ.get(GPUS_ENV):
        return max(1, int(os.environ[GPUS_ENV]))
    import torch

    return max(1, torch.cuda.device_count())


@contextlib.contextmanager
def claimed_gpu(lock_dir: str | Path, n_gpus: int, poll_seconds: float = 2.0) -> Iterator[int]:
    """Hold an exclusive claim on one of GPUs ``0..n_gpus-1`` (waiting while all are claimed); yields its index."""
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    waited = False
    while True:
        for index in range(n_gpus):
            handle = (lock_dir / f"gpu{index}.lock").open("a")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            try:
                yield index
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
                handle.close()
            return
        if not waited:
            log.info("All %d GPUs are claimed by other jobs of this sweep; waiting for one.", n_gpus)
            waited = True
        time.sleep(poll_seconds)


def wants_one_gpu(trainer_cfg: dict) -> bool:
    return trainer_cfg.get("accelerator") in ("gpu", "cuda", "auto", None) and trainer_cfg.get("devices") in (1, "1", None)
