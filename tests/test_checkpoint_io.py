"""How checkpoints reach the disk (sft.checkpoint_io) and how often last.ckpt is written (sft.callbacks)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from sft.checkpoint_io import StreamingCheckpointIO
from sft.errors import ConfigError
from sft.pipeline.train import train


def test_a_save_that_fails_midway_leaves_the_previous_checkpoint(tmp_path):
    io = StreamingCheckpointIO()
    path = tmp_path / "ckpts" / "last.ckpt"
    io.save_checkpoint({"weights": torch.ones(1000), "global_step": 3}, path)
    # The tensor is written before the pickler reaches the lambda, so the failure comes mid-file.
    with pytest.raises(Exception, match="lambda|pickle"):
        io.save_checkpoint({"weights": torch.zeros(1000), "global_step": 4, "hook": lambda: 0}, path)
    loaded = torch.load(path, weights_only=True)
    assert loaded["global_step"] == 3 and torch.equal(loaded["weights"], torch.ones(1000))
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"], "no temporary file is left behind"
    assert io.saves == 1 and io.last_saved.global_step == 3 and not io.last_saved.full


def test_runs_stream_their_checkpoints_and_mark_the_finished_fit_without_a_second_write(tiny_cfg):
    """A run's trainer saves through StreamingCheckpointIO. After one epoch the validation's best checkpoint is also
    last.ckpt (a hard link, see test_resume), and the end of fit adds a small marker instead of rewriting last.ckpt
    with the same weights and optimizer state."""
    from sft.callbacks import finished_marker
    from sft.pipeline import build
    from sft.pipeline.fit import finished_checkpoint

    cfg = tiny_cfg("trainer.max_epochs=1", "data.train_size=64", "export=false")
    trainer = build.build_trainer(cfg.trainer, Path(cfg.output_dir), [], [], "32-true")
    assert isinstance(trainer.strategy.checkpoint_io, StreamingCheckpointIO)

    metrics = train(cfg)
    ckpts = Path(cfg.output_dir) / "checkpoints"
    (best,) = ckpts.glob("best-*.ckpt")
    last = ckpts / "last.ckpt"
    assert best.samefile(last)
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert state["global_step"] == metrics["fit/global_step"] and "optimizer_states" in state
    assert sorted(p.name for p in ckpts.iterdir()) == sorted([best.name, "last.ckpt", "last.ckpt.finished.json"])
    finished = finished_checkpoint(str(last))
    assert finished is not None and finished["sft_epochs_trained"] == 1
    # A marker for another step (last.ckpt replaced by a later state) does not make that state finished.
    finished_marker(last).write_text('{"global_step": 12345, "sft_epochs_trained": 9}')
    assert finished_checkpoint(str(last)) is None
    finished_marker(last).unlink()
    assert finished_checkpoint(str(last)) is None


@pytest.mark.parametrize("override, named", [("callbacks.last_checkpoint.every_n_minutes=0", "every_n_minutes=0"),
                                             ("callbacks.last_checkpoint.every_n_train_steps=-5",
                                              "every_n_train_steps=-5")])
def test_a_bad_checkpoint_cadence_is_a_clear_error(tiny_cfg, override, named):
    with pytest.raises(ConfigError, match=f"callbacks.last_checkpoint.{named}: must be"):
        train(tiny_cfg(override))


class TrainingStateSpy(L.Callback):
    """Keeps the fitted model and its optimizers, to look at them after train() returns."""

    seen: list[tuple] = []

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        TrainingStateSpy.seen.append((pl_module, list(trainer.optimizers)))


def test_fit_frees_gradients_and_optimizer_moments_before_evaluation(tiny_cfg):
    """Three times the weights (last gradients, AdamW's two moments) are not held through evaluation and export."""
    TrainingStateSpy.seen.clear()
    metrics = train(tiny_cfg("trainer.max_epochs=1", "data.train_size=64", "report=none",
                             "++callbacks.spy._target_=tests.test_checkpoint_io.TrainingStateSpy"))
    ((model, optimizers),) = TrainingStateSpy.seen
    assert optimizers and all(not optimizer.state for optimizer in optimizers)
    assert all(p.grad is None for p in model.parameters())
    assert metrics["fit/global_step"] > 0 and "test/acc" in metrics  # trained, then evaluated as usual
    last = torch.load(Path(tiny_cfg().output_dir) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["optimizer_states"][0]["state"], "the checkpoint keeps the moments"


def test_a_weights_fingerprint_tells_the_same_weights_from_others(tmp_path):
    from sft.checkpoint_io import FINGERPRINT_KEY, holds_checkpoint_weights, weights_fingerprint

    module = torch.nn.Sequential(torch.nn.Embedding(3000, 16), torch.nn.BatchNorm1d(16))
    state = module.state_dict()
    path = tmp_path / "a.ckpt"
    torch.save({"state_dict": state, FINGERPRINT_KEY: weights_fingerprint(state)}, path)
    assert holds_checkpoint_weights(module, path)
    with torch.no_grad():
        module[0].weight[1234, 5] += 1e-6  # one weight, by less than a step of fine-tuning moves it
    assert not holds_checkpoint_weights(module, path)
    torch.save({"state_dict": module.state_dict()}, path)  # a checkpoint without a fingerprint: never assumed
    assert not holds_checkpoint_weights(module, path)


@pytest.mark.parametrize("best_is_final", [True, False])
def test_the_final_evaluation_loads_the_best_checkpoint_unless_the_model_holds_it(tiny_cfg, caplog, best_is_final):
    """After fit the evaluated weights are the best checkpoint's. When that is the final state (one epoch here) the
    model holds them and they are evaluated as they are (no second mapping of the weights); when an earlier epoch
    was best (val/loss maximised, so epoch 1 of 3), they are loaded."""
    import logging

    overrides = ["trainer.max_epochs=1"] if best_is_final else [
        "trainer.max_epochs=3", "optimized_metric=val/loss", "callbacks.model_checkpoint.mode=max",
        "callbacks.early_stopping=null"]
    with caplog.at_level(logging.INFO, logger="sft"):
        metrics = train(tiny_cfg("data.train_size=64", "export=false", *overrides))
    held = any("evaluating them as they are" in r.getMessage() for r in caplog.records)
    assert held == best_is_final
    cfg_dir = Path(tiny_cfg().output_dir) / "checkpoints"
    (best,) = cfg_dir.glob("best-*.ckpt")
    saved = torch.load(best, map_location="cpu", weights_only=True)
    callback = next(v for k, v in saved["callbacks"].items() if k.startswith("ModelCheckpoint"))
    # The reported validation is the best checkpoint's, whichever way its weights got into the model.
    assert metrics[callback["monitor"]] == pytest.approx(float(callback["best_model_score"]), rel=1e-4)
    assert (saved["global_step"] == metrics["fit/global_step"]) == best_is_final
