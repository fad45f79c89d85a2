"""sft.eval and sft.predict on a trained run: metrics agree with training, predictions keep input order."""

from __future__ import annotations

import csv
import json

import pytest

from sft.errors import ConfigError, DataError
from sft.eval import evaluate
from sft.eval import main as eval_main
from sft.inference import load_model
from sft.pipeline.train import train
from sft.predict import main as predict_main
from sft.predict import predict_with


@pytest.fixture(scope="module", params=["bf16", "fp32"])
def run_dir(request, tmp_path_factory, tiny_bert, compose_cfg):
    """A finished run trained on each precision path (bf16 detection forced on and off)."""
    from tests.conftest import FAST, cpu_bf16

    out = tmp_path_factory.mktemp(f"evalrun-{request.param}-") / "run"
    with cpu_bf16(request.param):
        train(compose_cfg(f"model.name_or_path={tiny_bert}", f"output_dir={out}", *FAST, "trainer.max_epochs=2",
                          "optimizer.lr=2e-3"))
    return out


def test_run_trained_in_its_precision_and_evaluated_in_fp32(run_dir):
    from tests.conftest import CPU_PRECISION

    info = json.loads((run_dir / "run.json").read_text())
    kind = run_dir.parent.name.split("-")[1]
    assert info["precision"] == CPU_PRECISION[kind]
    assert info["evaluation_precision"] == "32-true", "reported metrics are those of the fp32 export"


@pytest.mark.parametrize("which", ["run", "export", "ckpt"])
def test_eval_matches_the_runs_own_test_metrics(run_dir, which):
    target = {"run": run_dir, "export": run_dir / "export",
              "ckpt": next((run_dir / "checkpoints").glob("best-*.ckpt"))}[which]
    saved = json.loads((run_dir / "metrics.json").read_text())
    if which == "export":  # an export folder alone does not say which data: give it
        metrics = evaluate(target, "test", ["data=sample"])
    else:
        metrics = evaluate(target, "test")
    for key in ("test/acc", "test/f1", "test/loss"):
        assert metrics[key] == pytest.approx(saved[key], abs=1e-5), key


def test_pipeline_on_the_export_reproduces_the_test_accuracy(run_dir):
    """transformers.pipeline, with no sft involved, gets the accuracy metrics.json reports."""
    from transformers import pipeline

    from sft.data.sources import PackagedSample

    rows = PackagedSample().load().test
    classify = pipeline("text-classification", model=str(run_dir / "export"), device="cpu")
    predicted = [p["label"] for p in classify([text for text, _ in rows], batch_size=32)]
    accuracy = sum(p == label for p, (_, label) in zip(predicted, rows, strict=True)) / len(rows)
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert accuracy == pytest.approx(saved["test/acc"], abs=1e-6)


def test_eval_other_split_and_output_file(run_dir, tmp_path, capsys):
    out = tmp_path / "m.json"
    assert eval_main([str(run_dir), "--split", "val", "--output", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["val/samples"] == 120
    assert metrics["val/acc"] == pytest.approx(json.loads((run_dir / "metrics.json").read_text())["val/acc"], abs=1e-6)
    assert json.loads(capsys.readouterr().out) == metrics


def test_eval_bad_inputs(run_dir, tmp_path, capsys):
    with pytest.raises(ConfigError, match="does not exist"):
        evaluate(tmp_path / "missing")
    with pytest.raises(ConfigError, match="--split 'dev'"):
        evaluate(run_dir, "dev")
    assert eval_main([str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_predictions_keep_input_order(run_dir):
    # Texts of very different lengths: predict_proba batches them by length internally.
    texts = ["ok"] + [f"{'really ' * (i % 17)}good film number {i}" for i in range(70)] + ["bad"]
    model, inputs = load_model(run_dir)
    rows = predict_with(model, inputs, texts, batch_size=8)
    assert [r["text"] for r in rows] == texts
    singles = [predict_with(model, inputs, [t])[0] for t in texts[::9]]
    for single, row in zip(singles, rows[::9], strict=True):
        assert single["prob_positive"] == pytest.approx(row["prob_positive"], abs=1e-5)
        assert single["label"] == row["label"]


def test_predict_csv_in_jsonl_out(run_dir, tmp_path):
    src = tmp_path / "in.csv"
    with src.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "review"])
        writer.writerows([[1, "lovely, warm, funny"], [2, "cold soup, rude staff"], [3, "fine, I guess, sure"]])
    out = tmp_path / "out.jsonl"
    assert predict_main([str(run_dir / "export"), "--input", str(src), "--text-column", "review",
                         "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["text"] for r in rows] == ["lovely, warm, funny", "cold soup, rude staff", "fine, I guess, sure"]
    assert all(set(r) == {"text", "label", "confidence", "prob_negative", "prob_positive"} for r in rows)
    assert all(r["confidence"] == max(r["prob_negative"], r["prob_positive"]) for r in rows)


def test_predict_bad_inputs(run_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"txt": "oops"}\n')
    assert predict_main([str(run_dir), "--input", str(bad)]) == 2
    assert f"{bad}:2" in capsys.readouterr().err
    with pytest.raises(DataError, match="no column 'text'"):
        from sft.predict import read_texts

        src = tmp_path / "x.csv"
        src.write_text("review\nfine\n")
        read_texts(str(src), "text")


def test_a_run_on_relative_data_paths_is_evaluated_from_any_folder(tiny_bert, compose_cfg, tmp_path, monkeypatch):
    """config.yaml keeps data paths as given (relative to where the run started); eval / explain resolve them
    against run.json's cwd, so `python -m sft.eval <run>` works from another folder (it failed with
    "data.train='data/train.csv' ... no such file" before)."""
    from tests.conftest import FAST

    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    rows = [("a warm and funny film", "pos"), ("a dull and tedious mess", "neg")] * 30
    with (project / "data" / "train.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("text", "label"), *rows])
    monkeypatch.chdir(project)
    run = project / "run"
    saved = train(compose_cfg(f"model.name_or_path={tiny_bert}", f"output_dir={run}", *FAST, "data=text_file",
                              "data.train=data/train.csv", "data.batch_size=8"))
    monkeypatch.chdir(tmp_path)
    assert not (tmp_path / "data" / "train.csv").exists()
    metrics = evaluate(run, "test")
    assert metrics["test/acc"] == pytest.approx(saved["test/acc"], abs=1e-6)
    assert metrics["test/samples"] == 6  # test_size 0.1 of 60 rows


def test_a_run_on_a_relative_data_folder_keeps_its_file_names_relative_to_it(tiny_bert, compose_cfg, tmp_path,
                                                                           monkeypatch):
    """data=conll2003 names its files relative to data.path; evaluating the run from another folder resolves the
    folder only (resolving eng.train against the run's cwd too failed with "data.train: file .../eng.train")."""
    from tests.conftest import FAST
    from tests.taskdata import write_conll

    project = tmp_path / "project"
    write_conll(project / "data" / "conll")
    monkeypatch.chdir(project)
    run = project / "run"
    saved = train(compose_cfg(f"model.name_or_path={tiny_bert}", f"output_dir={run}", *FAST, "data=conll2003",
                              "data.path=data/conll", "data.batch_size=8"))
    monkeypatch.chdir(tmp_path)
    metrics = evaluate(run, "test")
    assert metrics["test/f1"] == pytest.approx(saved["test/f1"], abs=1e-6)
    assert metrics["test/samples"] == 12


def test_eval_scores_a_held_out_file_with_the_runs_own_data_settings(tiny_bert, compose_cfg, tmp_path):
    """`sft.eval <run> data.test=<file>`: the run's data config (columns, task) with the user's labelled file as
    the test split (before, a bare data.* override composed the default data option and failed)."""
    from tests.conftest import FAST

    rows = [("a warm and funny film", "pos"), ("a dull and tedious mess", "neg")] * 30
    train_file, held_out = tmp_path / "train.csv", tmp_path / "held_out.csv"
    with train_file.open("w", newline="") as f:
        csv.writer(f).writerows([("review", "stars"), *rows])
    with held_out.open("w", newline="") as f:
        csv.writer(f).writerows([("review", "stars"), *rows[:7]])
    run = tmp_path / "run"
    train(compose_cfg(f"model.name_or_path={tiny_bert}", f"output_dir={run}", *FAST, "data=text_file",
                      f"data.train={train_file}", "data.text_column=review", "data.label_column=stars"))
    metrics = evaluate(run, "test", [f"data.test={held_out}"])
    assert metrics["test/samples"] == 7
    model_probs = evaluate(run / "export", "test", [f"data.test={held_out}"])  # an export folder inside the run
    assert model_probs["test/acc"] == pytest.approx(metrics["test/acc"], abs=1e-6)
