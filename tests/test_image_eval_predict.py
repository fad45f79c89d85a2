"""sft.eval and sft.predict on a trained image model: from the run folder, its export and a checkpoint."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
import torch

from sft.eval import evaluate
from sft.eval import main as eval_main
from sft.inference import load_model
from sft.predict import main as predict_main
from tests.conftest import FAST


@pytest.fixture(scope="module", params=["bf16", "fp32"])
def image_run(request, compose_cfg, image_root, tmp_path_factory) -> tuple[Path, dict[str, float]]:
    """A finished image run on each precision path (bf16 detection forced on and off)."""
    from sft.pipeline.train import train
    from tests.conftest import CPU_PRECISION, cpu_bf16

    out = tmp_path_factory.mktemp(f"image_run_{request.param}") / "run"
    cfg = compose_cfg("model=resnet18", "model.weights=none", "data=imagefolder", f"data.path={image_root}",
                      "data.batch_size=8", "data.image_size=32", f"output_dir={out}", *FAST,
                      "trainer.max_epochs=3", "optimizer.lr=1e-3")
    with cpu_bf16(request.param):
        metrics = train(cfg)
    info = json.loads((out / "run.json").read_text())
    assert (info["precision"], info["evaluation_precision"]) == (CPU_PRECISION[request.param], "32-true")
    return out, metrics


def test_eval_reproduces_the_runs_test_metrics(image_run):
    out, metrics = image_run
    for source in (out, out / "export", sorted((out / "checkpoints").glob("best-*.ckpt"))[0]):
        again = evaluate(source, "test")  # the data from the run's own config.yaml
        assert again["test/acc"] == pytest.approx(metrics["test/acc"], abs=1e-6), source
        assert again["test/loss"] == pytest.approx(metrics["test/loss"], rel=1e-4), source


def test_checkpoint_and_export_predict_the_same(image_run, image_root):
    out, _ = image_run
    from sft.inference import predict_image_proba

    paths = sorted(str(p) for p in (image_root / "val").rglob("*.png"))
    probs = []
    for source in (out / "export", out / "checkpoints" / "last.ckpt"):
        model, inputs = load_model(source)
        assert model.modality == "image" and inputs["preprocess"]["crop"] == 32
        probs.append(predict_image_proba(model, inputs["preprocess"], paths))
    assert probs[0].shape == (len(paths), 2)
    assert torch.allclose(probs[0].sum(-1), torch.ones(len(paths)), atol=1e-5)
    best = sorted((out / "checkpoints").glob("best-*.ckpt"))[0]
    model, inputs = load_model(best)
    assert torch.allclose(predict_image_proba(model, inputs["preprocess"], paths), probs[0], atol=1e-5)


def test_predict_cli_on_a_folder_a_file_and_a_list(image_run, image_root, tmp_path, capsys, monkeypatch):
    out, metrics = image_run
    target = tmp_path / "preds.csv"
    assert predict_main([str(out), "--input", str(image_root / "val"), "--output", str(target)]) == 0
    rows = list(csv.DictReader(target.open()))
    expected = sorted(str(p) for p in (image_root / "val").rglob("*.png"))
    assert [r["path"] for r in rows] == expected  # sorted, recursive, input order kept
    truth = [Path(p).parent.name for p in expected]
    accuracy = sum(r["label"] == t for r, t in zip(rows, truth, strict=True)) / len(rows)
    assert accuracy == pytest.approx(metrics["test/acc"], abs=1e-6)  # test = val here (no test folder)
    for r in rows:
        assert float(r["confidence"]) == pytest.approx(max(float(r["prob_blue"]), float(r["prob_red"])))

    assert predict_main([str(out), "--input", expected[0], "--format", "jsonl"]) == 0
    single = json.loads(capsys.readouterr().out.strip())
    assert single["path"] == expected[0] and single["label"] == rows[0]["label"]

    listing = tmp_path / "list.txt"
    listing.write_text(f"{expected[3]}\n{expected[1]}\n")
    monkeypatch.setattr("sys.stdin", io.StringIO(listing.read_text()))
    assert predict_main([str(out)]) == 0
    from_stdin = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["path"] for r in from_stdin] == [expected[3], expected[1]]


def test_predict_errors_name_the_input(image_run, tmp_path, capsys):
    out, _ = image_run
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    assert predict_main([str(out), "--input", str(broken)]) == 2
    assert str(broken) in capsys.readouterr().err
    listing = tmp_path / "list.txt"
    listing.write_text(f"{broken}\n{tmp_path / 'missing.jpg'}\n")
    assert predict_main([str(out), "--input", str(listing)]) == 2
    assert f"{listing}:2:" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert predict_main([str(out), "--input", str(empty)]) == 2
    assert "no image files" in capsys.readouterr().err


def test_eval_of_a_copied_export_needs_data_and_takes_overrides(image_run, image_root, tmp_path, capsys):
    out, metrics = image_run
    copy = tmp_path / "export_copy"
    shutil.copytree(out / "export", copy)
    assert eval_main([str(copy)]) == 2
    assert "say which data to use" in capsys.readouterr().err
    assert eval_main([str(copy), "data=imagefolder", f"data.path={image_root}", "--split", "val"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["val/acc"] == pytest.approx(metrics["val/acc"], abs=1e-6)
