"""ONNX: ``export.onnx=true`` in a run and ``python -m sft.export RUN --format onnx`` write export/model.onnx;
onnxruntime's logits match PyTorch's on batches of other sizes and lengths than the export's (dynamic axes) for
text, sentence-pair, token-classification and image models; ``sft.predict --backend onnx`` gives the torch
backend's rows in input order, for every task type."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnxruntime
import pytest
import torch

from sft.errors import ConfigError
from sft.export import ONNX_FILE, ExportSettings, export_onnx, export_settings
from sft.export import main as export_main
from sft.inference import load_model
from sft.predict import main as predict_main
from sft.predict import predict_with
from tests.conftest import FAST
from tests.helpers import python

ATOL = 1e-4
BATCH_SIZES = (1, 3, 8)
TEXTS = ["ok", "a gripping , beautifully acted film", "dull", "the plot is thin but the actors are wonderful and the "
         "music stays with you for days", "not good", "Paris is lovely in the spring , said Marie Curie",
         "an utterly forgettable , overlong and joyless exercise in style over substance , with nothing to say",
         "yes"]
PAIRS = [(a, b) for a, b in zip(TEXTS, TEXTS[1:] + TEXTS[:1], strict=True)]


# ---------------------------------------------------------------------- exports of each kind
@pytest.fixture(scope="module")
def text_run(tmp_path_factory, tiny_bert, compose_cfg) -> Path:
    """A real (tiny) training run with export.onnx=true: single-label text."""
    from sft.pipeline.train import train

    out = tmp_path_factory.mktemp("onnx_run") / "run"
    train(compose_cfg(f"model.name_or_path={tiny_bert}", f"output_dir={out}", *FAST, "optimizer.lr=2e-3",
                      "export.onnx=true"))
    return out


def text_export(folder: Path, tiny_bert: str, task: Any, thresholds: list[float] | None = None) -> Path:
    """The export a run of ``task`` writes (the classifier's own export), of an untrained head."""
    from transformers import AutoTokenizer

    from sft.models.classifier import TextClassifier

    torch.manual_seed(0)
    model = TextClassifier(tiny_bert, task=task, head_bias="library")
    if thresholds is not None:
        model.thresholds.copy_(torch.tensor(thresholds))
    model.export(folder, SimpleNamespace(tokenizer=AutoTokenizer.from_pretrained(tiny_bert)))
    return folder


@pytest.fixture(scope="module")
def exports(text_run, tiny_bert, tmp_path_factory) -> dict[str, Path]:
    """Export folders with model.onnx: text (a training run); pair (STS-B's shape: regression), multi-label, token
    and image (the classifiers' own exports, written in-process)."""
    from sft.models.vision import IMAGENET_PREPROCESS, ImageClassifier
    from sft.tasks import make_task

    root = tmp_path_factory.mktemp("onnx_exports")
    pair = text_export(root / "pair", tiny_bert, make_task("regression", ["score"], pair=True))
    multi = text_export(root / "multi", tiny_bert, make_task("multi_label", ["joy", "anger", "fear"]),
                        thresholds=[0.3, 0.5, 0.6])
    token = text_export(root / "token", tiny_bert, make_task("token", ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]))
    torch.manual_seed(0)
    image_model = ImageClassifier("resnet18", weights=None, num_labels=2, id2label={0: "blue", 1: "red"},
                                  head_bias="library")
    image = image_model.export(root / "image", SimpleNamespace(preprocess={**IMAGENET_PREPROCESS, "resize": 36,
                                                                            "crop": 32}))
    for folder in (pair, multi, token, image):
        export_onnx(folder)
    return {"text": text_run / "export", "pair": pair, "multi_label": multi, "token": token, "image": image}


# ---------------------------------------------------------------------- the run and the command line
def test_export_onnx_in_a_run_writes_model_onnx_with_dynamic_axes(text_run):
    session = onnxruntime.InferenceSession(str(text_run / "export" / ONNX_FILE))
    inputs = {i.name: i.shape for i in session.get_inputs()}
    assert inputs == {name: ["batch", "sequence"] for name in ("input_ids", "attention_mask", "token_type_ids")}
    assert [(o.name, o.shape) for o in session.get_outputs()] == [("logits", ["batch", 2])]


@pytest.mark.subprocess
def test_the_command_line_writes_model_onnx_and_checks_it(exports, tmp_path):
    export = tmp_path / "run" / "export"  # a pair model's export without its model.onnx
    shutil.copytree(exports["pair"], export, ignore=shutil.ignore_patterns(ONNX_FILE))
    done = python(["-m", "sft.export", str(export.parent), "--format", "onnx"])
    assert done.returncode == 0, done.stderr
    assert f"Wrote {export / ONNX_FILE}" in done.stderr and "max abs diff" in done.stderr
    session = onnxruntime.InferenceSession(str(export / ONNX_FILE))
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [(o.name, o.shape) for o in session.get_outputs()] == [("logits", ["batch", 1])]


def test_export_settings_take_the_node_and_the_earlier_bool(compose_cfg):
    assert export_settings(compose_cfg().export) == ExportSettings(enabled=True, onnx=False)
    assert export_settings(compose_cfg("export.onnx=true").export) == ExportSettings(enabled=True, onnx=True)
    assert export_settings(compose_cfg("export=false").export) == ExportSettings(enabled=False, onnx=False)
    assert export_settings(compose_cfg("export=true").export) == ExportSettings(enabled=True, onnx=False)
    with pytest.raises(ConfigError, match="needs export.enabled=true"):
        export_settings(compose_cfg("export.enabled=false", "export.onnx=true").export)
    with pytest.raises(ConfigError, match="export.onnx='yes' must be true or false"):
        export_settings({"onnx": "yes"})
    with pytest.raises(ConfigError, match="export.onxx is not an export setting"):
        export_settings({"enabled": True, "onxx": True})


def test_a_bad_export_setting_stops_the_run_before_training(tiny_cfg, tmp_path):
    from sft.pipeline.train import train

    with pytest.raises(ConfigError, match="needs export.enabled=true"):
        train(tiny_cfg("export.enabled=false", "export.onnx=true"))
    assert not (tmp_path / "run").exists()


def test_missing_onnx_packages_name_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now fails, as when not installed
    with pytest.raises(ConfigError, match=r"export.onnx=true needs onnxruntime .*pip install -e '.\[onnx\]'"):
        export_settings({"onnx": True})


def test_the_command_line_explains_what_is_missing(text_run, tmp_path, capsys):
    assert export_main([str(tmp_path / "nowhere"), "--format", "onnx"]) == 2
    assert "does not exist" in capsys.readouterr().err
    unfinished = tmp_path / "unfinished"
    (unfinished / "checkpoints").mkdir(parents=True)
    assert export_main([str(unfinished), "--format", "onnx"]) == 2
    assert "holds no exported model" in capsys.readouterr().err
    checkpoint = next((text_run / "checkpoints").glob("best-*.ckpt"))
    assert export_main([str(checkpoint), "--format", "onnx"]) == 2
    assert "is a file" in capsys.readouterr().err


def test_predict_backend_onnx_without_model_onnx_says_how_to_make_it(text_run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(text_run, copy, ignore=shutil.ignore_patterns(ONNX_FILE))
    assert predict_main([str(copy), "--backend", "onnx"]) == 2
    err = capsys.readouterr().err
    assert f"No {ONNX_FILE} in {copy / 'export'}" in err and f"python -m sft.export {copy} --format onnx" in err
    shutil.rmtree(copy / "export")  # a run without an export: the checkpoint is all there is
    assert predict_main([str(copy), "--backend", "onnx"]) == 2
    assert "has no export/" in capsys.readouterr().err


# ---------------------------------------------------------------------- parity: onnxruntime vs PyTorch
def torch_logits(export: Path, kind: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The export loaded by its plain library, as any reader of it (transformers, or torchvision for images)."""
    if kind == "image":
        import torchvision

        info = json.loads((export / "model.json").read_text())
        net = torchvision.models.get_model(info["arch"], num_classes=info["num_classes"])
        net.load_state_dict(torch.load(export / "model.pt", weights_only=True))
        with torch.inference_mode():
            return net.eval()(torch.from_numpy(inputs["pixel_values"])).numpy()
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    auto = AutoModelForTokenClassification if kind == "token" else AutoModelForSequenceClassification
    with torch.inference_mode():
        return auto.from_pretrained(export).eval()(**{k: torch.from_numpy(v) for k, v in inputs.items()}).logits.numpy()


@pytest.mark.parametrize("kind", ["text", "pair", "token", "image"])
def test_onnxruntime_logits_match_pytorch_on_other_batch_sizes_and_lengths(exports, kind):
    from transformers import AutoTokenizer

    export = exports[kind]
    session = onnxruntime.InferenceSession(str(export / ONNX_FILE))
    names = [i.name for i in session.get_inputs()]
    shapes = set()
    for size in BATCH_SIZES:
        if kind == "image":
            inputs = {"pixel_values": torch.randn(size, 3, 32, 32, generator=torch.Generator().manual_seed(size)).numpy()}
        else:
            tokenizer = AutoTokenizer.from_pretrained(export)
            texts = [list(side) for side in zip(*PAIRS[:size], strict=True)] if kind == "pair" else [TEXTS[:size]]
            encoded = tokenizer(*texts, padding=True, return_tensors="np")
            inputs = {name: encoded[name] for name in names}
        got = session.run(["logits"], inputs)[0]
        expected = torch_logits(export, kind, inputs)
        assert got.shape == expected.shape and got.shape[0] == size
        np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)
        shapes.add(next(iter(inputs.values())).shape)
    assert len(shapes) == len(BATCH_SIZES)  # batch sizes (and, for text, lengths) other than the export's
    if kind == "token":
        assert got.ndim == 3 and got.shape[1] == inputs["input_ids"].shape[1]  # a logit per tag per token


# ---------------------------------------------------------------------- sft.predict --backend onnx
@pytest.mark.parametrize("kind", ["text", "pair", "multi_label", "token", "image"])
def test_predict_onnx_backend_gives_the_torch_backends_rows_in_input_order(exports, image_root, kind):
    items: list[Any] = PAIRS if kind == "pair" else TEXTS[::-1] + TEXTS
    if kind == "image":
        items = sorted(str(p) for p in (image_root / "val").rglob("*.png"))[::-1]
    rows = {}
    for backend in ("torch", "onnx"):
        model, inputs = load_model(exports[kind], backend=backend)
        rows[backend] = predict_with(model, inputs, items, batch_size=3)  # length-sorted batches, rows put back
    assert len(rows["onnx"]) == len(items)
    for torch_row, onnx_row in zip(rows["torch"], rows["onnx"], strict=True):
        assert list(onnx_row) == list(torch_row)
        for key, value in torch_row.items():
            if isinstance(value, float):
                assert onnx_row[key] == pytest.approx(value, abs=ATOL), key
            elif key == "entities":
                assert [{**e, "score": pytest.approx(e["score"], abs=ATOL)} for e in value] == onnx_row[key]
            else:
                assert onnx_row[key] == value, key
    first = "path" if kind == "image" else "text"
    assert [r[first] for r in rows["onnx"]] == [item[0] if kind == "pair" else item for item in items]
    if kind == "multi_label":  # the saved thresholds decide, not 0.5
        assert any(r["labels"] != [n for n in ("joy", "anger", "fear") if r[f"prob_{n}"] >= 0.5] for r in rows["onnx"])
    if kind == "token":
        assert any(r["entities"] for r in rows["onnx"])


def test_predict_cli_onnx_backend_writes_the_same_file(exports, tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("\n".join(TEXTS) + "\n")
    outs = {}
    for backend in ("torch", "onnx"):
        outs[backend] = tmp_path / f"{backend}.jsonl"
        assert predict_main([str(exports["text"].parent), "--input", str(source), "--output", str(outs[backend]),
                             "--backend", backend]) == 0
    torch_rows, onnx_rows = ([json.loads(line) for line in outs[b].read_text().splitlines()] for b in ("torch", "onnx"))
    assert [r["text"] for r in onnx_rows] == TEXTS
    assert [r["label"] for r in onnx_rows] == [r["label"] for r in torch_rows]
    for torch_row, onnx_row in zip(torch_rows, onnx_rows, strict=True):
        assert onnx_row["confidence"] == pytest.approx(torch_row["confidence"], abs=ATOL)


@pytest.mark.slow
def test_a_new_export_without_onnx_removes_the_earlier_model_onnx(text_run, compose_cfg, tiny_bert, tmp_path):
    """Finishing the run again (resume=auto: evaluate and export the finished run's best checkpoint) rewrites the
    export; an earlier model.onnx would be another set of weights, so it goes unless written again."""
    from sft.pipeline.train import train

    copy = tmp_path / "run"
    shutil.copytree(text_run, copy)
    settings = (f"model.name_or_path={tiny_bert}", f"output_dir={copy}", *FAST, "optimizer.lr=2e-3")
    train(compose_cfg(*settings))
    assert (copy / "export" / "config.json").is_file() and not (copy / "export" / ONNX_FILE).exists()
    train(compose_cfg(*settings, "export.onnx=true"))
    assert (copy / "export" / ONNX_FILE).is_file()


@pytest.mark.slow
def test_timm_efficientnet_lite0_export_matches_onnxruntime(tmp_path, image_root):
    """The packaged EfficientNet-Lite0 (timm, TF "same" padding) through the same path as torchvision models."""
    from sft.models.vision import ImageClassifier, preprocess_for

    model = ImageClassifier("efficientnet_lite0", num_labels=2, id2label={0: "blue", 1: "red"}, head_bias="library")
    export = model.export(tmp_path / "export", SimpleNamespace(preprocess=preprocess_for("efficientnet_lite0")))
    export_onnx(export)
    paths = sorted(str(p) for p in (image_root / "val").rglob("*.png"))
    rows = {backend: predict_with(*load_model(export, backend=backend), paths, batch_size=5)
            for backend in ("torch", "onnx")}
    for torch_row, onnx_row in zip(rows["torch"], rows["onnx"], strict=True):
        assert onnx_row["label"] == torch_row["label"] and onnx_row["path"] == torch_row["path"]
        assert onnx_row["prob_red"] == pytest.approx(torch_row["prob_red"], abs=ATOL)


def test_a_failed_onnx_check_keeps_the_finished_run_and_leaves_no_graph(tiny_bert, compose_cfg, tmp_path, monkeypatch,
                                                                        caplog):
    """The export checks its graph; when the check fails (here: a tolerance no float can meet), the run still ends
    with its metrics and model export, no model.onnx is left to be served, and the log says how to retry."""
    import sft.export
    from sft.pipeline.train import train

    monkeypatch.setattr(sft.export, "ONNX_ATOL", -1.0)
    out = tmp_path / "run"
    metrics = train(compose_cfg(f"model.name_or_path={tiny_bert}", f"output_dir={out}", *FAST, "export.onnx=true"))
    assert (out / "metrics.json").is_file() and metrics["fit/global_step"] > 0
    assert (out / "export" / "config.json").is_file()
    assert not (out / "export" / "model.onnx").exists()
    assert "python -m sft.export" in caplog.text and "--format onnx" in caplog.text
