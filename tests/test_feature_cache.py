"""Cached-feature probes: features + head reproduce the full forward, the cache is keyed on weights and
data, and a cached probe trains like the uncached one (real Trainer, real files)."""

from __future__ import annotations

import pytest
import torch

from sft.errors import ConfigError
from sft.models.classifier import TextClassifier
from sft.models.vision import ImageClassifier
from sft.probes.feature_cache import cache_key, cached_features
from tests.conftest import FAST
from tests.helpers import tiny_hf


@pytest.mark.parametrize("kind", ["bert", "roberta", "distilbert"])
def test_text_features_then_head_equal_the_full_forward(kind, tmp_path):
    model = TextClassifier(tiny_hf(kind, tmp_path), num_labels=3, freeze="backbone").eval()
    batch = {"input_ids": torch.randint(5, 100, (4, 12)), "attention_mask": torch.ones(4, 12, dtype=torch.long)}
    batch["attention_mask"][0, 8:] = 0
    features = model.features(batch)
    assert features.shape[0] == 4
    assert torch.allclose(model.head_logits(features), model.logits(batch), atol=1e-6)


@pytest.mark.parametrize("arch", ["resnet18", "efficientnet_lite0", "vit_b_16"])
def test_image_features_then_head_equal_the_full_forward(arch):
    model = ImageClassifier(arch, num_labels=2, freeze="backbone").eval()
    batch = {"pixel_values": torch.randn(2, 3, 224, 224)}
    features = model.features(batch)
    assert features.ndim == 2
    assert torch.allclose(model.head_logits(features), model.logits(batch), atol=1e-5)


def test_cache_is_reused_and_keyed_on_weights_and_data(tiny_bert, tmp_path):
    from sft.data.text import sample

    model = TextClassifier(tiny_bert, num_labels=2, freeze="backbone")
    dm = sample(tokenizer=tiny_bert, batch_size=16)
    first = cached_features(model, dm, tmp_path)
    files = list(tmp_path.glob("*.pt"))
    assert len(files) == 1
    assert [len(first[s][1]) for s in ("train", "val", "test")] == [len(dm.datasets[s]) for s in ("train", "val", "test")]
    stamp = files[0].stat().st_mtime_ns
    again = cached_features(model, dm, tmp_path)
    assert files[0].stat().st_mtime_ns == stamp  # read, not recomputed
    assert torch.equal(again["val"][0], first["val"][0]) and torch.equal(again["train"][1], first["train"][1])
    # The features are what the model's head receives, in split order.
    batch = next(iter(dm.eval_dataloader("val")))
    model.eval()
    assert torch.allclose(first["val"][0][: len(batch["labels"])], model.features(batch), atol=1e-6)

    key = cache_key(model, dm)
    assert cache_key(model, sample(tokenizer=tiny_bert, batch_size=16, train_size=100)) != key  # other data
    with torch.no_grad():
        model.model.bert.encoder.layer[0].output.dense.bias.add_(0.1)  # other backbone weights
    assert cache_key(model, dm) != key
    model.model.classifier.bias.data.add_(1.0)  # the head is not part of the key
    assert cache_key(model, dm) == cache_key(model, dm)


def test_cache_features_needs_a_frozen_backbone(tiny_cfg):
    from sft.pipeline.train import train

    with pytest.raises(ConfigError, match="not freeze=bottom_k: drop the freeze option"):
        train(tiny_cfg("freeze=bottom_k", "freeze.k=1", "+probe.cache_features=true"))
    with pytest.raises(ConfigError, match="freeze.cache_features moved to probe.cache_features"):
        train(tiny_cfg("freeze=backbone", "+freeze.cache_features=true"))


def test_cached_probe_trains_like_the_uncached_one(compose_cfg, image_root, tmp_path):
    """A frozen random ResNet on red vs blue images: both probes separate the colours, the cached one from
    features computed once; the export is the full model with the trained head."""
    from sft.eval import evaluate
    from sft.pipeline.train import train

    results = {}
    for cached in (False, True):
        out = tmp_path / f"cached_{cached}"
        cfg = compose_cfg("model=resnet18", "model.weights=none", "data=imagefolder", f"data.path={image_root}",
                          "data.batch_size=8", "data.image_size=32", "data.augment=false",
                          "probe=cached" if cached else "freeze=backbone", f"output_dir={out}", *FAST,
                          "trainer.max_epochs=4", "optimizer.lr=1e-2", "seed=1")
        results[cached] = train(cfg)
        # The exported full model (backbone + trained head) scores what the run reported.
        assert evaluate(out / "export", "val")["val/acc"] == pytest.approx(results[cached]["val/acc"], abs=1e-6)
    assert results[True]["val/acc"] >= 0.9 and results[False]["val/acc"] >= 0.9, results
    assert abs(results[True]["val/acc"] - results[False]["val/acc"]) <= 0.1
