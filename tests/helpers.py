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


class FreezeChecker(L.Callback):
    """Asserts every epoch that exactly the ``expected(epoch)`` groups are trainable, receive nonzero
    gradients and (if frozen) sit in eval mode. Records what it saw in ``seen`` (epoch -> groups)."""

    def __init__(self, expected):
        self.expected = expected
        self.seen: dict[int, set[str]] = {}
        self._with_grad: set[str] = set()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module) -> None:
        self._with_grad = set()

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module, optimizer) -> None:
        for group, params in pl_module._groups.items():
            if any(p.grad is not None and p.grad.abs().sum() > 0 for _, p in params):
                self._with_grad.add(group)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        epoch = trainer.current_epoch
        expected = set(self.expected(epoch))
        trainable = {g for g, params in pl_module._groups.items() if all(p.requires_grad for _, p in params)}
        partly = {g for g, params in pl_module._groups.items() if any(p.requires_grad for _, p in params)}
        assert trainable == partly == expected, (epoch, trainable, partly, expected)
        assert self._with_grad == expected, (epoch, self._with_grad, expected)
        for group in set(pl_module._groups) - expected:
            for module in pl_module._group_modules.get(group, []):
                assert not any(m.training for m in module.modules()), (epoch, group, "frozen but in train mode")
        self.seen[epoch] = trainable
