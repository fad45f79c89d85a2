"""Test-only callbacks, importable by subprocess runs (``+callbacks.x._target_=tests.helpers.X``)."""

from __future__ import annotations

import os
import signal

import lightning as L


class KillAtStep(L.Callback):
    """SIGKILLs its own process in ``hook`` once the optimizer step count is ``step`` (``on_train_batch_end`` by
    default; ``on_train_batch_start`` / ``on_train_epoch_end`` / ``on_train_epoch_start`` / ``teardown`` for kills
    right after a validation, at an epoch's end, between epochs, after fit): a hard crash, no cleanup."""

    HOOKS = ("on_train_batch_end", "on_train_batch_start", "on_train_epoch_end", "on_train_epoch_start", "teardown")

    def __init__(self, step: int, hook: str = "on_train_batch_end"):
        if hook not in self.HOOKS:
            raise ValueError(f"hook={hook!r}: one of {self.HOOKS}")
        self.step, self.hook = step, hook
        for name in self.HOOKS:
            if name == hook:
                setattr(self, name, self._kill)

    def _kill(self, trainer: L.Trainer, *args: object, **kwargs: object) -> None:
        if trainer.global_step == self.step and not trainer.sanity_checking:
            os.kill(os.getpid(), signal.SIGKILL)


class SignalAtStep(L.Callback):
    """Sends ``signum`` (SIGUSR1: SLURM's "time is almost up") to its own process right before the optimizer step
    that follows step ``step``: the moment a real signal could land, between backward and the step."""

    def __init__(self, step: int, signum: int = int(signal.SIGUSR1)):
        self.step, self.signum, self.sent = step, signum, False

    def on_before_optimizer_step(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step and not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)


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
