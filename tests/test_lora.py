"""freeze=lora (peft): what trains, what the checkpoints hold, the merged export, resume, errors."""

from __future__ import annotations

import json
import signal
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch

from sft.errors import ConfigError
from sft.models.classifier import TextClassifier
from sft.pipeline.train import train
from tests.helpers import common, kill_at, run_cli

LORA = {"strategy": "lora"}


def is_trained_by_lora(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name or ".modules_to_save." in name


class LoraChecker(L.Callback):
    """Flash's freeze check, per parameter: at every epoch only the adapters and the head's trained copy train."""

    def __init__(self) -> None:
        self.epochs: list[int] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for name, p in pl_module.model.named_parameters():
            assert p.requires_grad == is_trained_by_lora(name), name
        self.epochs.append(trainer.current_epoch)


@pytest.fixture(scope="module")
def lora_run(tiny_bert, tmp_path_factory) -> tuple[Path, dict[str, float], dict[str, torch.Tensor]]:
    """A real run (Hydra config, the shipped callbacks, export) of the tiny BERT with freeze=lora."""
    from sft.config import compose_config
    from tests.conftest import FAST

    run_dir = tmp_path_factory.mktemp("lora_run")
    pretrained = TextClassifier(tiny_bert, num_labels=2, head_bias="library").model.state_dict()
    cfg = compose_config([f"model.name_or_path={tiny_bert}", *FAST, "trainer.max_epochs=2", "freeze=lora",
                          "export.adapter=true"])
    cfg.output_dir = str(run_dir)
    metrics = train(cfg)
    return run_dir, metrics, pretrained


def test_lora_trains_the_adapters_and_the_head_only(tiny_bert):
    from sft.data.text import sample

    dm = sample(tokenizer=tiny_bert, batch_size=32, train_size=96)
    model = TextClassifier(tiny_bert, num_labels=2, id2label=dict(enumerate(dm.label_names)), freeze=LORA,
                           optimizer=partial(torch.optim.AdamW, lr=5e-3))
    before = {n: p.detach().clone() for n, p in model.model.named_parameters()}
    checker = LoraChecker()
    trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[checker], num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    assert checker.epochs == [0, 1]
    changed = {n for n, p in model.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {n for n in before if is_trained_by_lora(n)}, "the pretrained weights must not move"
    # query and value of both layers adapted (BERT's defaults), the pooler and the classifier trained in full
    adapted = {n.split(".lora_")[0] for n in changed if ".lora_" in n}
    assert adapted == {f"bert.encoder.layer.{i}.attention.self.{m}" for i in (0, 1) for m in ("query", "value")}
    assert any(n.startswith("bert.pooler.modules_to_save") for n in changed)
    assert any(n.startswith("classifier.modules_to_save") for n in changed)
    table = model.freeze_table()
    total = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert f"{total:,}" in table and f"{trained:,}" in table and trained < total / 10


def test_lora_checkpoints_hold_only_what_trains(lora_run):
    run_dir, metrics, _ = lora_run
    assert metrics["fit/global_step"] > 0
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    model = TextClassifier.from_checkpoint(str(run_dir / "checkpoints" / "last.ckpt"))
    parameters = {f"model.{n}" for n, _ in model.model.named_parameters()}
    keys = set(checkpoint["state_dict"]) & parameters  # (buffers, e.g. a multi-label model's thresholds, stay too)
    assert keys == {f"model.{n}" for n, p in model.model.named_parameters() if is_trained_by_lora(n)}
    # AdamW state only for the trained weights (two moments each)
    states = checkpoint["optimizer_states"][0]["state"]
    assert len(states) == len(keys)
    assert checkpoint["lora"]["base_checksum"] > 0
    full = sum(p.numel() for p in model.parameters())
    saved = sum(v.numel() for v in checkpoint["state_dict"].values())
    assert saved < full / 10


def test_lora_export_is_merged_and_loads_in_a_transformers_pipeline(lora_run, tiny_bert):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    run_dir, _, pretrained = lora_run
    export = run_dir / "export"
    exported = AutoModelForSequenceClassification.from_pretrained(export).eval()
    assert not any("lora" in k or "modules_to_save" in k for k in exported.state_dict())
    trained = TextClassifier.from_checkpoint(str(next((run_dir / "checkpoints").glob("best-*.ckpt"))))
    tokenizer = AutoTokenizer.from_pretrained(export)
    batch = tokenizer(["a gripping, beautifully acted film", "dull and far too long", "fine"], padding=True,
                      return_tensors="pt")
    with torch.no_grad():
        merged = exported(**batch).logits
        adapted = trained(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
    assert torch.allclose(merged, adapted, atol=1e-5), (merged - adapted).abs().max()
    # the merge changed the adapted weights, not the others
    q = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(exported.state_dict()[q], pretrained[q])
    k = "bert.encoder.layer.0.attention.self.key.weight"
    assert torch.equal(exported.state_dict()[k], pretrained[k])
    outputs = pipeline("text-classification", model=str(export), device="cpu")(["a gripping, beautifully acted film"])
    assert outputs[0]["label"] in set(json.loads((export / "labels.json").read_text())["label_names"])


def test_lora_adapter_saved_in_peft_format_reproduces_the_model(lora_run, tiny_bert):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    run_dir, _, _ = lora_run
    adapter = run_dir / "export" / "adapter"  # export.adapter=true
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 8
    trained = TextClassifier.from_checkpoint(str(next((run_dir / "checkpoints").glob("best-*.ckpt"))))
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    restored = PeftModel.from_pretrained(base, adapter).eval()
    ids = torch.tensor([[101, 2023, 3185, 2001, 2307, 102]])
    with torch.no_grad():
        assert torch.allclose(restored(input_ids=ids).logits, trained(ids), atol=1e-5)


def test_export_adapter_without_lora_stops_before_training(tiny_cfg, tmp_path):
    with pytest.raises(ConfigError, match="export.adapter=true saves a LoRA adapter, but freeze=none"):
        train(tiny_cfg("export.adapter=true"))
    assert not (tmp_path / "run").exists()


def test_a_lora_checkpoint_on_other_base_weights_is_refused(lora_run, tiny_bert, tmp_path):
    from transformers import AutoTokenizer, BertModel

    run_dir, _, _ = lora_run
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    base = BertModel.from_pretrained(tiny_bert)  # the same base with one frozen weight nudged
    with torch.no_grad():
        base.encoder.layer[1].output.dense.weight[0, 0] += 0.01
    base.save_pretrained(tmp_path / "other")
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(tmp_path / "other")
    other = TextClassifier(str(tmp_path / "other"), num_labels=2, freeze=LORA)
    with pytest.raises(ConfigError, match="other pretrained weights"):
        other.check_lora_checkpoint(checkpoint)
    other_rank = TextClassifier(checkpoint["hyper_parameters"]["name_or_path"], num_labels=2,
                                freeze={"strategy": "lora", "target_modules": ["query", "key", "value"]})
    with pytest.raises(ConfigError, match="trained with freeze.target_modules=None"):
        other_rank.check_lora_checkpoint(checkpoint)
    with pytest.raises(ConfigError, match="lacks .* weights that freeze=lora trains"):  # settings not recorded
        other_rank.check_lora_checkpoint({**checkpoint, "hyper_parameters": {}})
    base_path = checkpoint["hyper_parameters"]["name_or_path"]
    other_scale = TextClassifier(base_path, num_labels=2, freeze={"strategy": "lora", "lora_alpha": 32})
    with pytest.raises(ConfigError, match="trained with freeze.lora_alpha=16"):
        other_scale.check_lora_checkpoint(checkpoint)
    full = TextClassifier(base_path, num_labels=2)  # resuming a LoRA run with freeze=none
    with pytest.raises(ConfigError, match="written by a freeze=lora run"):
        full.load_checkpoint_weights(checkpoint)


def test_lora_multi_label_checkpoint_keeps_thresholds_and_loss_weights(tiny_bert, tmp_path):
    """What a LoRA checkpoint keeps besides the adapters and the head: the buffers (tuned thresholds, the
    balanced loss weights), restored by a reload."""
    from sft.data import text
    from tests.taskdata import write_goemotions

    dm = text.goemotions(path=str(write_goemotions(tmp_path / "data")), tokenizer=tiny_bert, batch_size=16,
                         cache_dir=tmp_path / "cache")
    dm.prepare_data()
    model = TextClassifier(tiny_bert, task=dm.task, freeze=LORA, loss={"pos_weight": "balanced"},
                           optimizer=partial(torch.optim.AdamW, lr=5e-3))
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    trainer.save_checkpoint(tmp_path / "lora.ckpt")
    saved = torch.load(tmp_path / "lora.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    buffers = {f"model.{n}" for n, _ in model.model.named_buffers()} | {"thresholds", "criterion.pos_weight"}
    assert {"thresholds", "criterion.pos_weight"} <= set(saved)
    assert all(is_trained_by_lora(k) or k in buffers for k in saved), sorted(set(saved) - buffers)[:5]
    reloaded = TextClassifier.from_checkpoint(str(tmp_path / "lora.ckpt"))
    assert torch.equal(reloaded.thresholds, model.thresholds)
    assert torch.equal(reloaded.criterion.pos_weight, model.criterion.pos_weight)
    assert not torch.equal(reloaded.criterion.pos_weight, torch.ones(3))  # computed from the training split


def test_lora_with_layerwise_learning_rates(tiny_bert):
    from sft.optim import build_optimizer

    model = TextClassifier(tiny_bert, num_labels=2, freeze={"strategy": "lora", "lr_decay": 0.5},
                           optimizer=partial(torch.optim.AdamW, lr=1e-3))
    optimizer = build_optimizer(model.optimizer_factory, model._groups, torch.device("cpu"), model.freeze_spec)
    name_of = {id(p): n for n, p in model.model.named_parameters()}
    lrs = {name_of[id(p)]: g["lr"] for g in optimizer.param_groups for p in g["params"] if p.requires_grad}
    assert set(lrs) == {n for n, p in model.model.named_parameters() if is_trained_by_lora(n)}
    assert lrs["bert.encoder.layer.1.attention.self.query.lora_A.default.weight"] == pytest.approx(1e-3 * 0.5)
    assert lrs["bert.encoder.layer.0.attention.self.value.lora_B.default.weight"] == pytest.approx(1e-3 * 0.25)
    assert lrs["classifier.modules_to_save.default.weight"] == pytest.approx(1e-3)


@pytest.mark.parametrize("data", ["conll2003", "goemotions", "stsb"])
def test_lora_on_a_tagger_a_multi_label_and_a_regression_model(tiny_bert, tmp_path, data):
    from sft.data import text
    from tests.taskdata import write_conll, write_goemotions, write_stsb

    writers = {"conll2003": write_conll, "goemotions": write_goemotions, "stsb": write_stsb}
    folder = writers[data](tmp_path / "data")
    make = getattr(text, data) if data != "stsb" else partial(text.glue, task="stsb")
    dm = make(path=str(folder), tokenizer=tiny_bert, batch_size=16, cache_dir=tmp_path / "cache")
    dm.prepare_data()
    model = TextClassifier(tiny_bert, task=dm.task, freeze=LORA, optimizer=partial(torch.optim.AdamW, lr=5e-3))
    checker = LoraChecker()
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[checker], num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    assert checker.epochs == [0]
    heads = {n.split(".modules_to_save")[0] for n, _ in model.model.named_parameters() if ".modules_to_save." in n}
    # a tagger has no pooler: its classifier reads every token's state
    assert heads == ({"classifier"} if data == "conll2003" else {"classifier", "bert.pooler"})
    assert type(model.model).__name__ == ("BertForTokenClassification" if data == "conll2003"
                                          else "BertForSequenceClassification")


@pytest.mark.parametrize("kind", ["distilbert", "roberta"])
def test_lora_targets_each_architectures_attention(kind, tmp_path):
    from tests.helpers import tiny_hf

    model = TextClassifier(tiny_hf(kind, tmp_path), num_labels=3, freeze=LORA)
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, _ in model.model.named_parameters() if ".lora_A." in n}
    assert adapted == ({"q_lin", "v_lin"} if kind == "distilbert" else {"query", "value"})
    trained_heads = {n.split(".modules_to_save")[0] for n, _ in model.model.named_parameters()
                     if ".modules_to_save." in n}
    assert trained_heads == ({"pre_classifier", "classifier"} if kind == "distilbert" else {"classifier"})
    logits = model(torch.tensor([[0, 5, 6, 7, 2]]))
    logits.sum().backward()
    assert all(p.grad is not None for n, p in model.model.named_parameters() if p.requires_grad)


def test_lora_on_a_vision_transformer_merges_exactly():
    import torchvision

    from sft.finetune.lora import add_lora, merged_copy

    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_heads=2, hidden_dim=32,
                                               mlp_dim=64, num_classes=3)
    torch.nn.init.normal_(vit.heads.head.weight)  # torchvision starts the head at zero
    plain = {k: v.clone() for k, v in vit.state_dict().items()}
    peft_model = add_lora(vit, r=4, lora_alpha=8, lora_dropout=0.0, target_modules=None, trainable_modules=["heads"])
    for name, p in vit.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p)
    images = torch.randn(2, 3, 32, 32)
    vit.eval()
    merged = merged_copy(peft_model).eval()
    original = torchvision.models.VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_heads=2,
                                                    hidden_dim=32, mlp_dim=64, num_classes=3).eval()
    original.load_state_dict(plain)
    with torch.no_grad():
        assert torch.allclose(merged(images), vit(images), atol=1e-5)
        assert not torch.allclose(original(images), vit(images), atol=1e-3), "the adapters change the output"
    assert set(merged.state_dict()) == set(plain)


@pytest.mark.parametrize("freeze, message", [
    ({"strategy": "lora", "r": 0}, "freeze.r=0"),
    ({"strategy": "lora", "lora_dropout": 1.0}, "freeze.lora_dropout"),
    ({"strategy": "lora", "target_modules": ["attn_proj"]}, r"freeze.target_modules=\['attn_proj'\]: \['attn_proj'\] match no"),
    ({"strategy": "none", "r": 16}, "freeze.r is a LoRA setting"),
])
def test_bad_lora_settings_are_clear_errors(tiny_bert, freeze, message):
    with pytest.raises(ConfigError, match=message):
        TextClassifier(tiny_bert, num_labels=2, freeze=freeze)


def test_image_lora_export_is_merged_and_rebuilds_with_the_same_logits(image_root, tmp_path):
    from types import SimpleNamespace

    from sft.models.vision import ImageClassifier

    model = ImageClassifier("resnet18", num_labels=2, freeze={"strategy": "lora", "target_modules": ["conv1", "conv2"]},
                            head_bias="library")
    with torch.no_grad():
        for name, p in model.model.named_parameters():
            if ".lora_B." in name:
                p.normal_(std=0.05)
    model.eval()
    preprocess = {"resize": 40, "crop": 32, "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25), "interpolation": 2}
    model.export(tmp_path / "export", SimpleNamespace(preprocess=preprocess))
    rebuilt, _ = ImageClassifier.from_export(tmp_path / "export")
    assert not any("lora" in k or "modules_to_save" in k for k in rebuilt.model.state_dict())
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(rebuilt(images), model(images), atol=1e-4)


def test_lora_on_a_model_without_default_targets_names_the_setting(image_root):
    from sft.models.vision import ImageClassifier

    with pytest.raises(ConfigError, match=r"freeze.target_modules=\[.*conv1"):
        ImageClassifier("resnet18", num_labels=2, freeze=LORA)
    model = ImageClassifier("resnet18", num_labels=2, freeze={"strategy": "lora", "target_modules": ["conv1", "conv2"]})
    assert any(".lora_A." in n for n, p in model.named_parameters() if p.requires_grad)
    assert all(p.requires_grad for p in model.model.fc.modules_to_save.parameters())


def test_compose_freeze_lora_sets_the_adapter_learning_rate(compose_cfg):
    assert compose_cfg("freeze=lora").optimizer.lr == 5e-4
    assert compose_cfg("freeze=lora", "optimizer=sgd").optimizer.lr == 1e-2
    assert compose_cfg("freeze=lora", "optimizer.lr=1e-4").optimizer.lr == 1e-4
    assert compose_cfg("freeze=lora", "freeze.r=16").freeze.r == 16


@pytest.mark.slow  # three subprocess runs (~35 s): make test-slow, which CI runs too
@pytest.mark.subprocess
def test_lora_killed_mid_epoch_resumes_exactly(tiny_bert, tmp_path):
    """The shipped callbacks, LoRA's default learning rate: a SIGKILL mid-epoch, then the same command, ends with
    the uninterrupted run's metrics and trained weights (the frozen ones come from the base model again)."""
    from tests.test_resume import assert_same_run, outcome

    reference_dir = tmp_path / "uninterrupted"
    reference = run_cli(common(tiny_bert, reference_dir, "freeze=lora", max_epochs=4))
    assert reference.returncode == 0, reference.stderr[-3000:]
    run_dir = tmp_path / "killed"
    extra = ["freeze=lora", "callbacks.last_checkpoint.every_n_train_steps=20"]
    killed = run_cli(common(tiny_bert, run_dir, *extra, *kill_at(27), max_epochs=4))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 20
    resumed = run_cli(common(tiny_bert, run_dir, *extra, max_epochs=4))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming from" in resumed.stdout + resumed.stderr
    assert_same_run(outcome(run_dir), outcome(reference_dir))
