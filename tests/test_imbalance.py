"""Imbalanced data (issue #16): weighted and focal training losses (``loss.*``) and the balanced sampler
(``data.sampler=balanced``).

The losses are checked against independent references (torch's weighted cross-entropy and BCE, scikit-learn's
``compute_class_weight``, torchvision's ``sigmoid_focal_loss``, focal loss written out by hand); the sampler
statistically (draws per class), under resume (the same remaining batches) and DDP (disjoint slices of the same
draw); end to end through the real pipeline (Hydra compose, Lightning, tokenizers, checkpoints) on small
imbalanced files: weights from the training split only, saved in the checkpoint and reloaded, val / test losses
unweighted, and bad settings stopped before the model loads, naming the setting.
"""

from __future__ import annotations

import json
import logging
import signal
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sft.data.batching import TrainBatchSampler
from sft.errors import ConfigError
from sft.pipeline.train import train
from sft.tasks import make_task
from sft.tasks.imbalance import Criterion, class_draw_weights, rarest_label_draw_weights
from tests.conftest import FAST, write_lines
from tests.helpers import common, kill_at, run_cli
from tests.taskdata import write_goemotions

SINGLE = make_task("single_label", ["cat", "dog", "eel"])
MULTI = make_task("multi_label", ["joy", "anger", "neutral"])
TOKEN = make_task("token", ["O", "B-PER", "I-PER"])


def fitted(task, spec, targets) -> Criterion:
    criterion = Criterion(task, spec)
    criterion.fit(targets)
    return criterion


# ====================================================================== 1. the weights and the losses
def test_balanced_class_weights_are_sklearns_and_the_loss_is_torchs_weighted_cross_entropy():
    from sklearn.utils.class_weight import compute_class_weight

    targets = torch.tensor([0] * 6 + [1] * 3 + [2])
    criterion = fitted(SINGLE, {"class_weights": "balanced"}, targets)
    expected = compute_class_weight("balanced", classes=np.arange(3), y=targets.numpy())
    assert criterion.class_weight.tolist() == pytest.approx(expected.tolist())  # 10 / (3 * [6, 3, 1])
    logits = torch.randn(10, 3, generator=torch.Generator().manual_seed(0))
    weighted = F.cross_entropy(logits, targets, weight=torch.tensor(expected, dtype=torch.float32))
    assert criterion(logits, targets) == pytest.approx(float(weighted), rel=1e-6)
    assert abs(float(weighted) - float(F.cross_entropy(logits, targets))) > 1e-3  # the weights matter here
    assert SINGLE.loss(logits, targets) == pytest.approx(float(F.cross_entropy(logits, targets)))  # plain untouched


def test_token_weights_count_labelled_words_only_and_the_loss_ignores_minus_100():
    labels = torch.tensor([[-100, 0, 0, 1, 2, -100], [-100, 0, 1, -100, -100, -100]])  # O x3, B-PER x2, I-PER x1
    criterion = fitted(TOKEN, {"class_weights": "balanced"}, labels.reshape(-1))
    assert criterion.class_weight.tolist() == pytest.approx([6 / (3 * 3), 6 / (3 * 2), 6 / (3 * 1)])
    logits = torch.randn(2, 6, 3, generator=torch.Generator().manual_seed(1))
    reference = F.cross_entropy(logits.reshape(-1, 3), labels.reshape(-1), weight=criterion.class_weight,
                                ignore_index=-100)
    assert criterion(logits, labels) == pytest.approx(float(reference), rel=1e-6)


def test_multi_label_balanced_is_each_labels_negatives_over_positives_as_bce_pos_weight():
    targets = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 1], [1, 0, 0.0]])  # joy 3, anger 1, neutral 1 of 4
    for spec in ({"pos_weight": "balanced"}, {"class_weights": "balanced"}):  # the same, for multi-label
        criterion = fitted(MULTI, spec, targets)
        assert criterion.spec.pos_weight == "balanced" and criterion.spec.class_weights is None
        assert criterion.pos_weight.tolist() == pytest.approx([1 / 3, 3.0, 3.0])
    logits = torch.randn(4, 3, generator=torch.Generator().manual_seed(2))
    reference = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=torch.tensor([1 / 3, 3.0, 3.0]))
    assert criterion(logits, targets) == pytest.approx(float(reference), rel=1e-6)
    per_label = Criterion(MULTI, {"class_weights": [1, 2, 0.5]})  # a list: each label's weight (BCE's weight)
    reference = F.binary_cross_entropy_with_logits(logits, targets, weight=torch.tensor([1, 2, 0.5]))
    assert per_label(logits, targets) == pytest.approx(float(reference), rel=1e-6)


def test_focal_loss_against_its_definition_and_torchvision():
    from torchvision.ops import sigmoid_focal_loss

    gen = torch.Generator().manual_seed(3)
    logits, targets = torch.randn(32, 3, generator=gen) * 3, torch.randint(0, 3, (32,), generator=gen)
    alpha = torch.tensor([0.2, 1.0, 3.0])
    zero = Criterion(SINGLE, {"class_weights": alpha.tolist(), "focal_gamma": 0})
    assert zero(logits, targets) == pytest.approx(float(F.cross_entropy(logits, targets, weight=alpha)), rel=1e-6)
    p = logits.softmax(-1)[torch.arange(32), targets]
    by_hand = (alpha[targets] * (1 - p) ** 2 * -p.log()).sum() / alpha[targets].sum()
    focal = Criterion(SINGLE, {"class_weights": alpha.tolist(), "focal_gamma": 2})
    assert focal(logits, targets) == pytest.approx(float(by_hand), rel=1e-5)
    assert float(focal(logits, targets)) < float(zero(logits, targets))  # confident examples count less

    multi_logits, multi_targets = torch.randn(16, 3, generator=gen) * 3, torch.randint(0, 2, (16, 3), generator=gen)
    reference = sigmoid_focal_loss(multi_logits, multi_targets.float(), alpha=-1, gamma=2, reduction="mean")
    assert Criterion(MULTI, {"focal_gamma": 2})(multi_logits, multi_targets) == pytest.approx(float(reference), rel=1e-5)
    pos_weight = torch.tensor([2.0, 0.5, 1.0])  # positives' terms times pos_weight, as BCE's
    q = multi_logits.sigmoid()
    t = multi_targets.float()
    by_hand = -(pos_weight * t * (1 - q) ** 2 * q.log() + (1 - t) * q**2 * (1 - q).log()).mean()
    criterion = Criterion(MULTI, {"pos_weight": pos_weight.tolist(), "focal_gamma": 2})
    assert criterion(multi_logits, multi_targets) == pytest.approx(float(by_hand), rel=1e-5)


def test_the_head_prior_moves_to_the_optimum_of_the_weighted_loss():
    """A constant prediction at log(count) + prior_shift has zero gradient under the weighted loss: the head starts
    at the weighted objective's base rates, as it does at the plain one's (model.head_bias=prior)."""
    targets = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    criterion = fitted(SINGLE, {"class_weights": "balanced"}, targets)
    bias = (torch.bincount(targets).float().log() + criterion.prior_shift()).requires_grad_()
    criterion(bias.expand(len(targets), 3), targets).backward()
    assert bias.grad.abs().max() < 1e-6
    assert bias.softmax(-1).tolist() == pytest.approx([1 / 3] * 3)  # balanced weights: every class equally likely

    rows = torch.tensor([[1, 0, 0]] * 6 + [[0, 1, 0]] * 3 + [[0, 0, 1]])
    criterion = fitted(MULTI, {"pos_weight": "balanced"}, rows)
    positives = rows.sum(0).double()
    logit = (torch.logit(positives / len(rows)) + criterion.prior_shift()).float().requires_grad_()
    criterion(logit.expand(len(rows), 3), rows).backward()
    assert logit.grad.abs().max() < 1e-6 and logit.detach().abs().max() < 1e-5  # balanced positives: p = 0.5


BAD = [
    ("single_label", {"class_weights": [1, 2]}, r"loss\.class_weights has 2 weight\(s\) but the task has 3 classes: "
                                                r"cat, dog, eel"),
    ("single_label", {"class_weights": "inverse"}, r"loss\.class_weights='inverse': use balanced"),
    ("single_label", {"class_weights": [1, -1, 2]}, r"loss\.class_weights=.*>= 0"),
    ("single_label", {"pos_weight": "balanced"}, r"loss\.pos_weight=.*multi-label.*single_label: use "
                                                 r"loss\.class_weights"),
    ("single_label", {"focal_gamma": -1}, r"loss\.focal_gamma=-1 must be a number >= 0"),
    ("single_label", {"focal": 2}, r"loss\.focal is not a loss setting"),
    ("multi_label", {"class_weights": "balanced", "pos_weight": [1, 1, 1]}, r"set one of the two"),
    ("multi_label", {"pos_weight": [1, 1]}, r"loss\.pos_weight has 2 weight\(s\) but the task has 3 labels: joy, "
                                            r"anger, neutral"),
    ("regression", {"class_weights": "balanced"}, r"loss\.class_weights='balanced': class weights do not apply "
                                                  r"to regression"),
    ("regression", {"focal_gamma": 2}, r"loss\.focal_gamma=2: focal loss .* does not apply to regression"),
]


@pytest.mark.parametrize(("kind", "spec", "message"), BAD, ids=[f"{k}-{'-'.join(s)}" for k, s, _ in BAD])
def test_bad_loss_settings_name_the_setting(kind, spec, message):
    task = {"single_label": SINGLE, "multi_label": MULTI}.get(kind) or make_task(kind, ["score"])
    with pytest.raises(ConfigError, match=message):
        Criterion(task, spec)


# ====================================================================== 2. the balanced sampler
def test_balanced_sampler_draws_every_class_equally_often_with_replacement():
    labels = torch.tensor([0] * 900 + [1] * 90 + [2] * 10)
    lengths = [(i * 7) % 31 + 2 for i in range(len(labels))]
    sampler = TrainBatchSampler(lengths, batch_size=32, seed=5, weights=class_draw_weights(labels, 3).tolist())
    draws = Counter()
    for epoch in range(20):
        batches = sampler.batches(epoch)
        drawn = [i for batch in batches for i in batch]
        assert len(drawn) == len(labels) and len(batches) == len(sampler)  # an epoch is the dataset's size
        draws.update(int(labels[i]) for i in drawn)
    total = sum(draws.values())
    for c in range(3):  # 20,000 draws: each class's share within 2 points of 1/3 (its sd is ~0.33 point)
        assert draws[c] / total == pytest.approx(1 / 3, abs=0.02), draws
    rare = Counter(i for batch in sampler.batches(0) for i in batch if labels[i] == 2)
    assert max(rare.values()) > 1  # with replacement: the 10 rare examples repeat within an epoch

    plain = TrainBatchSampler(lengths, batch_size=32, seed=5, group_by_length=False,
                              weights=class_draw_weights(labels, 3).tolist())
    grouped = sampler.batches(3)  # length grouping regroups the same balanced draw: same multiset of indices
    assert sorted(i for b in grouped for i in b) == sorted(i for b in plain.batches(3) for i in b)
    padding = lambda batches: sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)  # noqa: E731
    assert padding(grouped) < padding(plain.batches(3)) / 3


def test_balanced_sampler_resumes_mid_epoch_and_gives_ranks_disjoint_slices_of_the_same_draw():
    labels = torch.tensor([0] * 40 + [1] * 8)
    weights = class_draw_weights(labels, 2).tolist()
    lengths = [i % 9 + 1 for i in range(48)]

    def make(**kwargs):
        return TrainBatchSampler(lengths, batch_size=8, seed=11, weights=weights, **kwargs)

    whole = make()
    whole.set_epoch(2)
    epoch = list(whole)
    assert epoch == make().batches(2) and epoch != make().batches(3)  # a function of (seed, epoch)
    resumed = make()
    resumed.resume_at(2, 4)
    resumed.set_epoch(2)
    assert list(resumed) == epoch[4:]  # a run resumed after 4 batches draws exactly the remaining ones
    ranks = [make(rank=r, world_size=2) for r in range(2)]
    for r in ranks:
        r.set_epoch(2)
    parts = [list(r) for r in ranks]
    for batch, a, b in zip(epoch, *parts, strict=True):
        assert sorted(a + b) == sorted(batch)  # every position of the global draw on exactly one rank
        positions = {0: a, 1: b}
        assert all(batch[rank::2] == positions[rank] for rank in (0, 1))


def test_label_sets_are_drawn_by_their_rarest_label():
    presence = torch.tensor([[1, 0, 0], [1, 0, 0], [1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 0, 1]])
    weights = rarest_label_draw_weights(presence)
    # joy in 4 rows, anger in 1, neutral in 1; the row without labels is a group of its own (1 row)
    assert weights.tolist() == pytest.approx([1 / 4, 1 / 4, 1 / 4, 1.0, 1.0, 1.0])
    single = torch.tensor([0, 0, 1, 2, 2, 2])
    assert rarest_label_draw_weights(F.one_hot(single, 3)).tolist() == pytest.approx(
        class_draw_weights(single, 3).tolist())


# ====================================================================== 3. through the real pipeline
def write_imbalanced(folder: Path, scale: int = 1) -> Path:
    """A 3-class CSV task, learnable from the words: train 24 / 6 / 2 rows (times ``scale``; imbalanced), val and
    test balanced: weights computed from all rows would differ from the training split's."""
    folder.mkdir(parents=True, exist_ok=True)
    words = {"cat": "meow purr", "dog": "woof bark", "eel": "slippery water"}

    def rows(counts: dict[str, int]) -> list[str]:
        return ["text,label"] + [f"{words[c]} number {i},{c}" for c, n in counts.items() for i in range(n)]

    write_lines(folder / "train.csv", rows({"cat": 24 * scale, "dog": 6 * scale, "eel": 2 * scale}))
    write_lines(folder / "val.csv", rows({"cat": 4, "dog": 4, "eel": 4}))
    write_lines(folder / "test.csv", rows({"cat": 4, "dog": 4, "eel": 4}))  # even: DDP ranks get equal halves
    return folder


def text_file_cfg(compose_cfg, tiny_bert, folder: Path, out: Path, *overrides: str):
    return compose_cfg(f"model.name_or_path={tiny_bert}", f"output_dir={out}", *FAST, "optimizer.lr=1e-3",
                       "trainer.precision=32-true", "data=text_file", f"data.train={folder / 'train.csv'}",
                       f"data.val={folder / 'val.csv'}", f"data.test={folder / 'test.csv'}", "data.batch_size=8",
                       *overrides)


def test_balanced_weights_come_from_the_training_split_and_travel_with_the_checkpoint(compose_cfg, tiny_bert,
                                                                                        tmp_path, caplog):
    from sft.eval import evaluate
    from sft.models.classifier import TextClassifier

    data = write_imbalanced(tmp_path / "data")
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="sft"):
        metrics = train(text_file_cfg(compose_cfg, tiny_bert, data, out, "loss.class_weights=balanced",
                                      "data.sampler=balanced"))
    expected = [32 / (3 * 24), 32 / (3 * 6), 32 / (3 * 2)]  # training rows only (val / test are balanced)
    table = next(r.getMessage() for r in caplog.records if "Training loss with loss.class_weights=balanced" in
                 r.getMessage())
    assert [line.split()[:2] for line in table.splitlines()[2:]] == [["cat", "24"], ["dog", "6"], ["eel", "2"]]
    assert "corrects the imbalance twice" in caplog.text  # the sampler and the weights together: said once

    (best,) = (out / "checkpoints").glob("best-*.ckpt")
    checkpoint = torch.load(best, map_location="cpu", weights_only=True)
    assert checkpoint["hyper_parameters"]["loss"] == {"class_weights": "balanced"}
    assert checkpoint["state_dict"]["criterion.class_weight"].tolist() == pytest.approx(expected)
    reloaded = TextClassifier.from_checkpoint(str(best))  # eval / predict rebuild the model from the checkpoint
    assert reloaded.criterion.class_weight.tolist() == pytest.approx(expected)

    # val / test losses are the plain loss: sft.eval (the export carries no loss settings) reproduces them.
    evaluated = evaluate(out / "export", "test")
    assert evaluated["test/loss"] == pytest.approx(metrics["test/loss"], abs=1e-5)
    assert evaluated["test/acc"] == pytest.approx(metrics["test/acc"], abs=1e-6)


def test_multi_label_pos_weight_and_focal_through_the_pipeline(compose_cfg, tiny_bert, tmp_path):
    from sft.inference import load_model

    data = write_goemotions(tmp_path / "data")
    out = tmp_path / "run"
    train(compose_cfg(f"model.name_or_path={tiny_bert}", f"output_dir={out}", *FAST, "data=goemotions",
                      f"data.path={data}", "data.val_size=0.25", "loss.pos_weight=balanced", "loss.focal_gamma=2",
                      "data.sampler=balanced", "export=false"))
    (best,) = (out / "checkpoints").glob("best-*.ckpt")
    checkpoint = torch.load(best, map_location="cpu", weights_only=True)
    assert checkpoint["hyper_parameters"]["loss"] == {"pos_weight": "balanced", "focal_gamma": 2.0}
    # From the 45 training rows the data module kept after carving val (not from the whole file).
    model, _ = load_model(best)
    from sft.pipeline import build

    cfg = compose_cfg(f"model.name_or_path={tiny_bert}", "data=goemotions", f"data.path={data}", "data.val_size=0.25")
    dm = build.build_datamodule(cfg.data, **build.data_inputs(cfg.model), seed=cfg.seed)
    dm.prepare_data()
    dm.setup("fit")
    targets = dm.train_targets()
    assert len(targets) == 45
    positives = targets.sum(0)
    assert model.criterion.pos_weight.tolist() == pytest.approx(((len(targets) - positives) / positives).tolist())


def test_tagger_sentences_are_drawn_by_their_rarest_tag(tiny_bert, tmp_path):
    from sft.data.text import conll2003

    sentences = [["John NNP I-NP I-PER", "runs VBZ I-VP O"]] * 3 + [["it PRP I-NP O", "rains VBZ I-VP O"]] * 9
    folder = tmp_path / "conll"
    folder.mkdir()
    for name, rows in (("eng.train", sentences), ("eng.testa", sentences[:2])):
        write_lines(folder / name, ["-DOCSTART- -X- -X- O", ""] + [line for s in rows for line in [*s, ""]])
    dm = conll2003(path=str(folder), val="eng.testa", tokenizer=tiny_bert, sampler="balanced",
                   cache_dir=tmp_path / "cache")
    dm.prepare_data()
    dm.setup("fit")
    presence = dm.train_example_targets()
    names = dm.task.label_names
    assert presence[:, names.index("B-PER")].tolist() == [1.0] * 3 + [0.0] * 9  # per sentence, not per word
    weights = dm.sample_weights()
    assert weights == pytest.approx([1 / 3] * 3 + [1 / 12] * 9)  # B-PER's 3 sentences vs O's 12
    sampler = dm.train_dataloader().batch_sampler
    assert sampler.cum_weights[-1] == pytest.approx(1 + 9 / 12)


CONFIG_ERRORS = [
    (["data=glue", "data.task=stsb", "loss.class_weights=balanced"], r"class weights do not apply to regression"),
    (["data=glue", "data.task=stsb", "data.sampler=balanced"], r"data\.sampler=balanced .* regression"),
    (["data.sampler=stratified"], r"data\.sampler='stratified': use random or balanced"),
    (["loss.class_weights=[1,2,3]"], r"loss\.class_weights has 3 weight\(s\) but the task has 2 classes: negative, "
                                     r"positive"),
    (["probe=sklearn", "loss.class_weights=balanced"], r"loss\.class_weights: probe=sklearn .*"
                                                       r"probe\.estimator\.class_weight=balanced"),
]


@pytest.mark.parametrize(("overrides", "message"), CONFIG_ERRORS, ids=[" ".join(o) for o, _ in CONFIG_ERRORS])
def test_bad_settings_stop_before_training_naming_the_setting(compose_cfg, tiny_bert, tmp_path, overrides, message):
    from tests.taskdata import write_stsb

    stsb = write_stsb(tmp_path / "stsb")
    extra = [f"data.path={stsb}"] if "data.task=stsb" in overrides else []
    cfg = compose_cfg(f"model.name_or_path={tiny_bert}", f"output_dir={tmp_path / 'run'}", *FAST, *overrides, *extra)
    with pytest.raises(ConfigError, match=message):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


# ====================================================================== 4. the report states the training distribution
def test_report_shows_the_training_class_distribution_beside_recall():
    from sft.report import performance as perf
    from sft.report import task_performance

    train_labels = torch.tensor([0] * 8 + [1] * 2)
    data = perf.performance(torch.tensor([0, 1, 1, 0]), torch.tensor([0, 1, 0, 0]), ["neg", "pos"], train_labels)
    assert data["train_distribution"] == [{"label": "neg", "count": 8, "share": 0.8},
                                          {"label": "pos", "count": 2, "share": 0.2}]
    html = perf.render({**data, "training": {"loss": "loss.class_weights=balanced", "sampler": "balanced"}})
    assert "train share" in html and "80.0%" in html and "20.0%" in html
    assert "Trained with loss.class_weights=balanced; data.sampler=balanced" in html
    assert "Trained with" not in perf.render({**data, "training": {"loss": "", "sampler": "random"}})

    tags = torch.tensor([-100, 0, 0, 0, 1, 2, -100, 0])  # per word; -100 (sub-tokens, specials) not counted
    rows = task_performance.train_distribution(TOKEN, tags)
    assert [(r["label"], r["count"]) for r in rows] == [("O", 4), ("B-PER", 1), ("I-PER", 1)]
    assert rows[0]["share"] == pytest.approx(4 / 6)
    multi = task_performance.train_distribution(MULTI, torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 1], [1, 0, 0.0]]))
    assert [(r["count"], r["share"]) for r in multi] == [(3, 0.75), (1, 0.25), (1, 0.25)]  # positives per label
    assert task_performance.train_distribution(make_task("regression", ["score"]), torch.rand(5)) is None


# ====================================================================== 5. resume and DDP (slow)
@pytest.mark.slow
@pytest.mark.subprocess
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_with_weights_and_balanced_draws(tiny_bert, tmp_path):
    """Balanced weights and the balanced sampler's epoch draw survive a hard kill: the resumed run trains on the
    same remaining batches with the same loss and ends with the uninterrupted run's weights."""
    data = write_imbalanced(tmp_path / "data", scale=2)  # 64 training rows: 8 steps of 8 an epoch
    settings = ["loss.class_weights=balanced", "loss.focal_gamma=1", "data.sampler=balanced", "data=text_file",
                f"data.train={data / 'train.csv'}", f"data.val={data / 'val.csv'}", f"data.test={data / 'test.csv'}",
                "data.batch_size=8", "callbacks.early_stopping=null"]

    def outcome(run_dir: Path):
        metrics = json.loads((run_dir / "metrics.json").read_text())
        return metrics, torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu",
                                   weights_only=True)["state_dict"]

    reference = run_cli(common(tiny_bert, tmp_path / "reference", *settings, max_epochs=3))
    assert reference.returncode == 0, reference.stderr[-3000:]
    killed_dir = tmp_path / "killed"
    save = ["callbacks.last_checkpoint.every_n_train_steps=3"]
    killed = run_cli(common(tiny_bert, killed_dir, *settings, *save, *kill_at(11), max_epochs=3))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    saved_at = torch.load(killed_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved_at["global_step"] == 9  # inside the second epoch (steps 9-16)
    resumed = run_cli(common(tiny_bert, killed_dir, *settings, *save, max_epochs=3))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (metrics, weights), (ref_metrics, ref_weights) = outcome(killed_dir), outcome(tmp_path / "reference")
    for key in ("fit/global_step", "val/loss", "val/acc", "test/loss"):
        assert metrics[key] == pytest.approx(ref_metrics[key], abs=1e-5), key
    assert torch.equal(weights["criterion.class_weight"], ref_weights["criterion.class_weight"])
    worst = max((weights[k].float() - ref_weights[k].float()).abs().max().item() for k in weights)
    assert worst < 1e-5, f"final weights differ by {worst}"


@pytest.mark.slow
@pytest.mark.ddp
def test_ddp_with_the_balanced_sampler_matches_the_single_process_run(compose_cfg, tmp_path, minilm_path):
    """Two ranks draw the same balanced epoch and train on disjoint halves of each batch: the same steps as one
    process on the whole batch (a BERT without dropout, so a step depends only on its batch)."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    folder = tmp_path / "bert"
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    BertModel(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(folder)

    data = write_imbalanced(tmp_path / "data", scale=3)  # 96 rows: 6 global batches of 16 an epoch

    def run(name: str, *extra: str) -> dict[str, float]:
        return train(text_file_cfg(compose_cfg, str(folder), data, tmp_path / name, "trainer.max_epochs=3",
                                   "data.batch_size=16", "optimizer.lr=3e-3", "export=false",
                                   "data.sampler=balanced", "loss.class_weights=balanced", *extra))

    single, ddp = run("single", "torch_threads=1"), run("ddp", "trainer=ddp")
    assert ddp["fit/global_step"] == single["fit/global_step"] == 3 * 6
    for key in ("val/loss", "test/loss"):
        assert ddp[key] == pytest.approx(single[key], abs=2e-4), key
