"""Freeze strategies on real blocks: block maps per architecture, requires_grad and gradients checked
every epoch by a callback (tiny BERT and ResNet), layer-wise learning rates, schedulers with gradual
unfreezing, and resume in the middle of a gradual schedule."""

from __future__ import annotations

import json
from functools import partial

import lightning as L
import pytest
import torch

from sft.errors import ConfigError
from sft.finetune.blocks import block_map
from sft.finetune.strategy import FreezeSpec
from sft.models.classifier import TextClassifier
from sft.models.vision import ImageClassifier, build_image_model
from tests.helpers import FreezeChecker, common, kill_at, run_cli, tiny_hf


# ----------------------------------------------------------------------------------------- block maps
def _partition(model: torch.nn.Module) -> dict[str, int]:
    bmap = block_map(model)
    counts: dict[str, int] = {}
    for name, p in model.named_parameters():
        counts[bmap.group_of(name)] = counts.get(bmap.group_of(name), 0) + p.numel()
    return counts


@pytest.mark.parametrize("arch, depth", [("resnet18", 4), ("efficientnet_b0", 8), ("vit_b_16", 12),
                                         ("efficientnet_lite0", 8)])
def test_image_block_maps_cover_real_blocks(arch, depth):
    model = build_image_model(arch, num_classes=3)
    bmap = block_map(model)
    assert bmap.depth == depth
    counts = _partition(model)
    assert set(counts) == set(bmap.group_names())  # every group owns parameters
    assert sum(counts.values()) == sum(p.numel() for p in model.parameters())
    head = {"resnet18": "fc.", "efficientnet_b0": "classifier.", "vit_b_16": "heads.",
            "efficientnet_lite0": "classifier."}[arch]
    assert all(bmap.group_of(n) == "head" for n, _ in model.named_parameters() if n.startswith(head))


@pytest.mark.parametrize("kind, blocks", [("bert", "bert.encoder.layer"), ("roberta", "roberta.encoder.layer"),
                                          ("distilbert", "distilbert.transformer.layer")])
def test_text_block_maps_are_encoder_layers(kind, blocks, tmp_path):
    from sft.models.backbones import load_task_model
    from sft.tasks import make_task

    model = load_task_model(tiny_hf(kind, tmp_path), make_task("single_label", ["a", "b"]))
    bmap = block_map(model)
    assert bmap.depth == 3 and bmap.blocks[2] == (f"{blocks}.2",)
    assert bmap.group_of(f"{kind}.embeddings.word_embeddings.weight") == "stem"
    assert bmap.group_of(f"{blocks}.1.attention.q_lin.weight" if kind == "distilbert"
                         else f"{blocks}.1.attention.self.query.weight") == "block1"
    assert set(_partition(model)) == {"stem", "block0", "block1", "block2", "head"}


def test_unknown_architecture_and_too_deep_k_are_clear_errors(tiny_bert):
    with pytest.raises(ConfigError, match="No block map for Sequential.*register_block_map"):
        block_map(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    with pytest.raises(ConfigError, match=r"freeze.k=3 but BertForSequenceClassification has only 2 blocks.*0..2"):
        TextClassifier(tiny_bert, num_labels=2, freeze={"strategy": "bottom_k", "k": 3})
    with pytest.raises(ConfigError, match="freeze.milestones"):
        FreezeSpec.parse({"strategy": "gradual", "milestones": [2, 1]})
    with pytest.raises(ConfigError, match="freeze.lr_decay"):
        FreezeSpec.parse({"strategy": "none", "lr_decay": 1.5})
    with pytest.raises(ConfigError, match="freeze.kk is not a freeze setting"):
        FreezeSpec.parse({"strategy": "bottom_k", "kk": 1})


def test_compose_rejects_bad_freeze_settings_before_any_work(tiny_cfg):
    from sft.pipeline.train import train

    with pytest.raises(ConfigError, match="freeze.k=-1"):
        train(tiny_cfg("freeze=bottom_k", "freeze.k=-1"))


# ------------------------------------------------------------------------------ learning-rate groups
def test_layerwise_lr_decay_and_head_lr(tiny_bert):
    model = TextClassifier(tiny_bert, num_labels=2, optimizer=partial(torch.optim.AdamW, lr=1e-3),
                           freeze={"strategy": "none", "lr_decay": 0.5, "head_lr": 1e-2})
    from sft.optim import build_optimizer

    optimizer = build_optimizer(model.optimizer_factory, model._groups, torch.device("cpu"), model.freeze_spec)
    lrs = {g["name"].split("/")[0]: g["lr"] for g in optimizer.param_groups}
    assert lrs == pytest.approx({"head": 1e-2, "block1": 5e-4, "block0": 2.5e-4, "stem": 1.25e-4})
    names = [g["name"] for g in optimizer.param_groups]
    assert "head/no_decay" in names and len(names) == len(set(names))
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


def test_onecycle_keeps_the_ratio_between_groups(tiny_bert, compose_cfg):
    from sft.config import instantiate as build
    from sft.optim import build_optimizer, build_scheduler

    model = TextClassifier(tiny_bert, num_labels=2, freeze={"strategy": "gradual", "milestones": [1],
                                                            "lr_decay": 0.5})
    optimizer = build_optimizer(partial(torch.optim.AdamW, lr=1e-3), model._groups, torch.device("cpu"),
                                model.freeze_spec)
    config = build_scheduler(build(compose_cfg("scheduler=onecycle", "output_dir=/tmp/x").scheduler), optimizer,
                             total_steps=20, monitor="val/acc")
    peaks = {}
    for _ in range(20):
        for g in optimizer.param_groups:
            peaks[g["name"]] = max(peaks.get(g["name"], 0.0), g["lr"])
        optimizer.step()
        config["scheduler"].step()
    assert peaks["head"] == pytest.approx(1e-3, rel=0.05) and peaks["stem"] == pytest.approx(1.25e-4, rel=0.05)


# ------------------------------------------------------------------- strategies with the checker callback
TEXT_GROUPS = ["stem", "block0", "block1", "head"]


@pytest.mark.parametrize("freeze, expected", [
    ({"strategy": "none"}, lambda e: {"backbone", "head"}),
    ({"strategy": "backbone"}, lambda e: {"head"}),
    ({"strategy": "bottom_k", "k": 1}, lambda e: {"block1", "head"}),
    ({"strategy": "bottom_k", "k": 0}, lambda e: {"block0", "block1", "head"}),
    ({"strategy": "gradual", "milestones": [1, 2]}, lambda e: set(TEXT_GROUPS[-1 - min(e, 2):])),
])
def test_strategies_on_tiny_bert(tiny_bert, freeze, expected):
    from sft.data.text import sample

    checker = FreezeChecker(expected)
    dm = sample(tokenizer=tiny_bert, batch_size=32, train_size=96)
    model = TextClassifier(tiny_bert, num_labels=2, id2label=dict(enumerate(dm.label_names)), freeze=freeze,
                           optimizer=partial(torch.optim.AdamW, lr=1e-3))
    trainer = L.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[checker], num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    assert sorted(checker.seen) == [0, 1, 2]
    if freeze["strategy"] == "gradual":
        assert checker.seen[0] == {"head"} and checker.seen[2] == {"block0", "block1", "head"}


@pytest.mark.parametrize("data", ["conll2003", "goemotions"])
@pytest.mark.parametrize("freeze, expected", [
    ({"strategy": "backbone"}, lambda e: {"head"}),
    ({"strategy": "bottom_k", "k": 1}, lambda e: {"block1", "head"}),
    ({"strategy": "gradual", "milestones": [1, 2], "lr_decay": 0.5}, lambda e: set(TEXT_GROUPS[-1 - min(e, 2):])),
])
def test_strategies_on_a_tagger_and_a_multi_label_model(tiny_bert, tmp_path, data, freeze, expected):
    """The blocks of AutoModelForTokenClassification and of a multi-label head freeze as a classifier's do."""
    from sft.data import text
    from tests.taskdata import write_conll, write_goemotions

    folder = (write_conll if data == "conll2003" else write_goemotions)(tmp_path / "data")
    dm = getattr(text, data)(path=str(folder), tokenizer=tiny_bert, batch_size=16, cache_dir=tmp_path / "cache")
    dm.prepare_data()
    checker = FreezeChecker(expected)
    model = TextClassifier(tiny_bert, task=dm.task, freeze=freeze, optimizer=partial(torch.optim.AdamW, lr=1e-3))
    trainer = L.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[checker], num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    assert sorted(checker.seen) == [0, 1, 2]
    assert type(model.model).__name__ == ("BertForTokenClassification" if data == "conll2003"
                                          else "BertForSequenceClassification")


@pytest.mark.parametrize("freeze, expected", [
    ({"strategy": "bottom_k", "k": 2}, lambda e: {"block2", "block3", "head"}),
    ({"strategy": "gradual", "milestones": [1], "lr_decay": 0.7}, lambda e: {"head"} | ({"block3"} if e else set())),
])
def test_strategies_on_resnet_keep_frozen_batchnorm(image_root, freeze, expected):
    from sft.data.image import ImageDataModule
    from sft.data.image_sources import ImageFolderSource

    tiny = {"resize": 40, "crop": 32, "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear"}
    dm = ImageDataModule(ImageFolderSource(str(image_root)), tiny, batch_size=8)
    model = ImageClassifier("resnet18", num_labels=2, freeze=freeze, optimizer=partial(torch.optim.AdamW, lr=1e-3))
    stem_stats = model.model.bn1.running_mean.clone()
    layer1_stats = model.model.layer1[0].bn1.running_mean.clone()
    checker = FreezeChecker(expected)
    trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[checker], num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    assert sorted(checker.seen) == [0, 1]
    assert torch.equal(model.model.bn1.running_mean, stem_stats)  # frozen BatchNorm keeps pretrained statistics
    assert torch.equal(model.model.layer1[0].bn1.running_mean, layer1_stats)


@pytest.mark.parametrize("scheduler", ["linear", "onecycle"])
def test_gradual_runs_through_warmup_and_onecycle(tiny_cfg, scheduler):
    from sft.pipeline.train import train

    metrics = train(tiny_cfg("freeze=gradual", "freeze.milestones=[1]", "freeze.lr_decay=0.8",
                             f"scheduler={scheduler}", "trainer.max_epochs=2", "data.train_size=96", "export=false"))
    assert metrics["fit/epochs"] == 2 and metrics["fit/global_step"] == 6


# ------------------------------------------------------------------------------------- resume mid-gradual
@pytest.fixture(scope="module")
def gradual_reference(tiny_bert, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("gradual_ref")
    # last.ckpt every 4 steps: the kill at step 22 resumes mid epoch 1, with block1 already unfrozen.
    args = [*common(tiny_bert, run_dir, max_epochs=3), "freeze=gradual", "freeze.milestones=[1,2]",
            "freeze.lr_decay=0.8", "optimizer.lr=1e-3", "callbacks.last_checkpoint.every_n_train_steps=4"]
    done = run_cli(args)
    assert done.returncode == 0, done.stderr[-3000:]
    return args, run_dir


@pytest.mark.subprocess
def test_resume_mid_gradual_matches_uninterrupted(gradual_reference, tmp_path):
    import signal

    args, ref_dir = gradual_reference
    run_dir = tmp_path / "killed"
    args = [a for a in args if not a.startswith("hydra.run.dir=")] + [f"hydra.run.dir={run_dir}"]
    # 15 steps per epoch: step 22 is mid epoch 1, after the first milestone unfroze block1.
    killed = run_cli([*args, *kill_at(22)])
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["freeze_state"] == {"stem": False, "block0": False, "block1": True, "head": True}
    resumed = run_cli(args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected = json.loads((ref_dir / "metrics.json").read_text())
    got = json.loads((run_dir / "metrics.json").read_text())
    for key in ("val/acc", "val/loss", "test/acc", "test/loss", "fit/global_step"):
        assert got[key] == pytest.approx(expected[key], abs=1e-6), key
    final = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    reference = torch.load(ref_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert final["freeze_state"] == reference["freeze_state"] == {g: g != "stem" for g in TEXT_GROUPS}
    groups = [len(g["params"]) for g in final["optimizer_states"][0]["param_groups"]]
    assert groups == [len(g["params"]) for g in reference["optimizer_states"][0]["param_groups"]]
    assert len(groups) == 2 * len(TEXT_GROUPS)  # every group existed from the first step


def test_linear_probe_with_default_settings_learns(compose_cfg, image_root, tmp_path):
    """freeze=backbone and nothing else: the head gets a probe's learning rate, not the 5e-5 meant for fine-tuning
    a pretrained network (which left the hymenoptera probe at 0.54 after 2 epochs)."""
    from sft.pipeline.train import train
    from tests.conftest import FAST

    cfg = compose_cfg("model=efficientnet_lite0", "data=imagefolder", f"data.path={image_root}",  # pretrained, offline
                      "data.batch_size=8", "data.image_size=64", "freeze=backbone", f"output_dir={tmp_path / 'run'}",
                      *FAST, "trainer.max_epochs=3", "export=false")
    assert cfg.optimizer.lr == 1e-3
    metrics = train(cfg)
    assert metrics["val/acc"] >= 0.9, metrics


@pytest.mark.parametrize("overrides, lr", [
    (["freeze=backbone"], 1e-3),
    (["probe=cached"], 1e-3),
    (["probe=sklearn", "optimizer=sgd"], 1e-2),
    (["freeze=backbone", "optimizer=sgd"], 1e-2),
    (["freeze=backbone", "optimizer.lr=0.05"], 0.05),          # the command line wins
    (["experiment=lite0_hymenoptera", "freeze=backbone"], 3e-4),  # so does an experiment's own lr
    (["freeze=none"], 5e-5),
    (["freeze=bottom_k"], 5e-5),
])
def test_probe_learning_rate_follows_the_strategy(compose_cfg, overrides, lr):
    assert compose_cfg(*overrides, "output_dir=.").optimizer.lr == pytest.approx(lr)
