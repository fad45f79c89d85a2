"""Robustness and representation report sections on real tiny models and real data modules: seeded
perturbations, flip rates recomputed independently, projections and class-separation numbers checked
against sklearn / numpy."""

from __future__ import annotations

import dataclasses
import math
import random

import numpy as np
import pytest
import torch

from sft.data.image import ImageDataModule
from sft.data.image_sources import ImageFolderSource
from sft.data.sources import TextSplits
from sft.data.text import TextDataModule
from sft.errors import ConfigError
from sft.inference import split_outputs
from sft.models.classifier import TextClassifier
from sft.models.vision import ImageClassifier
from sft.report import representation, robustness
from sft.report.context import ReportContext
from sft.report.robustness import token_dropout, typos

GOOD = ["a wonderful warm and funny film", "great acting and a lovely story", "i loved every minute of it",
        "brilliant moving and beautifully shot"]
BAD = ["a dull boring and lifeless film", "terrible acting and a weak plot", "i hated every minute of it",
       "awful tedious and badly written"]
TRAIN = [(t, "pos") for t in GOOD] + [(t, "neg") for t in BAD]
TEST = [(f"{w} {t}", label) for t, label in TRAIN for w in ("honestly", "truly", "well")]
# mean 0.5 / std 0.25: a noise scale that forgot the normalisation std would be off by 4x
IMAGE_PREPROCESS = {"resize": 40, "crop": 32, "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25),
                    "interpolation": "bilinear"}
LONG_TEXT = " ".join(f"word{i}" for i in range(40))


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def text_ctx(tiny_bert: str) -> ReportContext:
    """A tiny BERT trained for a few steps on 8 sentences (so its predictions depend on the words)."""
    dm = TextDataModule(TextSplits(TRAIN, TRAIN, TEST, ["neg", "pos"]), tokenizer=tiny_bert, max_length=32)
    dm.prepare_data()
    dm.setup("test")
    torch.manual_seed(0)
    model = TextClassifier(tiny_bert, num_labels=2, id2label=dm.id2label)
    batch = dict(dm.tokenizer([t for t, _ in TRAIN], padding=True, return_tensors="pt"))
    labels = torch.tensor([dm.label2id[label] for _, label in TRAIN])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(model.logits(batch), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return ReportContext(model=model, datamodule=dm, label_names=dm.label_names, test=split_outputs(model, dm, "test"),
                         seed=3)


@pytest.fixture(scope="module")
def image_ctx(image_root) -> ReportContext:
    dm = ImageDataModule(ImageFolderSource(str(image_root)), IMAGE_PREPROCESS, batch_size=8)
    dm.setup("test")
    torch.manual_seed(0)
    model = ImageClassifier("resnet18", num_labels=2, id2label=dm.id2label).eval()
    return ReportContext(model=model, datamodule=dm, label_names=dm.label_names, test=split_outputs(model, dm, "test"),
                         seed=5)


def text_predictions(ctx: ReportContext, texts: list[str]) -> torch.Tensor:
    """Predictions with one padded batch straight from the tokenizer (not the section's chunked path)."""
    enc = ctx.tokenizer(texts, truncation=True, max_length=32, padding=True, return_tensors="pt")
    with torch.no_grad():
        return ctx.model.logits({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}).argmax(-1)


def image_predictions(ctx: ReportContext, pixels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return ctx.model.logits({"pixel_values": pixels}).argmax(-1)


def all_test_pixels(ctx: ReportContext) -> torch.Tensor:
    return torch.stack([ctx.datamodule.datasets["test"][i]["pixel_values"] for i in range(len(ctx.test.labels))])


def rates(preds: torch.Tensor, ctx: ReportContext) -> tuple[float, float]:
    """(accuracy, flip rate vs the clean predictions), counted by hand."""
    labels, clean = ctx.test.labels.tolist(), ctx.test.preds.tolist()
    preds = preds.tolist()
    return (sum(p == y for p, y in zip(preds, labels, strict=True)) / len(labels),
            sum(p != c for p, c in zip(preds, clean, strict=True)) / len(labels))


# --------------------------------------------------------------------------- text perturbations
def test_token_dropout_is_seeded_and_keeps_at_least_one_word():
    assert token_dropout(LONG_TEXT, 0.5, random.Random(1)) == token_dropout(LONG_TEXT, 0.5, random.Random(1))
    assert token_dropout(LONG_TEXT, 0.5, random.Random(1)) != token_dropout(LONG_TEXT, 0.5, random.Random(2))
    text = "  spaced   out\ttext  "
    assert token_dropout(text, 0.0, random.Random(0)) == text
    words = LONG_TEXT.split()
    for seed in range(5):
        kept = token_dropout(LONG_TEXT, 1.0, random.Random(seed)).split()
        assert len(kept) == 1 and kept[0] in words
    # the survivors are an in-order subset, about half of 1000 words at p = 0.5
    many = [f"w{i}" for i in range(1000)]
    survivors = token_dropout(" ".join(many), 0.5, random.Random(0)).split()
    assert survivors == [w for w in many if w in set(survivors)]
    assert 450 <= len(survivors) <= 550
    assert token_dropout("", 0.5, random.Random(0)) == ""


def test_typos_are_seeded_keyboard_edits_of_letters_only():
    sentence = "The quick brown fox, 42 times!"
    assert typos(sentence, 0.0, random.Random(0)) == sentence
    assert typos(sentence, 0.3, random.Random(7)) == typos(sentence, 0.3, random.Random(7))
    assert typos(LONG_TEXT, 0.3, random.Random(7)) != typos(LONG_TEXT, 0.3, random.Random(8))
    assert typos(sentence, 1.0, random.Random(0)) != sentence
    # digits, spaces and punctuation are never touched
    for seed in range(20):
        noisy = typos(sentence, 0.5, random.Random(seed))
        assert [c for c in noisy if not c.isalpha()] == [c for c in sentence if not c.isalpha()]
    # a lone 'g' (no next letter to swap with): deleted, kept with a neighbour after it, or replaced by one
    neighbours = set("tyfhvb")  # around g on a QWERTY keyboard
    seen = set()
    for seed in range(200):
        out = typos("g", 1.0, random.Random(seed))
        assert out == "" or (len(out) == 1 and out in neighbours) or (out[0] == "g" and out[1] in neighbours), out
        seen.add("delete" if out == "" else "insert" if len(out) == 2 else "replace")
    assert seen == {"delete", "insert", "replace"}
    for seed in range(50):  # case is kept
        out = typos("G", 1.0, random.Random(seed))
        assert out in {"", *"TYFHVB"} or (out[0] == "G" and out[1] in "TYFHVB"), out
    # swaps of adjacent letters show up on two-letter words
    assert "ba" in {typos("ab", 0.999, random.Random(seed)) for seed in range(100)}


def test_bad_settings_name_the_setting(text_ctx):
    for settings, name in (({"token_dropout": -0.1}, "report.robustness.token_dropout"),
                           ({"typo_rate": 1.5}, "report.robustness.typo_rate"),
                           ({"noise_std": "a lot"}, "report.robustness.noise_std"),
                           ({"blur_sigma": -1}, "report.robustness.blur_sigma"),
                           ({"repeats": 0}, "report.robustness.repeats"),
                           ({"token_dropuot": 0.1}, "report.robustness.token_dropuot")):
        with pytest.raises(ConfigError, match=name.replace(".", r"\.")):
            robustness.section(text_ctx, settings)


# --------------------------------------------------------------------------- text section
def test_text_section_matches_an_independent_recomputation(text_ctx):
    ctx = text_ctx
    assert ctx.test.preds.tolist() == ctx.test.labels.tolist()  # the trained model gets the clean test right
    report = robustness.section(ctx, {"token_dropout": 0.5, "typo_rate": 0.3, "repeats": 2})
    assert report["seed"] == 3 and report["n"] == len(TEST) and report["clean_accuracy"] == 1.0
    assert [p["name"] for p in report["perturbations"]] == ["token_dropout", "typos"]
    texts = [t for t, _ in TEST]
    for entry, perturb, strength in zip(report["perturbations"], (token_dropout, typos), (0.5, 0.3), strict=True):
        # repeat r draws from random.Random(seed + r), one generator through the split in order
        per_repeat = []
        for r in range(2):
            rng = random.Random(ctx.seed + r)
            per_repeat.append(rates(text_predictions(ctx, [perturb(t, strength, rng) for t in texts]), ctx))
        assert entry["strength"] == strength and entry["repeats"] == 2
        assert entry["accuracy"] == pytest.approx(sum(a for a, _ in per_repeat) / 2)
        assert entry["flip_rate"] == pytest.approx(sum(f for _, f in per_repeat) / 2)
        assert 0 < entry["flip_rate"] <= 1  # strong perturbations do change some predictions here
        assert entry["accuracy"] == pytest.approx(1 - entry["flip_rate"])  # clean predictions were all right


def test_text_strength_zero_is_left_out_and_changes_nothing(text_ctx):
    report = robustness.section(text_ctx, {"token_dropout": 0, "typo_rate": None})
    assert report["perturbations"] == []
    # the section's own encoding path reproduces the clean (data module) predictions exactly
    for name in ("token_dropout", "typos"):
        entry = robustness.evaluate_perturbation(text_ctx, name, 0.0)
        assert entry["flip_rate"] == 0.0 and entry["accuracy"] == report["clean_accuracy"]
    only_typos = robustness.section(text_ctx, {"token_dropout": 0.0})
    assert [p["name"] for p in only_typos["perturbations"]] == ["typos"]
    assert only_typos["perturbations"][0]["strength"] == 0.05  # the default


# --------------------------------------------------------------------------- image perturbations
def test_noise_std_is_in_pixel_units(image_ctx):
    pixels = all_test_pixels(image_ctx)
    noisy = robustness.add_noise(image_ctx, pixels, 0.05, torch.Generator().manual_seed(0))
    rgb, noisy_rgb = pixels * 0.25 + 0.5, noisy * 0.25 + 0.5  # denormalised by hand
    inside = (rgb > 0.25) & (rgb < 0.75)  # far from 0 and 1: no clipping
    assert inside.sum() > 5_000
    assert (noisy_rgb - rgb)[inside].std().item() == pytest.approx(0.05, rel=0.05)
    assert noisy_rgb.min() >= 0 and noisy_rgb.max() <= 1 + 1e-6
    again = robustness.add_noise(image_ctx, pixels, 0.05, torch.Generator().manual_seed(0))
    other = robustness.add_noise(image_ctx, pixels, 0.05, torch.Generator().manual_seed(1))
    assert torch.equal(noisy, again) and not torch.equal(noisy, other)


@pytest.mark.parametrize("sigma", [0.7, 1.5])
def test_blur_sigma_is_in_pixels(sigma):
    impulse = torch.zeros(1, 1, 31, 31)
    impulse[..., 15, 15] = 1.0
    blurred = robustness.blur(impulse, sigma)[0, 0]
    assert blurred.sum().item() == pytest.approx(1.0, abs=1e-5)
    offsets = torch.arange(31, dtype=torch.float32) - 15
    variance_x = (blurred.sum(0) * offsets**2).sum().item()
    variance_y = (blurred.sum(1) * offsets**2).sum().item()
    # a kernel cut at 3 sigma keeps ~97% of the variance
    assert variance_x == pytest.approx(sigma**2, rel=0.05) and variance_y == pytest.approx(sigma**2, rel=0.05)
    constant = torch.full((2, 3, 16, 16), 0.3)
    assert torch.allclose(robustness.blur(constant, sigma), constant)


def test_image_section_matches_an_independent_recomputation(image_ctx, monkeypatch):
    from torchvision.transforms.functional import gaussian_blur

    ctx = image_ctx
    pixels = all_test_pixels(ctx)
    assert len(pixels) == 16  # one noise draw covers the split: the section's 32-image chunks hold it all
    report = robustness.section(ctx, {"noise_std": 0.3, "blur_sigma": 1.5, "repeats": 2})
    assert [p["name"] for p in report["perturbations"]] == ["noise", "blur"]
    noise, blurred = report["perturbations"]

    expected = []
    for r in range(2):
        draw = torch.randn(pixels.shape, generator=torch.Generator().manual_seed(ctx.seed + r))
        noisy = ((pixels * 0.25 + 0.5 + 0.3 * draw).clamp(0, 1) - 0.5) / 0.25
        expected.append(rates(image_predictions(ctx, noisy), ctx))
    assert noise["accuracy"] == pytest.approx(sum(a for a, _ in expected) / 2)
    assert noise["flip_rate"] == pytest.approx(sum(f for _, f in expected) / 2)

    kernel = 2 * math.ceil(3 * 1.5) + 1
    accuracy, flip_rate = rates(image_predictions(ctx, gaussian_blur(pixels, [kernel, kernel], [1.5, 1.5])), ctx)
    assert blurred["repeats"] == 1  # deterministic
    assert (blurred["accuracy"], blurred["flip_rate"]) == pytest.approx((accuracy, flip_rate))
    assert report["clean_accuracy"] == rates(ctx.test.preds, ctx)[0]
    assert noise["flip_rate"] > 0  # std 0.3 on a random network: not a vacuous comparison

    # smaller chunks (as a big test set is processed) give the same blur numbers
    monkeypatch.setattr(robustness, "IMAGE_CHUNK", 5)
    assert robustness.evaluate_perturbation(ctx, "blur", 1.5) == blurred
    assert robustness.evaluate_perturbation(ctx, "noise", 0.0)["flip_rate"] == 0.0


# --------------------------------------------------------------------------- representation
def two_direction_clusters(n_per_class: int = 30, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class 0 near direction e0, class 1 near e1 (cosine-separated), with small noise."""
    rng = np.random.default_rng(seed)
    base = np.zeros((2, dim))
    base[0, 0] = base[1, 1] = 1.0
    labels = np.repeat([0, 1], n_per_class)
    return base[labels] + 0.1 * rng.standard_normal((2 * n_per_class, dim)), labels


def test_separated_classes_score_higher_than_mixed_labels():
    features, labels = two_direction_clusters()
    mixed = np.tile([0, 1], len(labels) // 2)  # half of each cluster in each class
    assert representation.knn_accuracy(features, labels) == 1.0
    assert representation.knn_accuracy(features, mixed) < 0.8
    separated, shuffled = representation.silhouette(features, labels), representation.silhouette(features, mixed)
    assert separated > 0.5 and shuffled < 0.1
    assert representation.silhouette(features, np.zeros(len(labels), dtype=int)) is None  # one class: undefined


def test_knn_accuracy_equals_sklearn_leave_one_out():
    from sklearn.model_selection import LeaveOneOut, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 45)
    features = rng.standard_normal((45, 8)) + labels[:, None] * 0.4
    expected = cross_val_score(KNeighborsClassifier(n_neighbors=5, metric="cosine"), features, labels,
                               cv=LeaveOneOut()).mean()
    assert representation.knn_accuracy(features, labels) == pytest.approx(expected)


def test_projection_is_pca_by_svd():
    rng = np.random.default_rng(2)
    features = rng.standard_normal((40, 6)) * np.array([5.0, 3.0, 1.0, 0.5, 0.2, 0.1])
    labels = np.repeat([0, 1], 20)
    rep = representation.project(features, labels)
    centred = features - features.mean(0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    assert rep["explained_variance"] == pytest.approx((s[:2] ** 2 / (s**2).sum()).tolist(), rel=1e-6)
    points = np.array(rep["points"])
    assert np.allclose(np.abs(points), np.abs(u[:, :2] * s[:2]), rtol=1e-5, atol=1e-5)  # up to the axis sign


def test_text_representation_same_model_twice_gives_identical_projections(text_ctx):
    ctx = dataclasses.replace(text_ctx, pretrained=lambda: text_ctx.model)
    report = representation.section(ctx, {})
    assert report["method"] == "pca" and report["labels"] == ["neg", "pos"]
    assert report["pretrained"] == report["fine_tuned"]
    assert report["point_labels"] == ctx.test.labels.tolist() and len(report["fine_tuned"]["points"]) == len(TEST)
    assert report["fine_tuned"]["dim"] == 32 and "mean" in report["note"]
    fine = report["fine_tuned"]
    ratios = fine["explained_variance"]  # PCA's first two components: the larger first, a share of the total
    assert len(ratios) == 2 and ratios[0] >= ratios[1] > 0 and sum(ratios) <= 1 + 1e-9

    ctx = dataclasses.replace(text_ctx, pretrained=None)
    alone = representation.section(ctx, {"max_points": 10})
    assert alone["pretrained"] is None and "pretrained" in alone["note"].lower()
    indices = alone["indices"]
    assert len(indices) == 10 == len(set(indices)) and indices == sorted(indices)
    assert alone["point_labels"] == [ctx.test.labels[i].item() for i in indices]
    assert representation.section(ctx, {"max_points": 10})["indices"] == indices  # seeded
    with pytest.raises(ConfigError, match=r"report\.representation\.method"):
        representation.section(ctx, {"method": "tsne"})
    with pytest.raises(ConfigError, match=r"report\.representation\.max_points"):
        representation.section(ctx, {"max_points": 0})


def test_text_representation_of_a_fresh_model_differs(text_ctx, tiny_bert):
    ctx = dataclasses.replace(text_ctx, pretrained=lambda: TextClassifier(tiny_bert, num_labels=2))
    report = representation.section(ctx, {})
    assert report["pretrained"]["points"] != report["fine_tuned"]["points"]


def test_image_representation_uses_the_head_input(image_ctx):
    report = representation.section(image_ctx, {"max_points": 12})
    assert report["pretrained"] is None and report["fine_tuned"]["dim"] == 512  # resnet18's pooled features
    assert len(report["fine_tuned"]["points"]) == 12 and all(len(p) == 2 for p in report["fine_tuned"]["points"])
