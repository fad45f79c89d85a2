"""Helpers shared by the test files: child-process runners and the tiny models and run settings several files
use; and test-only callbacks, importable by subprocess runs (``+callbacks.x._target_=tests.helpers.X``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L

REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------- child processes
def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a child Python: this process's, OMP_NUM_THREADS=2, and PYTHONPATH with the repo root
    first (then any inherited PYTHONPATH), so the child imports this checkout's ``sft`` (and ``tests.helpers``)
    from any working directory. ``env`` goes on top; a ``PYTHONPATH`` in it replaces the whole path (the
    installed-copy test points it at a ``pip install --target`` folder instead of the checkout)."""
    inherited = os.environ.get("PYTHONPATH")
    pythonpath = os.pathsep.join([str(REPO), inherited] if inherited else [str(REPO)])
    return {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": pythonpath, **(env or {})}


def python(args: list[str], cwd: Path | str = REPO, env: dict[str, str] | None = None, stdin: str | None = None,
           timeout: float = 600) -> subprocess.CompletedProcess:
    """``python *args`` in ``cwd`` with :func:`child_env`, output captured as text."""
    return subprocess.run([sys.executable, *args], cwd=cwd, env=child_env(env), capture_output=True, text=True,
                          timeout=timeout, input=stdin)


def run_cli(args: list[str], cwd: Path | str = REPO, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m sft.run *args`` (see :func:`python`)."""
    return python(["-m", "sft.run", *args], cwd=cwd, env=env)


def common(tiny_bert: str, run_dir: Path, *extra: str, max_epochs: int = 6) -> list[str]:
    """Quiet, deterministic ``sft.run`` overrides for a run of the tiny BERT in ``run_dir`` (resume tests)."""
    return [f"model.name_or_path={tiny_bert}", f"hydra.run.dir={run_dir}", f"trainer.max_epochs={max_epochs}",
            "seed=3", "report=none", "export=false", "callbacks.progress_bar=null", "++trainer.enable_progress_bar=false",
            *extra]


def kill_at(step: int, hook: str = "on_train_batch_end") -> list[str]:
    """Overrides adding :class:`KillAtStep` to a subprocess run."""
    return ["+callbacks.killer._target_=tests.helpers.KillAtStep", f"+callbacks.killer.step={step}",
            f"+callbacks.killer.hook={hook}"]


# ---------------------------------------------------------------------- tiny models
def tiny_hf(kind: str, tmp_path: Path) -> str:
    """A randomly initialised 3-layer, 16-wide ``kind`` (bert, roberta, distilbert...) saved in ``tmp_path/kind``."""
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.for_model(kind, vocab_size=100, hidden_size=16, num_attention_heads=2, intermediate_size=32,
                                  max_position_embeddings=64, **({"n_layers": 3, "dim": 16, "hidden_dim": 32,
                                                                  "n_heads": 2} if kind == "distilbert" else
                                                                 {"num_hidden_layers": 3}))
    AutoModel.from_config(config).save_pretrained(tmp_path / kind)
    return str(tmp_path / kind)


# ---------------------------------------------------------------------- callbacks for subprocess runs


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
