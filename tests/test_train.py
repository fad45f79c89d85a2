"""End-to-end in-process runs on a tiny BERT saved to disk: run folder, metrics, export, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sft.pipeline.train import train


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_bert, compose_cfg):
    """One full default-shaped run (2 epochs) on the tiny BERT; its folder is inspected by many tests."""
    from tests.conftest import FAST

    out = tmp_path_factory.mktemp("finished") / "run"
    cfg = compose_cfg(f"model.name_or_path={tiny_bert}", f"output_dir={out}", *FAST, "trainer.max_epochs=2",
                      "optimizer.lr=1e-3", "callbacks.last_checkpoint.every_n_train_steps=7")
    metrics = train(cfg)
    return out, metrics


def test_run_folder_holds_the_record(finished_run):
    out, metrics = finished_run
    for name in ("config.yaml", "run.json", "metrics.json", "checkpoints/last.ckpt", "export/config.json",
                 "export/model.safetensors", "export/tokenizer.json", "export/labels.json"):
        assert (out / name).is_file(), name
    assert list((out / "checkpoints").glob("best-*.ckpt")), "best checkpoint missing"
    run = json.loads((out / "run.json").read_text())
    assert run["argv"] and "commit" in run["git"] and run["versions"]["torch"]
    saved = (out / "config.yaml").read_text()
    assert "${" not in saved, "the saved config must be resolved"
    assert "name_or_path" in saved


def test_metrics_json_is_flat_and_complete(finished_run):
    from sft.eval import evaluate

    out, metrics = finished_run
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == pytest.approx(metrics)
    for stage in ("val", "test"):
        for name in ("acc", "precision", "recall", "f1", "loss"):
            key = f"{stage}/{name}"
            assert key in on_disk, key
    # The test scores are the best checkpoint's: evaluating the run folder again gives the same numbers.
    again = evaluate(out, "test")
    assert again["test/samples"] == 120
    for name in ("acc", "precision", "recall", "f1"):
        assert again[f"test/{name}"] == pytest.approx(on_disk[f"test/{name}"], abs=1e-6), name
    assert on_disk["fit/epochs"] == 2 and on_disk["fit/global_step"] == 2 * 15  # 480 rows / 32


def test_debug_overfit_memorises_a_few_batches(tiny_cfg, tmp_path):
    # A model that cannot memorise 2 batches has a bug (labels misaligned, no gradient, frozen by mistake).
    import csv

    train(tiny_cfg("debug=overfit", "trainer.overfit_batches=2", "trainer.max_epochs=25", "optimizer.lr=3e-3",
                   "export=false", "test=false"))
    rows = list(csv.DictReader((tmp_path / "run" / "logs" / "metrics.csv").open()))
    losses = [float(r["train/loss_epoch"]) for r in rows if r.get("train/loss_epoch")]
    assert losses[0] > 0.6 and losses[-1] < 0.1, losses


def test_export_loads_in_transformers_pipeline(finished_run):
    from transformers import pipeline

    out, _ = finished_run
    labels = json.loads((out / "export" / "labels.json").read_text())["label_names"]
    assert labels == ["negative", "positive"]
    classify = pipeline("text-classification", model=str(out / "export"), device="cpu")
    texts = ["a wonderful, moving film", "dull and far too long", "the staff were rude"]
    preds = classify(texts)
    assert len(preds) == 3 and all(p["label"] in labels for p in preds)
    # The pipeline's probabilities equal sft's own predictions for the exported weights.
    from sft.inference import load_model, predict_proba

    model, inputs = load_model(out / "export")
    probs = predict_proba(model, inputs["tokenizer"], texts)
    for p, row in zip(preds, probs.tolist(), strict=True):
        assert p["score"] == pytest.approx(max(row), abs=1e-5)


def test_same_seed_same_metrics(tiny_cfg, tmp_path):
    a = train(tiny_cfg("seed=7", f"output_dir={tmp_path / 'a'}", "export=false"))
    b = train(tiny_cfg("seed=7", f"output_dir={tmp_path / 'b'}", "export=false"))
    c = train(tiny_cfg("seed=8", f"output_dir={tmp_path / 'c'}", "export=false"))
    for key in ("val/acc", "val/loss", "test/acc", "test/loss"):
        assert a[key] == b[key], key
    assert a["val/loss"] != c["val/loss"], "a different seed should change the run"


@pytest.mark.parametrize("scheduler", ["constant", "linear", "cosine", "step", "plateau"])
def test_every_scheduler_trains(tiny_cfg, scheduler, tmp_path):
    metrics = train(tiny_cfg(f"scheduler={scheduler}", "trainer.max_epochs=2", "data.train_size=64", "export=false",
                             "trainer.log_every_n_steps=1"))
    assert metrics["fit/epochs"] == 2
    lr_log = (tmp_path / "run" / "logs" / "metrics.csv").read_text().splitlines()
    header = lr_log[0].split(",")
    lr_cols = [i for i, h in enumerate(header) if h.startswith("lr-")]
    assert lr_cols, f"learning rate not logged: {header}"
    lrs = [float(r.split(",")[lr_cols[0]]) for r in lr_log[1:] if r.split(",")[lr_cols[0]]]
    if scheduler == "constant":
        assert len(set(lrs)) == 1
    elif scheduler in ("linear", "cosine"):
        assert max(lrs) == pytest.approx(1e-3, rel=0.3) and lrs[-1] < max(lrs)
    elif scheduler == "step":
        assert lrs[-1] == pytest.approx(lrs[0] * 0.5)


def test_frozen_backbone_trains_only_the_head(tiny_cfg, tiny_bert):
    import torch
    from transformers import AutoModel

    cfg = tiny_cfg("freeze=backbone", "export=false", "data.train_size=64")
    metrics = train(cfg)
    ckpt = sorted((Path(cfg.output_dir) / "checkpoints").glob("best-*.ckpt"))[0]
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    pretrained = AutoModel.from_pretrained(tiny_bert).state_dict()
    for name, tensor in pretrained.items():
        key = f"model.bert.{name}"
        assert torch.equal(state[key], tensor), f"frozen parameter changed: {key}"
    assert metrics["fit/global_step"] == 2  # 64 training rows, batches of 32: the head did take its steps


def test_full_batch_gradient_descent(tiny_cfg):
    metrics = train(tiny_cfg("data.batch_size=full", "data.train_size=64", "trainer.max_epochs=2", "export=false"))
    assert metrics["fit/global_step"] == 2  # one step per epoch


def test_text_file_data_end_to_end(tiny_cfg, tmp_path):
    rows = [("great stuff", "pos"), ("awful mess", "neg"), ("loved every minute", "pos"), ("boring and slow", "neg"),
            ("not bad at all", "pos"), ("a total waste", "neg")] * 8
    path = tmp_path / "train.csv"
    path.write_text("text,label\n" + "".join(f'"{t}",{lab}\n' for t, lab in rows))
    metrics = train(tiny_cfg("data=text_file", f"data.train={path}", "data.val_size=0.25", "data.test_size=0.25"))
    assert metrics["fit/global_step"] == 1  # 24 training rows (48 less 25% val, 25% test): one batch of 32
    labels = json.loads((tmp_path / "run" / "export" / "labels.json").read_text())["label_names"]
    assert labels == ["neg", "pos"]


def test_callbacks_none_writes_no_checkpoint(compose_cfg, tiny_bert, tmp_path):
    """callbacks=none means no checkpoints at all, not Lightning's implicit ModelCheckpoint."""
    from tests.conftest import FAST

    fast = [o for o in FAST if not o.startswith("callbacks.")]
    metrics = train(compose_cfg(f"model.name_or_path={tiny_bert}", f"output_dir={tmp_path / 'run'}", *fast,
                                "callbacks=none", "data.train_size=64", "export=false"))
    assert "test/acc" in metrics
    assert not list((tmp_path / "run").rglob("*.ckpt"))


# --------------------------------------------------------------------------- step-bounded runs, trainer knobs


def _validations(run_dir: Path) -> list[tuple[int, int]]:
    """(epoch, step) of every validation logged in metrics.csv (the final evaluation included)."""
    import csv

    rows = csv.DictReader((run_dir / "logs" / "metrics.csv").open())
    return [(int(r["epoch"]), int(r["step"])) for r in rows if r.get("val/acc")]


def test_max_steps_inside_an_epoch_validates_tests_and_exports(tiny_cfg, tmp_path):
    """A step budget shorter than an epoch (15 steps here) with the shipped callbacks: the last step is
    validated, becomes the best checkpoint, and is tested and exported."""
    metrics = train(tiny_cfg("trainer.max_steps=7"))
    out = tmp_path / "run"
    assert metrics["fit/global_step"] == 7 and "val/acc" in metrics and "test/acc" in metrics
    assert [p.name for p in (out / "checkpoints").glob("best-*.ckpt")] == ["best-0-7.ckpt"]
    assert (out / "export" / "model.safetensors").is_file()


def test_max_steps_replaces_the_epoch_budget_and_validates_its_last_step(tiny_cfg, tmp_path):
    # 20 steps span 1.3 epochs, although trainer.max_epochs=1: the step budget wins, as in HF's Trainer.
    metrics = train(tiny_cfg("trainer.max_steps=20", "trainer.max_epochs=1", "export=false"))
    assert metrics["fit/global_step"] == 20
    ckpt = __import__("torch").load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    validated = {state.get("current_score") is not None for key, state in ckpt["callbacks"].items()
                 if key.startswith("ModelCheckpoint")}
    assert validated == {True}
    assert {(0, 14), (1, 19)} <= set(_validations(tmp_path / "run")), "validated at the epoch's end and the last step"


@pytest.mark.parametrize("override", ["trainer.val_check_interval=0.25", "trainer.val_check_interval=1.0",
                                      "trainer.val_check_interval=00:00:30:00", "trainer.limit_train_batches=0",
                                      "trainer.limit_train_batches=0.5", "+trainer.max_time=00:01:00:00"])
def test_legitimate_trainer_settings_pass_the_checks(compose_cfg, override):
    from sft.pipeline.checks import check_config

    check_config(compose_cfg(override, "output_dir=.", "report=none"))


def test_common_trainer_knobs_need_no_plus(tiny_cfg):
    metrics = train(tiny_cfg("trainer.accumulate_grad_batches=3", "trainer.gradient_clip_val=1.0",
                             "trainer.limit_train_batches=6", "trainer.val_check_interval=3", "export=false"))
    assert metrics["fit/global_step"] == 2  # 6 batches, 3 per optimizer step


@pytest.mark.parametrize("override, message", [
    ("+trainer.max_stepz=5", r"trainer.max_stepz is not an argument of lightning.Trainer: did you mean trainer.max_steps"),
    ("trainer.max_steps=0", r"trainer.max_steps=0 must be a positive number of optimizer steps, or -1"),
    ("trainer.val_check_interval=1.5", r"trainer.val_check_interval=1.5 must be a whole number .* fraction"),
    ("trainer.limit_train_batches=-2", r"trainer.limit_train_batches=-2 must be"),
    ("trainer.accumulate_grad_batches=0", r"trainer.accumulate_grad_batches=0 must be an integer >= 1"),
    ("trainer.gradient_clip_val=-1", r"trainer.gradient_clip_val=-1 must be a number >= 0"),
    ("trainer.val_check_interval=5 trainer.accumulate_grad_batches=2", r"not a multiple of trainer.accumulate"),
])
def test_bad_trainer_settings_fail_before_anything_runs(tiny_cfg, tmp_path, override, message):
    from sft.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        train(tiny_cfg(*override.split()))
    assert not (tmp_path / "run").exists(), "nothing is written before the config is checked"
