"""Attributions and faithfulness with real captum on tiny models whose decisive input is known by construction:
a 2-layer BERT hand-set so its prediction depends only on whether the token "great" is present, and a
1x1-conv image model that reads only the redness of the top-left quadrant."""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from sft.errors import ConfigError
from sft.inference import split_outputs
from sft.report import attribution, attribution_base, attribution_image, faithfulness
from sft.report.attribution import select_examples
from sft.report.attribution_image import image_attribution_maps, image_attributions
from sft.report.attribution_text import text_attributions
from sft.report.context import ReportContext
from sft.report.faithfulness import image_faithfulness

KEY = "great"
TEST_ROWS = [("the movie was great", "present"), ("a great day", "present"), ("great food and service", "present"),
             ("it was great fun", "present"), ("truly a great film", "present"), ("we had a great time", "present"),
             ("the movie was dull", "absent"), ("a slow day", "absent")]
TRAIN_ROWS = [("great", "present"), ("bad", "absent"), ("a great show", "present"), ("a poor show", "absent")]


# ---------------------------------------------------------------------- models built in the test
def key_token_model(tiny_bert: str):
    """TextClassifier on the tiny BERT, weights set so that the [CLS] state carries "is KEY present":

    every word embeds as the same pattern (+1, -1 in dims 1, 2; small noise in dims 3..) and KEY adds 20 in
    dim 0; layer 0 attends uniformly and copies the mean into [CLS]; everything else is an identity (zero
    weights + residual + LayerNorm); the pooler is the identity + tanh and the classifier reads dim 0 only.
    """
    from transformers import AutoTokenizer

    from sft.models.classifier import TextClassifier

    model = TextClassifier(tiny_bert, num_labels=2, id2label={0: "absent", 1: "present"})
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    key = tokenizer.convert_tokens_to_ids(KEY)
    bert, width = model.model.bert, model.model.config.hidden_size
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        words = torch.zeros_like(bert.embeddings.word_embeddings.weight)
        words[:, 1], words[:, 2] = 1.0, -1.0
        words[:, 3:] = 0.1 * torch.randn(len(words), width - 3, generator=generator)
        words[key, 0] = 20.0
        bert.embeddings.word_embeddings.weight.copy_(words)
        bert.embeddings.position_embeddings.weight.zero_()
        bert.embeddings.token_type_embeddings.weight.zero_()
        for i, layer in enumerate(bert.encoder.layer):
            copy = torch.eye(width) if i == 0 else torch.zeros(width, width)
            for linear, weight in ((layer.attention.self.query, torch.zeros(width, width)),
                                   (layer.attention.self.key, torch.zeros(width, width)),
                                   (layer.attention.self.value, copy), (layer.attention.output.dense, copy)):
                linear.weight.copy_(weight)
                linear.bias.zero_()
            for linear in (layer.intermediate.dense, layer.output.dense):
                linear.weight.zero_()
                linear.bias.zero_()
        bert.pooler.dense.weight.copy_(torch.eye(width))
        bert.pooler.dense.bias.zero_()
        model.model.classifier.weight.zero_()
        model.model.classifier.bias.zero_()
        model.model.classifier.weight[1, 0] = 40.0
        model.model.classifier.bias[1] = -4.0
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def key_model(tiny_bert: str):
    return key_token_model(tiny_bert)


def write_csv(path: Path, rows: list[tuple[str, ...]], header: tuple[str, ...] = ("text", "label")) -> str:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


@pytest.fixture
def text_ctx(key_model, tiny_bert: str, tmp_path: Path) -> ReportContext:
    """A real TextDataModule (CSV files) and the key-token model, as sft.explain would build the context."""
    from sft.data.text import text_file

    model, _ = key_model
    dm = text_file(train=write_csv(tmp_path / "train.csv", TRAIN_ROWS), val=write_csv(tmp_path / "val.csv", TRAIN_ROWS),
                   test=write_csv(tmp_path / "test.csv", TEST_ROWS), tokenizer=tiny_bert, max_length=32,
                   cache_dir=str(tmp_path / "cache"))
    dm.prepare_data()
    dm.setup()
    assert dm.splits.label_names == ["absent", "present"]
    return ReportContext(model=model, datamodule=dm, label_names=dm.splits.label_names,
                         test=split_outputs(model, dm, "test"), seed=0)


class RedTopLeft(nn.Module):
    """Class 1 iff the top-left quadrant is red: a 1x1 conv measures redness (r - (g + b) / 2), only the
    quadrant's mean positive redness is read, logit_1 = 4 (mean - 1), logit_0 = 0."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, -0.5, -0.5]).view(1, 3, 1, 1))
            self.conv.bias.zero_()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        redness = self.conv(pixels).relu()
        h, w = pixels.shape[-2:]
        score = redness[:, 0, : h // 2, : w // 2].mean((1, 2))
        return torch.stack([torch.zeros_like(score), 4 * (score - 1)], -1)


def red_top_left_images(n: int, size: int = 32) -> torch.Tensor:
    """Normalised images: grey noise, a red top-left quadrant and a blue bottom-right one (a distractor)."""
    generator = torch.Generator().manual_seed(1)
    images = 0.1 * torch.randn(n, 3, size, size, generator=generator)
    half = size // 2
    images[:, :, :half, :half] += torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1)
    images[:, :, half:, half:] += torch.tensor([-1.0, -1.0, 1.0]).view(1, 3, 1, 1)
    return images


# ---------------------------------------------------------------------- example selection
def test_select_examples_by_kind_without_repeats():
    p1 = torch.tensor([0.95, 0.10, 0.55, 0.80, 0.30, 0.52])
    probs = torch.stack([1 - p1, p1], -1)
    labels = torch.tensor([1, 1, 1, 0, 0, 0])
    # top-label confidence: .95 .90 .55 .80 .70 .52; predictions 1 0 1 1 0 1 -> correct: 0, 2, 4; wrong: 1, 3, 5
    assert select_examples(probs, labels, 1) == [("confident_correct", 0), ("confident_wrong", 1),
                                                 ("least_confident", 5)]
    assert select_examples(probs, labels, 2) == [("confident_correct", 0), ("confident_correct", 4),
                                                 ("confident_wrong", 1), ("confident_wrong", 3),
                                                 ("least_confident", 5), ("least_confident", 2)]
    everything = select_examples(probs, labels, 10)
    assert sorted(i for _, i in everything) == list(range(6))  # each index once; nothing left for least_confident
    assert [k for k, _ in everything].count("least_confident") == 0
    no_wrong = select_examples(probs, probs.argmax(-1), 2)
    assert [k for k, _ in no_wrong] == ["confident_correct"] * 2 + ["least_confident"] * 2


# ---------------------------------------------------------------------- text
def test_integrated_gradients_completeness_on_a_random_bert(tiny_bert: str):
    from transformers import AutoTokenizer

    from sft.models.classifier import TextClassifier

    model = TextClassifier(tiny_bert, num_labels=3, freeze="backbone").eval()  # frozen: still attributable
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # BERT's 0.02 init is nearly constant; 0.3 makes the output depend on the words
        for p in model.parameters():
            if p.ndim == 2:
                p.copy_(0.3 * torch.randn(p.shape, generator=generator))
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    enc = tokenizer(["an utterly charming, witty little film"], return_tensors="pt")
    target = 2
    tokens, scores, delta = text_attributions(model, tokenizer, enc["input_ids"], enc["attention_mask"], target,
                                              "integrated_gradients", {"n_steps": 50, "internal_batch_size": 7})
    ids = enc["input_ids"]
    assert tokens == tokenizer.convert_ids_to_tokens(ids[0].tolist())
    assert len(scores) == ids.shape[1] and scores[0] == 0.0 and scores[-1] == 0.0  # [CLS], [SEP]
    # F by hand: the model on the input and on [CLS] [PAD]... [SEP]
    baseline = torch.full_like(ids, tokenizer.pad_token_id)
    baseline[0, 0], baseline[0, -1] = tokenizer.cls_token_id, tokenizer.sep_token_id
    with torch.no_grad():
        p_input = model(ids, enc["attention_mask"]).softmax(-1)[0, target].item()
        p_baseline = model(baseline, enc["attention_mask"]).softmax(-1)[0, target].item()
    change = p_input - p_baseline
    assert abs(change) > 0.05
    assert abs(sum(scores) - change - delta) < 1e-5  # delta is exactly the completeness gap
    assert abs(delta) < 1e-3 * abs(change) + 1e-6
    assert not model.training and all(p.grad is None for p in model.parameters())


def test_integrated_gradients_completeness_on_roberta_keeps_positions(tmp_path, minilm_path: str):
    """RoBERTa numbers positions past padding: a [PAD] baseline must not move the input's positions. IG is
    complete w.r.t. the input whose word embeddings (only) are the baseline's, computed here with a hook."""
    from transformers import AutoTokenizer, RobertaConfig, RobertaModel

    from sft.models.classifier import TextClassifier

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)  # WordPiece ids; [PAD] = 0 = RoBERTa's padding_idx
    config = RobertaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=80, pad_token_id=tokenizer.pad_token_id)
    RobertaModel(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model = TextClassifier(str(tmp_path), num_labels=2).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(15.0)  # a random init this small is nearly constant in its input
    enc = tokenizer(["an utterly charming, witty little film"], return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    target = 1
    tokens, scores, delta = text_attributions(model, tokenizer, ids, mask, target, "integrated_gradients",
                                              {"n_steps": 64, "internal_batch_size": 16})
    baseline = torch.full_like(ids, tokenizer.pad_token_id)
    baseline[0, 0], baseline[0, -1] = ids[0, 0], ids[0, -1]
    embeddings = model.model.get_input_embeddings()
    with torch.no_grad():
        p_input = model(ids, mask).softmax(-1)[0, target].item()
        handle = embeddings.register_forward_hook(lambda module, args, out: module.weight[baseline])
        try:
            p_baseline = model(ids, mask).softmax(-1)[0, target].item()
        finally:
            handle.remove()
    change = p_input - p_baseline
    assert abs(change) > 0.01
    assert abs(sum(scores) - change - delta) < 1e-5  # complete, up to the reported delta
    assert abs(delta) < 0.05 * abs(change)


@pytest.mark.parametrize("method", ["integrated_gradients", "occlusion", "lime", "kernel_shap"])
def test_the_decisive_token_ranks_first_and_deleting_it_flips(key_model, method):
    model, tokenizer = key_model
    enc = tokenizer(["a great movie we watched last night"], return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    with torch.no_grad():
        probs = model(ids, mask).softmax(-1)[0]
    assert probs.argmax() == 1
    tokens, scores, _ = text_attributions(model, tokenizer, ids, mask, 1, method, {"n_samples": 120})
    ranked = sorted(range(len(scores)), key=lambda i: -scores[i])
    assert tokens[ranked[0]] == KEY
    assert scores[ranked[0]] > 0.5 and scores[ranked[0]] > 5 * abs(scores[ranked[1]])
    keep = torch.ones(ids.shape[1], dtype=torch.bool)
    keep[ranked[0]] = False
    with torch.no_grad():
        assert model(ids[:, keep], mask[:, keep]).argmax(-1).item() == 0  # the prediction flips
    if method == "occlusion":  # score = p(x) - p(x with the token replaced by [PAD])
        occluded = ids.clone()
        occluded[0, ranked[0]] = tokenizer.pad_token_id
        with torch.no_grad():
            p_occluded = model(occluded, mask).softmax(-1)[0, 1].item()
        assert scores[ranked[0]] == pytest.approx(probs[1].item() - p_occluded, abs=1e-5)


def test_text_attribution_section(text_ctx):
    result = attribution.section(text_ctx, {"examples": 2})
    assert json.loads(json.dumps(result)) == result  # plain JSON types only
    assert result["method"] == "integrated_gradients" and result["modality"] == "text"
    assert result["seconds"] > 0
    assert any("No wrong predictions" in note for note in result["notes"])  # the key-token model is always right
    assert [e["kind"] for e in result["examples"]] == ["confident_correct"] * 2 + ["least_confident"] * 2
    assert len({e["index"] for e in result["examples"]}) == 4
    probs = text_ctx.test.probs
    for example in result["examples"]:
        text, label = TEST_ROWS[example["index"]]
        assert example["label"] == label and example["pred"] == label
        assert example["confidence"] == pytest.approx(probs[example["index"]].max().item())
        assert len(example["tokens"]) == len(example["scores"]) and abs(example["delta"]) < 1e-3
        assert example["tokens"][0] == "[CLS]" and example["tokens"][-1] == "[SEP]"
        if label == "present":
            assert example["tokens"][max(range(len(example["scores"])), key=example["scores"].__getitem__)] == KEY
    assert set(text_ctx.extras["attributions"]["scores"]) == {e["index"] for e in result["examples"]}
    lime = [attribution.section(text_ctx, {"examples": 1, "method": "lime", "n_samples": 40}) for _ in range(2)]
    assert lime[0]["examples"] == lime[1]["examples"]  # sampled with the context's seed: reproducible


def test_text_faithfulness_beats_random(text_ctx):
    attribution.section(text_ctx, {"examples": 1})  # faithfulness reuses its settings and scores
    result = faithfulness.section(text_ctx, {"examples": 8, "curve_points": 5, "random_repeats": 3})
    assert json.loads(json.dumps(result)) == result
    assert result["unit"] == "token" and result["n"] == 8 and result["method"] == "integrated_gradients"
    comp, suff = result["comprehensiveness"], result["sufficiency"]
    assert result["beats_random"] and comp["attribution"] > comp["random"] + 0.2
    assert suff["attribution"] < suff["random"]
    assert "beat a random ranking" in result["verdict"] and "do not" not in result["verdict"]
    deletion, insertion = result["deletion"], result["insertion"]
    assert deletion["fractions"] == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    # The endpoints by hand: every text whole, and every text reduced to [CLS] [SEP].
    model, tokenizer = text_ctx.model, text_ctx.tokenizer
    with torch.no_grad():
        whole = [model(**{k: v for k, v in tokenizer([t], return_tensors="pt").items() if k != "token_type_ids"})
                 .softmax(-1)[0] for t, _ in TEST_ROWS]
        empty = model(torch.tensor([[tokenizer.cls_token_id, tokenizer.sep_token_id]])).softmax(-1)[0]
    p_whole = sum(p.max().item() for p in whole) / len(whole)
    p_empty = sum(empty[p.argmax()].item() for p in whole) / len(whole)
    for curve in (deletion["attribution"], deletion["random"]):
        assert curve[0] == pytest.approx(p_whole, abs=1e-5) and curve[-1] == pytest.approx(p_empty, abs=1e-5)
    assert insertion["attribution"][0] == pytest.approx(p_empty, abs=1e-5)
    assert insertion["random"][-1] == pytest.approx(p_whole, abs=1e-5)
    # Texts have 3-5 content tokens, so 0.2 of them is one token: "great" goes first and 6 of 8 predictions
    # flip (the mean drops below 0.5); a random token is seldom "great".
    assert deletion["attribution"][1] < 0.5 < deletion["random"][1]
    assert deletion["auc_attribution"] < deletion["auc_random"]
    assert insertion["auc_attribution"] > insertion["auc_random"]


def test_a_model_that_ignores_its_input_does_not_beat_random(text_ctx):
    """Constant predictions: every ranking scores the same, up to float noise, so no verdict of 'better'."""
    model = text_ctx.model
    saved = {k: v.clone() for k, v in model.model.classifier.state_dict().items()}
    try:
        with torch.no_grad():
            model.model.classifier.weight.zero_()  # the logits are the bias alone, whatever the text
        result = faithfulness.section(text_ctx, {"examples": 8, "curve_points": 5, "random_repeats": 2})
    finally:
        model.model.classifier.load_state_dict(saved)
    assert abs(result["comprehensiveness"]["attribution"] - result["comprehensiveness"]["random"]) < 1e-5
    assert result["beats_random"] is False and "do not clearly beat" in result["verdict"]
    margins = result["margins"]
    assert set(margins) == {"comprehensiveness", "sufficiency"} and abs(margins["comprehensiveness"]["mean"]) < 1e-5


def test_eraser_scores_and_curves_by_hand():
    weights = torch.tensor([0.4, 0.2, 0.1, 0.0])  # p = 0.1 + the weights of the units present (whole: 0.8)
    calls = []

    def probability_of(requests):
        calls.append(len(requests))
        return torch.stack([0.1 + (weights * present.float()).sum() for _, present in requests])

    rankings = [[torch.tensor([0, 1, 2, 3]), torch.tensor([3, 2, 1, 0])]]  # attribution, one "random" order
    result = faithfulness.score_rankings([4], rankings, [0.25, 0.5], [0.0, 0.5, 1.0], probability_of)
    # top 1 / top 2 removed: attribution 0.4 / 0.6 lost, the other order 0.0 / 0.1
    assert result["comprehensiveness"]["attribution"] == pytest.approx((0.4 + 0.6) / 2)
    assert result["comprehensiveness"]["random"] == pytest.approx((0.0 + 0.1) / 2)
    # only top 1 / top 2 kept: 0.5 / 0.7 against 0.8; the other order keeps 0.1 / 0.2
    assert result["sufficiency"]["attribution"] == pytest.approx((0.3 + 0.1) / 2)
    assert result["sufficiency"]["random"] == pytest.approx((0.7 + 0.6) / 2)
    assert result["deletion"]["attribution"] == pytest.approx([0.8, 0.2, 0.1])
    assert result["deletion"]["random"] == pytest.approx([0.8, 0.7, 0.1])
    assert result["insertion"]["attribution"] == pytest.approx([0.1, 0.7, 0.8])
    assert result["deletion"]["auc_attribution"] == pytest.approx(0.5 * (0.8 + 0.2) / 2 + 0.5 * (0.2 + 0.1) / 2)
    # one batch of the 8 distinct inputs: all, none, {1,2,3}, {2,3}, {0}, {0,1}, {0,1,2}, {3}
    assert calls == [8] and result["perturbed_inputs"] == 8
    assert [faithfulness.units_removed(f, n) for f, n in ((0.1, 5), (0.1, 4), (1.0, 7), (0.5, 3))] == [1, 0, 7, 2]


# ---------------------------------------------------------------------- images
@pytest.mark.parametrize("method", ["grad_cam", "integrated_gradients", "occlusion"])
def test_image_heatmap_peaks_in_the_decisive_quadrant(method):
    model = RedTopLeft().eval()
    pixels = red_top_left_images(1)
    assert model(pixels).argmax(-1).item() == 1
    heatmap, delta = image_attributions(model, pixels, 1, method, {"n_steps": 32}, layer=model.conv)
    assert heatmap.shape == (32, 32) and heatmap.min() >= 0 and heatmap.max() == pytest.approx(1.0)
    row, col = divmod(int(heatmap.argmax()), 32)
    assert row < 16 and col < 16
    assert heatmap[:16, :16].sum() > 0.9 * heatmap.sum()  # the blue distractor quadrant gets nothing
    assert (delta is None) == (method != "integrated_gradients")


def test_image_faithfulness_deleting_the_quadrant_flips():
    model = RedTopLeft().eval()
    settings = faithfulness.faithfulness_settings({})
    result = image_faithfulness(model, red_top_left_images(3), "grad_cam", attribution_base.attribution_settings({}),
                                settings, seed=0, layer=model.conv)
    assert result["unit"] == "patch" and result["n"] == 3 and result["patch_size"] == 2  # 16 x 16 grid
    assert result["beats_random"]
    deletion = result["deletion"]
    assert deletion["fractions"][3] == pytest.approx(0.3)
    # 30% of 256 patches covers the 64 red ones when ranked first: class 1 is gone; at random it survives.
    assert deletion["attribution"][3] < 0.1 and deletion["random"][3] > 0.6


def test_grad_cam_layer_from_the_block_map_and_vit_fallback():
    import torchvision

    from sft.models.vision import ImageClassifier

    torch.manual_seed(0)
    resnet = ImageClassifier("resnet18", weights=None, num_labels=2).eval()
    assert attribution_image.grad_cam_layer(resnet) is resnet.model.layer4
    heatmap, delta = image_attributions(resnet, torch.randn(1, 3, 64, 64), 0, "grad_cam", {})
    assert heatmap.shape == (64, 64) and 0 <= heatmap.min() and heatmap.max() <= 1 and delta is None
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=16, num_layers=1, num_heads=1, hidden_dim=8,
                                               mlp_dim=8, num_classes=2).eval()
    maps, deltas, used = image_attribution_maps(vit, torch.randn(2, 3, 32, 32), torch.tensor([0, 1]), "grad_cam", {})
    assert used == "integrated_gradients" and maps.shape == (2, 32, 32) and deltas is not None
    red = RedTopLeft()  # no block map: the last Conv2d
    assert attribution_image.grad_cam_layer(red) is red.conv
    linear = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2)).eval()  # no conv at all: integrated gradients
    assert attribution_image.grad_cam_layer(linear) is None
    assert image_attribution_maps(linear, torch.randn(1, 3, 8, 8), torch.tensor([1]), "grad_cam", {})[2] == \
        "integrated_gradients"


def test_image_sections_on_an_image_folder(image_root):
    from PIL import Image

    from sft.data.image import ImageDataModule
    from sft.data.image_sources import ImageFolderSource
    from sft.models.vision import ImageClassifier

    torch.manual_seed(0)
    preprocess = {"resize": 40, "crop": 32, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bilinear"}
    dm = ImageDataModule(ImageFolderSource(str(image_root)), preprocess, batch_size=8)
    dm.prepare_data()
    dm.setup()
    model = ImageClassifier("resnet18", weights=None, num_labels=2).eval()
    ctx = ReportContext(model=model, datamodule=dm, label_names=dm.splits.label_names,
                        test=split_outputs(model, dm, "test"), seed=0)
    result = attribution.section(ctx, {"examples": 1})
    assert result["modality"] == "image" and result["method"] == "grad_cam" and 1 <= len(result["examples"]) <= 3
    for example in result["examples"]:
        assert len(example["heatmap"]) == 32 and all(0 <= v <= 1 for row in example["heatmap"] for v in row)
        image = Image.open(io.BytesIO(base64.b64decode(example["_image_png"])))
        assert image.size == (32, 32) and image.mode == "RGB"
    faith = faithfulness.section(ctx, {"examples": 2, "curve_points": 4, "random_repeats": 1})
    assert json.loads(json.dumps([result, faith])) == [result, faith]
    assert faith["unit"] == "patch" and faith["n"] == 2 and len(faith["deletion"]["attribution"]) == 5
    assert isinstance(faith["beats_random"], bool) and faith["verdict"].startswith("The grad_cam attributions")


# ---------------------------------------------------------------------- sentence pairs
PAIR_TEST = [("the movie", "was great", "present"), ("a great day", "for us", "present"),
             ("we had", "a great time", "present"), ("great food", "and service", "present"),
             ("the movie", "was dull", "absent"), ("a slow", "day", "absent")]


@pytest.fixture
def pair_model(key_model):
    """The key-token model as a sentence-pair model whose second segment lowers the feature it reads: its
    predictions depend on the segment ids, as a pair model trained with them does (still "present" with the key
    word in either segment)."""
    import copy

    from sft.tasks import make_task

    model = copy.deepcopy(key_model[0])
    model.task = make_task("single_label", ["absent", "present"], pair=True)
    with torch.no_grad():
        model.model.bert.embeddings.token_type_embeddings.weight[1, 0] = -0.3
    return model


def test_pair_segment_ids_are_the_tokenizers_and_reach_the_model(pair_model, key_model):
    from sft.report.attribution_text import segment_ids, segment_separator, text_probability_forward

    tokenizer = key_model[1]
    enc = tokenizer([a for a, _, _ in PAIR_TEST], [b for _, b, _ in PAIR_TEST], padding=True, return_tensors="pt")
    separator = segment_separator(pair_model, tokenizer)
    assert separator == tokenizer.sep_token_id
    assert torch.equal(segment_ids(enc["input_ids"], enc["attention_mask"], separator), enc["token_type_ids"])
    with torch.no_grad():
        truth = pair_model(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]).softmax(-1)
        explained = text_probability_forward(pair_model, separator)(enc["input_ids"], enc["attention_mask"])
        without_segments = text_probability_forward(pair_model)(enc["input_ids"], enc["attention_mask"])
    assert torch.allclose(explained, truth, atol=1e-6)  # what the attributions explain is the model's prediction
    assert (without_segments - truth).abs().max() > 0.02  # (all-zero segment ids would be another model)
    assert segment_separator(key_model[0], tokenizer) is None  # one text: no segments


def test_pair_attributions_faithfulness_and_robustness_cover_both_segments(pair_model, tiny_bert, tmp_path):
    from sft.data.text import text_file
    from sft.report import robustness

    files = {split: write_csv(tmp_path / f"{split}.csv", PAIR_TEST, ("text", "text_pair", "label"))
             for split in ("train", "val", "test")}
    dm = text_file(**files, text_pair_column="text_pair",
                   tokenizer=tiny_bert, max_length=32, cache_dir=str(tmp_path / "cache"))
    dm.prepare_data()
    dm.setup()
    assert dm.task.pair
    ctx = ReportContext(model=pair_model, datamodule=dm, label_names=dm.splits.label_names,
                        test=split_outputs(pair_model, dm, "test"), seed=0)
    assert ctx.task.not_applicable("attributions") is None
    result = attribution.section(ctx, {"examples": 3})
    assert len(result["examples"]) == len(PAIR_TEST)
    key_first = set()
    for example in result["examples"]:
        first, second, label = PAIR_TEST[example["index"]]
        tokens, scores = example["tokens"], example["scores"]
        sep = [i for i, t in enumerate(tokens) if t == "[SEP]"]
        assert len(sep) == 2 and tokens[1:sep[0]] == tokenizer_words(first) and tokens[sep[0] + 1:sep[1]] == \
            tokenizer_words(second)  # both segments, each in its place
        assert abs(example["delta"]) < 0.01  # the scores add up to p(x) - p(baseline) (~1 or ~0 here)
        if example["pred"] == label == "present":  # the key word ranks first, in whichever segment it is
            assert tokens[max(range(len(scores)), key=scores.__getitem__)] == KEY
            key_first.add(KEY in second.split())
    assert key_first == {False, True}  # explained in the first segment and in the second
    faith = faithfulness.section(ctx, {"examples": 6, "curve_points": 4, "random_repeats": 2})
    assert faith["n"] == 6 and faith["unit"] == "token" and faith["comprehensiveness"]["attribution"] > \
        faith["comprehensiveness"]["random"]
    robust = robustness.section(ctx, {"token_dropout": 0.5, "typo_rate": None})
    assert robust["n"] == len(PAIR_TEST) and [p["name"] for p in robust["perturbations"]] == ["token_dropout"]


def tokenizer_words(text: str) -> list[str]:
    return text.split()  # every word of PAIR_TEST is one WordPiece token


def test_robustness_perturbs_both_texts_of_a_pair():
    import random

    from sft.report.robustness import perturb_input, token_dropout

    pair = ("one two three four five six", "alpha beta gamma delta epsilon zeta")
    perturbed = perturb_input(token_dropout, pair, 0.5, random.Random(3))
    assert isinstance(perturbed, tuple) and len(perturbed) == 2
    assert all(p != original for p, original in zip(perturbed, pair, strict=True))  # each text lost words
    assert all(set(p.split()) < set(original.split()) for p, original in zip(perturbed, pair, strict=True))
    assert perturb_input(token_dropout, pair[0], 0.5, random.Random(3)) == token_dropout(pair[0], 0.5, random.Random(3))


# ---------------------------------------------------------------------- settings
def test_bad_settings_name_the_setting(key_model, text_ctx):
    model, tokenizer = key_model
    enc = tokenizer(["great"], return_tensors="pt")
    with pytest.raises(ConfigError, match=r"report\.attributions\.method='saliency'.*integrated_gradients, occlusion"):
        text_attributions(model, tokenizer, enc["input_ids"], enc["attention_mask"], 1, "saliency", {})
    with pytest.raises(ConfigError, match=r"report\.attributions\.method='grad_cam'"):
        attribution.section(text_ctx, {"method": "grad_cam"})  # an image method on a text model
    with pytest.raises(ConfigError, match=r"report\.attributions\.image_method='lime'.*grad_cam"):
        image_attributions(RedTopLeft(), red_top_left_images(1), 1, "lime", {})
    with pytest.raises(ConfigError, match=r"report\.attributions\.n_steps=0"):
        attribution.section(text_ctx, {"n_steps": 0})
    with pytest.raises(ConfigError, match=r"report\.faithfulness\.fractions"):
        faithfulness.section(text_ctx, {"fractions": [0.1, 1.5]})
    with pytest.raises(ConfigError, match=r"report\.faithfulness\.random_repeats"):
        faithfulness.section(text_ctx, {"random_repeats": 0})
