"""Task types end to end (issue #14): sentence pairs (GLUE MRPC), regression (STS-B), multi-label (GoEmotions) and
token classification (CoNLL-2003), each trained once on tiny local data with the real pipeline (Hydra compose,
Lightning, tokenizers, files), then evaluated (``sft.eval``), predicted (``sft.predict``) and loaded from its export
with plain ``transformers.pipeline``. Metric definitions are checked against independent implementations
(scikit-learn, scipy, seqeval) on random tensors; every experiment preset composes and runs one batch; bad task
files fail early, naming the file and the line.

Independent references here never go through sft: GLUE / GoEmotions / CoNLL files are parsed by the helpers below,
and predictions come from the export loaded with plain transformers.
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from sft.errors import ConfigError, DataError
from sft.pipeline.train import train
from tests.conftest import FAST, write_lines
from tests.taskdata import PEOPLE, PLACES, write_conll, write_glue, write_goemotions, write_mrpc, write_stsb

# How the tiny runs learn in seconds: fp32 (the precision every reader of the export uses), one thread (tiny
# matrices: a second thread only waits, and on a busy 2-core machine it made every step ~10x slower), no early
# stop, small batches, a large learning rate. Epochs and settings per task: measured, with a margin over the
# epoch the run learned its task at.
LEARN = ["trainer.precision=32-true", "torch_threads=1", "callbacks.early_stopping=null", "data.batch_size=8",
         "optimizer.lr=3e-3", "seed=0"]
SETTINGS = {
    "mrpc": ["trainer.max_epochs=16", "data.val_size=10"],  # learned by epoch ~11
    "conll": ["trainer.max_epochs=10"],  # learned by epoch ~6
    # The tiny random BERT first predicts the mean score or the labels' base rates, and only after a while (at a
    # rate its early collapse survives: larger ones stay collapsed) tells the inputs apart: STS-B by epoch 24-37
    # (seeds 0-2), GoEmotions' joy / anger by epoch 16-43 ("the report" = neutral much sooner). Larger validation
    # splits, so the best checkpoint is not an early one that only looks best on a few rows (a near-constant
    # prediction's Pearson is noise; GoEmotions' thresholds are tuned on val and need every label there).
    "stsb": ["trainer.max_epochs=40", "data.batch_size=4", "scheduler=constant", "optimizer.lr=2e-3",
             "data.val_size=10"],
    "goemotions": ["trainer.max_epochs=30", "data.batch_size=4", "scheduler=constant", "optimizer.lr=2e-3",
                   "data.val_size=0.25"],
}


@pytest.fixture(scope="module", autouse=True)
def _restore_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


# What each task type logs on val / test (besides <stage>/loss); no task logs another type's keys.
TASK_KEYS = {
    "single_label": ("acc", "precision", "recall", "f1", "mcc"),
    "regression": ("pearson", "spearman", "mse"),
    "multi_label": ("micro_f1", "macro_f1", "subset_acc", "map"),
    "token": ("precision", "recall", "f1", "token_acc", "f1_LOC", "f1_PER"),
}
ALL_KEYS = {name for names in TASK_KEYS.values() for name in names}


def stage_keys(kind: str, stage: str) -> set[str]:
    return {f"{stage}/{name}" for name in (*TASK_KEYS[kind], "loss")}


def logged_keys(metrics: dict[str, float], stage: str) -> set[str]:
    return {k for k in metrics if k.startswith(f"{stage}/")}


# ---------------------------------------------------------------------- independent readers of the task files
def read_tsv(path: Path) -> list[dict[str, str]]:
    """A GLUE TSV with a header row (not CSV-quoted; MRPC's header starts with a BOM)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    header = lines[0].lstrip("\ufeff").split("\t")
    return [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:] if line.strip()]


def read_goemotions_file(folder: Path, name: str = "dev.tsv") -> tuple[list[str], list[str], torch.Tensor]:
    """(label names, texts, (N, L) 0/1 targets) of a GoEmotions folder's file (CSV-quoted, tab-separated)."""
    names = (folder / "emotions.txt").read_text().split()
    with (folder / name).open(newline="") as f:
        rows = [r for r in csv.reader(f, delimiter="\t") if r]
    targets = torch.zeros(len(rows), len(names))
    for i, row in enumerate(rows):
        for j in row[1].split(","):
            targets[i, int(j)] = 1
    return names, [r[0].strip() for r in rows], targets


def read_conll_file(path: Path) -> list[tuple[list[str], list[str]]]:
    """(words, IOB2 tags) sentences of a CoNLL file (IOB1 converted: an I-X not continuing an X begins one)."""
    sentences, words, tags = [], [], []
    for line in [*path.read_text().splitlines(), ""]:
        fields = line.split()
        if not fields or fields[0] == "-DOCSTART-":
            if words:
                sentences.append((words, tags))
            words, tags = [], []
            continue
        tag, previous = fields[-1], tags[-1] if tags else "O"
        if tag.startswith("I-") and (previous == "O" or previous[2:] != tag[2:]):
            tag = "B-" + tag[2:]
        words.append(fields[0])
        tags.append(tag)
    return sentences


def write_conll_file(path: Path, sentences: list[list[tuple[str, str]]]) -> Path:
    lines = ["-DOCSTART- -X- -X- O", ""]
    for sentence in sentences:
        lines += [f"{word} NNP I-NP {tag}" for word, tag in sentence] + [""]
    return write_lines(path, lines)


# ---------------------------------------------------------------------- plain transformers on an export
def hf_sequence_logits(export: Path, inputs: list[Any]) -> torch.Tensor:
    """Logits of the export, loaded with plain transformers, for texts or (a, b) pairs (one padded batch)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(export)
    model = AutoModelForSequenceClassification.from_pretrained(export).eval()
    if isinstance(inputs[0], tuple):
        encoded = tokenizer([a for a, _ in inputs], [b for _, b in inputs], padding=True, truncation=True,
                            max_length=128, return_tensors="pt")
    else:
        encoded = tokenizer(list(inputs), padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        return model(**encoded).logits.float()


def hf_word_tags(export: Path, sentences: list[list[str]]) -> list[list[str]]:
    """Each word's tag as the export (plain transformers) predicts it: the argmax at the word's first sub-token."""
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(export)
    model = AutoModelForTokenClassification.from_pretrained(export).eval()
    encoded = tokenizer(sentences, is_split_into_words=True, padding=True, truncation=True, max_length=128,
                        return_tensors="pt")
    with torch.no_grad():
        best = model(**encoded).logits.argmax(-1)
    tags = []
    for i in range(len(sentences)):
        seen, row = set(), []
        for position, word in enumerate(encoded.word_ids(i)):
            if word is not None and word not in seen:
                seen.add(word)
                row.append(model.config.id2label[int(best[i, position])])
        tags.append(row)
    return tags


def seqeval_scores(true: list[list[str]], pred: list[list[str]]) -> dict[str, float]:
    from seqeval.metrics import classification_report

    report = classification_report(true, pred, output_dict=True, zero_division=0)
    words = [(t, p) for ts, ps in zip(true, pred, strict=True) for t, p in zip(ts, ps, strict=True)]
    scores = {"precision": report["micro avg"]["precision"], "recall": report["micro avg"]["recall"],
              "f1": report["micro avg"]["f1-score"], "token_acc": sum(t == p for t, p in words) / len(words)}
    scores.update({f"f1_{kind}": report[kind]["f1-score"] for kind in ("LOC", "PER") if kind in report})
    return scores


def predict_rows(capsys, *argv: str) -> list[dict[str, Any]]:
    """``python -m sft.predict`` in process; rows of its --output file (.jsonl / .csv), or of stdout (csv)."""
    from sft.predict import main

    status = main(list(argv))
    captured = capsys.readouterr()
    assert status == 0, captured.err
    if "--output" in argv:
        out = Path(argv[argv.index("--output") + 1])
        assert f"wrote {len(out.read_text().splitlines()) - out.suffix.endswith('csv')} predictions" in captured.err
        if out.suffix == ".jsonl":
            return [json.loads(line) for line in out.read_text().splitlines()]
        return list(csv.DictReader(out.open(newline="")))
    return list(csv.DictReader(captured.out.splitlines()))


# ---------------------------------------------------------------------- the four trained runs (one each, per module)
@dataclass
class Run:
    dir: Path
    data: Path
    cfg: Any
    metrics: dict[str, float]

    @property
    def export(self) -> Path:
        return self.dir / "export"

    def saved_metrics(self) -> dict[str, float]:
        return json.loads((self.dir / "metrics.json").read_text())

    def best_checkpoint(self) -> Path:
        (best,) = sorted((self.dir / "checkpoints").glob("best-*.ckpt"))
        return best


def _train(tmp_path_factory, compose_cfg, tiny_bert: str, name: str, data: Path, *overrides: str) -> Run:
    out = tmp_path_factory.mktemp(f"{name}_run") / "run"
    cfg = compose_cfg(f"model.name_or_path={tiny_bert}", f"output_dir={out}", *FAST, *LEARN, *SETTINGS[name],
                      *overrides, f"data.path={data}")
    return Run(out, data, cfg, train(cfg))


@pytest.fixture(scope="module")
def mrpc_run(tmp_path_factory, compose_cfg, tiny_bert) -> Run:
    data = write_mrpc(tmp_path_factory.mktemp("mrpc") / "MRPC")
    return _train(tmp_path_factory, compose_cfg, tiny_bert, "mrpc", data, "data=glue", "data.task=mrpc")


@pytest.fixture(scope="module")
def stsb_run(tmp_path_factory, compose_cfg, tiny_bert) -> Run:
    data = write_stsb(tmp_path_factory.mktemp("stsb") / "STS-B")
    return _train(tmp_path_factory, compose_cfg, tiny_bert, "stsb", data, "data=glue", "data.task=stsb")


@pytest.fixture(scope="module")
def goemotions_run(tmp_path_factory, compose_cfg, tiny_bert) -> Run:
    data = write_goemotions(tmp_path_factory.mktemp("goemotions") / "data")
    return _train(tmp_path_factory, compose_cfg, tiny_bert, "goemotions", data, "data=goemotions")


@pytest.fixture(scope="module")
def conll_run(tmp_path_factory, compose_cfg, tiny_bert) -> Run:
    data = write_conll(tmp_path_factory.mktemp("conll") / "conll")
    return _train(tmp_path_factory, compose_cfg, tiny_bert, "conll", data, "data=conll2003")


def check_run_records(run: Run, kind: str, metric: str) -> None:
    """metrics.json holds the task's keys (and no other task's), and the best checkpoint was chosen by ``metric``."""
    saved = run.saved_metrics()
    assert saved == pytest.approx(run.metrics, abs=1e-9)
    for stage in ("val", "test"):
        assert logged_keys(saved, stage) == stage_keys(kind, stage), stage
    assert not {k.split("/", 1)[1] for k in saved if k.startswith(("val/", "test/"))} & (ALL_KEYS - set(TASK_KEYS[kind]))
    assert run.cfg.data.metric == run.cfg.optimized_metric == metric
    assert run.cfg.callbacks.model_checkpoint.monitor == metric and run.cfg.callbacks.model_checkpoint.mode == "max"
    checkpoint = torch.load(run.best_checkpoint(), map_location="cpu", weights_only=True)
    assert checkpoint["hyper_parameters"]["monitor"] == metric
    (state,) = [v for k, v in checkpoint["callbacks"].items() if k.startswith("ModelCheckpoint")]
    assert state["monitor"] == metric
    # The exported / validated weights are the best checkpoint's: its score is the final val metric.
    assert float(state["best_model_score"]) == pytest.approx(saved[metric], abs=1e-5)
    config = json.loads((run.export / "config.json").read_text())
    labels = json.loads((run.export / "labels.json").read_text())
    assert labels["task"]["type"] == kind
    assert {int(k): v for k, v in config["id2label"].items()} == dict(enumerate(labels["label_names"]))
    assert config["label2id"] == {name: i for i, name in enumerate(labels["label_names"])}


# ====================================================================== 1. trained runs: metrics, monitor, learning
def test_pair_run_logs_positive_class_f1_and_mcc_and_learns(mrpc_run):
    check_run_records(mrpc_run, "single_label", "val/f1")
    m = mrpc_run.metrics
    labels = json.loads((mrpc_run.export / "labels.json").read_text())
    assert labels["label_names"] == ["not_equivalent", "equivalent"]
    assert labels["task"]["positive_label"] == "equivalent" and labels["task"]["pair"] is True
    # Learning: accuracy on dev (the test split) well above always answering its majority class.
    rows = read_tsv(mrpc_run.data / "dev.tsv")
    majority = max(sum(r["Quality"] == v for r in rows) for v in ("0", "1")) / len(rows)
    assert m["test/acc"] >= majority + 0.2, (m["test/acc"], majority)
    # test/f1 is the F1 of 'equivalent' (sklearn on the export's own predictions), test/mcc Matthews'.
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    preds = hf_sequence_logits(mrpc_run.export, [(r["#1 String"], r["#2 String"]) for r in rows]).argmax(-1)
    true = [int(r["Quality"]) for r in rows]
    assert m["test/f1"] == pytest.approx(f1_score(true, preds, pos_label=1), abs=1e-4)
    assert m["test/mcc"] == pytest.approx(matthews_corrcoef(true, preds), abs=1e-4)
    assert m["test/acc"] == pytest.approx(accuracy_score(true, preds), abs=1e-4)


def test_regression_run_logs_correlations_and_learns(stsb_run):
    check_run_records(stsb_run, "regression", "val/pearson")
    m = stsb_run.metrics
    config = json.loads((stsb_run.export / "config.json").read_text())
    assert config["problem_type"] == "regression" and config["id2label"] == {"0": "score"}
    from scipy.stats import pearsonr, spearmanr

    rows = read_tsv(stsb_run.data / "dev.tsv")
    # Learning: well below the error of predicting the mean score (the variance), and correlated.
    variance = float(torch.tensor([float(r["score"]) for r in rows]).var(unbiased=False))
    assert m["test/mse"] < 0.4 * variance and m["test/pearson"] > 0.9 and m["test/spearman"] > 0.9, (m, variance)
    scores = hf_sequence_logits(stsb_run.export, [(r["sentence1"], r["sentence2"]) for r in rows])[:, 0].numpy()
    true = [float(r["score"]) for r in rows]
    assert m["test/pearson"] == pytest.approx(pearsonr(scores, true).statistic, abs=1e-4)
    assert m["test/spearman"] == pytest.approx(spearmanr(scores, true).statistic, abs=1e-4)
    assert m["test/mse"] == pytest.approx(float(((torch.tensor(scores) - torch.tensor(true)) ** 2).mean()), rel=1e-4)


def test_multi_label_run_logs_label_set_scores_and_saves_thresholds(goemotions_run):
    check_run_records(goemotions_run, "multi_label", "val/macro_f1")
    m = goemotions_run.metrics
    config = json.loads((goemotions_run.export / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    saved = json.loads((goemotions_run.export / "thresholds.json").read_text())
    assert saved["mode"] == "per_label" and list(saved["thresholds"]) == ["joy", "anger", "neutral"]
    assert all(0.05 - 1e-6 <= t <= 0.95 + 1e-6 for t in saved["thresholds"].values())
    # The checkpoint's thresholds buffer is what the export saved.
    state = torch.load(goemotions_run.best_checkpoint(), map_location="cpu", weights_only=True)["state_dict"]
    assert state["thresholds"].tolist() == pytest.approx(list(saved["thresholds"].values()))
    # Learning: far above predicting every label (micro F1), and "the report" (neutral, what the tiny data
    # teaches first) ranked perfectly. (Which words are joy and which anger comes later, at a seed-dependent epoch.)
    names, texts, targets = read_goemotions_file(goemotions_run.data)
    every_label = float(2 * targets.sum() / (targets.sum() + targets.numel()))
    assert m["test/micro_f1"] >= every_label + 0.1, (m["test/micro_f1"], every_label)
    probs = hf_sequence_logits(goemotions_run.export, texts).sigmoid()
    from sklearn.metrics import accuracy_score, average_precision_score, f1_score

    neutral = names.index("neutral")
    assert average_precision_score(targets[:, neutral], probs[:, neutral]) == pytest.approx(1.0)
    assert f1_score(targets[:, neutral], probs[:, neutral] >= saved["thresholds"]["neutral"]) >= 0.95
    # The test metrics, from the export's own probabilities at the saved thresholds (scikit-learn).
    chosen = (probs >= torch.tensor([saved["thresholds"][n] for n in names])).int().numpy()
    y = targets.int().numpy()
    assert m["test/micro_f1"] == pytest.approx(f1_score(y, chosen, average="micro", zero_division=0), abs=1e-4)
    assert m["test/macro_f1"] == pytest.approx(f1_score(y, chosen, average="macro", zero_division=0), abs=1e-4)
    assert m["test/subset_acc"] == pytest.approx(accuracy_score(y, chosen), abs=1e-4)
    with warnings.catch_warnings():  # a label absent from the file: its AP is 0 for both (with a warning)
        warnings.simplefilter("ignore")
        assert m["test/map"] == pytest.approx(average_precision_score(y, probs.numpy(), average="macro"), abs=1e-4)


def test_token_run_logs_entity_scores_and_learns(conll_run):
    check_run_records(conll_run, "token", "val/f1")
    m = conll_run.metrics
    labels = json.loads((conll_run.export / "labels.json").read_text())
    assert labels["label_names"] == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    sentences = read_conll_file(conll_run.data / "eng.testa")
    all_o = sum(t == "O" for _, tags in sentences for t in tags) / sum(len(tags) for _, tags in sentences)
    assert m["test/token_acc"] >= all_o + 0.2, (m["test/token_acc"], all_o)
    assert m["test/f1"] >= 0.6 and m["test/f1_PER"] >= 0.6 and m["test/f1_LOC"] >= 0.6, m
    expected = seqeval_scores([t for _, t in sentences], hf_word_tags(conll_run.export, [w for w, _ in sentences]))
    assert {f"test/{k}": v for k, v in expected.items()} == pytest.approx(
        {k: v for k, v in m.items() if k.startswith("test/") and k != "test/loss"}, abs=1e-4)


# ====================================================================== 2. sft.eval and sft.predict on each run
def check_eval_reproduces(run: Run) -> dict[str, float]:
    from sft.eval import evaluate

    result = evaluate(run.dir)
    saved = {k: v for k, v in run.saved_metrics().items() if k.startswith("test/")}
    assert set(result) == set(saved) | {"test/samples"}
    assert {k: result[k] for k in saved} == pytest.approx(saved, abs=1e-4)
    return result


def test_pair_eval_and_held_out_file(mrpc_run, tmp_path):
    from sklearn.metrics import f1_score, matthews_corrcoef

    from sft.eval import evaluate

    assert check_eval_reproduces(mrpc_run)["test/samples"] == len(read_tsv(mrpc_run.data / "dev.tsv"))
    # A held-out GLUE folder: unseen rows (numbers 100..129) with four labels flipped against the rule learned.
    held = write_mrpc(tmp_path / "held", rows=130)
    lines = (held / "train.tsv").read_text().splitlines()
    body = lines[101:131]
    for i in (1, 2, 4, 6):  # three paraphrases marked not equivalent, one non-paraphrase marked equivalent
        body[i] = ("0" if body[i][0] == "1" else "1") + body[i][1:]
    write_lines(held / "dev.tsv", [lines[0], *body])
    result = evaluate(mrpc_run.dir, overrides=[f"data.path={held}"])  # on top of the run's own data settings
    # The same data named in full (a data option composed afresh) scores the same.
    assert evaluate(mrpc_run.dir, overrides=["data=glue", "data.task=mrpc", f"data.path={held}"]) == \
        pytest.approx(result, abs=1e-6)
    rows = read_tsv(held / "dev.tsv")
    assert result["test/samples"] == len(rows) == 30
    true = [int(r["Quality"]) for r in rows]
    preds = hf_sequence_logits(mrpc_run.export, [(r["#1 String"], r["#2 String"]) for r in rows]).argmax(-1).numpy()
    positive, macro = f1_score(true, preds, pos_label=1), f1_score(true, preds, average="macro")
    assert abs(positive - macro) > 0.02  # the flips make the two definitions differ: the check below tells them apart
    assert result["test/f1"] == pytest.approx(positive, abs=1e-4)
    assert result["test/mcc"] == pytest.approx(matthews_corrcoef(true, preds), abs=1e-4)


def test_regression_eval_and_held_out_file(stsb_run, tmp_path):
    from scipy.stats import pearsonr, spearmanr

    from sft.eval import evaluate

    check_eval_reproduces(stsb_run)
    held = write_stsb(tmp_path / "held", rows=24)
    lines = (held / "train.tsv").read_text().splitlines()
    body = [line.rsplit("\t", 1)[0] + f"\t{float(line.rsplit(chr(9), 1)[1]) + (0.5 if i % 4 == 0 else 0.0):.3f}"
            for i, line in enumerate(lines[1:])]  # the scores, some shifted: not what the model was trained on
    write_lines(held / "dev.tsv", [lines[0], *body])
    result = evaluate(stsb_run.dir, overrides=[f"data.path={held}"])
    rows = read_tsv(held / "dev.tsv")
    assert result["test/samples"] == len(rows) == 24
    scores = hf_sequence_logits(stsb_run.export, [(r["sentence1"], r["sentence2"]) for r in rows])[:, 0].numpy()
    true = [float(r["score"]) for r in rows]
    assert result["test/pearson"] == pytest.approx(pearsonr(scores, true).statistic, abs=1e-4)
    assert result["test/spearman"] == pytest.approx(spearmanr(scores, true).statistic, abs=1e-4)
    assert result["test/mse"] == pytest.approx(sum((s - t) ** 2 for s, t in zip(scores, true, strict=True)) / len(true),
                                                   rel=1e-4)


def test_multi_label_eval_and_held_out_folder(goemotions_run, tmp_path):
    from sklearn.metrics import average_precision_score, f1_score

    from sft.eval import evaluate

    check_eval_reproduces(goemotions_run)
    held = write_goemotions(tmp_path / "held", rows=24)
    (held / "dev.tsv").write_text((held / "train.tsv").read_text())  # every label combination (train's dev has no joy)
    result = evaluate(goemotions_run.dir, overrides=[f"data.path={held}"])
    names, texts, targets = read_goemotions_file(held)
    assert result["test/samples"] == len(texts) == 24 and bool((targets.sum(0) > 0).all())
    thresholds = json.loads((goemotions_run.export / "thresholds.json").read_text())["thresholds"]
    probs = hf_sequence_logits(goemotions_run.export, texts).sigmoid()
    chosen = (probs >= torch.tensor([thresholds[n] for n in names])).int().numpy()  # the model's own thresholds
    y = targets.int().numpy()
    assert result["test/macro_f1"] == pytest.approx(f1_score(y, chosen, average="macro", zero_division=0), abs=1e-4)
    assert result["test/micro_f1"] == pytest.approx(f1_score(y, chosen, average="micro", zero_division=0), abs=1e-4)
    assert result["test/map"] == pytest.approx(average_precision_score(y, probs.numpy(), average="macro"), abs=1e-4)


def test_token_eval_and_held_out_file(conll_run):
    from sft.eval import evaluate

    check_eval_reproduces(conll_run)
    # eng.testb beside the run's files, IOB2 this time, other sentence shapes (and lengths) than training.
    sentences = []
    for i in range(10):
        person, place = PEOPLE[(i + 1) % 4], PLACES[i % 4]
        sentences.append([(person, "B-PER"), ("Smith", "I-PER"), ("went", "O"), ("to", "O"), (place, "B-LOC"),
                          *([("and", "O"), (PLACES[(i + 1) % 4], "B-LOC")] if i % 2 else []), (".", "O")])
    write_conll_file(conll_run.data / "eng.testb", sentences)
    result = evaluate(conll_run.dir, overrides=["data.test=eng.testb"])  # relative to the run's data.path
    assert result["test/samples"] == 10
    parsed = read_conll_file(conll_run.data / "eng.testb")
    expected = seqeval_scores([t for _, t in parsed], hf_word_tags(conll_run.export, [w for w, _ in parsed]))
    assert {k: result[f"test/{k}"] for k in expected} == pytest.approx(expected, abs=1e-4)


def test_token_test_loss_in_metrics_json_is_the_per_word_mean_eval_reports(compose_cfg, tiny_bert, tmp_path):
    """A token task's loss is a mean over words. Lightning averages the logged test/loss over batches weighted by
    their number of sentences, so with batches of short and of long sentences metrics.json's test/loss is not the
    per-word mean over the split that sft.eval reports (the entity scores, kept per word, agree)."""
    from sft.eval import evaluate

    data = write_conll(tmp_path / "conll")
    short = [[(PEOPLE[i], "B-PER"), ("went", "O")] for i in range(4)]
    long = [[("to", "O"), (PLACES[i], "B-LOC"), ("and", "O")] * 8 for i in range(4)]
    write_conll_file(data / "eng.testa", short + long)  # batches of 4: 8 words, then 96
    cfg = compose_cfg(f"model.name_or_path={tiny_bert}", f"output_dir={tmp_path / 'run'}", *FAST, *LEARN,
                      "data=conll2003", f"data.path={data}", "data.batch_size=4")
    saved = train(cfg)
    result = evaluate(tmp_path / "run")
    assert result["test/f1"] == pytest.approx(saved["test/f1"], abs=1e-6)
    assert result["test/token_acc"] == pytest.approx(saved["test/token_acc"], abs=1e-6)
    assert result["test/loss"] == pytest.approx(saved["test/loss"], abs=1e-4), "metrics.json: sentence-weighted"


def test_predict_pairs_from_two_csv_columns_in_input_order(mrpc_run, tmp_path, capsys):
    pairs = []
    for i in (7, 12, 300, 5, 9, 2001, 14, 3):  # lengths differ: the batches go by length, the rows must not
        a = f"the {'cat' if i % 2 else 'dog'} sat on the mat number {i}"
        pairs.append((a, a.replace("sat", "was sitting") if i % 3 else f'a "storm" hit the coast on day {i}'))
    pairs.append(("a sentence, with a comma", "and \"quotes\", too"))  # CSV quoting
    source = tmp_path / "pairs.csv"
    with source.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "first", "second"])
        writer.writerows([str(i), a, b] for i, (a, b) in enumerate(pairs))
    rows = predict_rows(capsys, str(mrpc_run.dir), "--input", str(source), "--output", str(tmp_path / "out.csv"),
                        "--text-column", "first", "--text-pair-column", "second")
    assert list(rows[0]) == ["text", "text_pair", "label", "confidence", "prob_not_equivalent", "prob_equivalent"]
    assert [(r["text"], r["text_pair"]) for r in rows] == pairs
    probs = hf_sequence_logits(mrpc_run.export, pairs).softmax(-1)
    names = ["not_equivalent", "equivalent"]
    assert [r["label"] for r in rows] == [names[int(j)] for j in probs.argmax(-1)]
    for row, p in zip(rows, probs.tolist(), strict=True):
        assert [float(row["prob_not_equivalent"]), float(row["prob_equivalent"])] == pytest.approx(p, abs=1e-4)
        assert float(row["confidence"]) == pytest.approx(max(p), abs=1e-4)
    # What the model learned: paraphrases are 'equivalent', the storm sentences not.
    assert [r["label"] for r in rows[:8]] == ["equivalent" if i % 3 else "not_equivalent"
                                              for i in (7, 12, 300, 5, 9, 2001, 14, 3)]
    # A pair model reads the second text from a `text_pair` column by default (JSONL here).
    jsonl = write_lines(tmp_path / "pairs.jsonl", [json.dumps({"text": a, "text_pair": b}) for a, b in pairs[:3]])
    again = predict_rows(capsys, str(mrpc_run.export), "--input", str(jsonl), "--output", str(tmp_path / "o.jsonl"))
    assert [(r["text"], r["text_pair"], r["label"]) for r in again] == [(r["text"], r["text_pair"], r["label"])
                                                                        for r in rows[:3]]


def test_predict_regression_scores_in_a_column_named_after_the_label(stsb_run, tmp_path, capsys):
    words = "red blue green small large old".split()
    pairs = [(" ".join(words), " ".join(words[:k] + ['"x'] * (6 - k))) for k in (5, 0, 3, 1, 4, 2)]
    source = tmp_path / "pairs.tsv"
    write_lines(source, ["sentence1\tsentence2", *(f"{a}\t{b}" for a, b in pairs)])
    rows = predict_rows(capsys, str(stsb_run.dir), "--input", str(source), "--text-column", "sentence1",
                        "--text-pair-column", "sentence2")  # CSV on stdout
    assert list(rows[0]) == ["text", "text_pair", "score"]
    assert [(r["text"], r["text_pair"]) for r in rows] == pairs
    scores = [float(r["score"]) for r in rows]
    assert scores == pytest.approx(hf_sequence_logits(stsb_run.export, pairs)[:, 0].tolist(), abs=1e-4)
    by_shared = dict(zip([5, 0, 3, 1, 4, 2], scores, strict=True))  # words shared -> predicted score
    assert by_shared[0] < by_shared[2] < by_shared[4]  # dev's patterns: the more words shared, the higher


def test_predict_multi_label_sets_follow_the_saved_thresholds(goemotions_run, tmp_path, capsys):
    texts = ["so happy", "furious", "the report", "so happy furious the report", "so happy the report", "furious"]
    source = write_lines(tmp_path / "texts.txt", texts)
    rows = predict_rows(capsys, str(goemotions_run.dir), "--input", str(source), "--output", str(tmp_path / "o.jsonl"))
    thresholds = json.loads((goemotions_run.export / "thresholds.json").read_text())["thresholds"]
    assert [r["text"] for r in rows] == texts
    probs = hf_sequence_logits(goemotions_run.export, texts).sigmoid()
    for row, p in zip(rows, probs.tolist(), strict=True):
        assert isinstance(row["labels"], list)
        assert [row[f"prob_{n}"] for n in thresholds] == pytest.approx(p, abs=1e-4)
        # A label is predicted iff its probability reaches its own threshold; in label order.
        assert row["labels"] == [n for n in thresholds if row[f"prob_{n}"] >= thresholds[n]]
    # "the report" is the neutral comment: the label the tiny data teaches first.
    assert "neutral" in rows[2]["labels"] and "neutral" not in rows[1]["labels"]
    # CSV output: the label set as a JSON list in its cell.
    csv_rows = predict_rows(capsys, str(goemotions_run.dir), "--input", str(source), "--output",
                            str(tmp_path / "o.csv"))
    assert [json.loads(r["labels"]) for r in csv_rows] == [r["labels"] for r in rows]


def test_predict_entity_spans_with_character_offsets(conll_run, tmp_path, capsys):
    texts = ["Mary Smith went to Paris yesterday .", "  John Smith went to  Berlin yesterday.",
             "Anna Smith went to London yesterday ."]
    source = write_lines(tmp_path / "texts.txt", texts)
    rows = predict_rows(capsys, str(conll_run.dir), "--input", str(source), "--output", str(tmp_path / "o.jsonl"))
    assert [r["text"] for r in rows] == texts
    for row in rows:
        for entity in row["entities"]:
            assert row["text"][entity["start"] : entity["end"]] == entity["word"]
            assert 0 < entity["score"] <= 1
    spans = [[(e["entity"], e["word"]) for e in r["entities"]] for r in rows]
    assert spans == [[("PER", "Mary Smith"), ("LOC", "Paris")], [("PER", "John Smith"), ("LOC", "Berlin")],
                     [("PER", "Anna Smith"), ("LOC", "London")]]
    assert rows[1]["entities"][1]["start"] == texts[1].index("Berlin")


# ====================================================================== 3. the export in plain transformers
def hf_pipeline(kind: str, export: Path, **kwargs: Any) -> Any:
    from transformers import pipeline

    return pipeline(kind, model=str(export), device="cpu", **kwargs)


def test_pair_export_in_a_text_classification_pipeline(mrpc_run, tmp_path, capsys):
    from sft.inference import load_model
    from sft.predict import predict_with

    config = json.loads((mrpc_run.export / "config.json").read_text())
    assert config["id2label"] == {"0": "not_equivalent", "1": "equivalent"}
    assert config["label2id"] == {"not_equivalent": 0, "equivalent": 1}
    assert config["problem_type"] == "single_label_classification"
    pairs = [("the cat sat on the mat number 11", "the cat was sitting on the mat number 11"),
             ("the dog sat on the mat number 12", 'a "storm" hit the coast on day 12')]
    model, inputs = load_model(mrpc_run.export)
    ours = predict_with(model, inputs, pairs)
    classify = hf_pipeline("text-classification", mrpc_run.export)
    for (a, b), row in zip(pairs, ours, strict=True):
        (theirs,) = classify({"text": a, "text_pair": b}, top_k=1)
        assert theirs["label"] == row["label"] and theirs["score"] == pytest.approx(row["confidence"], abs=1e-4)
    assert [r["label"] for r in ours] == ["equivalent", "not_equivalent"]


def test_regression_export_returns_the_raw_score(stsb_run):
    from sft.inference import load_model
    from sft.predict import predict_with

    config = json.loads((stsb_run.export / "config.json").read_text())
    assert config["problem_type"] == "regression" and config["label2id"] == {"score": 0}
    words = "red blue green small large old".split()
    pairs = [(" ".join(words), " ".join(words[:k] + ['"x'] * (6 - k))) for k in (0, 2, 4)]
    model, inputs = load_model(stsb_run.export)
    ours = [row["score"] for row in predict_with(model, inputs, pairs)]
    classify = hf_pipeline("text-classification", stsb_run.export)
    theirs = classify([{"text": a, "text_pair": b} for a, b in pairs])  # one {label, score} per pair
    assert [t["label"] for t in theirs] == ["score"] * 3
    assert [t["score"] for t in theirs] == pytest.approx(ours, abs=1e-4)  # no sigmoid on a regression score
    assert ours[2] > 3.0 > ours[0] and max(ours) > 1.0  # a raw score on STS-B's 0-5 scale, not a probability


def test_multi_label_export_gives_sigmoid_scores(goemotions_run):
    from sft.inference import load_model
    from sft.predict import predict_with

    config = json.loads((goemotions_run.export / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    assert config["id2label"] == {"0": "joy", "1": "anger", "2": "neutral"}
    texts = ["so happy", "furious the report", "so happy furious"]
    model, inputs = load_model(goemotions_run.export)
    ours = predict_with(model, inputs, texts)
    classify = hf_pipeline("text-classification", goemotions_run.export)
    for text, row in zip(texts, ours, strict=True):
        theirs = {t["label"]: t["score"] for t in classify(text, top_k=None)}
        assert theirs == pytest.approx({n: row[f"prob_{n}"] for n in ("joy", "anger", "neutral")}, abs=1e-4)
    # Independent sigmoids: unlike a softmax, the three need not sum to one.
    assert any(abs(sum(row[f"prob_{n}"] for n in ("joy", "anger", "neutral")) - 1) > 0.05 for row in ours)


def test_token_export_in_a_token_classification_pipeline(conll_run):
    from sft.inference import load_model
    from sft.predict import predict_with

    config = json.loads((conll_run.export / "config.json").read_text())
    names = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    assert config["id2label"] == {str(i): n for i, n in enumerate(names)}
    assert config["label2id"] == {n: i for i, n in enumerate(names)}
    text = "Peter Smith went to Rome yesterday ."
    model, inputs = load_model(conll_run.export)
    (ours,) = predict_with(model, inputs, [text])
    tagger = hf_pipeline("token-classification", conll_run.export, aggregation_strategy="simple")
    theirs = tagger(text)
    assert [(e["entity_group"], e["start"], e["end"]) for e in theirs] == \
        [(e["entity"], e["start"], e["end"]) for e in ours["entities"]]
    assert [(e["entity"], e["word"]) for e in ours["entities"]] == [("PER", "Peter Smith"), ("LOC", "Rome")]


# ====================================================================== 4. metric definitions, on random tensors
def test_single_label_positive_class_metrics_against_sklearn():
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef, precision_score, recall_score

    from sft.tasks import make_task

    gen = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(200, 2, generator=gen), torch.randint(0, 2, (200,), generator=gen)
    preds = logits.argmax(-1).numpy()
    for positive, index in (("equivalent", 1), ("not_equivalent", 0)):
        task = make_task("single_label", ["not_equivalent", "equivalent"], positive_label=positive, pair=True)
        m = task.split_metrics(logits, targets, "test")
        y = targets.numpy()
        assert m["test/f1"] == pytest.approx(f1_score(y, preds, pos_label=index), abs=1e-5)
        assert m["test/precision"] == pytest.approx(precision_score(y, preds, pos_label=index), abs=1e-5)
        assert m["test/recall"] == pytest.approx(recall_score(y, preds, pos_label=index), abs=1e-5)
        assert m["test/mcc"] == pytest.approx(matthews_corrcoef(y, preds), abs=1e-5)
        assert m["test/acc"] == pytest.approx(accuracy_score(y, preds), abs=1e-5)
        assert m["test/loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, targets)), abs=1e-5)
    assert f1_score(y, preds, pos_label=1) != pytest.approx(f1_score(y, preds, pos_label=0), abs=1e-3)
    # Without a positive class (three classes): the macro averages.
    logits3, targets3 = torch.randn(300, 3, generator=gen), torch.randint(0, 3, (300,), generator=gen)
    m = make_task("single_label", ["a", "b", "c"]).split_metrics(logits3, targets3, "test")
    preds3, y3 = logits3.argmax(-1).numpy(), targets3.numpy()
    assert m["test/f1"] == pytest.approx(f1_score(y3, preds3, average="macro"), abs=1e-5)
    assert m["test/mcc"] == pytest.approx(matthews_corrcoef(y3, preds3), abs=1e-5)


def test_regression_metrics_against_scipy():
    from scipy.stats import pearsonr, spearmanr

    from sft.tasks import make_task

    gen = torch.Generator().manual_seed(1)
    true = torch.rand(150, generator=gen) * 5
    scores = true + torch.randn(150, generator=gen) * 1.5
    m = make_task("regression", ["score"]).split_metrics(scores[:, None], true, "test")
    assert m["test/pearson"] == pytest.approx(pearsonr(scores, true).statistic, abs=1e-5)
    assert m["test/spearman"] == pytest.approx(spearmanr(scores, true).statistic, abs=1e-5)
    assert m["test/mse"] == pytest.approx(float(((scores - true) ** 2).mean()), rel=1e-5)
    assert m["test/loss"] == pytest.approx(m["test/mse"], rel=1e-5)


def test_multi_label_metrics_against_sklearn():
    from sklearn.metrics import accuracy_score, average_precision_score, f1_score

    from sft.tasks import make_task

    gen = torch.Generator().manual_seed(2)
    targets = (torch.rand(120, 5, generator=gen) < torch.tensor([0.5, 0.3, 0.2, 0.6, 0.1])).float()
    logits = torch.randn(120, 5, generator=gen) + 1.5 * targets
    y = targets.int().numpy()
    task = make_task("multi_label", list("abcde"), threshold=0.5)
    for thresholds in (None, torch.tensor([0.3, 0.5, 0.7, 0.45, 0.6])):
        m = task.split_metrics(logits, targets, "test", thresholds=thresholds)
        cut = torch.full((5,), 0.5) if thresholds is None else thresholds
        chosen = (logits.sigmoid() >= cut).int().numpy()
        assert m["test/micro_f1"] == pytest.approx(f1_score(y, chosen, average="micro", zero_division=0), abs=1e-5)
        assert m["test/macro_f1"] == pytest.approx(f1_score(y, chosen, average="macro", zero_division=0), abs=1e-5)
        assert m["test/subset_acc"] == pytest.approx(accuracy_score(y, chosen), abs=1e-5)
        assert m["test/map"] == pytest.approx(average_precision_score(y, logits.sigmoid().numpy()), abs=1e-5)
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)
        assert m["test/loss"] == pytest.approx(float(bce), abs=1e-5)
    # A fixed threshold (data.threshold=0.7) scores at that probability.
    m = make_task("multi_label", list("abcde"), threshold=0.7).split_metrics(logits, targets, "test")
    chosen = (logits.sigmoid() >= 0.7).int().numpy()
    assert m["test/macro_f1"] == pytest.approx(f1_score(y, chosen, average="macro", zero_division=0), abs=1e-5)


def test_token_metrics_against_seqeval():
    from seqeval.metrics import classification_report

    from sft.tasks import make_task

    names = ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-PER", "I-PER"]
    gen = torch.Generator().manual_seed(3)
    lengths = torch.randint(3, 15, (40,), generator=gen).tolist()
    width = max(lengths) + 6
    labels = torch.full((40, width), -100)
    true_tags, pred_tags = [], []
    logits = torch.randn(40, width, len(names), generator=gen)
    for i, n in enumerate(lengths):
        # Labelled positions: a word's first sub-token (after [CLS], some words have two sub-tokens).
        positions = sorted(torch.randperm(width - 2, generator=gen)[:n].add(1).tolist())
        tags = torch.randint(0, len(names), (n,), generator=gen)
        tags[torch.rand(n, generator=gen) < 0.5] = 0  # mostly O, as in real data
        labels[i, positions] = tags
        logits[i, positions, tags] += torch.rand(n, generator=gen) * 3  # often right, sometimes not
        true_tags.append([names[t] for t in tags.tolist()])
        pred_tags.append([names[int(logits[i, p].argmax())] for p in positions])
    m = make_task("token", names).split_metrics(logits, labels, "test")
    report = classification_report(true_tags, pred_tags, output_dict=True, zero_division=0)
    assert m["test/precision"] == pytest.approx(report["micro avg"]["precision"], abs=1e-5)
    assert m["test/recall"] == pytest.approx(report["micro avg"]["recall"], abs=1e-5)
    assert m["test/f1"] == pytest.approx(report["micro avg"]["f1-score"], abs=1e-5)
    for kind in ("LOC", "MISC", "PER"):
        assert m[f"test/f1_{kind}"] == pytest.approx(report[kind]["f1-score"], abs=1e-5)
    words = [(t, p) for ts, ps in zip(true_tags, pred_tags, strict=True) for t, p in zip(ts, ps, strict=True)]
    assert m["test/token_acc"] == pytest.approx(sum(t == p for t, p in words) / len(words), abs=1e-5)
    assert 0.1 < m["test/f1"] < 0.95  # neither trivial nor perfect: the comparisons above mean something
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, len(names)), labels.reshape(-1), ignore_index=-100)
    assert m["test/loss"] == pytest.approx(float(loss), abs=1e-5)


def test_per_label_thresholds_are_each_labels_best_on_the_grid():
    from sklearn.metrics import f1_score

    from sft.tasks.multi_label import GRID, tune_thresholds

    gen = torch.Generator().manual_seed(4)
    targets = (torch.rand(200, 6, generator=gen) < torch.tensor([0.5, 0.3, 0.1, 0.05, 0.6, 0.2])).float()
    probs = (torch.randn(200, 6, generator=gen) + 1.2 * targets - 0.6).sigmoid()
    chosen = tune_thresholds(probs, targets, "per_label")
    y = targets.int().numpy()
    for j in range(6):
        by_threshold = [f1_score(y[:, j], (probs[:, j] >= t).int().numpy(), zero_division=0) for t in GRID.tolist()]
        best = max(by_threshold)
        assert min(abs(float(chosen[j]) - t) for t in GRID.tolist()) < 1e-6
        assert f1_score(y[:, j], (probs[:, j] >= chosen[j]).int().numpy(), zero_division=0) == pytest.approx(best)
    # global: one threshold for all labels, the grid's best macro F1.
    (one,) = set(tune_thresholds(probs, targets, "global").tolist())
    macro = [f1_score(y, (probs >= t).int().numpy(), average="macro", zero_division=0) for t in GRID.tolist()]
    assert f1_score(y, (probs >= one).int().numpy(), average="macro", zero_division=0) == pytest.approx(max(macro))


def test_a_label_absent_from_validation_is_not_predicted_for_everything():
    """A label with no positive in the validation split has F1 0 at every threshold. Tuning must not then pick the
    grid's lowest threshold (0.05): the model would predict that label for nearly every input at test time (seen
    in the GoEmotions run here: joy, absent from the 6 carved validation rows, got 0.05)."""
    from sft.tasks.multi_label import tune_thresholds

    gen = torch.Generator().manual_seed(5)
    targets = (torch.rand(50, 3, generator=gen) < 0.4).float()
    targets[:, 2] = 0  # label 2 never occurs in validation
    probs = (torch.randn(50, 3, generator=gen) + targets).sigmoid()
    chosen = tune_thresholds(probs, targets, "per_label")
    assert float(chosen[2]) >= 0.5, f"threshold {float(chosen[2]):.2f} for a label validation never shows"


# ====================================================================== 5. experiment presets
PRESETS = {  # preset -> (data._target_, data.task, the task's metric)
    "glue_cola": ("sft.data.text.glue", "cola", "val/mcc"),
    "glue_sst2": ("sft.data.text.glue", "sst2", "val/acc"),
    "glue_mrpc": ("sft.data.text.glue", "mrpc", "val/f1"),
    "glue_qqp": ("sft.data.text.glue", "qqp", "val/f1"),
    "glue_stsb": ("sft.data.text.glue", "stsb", "val/pearson"),
    "glue_mnli": ("sft.data.text.glue", "mnli", "val/acc"),
    "glue_qnli": ("sft.data.text.glue", "qnli", "val/acc"),
    "glue_rte": ("sft.data.text.glue", "rte", "val/acc"),
    "glue_wnli": ("sft.data.text.glue", "wnli", "val/acc"),
    "conll2003_ner": ("sft.data.text.conll2003", None, "val/f1"),
    "goemotions": ("sft.data.text.goemotions", None, "val/macro_f1"),
}
KIND = {"glue_stsb": "regression", "conll2003_ner": "token", "goemotions": "multi_label"}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_experiment_preset_composes_with_its_tasks_metric(compose_cfg, preset):
    target, task, metric = PRESETS[preset]
    cfg = compose_cfg(f"experiment={preset}", "output_dir=/tmp/unused")
    assert cfg.data._target_ == target and cfg.data.get("task") == task
    assert cfg.data.metric == cfg.optimized_metric == metric
    for callback in ("model_checkpoint", "early_stopping"):
        assert cfg.callbacks[callback].monitor == metric and cfg.callbacks[callback].mode == "max"
    assert cfg.model._target_ == "sft.models.classifier.TextClassifier" and cfg.model.name_or_path is None  # MiniLM
    if preset == "goemotions":  # rare labels: tuned thresholds and a larger learning rate
        assert cfg.data.threshold == "per_label" and cfg.optimizer.lr == pytest.approx(2e-4)
    # An explicit optimized_metric still wins over the task's.
    assert compose_cfg(f"experiment={preset}", "optimized_metric=val/loss").callbacks.model_checkpoint.mode == "min"


def test_glue_all_sweeps_the_nine_tasks_each_with_its_metric(compose_cfg):
    from hydra import compose, initialize_config_dir

    from sft.config import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["experiment=glue_all"], return_hydra_config=True)
    assert str(cfg.hydra.mode).endswith("MULTIRUN")
    tasks = str(cfg.hydra.sweeper.params["data.task"]).split(",")
    assert tasks == ["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"]
    assert cfg.data._target_ == "sft.data.text.glue"
    for task in tasks:  # each job of the sweep: its own task's metric
        job = compose_cfg("experiment=glue_all", f"data.task={task}", "output_dir=/tmp/unused")
        assert job.optimized_metric == job.data.metric == PRESETS[f"glue_{task}"][2]
        assert job.callbacks.model_checkpoint.monitor == PRESETS[f"glue_{task}"][2]


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_experiment_preset_runs_one_batch_on_local_files(compose_cfg, tiny_bert, tmp_path, preset):
    if preset == "conll2003_ner":
        folder, extra = write_conll(tmp_path / "data"), []
    elif preset == "goemotions":
        folder, extra = write_goemotions(tmp_path / "data"), []
    else:
        folder, extra = write_glue(tmp_path / "data", PRESETS[preset][1]), ["data.val_size=6"]
    cfg = compose_cfg(f"experiment={preset}", "debug=fast_dev_run", f"model.name_or_path={tiny_bert}",
                      f"data.path={folder}", f"output_dir={tmp_path / 'run'}", *FAST, *extra)
    metrics = train(cfg)
    kind = KIND.get(preset, "single_label")
    assert metrics["fit/global_step"] == 1
    assert logged_keys(metrics, "test") == stage_keys(kind, "test")
    assert math.isfinite(metrics[PRESETS[preset][2].replace("val/", "test/")]) or kind == "regression"
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == pytest.approx(metrics)
    if preset == "glue_mnli":  # the mismatched dev file is scored too
        assert {"test_mismatched/acc", "test_mismatched/f1"} <= set(metrics)


# ====================================================================== 6. bad task files: early, named errors
def replace_line(path: Path, line_no: int, new: str) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[line_no - 1] = new
    write_lines(path, lines)


def fails_early(compose_cfg, tiny_bert: str, tmp_path: Path, error: type, pattern: str, *overrides: str) -> str:
    cfg = compose_cfg(f"model.name_or_path={tiny_bert}", f"output_dir={tmp_path / 'run'}", *FAST, *overrides)
    with pytest.raises(error, match=pattern) as info:
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing trained
    return str(info.value)


def test_pair_file_with_an_empty_second_text(compose_cfg, tiny_bert, tmp_path):
    folder = write_mrpc(tmp_path / "mrpc")
    replace_line(folder / "train.tsv", 6, "1\t5\t1005\tthe cat sat on the mat number 4\t")
    message = fails_early(compose_cfg, tiny_bert, tmp_path, DataError, "", "data=glue", "data.task=mrpc",
                          f"data.path={folder}")
    assert f"{folder / 'train.tsv'}:6:" in message and "'#2 String'" in message


def test_pair_file_with_an_empty_second_text_through_the_data_module(tiny_bert, tmp_path):
    from sft.data.text import text_file

    path = write_lines(tmp_path / "pairs.csv", ["premise,hypothesis,label", *(f"a {i},b {i},{i % 2}" for i in range(9)),
                                                "a 9,,1", "a 10,b 10,0"])
    dm = text_file(str(path), text_pair_column="hypothesis", text_column="premise", tokenizer=tiny_bert)
    with pytest.raises(DataError, match=rf"{path}:11: empty or missing text in column 'hypothesis'"):
        dm.prepare_data()


def test_stsb_score_that_is_not_a_number(compose_cfg, tiny_bert, tmp_path):
    folder = write_stsb(tmp_path / "stsb")
    line = (folder / "dev.tsv").read_text().splitlines()[3]
    replace_line(folder / "dev.tsv", 4, line.rsplit("\t", 1)[0] + "\tfour")
    message = fails_early(compose_cfg, tiny_bert, tmp_path, DataError,
                          rf"{folder / 'dev.tsv'}:4: label 'four' in column 'score' is not a number", "data=glue",
                          "data.task=stsb", f"data.path={folder}")
    assert "fix the row" in message  # says how to fix it


def test_goemotions_label_id_outside_emotions_txt(compose_cfg, tiny_bert, tmp_path):
    folder = write_goemotions(tmp_path / "go")
    replace_line(folder / "train.tsv", 9, "so happy\t0,3\tid8")  # three names: ids 0..2
    message = fails_early(compose_cfg, tiny_bert, tmp_path, DataError, rf"{folder / 'train.tsv'}:9: label id '3'",
                          "data=goemotions", f"data.path={folder}")
    assert "0..2" in message and "emotions.txt" in message


def test_conll_line_with_the_wrong_number_of_fields(compose_cfg, tiny_bert, tmp_path):
    folder = write_conll(tmp_path / "conll")
    replace_line(folder / "eng.train", 12, "Paris I-LOC")  # line 3 (the first token line) has four fields
    message = fails_early(compose_cfg, tiny_bert, tmp_path, DataError, rf"{folder / 'eng.train'}:12: 2 ",
                          "data=conll2003", f"data.path={folder}")
    assert "(line 3) has 4" in message


@pytest.mark.parametrize("tag", ["E-PER", "PER", "S-LOC", "B-"])
def test_conll_tag_that_is_not_iob(compose_cfg, tiny_bert, tmp_path, tag):
    folder = write_conll(tmp_path / "conll")
    replace_line(folder / "eng.testa", 5, f"Smith NNP I-NP {tag}")
    message = fails_early(compose_cfg, tiny_bert, tmp_path, DataError,
                          rf"{folder / 'eng.testa'}:5: tag '{tag}' is not O, B-TYPE or I-TYPE", "data=conll2003",
                          f"data.path={folder}")
    assert "Fix the tag" in message and "B-PER" in message  # says how to fix it, with an example


def test_accuracy_is_not_a_regression_metric(compose_cfg, tiny_bert, tmp_path):
    folder = write_stsb(tmp_path / "stsb")
    message = fails_early(compose_cfg, tiny_bert, tmp_path, ConfigError, r"optimized_metric='val/acc'", "data=glue",
                          "data.task=stsb", f"data.path={folder}", "optimized_metric=val/acc")
    assert "val/pearson" in message and "regression" in message


def test_task_performance_pages_render_their_own_tables_and_figures():
    """The performance section's page for each task type beyond single-label: its metrics in the task's order,
    the regression figure, per-label thresholds and ECE, per-type entity scores and error examples."""
    from sft.report import performance

    regression = {"task": "regression", "n": 3, "metrics": {"pearson": 0.9, "spearman": 0.8, "mse": 0.5},
                  "metric_names": ["pearson", "spearman", "mse"], "points": [[1.0, 1.2], [2.0, 1.8], [3.0, 3.3]],
                  "mean_baseline": {"prediction": 2.1, "mse": 0.4}, "residual": {"mean": 0.0, "std": 0.2}}
    html = performance.render(regression)
    assert "data:image/png;base64," in html and "always the training mean" in html
    assert "no lower than always predicting the training mean" in html  # 0.5 >= 0.4: the warning
    assert performance.summary(regression)[0] == ("pearson", "0.900")
    multi = {"task": "multi_label", "n": 4, "metrics": {"macro_f1": 0.5}, "metric_names": ["macro_f1", "micro_f1"],
             "per_label": [{"label": "joy<b>", "precision": 1.0, "recall": 0.5, "f1": 0.667, "support": 2,
                            "train_count": 9, "threshold": 0.35, "ece": 0.12}],
             "threshold_mode": "per_label", "mean_ece": 0.12, "labels_per_example": 1.25}
    html = performance.render(multi)
    assert "joy&lt;b&gt;" in html and "0.35" in html and "per_label" in html and "ECE" in html
    token = {"task": "token", "n": 2, "metrics": {"f1": 0.5}, "metric_names": ["f1", "token_acc"],
             "per_type": [{"label": "PER", "precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}],
             "errors": {"missed": 1}, "examples": {"missed": [{"index": 1, "true_span": "Mary Smith (PER)"}]}}
    html = performance.render(token)
    assert "Mary Smith (PER)" in html and "missed" in html and "entity type" in html


# ====================================================================== 8. the report's attributions per task
def test_entities_to_explain_by_kind_from_hand_made_tags():
    from sft.report.attribution import entity_candidates, select_entities

    names = ["O", "B-PER", "I-PER", "B-LOC"]
    # Sentence 0: [CLS] John Smith went Paris [SEP] (word starts at 1..4); sentence 1: [CLS] Rome [SEP] pad pad pad.
    labels = torch.tensor([[-100, 1, 2, 0, 3, -100], [-100, 3, -100, -100, -100, -100]])
    logits = torch.zeros(2, 6, 4)
    logits[0, 1, 1], logits[0, 2, 2], logits[0, 3, 0] = 5.0, 5.0, 5.0  # John Smith = PER (right, confident)
    logits[0, 4, 1] = 1.0  # Paris predicted PER (wrong type, unsure)
    logits[1, 1, 3] = 3.0  # Rome = LOC (right)
    candidates = entity_candidates(logits, labels, names)
    spans = {(c["index"], c["span"]): (c["correct"], c["label"], c["position"], c["target"]) for c in candidates}
    assert spans == {(0, ("PER", 0, 2)): (True, "PER", 1, 1), (0, ("PER", 3, 4)): (False, "LOC", 4, 1),
                     (1, ("LOC", 0, 1)): (True, "LOC", 1, 3)}
    confidence = {c["span"]: c["confidence"] for c in candidates}
    assert confidence[("PER", 0, 2)] == pytest.approx(math.exp(5) / (math.exp(5) + 3))
    chosen = select_entities(candidates, 1)
    assert [(c["kind"], c["index"], c["span"]) for c in chosen] == [
        ("confident_correct", 0, ("PER", 0, 2)), ("confident_wrong", 0, ("PER", 3, 4)),
        ("least_confident", 1, ("LOC", 0, 1))]


def test_token_report_explains_chosen_entities_at_their_first_word(conll_run, tmp_path):
    """sft.explain on the trained tagger: each explained entity's outlined token is its first word, and the
    integrated gradients scores add up to that token's tag probability minus the baseline's (the tag explained is
    the predicted one, at that position)."""
    import shutil

    from transformers import AutoTokenizer

    from sft.explain import main
    from sft.models.classifier import TextClassifier
    from sft.report.attribution_text import pad_id, special_token_mask

    run = tmp_path / "run"
    shutil.copytree(conll_run.dir, run)
    assert main([str(run), "report=default", "report.sections=[performance,attributions]",
                 "report.attributions.examples=2", "report.attributions.n_steps=64"]) == 0
    report = json.loads((run / "report.json").read_text())
    assert "attributions" not in report["skipped"]
    section = report["sections"]["attributions"]
    assert section["unit"] == "entity" and section["examples"]
    model = TextClassifier.from_checkpoint(str(conll_run.best_checkpoint()))
    tokenizer = AutoTokenizer.from_pretrained(conll_run.export)
    names = model.task.label_names
    for example in section["examples"]:
        tokens, position = example["tokens"], example["position"]
        assert tokens[position] == example["entity"].split()[0].lower()  # the entity's first word (uncased vocab)
        assert example["pred"] in {"PER", "LOC"} and len(example["scores"]) == len(tokens)
        ids = torch.tensor([tokenizer.convert_tokens_to_ids(tokens)])
        mask = torch.ones_like(ids)
        baseline = torch.where(special_token_mask(tokenizer, ids, mask), ids, torch.full_like(ids, pad_id(tokenizer)))
        with torch.no_grad():
            probs = model(ids, mask)[0, position].softmax(-1)
            p_baseline = model(baseline, mask)[0, position].softmax(-1)
        target = int(probs.argmax())
        assert names[target].endswith(example["pred"]) and float(probs[target]) == pytest.approx(example["confidence"],
                                                                                                   abs=1e-4)
        explained = sum(example["scores"]) - example["delta"]  # = p(x) - p(baseline) of what was explained
        assert explained == pytest.approx(float(probs[target] - p_baseline[target]), abs=1e-4)
        assert abs(example["delta"]) < 0.05
    html = (run / "report.html").read_text()
    assert "(the tag explained)" in html and "entity <b>" in html
