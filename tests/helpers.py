"""Test-only callbacks, importable by subprocess runs (``+callbacks.x._target_=tests.helpers.X``)."""

from __future__ import annotations

import os
import signal

import lightning as L


class KillAtStep(L.Callback):
    """SIGKILLs its own process after the given optimizer step: a hard crash, no cleanup, no atexit."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
